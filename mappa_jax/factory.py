"""Builds the trainer's parts from a validated config: data, model, engine, workflow, RL settings.

Each function reads only the config sections it names, so a reader can see where a field takes
effect. The Trainer (mappa_jax/train.py) owns lifecycles; this module only constructs.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ml_collections

from mappa_jax.data import loaders
from mappa_jax.data.loaders import Task
from mappa_jax.rl.experience import ExperienceConfig
from mappa_jax.rl.update import UpdateConfig
from mappa_jax.rollout.types import SamplingParams

# advantage_estimator (config) -> UpdateConfig.baseline; 'outcome' changes the reward source.
_BASELINES = {"reinforce_pp": "none", "reinforce_pp_baseline": "reinforce_baseline",
              "grpo": "grpo", "outcome": "none"}


# ------------------------------------------------------------------------------------- data

def _files_tasks(paths, config: ml_collections.ConfigDict) -> list[Task]:
  suffix = config.data.prompt_suffix
  tasks: list[Task] = []
  for path in paths:
    # REF: the suffix follows the prompt after a blank line.
    tasks += loaders.load_tasks(path, add_prompt_suffix=bool(suffix),
                                prompt_suffix="\n\n" + suffix if suffix else "")
  return tasks


def build_tasks(config: ml_collections.ConfigDict, workdir: str
                ) -> tuple[list[Task], dict[str, list[Task]]]:
  """-> (train tasks, {eval set name: tasks}) for `config.workflow` and `config.data.source`.

  MathChat synthetic: the seeded arithmetic family. DSBench synthetic: the offline suite built
  (deterministically) under <workdir>/dsbench_suite. Files: mappa-bench records, subsampled
  with the reference's seeded selection; eval sets are checked to be held out.
  """
  data = config.data
  if data.source == "synthetic":
    if config.workflow == "mathchat":
      from mappa_jax.data import synthetic
      syn = data.synthetic
      cfg = synthetic.ArithmeticConfig(levels=tuple(range(1, int(syn.difficulty) + 1)))
      train, evals = synthetic.generate_splits(int(syn.n_train), int(syn.n_eval),
                                               seed=int(syn.seed), config=cfg)
      return train, {"synthetic": evals}
    from mappa_jax.data import dsbench, dsbench_suite
    root = os.path.join(workdir, "dsbench_suite")
    manifest = os.path.join(root, "manifest.json")
    if os.path.exists(manifest):  # built by an earlier run of this workdir (deterministic)
      with open(manifest, encoding="utf-8") as f:
        info = json.load(f)
    else:
      info = dsbench_suite.build(root)
    tasks = dsbench.load_dsbench_tasks(root, info["tasks_file"])
    eval_ids = set(info.get("eval_task_ids", ()))
    train = [t for t in tasks if t.task_id not in eval_ids][:int(data.synthetic.n_train)]
    evals = [t for t in tasks if t.task_id in eval_ids][:int(data.synthetic.n_eval)]
    return train, {"suite": evals}
  if config.workflow == "dsbench":
    from mappa_jax.data import dsbench
    root = data.dsbench_root or os.path.dirname(os.path.abspath(data.train_files[0]))
    load = lambda path: dsbench.load_dsbench_tasks(  # noqa: E731
        root, path, cleaned_prompts=data.cleaned_prompts_file or None)
    train = [t for path in data.train_files for t in load(path)]
    evals = {Path(p).stem: load(p) for p in data.eval_files}
  else:
    train = _files_tasks(data.train_files, config)
    evals = {Path(p).stem: _files_tasks([p], config) for p in data.eval_files}
  if data.max_train_samples:
    train = loaders.subsample(train, int(data.max_train_samples), seed=int(data.subsample_seed))
  for name, tasks in evals.items():
    loaders.check_heldout(train, tasks, allow_overlap=bool(data.allow_eval_overlap))
  wanted = tuple(config.eval.sets)
  if wanted:
    evals = {k: v for k, v in evals.items() if k in wanted}
  return train, evals


# ------------------------------------------------------------------------------------ model

def model_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The HF checkpoint every agent starts from; the embedded tiny model when hf_dir is None."""
  if config.model.hf_dir:
    return config.model.hf_dir
  from mappa_jax.models import tiny
  path = os.path.join(workdir, "tiny_model")
  if not os.path.exists(os.path.join(path, "config.json")):
    arch = "qwen2" if "qwen2" in config.model.preset else "qwen3"
    tiny.write_tiny_model(path, architecture=arch, seed=int(config.seed))
  return path


def build_sandbox(config: ml_collections.ConfigDict):
  """The code sandbox with the `sandbox` section's limits.

  Fails closed (the Trainer builds it before any rollout): raises SandboxUnavailable when
  bubblewrap is missing, unless the config explicitly chose backend='process' with
  allow_unisolated=True.
  """
  from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
  sb = config.sandbox
  limits = SandboxLimits(timeout_s=float(sb.timeout_s), memory_bytes=int(sb.memory_mb) << 20,
                         output_keep_bytes=int(sb.output_cap_chars))
  return Sandbox(sb.backend, limits, allow_unisolated=bool(sb.get("allow_unisolated", False)),
                 max_concurrency=int(sb.max_concurrency))


# --------------------------------------------------------------------------------------- RL

