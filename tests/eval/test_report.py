"""HTML eval report: trajectory dumps through the real run_eval path, content, CLI, browser.

The run is real: MathChat with a scripted policy (ScriptedEngine), the shipped tiny tokenizer,
a real sandbox and the rule coach, evaluated twice ("base" step 0, "final" step 5) through
runner.run_eval, which writes the results JSON and the trajectories JSONL like the trainer.
"""
import asyncio
import html
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from html.parser import HTMLParser

import pytest

from experiments import mathchat as mathchat_experiment
from mappa_jax import config as mconfig
from mappa_jax.data.loaders import Task
from mappa_jax.eval import report as report_lib
from mappa_jax.eval import runner
from mappa_jax.models.tokenizer import Tokenizer, tiny_tokenizer_dir
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.workflows import records
from mappa_jax.workflows.mathchat import MathChatConfig, MathChatWorkflow
from mappa_jax.workflows.scripted import ScriptedEngine
from tests.workflows.conftest import RecordingCoach

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = [Task("p1", "What is 6 times 7? Put the answer in \\boxed{}.", "42", "mul_div"),
         Task("p2", "What is 5 plus 4? Put the answer in \\boxed{}.", "9", "add_sub")]
SCRIPT_TAG = '<script>alert("pwned")</script>'


def _answer(prompt: str) -> str:
  return "42" if "6 times 7" in prompt else "9"


