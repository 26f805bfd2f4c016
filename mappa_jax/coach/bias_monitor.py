"""The bias guard inside a training run: what the Trainer calls once per step.

  monitor = BiasMonitor(exp.coach_bias, exp.bias_outcome_key, workdir)
  scalars = monitor.update(step, trajectories)   # coach_bias/* scalars of this step

Per step: the step's scored actions and outcomes (coach.bias_guard.records_from_trajectories)
from every process (all-gathered, so every process holds the same guard) -> BiasGuard.update ->
scalars for TensorBoard, each new warning to the log, and on process 0 one JSON line
{step, scalars, warnings} appended to <workdir>/coach_bias.jsonl (the HTML report's 'Coach
bias' section reads it). `state()` / `restore(state, step)` carry the guard across a checkpoint
and drop the lines of steps after it, which a resumed run writes again.

Disabled (coach_bias.enabled=False), every method is a no-op.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

from mappa_jax import distributed
from mappa_jax.coach.bias_guard import (BiasGuard, BiasGuardConfig, OutcomeRecord, ScoreRecord,
                                        records_from_trajectories)

log = logging.getLogger(__name__)
FILENAME = "coach_bias.jsonl"


class BiasMonitor:
  """Args: config: the `coach_bias` section; outcome_key: the trajectory outcome compared
  across strata; workdir: where coach_bias.jsonl goes (None: no file)."""

  def __init__(self, config: BiasGuardConfig, outcome_key: str, workdir: str | None):
    self.enabled = config.enabled
    self.outcome_key = outcome_key
    self.guard = BiasGuard(config)
    self.path = os.path.join(workdir, FILENAME) if workdir else None

  def update(self, step: int, trajectories: Sequence[Any]) -> dict[str, float]:
    """Feeds one step's trajectories (this process's) to the guard; returns its scalars."""
    if not self.enabled:
      return {}
    scores, outcomes = records_from_trajectories(trajectories, self.outcome_key)
    local = {"scores": [[r.agent, r.stratum, r.score] for r in scores],
             "outcomes": [[r.stratum, r.value] for r in outcomes]}
    gathered = distributed.allgather_json(local)  # identity in one process
    scores = [ScoreRecord(*r) for part in gathered for r in part["scores"]]
    outcomes = [OutcomeRecord(*r) for part in gathered for r in part["outcomes"]]
    scalars = self.guard.update(step, scores, outcomes)
    for message in self.guard.warnings:
      log.warning("%s", message)
    if self.path and distributed.process_index() == 0:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": int(step), "scalars": scalars,
                            "warnings": list(self.guard.warnings)}) + "\n")
    return scalars

  def stratum_means(self, agent: str) -> dict[str, float]:
    """{stratum: window mean coach score} of one agent (rl.score_recentre='rolling')."""
    return self.guard.stratum_means(agent) if self.enabled else {}

  # -- checkpointing ----------------------------------------------------------------------------

  def state(self) -> dict[str, Any] | None:
    return self.guard.state() if self.enabled else None

  def restore(self, state: dict[str, Any] | None, step: int) -> None:
    """Puts a checkpoint's guard state back, and drops coach_bias.jsonl lines after `step`."""
    if not self.enabled:
      return
    if state is not None:
      self.guard.load_state(state)
    if self.path and distributed.process_index() == 0 and os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
      tmp = f"{self.path}.tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)

