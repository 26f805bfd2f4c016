"""Session fixtures: tiny HF checkpoints made with transformers' own save_pretrained.

Shapes are deliberately awkward (odd head counts, MQA/GQA/MHA, hidden not a power of two) and
every parameter (norm scales and biases included) is perturbed away from its init value so a
mis-mapped tensor cannot hide behind ones/zeros.
"""
import pathlib

import pytest

# name -> (architecture, config kwargs)
HF_VARIANTS = {
    "qwen3_tied_gqa": ("qwen3", dict(hidden_size=60, num_attention_heads=6, num_key_value_heads=3,
                                     head_dim=10, tie_word_embeddings=True)),
    "qwen3_untied_mha": ("qwen3", dict(hidden_size=40, num_attention_heads=5,
                                       num_key_value_heads=5, head_dim=8,
                                       tie_word_embeddings=False)),
    "qwen2_untied_gqa": ("qwen2", dict(hidden_size=60, num_attention_heads=6,
                                       num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2_tied_mqa": ("qwen2", dict(hidden_size=48, num_attention_heads=3,
                                     num_key_value_heads=1, tie_word_embeddings=True)),
}
COMMON = dict(vocab_size=300, intermediate_size=72, num_hidden_layers=2,
              max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6)


def make_hf_checkpoint(out_dir: pathlib.Path, architecture: str, *, dtype="float32", seed=0,
                       max_shard_size=None, **config_kwargs) -> pathlib.Path:
  """Random tiny Qwen2/Qwen3 checkpoint written by transformers (the reference writer)."""
  import torch
  import transformers
  kwargs = dict(COMMON, **config_kwargs)
  if architecture == "qwen3":
    config, model_cls = transformers.Qwen3Config(**kwargs), transformers.Qwen3ForCausalLM
  else:
    config, model_cls = transformers.Qwen2Config(**kwargs), transformers.Qwen2ForCausalLM
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  if dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(str(out_dir), **save_kwargs)
  return out_dir


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
  """{variant name: HF checkpoint dir} for every entry of HF_VARIANTS (float32)."""
  import transformers  # noqa: F401  (test extra: fail, never skip)
  root = tmp_path_factory.mktemp("hf")
  return {name: make_hf_checkpoint(root / name, arch, **kw)
          for name, (arch, kw) in HF_VARIANTS.items()}


@pytest.fixture(scope="session")
def hf_sharded_dir(tmp_path_factory) -> pathlib.Path:
  """qwen2_untied_gqa weights (same seed) split over several files with an index."""
  import transformers  # noqa: F401  (test extra: fail, never skip)
  arch, kw = HF_VARIANTS["qwen2_untied_gqa"]
  return make_hf_checkpoint(tmp_path_factory.mktemp("hf_sharded") / "m", arch,
                            max_shard_size="40KB", **kw)


@pytest.fixture(scope="session")
def hf_bf16_dir(tmp_path_factory) -> pathlib.Path:
  import transformers  # noqa: F401  (test extra: fail, never skip)
  arch, kw = HF_VARIANTS["qwen3_tied_gqa"]
  return make_hf_checkpoint(tmp_path_factory.mktemp("hf_bf16") / "m", arch, dtype="bfloat16",
                            **kw)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> pathlib.Path:
  """Our own tiny checkpoint (no torch): config + safetensors + tiny tokenizer."""
  from mappa_jax.models.tiny import write_tiny_model
  return write_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3", architecture="qwen3")