def _script(final: bool) -> dict:
  """Base (step 0): the Verifier gets p1 wrong. Final: all right, plus an injected script tag."""
  def ps(prompt):
    extra = f" Beware {SCRIPT_TAG} & <b>tags</b>." if final else ""
    return f"Work it out.\n</think>\n\nThe result is \\boxed{{{_answer(prompt)}}}.{extra}"

  def code(prompt):
    expr = "6 * 7" if "6 times 7" in prompt else "5 + 4"
    return f"Let me compute.\n</think>\n\n```python\nprint({expr})\n```"

  def verify(prompt):
    ans = _answer(prompt)
    if not final and ans == "42":
      ans = "41"
    return f"Checked.\n</think>\n\n**\\boxed{{{ans}}}**"

  return {"problem_solver": [ps], "code_executor": [code, lambda p: "Done.\n</think>\n\nOK."],
          "verifier": [verify]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir with config.json and two eval steps written through runner.run_eval."""
  workdir = str(tmp_path_factory.mktemp("run"))
  mconfig.save(mathchat_experiment.get_config("local"), workdir)
  tok = Tokenizer.from_dir(tiny_tokenizer_dir())
  sandbox = Sandbox("auto", SandboxLimits(timeout_s=20.0, memory_bytes=2 << 30),
                    max_concurrency=2)
  reports = {}
  try:
    for step, final in ((0, False), (5, True)):
      wf = MathChatWorkflow(engine=ScriptedEngine(tok, _script(final)), tokenizer=tok,
                            coach=RecordingCoach(), sandbox=sandbox,
                            sampling=SamplingParams(max_new_tokens=512), config=MathChatConfig())
      out = os.path.join(workdir, "eval_results", f"step{step:06d}_toy.json")
      reports[step], _ = asyncio.run(runner.run_eval(
          "toy", TASKS, wf.run, kind="math", n_samples=2, max_concurrency=4, n_boot=50,
          results_path=out, trajectories_path=out[:-5] + ".trajectories.jsonl",
          decode=tok.decode))
  finally:
    sandbox.close()
  return workdir, reports


def _trajs(workdir, step):
  return records.read_trajectories(
      os.path.join(workdir, "eval_results", f"step{step:06d}_toy.trajectories.jsonl"))


class _Dom(HTMLParser):
  """Records elements (tag, attrs), text, and start/end tag balance."""

  VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "polygon", "polyline"}

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.elements, self.text, self.depth = [], [], {}

  def handle_starttag(self, tag, attrs):
    self.elements.append((tag, dict(attrs)))
    if tag not in self.VOID:
      self.depth[tag] = self.depth.get(tag, 0) + 1

  def handle_startendtag(self, tag, attrs):
    self.elements.append((tag, dict(attrs)))

  def handle_endtag(self, tag):
    if tag not in self.VOID:
      self.depth[tag] = self.depth.get(tag, 0) - 1

  def handle_data(self, data):
    self.text.append(data)

  def find(self, tag, cls=None):
    return [a for t, a in self.elements
            if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def _parse(text):
  dom = _Dom()
  dom.feed(text)
  dom.close()
  return dom


def _check_structure(dom, n_steps=2, n_trajs=8):
  """What must hold in the raw HTML and in the browser's DOM alike."""
  assert not dom.find("script") and not dom.find("iframe")  # no JS, the injected tag included
  text = "".join(dom.text)
  assert SCRIPT_TAG in text  # shown as text, exactly as the model wrote it
  assert "Trajectories: latest (step 5)" in text and "Trajectories: base (step 0)" in text
  trajs = dom.find("details", "traj")
  assert len(trajs) == n_trajs
  assert len(dom.find("details", "correct")) == 6 and len(dom.find("details", "incorrect")) == 2
  assert len(dom.find("svg", "chart")) == 2
  points = dom.find("circle", "pt")
  series = {p["data-series"] for p in points}
  assert series == {"rule_accuracy", "coach_accuracy", "Problem Solver", "Code Executor",
                    "Verifier"}
  for s in series:  # one point per eval step in every curve
    assert sorted(int(p["data-step"]) for p in points if p["data-series"] == s) == [0, 5]
  for name in ("Problem Solver", "Code Executor", "Verifier", "print(6 * 7)", "exit code 0",
               "The result is \\boxed{42}.", "Checked."):
    assert name in text, name
  assert n_steps == 2


def test_trajectory_dump_roundtrip(run_dir):
  workdir, _ = run_dir
  trajs = _trajs(workdir, 5)
  assert [(t["task_id"], t["sample_index"]) for t in trajs] == [
      ("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]  # sorted, whatever the completion order
  t = trajs[0]
  assert t["final_answer"] == "42" and t["outcome"]["rule_correct"] == 1.0
  assert t["metadata"]["label"] == "42" and t["task_type"] == "mul_div" and t["error"] == ""
  assert [(a["agent"], a["turn"]) for a in t["actions"]] == [
      ("problem_solver", 0), ("code_executor", 0), ("code_executor", 1), ("verifier", 0)]
  ps, ce0, _, ver = t["actions"]
  assert "6 times 7" in ps["prompt_text"] and "<|im_start|>assistant" in ps["prompt_text"]
  assert ce0["tool_calls"] == [{"code": "print(6 * 7)\n", "stdout": "42\n", "stderr": "",
                                "exit_code": 0, "timed_out": False, "files_changed": []}]
  assert ce0["tool_observation"] == "42"
  assert SCRIPT_TAG in ps["text"] and not ps["truncated"] and ps["finish_reason"] == "stop"
  assert ps["n_response_tokens"] > 0 and ps["n_prompt_tokens"] > 0
  assert ver["coach"]["status"] == "scored" and 0 <= ver["coach"]["score"] <= 10
  assert ver["coach"]["rationale"] and ver["coach"]["is_scored"] is True
  assert _trajs(workdir, 0)[0]["final_answer"] == "41"


def test_trajectory_to_dict_json_safe():
  from mappa_jax.coach.types import CoachResult
  import numpy as np
  traj = records.Trajectory("t", 3, metadata={"x": float("nan"), "p": np.float32(0.5),
                                              "obj": object, "tup": (1, 2)})
  traj.actions.append(records.Action(
      "a", 0, [1, 2], [3], [0.0], "length", coach=CoachResult("invalid", reason="parse")))
  d = records.trajectory_to_dict(traj)
  json.dumps(d, allow_nan=False)  # raises on NaN / unknown types
  assert d["metadata"]["x"] is None and d["metadata"]["p"] == 0.5
  assert d["metadata"]["tup"] == [1, 2] and isinstance(d["metadata"]["obj"], str)
  a = d["actions"][0]
  assert "prompt_text" not in a and a["truncated"] is True and a["n_prompt_tokens"] == 2
  assert a["coach"]["status"] == "invalid" and a["coach"]["reason"] == "parse"
  assert records.trajectory_to_dict(traj, decode=lambda ids: f"ids{ids}")["actions"][0][
      "prompt_text"] == "ids[1, 2]"


def test_report_content(run_dir):
  workdir, reports = run_dir
  text = report_lib.build_report(workdir)
  assert "<script" not in text and html.escape(SCRIPT_TAG) in text
  assert "http://" not in text and "https://" not in text and "<link" not in text
  dom = _parse(text)
  _check_structure(dom)
  assert all(v == 0 for v in dom.depth.values()), dom.depth  # every element closed
  points = dom.find("circle", "pt")
  acc = {int(p["data-step"]): float(p["data-value"]) for p in points
         if p["data-series"] == "rule_accuracy"}
  assert acc == {0: pytest.approx(0.5), 5: pytest.approx(1.0)}
  assert reports[0].summary["rule_accuracy"]["mean"] == pytest.approx(0.5)
  for step in (0, 5):  # per-agent curve = mean of that step's coach scores
    trajs = _trajs(workdir, step)
    for agent, role in (("problem_solver", "Problem Solver"), ("verifier", "Verifier")):
      scores = [a["coach"]["score"] for t in trajs for a in t["actions"] if a["agent"] == agent]
      got = [float(p["data-value"]) for p in points
             if p["data-series"] == role and int(p["data-step"]) == step]
      assert got == [pytest.approx(sum(scores) / len(scores), abs=1e-5)]
  # Every action's output and coach rationale of the shown steps is in the page, escaped.
  for step in (0, 5):
    for t in _trajs(workdir, step):
      for a in t["actions"]:
        assert html.escape(a["text"]) in text
        assert html.escape(a["coach"]["rationale"]) in text
        assert html.escape(a["prompt_text"]) in text
  assert 'class="badge b-bad">✗ incorrect' in text and "41" in text
  # The cap: one trajectory per step shown, the rest counted.
  small = report_lib.build_report(workdir, max_trajectories=1)
  assert len(_parse(small).find("details", "traj")) == 2
  assert small.count("3 more trajectories left out") == 2
  assert len(small) < len(text)


def test_empty_workdir_report(tmp_path):
  text = report_lib.build_report(str(tmp_path))
  assert "No evaluation results yet" in text


def test_launch_script(run_dir, tmp_path):
  workdir, _ = run_dir
  out = tmp_path / "r.html"
  res = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "report.py"), workdir,
                        f"--out={out}", "--max_trajectories=2"],
                       capture_output=True, text=True, timeout=120, check=True)
  assert res.stdout.strip() == str(out)
  assert out.read_text().count('<details class="traj') == 4
  res = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "report.py"), workdir],
                       capture_output=True, text=True, timeout=120, check=True)
  assert res.stdout.strip() == os.path.join(workdir, "report.html")
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "report.py"),
                        str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "no such workdir" in bad.stderr


