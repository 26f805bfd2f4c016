r"""MathChat: Problem Solver -> Code Executor -> Verifier on competition math.

Presets (`--config=experiments/mathchat.py:<preset>`):
  local  (default) embedded tiny model, synthetic arithmetic tasks, rule coach, in-process
         sampler: a few steps on one CPU machine.
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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  local = preset == "local"
  config = common.base_config(preset, workflow="mathchat")

  config.agents = ml_collections.ConfigDict()
  config.agents.problem_solver = common.agent(
      role="Problem Solver",
      role_description="Drafts a step-by-step solution to the problem for the next agents.",
      max_turns=1)  # REF
  config.agents.code_executor = common.agent(
      role="Code Executor",
      role_description=("Computes or verifies the solution with Python code that is run in "
                        "a sandbox; sees the Problem Solver's output."),
      max_turns=2, tools=("python",), sees=("problem_solver",))  # REF
  config.agents.verifier = common.agent(
      role="Verifier",
      role_description=("Final agent: checks the Code Executor's work and states the final "
                        "answer as \\boxed{answer}."),
      max_turns=1, sees=("code_executor",),  # REF: never sees the Problem Solver directly
      sees_ground_truth_in_coach=True)  # REF: the coach judges ANSWER_CORRECT vs the label

  config.rollout = common.rollout_section(
      preset, agent_names=tuple(config.agents), paper_max_new_tokens=4096,
      paper_rollout_batch_size=32)
  config.coach = common.coach_section(preset, paper_model="gemini-2.5-flash")
  config.rl = common.rl_section(preset, reward_scale=0.1)  # REF score / 10
  # REF num_steps: 16 steps x 8 episodes; buckets hold prompt_max_len + max_new_tokens.
  config.train = common.train_section(
      preset, paper_num_steps=128, paper_buckets=(4096, 8192, 16384, 28672))

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic" if local else "files"  # 'synthetic' | 'files'
  # JSON/JSONL records with `prompt` and `answer` (mappa-reference.md §6).
  config.data.train_files = () if local else ("data/Bench/AIME_1983_2024.json",)
  config.data.eval_files = () if local else ("data/Bench/amc_eval_32.json",
                                             "data/Bench/aime_2025.json")
  config.data.max_train_samples = 512  # REF random subsample of the training pool (0 = all)
  config.data.subsample_seed = 42  # REF
  # REF suffix appended to every prompt (after a blank line).
  config.data.prompt_suffix = ("Please reason step by step, and put your final answer "
                               "within \\boxed{}.")
  # FIX §10.11: eval tasks that also appear in training are an error unless allowed.
  config.data.allow_eval_overlap = False
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.seed = 0  # synthetic task generator seed
  config.data.synthetic.n_train = 64  # synthetic training tasks
  config.data.synthetic.n_eval = 4  # synthetic eval tasks
  config.data.synthetic.difficulty = 1  # 1: two-operand +/-; higher adds operands and * //

  config.sandbox = common.sandbox_section(preset, paper_timeout_s=30.0)  # REF 30 s

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 2 if local else 4  # REF (0 = never)
  config.eval.at_start = True  # REF evaluate before training (logged as step 0)
  config.eval.n_samples_per_prompt = 2 if local else 4  # REF 2 x 2 engines
  # Eval set names: stems of data.eval_files ('synthetic' for the synthetic source); () = all.
  config.eval.sets = ()

  config.checkpoint = common.checkpoint_section(preset, paper_every_steps=32)  # REF
  config.logging = common.logging_section(preset)

  config.lock()
  return config
