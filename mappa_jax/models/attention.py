"""Attention cores of the decoder: one mask contract, several implementations.

Shapes: q [B, T, N, D]; k, v [B, S, K, D] ('bskd', fresh projections) or [B, K, S, D] ('bksd',
the KV cache's layout), K kv heads shared by G = N // K query heads each; output [B, T, N, D]
in q's dtype. Query t sits at slot `query_start + t` and sees key slot s iff

    s <= query_start + t                              (causal over slots)
    and key_mask[b, s]                                (when given: padding / valid cache slots)
    and segment_ids[b, t] == segment_ids[b, s] != 0   (when given: packed rows, S == T)

A query with no visible key (padding) gets a finite average of values, never NaN, so it cannot
poison the valid rows (which never see it). Scores and softmax are float32 in every dtype.

Implementations (`ModelConfig.attention_impl`):

  'einsum'   the reference: one grouped einsum over materialised [B, K, G, T, S] scores.
  'xla'      `jax.nn.dot_product_attention(implementation='xla')` over the whole [T, S].
  'cudnn'    `jax.nn.dot_product_attention(implementation='cudnn')`: cuDNN flash attention (GPU,
             bf16/fp16); causal block skipping, key mask / segments go in as a bias. Falls back
             to 'xla' (with a warning) where cuDNN refuses the call while tracing.
  'blocked'  `jax.nn.dot_product_attention` (XLA) per causal query block and per chunk of rows:
             a query block only meets the keys up to its last query (the upper triangle is
             never computed) and the rows run in a `lax.map` whose body is rematerialised, so
             score tiles stay cache-sized in both passes and the backward pass stores no
             [B, N, T, S] probabilities. The materialised einsum is memory-bound on its score
             tensor on CPU; this is what makes training fast there.
  'grouped'  materialised scores [B, K, G*T, S] from 'bksd' keys: the G query heads of a kv
             head fold into the matmul's rows and the cache is read in its own layout (no
             per-step transposed copy of the cache: decode).
  'auto'     per backend, from measurements (`resolve_impl`).
"""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp

Array = jax.Array
log = logging.getLogger(__name__)

IMPLS = ("auto", "einsum", "xla", "cudnn", "blocked", "grouped")
KV_LAYOUTS = ("bskd", "bksd")

# 'blocked' tile sizes, measured on the 2-core CPU (B=16, T=256, N=8, K=2, D=32, float32,
# fwd+bwd of one layer's attention, best of 6 interleaved: einsum 184 ms, xla 170 ms,
# blocked 42 ms with 1 MiB tiles and 64-query blocks; 4 MiB: 88 ms, no row chunks: 73 ms).
# Rows per chunk: one chunk's float32 score tile is at most _TILE_BYTES (cache-sized); queries
# in blocks of _QUERY_BLOCK, at most _MAX_QUERY_BLOCKS of them (each block is one unrolled call,
# so long sequences get longer blocks rather than a huge program).
_TILE_BYTES = 1 << 20
_QUERY_BLOCK = 64
_MAX_QUERY_BLOCKS = 8
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_warned: set[str] = set()


