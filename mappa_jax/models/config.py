"""Model configuration for the Qwen2/Qwen3 decoder family.

`ModelConfig` is the one description of a model's shapes and numerics: it is built from a
Hugging Face `config.json` (`ModelConfig.from_hf`) or from a named preset
(`ModelConfig.preset`), and turned back into a `config.json` dict on export (`to_hf_dict`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp

from mappa_jax.models.attention import IMPLS as ATTENTION_IMPLS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# HF checkpoint dtypes we can hold exactly; float16 weights go to float32 (bf16 would round).
_HF_DTYPE_TO_PARAM = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32"}
_ARCH_BY_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen3"}
_ARCH_BY_CLASS = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
_HF_CLASS = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class ConfigError(ValueError):
  """A config.json (or preset) describes a model this decoder cannot represent."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of one Qwen2/Qwen3 decoder.

  Attributes:
    architecture: 'qwen2' (q/k/v bias, no q/k norm) or 'qwen3' (q/k RMSNorm, no bias).
    vocab_size: rows of the embedding / columns of the LM head (V).
    hidden_size: model width (H).
    intermediate_size: SwiGLU width (F).
    num_hidden_layers: decoder layers (L).
    num_attention_heads: query heads (N).
    num_key_value_heads: key/value heads (K); N % K == 0 (grouped-query attention).
    head_dim: per-head width (D).
    rope_theta: RoPE base frequency.
    rms_norm_eps: epsilon of every RMSNorm.
    tie_word_embeddings: LM head is the transposed embedding.
    attention_bias: q/k/v projections carry a bias (Qwen2).
    qk_norm: per-head RMSNorm on queries and keys before RoPE (Qwen3).
    max_position_embeddings: longest context the checkpoint was trained for.
    bos_token_id: beginning-of-sequence id (informational; never added by the model).
    eos_token_ids: ids that end generation.
    param_dtype: storage dtype of parameters, 'float32' or 'bfloat16'.
    dtype: compute dtype of activations, 'float32' or 'bfloat16'.
    remat: rematerialise each decoder layer in the backward pass (saves memory).
    attention_impl: attention core (mappa_jax.models.attention): 'auto' (per backend, measured:
      'blocked' on CPU, cuDNN flash attention on GPU for bf16/fp16 training and prefill, XLA
      otherwise; 'grouped' over a KV cache), 'einsum' (the reference), 'xla', 'cudnn', 'blocked'
      or 'grouped'. Not part of config.json.
  """
  architecture: str = "qwen3"
  vocab_size: int = 512
  hidden_size: int = 64
  intermediate_size: int = 128
  num_hidden_layers: int = 2
  num_attention_heads: int = 4
  num_key_value_heads: int = 2
  head_dim: int = 16
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  attention_bias: bool = False
  qk_norm: bool = True
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  attention_impl: str = "auto"

  def __post_init__(self):
    if self.architecture not in _HF_CLASS:
      raise ConfigError(f"architecture={self.architecture!r}: supported are {sorted(_HF_CLASS)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ConfigError(f"attention_impl={self.attention_impl!r}: supported are "
                        f"{list(ATTENTION_IMPLS)}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ConfigError(f"{name}={getattr(self, name)!r}: supported are {sorted(_DTYPES)}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim"):
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"{name}={getattr(self, name)} must be positive")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
    object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

  # ---------------------------------------------------------------- derived
  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    h, f, v, n, k, d = (self.hidden_size, self.intermediate_size, self.vocab_size,
                        self.num_attention_heads, self.num_key_value_heads, self.head_dim)
    attn = h * n * d * 2 + h * k * d * 2
    if self.attention_bias:
      attn += n * d + 2 * k * d
    if self.qk_norm:
      attn += 2 * d
    layer = attn + 3 * h * f + 2 * h
    head = 0 if self.tie_word_embeddings else h * v
    return v * h + self.num_hidden_layers * layer + h + head

  # ---------------------------------------------------------------- HF config.json
  @classmethod
  def from_hf(cls, path_or_dict: str | os.PathLike | Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from an HF `config.json` (a model dir, the file, or its parsed dict).

    Accepts both `rope_theta` (transformers 4) and `rope_parameters` (transformers 5).
    Raises ConfigError naming the field for anything this decoder would silently get wrong
    (RoPE scaling, sliding windows, other activations, unknown architectures).
    """
    source = "config dict"
    if isinstance(path_or_dict, Mapping):
      raw = dict(path_or_dict)
    else:
      path = Path(path_or_dict)
      if path.is_dir():
        path = path / "config.json"
      source = str(path)
      if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected an HF model directory)")
      try:
        raw = json.loads(path.read_text())
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e

    def bad(field, msg):
      return ConfigError(f"{source}: field {field!r} {msg}")

    model_type = raw.get("model_type")
    arch = _ARCH_BY_MODEL_TYPE.get(model_type)
    if arch is None:
      for cls_name in raw.get("architectures") or ():
        arch = arch or _ARCH_BY_CLASS.get(cls_name)
    if arch is None:
      raise bad("model_type", f"= {model_type!r} (architectures={raw.get('architectures')}) is not "
                f"supported: mappa_jax implements {sorted(_ARCH_BY_MODEL_TYPE)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
      if key not in raw:
        raise bad(key, "is missing")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
      raise bad("hidden_act", f"= {act!r}: only 'silu' (SwiGLU) is supported")
    if raw.get("use_sliding_window"):
      raise bad("use_sliding_window", "= true: sliding-window attention is not supported")
    layer_types = raw.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
      raise bad("layer_types", "contains non full_attention layers: not supported")

    rope_theta = raw.get("rope_theta")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling")
    if rope is not None:
      if not isinstance(rope, Mapping):
        raise bad("rope_parameters", f"= {rope!r} is not a dict")
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      if rope_type != "default":
        raise bad("rope_parameters", f"has rope_type={rope_type!r}: only 'default' RoPE is "
                  "supported (no YaRN/linear/dynamic scaling)")
      rope_theta = rope.get("rope_theta", rope_theta)
    if rope_theta is None:
      rope_theta = 10_000.0

    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    head_dim = raw.get("head_dim") or hidden // heads
    if arch == "qwen2":
      attention_bias, qk_norm = True, False
    else:
      if raw.get("attention_bias", False):
        raise bad("attention_bias", "= true is not supported for qwen3 (o_proj bias)")
      attention_bias, qk_norm = False, True

    eos = raw.get("eos_token_id")
    eos_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    hf_dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if hf_dtype not in _HF_DTYPE_TO_PARAM:
      raise bad("dtype", f"= {hf_dtype!r}: supported checkpoint dtypes are {sorted(_HF_DTYPE_TO_PARAM)}")
    param_dtype = _HF_DTYPE_TO_PARAM[hf_dtype]
    kwargs = dict(
        architecture=arch,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rope_theta=float(rope_theta),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=qk_norm,
        max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
        param_dtype=param_dtype,
        dtype=param_dtype,
    )
    kwargs.update(overrides)
    try:
      return cls(**kwargs)
    except ConfigError as e:
      raise ConfigError(f"{source}: {e}") from e

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` transformers needs to load this model (transformers 4 and 5 keys)."""
    hf_dtype = self.param_dtype
    d = {
        "architectures": [_HF_CLASS[self.architecture]],
        "model_type": self.architecture,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
        "tie_word_embeddings": self.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) != 1
                         else self.eos_token_ids[0]) if self.eos_token_ids else None,
        "dtype": hf_dtype,
        "torch_dtype": hf_dtype,
    }
    if self.architecture == "qwen3":
      d["attention_bias"] = False
    return d

  # ---------------------------------------------------------------- presets
  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    """A named config (random weights; shapes of the public checkpoints). See PRESETS."""
    key = name.lower()
    if key not in PRESETS:
      raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[key], **overrides)


_QWEN3_COMMON = dict(architecture="qwen3", vocab_size=151936, head_dim=128, rope_theta=1_000_000.0,
                     rms_norm_eps=1e-6, attention_bias=False, qk_norm=True,
                     max_position_embeddings=40960, bos_token_id=151643,
                     eos_token_ids=(151645, 151643), param_dtype="bfloat16", dtype="bfloat16")
_R1_DISTILL_COMMON = dict(architecture="qwen2", head_dim=128, rope_theta=10_000.0,
                          rms_norm_eps=1e-6, attention_bias=True, qk_norm=False,
                          tie_word_embeddings=False, max_position_embeddings=131072,
                          bos_token_id=151646, eos_token_ids=(151643,),
                          param_dtype="bfloat16", dtype="bfloat16")
_TINY_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_position_embeddings=4096, param_dtype="float32", dtype="float32")

# Shapes follow the public config.json files of these checkpoints.
PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(**_QWEN3_COMMON, hidden_size=1024, intermediate_size=3072,
                              num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                              tie_word_embeddings=True),
    "qwen3-1.7b": ModelConfig(**_QWEN3_COMMON, hidden_size=2048, intermediate_size=6144,
                              num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                              tie_word_embeddings=True),
    "qwen3-4b": ModelConfig(**_QWEN3_COMMON, hidden_size=2560, intermediate_size=9728,
                            num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                            tie_word_embeddings=True),
    "qwen3-8b": ModelConfig(**_QWEN3_COMMON, hidden_size=4096, intermediate_size=12288,
                            num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                            tie_word_embeddings=False),
    "r1-distill-qwen-1.5b": ModelConfig(**_R1_DISTILL_COMMON, vocab_size=151936, hidden_size=1536,
                                        intermediate_size=8960, num_hidden_layers=28,
                                        num_attention_heads=12, num_key_value_heads=2),
    "r1-distill-qwen-7b": ModelConfig(**_R1_DISTILL_COMMON, vocab_size=152064, hidden_size=3584,
                                      intermediate_size=18944, num_hidden_layers=28,
                                      num_attention_heads=28, num_key_value_heads=4),
    # Tiny random models for CPU tests and the embedded default (vocab fits the tiny tokenizer).
    "tiny-qwen3": ModelConfig(**_TINY_COMMON, architecture="qwen3", attention_bias=False,
                              qk_norm=True, tie_word_embeddings=True, rope_theta=1_000_000.0),
    "tiny-qwen2": ModelConfig(**_TINY_COMMON, architecture="qwen2", attention_bias=True,
                              qk_norm=False, tie_word_embeddings=False, rope_theta=10_000.0),
}
