"""Pallas forward pass of the token log-probabilities: an online softmax over vocab tiles.

The kernel runs over a (token block, vocab block) grid and keeps a running max, sum of exp,
sum of exp*logit and the target's logit, so not even a [block, V] tile of logits is held. It is
written with the portable pallas_call/BlockSpec API and tested in interpret mode on CPU; it has
NOT been validated on a GPU (Mosaic GPU) or TPU backend yet. `mappa_jax.rl.logprobs.
token_logprobs(impl='pallas')` uses it with the chunked XLA backward pass; the jnp reference is
kernels/reference.py:token_logprobs_reference.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _online_softmax_kernel(h_ref, w_ref, t_ref, m_ref, s_ref, zs_ref, zt_ref, *, block_v,
                           vocab, temperature):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    s_ref[...] = jnp.zeros(s_ref.shape, jnp.float32)
    zs_ref[...] = jnp.zeros(zs_ref.shape, jnp.float32)
    zt_ref[...] = jnp.zeros(zt_ref.shape, jnp.float32)

  z = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32) / temperature
  col = j * block_v + jax.lax.broadcasted_iota(jnp.int32, z.shape, 1)
  valid = col < vocab                      # vocab padded up to a multiple of block_v
  z = jnp.where(valid, z, -jnp.inf)
  m_old = m_ref[...]
  m_new = jnp.maximum(m_old, jnp.max(z, axis=1))
  scale = jnp.exp(m_old - m_new)
  e = jnp.where(valid, jnp.exp(z - m_new[:, None]), 0.0)
  s_ref[...] = s_ref[...] * scale + jnp.sum(e, axis=1)
  zs_ref[...] = zs_ref[...] * scale + jnp.sum(e * jnp.where(valid, z, 0.0), axis=1)
  m_ref[...] = m_new
  hit = col == t_ref[...][:, None]
  zt_ref[...] = zt_ref[...] + jnp.sum(jnp.where(hit, z, 0.0), axis=1)


def pallas_forward(hidden, lm_head, targets, temperature, block_n, block_v, interpret):
  """(logp [N], lse [N], entropy [N]) by an online softmax over vocab tiles, never holding a
  [block_n, V] tile; N must be a multiple of block_n. Its backward pass is the chunked
  recomputation of mappa_jax.rl.logprobs."""
  n, h = hidden.shape
  vocab = lm_head.shape[1]
  w = lm_head
  if vocab % block_v:
    w = jnp.pad(lm_head, ((0, 0), (0, (-vocab) % block_v)))
  grid = (n // block_n, w.shape[1] // block_v)
  row_spec = pl.BlockSpec((block_n,), lambda i, j: (i,))
  out = jax.ShapeDtypeStruct((n,), jnp.float32)
  kernel = functools.partial(_online_softmax_kernel, block_v=block_v, vocab=vocab,
                             temperature=float(temperature))
  m, s, zs, zt = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[pl.BlockSpec((block_n, h), lambda i, j: (i, 0)),
                pl.BlockSpec((h, block_v), lambda i, j: (0, j)),
                row_spec],
      out_specs=[row_spec] * 4,
      out_shape=[out] * 4,
      interpret=interpret,
  )(hidden, w, targets)
  lse = m + jnp.log(s)
  entropy = lse - zs / s
  return zt - lse, lse, entropy