def _chromium():
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  return None


def test_renders_in_browser(run_dir, tmp_path):
  """Chromium when installed (DOM dump + screenshot), else html.parser only: never skipped.

  Set MAPPA_REPORT_SCREENSHOT=/path.png to keep the screenshot for a human to look at.
  """
  workdir, _ = run_dir
  path = report_lib.write_report(workdir, str(tmp_path / "report.html"))
  browser = _chromium()
  if browser is None:
    # Fallback path, stated loudly: structure checked with Python's parser, no rendering.
    warnings.warn("chromium not installed: report checked with html.parser only")
    print("browser check: chromium NOT installed; html.parser structural check only")
    with open(path, encoding="utf-8") as f:
      dom = _parse(f.read())
    _check_structure(dom)
    assert all(v == 0 for v in dom.depth.values()), dom.depth
    return
  print(f"browser check: {browser} --headless (DOM dump and screenshot)")
  flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
  dump = subprocess.run(flags + ["--dump-dom", f"file://{path}"], capture_output=True,
                        text=True, timeout=120)
  assert dump.returncode == 0, dump.stderr[-2000:]
  _check_structure(_parse(dump.stdout))  # what the browser built, not what we wrote
  shot = tmp_path / "report.png"
  res = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2200",
                                f"file://{path}"], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
  png = shot.read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert struct.unpack(">II", png[16:24]) == (1280, 2200) and len(png) > 20000
  if os.environ.get("MAPPA_REPORT_SCREENSHOT"):
    shutil.copy(shot, os.environ["MAPPA_REPORT_SCREENSHOT"])


