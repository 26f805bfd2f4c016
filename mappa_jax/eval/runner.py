"""Evaluation runner: run a workflow over an eval set, grade, aggregate, write JSON + scalars.

Math sets report the rule-graded accuracy (last `\\boxed{}` + `grading.is_equivalent`) next to
the coach-judged accuracy (the Verifier's ANSWER_CORRECT, the reference's "acc"), with majority
statistics and pass@k grouped by problem id, and bootstrap 95% CIs over problems.

DSBench sets report the success rate (a valid submission, see `data/dsbench.py`), the Analyst's
process score (the reference's "accuracy"), and per task the raw metric (successful runs only)
and the fair metric (failed runs count as the trivial baseline), plus unitless normalized gains
averaged over tasks.

A crashed workflow (Trajectory.error set) counts as wrong / failed, never dropped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from mappa_jax.coach.types import CoachFatalError
from mappa_jax.data import dsbench, grading
from mappa_jax.data.loaders import Task
from mappa_jax.eval import metrics
from mappa_jax.schema import Section, field
from mappa_jax.workflows import records
from mappa_jax.workflows.records import Trajectory


@dataclasses.dataclass
class SampleRecord:
  """One graded sample (one trajectory) of an eval set.

  Attributes:
    task_id, sample_index, task_type: which task and sample.
    answer: the extracted final answer (math) or None.
    rule_correct: 1.0 / 0.0 from the rule grader (math), None when not gradable.
    coach_correct: 1.0 / 0.0 from the coach's verdict, None when the coach gave none.
    process_score: the last scored coach score of the final agent (0-10), None if none.
    error: the workflow's error ('' when it completed).
    success: DSBench: a valid submission.
    metric, value, baseline_value, fair_value, normalized_gain, higher_is_better: DSBench
      scoring (see dsbench.score_submission).
    agent_scores: agent -> mean of its scored coach scores in this trajectory (agents without
      a scored action are absent).
    outcome_metrics: the trajectory's other numeric outcome signals (MathChat:
      executor_code_ok, verifier_agrees_tool), everything but rule/coach correctness.
  """
  task_id: str
  sample_index: int
  task_type: str = ""
  answer: str | None = None
  rule_correct: float | None = None
  coach_correct: float | None = None
  process_score: float | None = None
  error: str = ""
  success: bool | None = None
  metric: str | None = None
  value: float | None = None
  baseline_value: float | None = None
  fair_value: float | None = None
  normalized_gain: float | None = None
  higher_is_better: bool | None = None
  agent_scores: dict[str, float] = dataclasses.field(default_factory=dict)
  outcome_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def _agent_scores(traj: Trajectory) -> dict[str, float]:
  """agent -> mean scored coach score over the agent's actions (unscored ones left out)."""
  scores: dict[str, list[float]] = {}
  for a in traj.actions:
    if a.coach is not None and a.coach.status == "scored" and a.coach.score is not None:
      scores.setdefault(a.agent, []).append(float(a.coach.score))
  return {agent: float(np.mean(v)) for agent, v in scores.items()}


# Outcome keys that already have their own SampleRecord fields.
_GRADE_KEYS = ("rule_correct", "coach_correct")


def _outcome_metrics(traj: Trajectory) -> dict[str, float]:
  """The finite numeric traj.outcome entries other than rule/coach correctness."""
  return {k: float(v) for k, v in traj.outcome.items()
          if k not in _GRADE_KEYS and isinstance(v, (int, float, np.number))
          and not isinstance(v, bool) and math.isfinite(float(v))}


def _last_score(traj: Trajectory, agent: str | None) -> float | None:
  actions = traj.actions_of(agent) if agent else traj.actions
  for a in reversed(actions):
    if a.coach is not None and a.coach.status == "scored" and a.coach.score is not None:
      return float(a.coach.score)
  return None


