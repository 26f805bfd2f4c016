"""A deliberately biased coach: +delta on one task type, around any coach (the bias experiment).

The paper's DSBench coach scored regression actions 0.5-1.8 points above classification and the
team specialised toward regression. `BiasedCoach` reproduces that mechanism on purpose: every
scored verdict on a request of task type `task_type` (optionally only for some roles) gets
`delta` added, clipped to [0, 10]; everything else passes through untouched. The inner coach's
verdict keeps its type (a panel's member results stay), its answer_correct and its cost fields,
so statistics and caches see the inner coach; the rationale says what was added.
"""
from __future__ import annotations

import dataclasses

from mappa_jax.coach import requests as rq
from mappa_jax.coach.types import Coach, CoachRequest, CoachResult

SCORE_RANGE = (0.0, 10.0)


class BiasedCoach:
  """Args: inner: the coach whose verdicts are biased; task_type: the favoured stratum (a
  CoachRequest.task_type, e.g. 'regression', 'add_sub'); delta: points added (negative
  disfavours); roles: only these roles are biased (None: all)."""

  def __init__(self, inner: Coach, task_type: str, delta: float,
               roles: tuple[str, ...] | None = None, name: str = ""):
    if not task_type:
      raise ValueError("BiasedCoach needs the task type it favours (coach.bias_task_type)")
    self.inner = inner
    self.task_type = task_type
    self.delta = float(delta)
    self.roles = None if roles is None else frozenset(rq.normalize_role(r) for r in roles)
    self.name = name or f"biased({getattr(inner, 'name', 'coach')}, {task_type}{delta:+g})"

  def describe(self) -> dict:
    return {"kind": "biased", "name": self.name, "task_type": self.task_type,
            "delta": self.delta, "roles": None if self.roles is None else sorted(self.roles),
            "inner": self.inner.describe() if hasattr(self.inner, "describe")
            else repr(self.inner)}

  def applies(self, request: CoachRequest) -> bool:
    return request.task_type == self.task_type and (
        self.roles is None or rq.normalize_role(request.role) in self.roles)

  async def score(self, request: CoachRequest) -> CoachResult:
    result = await self.inner.score(request)
    if not result.is_scored or result.score is None or not self.applies(request):
      return result
    lo, hi = SCORE_RANGE
    biased = min(hi, max(lo, float(result.score) + self.delta))
    note = (f"[biased coach: {self.delta:+g} on task type {self.task_type!r}: "
            f"{float(result.score):g} -> {biased:g}]")
    return dataclasses.replace(result, score=biased,
                               rationale=(result.rationale + "\n" if result.rationale else "")
                               + note)
