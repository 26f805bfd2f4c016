"""Before/after tables (eval/summary.py) and run comparison (eval/compare.py, launch/compare.py)."""
import json
import os
import subprocess
import sys

import pytest

from mappa_jax.data import loaders
from mappa_jax.eval import compare, runner, summary

N = 20  # problems


def _report(name, correct_problems, *, ps_score, ce_score, code_ok, agrees=None):
  """An EvalReport JSON of N problems x 2 samples: problems < correct_problems right."""
  tasks = [loaders.Task(f"p{i:02d}", f"q{i}", str(i), "t") for i in range(N)]
  samples = []
  for i in range(N):
    for k in range(2):
      outcome = {"executor_code_ok": code_ok(i, k)}
      if agrees is not None:
        outcome["verifier_agrees_tool"] = agrees
      samples.append(runner.SampleRecord(
          task_id=f"p{i:02d}", sample_index=k, answer=str(i),
          rule_correct=float(i < correct_problems),
          agent_scores={"verifier": 5.0, "problem_solver": ps_score, "code_executor": ce_score},
          outcome_metrics=outcome))
  return json.loads(json.dumps(runner.evaluate_math(name, tasks, samples).to_json()))


def _pair():
  before = _report("amc", 6, ps_score=4.0, ce_score=3.0, code_ok=lambda i, k: float(k == 0))
  after = _report("amc", 16, ps_score=6.5, ce_score=3.0, code_ok=lambda i, k: 1.0, agrees=1.0)
  return before, after


def test_before_after_numbers():
  table = summary.before_after(*_pair())
  rows = {r["key"]: r for r in table["rows"]}
  acc = rows["rule_accuracy"]
  assert acc["before"]["mean"] == pytest.approx(6 / N)
  assert acc["after"]["mean"] == pytest.approx(16 / N)
  change = acc["change"]
  assert change["diff"] == pytest.approx(0.5) and change["n"] == N
  assert change["ci_low"] <= 0.5 <= change["ci_high"]
  assert change["ci_low"] > 0  # 10 of 20 problems gained, none lost: a clear gain
  assert rows["coach_score/problem_solver"]["change"]["diff"] == pytest.approx(2.5)
  assert rows["coach_score/code_executor"]["change"]["diff"] == pytest.approx(0.0)
  assert rows["executor_code_ok"]["before"]["mean"] == pytest.approx(0.5)
  assert rows["executor_code_ok"]["change"]["diff"] == pytest.approx(0.5)
  assert rows["verifier_agrees_tool"]["before"] is None  # never measured before
  assert rows["verifier_agrees_tool"]["change"] is None
  # Agents in workflow order, after the headline, before the diagnostics.
  assert [r["key"] for r in table["rows"]] == [
      "rule_accuracy", "coach_score/problem_solver", "coach_score/code_executor",
      "coach_score/verifier", "executor_code_ok", "verifier_agrees_tool"]


def test_format_before_after():
  text = summary.format_before_after(summary.before_after(*_pair()), before_label="base (step 0)",
                                     after_label="trained (step 20)")
  lines = text.splitlines()
  assert lines[0].split() == ["base", "(step", "0)", "trained", "(step", "20)", "change"]
  acc = next(line for line in lines if line.startswith("team accuracy"))
  assert acc[30:].startswith("0.300 [") and acc[53:].startswith("0.800 [")
  assert acc[76:].startswith("+0.500 [+")
  ps = next(line for line in lines if "problem_solver" in line)
  assert ps.startswith("coach score  problem_solver") and "+2.50" in ps and "4.00" in ps
  tool = next(line for line in lines if line.startswith("Verifier agrees with tool"))
  assert tool.split()[4] == "n/a" and tool.split()[5] == "1.000"
  assert any(line.startswith("Code Executor run success") for line in lines)


def test_before_after_refuses_different_sets():
  before, after = _pair()
  with pytest.raises(ValueError, match="differ in name"):
    summary.before_after(before, dict(after, name="aime"))


def _run_dir(root, name, *, batch, n, points, eval_set="amc"):
  """A fake run: config.json and eval results {step: accuracy}."""
  workdir = root / name
  (workdir / "eval_results").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(
      {"name": name, "rollout": {"rollout_batch_size": batch, "n_samples_per_prompt": n}}))
  for step, acc in points.items():
    report = {"name": eval_set, "kind": "math", "per_task": {},
              "summary": {"rule_accuracy": {"mean": acc, "ci_low": acc - 0.1,
                                            "ci_high": acc + 0.1, "n": 10}}}
    (workdir / "eval_results" / f"step{step:06d}_{eval_set}.json").write_text(json.dumps(report))
  (workdir / "eval_results" / "step000000_amc.trajectories.jsonl").write_text("")
  return str(workdir)