def math_sample(traj: Trajectory, task: Task, *, final_agent: str | None = "verifier",
                grade: bool = True) -> SampleRecord:
  """Grades a MathChat-style trajectory.

  Uses traj.outcome['rule_correct'] / ['coach_correct'] when the workflow set them, else grades
  traj.final_answer (its last boxed answer, or the text itself) against task.answer.
  """
  text = traj.final_answer or ""
  answer = grading.extract_boxed_answer(text) or (text.strip() or None)
  rule = traj.outcome.get("rule_correct")
  if rule is None and grade and task.answer is not None:
    rule = float(grading.is_equivalent(answer, task.answer)) if answer else 0.0
  if traj.error and rule is None:
    rule = 0.0
  coach = traj.outcome.get("coach_correct")
  return SampleRecord(
      task_id=str(traj.task_id), sample_index=traj.sample_index,
      task_type=traj.task_type or task.task_type, answer=answer,
      rule_correct=None if rule is None else float(rule),
      coach_correct=None if coach is None else float(coach),
      process_score=_last_score(traj, final_agent), error=traj.error,
      agent_scores=_agent_scores(traj), outcome_metrics=_outcome_metrics(traj))


def dsbench_sample(traj: Trajectory, task: Task, *, final_agent: str | None = "analyst",
                   baseline_cache: dict[str, float] | None = None) -> SampleRecord:
  """Reads a DSBench trajectory's scoring (traj.outcome, from dsbench.score_submission).

  When the outcome has no scoring but traj.metadata['submission_csv'] names a file, it is
  scored here. A missing baseline (e.g. no submission at all) is computed from the task files.
  """
  out = dict(traj.outcome)
  m = task.metadata
  if "valid" not in out and traj.metadata.get("submission_csv") and m.get("answer_file"):
    out = dsbench.score_task(task, traj.metadata["submission_csv"])
  success = bool(out.get("valid")) and not traj.error
  metric = out.get("metric") or m.get("metric")
  baseline = out.get("baseline_value")
  if (baseline is None or not math.isfinite(baseline)) and m.get("answer_file") and metric:
    cache = baseline_cache if baseline_cache is not None else {}
    if task.task_id not in cache:
      cache[task.task_id] = dsbench.baseline_score(
          m["answer_file"], metric=metric, id_column=m["id_column"],
          target_columns=m["target_columns"], train_csv=m.get("train_file"))
    baseline = cache[task.task_id]
  value = out.get("value") if success else None
  fair = value if success else baseline
  gain = None
  if metric and fair is not None and baseline is not None:
    gain = dsbench.normalized_gain(fair, baseline, metric) if success else 0.0
  hib = out.get("higher_is_better")
  if hib is None and metric:
    hib = dsbench.metric_spec(metric).higher_is_better
  return SampleRecord(
      task_id=str(traj.task_id), sample_index=traj.sample_index,
      task_type=traj.task_type or task.task_type, process_score=_last_score(traj, final_agent),
      error=traj.error or ("" if success else str(out.get("error", "no valid submission"))),
      success=success, metric=metric, value=value, baseline_value=baseline, fair_value=fair,
      normalized_gain=gain, higher_is_better=hib)


@dataclasses.dataclass
class EvalReport:
  """Aggregated results of one eval set.

  summary: metric name -> {'mean', 'ci_low', 'ci_high', 'n'} or a plain number.
  per_task: task id -> per-task numbers. samples: every SampleRecord.
  """
  name: str
  kind: str
  summary: dict[str, Any]
  per_task: dict[str, dict[str, Any]]
  samples: list[SampleRecord]

  def scalars(self, prefix: str = "eval") -> dict[str, float]:
    """Flat {'eval/<set>/<metric>': value} for TensorBoard (CI bounds as '<metric>_ci_low').

    Non-finite values (e.g. coach accuracy when the coach gave no verdict) are left out.
    """
    return {k: v for k, v in self._scalars(prefix).items() if math.isfinite(v)}

  def _scalars(self, prefix: str) -> dict[str, float]:
    out = {}
    for key, v in self.summary.items():
      if isinstance(v, dict):
        out[f"{prefix}/{self.name}/{key}"] = v["mean"]
        out[f"{prefix}/{self.name}/{key}_ci_low"] = v["ci_low"]
        out[f"{prefix}/{self.name}/{key}_ci_high"] = v["ci_high"]
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        out[f"{prefix}/{self.name}/{key}"] = float(v)
    if self.kind == "dsbench":
      for tid, t in self.per_task.items():
        for key in ("raw_value", "fair_value", "success_rate"):
          if t.get(key) is not None:
            out[f"{prefix}/{self.name}/{tid}/{key}"] = float(t[key])
    return out

  def to_json(self) -> dict[str, Any]:
    return _clean({"name": self.name, "kind": self.kind, "summary": self.summary,
                   "per_task": self.per_task,
                   "samples": [dataclasses.asdict(s) for s in self.samples]})


