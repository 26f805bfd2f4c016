"""Values shared by the experiment files (big_vision style: plain functions that set values).

Every field, its default and its one-line doc are declared once, in the section dataclasses
(`python -m mappa_jax.config experiments/mathchat.py:paper` prints them all): an experiment
starts from `mappa_jax.config.default_config(workflow)`, sets the values that differ, and
returns the config locked, so a typo on the command line (`--config.trian.lr=...`) fails
instead of being silently added. The defaults are the reference's (mappa-reference.md §3.1,
"REF"); `local` below is the CPU scale every local preset shares, `paper` the reference scale.
"""
from __future__ import annotations

import ml_collections

from mappa_jax.config import default_config

PRESETS = ("local", "paper")


def parse_preset(arg: str | None, presets: tuple[str, ...] = PRESETS) -> str:
  """`get_config(arg)` helper: '' / None -> 'local'; unknown names list the valid ones."""
  preset = (arg or "local").strip()
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r}: valid presets are {', '.join(presets)} "
                     f"(select one with --config=experiments/<file>.py:<preset>)")
  return preset


def base(workflow: str, preset: str) -> ml_collections.ConfigDict:
  """The workflow's defaults, named after the preset (TensorBoard run <workflow>-<preset>)."""
  config = default_config(workflow)
  config.name = f"{workflow}-{preset}"
  config.preset = preset
  return config


def local(c: ml_collections.ConfigDict) -> None:
  """The CPU scale: the embedded tiny model (the defaults), the rule coach, small shapes."""
  c.mesh.data, c.mesh.fsdp = -1, 1  # every device on the batch
  r = c.rollout
  r.max_new_tokens, r.min_new_tokens = 48, 4
  r.rollout_batch_size = 4
  r.max_concurrent_workflows = 4
  r.prompt_max_len = 512
  c.coach.max_concurrency = 4
  t = c.train
  t.learning_rate = 1e-4
  t.samples_per_optimizer_step, t.micro_batch_size = 4, 2
  t.num_steps = 3
  t.token_budget_buckets = (256, 640)
  c.data.source = "synthetic"
  c.sandbox.timeout_s, c.sandbox.memory_mb, c.sandbox.max_concurrency = 10.0, 1024, 4
  c.checkpoint.every_steps, c.checkpoint.keep_last, c.checkpoint.keep_best_metric = 2, 2, ""


def paper(c: ml_collections.ConfigDict, *, coach_model: str, max_new_tokens: int,
          rollout_batch_size: int, num_steps: int, token_budget_buckets: tuple[int, ...],
          sandbox_timeout_s: float, checkpoint_every_steps: int) -> None:
  """The reference scale: Qwen3-4B in bfloat16 (needs --config.model.hf_dir), an
  OpenAI-compatible coach (needs --config.coach.base_url), the task files."""
  c.model.preset = "qwen3-4b"
  c.model.param_dtype = c.model.dtype = "bfloat16"
  c.model.remat = True
  c.coach.kind, c.coach.model = "openai", coach_model  # REF judge
  c.rollout.max_new_tokens = max_new_tokens  # REF per-action budget
  c.rollout.rollout_batch_size = rollout_batch_size  # REF tasks per step
  c.train.num_steps = num_steps  # REF
  c.train.token_budget_buckets = token_budget_buckets  # hold prompt_max_len + max_new_tokens
  c.data.source = "files"
  c.sandbox.timeout_s = sandbox_timeout_s  # REF
  c.checkpoint.every_steps = checkpoint_every_steps  # REF
