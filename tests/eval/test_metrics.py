"""Metric tests: hand-computed values, shuffled completion order, bootstrap CIs."""
import itertools
import math
import random

import numpy as np
import pytest

from mappa_jax.data import grading
from mappa_jax.eval import metrics

# 3 problems x 4 samples.  p1: 4/4 correct, p2: 1/4, p3: 2/4.
IDS = ["p1"] * 4 + ["p2"] * 4 + ["p3"] * 4
CORRECT = [1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1]


def _shuffled(seed):
  pairs = list(zip(IDS, CORRECT))
  random.Random(seed).shuffle(pairs)
  return [p[0] for p in pairs], [p[1] for p in pairs]


def test_pass_at_k_estimator_matches_combinatorics():
  for n, c, k in itertools.product(range(1, 8), range(0, 8), range(1, 8)):
    if c > n or k > n:
      continue
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert metrics.pass_at_k_estimate(n, c, k) == pytest.approx(expected, abs=1e-12)
  with pytest.raises(ValueError, match="k <= n"):
    metrics.pass_at_k_estimate(2, 1, 3)


@pytest.mark.parametrize("seed", range(5))
def test_aggregates_hand_computed_and_order_independent(seed):
  ids, correct = _shuffled(seed)
  assert metrics.mean_accuracy(ids, correct) == pytest.approx((1 + 0.25 + 0.5) / 3)
  # majority (> half correct): only p1
  assert metrics.majority_correct(ids, correct) == pytest.approx(1 / 3)
  # pass@2: p1 1, p2 1 - C(3,2)/C(4,2) = 0.5, p3 1 - C(2,2)/C(4,2) = 5/6
  assert metrics.pass_at_k(ids, correct, 2) == pytest.approx((1 + 0.5 + 5 / 6) / 3)
  assert metrics.pass_at_k(ids, correct, 1) == pytest.approx((1 + 0.25 + 0.5) / 3)
  assert metrics.pass_at_k(ids, correct, 4) == pytest.approx(1.0)


def test_reference_order_bug_would_differ():
  """Indexing by position (the reference's mapping) gives a different pass@2 on shuffled order."""
  ids, correct = _shuffled(1)
  by_position = [correct[i:i + 4] for i in range(0, 12, 4)]
  positional = np.mean([metrics.pass_at_k_estimate(4, sum(g), 2) for g in by_position])
  assert positional != pytest.approx(metrics.pass_at_k(ids, correct, 2))


def test_unequal_group_sizes_mean_per_problem():
  ids = ["a", "a", "a", "b"]
  assert metrics.mean_accuracy(ids, [1, 1, 1, 0]) == pytest.approx(0.5)  # not 3/4
  with pytest.raises(ValueError, match="problem 'b'"):
    metrics.pass_at_k(ids, [1, 1, 1, 0], 2)
  with pytest.raises(ValueError, match="4 problem ids but 3"):
    metrics.mean_accuracy(ids, [1, 1, 1])


@pytest.mark.parametrize("seed", range(4))
def test_majority_vote_order_independent(seed):
  ids = ["q1"] * 5 + ["q2"] * 4 + ["q3"] * 2
  answers = ["023", "23", "7", None, "23.0",  # q1: 23 wins (3 of 4 canonically)
             "5", "6", "6", "5",              # q2: tie 5/6 -> '5' sorts first
             None, None]                      # q3: no answer
  pairs = list(zip(ids, answers))
  random.Random(seed).shuffle(pairs)
  sids, sans = zip(*pairs)
  voted = metrics.majority_vote_answers(sids, sans, grading.normalize_answer)
  assert grading.is_equivalent(voted["q1"], "23")
  assert voted["q2"] == "5" and voted["q3"] is None
  canon = lambda s: str(grading.parse_number(grading.normalize_answer(s)) or s)
  voted = metrics.majority_vote_answers(sids, sans, canon)
  assert grading.is_equivalent(voted["q1"], "23")
  gold = {"q1": "23", "q2": "6", "q3": "1"}
  acc = metrics.majority_vote_accuracy(sids, sans, gold, grading.is_equivalent, canon)
  assert acc == pytest.approx(1 / 3)


def test_bootstrap_ci_seeded_and_sensible():
  vals = [1.0] * 18 + [0.0] * 12
  lo, hi = metrics.bootstrap_ci(vals, seed=3)
  assert (lo, hi) == metrics.bootstrap_ci(vals, seed=3)
  assert lo < 0.6 < hi and hi - lo < 0.5
  # The normal approximation of a proportion's CI: 0.6 +- 1.96 * sqrt(.6*.4/30) = +-0.175
  assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.24 / 30), rel=0.15)
  assert metrics.bootstrap_ci([0.4]) == (0.4, 0.4)
  assert all(math.isnan(x) for x in metrics.bootstrap_ci([]))
  s = metrics.summarize({"a": 1.0, "b": 0.0, "c": float("nan")})
  assert s["n"] == 2 and s["mean"] == 0.5


def test_paired_bootstrap_diff():
  a = {f"p{i}": 1.0 for i in range(20)}
  b = {f"p{i}": float(i % 2) for i in range(20)}
  d = metrics.paired_bootstrap_diff(a, b, seed=0)
  assert d["diff"] == pytest.approx(0.5) and d["n"] == 20 and d["ci_low"] > 0.2
