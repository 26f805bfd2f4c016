"""Qwen2/Qwen3 policy models: config, NNX decoder, HF import/export, tiny test models."""
from mappa_jax.models.config import ConfigError, ModelConfig, PRESETS
from mappa_jax.models.decoder import Decoder, KVCache
from mappa_jax.models.hf_io import CheckpointError, export_hf, load_hf, load_hf_config
from mappa_jax.models.tiny import write_tiny_model

__all__ = ["ConfigError", "CheckpointError", "ModelConfig", "PRESETS", "Decoder", "KVCache",
           "load_hf", "load_hf_config", "export_hf", "write_tiny_model"]
