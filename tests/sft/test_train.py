"""Pretraining: the masked loss against numpy, and a smoke run that exports a loadable team."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mappa_jax import config as mconfig
from mappa_jax.models import hf_io
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.sft import train as sft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_masked_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[0, 1, 1, 0, 0], [1, 0, 0, 1, 0]], np.float32)
  loss, n = sft.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = [-logp[b, t, tokens[b, t + 1]] for b in range(2) for t in range(4) if mask[b, t]]
  assert float(n) == 4.0
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-6)


@pytest.mark.slow
def test_smoke_pretraining_exports_a_checkpoint_the_trainer_loads(tmp_path):
  out = tmp_path / "team"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "pretrain.py"),
       "--config=experiments/pretrain_tiny.py:smoke", f"--out={out}", "--measure=false"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "pretraining wall time:" in proc.stdout
  info = json.loads((out / "pretrain_info.json").read_text())
  assert info["actions"] > 16 and info["steps"] >= 1 and np.isfinite(info["final_loss"])
  assert set(info["behaviours"]) >= {"problem_solver", "code_executor", "verifier"}
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
    assert (out / name).is_file(), name
  model = hf_io.load_hf(str(out))
  tok = Tokenizer.from_dir(out)
  assert model.config.eos_token_ids == tuple(tok.eos_token_ids)
  assert model.config.num_hidden_layers == 1
  # The trainer's config validation accepts it as a team's base model.
  config = mconfig.load_config(os.path.join(ROOT, "experiments", "mathchat.py"),
                               [f"model.hf_dir={out}"])
  mconfig.validate(config)