def resolve_impl(impl: str, *, dtype, query_len: int, cached: bool,
                 backend: str | None = None) -> str:
  """The implementation `impl` runs as. 'auto' (measured on CPU; GPU pending, see
  benchmarks/gpu_suite.sh):
    cpu: 'grouped' over a KV cache (the decode step reads each head's [S, D] block in place;
         transposed copies of the cache were 19 % of a sampler step with einsum), else
         'blocked' (training: 4x faster than einsum per layer);
    gpu: 'cudnn' (flash attention) for bf16/fp16 with more than one query (training,
         prefill), else 'grouped' over a KV cache (decode is memory-bound: no transposed copy
         of the cache), else 'xla';
    other backends: 'grouped' over a cache, else 'xla'.
  """
  if impl not in IMPLS:
    raise ValueError(f"attention_impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  if backend in ("gpu", "cuda", "rocm") and query_len > 1 and jnp.dtype(dtype) in _CUDNN_DTYPES:
    return "cudnn"
  if cached:
    return "grouped"
  if backend == "cpu":
    return "blocked"
  return "xla"


def attention(q: Array, k: Array, v: Array, *, impl: str = "auto",
              query_start: Array | int = 0, key_mask: Array | None = None,
              segment_ids: Array | None = None, kv_layout: str = "bskd") -> Array:
  """softmax(q k^T / sqrt(D), masked as in the module docstring) v.

  Args:
    q: [B, T, N, D] queries (compute dtype).
    k, v: [B, S, K, D] (kv_layout 'bskd') or [B, K, S, D] ('bksd'); cast to q's dtype.
    impl: one of IMPLS.
    query_start: slot of query 0: a Python int (no cache; lets 'blocked' and 'cudnn' skip the
      upper triangle) or an int32 scalar (the cache index).
    key_mask: bool [B, S] or None. segment_ids: int [B, T] with S == T, or None.
    kv_layout: 'bskd' or 'bksd' (a KV cache: 'auto' then picks 'grouped').
  Returns:
    [B, T, N, D] in q's dtype.
  """
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  seq_axis = 1 if kv_layout == "bskd" else 2
  if segment_ids is not None and k.shape[seq_axis] != q.shape[1]:
    raise ValueError(f"segment_ids needs as many keys as queries, got T={q.shape[1]}, "
                     f"S={k.shape[seq_axis]}")
  impl = resolve_impl(impl, dtype=q.dtype, query_len=q.shape[1], cached=kv_layout == "bksd")
  if impl == "grouped":
    if kv_layout == "bskd":
      k, v = _swap_kv_layout(k), _swap_kv_layout(v)
    return grouped_attention(q, k, v, query_start, key_mask, segment_ids)
  if kv_layout == "bksd":
    k, v = _swap_kv_layout(k), _swap_kv_layout(v)
  if impl == "einsum":
    return einsum_attention(q, k, v, query_start, key_mask, segment_ids)
  if impl == "cudnn":
    try:
      return _cudnn(q, k, v, query_start, key_mask, segment_ids)
    except (ValueError, NotImplementedError, RuntimeError, TypeError) as e:
      # Raised while tracing (dtype, shape or GPU not supported): fall back, do not fail a run.
      if "cudnn" not in _warned:
        _warned.add("cudnn")
        log.warning("cuDNN attention unavailable (%s); using the XLA implementation", e)
      impl = "xla"
  if impl == "xla":
    return _dpa(q, k, v, allowed_mask(q.shape[1], k.shape[1], query_start, key_mask,
                                      segment_ids))
  return _blocked(q, k, v, query_start, key_mask, segment_ids)


def _swap_kv_layout(x: Array) -> Array:
  """[B, S, K, D] <-> [B, K, S, D]."""
  return jnp.swapaxes(x, 1, 2)


def allowed_mask(t: int, s: int, query_start: Array | int, key_mask: Array | None,
                 segment_ids: Array | None, *, t0: int = 0) -> Array:
  """bool [B or 1, t, s]: visible key slots 0 .. s-1 of queries t0 .. t0 + t - 1
  (key_mask [B, >= s] and segment_ids [B, >= t0 + t and >= s] are sliced here)."""
  query_pos = query_start + t0 + jnp.arange(t)[:, None]
  allowed = (query_pos >= jnp.arange(s)[None, :])[None]            # [1, t, s]
  if segment_ids is not None:
    q_seg = segment_ids[:, t0:t0 + t, None]
    k_seg = segment_ids[:, None, :s]
    allowed = allowed & (q_seg == k_seg) & (k_seg != 0)
  if key_mask is not None:
    allowed = allowed & key_mask[:, None, :s].astype(bool)
  return allowed


def einsum_attention(q: Array, k: Array, v: Array, query_start: Array | int = 0,
                     key_mask: Array | None = None, segment_ids: Array | None = None) -> Array:
  """The reference: k, v [B, S, K, D]; materialised [B, K, G, T, S] float32 scores."""
  b, t, n, d = q.shape
  num_kv = k.shape[2]
  mask = allowed_mask(t, k.shape[1], query_start, key_mask, segment_ids)
  qg = q.reshape(b, t, num_kv, n // num_kv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


def grouped_attention(q: Array, k: Array, v: Array, query_start: Array | int = 0,
                      key_mask: Array | None = None, segment_ids: Array | None = None) -> Array:
  """k, v [B, K, S, D]: scores [B, K, T*G, S] (rows t-major, then g), float32."""
  b, t, n, d = q.shape
  num_kv, s = k.shape[1], k.shape[2]
  g = n // num_kv
  mask = allowed_mask(t, s, query_start, key_mask, segment_ids)     # [B or 1, T, S]
  qg = jnp.swapaxes(q.reshape(b, t, num_kv, g, d), 1, 2).reshape(b, num_kv, t * g, d)
  scores = jnp.einsum("bkmd,bksd->bkms", qg, k, preferred_element_type=jnp.float32)
  scores = (scores * (d ** -0.5)).reshape(b, num_kv, t, g, s)
  scores = jnp.where(mask[:, None, :, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(b, num_kv, t * g, s)
  out = jnp.einsum("bkms,bksd->bkmd", probs, v).reshape(b, num_kv, t, g, d)
  return jnp.swapaxes(out, 1, 2).reshape(b, t, n, d)


def _dpa(q: Array, k: Array, v: Array, mask: Array) -> Array:
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")


def _cudnn(q, k, v, query_start, key_mask, segment_ids) -> Array:
  t, s = q.shape[1], k.shape[1]
  # cuDNN's own causal mask type (it skips masked blocks) when query t is key slot t.
  causal = isinstance(query_start, int) and query_start == 0 and t == s
  mask = None
  if not causal or key_mask is not None or segment_ids is not None:
    mask = allowed_mask(t, s, query_start, key_mask, segment_ids)[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation="cudnn")


def _query_blocks(t: int) -> list[tuple[int, int]]:
  size = max(_QUERY_BLOCK, -(-t // _MAX_QUERY_BLOCKS))
  return [(t0, min(t, t0 + size)) for t0 in range(0, t, size)]


def _rows_per_chunk(b: int, n: int, t: int, s: int) -> int:
  """Largest divisor of b whose float32 [rows, N, t, s] scores fit _TILE_BYTES (at least 1)."""
  target = max(1, _TILE_BYTES // max(1, n * t * s * 4))
  if target >= b or _batch_is_sharded():
    return b
  return max(r for r in range(1, target + 1) if b % r == 0)


def _batch_is_sharded() -> bool:
  """Whether activations are sharded over batch (mappa_jax.sharding.activation_sharding with a
  data/fsdp axis > 1): a lax.map over rows would cut across devices, so rows stay whole."""
  from mappa_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  # No public accessor for the active mesh; tolerate the thread-local's absence.
  active = getattr(getattr(shd, "_ACTIVE", None), "value", None)
  if active is None:
    return False
  mesh, rules = active
  axes = rules.get("act_batch")
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[a] for a in axes if a in mesh.shape) > 1


def _blocked(q, k, v, query_start, key_mask, segment_ids) -> Array:
  """k, v [B, S, K, D]; see 'blocked' in the module docstring."""
  b, t, n, _ = q.shape
  s = k.shape[1]
  static_start = isinstance(query_start, int)
  blocks = _query_blocks(t) if static_start else [(0, t)]
  # Rows per chunk sized by the largest tile (a full query block against every key).
  rows = _rows_per_chunk(b, n, max(t1 - t0 for t0, t1 in blocks), s)

  def chunk(q, k, v, key_mask, segment_ids):
    outs = []
    for t0, t1 in blocks:
      s_end = min(s, query_start + t1) if static_start else s
      mask = allowed_mask(t1 - t0, s_end, query_start, key_mask, segment_ids, t0=t0)
      outs.append(_dpa(q[:, t0:t1], k[:, :s_end], v[:, :s_end], mask))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)

  if rows == b:
    return chunk(q, k, v, key_mask, segment_ids)
  args = {"q": q, "k": k, "v": v, "key_mask": key_mask, "segment_ids": segment_ids}
  present = {name: x.reshape((b // rows, rows) + x.shape[1:])
             for name, x in args.items() if x is not None}

  # Rematerialised: the backward pass recomputes one chunk's scores instead of storing all.
  @jax.checkpoint
  def body(xs):
    return chunk(**{name: xs.get(name) for name in args})

  return jax.lax.map(body, present).reshape(q.shape)
