"""Pallas kernel for the per-token KL, KL-penalised token rewards, return-to-go and the
per-row partial sums of the (global) advantage whitening, in one pass over [B, T].

One kernel per block of rows reads logp/ref_logp/ids/rewards once, walks T in tiles from the
end (within a tile the discounted suffix sum is a [tile, tile] masked matmul; a carry links
tiles) and writes KL, rewards, returns and the row sums. `mappa_jax.rl.objectives.
kl_rewards_returns(impl='pallas')` calls it; the default impl='xla' and the layout are
described there, the jnp reference is kernels/reference.py:kl_rewards_returns_reference.
Tested in interpret mode on CPU only; the GPU/TPU lowering is unvalidated (see
benchmarks/kernel_bench.py). Memory-bound elementwise work like this is fused well by XLA, so
impl='xla' is the default.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mappa_jax.kernels.reference import KL_CLAMP


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


def kl_rewards_returns_pallas(logp, ref_logp, action_ids, end_reward, weights, beta, gamma,
                              estimator, block_b, block_t, interpret):
  """What rl.objectives.kl_rewards_returns computes, as one kernel per block of rows."""
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
