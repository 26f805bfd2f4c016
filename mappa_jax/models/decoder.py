"""Flax NNX decoder for the Qwen2 / Qwen3 family (GQA, RoPE, RMSNorm, SwiGLU).

Parameter paths (stable: they are the sharding golden-file keys and the HF mapping in
`hf_io.py`); shapes use H hidden, N query heads, K kv heads, D head_dim, F mlp, V vocab:

  embed.embedding                       [V, H]
  layers.{i}.input_norm.scale           [H]
  layers.{i}.attn.q_proj.kernel         [H, N, D]     (.bias [N, D] when attention_bias)
  layers.{i}.attn.k_proj.kernel         [H, K, D]     (.bias [K, D])
  layers.{i}.attn.v_proj.kernel         [H, K, D]     (.bias [K, D])
  layers.{i}.attn.o_proj.kernel         [N, D, H]
  layers.{i}.attn.q_norm.scale          [D]           (qk_norm only)
  layers.{i}.attn.k_norm.scale          [D]           (qk_norm only)
  layers.{i}.post_attn_norm.scale       [H]
  layers.{i}.mlp.gate_proj.kernel       [H, F]
  layers.{i}.mlp.up_proj.kernel         [H, F]
  layers.{i}.mlp.down_proj.kernel       [F, H]
  final_norm.scale                      [H]
  lm_head.kernel                        [H, V]        (absent when tie_word_embeddings)

Every parameter carries `logical_axes` metadata (names in `mappa_jax.sharding.DEFAULT_RULES`).
Layers are a plain Python loop (one compiled copy per layer; fine up to ~40 layers and keeps the
paths one-to-one with HF's `model.layers.{i}`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mappa_jax import sharding as shd
from mappa_jax.models.attention import attention
from mappa_jax.models.config import ModelConfig

Array = jax.Array
_INIT_STD = 0.02  # HF `initializer_range` for Qwen


class KVCache(NamedTuple):
  """Per-layer key/value cache (a pytree).

  k, v: tuples of L arrays [B, K, S, D] (S cache slots). One buffer per layer, heads before
  slots: a decode step updates each buffer in place and its attention reads each kv head's
  [S, D] block where it lies (mappa_jax.models.attention 'grouped'); a stacked [L, ...] buffer
  would cost a copy of the layer's slice per step.
  """
  k: tuple[Array, ...]
  v: tuple[Array, ...]


def _param(rngs: nnx.Rngs | None, shape, dtype, axes, init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, normalised in float32 like HF."""

  def __init__(self, dim: int, eps: float, dtype, param_dtype, axis_name: str):
    self.scale = _param(None, (dim,), param_dtype, (axis_name,), init="ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # HF casts back to the input dtype before scaling.
    return x32.astype(self.dtype) * self.scale[...].astype(self.dtype)


def _contract(x: Array, kernel: Array, n_in: int) -> Array:
  """x [..., *in] . kernel [*in, *out] -> [..., *out]."""
  return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)),
                                          tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x: Array, kernel: Array, n_in: int) -> Array:
  """`_contract` with a hand-written backward pass.

  Autodiff's kernel cotangent is a dot followed by a transpose, which XLA:CPU turns into a
  transposed copy of the output gradient fused with its producer (for the MLP, the SiLU
  backward writing [F, B*T] column by column: 18 % of a training step on the 2-core CPU).
  Here d kernel = x^T g as one 2-D dot contracting the leading (token) dimension of both, and
  d x = g kernel^T: the same products and sums as autodiff's (identical values in the CPU
  check; only the reduction order may differ elsewhere), without the transposed copies.
  """
  return _contract(x, kernel, n_in)


def _linear_fwd(x, kernel, n_in):
  return _contract(x, kernel, n_in), (x, kernel)