def _clean(x):
  """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _stat(per: dict[str, float], n_boot: int, seed: int) -> dict[str, float]:
  return metrics.summarize(per, n_boot=n_boot, seed=seed)


def evaluate_math(name: str, tasks: Sequence[Task], samples: Sequence[SampleRecord], *,
                  k_values: Sequence[int] = (1,), n_boot: int = 2000, seed: int = 0
                  ) -> EvalReport:
  """Math aggregates: rule vs coach accuracy, majority, cons@n, pass@k, per task type, plus
  'coach_score/<agent>' and every outcome metric of the samples (e.g. 'executor_code_ok')."""
  by_id = {t.task_id: t for t in tasks}
  unknown = {s.task_id for s in samples} - set(by_id)
  if unknown:
    raise ValueError(f"samples for unknown task ids {sorted(unknown)[:5]}")
  ids = [s.task_id for s in samples]
  rule = [0.0 if s.rule_correct is None else s.rule_correct for s in samples]
  summary: dict[str, Any] = {}
  per_rule = metrics.per_problem_mean(ids, rule)
  summary["rule_accuracy"] = _stat(per_rule, n_boot, seed)
  judged = [(s.task_id, s.coach_correct) for s in samples if s.coach_correct is not None]
  per_coach = metrics.per_problem_mean([j[0] for j in judged], [j[1] for j in judged])
  summary["coach_accuracy"] = _stat(per_coach, n_boot, seed)
  summary["coach_judged_fraction"] = len(judged) / len(samples) if samples else float("nan")
  both = [(s.rule_correct, s.coach_correct) for s in samples
          if s.rule_correct is not None and s.coach_correct is not None]
  summary["rule_coach_agreement"] = (float(np.mean([a == b for a, b in both])) if both
                                     else float("nan"))
  summary["majority_correct"] = metrics.majority_correct(ids, rule)
  gold = {t.task_id: t.answer for t in tasks}
  summary["majority_vote_accuracy"] = metrics.majority_vote_accuracy(
      ids, [s.answer for s in samples], gold, grading.is_equivalent, grading.normalize_answer)
  n_min = min((len(v) for v in metrics.group_by_problem(ids, rule).values()), default=0)
  for k in k_values:
    if 1 <= k <= n_min:
      summary[f"pass@{k}"] = _stat(metrics.per_problem_pass_at_k(ids, rule, k), n_boot, seed)
  scores = [s.process_score for s in samples if s.process_score is not None]
  summary["process_score"] = float(np.mean(scores)) if scores else float("nan")
  summary["error_rate"] = float(np.mean([bool(s.error) for s in samples])) if samples else 0.0
  summary["n_problems"] = len(per_rule)
  summary["n_samples"] = len(samples)
  for ttype in sorted({by_id[i].task_type for i in per_rule}):
    sub = {i: v for i, v in per_rule.items() if by_id[i].task_type == ttype}
    summary[f"rule_accuracy/{ttype}"] = float(np.mean(list(sub.values())))
  # Per-agent coach scores and the workflow's outcome metrics: per-problem means over the
  # samples that have the value, CI over problems (the unit of sampling, as for accuracy).
  extra: dict[str, list[tuple[str, float]]] = {}
  for s in samples:
    for agent, score in s.agent_scores.items():
      extra.setdefault(f"coach_score/{agent}", []).append((s.task_id, score))
    for key, value in s.outcome_metrics.items():
      extra.setdefault(key, []).append((s.task_id, value))
  extra_per: dict[str, dict[str, float]] = {}
  for key in sorted(extra):
    extra_per[key] = metrics.per_problem_mean([t for t, _ in extra[key]],
                                              [v for _, v in extra[key]])
    summary[key] = _stat(extra_per[key], n_boot, seed)
  per_task = {
      tid: {"rule_accuracy": per_rule[tid], "coach_accuracy": per_coach.get(tid),
            **{key: per.get(tid) for key, per in extra_per.items()},
            "task_type": by_id[tid].task_type, "gold": by_id[tid].answer,
            "answers": [s.answer for s in samples if s.task_id == tid]}
      for tid in per_rule}
  return EvalReport(name=name, kind="math", summary=summary, per_task=per_task,
                    samples=list(samples))


def evaluate_dsbench(name: str, tasks: Sequence[Task], samples: Sequence[SampleRecord], *,
                     n_boot: int = 2000, seed: int = 0) -> EvalReport:
  """DSBench aggregates: success rate, process score, raw/fair metrics and gains per task."""
  by_id = {t.task_id: t for t in tasks}
  groups = metrics.group_by_problem([s.task_id for s in samples], list(samples))
  per_task: dict[str, dict[str, Any]] = {}
  for tid, recs in groups.items():
    ok = [r for r in recs if r.success]
    fair = [r.fair_value for r in recs if r.fair_value is not None]
    per_task[tid] = {
        "metric": recs[0].metric, "higher_is_better": recs[0].higher_is_better,
        "task_type": by_id[tid].task_type if tid in by_id else recs[0].task_type,
        "n": len(recs), "success_rate": len(ok) / len(recs),
        "raw_value": float(np.mean([r.value for r in ok])) if ok else None,
        "fair_value": float(np.mean(fair)) if fair else None,
        "baseline_value": recs[0].baseline_value,
        "raw_gain": float(np.mean([r.normalized_gain for r in ok])) if ok else None,
        "fair_gain": float(np.mean([r.normalized_gain or 0.0 for r in recs])),
        "process_score": (float(np.mean([r.process_score for r in recs
                                         if r.process_score is not None]))
                          if any(r.process_score is not None for r in recs) else None),
        # The reference's DSBench "accuracy": the Analyst's last score, 0 for a run without one.
        "reference_acc": float(np.mean([r.process_score or 0.0 for r in recs])),
        "errors": sorted({r.error for r in recs if r.error}),
    }
  summary: dict[str, Any] = {
      "success_rate": _stat({t: v["success_rate"] for t, v in per_task.items()}, n_boot, seed),
      "fair_gain": _stat({t: v["fair_gain"] for t, v in per_task.items()}, n_boot, seed),
      "raw_gain": _stat({t: v["raw_gain"] for t, v in per_task.items()
                         if v["raw_gain"] is not None}, n_boot, seed),
      "process_score": _stat({t: v["process_score"] for t, v in per_task.items()
                              if v["process_score"] is not None}, n_boot, seed),
      "reference_acc": _stat({t: v["reference_acc"] for t, v in per_task.items()}, n_boot, seed),
      "n_tasks": len(per_task),
      "n_samples": len(samples),
  }
  return EvalReport(name=name, kind="dsbench", summary=summary, per_task=per_task,
                    samples=list(samples))


def write_results(report: EvalReport, path: str | os.PathLike) -> str:
  """Writes the report as JSON (NaN -> null); returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1, sort_keys=True, allow_nan=False)
  return path


