"""A deliberately biased coach: +delta on one task type, around any coach (the bias experiment).

The paper's DSBench coach scored regression actions 0.5-1.8 points above classification and the
team specialised toward regression. `BiasedCoach` reproduces that mechanism on purpose: every
scored verdict on a request of task type `task_type` (optionally only for some roles) gets
`delta` added, clipped to [0, 10]; everything else passes through untouched. The inner coach's
verdict keeps its type (a panel's member results stay), its answer_correct and its cost fields,
so statistics and caches see the inner coach; the rationale says what was added.

A constant offset on one type is a baseline shift within that type (E[delta * grad log pi] = 0
for every prompt), so on its own it barely moves the policy (README "Credit assignment and coach
bias" measured no specialisation). `others_scale` < 1 is a bias that depends on behaviour: every
other type's score is multiplied by it, so off its favoured type the coach is stingier *and* less
discriminating (a good action gains less over a bad one). Under global whitening the favoured
type then carries most of the learning signal; per-stratum whitening, which divides each
stratum by its own spread, restores it.

`style_pattern` is the paper's reading of its own bias: a coach that likes the favoured type's
*kind of work* wherever it appears (regression-style modelling on a classification task). With
it, `delta` goes to every action whose visible output (after its reasoning, the part the rule
coach grades) matches the regular expression, on every task type, instead of to every action
of `task_type` (which then only names the type whose style it is). Where the style is more
common on one type the bonus acts partly as a per-type offset; within a type it rewards one
behaviour over another, which per-stratum normalisation does not remove.
"""
from __future__ import annotations

import dataclasses
import re

from mappa_jax.coach import requests as rq
from mappa_jax.coach.rule_coach import visible_text
from mappa_jax.coach.types import Coach, CoachRequest, CoachResult

SCORE_RANGE = (0.0, 10.0)


def style_bias_problem(pattern: str, others_scale: float = 1.0) -> str | None:
  """Why `pattern` (coach.bias_style_pattern) cannot be a style bias next to `others_scale`,
  with the fix; None when it can. One rule for BiasedCoach and CoachConfig's check."""
  if others_scale != 1.0:
    return ("and bias_others_scale are two different biases: set "
            "--config.coach.bias_others_scale=1 or --config.coach.bias_style_pattern=''")
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    return (f"{pattern!r} is not a regular expression ({e}): fix it or set "
            "--config.coach.bias_style_pattern=''")
  if compiled.search(""):  # it matches every output: a constant, not a style
    return (f"{pattern!r} matches the empty string, so every output: use a pattern that "
            "needs at least one character (e.g. '[*/]=')")
  return None


class BiasedCoach:
  """Args: inner: the coach whose verdicts are biased; task_type: the favoured stratum (a
  CoachRequest.task_type, e.g. 'regression', 'add_sub'); delta: points added (negative
  disfavours); others_scale: every other type's score is multiplied by this (1: untouched);
  roles: only these roles are biased (None: all); style_pattern: a regular expression: when
  set, delta goes to every action whose output matches it, of any type, and others_scale
  must be 1."""

  def __init__(self, inner: Coach, task_type: str, delta: float, others_scale: float = 1.0,
               roles: tuple[str, ...] | None = None, name: str = "", style_pattern: str = ""):
    if not task_type:
      raise ValueError("BiasedCoach needs the task type it favours (coach.bias_task_type)")
    if not 0.0 <= others_scale <= 1.0:
      raise ValueError(f"BiasedCoach others_scale={others_scale!r} (coach.bias_others_scale) "
                       "must be in [0, 1]")
    problem = style_bias_problem(style_pattern, others_scale) if style_pattern else None
    if problem:
      raise ValueError(f"BiasedCoach coach.bias_style_pattern {problem}")
    self.style = re.compile(style_pattern) if style_pattern else None
    self.inner = inner
    self.task_type = task_type
    self.delta = float(delta)
    self.others_scale = float(others_scale)
    self.roles = None if roles is None else frozenset(rq.normalize_role(r) for r in roles)
    scaled = f", others x{others_scale:g}" if others_scale != 1.0 else ""
    where = f"{task_type}-style /{style_pattern}/" if style_pattern else task_type
    self.name = name or (f"biased({getattr(inner, 'name', 'coach')}, {where}{delta:+g}"
                         f"{scaled})")

  def describe(self) -> dict:
    return {"kind": "biased", "name": self.name, "task_type": self.task_type,
            "delta": self.delta, "others_scale": self.others_scale,
            "roles": None if self.roles is None else sorted(self.roles),
            "style_pattern": self.style.pattern if self.style else "",
            "inner": self.inner.describe() if hasattr(self.inner, "describe")
            else repr(self.inner)}

  def applies(self, request: CoachRequest) -> bool:
    """Whether the bias touches this request's role (favoured type or not)."""
    return self.roles is None or rq.normalize_role(request.role) in self.roles

  def biased_score(self, score: float, task_type: str,
                   output: str = "") -> tuple[float, str]:
    """The biased score of an inner verdict `score` on `task_type` for the action `output`,
    and what was done."""
    lo, hi = SCORE_RANGE
    if self.style is not None:  # others_scale is 1 here: a non-matching output is untouched
      favoured = bool(self.style.search(visible_text(output)))
      what = f"{self.task_type}-style output /{self.style.pattern}/"
      on = f"for {what}"
    else:
      favoured = task_type == self.task_type
      what = f"task type {self.task_type!r}"
      on = f"on {what}"
    if favoured:
      return min(hi, max(lo, score + self.delta)), f"{self.delta:+g} {on}"
    return min(hi, max(lo, score * self.others_scale)), f"x{self.others_scale:g} off {what}"

  async def score(self, request: CoachRequest) -> CoachResult:
    result = await self.inner.score(request)
    if not result.is_scored or result.score is None or not self.applies(request):
      return result
    biased, what = self.biased_score(float(result.score), request.task_type,
                                     request.agent_output)
    if biased == float(result.score):
      return result
    note = f"[biased coach: {what}: {float(result.score):g} -> {biased:g}]"
    return dataclasses.replace(result, score=biased,
                               rationale=(result.rationale + "\n" if result.rationale else "")
                               + note)
