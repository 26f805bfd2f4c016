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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mappa_jax import sharding as shd
from mappa_jax.models.config import ModelConfig

Array = jax.Array
_INIT_STD = 0.02  # HF `initializer_range` for Qwen


class KVCache(NamedTuple):
  """Per-layer key/value cache (a pytree).

  k: [L, B, S, K, D]; v: [L, B, S, K, D] (S cache slots).
  """
  k: Array
  v: Array


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
    kernel = self.kernel[...].astype(self.dtype)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel,
                            (((tuple(range(x.ndim - self.n_in, x.ndim))),
                              tuple(range(self.n_in))), ((), ())))
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
    self.dtype = cfg.jnp_dtype

  def __call__(self, x: Array, positions: Array, key_mask: Array | None, layer_cache,
               cache_index, segment_ids: Array | None = None
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """x [B, T, H] -> ([B, T, H], updated (k, v) [B, S, K, D] or None).

    segment_ids int32 [B, T] (no cache only): query t sees key s iff both are in the same
    non-zero segment (packed rows: several samples side by side, 0 = padding).
    """
    b, t, _ = x.shape
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

    query_pos = jnp.arange(t)[:, None]
    if layer_cache is None:
      keys, values, new_cache = k, v, None
      allowed = query_pos >= jnp.arange(t)[None, :]  # [T, S=T]
      if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]    # [B, T, S=T]
        allowed = allowed[None] & same & (segment_ids[:, None, :] != 0)
    else:
      ck, cv = layer_cache
      start = jnp.asarray(cache_index, jnp.int32)
      zero = jnp.zeros((), jnp.int32)
      keys = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, start, zero, zero))
      values = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, start, zero, zero))
      new_cache = (keys, values)
      allowed = (start + query_pos) >= jnp.arange(keys.shape[1])[None, :]  # [T, S]
    mask = allowed if allowed.ndim == 3 else allowed[None]  # [B or 1, T, S]
    if key_mask is not None:
      mask = mask & key_mask[:, None, :].astype(bool)

    groups = self.num_heads // self.num_kv_heads
    qg = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    scores = scores * (self.head_dim ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(self.dtype))
    out = out.reshape(b, t, self.num_heads, self.head_dim)
    return self.o_proj(out), new_cache


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

  def __call__(self, x, positions, key_mask, layer_cache, cache_index, segment_ids=None):
    attn_out, new_cache = self.attn(self.input_norm(x), positions, key_mask, layer_cache,
                                    cache_index, segment_ids)
    x = shd.constrain(x + attn_out, ("act_batch", "act_seq", "act_embed"))
    x = x + self.mlp(self.post_attn_norm(x))
    return shd.constrain(x, ("act_batch", "act_seq", "act_embed")), new_cache


def _layer_forward(layer, x, positions, key_mask, layer_cache, cache_index, segment_ids):
  return layer(x, positions, key_mask, layer_cache, cache_index, segment_ids)


_remat_layer_forward = nnx.remat(_layer_forward)


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
    forward = _remat_layer_forward if self.config.remat else _layer_forward
    new_k, new_v = cache.k if cache is not None else None, cache.v if cache is not None else None
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else (new_k[i], new_v[i])
      x, updated = forward(layer, x, positions, attention_mask, layer_cache, cache_index,
                           segment_ids)
      if updated is not None:
        # In-place update of the stacked buffer (XLA aliases it when the cache is donated).
        new_k = new_k.at[i].set(updated[0])
        new_v = new_v.at[i].set(updated[1])
    hidden = self.final_norm(x)
    return hidden, (KVCache(new_k, new_v) if cache is not None else None)

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
    """Zeroed cache [L, batch, max_len, K, D] in `dtype` (default: compute dtype)."""
    cfg = self.config
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    dtype = cfg.jnp_dtype if dtype is None else dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