def test_trainer_evaluate_writes_dumps_and_report(tmp_path):
  """Trainer.evaluate on a stand-in trainer (scripted workflow): JSON, JSONL and report.html."""
  from types import SimpleNamespace
  from mappa_jax import train
  workdir = str(tmp_path / "run")
  config = mathchat_experiment.get_config("local")
  mconfig.save(config, workdir)
  tok = Tokenizer.from_dir(tiny_tokenizer_dir())
  sandbox = Sandbox("auto", SandboxLimits(timeout_s=20.0), max_concurrency=2)
  written = []
  loop = asyncio.new_event_loop()
  try:
    wf = MathChatWorkflow(engine=ScriptedEngine(tok, _script(True)), tokenizer=tok,
                          coach=RecordingCoach(), sandbox=sandbox,
                          sampling=SamplingParams(max_new_tokens=512), config=MathChatConfig())
    fake = SimpleNamespace(
        exp=mconfig.experiment(config), workdir=workdir, eval_sets={"toy": TASKS},
        eval_workflow=wf, loop=loop, tokenizer=tok,
        writer=SimpleNamespace(scalars=lambda step, s: written.append((step, s))))
    scalars = train.Trainer.evaluate(fake, 3)
  finally:
    loop.close()
    sandbox.close()
  assert scalars["eval/toy/rule_accuracy"] == 1.0 and written[0][0] == 3
  trajs = records.read_trajectories(
      os.path.join(workdir, "eval_results", "step000003_toy.trajectories.jsonl"))
  n = int(config.eval.n_samples_per_prompt) * len(TASKS)
  assert len(trajs) == n and all("prompt_text" in a for t in trajs for a in t["actions"])
  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert page.count('<details class="traj correct') == n and "latest (step 3)" in page


def test_coach_bias_section_charts_gaps_with_bands_and_lists_warnings(tmp_path):
  gap = "coach_bias/solver/add_minus_mul"
  lines = [{"step": s, "scalars": {gap: g, f"{gap}/ci_low": g - 0.5, f"{gap}/ci_high": g + 0.5,
                                   f"{gap}/warn": float(s == 3), "coach_bias/warnings": 0.0,
                                   "coach_bias/outcome/add_minus_mul": 0.01},
            "warnings": ["coach bias? step 3: solver <scores> add"] if s == 3 else []}
           for s, g in ((1, 0.2), (2, 0.9), (3, 1.6))]
  lines.append({**lines[1], "scalars": {**lines[1]["scalars"], gap: 1.0}})  # step 2 rerun
  with open(tmp_path / "coach_bias.jsonl", "w") as f:
    f.writelines(json.dumps(e) + "\n" for e in lines)
  assert [e["step"] for e in report_lib.load_coach_bias(str(tmp_path))] == [1, 2, 3]
  text = report_lib.build_report(str(tmp_path))
  dom = _parse(text)
  assert '<h2 id="coach-bias">Coach bias</h2>' in text
  assert 'class="ci"' in text  # the CI band of the score gap
  points = dom.find("circle", "pt")
  score = [p for p in points if p["data-series"] == "score add - mul"]
  assert [(p["data-step"], p["data-value"]) for p in score] == [("1", "0.2"), ("2", "1"),
                                                                 ("3", "1.6")]
  outcome = [p for p in points if p["data-series"] == "outcome add - mul x10"]
  assert [p["data-value"] for p in outcome] == ["0.1"] * 3  # x coach_bias.outcome_scale
  assert "&lt;scores&gt;" in text and "<scores>" not in text  # warnings are escaped
  assert "No coach_bias.jsonl" in report_lib.build_report(str(tmp_path / "none"))
