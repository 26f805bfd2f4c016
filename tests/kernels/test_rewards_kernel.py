"""KL / token reward / return-to-go / whitening partial sums: xla and pallas vs a numpy golden."""
import numpy as np
import pytest

from mappa_jax.rl.objectives import combine_row_sums
from mappa_jax.rl.objectives import kl_rewards_returns


def _random_layout(rng, b, t):
  """Ragged actions, several per row (packed-like) with gaps, ids unique over the batch."""
  ids = np.full((b, t), -1, np.int32)
  nxt = 0
  for r in range(b):
    c = int(rng.integers(0, 4))
    while c < t - 1:
      length = int(rng.integers(1, 12))
      ids[r, c:c + length] = nxt
      nxt += 1
      c += length + int(rng.integers(0, 3))
  return ids


def golden(logp, ref, ids, end_reward, w, beta, gamma, est):
  """Straight from mappa-reference.md §3 (numpy, float64, explicit loops)."""
  lr = logp.astype(np.float64) - ref
  kl = {"k1": lr, "k2": lr ** 2 / 2, "k3": np.exp(-lr) - 1 + lr}[est]
  kl = np.clip(kl, -10, 10) * (ids >= 0)
  reward = (end_reward - beta * kl) * (ids >= 0)
  ret = np.zeros_like(reward)
  b, t = ids.shape
  for r in range(b):
    g = 0.0
    for c in range(t - 1, -1, -1):
      if ids[r, c] < 0:
        g = 0.0
        continue
      if c + 1 < t and ids[r, c + 1] == ids[r, c]:
        g = reward[r, c] + gamma * g
      else:
        g = reward[r, c]
      ret[r, c] = g
  n = w.sum(1)
  s = (w * ret).sum(1)
  mean = s / np.maximum(n, 1e-30)
  m2 = (w * (ret - mean[:, None]) ** 2).sum(1)
  return kl, reward, ret, np.stack([n, s, m2], 1)


@pytest.mark.parametrize("impl", ["xla", "pallas", "reference"])
@pytest.mark.parametrize("est,gamma", [("k1", 1.0), ("k2", 0.9), ("k3", 0.97)])
def test_matches_golden(impl, est, gamma):
  rng = np.random.default_rng(1)
  b, t = 5, 45
  ids = _random_layout(rng, b, t)
  logp = rng.normal(size=(b, t)).astype(np.float32)
  ref = rng.normal(size=(b, t)).astype(np.float32)
  end = (rng.normal(size=(b, t)) * (rng.random((b, t)) < 0.2)).astype(np.float32)
  w = (rng.random((b, t)) * (ids >= 0)).astype(np.float32)
  got = kl_rewards_returns(logp, ref, ids, end, w, beta=0.05, gamma=gamma, estimator=est,
                           impl=impl, block_b=2, block_t=8)
  want = golden(logp, ref, ids, end, w, 0.05, gamma, est)
  for g, x, name in zip(got, want, ["kl", "reward", "returns", "row_sums"]):
    np.testing.assert_allclose(np.asarray(g), x, atol=2e-5, rtol=2e-5, err_msg=name)


def test_row_sums_combine_to_global_stats():
  rng = np.random.default_rng(2)
  vals = rng.normal(size=(6, 20)) * 3 + 7
  w = rng.random((6, 20)) * (rng.random((6, 20)) < 0.7)
  n = w.sum(1)
  s = (w * vals).sum(1)
  m2 = (w * (vals - (s / n)[:, None]) ** 2).sum(1)
  groups = np.array([0, 1, 0, 2, 1, 0])
  n_g, mean_g, var_g = combine_row_sums(np.stack([n, s, m2], 1).astype(np.float32), groups, 3)
  for g in range(3):
    sel = groups == g
    want_mean = (w[sel] * vals[sel]).sum() / w[sel].sum()
    want_var = (w[sel] * (vals[sel] - want_mean) ** 2).sum() / w[sel].sum()
    np.testing.assert_allclose(mean_g[g], want_mean, rtol=1e-5)
    np.testing.assert_allclose(var_g[g], want_var, rtol=1e-4)


def test_kl_is_clamped():
  logp = np.array([[0.0, 50.0, -50.0]], np.float32)
  ids = np.zeros((1, 3), np.int32)
  kl, *_ = kl_rewards_returns(logp, np.zeros_like(logp), ids, np.zeros_like(logp),
                              np.ones_like(logp), beta=0.01, estimator="k1")
  np.testing.assert_allclose(kl, [[0.0, 10.0, -10.0]])
