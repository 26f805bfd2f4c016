"""Token log-probabilities from hidden states without materialising [N, V] logits.

`token_logprobs(hidden, lm_head, targets)` returns log softmax(hidden @ lm_head / T)[targets] and
optionally the entropy of that softmax. At vocab 151,936 a [64*4096, V] float32 logits tensor is
160 GB, so the training step must never build it:

- impl='xla' (default): lax.scan over chunks of `chunk_size` tokens; each chunk builds only
  [chunk_size, V] logits. A custom VJP saves only the per-token log-sum-exp (and entropy) and
  recomputes each chunk's logits in the backward pass, accumulating d lm_head in the scan carry.
- impl='pallas': the forward pass is the Pallas kernel of kernels/logprobs_kernel.py (an online
  softmax over vocab tiles); the backward pass is the same chunked recomputation. It is tested
  in interpret mode on CPU only: on GPU/TPU run benchmarks/kernel_bench.py first, and keep
  impl='xla' if it fails to lower or is slower.
- impl='reference': the naive full-logits computation (kernels/reference.py, the test oracle).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mappa_jax.kernels.reference import token_logprobs_reference
from mappa_jax.kernels.logprobs_kernel import pallas_forward
from mappa_jax.rl.config import Impl, choices

Array = jax.Array

IMPLS = choices(Impl)


def _pad_rows(x: Array, multiple: int) -> Array:
  pad = (-x.shape[0]) % multiple
  if pad == 0:
    return x
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _chunk_logits(h: Array, w: Array, temperature: float) -> Array:
  """[C, H] x [H, V] -> float32 [C, V] logits (float32 accumulation)."""
  z = jnp.dot(h, w, preferred_element_type=jnp.float32)
  return z / temperature if temperature != 1.0 else z


def _forward_chunks(hidden, lm_head, targets, temperature, with_entropy, chunk_size):
  """Returns (logp [N], lse [N], entropy [N]) for N a multiple of chunk_size."""
  n, h = hidden.shape
  hc = hidden.reshape(n // chunk_size, chunk_size, h)
  tc = targets.reshape(n // chunk_size, chunk_size)

  def body(_, xs):
    h_c, t_c = xs
    z = _chunk_logits(h_c, lm_head, temperature)
    lse = jax.nn.logsumexp(z, axis=-1)
    z_t = jnp.take_along_axis(z, t_c[:, None], axis=-1)[:, 0]
    if with_entropy:
      p = jnp.exp(z - lse[:, None])
      ent = lse - jnp.sum(p * z, axis=-1)
    else:
      ent = jnp.zeros_like(lse)
    return None, (z_t - lse, lse, ent)

  _, (logp, lse, ent) = jax.lax.scan(body, None, (hc, tc))
  return logp.reshape(n), lse.reshape(n), ent.reshape(n)


def _backward_chunks(hidden, lm_head, targets, lse, ent, g_logp, g_ent, temperature,
                     with_entropy, chunk_size):
  """Cotangents (d hidden [N, H], d lm_head [H, V]) by per-chunk recomputation.

  d logp_i / d z_ij = onehot_ij - p_ij;  d H_i / d z_ij = -p_ij (log p_ij + H_i).
  """
  n, h = hidden.shape
  k = n // chunk_size
  xs = (hidden.reshape(k, chunk_size, h), targets.reshape(k, chunk_size),
        lse.reshape(k, chunk_size), ent.reshape(k, chunk_size),
        g_logp.reshape(k, chunk_size), g_ent.reshape(k, chunk_size))

  def body(dw, x):
    h_c, t_c, lse_c, ent_c, gl_c, ge_c = x
    z = _chunk_logits(h_c, lm_head, temperature)
    logp_all = z - lse_c[:, None]
    p = jnp.exp(logp_all)
    onehot = jax.nn.one_hot(t_c, z.shape[-1], dtype=jnp.float32)
    dz = gl_c[:, None] * (onehot - p)
    if with_entropy:
      dz = dz - ge_c[:, None] * p * (logp_all + ent_c[:, None])
    if temperature != 1.0:
      dz = dz / temperature
    # Matmul inputs in the parameter dtype (bf16 tensor cores), float32 accumulation.
    dz = dz.astype(jnp.promote_types(lm_head.dtype, hidden.dtype))
    dh_c = jnp.dot(dz, lm_head.T, preferred_element_type=jnp.float32)
    dw = dw + jnp.dot(h_c.T, dz, preferred_element_type=jnp.float32)
    return dw, dh_c

  dw, dh = jax.lax.scan(body, jnp.zeros(lm_head.shape, jnp.float32), xs)
  return dh.reshape(n, h).astype(hidden.dtype), dw.astype(lm_head.dtype)


# ---------------------------------------------------------------------------------------------
# custom VJP shared by the chunked XLA and the Pallas forward passes.

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _token_logprobs(hidden, lm_head, targets, temperature, with_entropy, impl, chunk_size,
                    block_v, interpret):
  out, _ = _fwd(hidden, lm_head, targets, temperature, with_entropy, impl, chunk_size,
                block_v, interpret)
  return out


def _fwd(hidden, lm_head, targets, temperature, with_entropy, impl, chunk_size, block_v,
         interpret):
  if impl == "pallas":
    logp, lse, ent = pallas_forward(hidden, lm_head, targets, temperature, chunk_size,
                                    block_v, interpret)
    if not with_entropy:
      ent = jnp.zeros_like(ent)
  else:
    logp, lse, ent = _forward_chunks(hidden, lm_head, targets, temperature, with_entropy,
                                     chunk_size)
  return (logp, ent), (hidden, lm_head, targets, lse, ent)


def _bwd(temperature, with_entropy, impl, chunk_size, block_v, interpret, res, g):
  del impl, block_v, interpret
  hidden, lm_head, targets, lse, ent = res
  g_logp, g_ent = g
  dh, dw = _backward_chunks(hidden, lm_head, targets, lse, ent, g_logp.astype(jnp.float32),
                            g_ent.astype(jnp.float32), temperature, with_entropy, chunk_size)
  return dh, dw, None


_token_logprobs.defvjp(_fwd, _bwd)


def token_logprobs(hidden: Array, lm_head: Array, targets: Array, *, temperature: float = 1.0,
                   impl: str = "xla", with_entropy: bool = False, chunk_size: int = 1024,
                   block_v: int = 2048, interpret: bool | None = None):
  """Per-token log-probabilities (and entropies) of `targets` under softmax(hidden @ lm_head / T).

  Args:
    hidden: [N, H] final hidden states (any float dtype).
    lm_head: [H, V] output projection (embedding.T when tied).
    targets: int [N] token ids to score.
    temperature: logits are divided by it before the softmax.
    impl: 'xla' (token-chunked scan, the default), 'pallas' (vocab-tiled online-softmax kernel;
      its backward is the chunked XLA recomputation) or 'reference' (full [N, V] logits).
    with_entropy: also return the entropy of each token's distribution.
    chunk_size: tokens per chunk (xla) / per kernel block (pallas). N is padded up to a multiple.
    block_v: vocab tile of the pallas kernel.
    interpret: run the Pallas kernel in interpret mode (defaults to True on CPU).
  Returns:
    (logp float32 [N], entropy float32 [N] or None). Differentiable w.r.t. hidden and lm_head.
  """
  if impl not in IMPLS:
    raise ValueError(f"token_logprobs impl must be one of {IMPLS}, got {impl!r}")
  if hidden.ndim != 2 or lm_head.ndim != 2 or targets.ndim != 1:
    raise ValueError(f"expected hidden [N, H], lm_head [H, V], targets [N]; got "
                     f"{hidden.shape}, {lm_head.shape}, {targets.shape}")
  if hidden.shape[1] != lm_head.shape[0] or hidden.shape[0] != targets.shape[0]:
    raise ValueError(f"shape mismatch: hidden {hidden.shape}, lm_head {lm_head.shape}, "
                     f"targets {targets.shape}")
  if impl == "reference":
    return token_logprobs_reference(hidden, lm_head, targets, temperature=temperature,
                                    with_entropy=with_entropy)
  n = hidden.shape[0]
  chunk = max(1, min(chunk_size, n))
  if impl == "pallas":
    chunk = max(8, -(-chunk // 8) * 8)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  targets = targets.astype(jnp.int32)
  h_p, t_p = _pad_rows(hidden, chunk), _pad_rows(targets, chunk)
  logp, ent = _token_logprobs(h_p, lm_head, t_p, float(temperature), bool(with_entropy), impl,
                              int(chunk), int(block_v), bool(interpret))
  return logp[:n], (ent[:n] if with_entropy else None)