def test_run_summary(tmp_path):
  before, after = _pair()
  workdir = tmp_path / "run"
  (workdir / "eval_results").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"name": "toy"}))
  assert not summary.has_before_after(str(workdir))
  (workdir / "eval_results" / "step000000_amc.json").write_text(json.dumps(before))
  assert not summary.has_before_after(str(workdir))
  (workdir / "eval_results" / "step000020_amc.json").write_text(json.dumps(after))
  (workdir / "eval_results" / "step000020_amc.trajectories.jsonl").write_text("")
  assert summary.has_before_after(str(workdir))
  text = summary.run_summary(str(workdir))
  assert "eval set amc (20 problems):" in text
  assert "base (step 0)" in text and "trained (step 20)" in text
  assert f"tensorboard --logdir {workdir / 'tensorboard' / 'toy'}" in text
  assert f"HTML report: {workdir / 'report.html'}" in text
  with pytest.raises(FileNotFoundError, match="no evaluation results"):
    summary.run_summary(str(tmp_path))


def test_rollouts_to_reach():
  points = [(0, 0.2), (16, 0.4), (32, 0.6)]
  assert compare.rollouts_to_reach(points, 0.5) == pytest.approx(24.0)
  assert compare.rollouts_to_reach(points, 0.4) == pytest.approx(16.0)
  assert compare.rollouts_to_reach(points, 0.1) == 0.0  # already there at the first eval
  assert compare.rollouts_to_reach(points, 0.61) is None
  # First crossing counts, even if the run dips again afterwards.
  assert compare.rollouts_to_reach([(0, 0.0), (10, 1.0), (20, 0.0), (30, 1.0)], 0.5) == 5.0


def test_compare_runs_and_sample_efficiency(tmp_path):
  a = _run_dir(tmp_path, "mappa", batch=4, n=2, points={0: 0.2, 2: 0.4, 4: 0.6})
  b = _run_dir(tmp_path, "outcome", batch=2, n=2, points={0: 0.2, 4: 0.3, 8: 0.5})
  result = compare.compare_runs([a, b])
  rows = result["sets"]["amc"]["rows"]
  assert [r["step"] for r in rows] == [0, 2, 4, 8]
  assert rows[2]["rollouts"] == {"mappa": 32, "outcome": 16}
  assert rows[1]["values"]["mappa"]["mean"] == pytest.approx(0.4)
  assert "outcome" not in rows[1]["values"]
  eff = {(e["run"], e["reference"]): e for e in result["sets"]["amc"]["efficiency"]}
  # mappa reaches outcome's final 0.5 halfway between 16 (0.4) and 32 (0.6) rollouts.
  assert eff["mappa", "outcome"]["rollouts"] == pytest.approx(24.0)
  assert eff["mappa", "outcome"]["reference_rollouts"] == 32
  assert eff["mappa", "outcome"]["ratio"] == pytest.approx(0.75)
  assert eff["outcome", "mappa"]["rollouts"] is None and eff["outcome", "mappa"]["ratio"] is None
  text = compare.format_compare(result)
  assert "32/16" in text and "0.400 [0.30, 0.50]" in text
  assert "mappa reaches outcome's final 0.500 after 24 rollouts (outcome: 32) = 0.75x" in text
  assert ("outcome never reaches mappa's final 0.600 (mappa: 32 rollouts): not reached"
          in text)


def test_compare_cli_writes_json(tmp_path):
  a = _run_dir(tmp_path, "mappa", batch=4, n=2, points={0: 0.2, 2: 0.4})
  b = _run_dir(tmp_path, "outcome", batch=4, n=2, points={0: 0.2, 2: 0.3})
  out = tmp_path / "cmp.json"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, os.path.join(root, "launch", "compare.py"), a, b,
                         f"--json={out}"], capture_output=True, text=True, timeout=120,
                        cwd=root, check=False)
  assert proc.returncode == 0, proc.stderr
  # mappa reaches outcome's final 0.3 halfway to its first 16 rollouts.
  assert "after 8 rollouts (outcome: 16) = 0.50x" in proc.stdout, proc.stdout
  data = json.loads(out.read_text())
  assert [r["name"] for r in data["runs"]] == ["mappa", "outcome"]
  assert data["sets"]["amc"]["rows"][1]["rollouts"] == {"mappa": 16, "outcome": 16}
  proc = subprocess.run([sys.executable, os.path.join(root, "launch", "compare.py"),
                         str(tmp_path / "missing")], capture_output=True, text=True,
                        timeout=120, cwd=root, check=False)
  assert proc.returncode == 1 and "config.json not found" in proc.stderr
