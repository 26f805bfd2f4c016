"""Config sections shared by every experiment (big_vision style: plain functions, no magic).

Each `*_section(preset, ...)` returns an unlocked `ml_collections.ConfigDict` whose every
field is documented where it is set. The experiment files (`mathchat.py`, `dsbench.py`)
assemble these, apply their workflow-specific values, and return the result locked, so a
typo on the command line (`--config.trian.lr=...`) fails instead of being silently added.

Conventions:
  * Optional values use `config_dict.placeholder(type)`: None by default, but still
    overridable from the command line with the right type (a plain None field is not).
  * Sequences are tuples: ml_collections can override tuples from the command line
    (`--config.data.train_files='("a.json", "b.json")'`), not lists.
  * Reference values come from mappa-reference.md §3.1 ("REF"); deliberate departures that
    fix a reference bug are marked "FIX".
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

PRESETS = ("local", "paper")


def parse_preset(arg: str | None, presets: tuple[str, ...] = PRESETS) -> str:
  """`get_config(arg)` helper: '' / None -> 'local'; unknown names list the valid ones."""
  preset = (arg or "local").strip()
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r}: valid presets are {', '.join(presets)} "
                     f"(select one with --config=experiments/<file>.py:<preset>)")
  return preset


def _c(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def base_config(preset: str, *, workflow: str) -> ml_collections.ConfigDict:
  """The fields every experiment starts with: run identity, model and mesh."""
  config = ml_collections.ConfigDict()
  config.name = f"{workflow}-{preset}"  # run name: TensorBoard run dir <workdir>/tensorboard/<name>
  config.seed = 42  # REF global seed
  config.workflow = workflow  # which workflow drives the agents
  config.preset = preset  # the preset this config was built from (informational)
  config.model = model_section(preset)
  config.mesh = mesh_section(preset)
  return config


def model_section(preset: str) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      # Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer files).
      # None: generate the embedded tiny model (local preset only). Required for `paper`.
      hf_dir=config_dict.placeholder(str),
      # Architecture preset (mappa_jax.models.config.PRESETS); with hf_dir set, the
      # checkpoint's config.json wins and this only names the run.
      preset="tiny-qwen3" if local else "qwen3-4b",
      param_dtype="float32" if local else "bfloat16",  # storage dtype of weights
      dtype="float32" if local else "bfloat16",  # compute dtype of activations
      remat=not local,  # rematerialise decoder layers in the backward pass (saves memory)
  )


def mesh_section(preset: str) -> ml_collections.ConfigDict:
  # One device mesh shared by all agents (updated one after another). -1 = all remaining
  # devices; the product must equal the device count.
  return _c(
      data=-1 if preset == "local" else 1,  # batch parallelism (replicated params)
      fsdp=1 if preset == "local" else -1,  # params + optimizer state sharded over this axis
      tensor=1,  # tensor (model) parallelism inside layers
  )


def agent(*, role: str, role_description: str, max_turns: int, tools: tuple[str, ...] = (),
          sees: tuple[str, ...] = (), sees_ground_truth_in_coach: bool = False
          ) -> ml_collections.ConfigDict:
  """One agent of the team: its own weights, prompt and coach role."""
  return _c(
      role=role,  # role string shown to the coach (reference spelling)
      role_description=role_description,  # one paragraph for the coach rubric
      max_turns=max_turns,  # actions per trajectory; >1 only makes sense with tools
      tools=tools,  # tools the agent may call: () or ('python',)
      sees=sees,  # upstream agents whose outputs are in this agent's prompt
      sees_ground_truth_in_coach=sees_ground_truth_in_coach,  # coach gets the label/metrics
  )


def rollout_section(preset: str, *, agent_names: tuple[str, ...], paper_max_new_tokens: int,
                    paper_rollout_batch_size: int) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      # 'inprocess': JAX sampler in this process; 'sglang': SGLang servers over HTTP.
      engine="inprocess",
      # engine='sglang': agent name -> tuple of server URLs, e.g.
      # --config.rollout.sglang_urls.problem_solver='("http://10.0.0.2:30000",)'.
      sglang_urls=_c(**{name: () for name in agent_names}),
      temperature=1.0,  # REF training sampling temperature
      eval_temperature=0.6,  # REF evaluation temperature
      top_p=1.0,  # REF nucleus mass (1.0 = off)
      top_k=0,  # REF top-k (0 = off; the reference's -1)
      max_new_tokens=48 if local else paper_max_new_tokens,  # REF per-action budget
      min_new_tokens=4 if local else 16,  # REF EOS suppressed before this many tokens
      n_samples_per_prompt=2,  # REF trajectories per task (adjacent copies)
      rollout_batch_size=4 if local else paper_rollout_batch_size,  # REF tasks per step
      max_concurrent_workflows=4 if local else 16,  # REF workflows in flight per process
      prompt_max_len=512 if local else 24576,  # REF longest prompt (tokens) before an action
      # In-process sampler shapes: prompts are left-padded to the smallest prompt bucket that
      # fits (() = powers of two); every batch is padded to one size so a request's tokens do
      # not depend on what it was batched with: min(max_concurrent_workflows,
      # batch_buckets[-1]) rows, larger batches run in chunks (() = no cap).
      prompt_buckets=(),
      batch_buckets=(),
  )


def coach_section(preset: str, *, paper_model: str) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      # 'rule': deterministic rubric over verifiable signals (no LLM, used by `local`);
      # 'openai': any OpenAI-compatible endpoint; 'panel': several endpoints aggregated;
      # 'replay': answer from coach.cache_path only (re-runs without an endpoint).
      kind="rule" if local else "openai",
      model="" if local else paper_model,  # REF model name sent to the endpoint
      base_url=config_dict.placeholder(str),  # OpenAI-compatible URL (required for openai)
      api_key_env="COACH_API_KEY",  # environment variable holding the API key (may be unset)
      temperature=0.0,  # REF coach sampling temperature
      max_output_tokens=config_dict.placeholder(int),  # None: no cap (REF)
      max_concurrency=4 if local else 32,  # requests in flight
      rpm_limit=0,  # requests per minute (0 = unlimited)
      timeout_s=300.0,  # per-request timeout
      max_retries=6,  # retries with exponential backoff (REF: 300, i.e. about a day)
      format_retry=True,  # REF one-shot retry asking for the PROCESS_SCORE format
      circuit_breaker_failures=20,  # consecutive failures that stop the run with an error
      # SQLite verdict cache (WAL); None = <workdir>/coach_cache.sqlite. kind='replay' reads it.
      cache_path=config_dict.placeholder(str),
      # What the RL update does with an action the coach could not score:
      # 'mask' = leave it out of the loss (FIX, default); 'neutral' = use neutral_score.
      invalid_policy="mask",
      neutral_score=5.0,  # REF fallback score, used only with invalid_policy='neutral'
      # FIX §10.7: the coach sees head and tail of long tool output (REF: first 2000 chars).
      tool_observation_head_chars=1000,
      tool_observation_tail_chars=1000,
      panel_models=(),  # kind='panel': model names, all on base_url
      panel_aggregate="mean",  # kind='panel': 'mean' | 'median' of member scores
      prices=_c(
          input_per_mtok=0.0,  # USD per million input tokens, for cost logging (0 = unknown)
          output_per_mtok=0.0,  # USD per million output tokens
      ),
  )


def rl_section(preset: str, *, reward_scale: float) -> ml_collections.ConfigDict:
  del preset  # the objective is the same at every scale
  return _c(
      kl_coef=0.01,  # REF beta
      kl_estimator="k1",  # REF 'k1' | 'k2' | 'k3' (per-token values clamped to [-10, 10], REF)
      kl_placement="reward",  # REF 'reward' (token reward) | 'loss' (separate term) | 'none'
      gamma=1.0,  # REF discount within an action
      return_across_actions=False,  # REF: returns stop at the action boundary
      # Coach score (0-10) multiplier. REF: 0.1 MathChat, 1.0 DSBench (BUG §10.2: this makes
      # the KL term 10x weaker on DSBench); set it explicitly per experiment.
      reward_scale=reward_scale,
      # REF 'per_agent' | 'pooled' (all agents together) | 'per_agent_per_stratum' | 'none'
      whiten_scope="per_agent",
      whiten_weighting="token",  # REF 'token' (long outputs weigh more) | 'action'
      whiten_truncated=True,  # REF truncated samples count in the whitening statistics
      eps_clip_low=0.2,  # REF PPO ratio lower clip: 1 - eps
      eps_clip_high=0.2,  # REF PPO ratio upper clip: 1 + eps
      dual_clip=config_dict.placeholder(float),  # dual-clip c > 1; None = off (REF)
      # REF 'seq_mean_token_mean' (mean over tokens, then samples) | 'token_mean' |
      # 'seq_mean_token_sum'
      loss_agg="seq_mean_token_mean",
      mask_truncated=True,  # REF truncated samples get zero loss but still count
      # 'reinforce_pp' (REF) | 'reinforce_pp_baseline' | 'grpo' | 'outcome'
      # (grpo normalises per prompt group and then skips the global whitening)
      advantage_estimator="reinforce_pp",
      # True reproduces BUG §4.1 (turn k >= 2 trained on the wrong context). FIX: False.
      reference_context_bug=False,
      impl="xla",  # log-prob/loss implementation: 'xla' | 'pallas'
  )


def train_section(preset: str, *, paper_num_steps: int,
                  paper_buckets: tuple[int, ...]) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      learning_rate=1e-4 if local else 1e-6,  # REF peak AdamW learning rate
      warmup_ratio=0.03,  # REF linear warm-up, fraction of the schedule horizon
      min_lr_ratio=0.1,  # REF cosine decays to this fraction of the peak
      # Schedule horizon in optimizer steps; None = derived from num_steps and the actual
      # samples per step (FIX §10.10: the reference's horizon overruns for multi-turn agents).
      lr_decay_steps=config_dict.placeholder(int),
      b1=0.9,  # REF
      b2=0.95,  # REF
      weight_decay=0.0,  # REF
      max_grad_norm=1.0,  # REF global-norm clip (0 = no clipping)
      # bf16 params: AdamW updates a float32 copy held in the optimizer state (an lr=1e-6 step
      # is below bf16 resolution and would round to nothing). No effect for float32 params.
      fp32_master_weights=True,
      samples_per_optimizer_step=4 if local else 16,  # REF samples averaged per update
      micro_batch_size=2 if local else 4,  # samples per forward/backward (accumulated)
      num_steps=3 if local else paper_num_steps,  # REF global (rollout + update) steps
      # Padded sequence lengths (prompt + response tokens): a batch uses the smallest that
      # fits, so shapes (and compilations) stay few. Nothing is truncated to fit: the largest
      # must hold rollout.prompt_max_len + rollout.max_new_tokens.
      token_budget_buckets=(256, 640) if local else paper_buckets,
      # Pack several actions into one row (segment-masked attention) instead of one action
      # per padded row: less padding when action lengths vary a lot. Same loss either way.
      pack_sequences=False,
  )


def sandbox_section(preset: str, *, paper_timeout_s: float) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      backend="auto",  # 'auto'/'bwrap' (bubblewrap; refuses to run without it) | 'process'
      allow_unisolated=False,  # True: accept 'process' running model-written code unisolated
      timeout_s=10.0 if local else paper_timeout_s,  # REF wall time per code block
      memory_mb=1024 if local else 4096,  # address-space limit (RLIMIT_AS) per process
      max_concurrency=4 if local else 30,  # REF simultaneous executions
      output_cap_chars=20000,  # stdout/stderr bytes kept per stream (half head, half tail)
  )


def checkpoint_section(preset: str, *, paper_every_steps: int) -> ml_collections.ConfigDict:
  local = preset == "local"
  return _c(
      every_steps=2 if local else paper_every_steps,  # REF save interval (0 = never)
      keep_last=2 if local else 10,  # REF most recent checkpoints kept
      # Also keep the best checkpoint by this metric (a logged key); '' = off.
      keep_best_metric="" if local else "eval/reward",
      best_mode="max",  # 'max' | 'min' for keep_best_metric
      async_save=True,  # write in the background while training continues
  )


def logging_section(preset: str) -> ml_collections.ConfigDict:
  del preset
  return _c(
      every_steps=1,  # scalar logging interval (global steps)
      tensorboard=True,  # write <workdir>/tensorboard/<name>
      text_samples_per_step=2,  # sample trajectories logged as text per step
  )
