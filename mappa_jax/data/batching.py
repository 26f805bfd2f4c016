"""Deterministic batch orders: shuffled epochs and stratified batches by task type.

Both follow mappa-reference.md §2.1 in shape (seed 42 + epoch, drop_last, stratum quotas of
max(1, round(B·p)) with the remainder to the largest stratum, exhausted strata reshuffled and
reused) while using numpy's Generator, so orders are reproducible but not bit-identical to the
reference's PyTorch samplers. Every function returns lists of indices into the task list.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np


def epoch_batches(n: int, batch_size: int, epoch: int, *, seed: int = 42,
                  drop_last: bool = True) -> list[list[int]]:
  """A random permutation of range(n) (seed + epoch) cut into batches."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  order = np.random.default_rng(seed + epoch).permutation(n).tolist()
  stop = (n // batch_size) * batch_size if drop_last else n
  return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def stratum_quotas(counts: dict[str, int], batch_size: int) -> dict[str, int]:
  """Per-batch slots per stratum: max(1, round(B·p)), fixed up to sum to B.

  Over-full quotas are taken back from the largest strata; leftover slots go to the largest
  stratum. Strata are ordered by name, so the result does not depend on dict order.
  Example: {'classification': 30, 'regression': 34}, B=16 -> 8 + 8.
  """
  total = sum(counts.values())
  if total == 0 or batch_size <= 0:
    raise ValueError("stratum_quotas: need at least one task and a positive batch size")
  names = sorted(counts)
  quotas = {s: min(counts[s], max(1, round(batch_size * counts[s] / total))) for s in names}
  by_size = sorted(names, key=lambda s: (-counts[s], s))
  while sum(quotas.values()) > batch_size:
    for s in by_size:
      if quotas[s] > 1 and sum(quotas.values()) > batch_size:
        quotas[s] -= 1
    if all(quotas[s] <= 1 for s in names):
      break
  if sum(quotas.values()) < batch_size:
    quotas[by_size[0]] += batch_size - sum(quotas.values())
  return quotas


class StratifiedBatchSampler:
  """Batches with a fixed share of each task type, reshuffled per epoch.

  Args:
    strata: the task type of each task ([N] strings).
    batch_size: tasks per batch (B).
    seed: base seed; epoch e uses seed + e.
    drop_last: N // B batches per epoch (True) or ceil(N / B).

  With more strata than B, the smallest strata get no slot; a warning-free choice the caller
  can see in `quotas`.
  """

  def __init__(self, strata: Sequence[str], batch_size: int, *, seed: int = 42,
               drop_last: bool = True):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not strata:
      raise ValueError("StratifiedBatchSampler: no tasks")
    self.strata = list(strata)
    self.batch_size = batch_size
    self.seed = seed
    self.drop_last = drop_last
    self.members: dict[str, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(self.strata):
      self.members[s].append(i)
    self.quotas = stratum_quotas({s: len(v) for s, v in self.members.items()}, batch_size)

  def num_batches(self) -> int:
    n = len(self.strata)
    return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

  def batches(self, epoch: int) -> list[list[int]]:
    """The epoch's batches (lists of task indices)."""
    rng = np.random.default_rng(self.seed + epoch)
    pools: dict[str, list[int]] = {}

    def take(stratum: str, k: int) -> list[int]:
      out = []
      while len(out) < k:
        if not pools.get(stratum):  # exhausted: reshuffle and reuse
          fresh = rng.permutation(self.members[stratum]).tolist()
          # Items already in this batch go to the bottom (pop() takes from the top), so one
          # batch never holds a task twice.
          pools[stratum] = ([i for i in fresh if i in out] + [i for i in fresh if i not in out])
        out.append(pools[stratum].pop())
      return out

    result = []
    for _ in range(self.num_batches()):
      batch = []
      for s in sorted(self.quotas):
        batch.extend(take(s, self.quotas[s]))
      result.append(rng.permutation(batch).tolist())
    return result