def write_tensorboard(logdir: str | os.PathLike, scalars: dict[str, float], step: int) -> None:
  """Appends finite scalars to a TensorBoard event file (no TensorFlow needed)."""
  from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
  writer = Writer(os.fspath(logdir))
  try:
    for tag, value in sorted(scalars.items()):
      if value is not None and math.isfinite(value):
        writer.add_scalar(tag, float(value), step)
    writer.flush()
  finally:
    writer.close()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(Section):
  """The `eval` section: when and how the team is evaluated during training."""
  every_steps: int = field(4, "REF evaluation interval in global steps (0 = never)",
                           check=lambda v: v >= 0, fix="Use >= 0 (0 = never).")
  at_start: bool = field(True, "REF evaluate before training (logged as step 0)")
  n_samples_per_prompt: int = field(4, "REF samples per eval task (2 x 2 engines)",
                                    check=lambda v: v > 0, fix="Use >= 1.")
  sets: tuple[str, ...] = field((), "eval set names: stems of data.eval_files ('synthetic' / "
                                "'suite' for the synthetic sources); () = all")


RunOne = Callable[[Task, int], Awaitable[Trajectory]]


async def run_trajectories(tasks: Sequence[Task], run_one: RunOne, *, n_samples: int,
                           max_concurrency: int = 16) -> list[Trajectory]:
  """Runs run_one(task, i) for every task and i < n_samples, bounded concurrency.

  Results come back in completion order (deliberately: aggregation groups by task id). A
  raising run becomes a Trajectory with `error` set, except for a CoachFatalError, which
  propagates (the remaining runs are cancelled).
  """
  sem = asyncio.Semaphore(max_concurrency)

  async def one(task: Task, i: int) -> Trajectory:
    async with sem:
      try:
        traj = await run_one(task, i)
      except CoachFatalError:
        raise  # the coach is gone or misconfigured: stop, do not count the run as failed
      except Exception as e:  # pylint: disable=broad-except  (a crashed run counts as failed)
        return Trajectory(task_id=task.task_id, sample_index=i, task_type=task.task_type,
                          error=f"{type(e).__name__}: {e}")
      if traj.task_id != task.task_id:
        raise ValueError(f"run_one returned trajectory for {traj.task_id!r}, expected "
                         f"{task.task_id!r}")
      return traj

  jobs = [asyncio.ensure_future(one(t, i)) for t in tasks for i in range(n_samples)]
  try:
    return [await f for f in asyncio.as_completed(jobs)]
  except BaseException:
    for job in jobs:  # no orphan runs keep calling a dead coach
      job.cancel()
    raise


