"""The parts of one run, each built from the config sections it names (the wiring, in one place).

Every builder hands its section to the code it configures (sections are constructor
arguments); nothing here translates field names. The Trainer (mappa_jax/train.py) owns the
parts' lifecycles.
"""
from __future__ import annotations

import dataclasses
import os

from mappa_jax import distributed
from mappa_jax.coach.config import build_coach, build_stats
from mappa_jax.coach.stats import CoachStats
from mappa_jax.config import Experiment
from mappa_jax.data.loaders import Task
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.rl import team as team_lib
from mappa_jax.rollout.config import build_engine
from mappa_jax.tools.sandbox import Sandbox
from mappa_jax.workflows import faults
from mappa_jax.workflows.base import Workflow


def build_tasks(exp: Experiment, workdir: str) -> tuple[list[Task], dict[str, list[Task]]]:
  """(train tasks, {eval set: tasks}) from the workflow's loader (files it writes into the
  shared workdir, such as the DSBench suite, are written by process 0 first)."""
  train, evals = distributed.on_process0_first(
      "build_tasks", lambda: exp.workflow_class.load_tasks(exp, workdir))
  if len(train) < exp.rollout.rollout_batch_size:
    raise ValueError(f"data: {len(train)} training tasks, fewer than "
                     f"rollout.rollout_batch_size={exp.rollout.rollout_batch_size}")
  return train, evals


class RecordingCoach:
  """The coach, feeding every verdict to the per-role statistics (score, failures, latency,
  cost)."""

  def __init__(self, inner, stats: CoachStats):
    self.inner = inner
    self.stats = stats

  async def score(self, request):
    result = await self.inner.score(request)
    self.stats.record(request, result)
    return result


@dataclasses.dataclass
class Parts:
  """Everything long-lived a run is made of."""
  train_tasks: list[Task]
  eval_sets: dict[str, list[Task]]
  model_dir: str
  tokenizer: Tokenizer
  team: team_lib.Team
  engine: object
  coach: RecordingCoach
  sandbox: Sandbox
  workflow: Workflow
  eval_workflow: Workflow


def build(exp: Experiment, workdir: str, mesh) -> Parts:
  """Builds a run's parts; the sandbox before any rollout, so a missing bubblewrap fails the
  run here (SandboxUnavailable), unless sandbox.backend='process' with allow_unisolated."""
  if exp.rollout.rollout_batch_size % distributed.process_count():
    raise ValueError(f"rollout.rollout_batch_size={exp.rollout.rollout_batch_size} must be a "
                     f"multiple of the number of processes ({distributed.process_count()}) so "
                     "every process rolls out the same number of tasks")
  train_tasks, eval_sets = build_tasks(exp, workdir)
  model_dir = distributed.on_process0_first(
      "model_dir", lambda: team_lib.model_dir(exp.model, workdir, exp.seed))
  tokenizer = Tokenizer.from_dir(model_dir)
  team = team_lib.Team(exp, model_dir, mesh, exp.agent_names,
                       outcome_key=exp.workflow_class.REWARD_OUTCOME_KEY)
  engine = build_engine(exp.rollout, team.models(), eos_token_ids=tokenizer.eos_token_ids,
                        seed=exp.seed, workdir=workdir, model_dir=model_dir,
                        process_index=distributed.process_index(),
                        process_count=distributed.process_count())
  coach = RecordingCoach(build_coach(exp.coach, workdir), build_stats(exp.coach))
  sandbox = Sandbox.from_config(exp.sandbox)
  workspaces = os.path.join(workdir, "workspaces")
  if distributed.process_count() > 1:  # processes share the workdir, not their sandboxes' files
    workspaces = os.path.join(workspaces, f"process{distributed.process_index()}")
  parts = dict(engine=engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
               workspace_root=workspaces)
  workflow = exp.workflow_class.from_config(exp, **parts)
  eval_workflow = exp.workflow_class.from_config(exp, evaluation=True, **parts)
  # The `faults` section: a no-op unless an agent and a rate are set; evaluations measure the
  # team as it is unless faults.in_eval.
  faults.install(workflow, exp.faults, tokenizer)
  if exp.faults.in_eval:
    faults.install(eval_workflow, exp.faults, tokenizer)
  return Parts(train_tasks=train_tasks, eval_sets=eval_sets, model_dir=model_dir,
               tokenizer=tokenizer, team=team, engine=engine, coach=coach, sandbox=sandbox,
               workflow=workflow, eval_workflow=eval_workflow)