def experience_config(config: ml_collections.ConfigDict) -> ExperienceConfig:
  return ExperienceConfig(
      token_buckets=tuple(int(t) for t in config.train.token_budget_buckets),
      rows_multiple=int(config.train.samples_per_optimizer_step),
      pack=bool(config.train.pack_sequences),
      reward_scale=float(config.rl.reward_scale),
      reward_source="outcome" if config.rl.advantage_estimator == "outcome" else "process",
      # Outcome-only ablation: MathChat's rule-graded correctness, DSBench's metric gain over
      # the trivial baseline (both computed by the workflow, never by the coach).
      outcome_key="rule_correct" if config.workflow == "mathchat" else "normalized_gain",
      # Outcomes in [0, 1] on the coach's 0-10 scale: the same reward range as coach scores.
      outcome_scale=10.0)


def expected_optimizer_steps(config: ml_collections.ConfigDict, agent: str) -> int:
  """Schedule horizon for one agent: its most actions per step over the whole run.

  FIX §10.10: the reference's horizon counts one action per trajectory, so multi-turn agents
  overran it; here it counts the agent's max_turns actions per trajectory.
  """
  if config.train.lr_decay_steps:
    return int(config.train.lr_decay_steps)
  per_step = (config.rollout.rollout_batch_size * config.rollout.n_samples_per_prompt
              * config.agents[agent].max_turns)
  return max(1, math.ceil(per_step / config.train.samples_per_optimizer_step)
             * int(config.train.num_steps))


def update_config(config: ml_collections.ConfigDict, agent: str) -> UpdateConfig:
  """The per-agent update settings (agents differ only in their schedule horizon)."""
  rl, train = config.rl, config.train
  kl_placement = "reward" if rl.kl_placement == "none" else rl.kl_placement
  return UpdateConfig(
      learning_rate=float(train.learning_rate), adam_b1=float(train.b1),
      adam_b2=float(train.b2), weight_decay=float(train.weight_decay),
      max_grad_norm=float(train.max_grad_norm), warmup_ratio=float(train.warmup_ratio),
      fp32_master_weights=bool(train.fp32_master_weights),
      min_lr_ratio=float(train.min_lr_ratio),
      max_steps=expected_optimizer_steps(config, agent),
      kl_coef=0.0 if rl.kl_placement == "none" else float(rl.kl_coef),
      kl_estimator=rl.kl_estimator, kl_placement=kl_placement, gamma=float(rl.gamma),
      continue_returns=bool(rl.return_across_actions),
      baseline=_BASELINES[rl.advantage_estimator],
      # GRPO advantages are already normalised per prompt group; the global whitening belongs
      # to REINFORCE++ and its baseline variant only (OpenRLHF).
      whiten_scope="none" if rl.advantage_estimator == "grpo" else rl.whiten_scope,
      whiten_weighting=rl.whiten_weighting, whiten_include_truncated=bool(rl.whiten_truncated),
      eps_clip_low=float(rl.eps_clip_low), eps_clip_high=float(rl.eps_clip_high),
      dual_clip=None if rl.dual_clip is None else float(rl.dual_clip),
      loss_aggregation=rl.loss_agg, mask_truncated=bool(rl.mask_truncated),
      samples_per_optimizer_step=int(train.samples_per_optimizer_step),
      micro_batch_size=int(train.micro_batch_size),
      # Logprobs of the sampling policy: greedy rollouts (T=0) are scored at T=1.
      temperature=float(config.rollout.temperature) or 1.0,
      logprob_impl=rl.impl, advantage_impl=rl.impl)


# ---------------------------------------------------------------------------------- rollout

def sampling_params(config: ml_collections.ConfigDict, *, evaluation: bool = False
                    ) -> dict[str, SamplingParams]:
  r = config.rollout
  temperature = r.eval_temperature if evaluation else r.temperature
  return {name: SamplingParams(max_new_tokens=int(r.max_new_tokens), temperature=float(temperature),
                               top_p=float(r.top_p), top_k=int(r.top_k),
                               min_new_tokens=int(r.min_new_tokens))
          for name in config.agents}


def build_workflow(config: ml_collections.ConfigDict, *, engine, tokenizer, coach, sandbox,
                   workspace_root: str, evaluation: bool = False):
  """The configured workflow (MathChat or DSBench) bound to its engine, coach and sandbox."""
  from mappa_jax.workflows.base import LoopOptions, agents_from_config
  common: dict[str, Any] = dict(engine=engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
                                sampling=sampling_params(config, evaluation=evaluation),
                                workspace_root=workspace_root)
  if config.workflow == "mathchat":
    from mappa_jax.workflows import mathchat
    agents = config.agents
    cfg = mathchat.MathChatConfig(
        executor_max_turns=int(agents.code_executor.max_turns),
        tool_timeout_s=float(config.sandbox.timeout_s),
        token_budget=budget_text(int(config.rollout.max_new_tokens)),
        verifier_sees_problem_solver="problem_solver" in tuple(agents.verifier.sees))
    options = LoopOptions(reference_context_bug=bool(config.rl.reference_context_bug))
    return mathchat.MathChatWorkflow(
        config=cfg, options=options,
        agents=agents_from_config(mathchat.mathchat_agents(cfg), config.agents), **common)
  from mappa_jax.workflows import dsbench
  cfg = dsbench.DSBenchConfig(max_turns=int(config.agents.data_engineer.max_turns),
                              tool_timeout_s=float(config.sandbox.timeout_s))
  options = LoopOptions(reference_context_bug=bool(config.rl.reference_context_bug),
                        strip_thinking_handoff=True)
  return dsbench.DSBenchWorkflow(
      config=cfg, options=options,
      agents=agents_from_config(dsbench.dsbench_agents(cfg), config.agents), **common)


def budget_text(max_new_tokens: int) -> str:
  """The per-action budget the prompts announce ('4k' for 4096, as the reference says)."""
  if max_new_tokens % 1024 == 0:
    return f"{max_new_tokens // 1024}k"
  return str(max_new_tokens)
