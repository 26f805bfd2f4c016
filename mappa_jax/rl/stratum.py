"""Per-stratum score re-centring: a mitigation for a coach biased toward one task type.

A coach that adds +delta to every action of one stratum (task type) shifts that stratum's
rewards; whitened over the whole agent batch, the shift becomes a positive advantage for every
favoured action, and the agent specialises. Re-centring removes each stratum's mean before the
update and adds back one common level:

  r'_i = r_i - m_{s(i)} + target

with m_s the mean reward of stratum s (by default the counted actions of this batch, each
action weighing 1) and target the overall mean of the counted actions (so the batch's level
against the KL penalty is kept). Only differences *within* a stratum then drive the update: a
constant per-stratum offset, biased or real, no longer does. `means` may come from elsewhere,
e.g. the bias guard's rolling per-stratum means (coach.bias_guard.BiasGuard.stratum_means,
times the reward scale), which are steadier than one batch's.

rl.whiten_scope='per_agent_per_stratum' is the stronger relative: it also divides by each
stratum's own standard deviation (token-weighted), after the KL term.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np

from mappa_jax.rl.experience import TrainBatch


def recentre_per_stratum(rewards: Sequence[float], strata: Sequence[Hashable],
                         counted: Sequence[bool], *,
                         means: Mapping[Hashable, float] | None = None,
                         target: float | None = None) -> np.ndarray:
  """Rewards with each stratum's mean replaced by one common level; [A] -> [A] float32.

  Args:
    rewards: per-action rewards (already scaled).
    strata: per-action stratum keys (ids or names).
    counted: actions that count (valid, scored); the others are returned unchanged.
    means: {stratum: mean} to subtract; default the counted actions' mean per stratum. A
      stratum missing from `means` keeps its batch mean.
    target: level added back; default the counted actions' overall mean.
  """
  r = np.asarray(rewards, np.float64)
  keys = list(strata)
  mask = np.asarray(counted, bool)
  if not (len(r) == len(keys) == len(mask)):
    raise ValueError(f"recentre_per_stratum: rewards {len(r)}, strata {len(keys)} and counted "
                     f"{len(mask)} must have one entry per action")
  out = r.copy()
  if not mask.any():
    return out.astype(np.float32)
  level = float(r[mask].mean()) if target is None else float(target)
  for s in dict.fromkeys(k for k, m in zip(keys, mask) if m):
    member = mask & np.array([k == s for k in keys])
    m_s = float(means[s]) if means is not None and s in means else float(r[member].mean())
    out[member] = r[member] - m_s + level
  return out.astype(np.float32)


def recentre_batch(batch: TrainBatch, *, strata_names: Sequence[str] | None = None,
                   means: Mapping[str, float] | None = None,
                   target: float | None = None) -> TrainBatch:
  """`batch` with per-stratum re-centred rewards (counted = valid and not invalid).

  strata_names: the batch's stratum names by id (build_train_batch's stats['strata']); needed
  when `means` is keyed by name.
  """
  strata = np.asarray(batch.strata)
  counted = np.asarray(batch.valid) & ~np.asarray(batch.invalid)
  keys: list = list(strata)
  if means is not None:
    if strata_names is None:
      raise ValueError("recentre_batch: means keyed by stratum name need strata_names")
    keys = [strata_names[int(i)] if c else None for i, c in zip(strata, counted)]
  rewards = recentre_per_stratum(np.asarray(batch.rewards), keys, counted, means=means,
                                 target=target)
  return batch.replace(rewards=rewards)