async def _math_report(name, tasks, trajs, *, k_values, n_boot, seed) -> EvalReport:
  by_id = {t.task_id: t for t in tasks}
  samples = [await asyncio.to_thread(math_sample, tr, by_id[tr.task_id]) for tr in trajs]
  return evaluate_math(name, tasks, samples, k_values=k_values, n_boot=n_boot, seed=seed)


async def _dsbench_report(name, tasks, trajs, *, k_values, n_boot, seed) -> EvalReport:
  del k_values  # DSBench reports rates and gains, not pass@k
  by_id = {t.task_id: t for t in tasks}
  cache: dict[str, float] = {}
  samples = [dsbench_sample(tr, by_id[tr.task_id], baseline_cache=cache) for tr in trajs]
  return evaluate_dsbench(name, tasks, samples, n_boot=n_boot, seed=seed)


# Evaluation kinds (a workflow names its own, Workflow.EVAL_KIND): graded samples -> report.
EVAL_KINDS = {"math": _math_report, "dsbench": _dsbench_report}


async def run_eval(name: str, tasks: Sequence[Task], run_one: RunOne, *, kind: str,
                   n_samples: int = 4, max_concurrency: int = 16, k_values: Sequence[int] = (1,),
                   n_boot: int = 2000, seed: int = 0, results_path: str | None = None,
                   trajectories_path: str | None = None,
                   decode: Callable[[list[int]], str] | None = None
                   ) -> tuple[EvalReport, list[Trajectory]]:
  """Runs a workflow over an eval set and aggregates ('math' or 'dsbench').

  Args:
    name: the eval set's name (used in scalar tags 'eval/<name>/<metric>').
    tasks: the eval tasks.
    run_one: async (task, sample_index) -> Trajectory (e.g. a bound workflow.run).
    kind: how samples are graded and aggregated: a key of EVAL_KINDS ('math', 'dsbench').
    n_samples: samples per task.
    results_path: when given, the results JSON is written there.
    trajectories_path: when given, every trajectory is written there as JSONL (sorted by task
      id and sample index; see records.write_trajectories), for `eval/report.py`.
    decode: token ids -> text, to dump each action's prompt text with the trajectories.
  """
  if kind not in EVAL_KINDS:
    raise ValueError(f"kind must be one of {sorted(EVAL_KINDS)}, got {kind!r}")
  trajs = await run_trajectories(tasks, run_one, n_samples=n_samples,
                                 max_concurrency=max_concurrency)
  report = await EVAL_KINDS[kind](name, tasks, trajs, k_values=k_values, n_boot=n_boot,
                                  seed=seed)
  if results_path:
    write_results(report, results_path)
  if trajectories_path:
    records.write_trajectories(sorted(trajs, key=lambda t: (str(t.task_id), t.sample_index)),
                               trajectories_path, decode=decode)
  return report, trajs
