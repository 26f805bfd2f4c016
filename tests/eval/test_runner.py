"""Eval runner tests: math and DSBench aggregation, results JSON, TensorBoard scalars."""
import asyncio
import glob
import json
import math
import random

import pandas as pd
import pytest

from mappa_jax.coach.types import CoachResult
from mappa_jax.data import dsbench, loaders, synthetic
from mappa_jax.eval import runner
from mappa_jax.workflows.records import Action, Trajectory


def _action(agent, score, correct=None):
  return Action(agent=agent, turn=0, prompt_ids=[1], response_ids=[2], rollout_logprobs=[0.0],
                finish_reason="stop",
                coach=CoachResult(status="scored", score=score, answer_correct=correct))


def _math_tasks():
  return [loaders.Task("a", "What is 1+1?", "2", "add_sub"),
          loaders.Task("b", "What is 2*3?", "6", "mul_div"),
          loaders.Task("c", "What is 10-7?", "3", "add_sub")]


# Per task, per sample: (final answer text, coach verdict)
SCRIPT = {
    "a": [("\\boxed{2}", True), ("\\boxed{02}", True), ("\\boxed{3}", True), ("\\boxed{2.0}", False)],
    "b": [("\\boxed{5}", False), ("\\boxed{6}", True), ("\\boxed{5}", False), ("no box", None)],
    "c": [("\\boxed{4}", False), ("\\boxed{4}", True), ("\\boxed{3}", True), ("crash", None)],
}


async def _run_math(task, i):
  await asyncio.sleep(random.Random(hash((task.task_id, i)) % 1000).random() * 0.01)
  text, verdict = SCRIPT[task.task_id][i]
  if text == "crash":
    raise RuntimeError("engine died")
  traj = Trajectory(task_id=task.task_id, sample_index=i, task_type=task.task_type,
                    final_answer=text)
  traj.actions.append(_action("verifier", 7.0, verdict))
  if verdict is not None:
    traj.outcome["coach_correct"] = float(verdict)
  return traj


def test_run_eval_math(tmp_path):
  tasks = _math_tasks()
  path = tmp_path / "res" / "aime.json"
  report, trajs = asyncio.run(runner.run_eval("toy", tasks, _run_math, kind="math", n_samples=4,
                                              max_concurrency=3, k_values=(1, 2, 8),
                                              results_path=str(path)))
  assert len(trajs) == 12
  s = report.summary
  # rule: a 3/4, b 1/4, c 1/4 (the crash counts 0)
  assert s["rule_accuracy"]["mean"] == pytest.approx((0.75 + 0.25 + 0.25) / 3)
  # coach: a 3/4, b 1/3, c 2/3 (only judged samples)
  assert s["coach_accuracy"]["mean"] == pytest.approx((0.75 + 1 / 3 + 2 / 3) / 3)
  assert s["coach_judged_fraction"] == pytest.approx(10 / 12)
  # agreement over samples with both: a (1,1)(1,1)(0,1)(1,0) b (0,0)(1,1)(0,0) c (0,0)(0,1)(1,1)
  assert s["rule_coach_agreement"] == pytest.approx(7 / 10)
  assert s["majority_correct"] == pytest.approx(1 / 3)
  # cons@4: a -> 2 (3 votes), b -> 5 (2 votes), c -> 4 (2 votes)
  assert s["majority_vote_accuracy"] == pytest.approx(1 / 3)
  assert s["pass@2"]["mean"] == pytest.approx((1 + 0.5 + 0.5) / 3)
  assert "pass@8" not in s
  assert s["error_rate"] == pytest.approx(1 / 12)
  assert s["rule_accuracy/add_sub"] == pytest.approx(0.5)
  assert s["process_score"] == pytest.approx(7.0)
  ci = s["rule_accuracy"]
  assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
  data = json.loads(path.read_text())
  assert data["summary"]["rule_accuracy"]["n"] == 3 and len(data["samples"]) == 12
  scalars = report.scalars()
  assert scalars["eval/toy/rule_accuracy"] == pytest.approx(s["rule_accuracy"]["mean"])
  assert "eval/toy/coach_accuracy_ci_high" in scalars
  runner.write_tensorboard(tmp_path / "tb", scalars, step=3)
  from tensorboard.backend.event_processing import event_accumulator
  files = glob.glob(str(tmp_path / "tb" / "*"))
  ea = event_accumulator.EventAccumulator(files[0])
  ea.Reload()
  (ev,) = ea.Tensors("eval/toy/rule_accuracy")  # tensorboard.summary writes tensor summaries
  assert ev.step == 3
  assert ev.tensor_proto.float_val[0] == pytest.approx(s["rule_accuracy"]["mean"], rel=1e-6)


