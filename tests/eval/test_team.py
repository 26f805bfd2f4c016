"""launch/eval.py and eval/team.py: a run's team on a task file (base, latest, chosen step)."""
import json
import os
import subprocess
import sys

import pytest

from mappa_jax import config as mconfig
from mappa_jax.eval import team

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = [{"prompt": "What is 2+3?", "answer": "5", "task_id": "t1", "task_type": "add"},
         {"prompt": "What is 4*2?", "answer": "8", "task_id": "t2", "task_type": "mul"},
         {"prompt": "What is 9-1?", "answer": "8"}]
_RUN_FLAGS = (
    "--config.train.num_steps=1", "--config.checkpoint.every_steps=1",
    # Evaluations at steps 0 and 1 make train() print its before/after summary.
    "--config.eval.every_steps=1", "--config.eval.n_samples_per_prompt=1",
    "--config.rollout.rollout_batch_size=2", "--config.rollout.n_samples_per_prompt=1",
    "--config.rollout.max_new_tokens=12", "--config.rollout.min_new_tokens=2",
    "--config.train.samples_per_optimizer_step=2", "--config.train.micro_batch_size=1",
    "--config.data.synthetic.n_train=4", "--config.data.synthetic.n_eval=1",
    "--config.checkpoint.async_save=False")


def _write_tasks(path):
  path.write_text("".join(json.dumps(r) + "\n" for r in TASKS))
  return str(path)


def test_load_task_file_ids_types_and_suffix(tmp_path):
  config = mconfig.load_config("experiments/mathchat.py:smoke")
  config.data.prompt_suffix = "Box it."
  tasks = team.load_task_file(_write_tasks(tmp_path / "three.jsonl"), config)
  assert [t.task_id for t in tasks] == ["t1", "t2", "three-2"]
  assert [t.task_type for t in tasks] == ["add", "mul", "three"]
  assert tasks[0].prompt == "What is 2+3?\n\nBox it." and tasks[2].answer == "8"
  (tmp_path / "ids.json").write_text(json.dumps([{"prompt": "p", "answer": 1, "id": "a-1"}]))
  assert team.load_task_file(str(tmp_path / "ids.json"), config)[0].task_id == "a-1"
  with pytest.raises(FileNotFoundError, match="--tasks="):
    team.load_task_file(str(tmp_path / "nope.jsonl"), config)


def test_step_choice_errors_name_the_fix(tmp_path):
  for d in ("2", "4", "6.orbax-checkpoint-tmp-1"):
    (tmp_path / "checkpoints" / d).mkdir(parents=True)
  assert team.checkpoint_steps(str(tmp_path)) == [2, 4]
  assert team._choose_step(str(tmp_path), None, False) == 4  # pylint: disable=protected-access
  assert team._choose_step(str(tmp_path), 2, False) == 2  # pylint: disable=protected-access
  assert team._choose_step(str(tmp_path), None, True) is None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"--step=3: .* available steps: \[2, 4\]"):
    team._choose_step(str(tmp_path), 3, False)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="not both"):
    team._choose_step(str(tmp_path), 2, True)  # pylint: disable=protected-access
  with pytest.raises(FileNotFoundError, match="--base"):
    team._choose_step(str(tmp_path / "empty"), None, False)  # pylint: disable=protected-access
  with pytest.raises(FileNotFoundError, match="config.py not found"):
    team.evaluate_team(str(tmp_path), str(tmp_path / "t.jsonl"))


def _snapshot(workdir):
  """{path: (size, mtime)} of the run's checkpoints and TensorBoard files."""
  out = {}
  for sub in ("checkpoints", "tensorboard"):
    for root, _, files in os.walk(os.path.join(workdir, sub)):
      for f in files:
        st = os.stat(os.path.join(root, f))
        out[os.path.join(root, f)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.mark.slow
def test_eval_cli_base_and_latest(tmp_path):
  workdir = str(tmp_path / "run")
  run = subprocess.run(
      [sys.executable, "launch/run.py", "--config=experiments/mathchat.py:smoke",
       f"--workdir={workdir}", *_RUN_FLAGS],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  # The trainer's closing summary: step 0 vs step 1 of the synthetic eval set.
  assert "base (step 0)" in run.stdout and "trained (step 1)" in run.stdout, run.stdout
  assert "team accuracy" in run.stdout and "Code Executor run success" in run.stdout
  assert os.path.join(workdir, "report.html") in run.stdout
  tasks = _write_tasks(tmp_path / "tasks.jsonl")
  before = _snapshot(workdir)
  assert before

  out = tmp_path / "base.json"
  proc = subprocess.run(
      [sys.executable, "launch/eval.py", f"--workdir={workdir}", f"--tasks={tasks}", "--base",
       "--n_samples=2", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tasks (base): accuracy " in proc.stdout and "over 3 problems x 2 samples" in proc.stdout
  data = json.loads(out.read_text())
  acc = data["summary"]["accuracy"]
  assert set(acc) == {"mean", "ci_low", "ci_high", "n"} and acc["n"] == 3
  assert acc == data["summary"]["rule_accuracy"]
  assert acc["ci_low"] <= acc["mean"] <= acc["ci_high"]
  assert data["evaluated"]["checkpoint"] == "base" and data["evaluated"]["step"] == 0
  assert len(data["samples"]) == 6 and sorted(data["per_task"]) == ["t1", "t2", "tasks-2"]
  assert "executor_code_ok" in data["summary"]
  assert any(k.startswith("coach_score/") for k in data["summary"])

  bad = subprocess.run(
      [sys.executable, "launch/eval.py", f"--workdir={workdir}", f"--tasks={tasks}",
       "--step=7"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 1 and "available steps: [1]" in bad.stderr, bad.stderr[-2000:]

  result = team.evaluate_team(workdir, tasks)  # the latest checkpoint, in this process
  assert result.step == 1 and result.which == "step 1"
  assert result.results_path == os.path.join(workdir, "eval_cli", "tasks_step000001.json")
  data = json.loads(open(result.results_path, encoding="utf-8").read())
  assert data["evaluated"]["checkpoint"] == "step 1"
  assert data["summary"]["accuracy"]["n"] == 3 and len(data["samples"]) == 3  # run's 1 sample
  assert _snapshot(workdir) == before  # nothing written into checkpoints or TensorBoard
