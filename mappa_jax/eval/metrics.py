"""Evaluation statistics over n samples per problem, always grouped by problem id.

The reference maps results to prompts by submission order while they arrive in completion order
(mappa-reference.md §7), which corrupts majority vote and pass@k. Everything here takes
(problem_id, value) pairs, so the order of the inputs never matters.

Definitions (n samples of problem i, c_i of them correct):
  * mean accuracy: mean_i (c_i / n_i) (per-problem mean, then mean over problems);
  * majority (reference definition): mean_i [c_i / n_i > 0.5];
  * majority vote (cons@n): the most frequent extracted answer per problem (ties: the
    answer whose canonical text sorts first), graded against the label;
  * pass@k: mean_i (1 - C(n_i - c_i, k) / C(n_i, k)), the unbiased estimator of Chen et al.
    (2021); requires n_i >= k;
  * 95% CI: percentile bootstrap over problems (the unit of sampling), seeded.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np


def group_by_problem(problem_ids: Sequence[Hashable], values: Sequence[Any]
                     ) -> dict[Hashable, list[Any]]:
  """{problem_id: [values...]} with ids sorted (by str), so results ignore input order."""
  if len(problem_ids) != len(values):
    raise ValueError(f"{len(problem_ids)} problem ids but {len(values)} values")
  groups: dict[Hashable, list[Any]] = collections.defaultdict(list)
  for pid, v in zip(problem_ids, values):
    groups[pid].append(v)
  return {k: groups[k] for k in sorted(groups, key=str)}


def per_problem_mean(problem_ids: Sequence[Hashable], values: Sequence[float]
                     ) -> dict[Hashable, float]:
  """Mean value of each problem's samples."""
  return {k: float(np.mean(np.asarray(v, dtype=float)))
          for k, v in group_by_problem(problem_ids, values).items()}


def mean_accuracy(problem_ids: Sequence[Hashable], correct: Sequence[float]) -> float:
  """Per-problem mean, then mean over problems (NaN when empty)."""
  per = per_problem_mean(problem_ids, correct)
  return float(np.mean(list(per.values()))) if per else float("nan")


def majority_correct(problem_ids: Sequence[Hashable], correct: Sequence[float],
                     threshold: float = 0.5) -> float:
  """Share of problems where more than `threshold` of the samples are correct (reference)."""
  per = per_problem_mean(problem_ids, [float(c > 0.5) for c in correct])
  return float(np.mean([v > threshold for v in per.values()])) if per else float("nan")


def majority_vote_answers(problem_ids: Sequence[Hashable], answers: Sequence[str | None],
                          canonical: Callable[[str], str] = lambda s: s.strip()
                          ) -> dict[Hashable, str | None]:
  """The most frequent answer of each problem (None answers never win unless all are None).

  Ties go to the answer whose canonical form sorts first, independent of sample order; the
  returned answer is the first original text (in sorted order) with that canonical form.
  """
  out = {}
  for pid, ans in group_by_problem(problem_ids, answers).items():
    counts: collections.Counter[str] = collections.Counter()
    texts: dict[str, list[str]] = collections.defaultdict(list)
    for a in ans:
      if a is None or not str(a).strip():
        continue
      key = canonical(str(a))
      counts[key] += 1
      texts[key].append(str(a))
    if not counts:
      out[pid] = None
      continue
    best = max(counts.values())
    key = sorted(k for k, c in counts.items() if c == best)[0]
    out[pid] = sorted(texts[key])[0]
  return out


def majority_vote_accuracy(problem_ids: Sequence[Hashable], answers: Sequence[str | None],
                           gold: dict[Hashable, str], is_equivalent: Callable[[str, str], bool],
                           canonical: Callable[[str], str] = lambda s: s.strip()) -> float:
  """cons@n: share of problems whose majority answer is equivalent to the gold answer."""
  voted = majority_vote_answers(problem_ids, answers, canonical)
  if not voted:
    return float("nan")
  return float(np.mean([a is not None and bool(is_equivalent(a, gold[pid]))
                        for pid, a in voted.items()]))


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
  """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k) (stable product form)."""
  if not 0 <= c <= n:
    raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
  if k < 1 or k > n:
    raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
  if n - c < k:
    return 1.0
  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k(problem_ids: Sequence[Hashable], correct: Sequence[float], k: int) -> float:
  """Mean over problems of the unbiased pass@k estimator (samples grouped by problem id)."""
  per = per_problem_pass_at_k(problem_ids, correct, k)
  return float(np.mean(list(per.values()))) if per else float("nan")


def per_problem_pass_at_k(problem_ids: Sequence[Hashable], correct: Sequence[float], k: int
                          ) -> dict[Hashable, float]:
  out = {}
  for pid, vals in group_by_problem(problem_ids, correct).items():
    c = int(sum(1 for v in vals if v > 0.5))
    try:
      out[pid] = pass_at_k_estimate(len(vals), c, k)
    except ValueError as e:
      raise ValueError(f"problem {pid!r}: {e}") from e
  return out


def bootstrap_ci(values: Iterable[float], *, n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap CI of the mean of per-problem `values` ([P] floats).

  Returns (nan, nan) for no values, (v, v) for one.
  """
  x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size == 1:
    return float(x[0]), float(x[0])
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, x.size, size=(n_boot, x.size))
  means = x[idx].mean(axis=1)
  alpha = (1.0 - confidence) / 2.0
  lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
  return float(lo), float(hi)


def summarize(per_problem: dict[Hashable, float], *, n_boot: int = 2000, seed: int = 0
              ) -> dict[str, float]:
  """{'mean', 'ci_low', 'ci_high', 'n'} of per-problem values (NaNs ignored)."""
  vals = [v for v in per_problem.values() if v is not None and np.isfinite(v)]
  lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
  return {"mean": float(np.mean(vals)) if vals else float("nan"), "ci_low": lo, "ci_high": hi,
          "n": len(vals)}


def paired_bootstrap_diff(a: dict[Hashable, float], b: dict[Hashable, float], *,
                          n_boot: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, float]:
  """Mean of (a - b) over shared problems with a paired bootstrap CI (e.g. trained - base)."""
  shared = sorted(set(a) & set(b), key=str)
  diffs = [a[k] - b[k] for k in shared]
  lo, hi = bootstrap_ci(diffs, n_boot=n_boot, seed=seed, confidence=confidence)
  return {"diff": float(np.mean(diffs)) if diffs else float("nan"), "ci_low": lo, "ci_high": hi,
          "n": len(shared)}