def test_math_agent_scores_and_outcome_metrics():
  tasks = _math_tasks()[:2]

  async def run(task, i):
    traj = Trajectory(task_id=task.task_id, sample_index=i, final_answer="\\boxed{2}")
    # problem_solver: a scores 2 per sample, b 6 and 8; the executor's invalid verdict is
    # left out of its mean.
    traj.actions.append(_action("problem_solver", 2.0 if task.task_id == "a" else 6.0 + 2 * i))
    traj.actions.append(_action("code_executor", 4.0))
    traj.actions.append(_action("code_executor", 9.0 if i == 0 else 5.0))
    traj.actions[-1].coach = (traj.actions[-1].coach if i == 0 else
                              CoachResult(status="invalid", reason="parse"))
    traj.outcome.update(rule_correct=1.0, executor_code_ok=float(i == 0), note="text")
    if task.task_id == "b":
      traj.outcome["verifier_agrees_tool"] = 1.0
    return traj

  report, _ = asyncio.run(runner.run_eval("toy", tasks, run, kind="math", n_samples=2))
  by = {(r.task_id, r.sample_index): r for r in report.samples}
  assert by["b", 1].agent_scores == {"problem_solver": 8.0, "code_executor": 4.0}
  assert by["a", 0].agent_scores["code_executor"] == pytest.approx(6.5)
  assert by["a", 0].outcome_metrics == {"executor_code_ok": 1.0}  # no grades, no text
  s = report.summary
  assert s["coach_score/problem_solver"]["mean"] == pytest.approx((2 + 7) / 2)
  assert s["coach_score/code_executor"]["mean"] == pytest.approx((6.5 + 4) / 2)
  assert s["executor_code_ok"]["mean"] == pytest.approx(0.5)
  assert s["executor_code_ok"]["n"] == 2
  assert s["verifier_agrees_tool"] == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}
  assert report.per_task["b"]["coach_score/problem_solver"] == pytest.approx(7.0)
  assert report.per_task["a"]["verifier_agrees_tool"] is None
  assert "eval/toy/executor_code_ok_ci_high" in report.scalars()
  json.dumps(report.to_json(), allow_nan=False)


def test_math_with_synthetic_tasks_and_outcome_keys():
  tasks = synthetic.generate(5, split="eval", seed=0)

  async def run(task, i):
    traj = Trajectory(task_id=task.task_id, sample_index=i, final_answer="")
    traj.outcome["rule_correct"] = float(i == 0)  # set by the workflow: taken as is
    return traj

  report, _ = asyncio.run(runner.run_eval("arith", tasks, run, kind="math", n_samples=2))
  assert report.summary["rule_accuracy"]["mean"] == pytest.approx(0.5)
  assert math.isnan(report.summary["coach_accuracy"]["mean"])
  assert "eval/arith/coach_accuracy" not in report.scalars()  # NaN left out
  json.dumps(report.to_json(), allow_nan=False)


def _dsbench_task(tmp_path):
  root = tmp_path / "ds"
  (root / "answers" / "t").mkdir(parents=True)
  (root / "data_resplit" / "t").mkdir(parents=True)
  pd.DataFrame({"id": [1, 2, 3, 4], "y": [0.0, 2.0, 2.0, 4.0]}).to_csv(
      root / "answers" / "t" / "test_answer.csv", index=False)
  pd.DataFrame({"id": [9], "x": [0]}).to_csv(root / "data_resplit" / "t" / "test.csv",
                                             index=False)
  pd.DataFrame({"id": [7, 8], "x": [0, 1], "y": [1.0, 3.0]}).to_csv(
      root / "data_resplit" / "t" / "train.csv", index=False)
  (root / "tasks.jsonl").write_text(json.dumps({"prompt": "p", "answer": None, "metadata": {
      "task_id": "t", "data_type": "regression", "metric": "rmse", "target_column": "y",
      "id_column": "id"}}) + "\n")
  return dsbench.load_dsbench_tasks(root, "tasks.jsonl")


def test_run_eval_dsbench(tmp_path):
  tasks = _dsbench_task(tmp_path)
  task = tasks[0]
  # baseline = train mean 2 -> rmse sqrt((4+0+0+4)/4) = sqrt(2)
  perfect = tmp_path / "perfect.csv"
  pd.DataFrame({"id": [4, 3, 2, 1], "y": [4.0, 2.0, 2.0, 0.0]}).to_csv(perfect, index=False)

  async def run(t, i):
    traj = Trajectory(task_id=t.task_id, sample_index=i, task_type=t.task_type)
    traj.actions.append(_action("analyst", float(i)))
    if i == 0:  # the workflow already scored it (NaN fields dropped, as workflows do)
      traj.outcome.update({"valid": False, "error": "no submission.csv in the workspace",
                           "metric": "rmse"})
    elif i == 1:
      traj.metadata["submission_csv"] = str(perfect)  # scored by the runner
    elif i == 2:
      traj.outcome.update(dsbench.score_task(t, perfect))
    else:
      raise RuntimeError("sandbox crashed")
    return traj

  report, _ = asyncio.run(runner.run_eval("dsb", tasks, run, kind="dsbench", n_samples=4,
                                          results_path=str(tmp_path / "r.json")))
  t = report.per_task["t"]
  assert t["success_rate"] == 0.5
  assert t["baseline_value"] == pytest.approx(math.sqrt(2))
  assert t["raw_value"] == pytest.approx(0.0)
  assert t["fair_value"] == pytest.approx(math.sqrt(2) / 2)  # two failures at the baseline
  assert t["raw_gain"] == pytest.approx(1.0) and t["fair_gain"] == pytest.approx(0.5)
  assert t["process_score"] == pytest.approx(1.0)  # mean of the scored runs 0, 1, 2
  assert t["reference_acc"] == pytest.approx(0.75)  # the crash counts 0
  assert any("sandbox crashed" in e for e in t["errors"])
  assert report.summary["success_rate"]["mean"] == 0.5
  sc = report.scalars()
  assert sc["eval/dsb/success_rate"] == 0.5 and sc["eval/dsb/t/fair_value"] == pytest.approx(
      math.sqrt(2) / 2)
  assert json.loads((tmp_path / "r.json").read_text())["kind"] == "dsbench"


def test_run_eval_rejects_bad_kind():
  with pytest.raises(ValueError, match="kind"):
    asyncio.run(runner.run_eval("x", [], _run_math, kind="other"))
