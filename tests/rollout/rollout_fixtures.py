"""Shared fixtures of the rollout engine/server tests (imported by the test modules).

One tiny random model (2 layers, hidden 64) and one set of sampler buckets, so every engine in
these tests compiles exactly one program: prompt bucket 64, decode bucket 8, batch bucket 8.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mappa_jax.rollout.engine import InProcessEngineConfig

SMALL = InProcessEngineConfig(max_batch_size=8, batch_window_s=0.01, seed=0,
                              prompt_buckets=(64,), max_new_buckets=(8,), batch_buckets=(8,))
PROMPTS = ([5, 6, 7], [10, 11, 12, 13, 14], [1], [200, 3, 40, 99], [7, 7, 7, 7, 7, 7])


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
  """HF dirs: 'v0' (seed 0, with tokenizer), 'v1' (seed 1, same architecture), 'notok'."""
  from mappa_jax.models import tiny
  root = tmp_path_factory.mktemp("rollout_models")
  return {
      "v0": tiny.write_tiny_model(root / "v0", seed=0),
      "v1": tiny.write_tiny_model(root / "v1", seed=1),
      "notok": tiny.write_tiny_model(root / "notok", seed=0, with_tokenizer=False),
  }


def run(coro):
  """Runs a coroutine on a fresh event loop (no pytest-asyncio in this project)."""
  return asyncio.run(coro)
