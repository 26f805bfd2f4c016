"""One pass over [B, T]: per-token KL, KL-penalised token rewards, return-to-go, and the
per-row partial sums of the (global) advantage whitening.

Layout: `action_ids[b, t]` is the action a response token belongs to (-1 for prompt and padding
tokens). An action's tokens must be contiguous within a row (true for both the padded layout,
one action per row, and the packed layout, several actions per row). Returns never flow between
different ids.

impl='xla' (default): vectorised jnp with a segmented `associative_scan` for the discounted
reverse cumsum. impl='pallas': one kernel per block of rows that reads logp/ref_logp/ids/rewards
once, walks T in tiles from the end (within a tile the discounted suffix sum is a [tile, tile]
masked matmul; a carry links tiles) and writes KL, rewards, returns and the row sums.
impl='reference': the serial loop in reference.py.

The whitening statistics are returned as per-row (sum w, sum w*G, sum w*(G - row mean)^2); the
caller combines rows (and devices) with the parallel-variance formula in jnp, so the kernel never
needs a cross-device reduction. As with the logprob kernel, the Pallas path is tested in
interpret mode on CPU only; the GPU/TPU lowering is unvalidated (see benchmarks/kernel_bench.py).
Memory-bound elementwise work like this is fused well by XLA, so impl='xla' is the default.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mappa_jax.kernels.reference import KL_CLAMP
from mappa_jax.kernels.reference import kl_estimate_reference
from mappa_jax.kernels.reference import kl_rewards_returns_reference

Array = jax.Array

IMPLS = ("xla", "pallas", "reference")


def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k1") -> Array:
  """k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r with log r = logp - ref_logp;
  clamped to [-10, 10] (OpenRLHF compute_approx_kl). Shapes: any, float32 out."""
  return kl_estimate_reference(logp, ref_logp, estimator)


def _same_next(action_ids: Array) -> Array:
  """bool [B, T]: token t+1 belongs to the same action as token t."""
  nxt = jnp.concatenate([action_ids[:, 1:], jnp.full_like(action_ids[:, :1], -1)], axis=1)
  return (nxt == action_ids) & (action_ids >= 0)


def discounted_returns(rewards: Array, links: Array) -> Array:
  """G_t = r_t + links_t * G_{t+1} along the last axis (links_t = gamma or 0).

  rewards, links: [B, T] float32. Segmented linear recurrence via associative_scan.
  """
  def combine(later, earlier):
    a_l, b_l = later
    a_e, b_e = earlier
    return a_e * a_l, b_e + a_e * b_l

  # associative_scan(reverse=True) folds from the end: fn(accumulated suffix, element).
  _, g = jax.lax.associative_scan(combine,
                                  (links, rewards), reverse=True, axis=1)
  return g


def _row_sums(returns: Array, weights: Array) -> Array:
  n = jnp.sum(weights, axis=1)
  s = jnp.sum(weights * returns, axis=1)
  mean = s / jnp.maximum(n, 1e-30)
  m2 = jnp.sum(weights * (returns - mean[:, None]) ** 2, axis=1)
  return jnp.stack([n, s, m2], axis=1)


def _xla(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator):
  mask = (action_ids >= 0).astype(jnp.float32)
  kl = kl_estimate(logp, ref_logp, estimator) * mask
  reward = (end_reward.astype(jnp.float32) - beta * kl) * mask
  links = gamma * _same_next(action_ids).astype(jnp.float32)
  returns = discounted_returns(reward, links) * mask
  return kl, reward, returns, _row_sums(returns, weights.astype(jnp.float32))


def _rewards_kernel(lp_ref, rp_ref, id_ref, er_ref, w_ref, kl_out, r_out, g_out, sums_out, *,
                    beta, gamma, estimator, block_t):
  ids = id_ref[...]
  mask = (ids >= 0).astype(jnp.float32)
  log_ratio = lp_ref[...].astype(jnp.float32) - rp_ref[...].astype(jnp.float32)
  if estimator == "k1":
    kl = log_ratio
  elif estimator == "k2":
    kl = 0.5 * log_ratio * log_ratio
  else:
    kl = jnp.exp(-log_ratio) - 1.0 + log_ratio
  kl = jnp.clip(kl, -KL_CLAMP, KL_CLAMP) * mask
  reward = (er_ref[...].astype(jnp.float32) - beta * kl) * mask
  kl_out[...] = kl
  r_out[...] = reward

  bb, t_len = ids.shape
  n_tiles = t_len // block_t
  # decay[t, s] = gamma^(s - t) for s >= t, else 0 (local tile coordinates).
  ti = jax.lax.broadcasted_iota(jnp.int32, (block_t, block_t), 0)
  si = jax.lax.broadcasted_iota(jnp.int32, (block_t, block_t), 1)
  dist = (si - ti).astype(jnp.float32)
  decay = jnp.where(si >= ti, jnp.power(jnp.float32(gamma), jnp.maximum(dist, 0.0)), 0.0)
  # gamma^(block_t - t): discount from local t to the next tile's first token.
  tail = jnp.power(jnp.float32(gamma),
                   (block_t - jax.lax.broadcasted_iota(jnp.int32, (1, block_t), 1))
                   .astype(jnp.float32))

  def tile(k, carry):
    g_first, id_first = carry
    start = (n_tiles - 1 - k) * block_t
    ids_k = id_ref[:, pl.ds(start, block_t)]
    r_k = r_out[:, pl.ds(start, block_t)]
    same = (ids_k[:, :, None] == ids_k[:, None, :]) & (ids_k[:, :, None] >= 0)
    m = jnp.where(same, decay[None], 0.0)                      # [bb, t, s]
    g = jnp.sum(m * r_k[:, None, :], axis=2)
    link = (ids_k == id_first[:, None]) & (ids_k >= 0)
    g = g + jnp.where(link, tail * g_first[:, None], 0.0)
    g_out[:, pl.ds(start, block_t)] = g
    return g[:, 0], ids_k[:, 0]

  jax.lax.fori_loop(0, n_tiles, tile, (jnp.zeros((bb,), jnp.float32),
                                       jnp.full((bb,), -1, jnp.int32)))
  returns = g_out[...]
  w = w_ref[...].astype(jnp.float32)
  n = jnp.sum(w, axis=1)
  s = jnp.sum(w * returns, axis=1)
  mean = s / jnp.maximum(n, 1e-30)
  m2 = jnp.sum(w * (returns - mean[:, None]) ** 2, axis=1)
  sums_out[...] = jnp.stack([n, s, m2], axis=1)


def _pallas(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator, block_b,
            block_t, interpret):
  b, t = logp.shape
  block_t = min(block_t, t)
  pad_b, pad_t = (-b) % block_b, (-t) % block_t

  def pad(x, value):
    return jnp.pad(x, ((0, pad_b), (0, pad_t)), constant_values=value)

  args = (pad(logp, 0), pad(ref_logp, 0), pad(action_ids.astype(jnp.int32), -1),
          pad(end_reward, 0), pad(weights, 0))
  bp, tp = b + pad_b, t + pad_t
  spec = pl.BlockSpec((block_b, tp), lambda i: (i, 0))
  f32 = jax.ShapeDtypeStruct((bp, tp), jnp.float32)
  kernel = functools.partial(_rewards_kernel, beta=float(beta), gamma=float(gamma),
                             estimator=estimator, block_t=block_t)
  kl, reward, returns, sums = pl.pallas_call(
      kernel,
      grid=(bp // block_b,),
      in_specs=[spec] * 5,
      out_specs=[spec, spec, spec, pl.BlockSpec((block_b, 3), lambda i: (i, 0))],
      out_shape=[f32, f32, f32, jax.ShapeDtypeStruct((bp, 3), jnp.float32)],
      interpret=interpret,
  )(*args)
  return kl[:b, :t], reward[:b, :t], returns[:b, :t], sums[:b]


def kl_rewards_returns(logp: Array, ref_logp: Array, action_ids: Array, end_reward: Array,
                       weights: Array, *, beta: float, gamma: float = 1.0,
                       estimator: str = "k1", impl: str = "xla", block_b: int = 8,
                       block_t: int = 128, interpret: bool | None = None):
  """Per-token KL, token rewards r_t = R*[t last] - beta*kl_t, returns and whitening sums.

  Args:
    logp, ref_logp: [B, T] logprobs of each token under the policy and the reference.
    action_ids: int32 [B, T]; action of each response token, -1 for prompt/padding.
    end_reward: [B, T]; each action's reward on its last token, 0 elsewhere.
    weights: [B, T]; whitening weight per token (0 = excluded from the statistics).
    beta: KL coefficient (0 when the KL is a loss term instead). gamma: discount within an action.
    estimator: 'k1' | 'k2' | 'k3'.
    impl: 'xla' | 'pallas' | 'reference'.
  Returns:
    kl [B, T], token_rewards [B, T], returns [B, T] (float32, 0 outside responses),
    row_sums [B, 3] = (sum w, sum w*G, sum w*(G - row_mean)^2).
  """
  if impl not in IMPLS:
    raise ValueError(f"kl_rewards_returns impl must be one of {IMPLS}, got {impl!r}")
  if estimator not in ("k1", "k2", "k3"):
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
  if impl == "reference":
    return kl_rewards_returns_reference(logp, ref_logp, action_ids, end_reward, weights,
                                        beta=beta, gamma=gamma, estimator=estimator)
  if impl == "pallas":
    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    return _pallas(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator,
                   block_b, block_t, interpret)
  return _xla(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator)


def combine_row_sums(row_sums: Array, group: Array | None = None, num_groups: int = 1):
  """Parallel-variance merge of per-row (n, sum, M2) into per-group (n, mean, var).

  row_sums: [R, 3]; group: int32 [R] in [0, num_groups) (None: one group).
  Returns n [G], mean [G], population var [G].
  """
  if group is None:
    group = jnp.zeros(row_sums.shape[0], jnp.int32)
  n_r, s_r, m2_r = row_sums[:, 0], row_sums[:, 1], row_sums[:, 2]
  n = jax.ops.segment_sum(n_r, group, num_groups)
  mean = jax.ops.segment_sum(s_r, group, num_groups) / jnp.maximum(n, 1e-30)
  row_mean = s_r / jnp.maximum(n_r, 1e-30)
  m2 = jax.ops.segment_sum(m2_r + n_r * (row_mean - mean[group]) ** 2, group, num_groups)
  return n, mean, m2 / jnp.maximum(n, 1e-30)