def _linear_bwd(n_in, res, g):
  x, kernel = res
  n_out = kernel.ndim - n_in
  dx = jax.lax.dot_general(g, kernel, ((tuple(range(g.ndim - n_out, g.ndim)),
                                        tuple(range(n_in, kernel.ndim))), ((), ())))
  in_size = math.prod(kernel.shape[:n_in])
  x2 = x.reshape(-1, in_size)
  g2 = g.reshape(x2.shape[0], -1)
  dk = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Linear(nnx.Module):
  """Dense layer whose kernel keeps head structure: y = einsum(x, kernel) (+ bias)."""

  def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, in_axes, out_axes,
               use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.kernel = _param(rngs, in_shape + out_shape, param_dtype, tuple(in_axes) + tuple(out_axes))
    self.bias = (_param(None, out_shape, param_dtype, out_axes, init="zeros")
                 if use_bias else None)
    self.n_in = len(in_shape)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    """x [..., *in_shape] -> [..., *out_shape] in the compute dtype."""
    y = linear(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def rope_tables(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """cos, sin [B, T, D] in float32 for the HF (rotate-half) RoPE layout."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x [B, T, heads, D]; cos/sin [B, T, D]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


class Attention(nnx.Module):
  """Grouped-query attention with optional q/k bias (Qwen2) or q/k RMSNorm (Qwen3)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    common = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.q_proj = Linear((h,), (n, d), in_axes=("embed",), out_axes=("heads", "head_dim"),
                         use_bias=cfg.attention_bias, **common)
    self.k_proj = Linear((h,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"),
                         use_bias=cfg.attention_bias, **common)
    self.v_proj = Linear((h,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"),
                         use_bias=cfg.attention_bias, **common)
    self.o_proj = Linear((n, d), (h,), in_axes=("heads", "head_dim"), out_axes=("embed",),
                         use_bias=False, **common)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype, "head_dim")
      self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype, "head_dim")
    else:
      self.q_norm = self.k_norm = None
    self.num_heads, self.num_kv_heads, self.head_dim = n, k, d
    self.rope_theta = cfg.rope_theta
    self.attention_impl = cfg.attention_impl
    self.dtype = cfg.jnp_dtype

  def __call__(self, x: Array, positions: Array, key_mask: Array | None,
               cache: tuple[Array, Array] | None = None, cache_index: Array | None = None,
               segment_ids: Array | None = None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """x [B, T, H] -> ([B, T, H], this layer's updated cache (k, v) [B, K, S, D] or None).

    With a cache, the T new keys/values are written in place into slots
    [cache_index, cache_index + T) (XLA updates a loop-carried or donated buffer without a
    copy), and the queries attend over all S slots (key_mask then marks the valid slots).
    segment_ids int32 [B, T] (no cache only): query t sees key s iff both are in the same
    non-zero segment (packed rows: several samples side by side, 0 = padding).
    """
    q = self.q_proj(x)  # [B, T, N, D]
    k = self.k_proj(x)  # [B, T, K, D]
    v = self.v_proj(x)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = shd.constrain(q, ("act_batch", "act_seq", "act_heads", None))
    k = shd.constrain(k, ("act_batch", "act_seq", "act_kv_heads", None))
    v = shd.constrain(v, ("act_batch", "act_seq", "act_kv_heads", None))

    if cache is None:
      out = attention(q, k, v, impl=self.attention_impl, key_mask=key_mask,
                      segment_ids=segment_ids)
      return self.o_proj(out), None
    ck, cv = cache
    start = jnp.asarray(cache_index, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    at = (zero, zero, start, zero)
    ck = jax.lax.dynamic_update_slice(ck, jnp.swapaxes(k, 1, 2).astype(ck.dtype), at)
    cv = jax.lax.dynamic_update_slice(cv, jnp.swapaxes(v, 1, 2).astype(cv.dtype), at)
    out = attention(q, ck, cv, impl=self.attention_impl, query_start=start, key_mask=key_mask,
                    kv_layout="bksd")
    return self.o_proj(out), (ck, cv)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    h, f = cfg.hidden_size, cfg.intermediate_size
    common = dict(use_bias=False, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.gate_proj = Linear((h,), (f,), in_axes=("embed",), out_axes=("mlp",), **common)
    self.up_proj = Linear((h,), (f,), in_axes=("embed",), out_axes=("mlp",), **common)
    self.down_proj = Linear((f,), (h,), in_axes=("mlp",), out_axes=("embed",), **common)

  def __call__(self, x: Array) -> Array:
    hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    hidden = shd.constrain(hidden, ("act_batch", "act_seq", "act_mlp"))
    return self.down_proj(hidden)


class Embedding(nnx.Module):
  """Token embedding table [V, H]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = _param(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.jnp_param_dtype,
                            ("vocab", "embed"))
    self.dtype = cfg.jnp_dtype

  def __call__(self, tokens: Array) -> Array:
    # Gather the fsdp-sharded hidden dim first: a lookup from a table split along H cannot be
    # resharded to batch-sharded activations without XLA replicating the whole table.
    table = shd.constrain(self.embedding[...], ("act_vocab", None))
    return jnp.take(table, tokens, axis=0).astype(self.dtype)


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype,
                              cfg.jnp_param_dtype, "norm")
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype,
                                  cfg.jnp_param_dtype, "norm")
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, key_mask, cache=None, cache_index=None, segment_ids=None):
    attn_out, new_cache = self.attn(self.input_norm(x), positions, key_mask, cache,
                                    cache_index, segment_ids)
    x = shd.constrain(x + attn_out, ("act_batch", "act_seq", "act_embed"))
    x = x + self.mlp(self.post_attn_norm(x))
    return shd.constrain(x, ("act_batch", "act_seq", "act_embed")), new_cache


def _layer_forward(layer, x, positions, key_mask, segment_ids):
  return layer(x, positions, key_mask, segment_ids=segment_ids)[0]


def _remat_layer_forward(layer, x, positions, key_mask, segment_ids):
  """`_layer_forward` under jax.checkpoint of a pure function of the layer's arrays.

  nnx.remat writes the layer's Variables back after the call, which raises TraceContextError
  when the model was merged in an outer trace (the update step merges params inside jax.jit,
  then differentiates inside a lax.scan); a layer's forward mutates nothing, so nothing needs
  writing back.
  """
  graphdef, state = nnx.split(layer)

  def pure(state, x, positions, key_mask, segment_ids):
    return _layer_forward(nnx.merge(graphdef, state), x, positions, key_mask, segment_ids)

  return jax.checkpoint(pure)(state, x, positions, key_mask, segment_ids)


class Decoder(nnx.Module):
  """Qwen2/Qwen3 causal LM trunk + LM head (see module docstring for parameter paths)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    cfg = config
    self.config = cfg
    self.embed = Embedding(cfg, rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype,
                              cfg.jnp_param_dtype, "norm")
    if cfg.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Linear((cfg.hidden_size,), (cfg.vocab_size,), in_axes=("embed",),
                            out_axes=("vocab",), use_bias=False, dtype=cfg.jnp_dtype,
                            param_dtype=cfg.jnp_param_dtype, rngs=rngs)

  def __call__(self, tokens: Array, positions: Array, *, attention_mask: Array | None = None,
               cache: KVCache | None = None, cache_index: Array | int | None = None,
               segment_ids: Array | None = None) -> tuple[Array, KVCache | None]:
    """Runs the trunk.

    Args:
      tokens, positions: int32 [B, T].
      attention_mask: bool [B, T] (no cache) or [B, S] (over cache slots): valid keys.
      cache: KVCache with S slots; the T new keys/values go to [cache_index, cache_index + T).
      cache_index: int32 scalar, same for every row (required with a cache).
      segment_ids: int32 [B, T], no cache only (packed training rows): 1.. per sample, 0 for
        padding. Query t then attends key s iff s <= t and segment_ids[b, t] ==
        segment_ids[b, s] != 0 (and attention_mask[b, s] when also given); positions should
        restart at 0 for every segment.
    Returns:
      hidden [B, T, H] after the final norm (config.dtype), updated KVCache or None.
    """
    if cache is not None and cache_index is None:
      raise ValueError("cache_index is required when a cache is given")
    if cache is not None and segment_ids is not None:
      raise ValueError("segment_ids (packed rows) is only supported without a cache: the "
                       "cached path attends over cache slots; pass segment_ids=None and mark "
                       "valid slots with attention_mask")
    if segment_ids is not None and tuple(segment_ids.shape) != tuple(tokens.shape):
      raise ValueError(f"segment_ids must be int32 [B, T] like tokens {tuple(tokens.shape)}, "
                       f"got shape {tuple(segment_ids.shape)}")
    x = self.embed(tokens)
    x = shd.constrain(x, ("act_batch", "act_seq", "act_embed"))
    if cache is None:
      # Remat only matters under differentiation, i.e. without a cache.
      forward = _remat_layer_forward if self.config.remat else _layer_forward
      for layer in self.layers:
        x = forward(layer, x, positions, attention_mask, segment_ids)
      new_cache = None
    else:
      new_k, new_v = [], []
      for layer, ck, cv in zip(self.layers, cache.k, cache.v):
        x, (ck, cv) = layer(x, positions, attention_mask, (ck, cv), cache_index)
        new_k.append(ck)
        new_v.append(cv)
      new_cache = KVCache(tuple(new_k), tuple(new_v))
    hidden = self.final_norm(x)
    return hidden, new_cache

  def lm_head_kernel(self) -> Array:
    """[H, V] LM head (the transposed embedding when tied), in param dtype."""
    if self.lm_head is None:
      return self.embed.embedding[...].T
    return self.lm_head.kernel[...]

  def logits(self, hidden: Array) -> Array:
    """hidden [..., H] -> logits [..., V] float32."""
    dtype = self.config.jnp_dtype
    out = jnp.einsum("...h,hv->...v", hidden.astype(dtype), self.lm_head_kernel().astype(dtype),
                     preferred_element_type=jnp.float32)
    return out.astype(jnp.float32)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """Zeroed cache: L buffers [batch, K, max_len, D] each for k and v, in `dtype` (default:
    the compute dtype)."""
    cfg = self.config
    shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
    dtype = cfg.jnp_dtype if dtype is None else dtype
    layers = range(cfg.num_hidden_layers)
    return KVCache(tuple(jnp.zeros(shape, dtype) for _ in layers),
                   tuple(jnp.zeros(shape, dtype) for _ in layers))
