"""Evaluates a run's team on a task file: its latest checkpoint, a chosen step, or the base model.

  result = evaluate_team('/runs/mathchat', 'problems.jsonl', step=None)   # latest checkpoint
  print(result.line)      # accuracy 0.561 [95% CI 0.51, 0.61] over 40 problems x 4 samples
  result.results_path     # the results JSON (summary.accuracy = {mean, ci_low, ci_high, n})

The team runs exactly as in the run's own evaluations: the run's resolved config
(<workdir>/config.py), its eval workflow (eval temperature, coach, sandbox limits) and the run's
prompt suffix on every task. Nothing is written into the run's checkpoints or TensorBoard:
TensorBoard is off, nothing is saved, and sandbox workspaces go to a temporary directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Sequence

import ml_collections

from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax.data import loaders
from mappa_jax.data.loaders import Task
from mappa_jax.eval import runner as eval_runner
from mappa_jax.progress import phase


@dataclasses.dataclass
class TeamEval:
  """The outcome of `evaluate_team`.

  Attributes:
    report: the aggregated EvalReport (summary['accuracy'] = rule accuracy with its CI).
    step: the checkpoint step evaluated (0 for the untrained base team).
    which: 'base' or 'step <N>'.
    results_path: where the results JSON was written.
    line: a one-line accuracy summary with the 95% CI.
  """
  report: eval_runner.EvalReport
  step: int
  which: str
  results_path: str
  line: str


def load_run_config(workdir: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The resolved config launch/run.py wrote to <workdir>/config.py, validated.

  Raises:
    FileNotFoundError: the workdir has no config.py.
    mconfig.ConfigError: an override or the saved config is invalid.
  """
  path = os.path.join(os.path.abspath(workdir), "config.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir={workdir}: {path} not found; pass the directory a "
                            "training run was started in (launch/run.py --workdir=...)")
  return mconfig.validate(mconfig.load_config(path, overrides))


def load_task_file(path: str, config: ml_collections.ConfigDict) -> list[Task]:
  """{"prompt", "answer"[, "task_id", "task_type"]} records (JSON array or JSONL) as Tasks,
  with the run's prompt suffix appended as in training (data.config.load_files).

  Records without task_id use an "id" field when they have one, else '<file stem>-<index>'.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"--tasks={path}: no such file")
  suffix = config.data.prompt_suffix
  tasks = loaders.load_tasks(path, id_key="task_id", task_type_key="task_type",
                             add_prompt_suffix=bool(suffix),
                             prompt_suffix="\n\n" + suffix if suffix else "")
  if not tasks:
    raise ValueError(f"--tasks={path}: the file holds no records")
  ids = [str(t.metadata["id"]) if "task_id" not in t.metadata and "id" in t.metadata
         else t.task_id for t in tasks]
  if len(set(ids)) == len(ids):  # mappa-bench style "id" fields, when they are unique
    tasks = [dataclasses.replace(t, task_id=i) for t, i in zip(tasks, ids)]
  return tasks


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in <workdir>/checkpoints (Orbax step directories;
  unfinished saves live in temporary directories and are not listed)."""
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d)))


def _choose_step(workdir: str, step: int | None, base: bool) -> int | None:
  """The checkpoint step to restore (None = the base team), checked before any model loads."""
  if base:
    if step is not None:
      raise ValueError("pass either --step=N or --base, not both")
    return None
  steps = checkpoint_steps(workdir)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first, or pass "
                              "--base to evaluate the untrained team")
    return steps[-1]
  if step not in steps:
    raise ValueError(f"--step={step}: no such checkpoint in {workdir}/checkpoints; available "
                     f"steps: {steps or 'none'} (or --base for the untrained team)")
  return step


def _eval_config(config: ml_collections.ConfigDict, n_samples: int | None
                 ) -> ml_collections.ConfigDict:
  """Eval-only settings on a freshly loaded config: no TensorBoard, no background saves."""
  config.logging.tensorboard = False
  config.checkpoint.async_save = False
  if n_samples is not None:
    if n_samples < 1:
      raise ValueError(f"--n_samples={n_samples}: must be >= 1")
    config.eval.n_samples_per_prompt = int(n_samples)
  return config


