"""Bias guard: watches, per agent, the coach-score gap between task types (strata).

The paper's DSBench coach scored regression actions 0.5-1.8 points above classification; the
agents specialised toward regression and classification success fell back to baseline. A real
difference between strata moves the outcome too; a biased coach moves only the scores. So, per
agent and pair of strata (a, b), with a < b in sorted order, the guard keeps a rolling estimate
(the last `window_steps` updates pooled) of

  score gap    mean coach score on stratum a minus stratum b (coach points), and
  outcome gap  the team's mean outcome (success / accuracy in [0, 1]) on a minus b,

each with a percentile bootstrap CI (each stratum resampled on its own; the generator is seeded
from (seed, agent, pair, step); values are sorted first, so arrival order never matters). It
warns when the signature of a biased coach shows, by either of two tests on a significant
score gap (its CI excludes 0):

  trend  it is widening (over the last `trend_updates` estimates it moved away from 0 by at
         least `min_widening` points, first vs last of them) and the outcome gap does not
         follow (in the same direction, on the coach scale, x `outcome_scale`, it moved by
         less than `follow_ratio` of the score gap's move; no outcome data counts as not
         following): a drift, as in the paper;
  level  the outcome gap (same direction, x outcome_scale) explains less than `follow_ratio`
         of the score gap: a bias present from the first step, which never widens.
`require_widening=True` keeps only the trend test.

Scalars (`update` returns them; strata with fewer than `min_count` records in the window are
left out):
  coach_bias/<agent>/<a>_minus_<b>                  score gap (coach points)
  coach_bias/<agent>/<a>_minus_<b>/ci_low, /ci_high bootstrap CI of the score gap
  coach_bias/<agent>/<a>_minus_<b>/warn             1.0 while the warning condition holds
  coach_bias/<agent>/mean/<stratum>                 window mean score of the stratum
  coach_bias/outcome/<a>_minus_<b>  (+ /ci_low, /ci_high)  outcome gap (outcome units)
  coach_bias/outcome/mean/<stratum>                 window mean outcome of the stratum
  coach_bias/warnings                               (agent, pair)s warning now
`warnings` holds the messages of the last update: a condition's onset, repeated every
`repeat_every` updates while it holds.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
from typing import Any, Iterable, Sequence

import numpy as np

from mappa_jax.schema import Section, field, non_negative, positive

OUTCOME = "outcome"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BiasGuardConfig(Section):
  """The `coach_bias` section: the guard's settings (see the module docstring)."""
  enabled: bool = field(True, "watch the coach-score gaps between task types in every run "
                        "(coach_bias/* scalars, <workdir>/coach_bias.jsonl, log warnings)")
  outcome_key: str = field("", "trajectory.outcome entry the outcome gap is measured on ('' = "
                           "the workflow's REWARD_OUTCOME_KEY)")
  window_steps: int = field(4, "updates pooled into one rolling estimate", check=positive,
                            fix="Use >= 1.")
  trend_updates: int = field(4, "estimates over which the gap must have widened (first vs "
                             "last)", check=lambda v: v >= 2, fix="Use >= 2.")
  min_count: int = field(8, "fewest records per stratum in the window for an estimate",
                         check=lambda v: v >= 2, fix="Use >= 2.")
  n_boot: int = field(1000, "bootstrap resamples", check=positive, fix="Use >= 1.")
  ci_level: float = field(0.95, "confidence level of the bootstrap CIs",
                          check=lambda v: 0.0 < v < 1.0, fix="Use 0 < ci_level < 1.")
  min_widening: float = field(0.25, "coach points the score gap must have moved away from 0",
                              check=non_negative, fix="Use >= 0.")
  follow_ratio: float = field(0.5, "share of the score gap's move the outcome gap must match "
                              "to 'follow' it", check=non_negative, fix="Use >= 0.")
  outcome_scale: float = field(10.0, "outcome units -> coach points (outcomes in [0, 1], "
                               "scores in [0, 10])", check=positive, fix="Use > 0.")
  # Default False: a coach biased from the first step gives a gap that never widens (measured:
  # the bias experiment's +2 coach tripped the trend test on 1 of 64 biased steps; the level test
  # warned from step 1, and never in the unbiased run's 32 steps; README "Coach bias").
  require_widening: bool = field(False, "True: only the trend test warns (a widening gap the "
                                 "outcome does not follow); False: the level test too (a "
                                 "significant gap the outcome gap does not explain)")
  repeat_every: int = field(10, "a warning that keeps holding is repeated every this many "
                            "updates", check=positive, fix="Use >= 1.")
  seed: int = field(0, "bootstrap seed")


