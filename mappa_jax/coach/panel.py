"""A panel of coaches scoring the same action; their verdicts are aggregated.

Members are asked concurrently. Invalid members are dropped; with no valid member left the
panel's verdict is invalid. The aggregate is the mean or median of the valid scores, and the
per-action disagreement (population std and max - min of the valid scores) is part of the
result, so statistics and logs can show where the judges disagree (PoLL: a panel of diverse
judges reduces single-model bias). A member raising (e.g. CoachUnavailableError) fails the call.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics

from mappa_jax.coach.types import Coach, CoachRequest, CoachResult

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PanelResult(CoachResult):
  """CoachResult plus each member's verdict and the disagreement among valid members."""
  member_results: tuple[CoachResult, ...] = ()
  disagreement_std: float = 0.0
  disagreement_range: float = 0.0


class PanelCoach:
  """Args: members: the coaches; aggregate: 'mean' or 'median'; min_valid: fewest valid
  members for a scored verdict."""

  def __init__(self, members: list[Coach], aggregate: str = "mean", min_valid: int = 1,
               name: str = ""):
    if not members:
      raise ValueError("coach.panel needs at least one member coach")
    if aggregate not in ("mean", "median"):
      raise ValueError(f"coach.panel_aggregate must be 'mean' or 'median', got {aggregate!r}")
    self.members = list(members)
    self.aggregate = aggregate
    self.min_valid = max(1, int(min_valid))
    self.name = name or "panel(" + ",".join(getattr(m, "name", "?") for m in members) + ")"

  def describe(self) -> dict:
    return {"kind": "panel", "name": self.name, "aggregate": self.aggregate,
            "members": [m.describe() if hasattr(m, "describe") else repr(m)
                        for m in self.members]}

  async def score(self, request: CoachRequest) -> PanelResult:
    results = tuple(await asyncio.gather(*(m.score(request) for m in self.members)))
    valid = [r for r in results if r.is_scored]
    common = dict(
        member_results=results,
        template_hash="+".join(sorted({r.template_hash for r in results if r.template_hash})),
        coach_name=self.name,
        latency_s=max(r.latency_s for r in results),
        tokens_in=sum(r.tokens_in for r in results),
        tokens_out=sum(r.tokens_out for r in results),
        cached=all(r.cached for r in results))
    names = [getattr(m, "name", f"member{i}") for i, m in enumerate(self.members)]
    lines = []
    for n, r in zip(names, results):
      lines.append(f"[{n}] " + (f"score {r.score:g}" if r.is_scored else f"invalid: {r.reason}"))
    if len(valid) < self.min_valid:
      return PanelResult(status="invalid", rationale="\n".join(lines),
                         reason=f"panel: {len(valid)} of {len(results)} members valid "
                                f"(need {self.min_valid})", **common)
    scores = [float(r.score) for r in valid]
    agg = statistics.fmean(scores) if self.aggregate == "mean" else statistics.median(scores)
    votes = [r.answer_correct for r in valid if r.answer_correct is not None]
    yes = sum(votes)
    answer = None if not votes or 2 * yes == len(votes) else 2 * yes > len(votes)
    std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    spread = max(scores) - min(scores)
    lines.append(f"{self.aggregate} {agg:.3g}; std {std:.3g}; range {spread:g}")
    log.debug("panel %s: role %s scores %s -> %s %.3g (std %.3g, range %g)", self.name,
              request.role, scores, self.aggregate, agg, std, spread)
    return PanelResult(status="scored", score=agg, answer_correct=answer,
                       rationale="\n".join(lines), disagreement_std=std,
                       disagreement_range=spread, **common)
