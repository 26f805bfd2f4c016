"""Tiny random Qwen2/Qwen3 checkpoints written through our own exporter (no torch needed).

Used as the embedded CPU default model and by tests that must not depend on transformers.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from flax import nnx

from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.models.hf_io import export_hf

log = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
# Specials of the shipped tiny tokenizer that end a generation (ChatML turn end, document end).
_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


def _tokenizer_eos_and_size(tokenizer_dir: Path) -> tuple[tuple[int, ...], int]:
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
  eos = tuple(i for i in (tok.token_to_id(t) for t in _EOS_TOKENS) if i is not None)
  return eos, tok.get_vocab_size(with_added_tokens=True)


def write_tiny_model(out_dir: str | os.PathLike, *, architecture: str = "qwen3", seed: int = 0,
                     with_tokenizer: bool = True, **overrides) -> Path:
  """Writes a random tiny HF checkpoint (config.json + model.safetensors [+ tokenizer]).

  Args:
    out_dir: target directory (replaced atomically if it exists).
    architecture: 'qwen3' (preset 'tiny-qwen3', tied) or 'qwen2' ('tiny-qwen2', untied, biases).
    seed: parameter init seed (same seed -> bit-identical files).
    with_tokenizer: copy the shipped tiny tokenizer (mappa_jax/assets/tiny_tokenizer/) and use
      its <|im_end|>/<|endoftext|> ids as EOS. Skipped with a warning if the assets are absent.
    **overrides: ModelConfig fields (e.g. num_hidden_layers=1, tie_word_embeddings=False).
  Returns:
    The checkpoint directory.
  """
  cfg = ModelConfig.preset(f"tiny-{architecture}")
  tokenizer_dir = None
  if with_tokenizer:
    if (TINY_TOKENIZER_DIR / "tokenizer.json").is_file():
      tokenizer_dir = TINY_TOKENIZER_DIR
      eos, tok_vocab = _tokenizer_eos_and_size(tokenizer_dir)
      cfg = cfg.replace(eos_token_ids=eos)
      vocab = overrides.get("vocab_size", cfg.vocab_size)
      if tok_vocab > vocab:
        raise ValueError(f"vocab_size={vocab} is smaller than the tiny tokenizer's {tok_vocab} "
                         "tokens")
    else:
      warnings.warn(f"{TINY_TOKENIZER_DIR} has no tokenizer.json: writing the tiny model "
                    "without tokenizer files")
  cfg = cfg.replace(**overrides)
  model = Decoder(cfg, rngs=nnx.Rngs(params=seed))
  return export_hf(model, out_dir, tokenizer_dir=tokenizer_dir)
