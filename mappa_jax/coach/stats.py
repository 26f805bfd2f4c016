"""Coach statistics for the trainer: reliability, cost, and the bias signal.

`CoachStats.record(request, result)` is called once per awaited action; `to_scalars()` gives
flat {'coach/<role>/<stat>': float} for the metrics writer:
  n, score_mean, score_std, invalid, invalid_rate, parse_failures (first replies that needed a
  re-ask), answer_correct_rate, latency_p50_s / latency_p95_s (calls that reached the endpoint),
  tokens_in, tokens_out, cost_usd (prices per 1M tokens; cache hits are free), cache_hit_rate,
  disagreement_std_mean (panels), score_length_corr (Pearson correlation of score and output
  length in characters: the verbosity-bias signal), and per task type score_mean/<task_type>, n/<task_type>
  (the paper's DSBench coach drifted toward regression tasks: this is where it shows).
'coach/all/<stat>' aggregates every role.
"""
from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

from mappa_jax.coach import requests as rq
from mappa_jax.coach.types import CoachRequest, CoachResult


@dataclasses.dataclass
class _RoleStats:
  scores: list[float] = dataclasses.field(default_factory=list)
  lengths: list[int] = dataclasses.field(default_factory=list)
  n: int = 0
  invalid: int = 0
  parse_failures: int = 0
  answer_votes: list[bool] = dataclasses.field(default_factory=list)
  latencies: list[float] = dataclasses.field(default_factory=list)
  tokens_in: int = 0
  tokens_out: int = 0
  cost: float = 0.0
  cache_hits: int = 0
  disagreement: list[float] = dataclasses.field(default_factory=list)
  by_type: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))


def _leaves(result: CoachResult) -> tuple[CoachResult, ...]:
  """The results that correspond to real calls (panel members, or the result itself)."""
  members = getattr(result, "member_results", ())
  if members:
    return tuple(leaf for m in members for leaf in _leaves(m))
  return (result,)


def _plain(value):
  """A copy of one _RoleStats field as plain JSON-able data."""
  if isinstance(value, dict):
    return {k: list(v) for k, v in value.items()}
  return list(value) if isinstance(value, list) else value


class CoachStats:
  """Thread-safe accumulator of coach verdicts.

  Args:
    price_in_per_m, price_out_per_m: $ per 1M input / output tokens (default prices).
    prices: optional {coach_name: (in, out)} overriding the default per coach.
  """

  def __init__(self, price_in_per_m: float = 0.0, price_out_per_m: float = 0.0,
               prices: dict[str, tuple[float, float]] | None = None):
    self.default_price = (float(price_in_per_m), float(price_out_per_m))
    self.prices = dict(prices or {})
    self._roles: dict[str, _RoleStats] = collections.defaultdict(_RoleStats)
    self._lock = threading.Lock()

  def reset(self) -> None:
    with self._lock:
      self._roles.clear()

  def record(self, request: CoachRequest, result: CoachResult, role: str | None = None) -> None:
    """Adds one verdict under `role` (default: the request's role, normalized)."""
    key = rq.normalize_role(role or request.role) or "unknown"
    with self._lock:
      s = self._roles[key]
      s.n += 1
      if result.is_scored:
        s.scores.append(float(result.score))
        s.lengths.append(len(request.agent_output))
        s.by_type[request.task_type or "none"].append(float(result.score))
      else:
        s.invalid += 1
      if result.answer_correct is not None:
        s.answer_votes.append(bool(result.answer_correct))
      if getattr(result, "member_results", ()):
        s.disagreement.append(float(getattr(result, "disagreement_std", 0.0)))
      if result.cached:
        s.cache_hits += 1
      for leaf in _leaves(result):
        if getattr(leaf, "reasked", False):
          s.parse_failures += 1
        if leaf.cached:
          continue
        if getattr(leaf, "attempts", 0) > 0:
          s.latencies.append(float(leaf.latency_s))
        s.tokens_in += int(leaf.tokens_in)
        s.tokens_out += int(leaf.tokens_out)
        p_in, p_out = self.prices.get(leaf.coach_name, self.default_price)
        s.cost += (leaf.tokens_in * p_in + leaf.tokens_out * p_out) / 1e6

  @staticmethod
  def _role_scalars(s: _RoleStats) -> dict[str, float]:
    out = {"n": float(s.n), "invalid": float(s.invalid),
           "invalid_rate": s.invalid / s.n if s.n else 0.0,
           "parse_failures": float(s.parse_failures),
           "tokens_in": float(s.tokens_in), "tokens_out": float(s.tokens_out),
           "cost_usd": s.cost, "cache_hit_rate": s.cache_hits / s.n if s.n else 0.0}
    # Verdicts arrive in completion order, which depends on latency; float sums depend on
    # order, so every statistic is taken over sorted values (same verdicts, same scalars).
    pairs = sorted(zip(s.scores, s.lengths))
    scores, lengths = [p[0] for p in pairs], [p[1] for p in pairs]
    if scores:
      out["score_mean"] = float(np.mean(scores))
      out["score_std"] = float(np.std(scores))
    if len(scores) > 1 and np.std(scores) > 0 and np.std(lengths) > 0:
      out["score_length_corr"] = float(np.corrcoef(scores, lengths)[0, 1])
    if s.answer_votes:
      out["answer_correct_rate"] = float(np.mean(s.answer_votes))
    if s.latencies:
      out["latency_p50_s"] = float(np.percentile(s.latencies, 50))
      out["latency_p95_s"] = float(np.percentile(s.latencies, 95))
    if s.disagreement:
      out["disagreement_std_mean"] = float(np.mean(s.disagreement))
    for task_type, scores in sorted(s.by_type.items()):
      out[f"score_mean/{task_type}"] = float(np.mean(sorted(scores)))
      out[f"n/{task_type}"] = float(len(scores))
    return out

  def state(self) -> dict[str, dict]:
    """The raw per-role records as plain JSON-able data (for merging across processes)."""
    with self._lock:
      return {role: {f.name: _plain(getattr(s, f.name)) for f in dataclasses.fields(s)}
              for role, s in self._roles.items()}

  def merge(self, state: dict[str, dict]) -> None:
    """Adds the records of another accumulator's `state()` (lists concatenated, counts and
    costs added), so merged scalars equal those of one accumulator that saw every verdict."""
    with self._lock:
      for role, fields in state.items():
        s = self._roles[role]
        for f in dataclasses.fields(_RoleStats):
          if f.name == "by_type":
            for task_type, scores in fields["by_type"].items():
              s.by_type[task_type].extend(scores)
          else:
            setattr(s, f.name, getattr(s, f.name) + fields[f.name])

  def to_scalars(self, prefix: str = "coach") -> dict[str, float]:
    """{'coach/<role>/<stat>': value} for every role seen, plus 'coach/all/<stat>'."""
    with self._lock:
      out = {}
      total = _RoleStats()
      for role, s in sorted(self._roles.items()):
        for k, v in self._role_scalars(s).items():
          out[f"{prefix}/{role}/{k}"] = v
        for f in dataclasses.fields(_RoleStats):
          if f.name != "by_type":  # per task type stays per role
            setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
      if self._roles:
        for k, v in self._role_scalars(total).items():
          out[f"{prefix}/all/{k}"] = v
      return out
