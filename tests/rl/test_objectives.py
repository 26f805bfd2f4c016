"""Golden tests: every objective formula against numpy written from mappa-reference.md §3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mappa_jax.rl import objectives as obj


def _layout(rng, b, t, per_row=1):
  """action_ids [b, t] with ragged responses after a prompt; returns ids and num actions."""
  ids = np.full((b, t), -1, np.int32)
  a = 0
  for r in range(b):
    c = int(rng.integers(1, 4))
    for _ in range(per_row):
      length = int(rng.integers(1, 6))
      if c + length > t:
        break
      ids[r, c:c + length] = a
      a += 1
      c += length + int(rng.integers(1, 3))
  return ids, a


def _np_returns(reward_tokens, ids, gamma):
  ret = np.zeros_like(reward_tokens)
  for r in range(ids.shape[0]):
    for c in range(ids.shape[1]):
      if ids[r, c] < 0:
        continue
      g, k = 0.0, c
      while k < ids.shape[1] and ids[r, k] == ids[r, c]:
        g += gamma ** (k - c) * reward_tokens[r, k]
        k += 1
      ret[r, c] = g
  return ret


def test_end_rewards_on_last_token_only():
  rng = np.random.default_rng(0)
  ids, a = _layout(rng, 4, 20, per_row=2)
  r = rng.normal(size=a).astype(np.float32)
  got = np.asarray(obj.end_rewards(jnp.asarray(ids), jnp.asarray(r)))
  want = np.zeros_like(got)
  for k in range(a):
    rr, cc = np.nonzero(ids == k)
    want[rr[-1], cc[-1]] = r[k]
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("weighting", ["token", "action"])
@pytest.mark.parametrize("stratified", [False, True])
def test_reinforce_pp_advantages_golden(weighting, stratified):
  """r_t = -beta*k1 (+R at last), G = reverse cumsum within the action, token/action-weighted
  population whitening with the 1e-8 floor, truncated counted, invalid excluded."""
  rng = np.random.default_rng(1)
  ids, a = _layout(rng, 6, 24, per_row=2)
  logp = rng.normal(size=ids.shape).astype(np.float32) * 0.3
  ref = rng.normal(size=ids.shape).astype(np.float32) * 0.3
  rewards = rng.random(a).astype(np.float32)
  invalid = rng.random(a) < 0.2
  strata = rng.integers(0, 2, a).astype(np.int32)
  beta = 0.01

  tok_r = np.where(ids >= 0, -beta * (logp.astype(np.float64) - ref), 0.0)
  for k in range(a):
    rr, cc = np.nonzero(ids == k)
    tok_r[rr[-1], cc[-1]] += rewards[k]
  g = _np_returns(tok_r, ids, 1.0)
  lengths = np.array([(ids == k).sum() for k in range(a)])
  w = np.zeros(ids.shape)
  for k in range(a):
    if not invalid[k]:
      w[ids == k] = 1.0 if weighting == "token" else 1.0 / lengths[k]
  grp = np.where(ids >= 0, strata[np.maximum(ids, 0)], 0) if stratified else np.zeros_like(ids)
  want = np.zeros(ids.shape)
  for s in np.unique(grp):
    sel = grp == s
    mean = (w[sel] * g[sel]).sum() / w[sel].sum()
    var = (w[sel] * (g[sel] - mean) ** 2).sum() / w[sel].sum()
    want[sel] = (g[sel] - mean) / np.sqrt(max(var, 1e-8))
  want = np.where(ids >= 0, want, 0.0)

  j_ids = jnp.asarray(ids)
  weights = obj.whitening_weights(j_ids, jnp.asarray(~invalid), weighting)
  _, _, ret, _ = obj.kl_rewards_returns(logp, ref, j_ids, obj.end_rewards(j_ids, rewards),
                                        weights, beta=beta)
  np.testing.assert_allclose(ret, g, atol=1e-5)
  groups = jnp.asarray(grp) if stratified else None
  stats = obj.whitening_stats(ret, weights, groups, 2 if stratified else 1)
  adv = jnp.where(j_ids >= 0, obj.whiten(ret, stats, groups), 0.0)
  np.testing.assert_allclose(adv, want, atol=1e-4)


def test_variance_floor():
  vals = jnp.ones((2, 3))
  stats = obj.whitening_stats(vals, jnp.ones((2, 3)))
  np.testing.assert_allclose(obj.whiten(vals + 1e-3, stats), 1e-3 / np.sqrt(1e-8), rtol=1e-3)


def test_pooled_merge_equals_concatenation():
  rng = np.random.default_rng(2)
  x1, x2 = rng.normal(size=(3, 7)) + 4, rng.normal(size=(5, 7)) * 2
  w1, w2 = rng.random((3, 7)), rng.random((5, 7))
  merged = obj.merge_stats(obj.whitening_stats(x1, w1), obj.whitening_stats(x2, w2))
  both = obj.whitening_stats(np.concatenate([x1, x2]), np.concatenate([w1, w2]))
  for m, b in zip(merged, both):
    np.testing.assert_allclose(m, b, rtol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_continue_returns_across_actions(gamma):
  """Actions 0 -> 1 -> 2 of one trajectory (rows 0..2), action 3 alone: G flows backwards."""
  t = 8
  ids = np.full((4, t), -1, np.int32)
  spans = [(2, 5), (1, 3), (3, 7), (0, 4)]
  for k, (s, e) in enumerate(spans):
    ids[k, s:e] = k
  rng = np.random.default_rng(3)
  r = rng.normal(size=(4, t)) * (ids >= 0)
  within = _np_returns(r, ids, gamma)
  # Golden: concatenate the chain's tokens and take one discounted reverse cumsum.
  chain = [(k, c) for k in (0, 1, 2) for c in range(t) if ids[k, c] == k]
  want = within.copy()
  for i, (k, c) in enumerate(chain):
    want[k, c] = sum(gamma ** (j - i) * r[kk, cc] for j, (kk, cc) in enumerate(chain) if j >= i)
  got = obj.continue_returns(jnp.asarray(within, jnp.float32), jnp.asarray(ids),
                             jnp.asarray([1, 2, -1, -1], jnp.int32), gamma)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_ppo_clip_and_dual_clip_golden():
  rng = np.random.default_rng(4)
  logp, old = rng.normal(size=50) * 0.5, rng.normal(size=50) * 0.5
  adv = rng.normal(size=50)
  ratio = np.exp(logp - old)
  want = np.maximum(-ratio * adv, -np.clip(ratio, 0.8, 1.27) * adv)
  loss, clipped, _ = obj.ppo_clip_loss(logp, old, adv, eps_low=0.2, eps_high=0.27)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(clipped, -np.clip(ratio, 0.8, 1.27) * adv > -ratio * adv)
  dual = np.where(adv < 0, np.minimum(want, -3.0 * adv), want)
  loss3, _, _ = obj.ppo_clip_loss(logp, old, adv, eps_low=0.2, eps_high=0.27, dual_clip=3.0)
  np.testing.assert_allclose(loss3, dual, rtol=1e-5)


def test_ppo_gradient_at_ratio_one_equals_reinforce():
  """At logp == old_logp the PPO-clip gradient is the policy gradient -A * d logp."""
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(6, 11)), jnp.float32)
  tgt = jnp.asarray(rng.integers(0, 11, 6))
  adv = jnp.asarray(rng.normal(size=6), jnp.float32)

  def logp_of(z):
    return jnp.take_along_axis(jax.nn.log_softmax(z), tgt[:, None], 1)[:, 0]

  old = jax.lax.stop_gradient(logp_of(logits))
  g_ppo = jax.grad(lambda z: jnp.mean(obj.ppo_clip_loss(logp_of(z), old, adv)[0]))(logits)
  g_pg = jax.grad(lambda z: jnp.mean(-adv * logp_of(z)))(logits)
  np.testing.assert_allclose(g_ppo, g_pg, atol=1e-6)


def _np_loss(loss_t, ids, lossable, mode):
  """Loss over one optimizer step straight from the spec."""
  a = ids.max() + 1
  per = []
  ntok = 0
  for k in range(a):
    sel = ids == k
    if lossable[k]:
      per.append(loss_t[sel].sum() / (sel.sum() if mode == "seq_mean_token_mean" else 1.0))
      ntok += sel.sum()
    else:
      per.append(0.0)  # masked (e.g. truncated) but still counted in the samples
  if mode == "token_mean":
    return sum(per) / ntok
  return sum(per) / a


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum"])
def test_loss_aggregation_and_micro_batch_accumulation(mode):
  rng = np.random.default_rng(6)
  ids, a = _layout(rng, 8, 16, per_row=1)
  loss_t = rng.normal(size=ids.shape)
  lossable = rng.random(a) > 0.25
  mask = (ids >= 0) & lossable[np.maximum(ids, 0)]
  w = np.asarray(obj.loss_token_weights(jnp.asarray(mask), jnp.asarray(ids), a, mode))
  norm = mask.sum() if mode == "token_mean" else a
  full = (w * loss_t).sum() / norm
  np.testing.assert_allclose(full, _np_loss(loss_t, ids, lossable, mode), rtol=1e-5)
  micro = sum((w[i:i + 2] * loss_t[i:i + 2]).sum() / norm for i in range(0, 8, 2))
  np.testing.assert_allclose(micro, full, rtol=1e-5)


def test_padded_and_packed_layouts_give_the_same_loss():
  """Same actions, one per row vs several per row: identical advantages and loss."""
  rng = np.random.default_rng(7)
  lengths = [3, 5, 2, 4]
  prompt = 2
  rewards = np.array([1.0, 0.0, 0.5, 2.0], np.float32)
  truncated = np.array([False, True, False, False])
  lp = [rng.normal(size=n).astype(np.float32) for n in lengths]
  ref = [rng.normal(size=n).astype(np.float32) for n in lengths]
  new = [x + rng.normal(size=x.shape).astype(np.float32) * 0.1 for x in lp]

  def build(rows):
    t = 16
    ids = np.full((len(rows), t), -1, np.int32)
    arrs = [np.zeros((len(rows), t), np.float32) for _ in range(3)]
    for r, members in enumerate(rows):
      c = 0
      for k in members:
        c += prompt
        ids[r, c:c + lengths[k]] = k
        for arr, src in zip(arrs, (lp, ref, new)):
          arr[r, c:c + lengths[k]] = src[k]
        c += lengths[k]
    return ids, arrs

  def loss_of(rows):
    ids, (old, rf, nw) = build(rows)
    j = jnp.asarray(ids)
    include = jnp.ones(4, bool)
    wts = obj.whitening_weights(j, include)
    _, _, ret, _ = obj.kl_rewards_returns(old, rf, j, obj.end_rewards(j, rewards), wts,
                                          beta=0.01)
    adv = obj.whiten(ret, obj.whitening_stats(ret, wts))
    loss_t, _, _ = obj.ppo_clip_loss(nw, old, adv)
    mask = (j >= 0) & ~jnp.asarray(truncated)[jnp.maximum(j, 0)]
    w = obj.loss_token_weights(mask, j, 4, "seq_mean_token_mean")
    return float(jnp.sum(w * loss_t) / 4)

  padded = loss_of([[0], [1], [2], [3]])
  packed = loss_of([[2, 0], [3, 1]])
  assert abs(padded) > 1e-3
  np.testing.assert_allclose(packed, padded, rtol=1e-5)


@pytest.mark.parametrize("kind", ["none", "reinforce_baseline", "grpo"])
def test_group_baselines_golden(kind):
  rng = np.random.default_rng(8)
  r = rng.random(10).astype(np.float32) * 10
  groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 3, 3], np.int32)
  valid = np.ones(10, bool)
  valid[4] = False
  want = r.astype(np.float64).copy()
  if kind != "none":
    for g in np.unique(groups):
      sel = (groups == g) & valid
      mean = r[sel].mean()
      want[groups == g] = r[groups == g] - mean
      if kind == "grpo":  # OpenRLHF group_norm: torch std, i.e. ddof=1
        want[groups == g] /= (r[sel].std(ddof=1) if sel.sum() > 1 else 0.0) + 1e-9
    want[~valid] = 0.0
  got = obj.group_baseline(jnp.asarray(r), jnp.asarray(groups), jnp.asarray(valid), 4, kind)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