def evaluate_team(workdir: str, tasks_file: str, *, step: int | None = None, base: bool = False,
                  n_samples: int | None = None, out: str | None = None,
                  overrides: Sequence[str] = ()) -> TeamEval:
  """Runs the team of run `workdir` on `tasks_file` and writes the results JSON.

  Args:
    workdir: the run directory (config.py, checkpoints/).
    tasks_file: JSON or JSONL of {"prompt", "answer"} records.
    step: the checkpoint to evaluate; None = the latest.
    base: evaluate the untrained team (the run's base model) instead of a checkpoint.
    n_samples: samples per task (default: the run's eval.n_samples_per_prompt).
    out: results JSON path (default <workdir>/eval_cli/<tasks stem>_<base|stepN>.json).
    overrides: config overrides ('rollout.eval_temperature=0.0', ...).

  Raises:
    FileNotFoundError / ValueError: a missing file, an unknown step, a non-MathChat run; the
      message names the flag and the fix.
  """
  workdir = os.path.abspath(workdir)
  config = load_run_config(workdir, overrides)
  workflow_cls = mconfig.experiment(config).workflow_class
  if workflow_cls.EVAL_KIND != "math":
    raise ValueError(f"--workdir={workdir} is a {config.workflow!r} run; launch/eval.py "
                     "evaluates teams graded on {prompt, answer} records (MathChat)")
  chosen = _choose_step(workdir, step, base)
  tasks = load_task_file(tasks_file, config)
  config = _eval_config(config, n_samples)
  name = os.path.splitext(os.path.basename(tasks_file))[0]
  which = "base" if chosen is None else f"step {chosen}"
  out = out or os.path.join(workdir, "eval_cli",
                            f"{name}_{'base' if chosen is None else f'step{chosen:06d}'}.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  had_ckpt_dir = os.path.isdir(ckpt_dir)
  trainer = train.Trainer(config, workdir)
  try:
    if chosen is not None:
      trainer._restore(chosen)  # pylint: disable=protected-access  (the trainer's resume path)
    with tempfile.TemporaryDirectory(prefix="mappa_eval_") as workspaces:
      workflow = workflow_cls.from_config(
          trainer.exp, engine=trainer.engine, tokenizer=trainer.tokenizer, coach=trainer.coach,
          sandbox=trainer.sandbox, workspace_root=workspaces, evaluation=True)
      k = int(config.eval.n_samples_per_prompt)
      with phase(f"eval {name} ({which})", total=len(tasks) * k, unit="traj") as bar:
        async def run_one(task, i):
          try:
            return await workflow.run(task, i)
          finally:
            bar.update(1)
        report, _ = trainer.loop.run_until_complete(eval_runner.run_eval(
            name, tasks, run_one, kind=workflow_cls.EVAL_KIND, n_samples=k,
            max_concurrency=int(config.rollout.max_concurrent_workflows),
            seed=int(config.seed)))
  finally:
    trainer.close()
    # The checkpoint manager creates its directory; a base-only evaluation must leave none.
    if not had_ckpt_dir and os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
      os.rmdir(ckpt_dir)
  report.summary["accuracy"] = dict(report.summary["rule_accuracy"])
  data: dict[str, Any] = report.to_json()
  data["evaluated"] = {"workdir": workdir, "tasks_file": os.path.abspath(tasks_file),
                       "checkpoint": which, "step": 0 if chosen is None else chosen,
                       "n_samples_per_prompt": k, "config_name": config.name}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
  acc = report.summary["accuracy"]
  line = (f"{name} ({which}): accuracy {acc['mean']:.3f} [95% CI {acc['ci_low']:.3f}, "
          f"{acc['ci_high']:.3f}] over {acc['n']} problems x {k} samples")
  return TeamEval(report=report, step=0 if chosen is None else chosen, which=which,
                  results_path=os.path.abspath(out), line=line)