@dataclasses.dataclass(frozen=True)
class ScoreRecord:
  """One scored action: which agent, on which stratum (task type), what score."""
  agent: str
  stratum: str
  score: float


@dataclasses.dataclass(frozen=True)
class OutcomeRecord:
  """One trajectory's outcome (success / accuracy in [0, 1]) on its stratum."""
  stratum: str
  value: float


def records_from_trajectories(trajectories: Iterable[Any], outcome_key: str
                              ) -> tuple[list[ScoreRecord], list[OutcomeRecord]]:
  """Scored actions and outcomes of workflow Trajectories (invalid verdicts left out).

  outcome_key: the trajectory.outcome entry that says how well the team did (MathChat
  'rule_correct', DSBench 'valid' or 'normalized_gain').
  """
  scores, outcomes = [], []
  for t in trajectories:
    stratum = t.task_type or "none"
    for a in t.actions:
      if a.coach is not None and a.coach.is_scored and a.coach.score is not None:
        scores.append(ScoreRecord(a.agent, stratum, float(a.coach.score)))
    if outcome_key in t.outcome and t.outcome[outcome_key] is not None:
      outcomes.append(OutcomeRecord(stratum, float(t.outcome[outcome_key])))
  return scores, outcomes


def bootstrap_mean_diff(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """(mean(x) - mean(y), CI low, CI high): percentile bootstrap, x and y resampled apart.

  Both samples are sorted first (the result does not depend on their order). The generator
  draws the x indices [n_boot, len(x)] then the y indices [n_boot, len(y)]; the CI bounds are
  numpy's linear-interpolation quantiles of the n_boot differences at (1 -/+ level) / 2.
  """
  xs, ys = np.sort(np.asarray(x, np.float64)), np.sort(np.asarray(y, np.float64))
  if not len(xs) or not len(ys):
    raise ValueError("bootstrap_mean_diff needs two non-empty samples")
  rng = np.random.default_rng(seed)
  ix = rng.integers(0, len(xs), size=(n_boot, len(xs)))
  iy = rng.integers(0, len(ys), size=(n_boot, len(ys)))
  diffs = xs[ix].mean(axis=1) - ys[iy].mean(axis=1)
  tail = (1.0 - level) / 2.0
  lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
  return float(xs.mean() - ys.mean()), float(lo), float(hi)


def _seed(*parts: Any) -> int:
  digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(digest[:8], "little")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """One (agent, pair) estimate at one update."""
  step: int
  gap: float
  ci_low: float
  ci_high: float
  outcome_gap: float | None

  @property
  def significant(self) -> bool:
    return self.ci_low > 0.0 or self.ci_high < 0.0


class BiasGuard:
  """Rolling per-stratum coach-score gaps with bootstrap CIs and a biased-coach warning.

  Lifecycle: `update(step, scores, outcomes)` once per training step (or evaluation) with that
  step's records -> scalars; `warnings` then holds the new messages. `state()` /
  `load_state()` carry the window and the history across a resume.
  """

  def __init__(self, config: BiasGuardConfig = BiasGuardConfig()):
    self.config = config
    self._window: collections.deque = collections.deque(maxlen=config.window_steps)
    self._history: dict[tuple[str, str, str], list[Estimate]] = {}
    self._holding: dict[tuple[str, str, str], int] = {}  # key -> updates it has held
    self.warnings: list[str] = []

  # -- estimates ------------------------------------------------------------------------------

  def _pooled(self) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    outcomes: dict[str, list[float]] = collections.defaultdict(list)
    for _, step_scores, step_outcomes in self._window:
      for agent, stratum, score in step_scores:
        scores[agent][stratum].append(score)
      for stratum, value in step_outcomes:
        outcomes[stratum].append(value)
    return scores, outcomes

  def stratum_means(self, agent: str) -> dict[str, float]:
    """{stratum: window mean score} of one agent (every stratum seen in the window)."""
    scores, _ = self._pooled()
    return {s: float(np.mean(v)) for s, v in sorted(scores.get(agent, {}).items())}

  def _gap(self, x, y, *parts) -> tuple[float, float, float]:
    c = self.config
    return bootstrap_mean_diff(x, y, n_boot=c.n_boot, level=c.ci_level,
                               seed=_seed(c.seed, *parts))

  def update(self, step: int, scores: Iterable[ScoreRecord],
             outcomes: Iterable[OutcomeRecord] = ()) -> dict[str, float]:
    """Adds one step's records; returns the guard's scalars and sets `warnings`."""
    c = self.config
    step_scores = [(r.agent, r.stratum, float(r.score)) for r in scores]
    if any(agent == OUTCOME for agent, _, _ in step_scores):
      raise ValueError(f"BiasGuard: an agent may not be named {OUTCOME!r} (scalar namespace)")
    self._window.append((int(step), step_scores,
                         [(r.stratum, float(r.value)) for r in outcomes]))
    pooled, pooled_outcomes = self._pooled()
    out: dict[str, float] = {}
    outcome_strata = sorted(s for s, v in pooled_outcomes.items() if len(v) >= c.min_count)
    for s in outcome_strata:
      out[f"coach_bias/{OUTCOME}/mean/{s}"] = float(np.mean(pooled_outcomes[s]))
    outcome_gaps: dict[tuple[str, str], float] = {}
    for a, b in itertools.combinations(outcome_strata, 2):
      gap, lo, hi = self._gap(pooled_outcomes[a], pooled_outcomes[b], OUTCOME, a, b, step)
      outcome_gaps[(a, b)] = gap
      name = f"coach_bias/{OUTCOME}/{a}_minus_{b}"
      out.update({name: gap, f"{name}/ci_low": lo, f"{name}/ci_high": hi})
    self.warnings = []
    warning_now = 0
    seen = set()
    for agent in sorted(pooled):
      strata = sorted(s for s, v in pooled[agent].items() if len(v) >= c.min_count)
      for s in strata:
        out[f"coach_bias/{agent}/mean/{s}"] = float(np.mean(pooled[agent][s]))
      for a, b in itertools.combinations(strata, 2):
        key = (agent, a, b)
        seen.add(key)
        gap, lo, hi = self._gap(pooled[agent][a], pooled[agent][b], agent, a, b, step)
        est = Estimate(int(step), gap, lo, hi, outcome_gaps.get((a, b)))
        warn, why = self.observe(key, est)
        name = f"coach_bias/{agent}/{a}_minus_{b}"
        out.update({name: gap, f"{name}/ci_low": lo, f"{name}/ci_high": hi,
                    f"{name}/warn": float(warn)})
        if warn:
          warning_now += 1
          held = self._holding.get(key, 0)
          if held % c.repeat_every == 0:
            self.warnings.append(self._message(key, est, why))
          self._holding[key] = held + 1
        else:
          self._holding.pop(key, None)
    self.drop_lapsed(seen)
    out["coach_bias/warnings"] = float(warning_now)
    return out

  def observe(self, key: tuple[str, str, str], est: Estimate) -> tuple[bool, str]:
    """Appends an (agent, a, b) estimate to its trend history; judges it (see `judge`)."""
    history = self._history.setdefault(key, [])
    history.append(est)
    del history[:-self.config.trend_updates]
    return self.judge(history)

  def drop_lapsed(self, seen: set[tuple[str, str, str]]) -> None:
    """Forgets the (agent, a, b) pairs without an estimate this update."""
    for key in set(self._holding) - seen:  # the condition lapsed
      del self._holding[key]
    for key in set(self._history) - seen:  # a pair that lapsed starts its trend afresh, so
      del self._history[key]               # "first vs last" never spans the gap in the data

  def judge(self, history: list[Estimate]) -> tuple[bool, str]:
    """(warn, explanation) for the latest estimate of one (agent, pair): the trend test, and
    unless require_widening the level test too (either one warns)."""
    now = history[-1]
    if not now.significant:
      return False, ""
    sign = 1.0 if now.gap > 0 else -1.0
    warn, why = self._trend(history, sign)
    if warn or self.config.require_widening:
      return warn, why
    return self._level(now, sign)

  def _level(self, now: Estimate, sign: float) -> tuple[bool, str]:
    """A significant gap the outcome gap (same direction, x outcome_scale) explains less than
    follow_ratio of."""
    c = self.config
    explained = None if now.outcome_gap is None else sign * now.outcome_gap * c.outcome_scale
    follows = explained is not None and explained >= c.follow_ratio * abs(now.gap)
    why = ("no outcome data" if explained is None else
           f"the outcome gap is {now.outcome_gap:+.3g} (x{c.outcome_scale:g} = "
           f"{sign * explained:+.3g} points)")
    return not follows, why

  def _trend(self, history: list[Estimate], sign: float) -> tuple[bool, str]:
    """The gap widened by >= min_widening over the last trend_updates estimates and the
    outcome gap moved by less than follow_ratio of that."""
    c = self.config
    now = history[-1]
    if len(history) < c.trend_updates:
      return False, ""
    then = history[0]
    # Widening is growth in magnitude: a gap that swings from -1.0 to +0.3 moved toward zero
    # (sign * (now - then) would call that +1.3 of widening).
    widened = abs(now.gap) - abs(then.gap)
    if widened < c.min_widening:
      return False, ""
    if now.outcome_gap is None or then.outcome_gap is None:
      moved, why = None, "no outcome data to compare"
    else:
      moved = sign * (now.outcome_gap - then.outcome_gap) * c.outcome_scale
      why = (f"the outcome gap moved {now.outcome_gap - then.outcome_gap:+.3g} (x"
             f"{c.outcome_scale:g} = {sign * moved:+.3g} points)")
    follows = moved is not None and moved >= c.follow_ratio * widened
    return not follows, (f"widened by {widened:+.3g} since step {then.step}, while "
                         + why)

  def _message(self, key: tuple[str, str, str], est: Estimate, why: str) -> str:
    agent, a, b = key
    return (f"coach bias? step {est.step}: {agent} scores {a} {est.gap:+.2f} points vs {b} "
            f"({self.config.ci_level:.0%} CI [{est.ci_low:+.2f}, {est.ci_high:+.2f}]), {why}: "
            "a score gap the outcome "
            "does not follow is the signature of a biased coach, not of a real difference "
            "(mitigations: rl.whiten_scope='per_agent_per_stratum', per-stratum score "
            "re-centring)")

  # -- checkpointing --------------------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    """JSON-able state (window, history, held warnings) for a checkpoint."""
    return {"window": [[s, [list(r) for r in sc], [list(r) for r in oc]]
                       for s, sc, oc in self._window],
            "history": [[list(k), [dataclasses.asdict(e) for e in v]]
                        for k, v in sorted(self._history.items())],
            "holding": [[list(k), n] for k, n in sorted(self._holding.items())]}

  def load_state(self, state: dict[str, Any]) -> None:
    self._window.clear()
    for s, sc, oc in state["window"]:
      self._window.append((int(s), [tuple(r) for r in sc], [tuple(r) for r in oc]))
    self._history = {tuple(k): [Estimate(**e) for e in v] for k, v in state["history"]}
    self._holding = {tuple(k): int(n) for k, n in state["holding"]}
