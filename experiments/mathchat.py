r"""MathChat: Problem Solver -> Code Executor -> Verifier on competition math.

Presets (`--config=experiments/mathchat.py:<preset>`):
  local          (default) the shipped tiny base team (mappa_jax/assets/tiny_team, pretrained
                 by launch/pretrain.py --config=experiments/pretrain_tiny.py), synthetic
                 arithmetic, rule coach, in-process sampler: MAPPA (per-action coach scores)
                 on one CPU machine, evaluated before and after on 256 held-out problems.
  local_outcome  the same budget with outcome-only RL: every action of a trajectory gets its
                 final outcome reward (rule-graded correctness) instead of its coach score.
  local_grpo     the same budget with GRPO (per-prompt group normalisation of coach scores).
  local_biased   the bias experiment (README "Coach bias"): `local` with a coach that adds
                 BIAS_DELTA points to every action on BIAS_TASK_TYPE problems.
  local_biased_stratum  `local_biased` with the mitigation: advantages whitened per task type
                 (rl.whiten_scope='per_agent_per_stratum').
  local_biased_spread  a bias that depends on behaviour: the rule coach's scores on every type
                 but BIAS_TASK_TYPE are multiplied by BIAS_OTHERS_SCALE (stingier and less
                 discriminating off the favoured type).
  local_biased_spread_stratum  `local_biased_spread` with per-type whitening.
  local_biased_style  a coach that likes BIAS_TASK_TYPE's kind of work wherever it appears:
                 +BIAS_DELTA on every action whose output matches BIAS_STYLE_PATTERN
                 (multiplicative code), on every task type.
  local_biased_style_stratum  `local_biased_style` with per-type whitening.
  smoke          a random tiny model, 3 steps, 4 eval problems: wiring checks (tests).
  paper  reference hyper-parameters (mappa-reference.md §3.1). Needs a model and a coach:
           --config.model.hf_dir=/ckpt/Qwen3-4B-Thinking-2507
           --config.coach.base_url=https://.../v1
Any field can be overridden, e.g. --config.train.learning_rate=2e-6.
"""
import os
import sys

import ml_collections

# config_flags loads this file by path: make the sibling `experiments` package importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
from experiments import common  # pylint: disable=g-import-not-at-top,wrong-import-position


PRESETS = ("local", "local_outcome", "local_grpo", "local_biased", "local_biased_stratum",
           "local_biased_spread", "local_biased_spread_stratum", "local_biased_style",
           "local_biased_style_stratum", "smoke", "paper")
# The RL estimator of the CPU team presets (every `local*` preset) that do not use REINFORCE++.
_TEAM_ESTIMATORS = {"local_outcome": "outcome", "local_grpo": "grpo"}
# The bias experiment's coach: the rule coach, +BIAS_DELTA on one of the synthetic task types
# (add_sub, mul_div, mixed), every role. The paper's DSBench coach favoured regression by
# 0.5-1.8 points; 2 points sits just above that range, so the effect is visible in 32 steps.
BIAS_TASK_TYPE, BIAS_DELTA = "mul_div", 2.0
# The behaviour-dependent bias (local_biased_spread): the other types' scores x0.25, so a good
# action there gains a quarter of what it gains on mul_div (a constant offset alone is a
# baseline shift and measured not to specialise the team).
BIAS_OTHERS_SCALE = 0.25
# The style bias (local_biased_style): +BIAS_DELTA on any output with a multiplicative
# augmented assignment (`n *= 3`, `n //= 5`: how the team's Code Executor writes mul_div work),
# whatever the problem's type. On add_sub problems that rewards wrong code, so unlike the two
# biases above it can pull the team toward mul_div-style work where it does not belong.
BIAS_STYLE_PATTERN = r"[*/]="
TINY_TEAM_DIR = os.path.join(_ROOT, "mappa_jax", "assets", "tiny_team")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg, PRESETS)
  local = preset != "paper"  # every other preset runs at the CPU scale
  config = common.base("mathchat", preset)
  if local:
    common.local(config)
    config.eval.every_steps = 2
    config.eval.n_samples_per_prompt = 2
  else:
    common.paper(config, coach_model="gemini-2.5-flash", max_new_tokens=4096,
                 rollout_batch_size=32, num_steps=128,  # REF 16 steps x 8 episodes
                 token_budget_buckets=(4096, 8192, 16384, 28672), sandbox_timeout_s=30.0,
                 checkpoint_every_steps=32)
    config.data.train_files = ("data/Bench/AIME_1983_2024.json",)
    config.data.eval_files = ("data/Bench/amc_eval_32.json", "data/Bench/aime_2025.json")
  config.rl.reward_scale = 0.1  # REF score / 10
  config.data.max_train_samples = 512  # REF random subsample of the training pool
  if preset.startswith("local"):
    _team_preset(config, _TEAM_ESTIMATORS.get(preset, "reinforce_pp"))
  if preset.startswith("local_biased"):
    c = config.coach
    c.kind, c.bias_inner, c.bias_task_type = "biased", "rule", BIAS_TASK_TYPE
    if preset.startswith("local_biased_spread"):
      c.bias_others_scale = BIAS_OTHERS_SCALE
    else:
      c.bias_delta = BIAS_DELTA
    if preset.startswith("local_biased_style"):
      c.bias_style_pattern = BIAS_STYLE_PATTERN
  if preset.endswith("_stratum"):
    # Each type's advantages are whitened by its own mean and spread: a constant per-type
    # offset is removed, and a shrunk spread is scaled back up.
    config.rl.whiten_scope = "per_agent_per_stratum"
  config.lock()
  return config


def _team_preset(config: ml_collections.ConfigDict, estimator: str) -> None:
  """The CPU team presets: the pretrained tiny team learning from per-action coaching.

  Sized so that `make run` (3 evaluations of 256 problems, 32 steps of 32 trajectories) takes
  about 5 minutes on 2 cores (benchmarks/learning.py runs longer comparisons).
  The prompts announce rollout.max_new_tokens: experiments/pretrain_tiny.py renders its
  demonstrations with the same value, so the team sees the prompts it was pretrained on.
  """
  config.model.hf_dir = TINY_TEAM_DIR  # the shipped base (None would mean a random model)
  r = config.rollout
  r.max_new_tokens = 48  # the demonstrations' longest action is 25 tokens
  r.min_new_tokens = 4
  r.rollout_batch_size = 16  # tasks per step
  r.n_samples_per_prompt = 2  # two trajectories per task (GRPO groups need >= 2)
  r.max_concurrent_workflows = 32  # every trajectory of a step in flight: bigger decode batches
  # Prompt lengths under the team's tokenizer: Problem Solver <= 150, Verifier and Code
  # Executor turn 1 <= 205, turn 2 <= 265 tokens; long tool output (capped at 400 characters
  # below) or a long upstream answer adds up to about 100.
  r.prompt_max_len = 384
  r.prompt_buckets = (160, 224, 288, 384)  # few shapes to compile, little padding
  r.batch_buckets = (8,)  # on CPU a batch of 8 decodes about as fast as 1
  config.rl.advantage_estimator = estimator
  t = config.train
  t.learning_rate = 1e-4
  t.samples_per_optimizer_step = 16
  t.micro_batch_size = 8
  t.num_steps = 32  # 1024 training trajectories; accuracy plateaus around here
  t.token_budget_buckets = (256, 448)  # prompt + response: most actions / the long ones
  syn = config.data.synthetic
  syn.n_train = 4096  # training-split problems (an epoch is far more than a run uses)
  syn.n_eval = 256  # held-out problems: the split is by a hash of the arithmetic itself
  syn.difficulty = 2  # one or two operations, as in the pretraining demonstrations
  config.eval.every_steps = 16  # before training, halfway and after the last step
  config.eval.n_samples_per_prompt = 1
  config.checkpoint.every_steps = 8
  # A program printing without end would make the next prompt too long to sample from.
  config.sandbox.output_cap_chars = 400
