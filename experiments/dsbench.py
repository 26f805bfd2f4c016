r"""DSBench data modeling: Data Engineer -> Modeler -> Analyst on tabular Kaggle tasks.

Presets (`--config=experiments/dsbench.py:<preset>`):
  local  (default) embedded tiny model, small synthetic CSV tasks, rule coach, in-process
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

# REF re-uploaded fetched artifacts (*.pkl, *.joblib, *.npy, *.npz) before every execution;
# here every agent of a trajectory shares one persistent workspace directory instead.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  local = preset == "local"
  config = common.base_config(preset, workflow="dsbench")

  config.agents = ml_collections.ConfigDict()
  config.agents.data_engineer = common.agent(
      role="data_engineer",
      role_description=("Loads train.csv/test.csv, explores and preprocesses them, and saves "
                        "X_train.pkl, y_train.pkl and X_test.pkl."),
      max_turns=4, tools=("python",))  # REF
  config.agents.modeler = common.agent(
      role="modeler",
      role_description=("Loads the Data Engineer's arrays, selects and cross-validates a "
                        "model, and saves model.pkl."),
      max_turns=4, tools=("python",), sees=("data_engineer",))  # REF
  config.agents.analyst = common.agent(
      role="analyst",
      role_description=("Loads the model and X_test.pkl, predicts, and writes submission.csv "
                        "in the competition format."),
      max_turns=4, tools=("python",), sees=("data_engineer", "modeler"),
      sees_ground_truth_in_coach=True)  # REF: the coach gets the outcome metrics

  config.rollout = common.rollout_section(
      preset, agent_names=tuple(config.agents), paper_max_new_tokens=16384,
      paper_rollout_batch_size=16)
  config.coach = common.coach_section(preset, paper_model="gemini-2.5-pro")
  # REF 1.0 (raw 0-10 score); BUG §10.2: 0.1 would match MathChat's KL/reward balance.
  config.rl = common.rl_section(preset, reward_scale=1.0)
  # REF num_steps: 4 steps x 30 episodes; buckets hold prompt_max_len + max_new_tokens.
  config.train = common.train_section(
      preset, paper_num_steps=120, paper_buckets=(4096, 8192, 16384, 32768, 40960))

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic" if local else "files"  # 'synthetic' | 'files'
  # JSONL records with `prompt`, `answer` (null) and `metadata` (mappa-reference.md §6).
  config.data.train_files = () if local else ("data/Bench/dsbench_modeling_train.json",)
  config.data.eval_files = () if local else ("data/Bench/dsbench_modeling_eval.json",)
  # task_id -> cleaned description, metric, target and id columns (REF).
  # DSBench data root holding data_resplit/<task>/{train,test}.csv and answers/<task>/
  # (the public DSBench release; not shipped). '' = the directory of the first train file.
  config.data.dsbench_root = ""
  config.data.cleaned_prompts_file = ("" if local else
                                      "data/Bench/dsbench_modeling_cleaned_prompts.json")
  config.data.max_train_samples = 0  # use every task (0 = all; REF 64)
  config.data.subsample_seed = 42  # REF
  # REF: the MathChat suffix is appended to DSBench raw prompts too.
  config.data.prompt_suffix = ("Please reason step by step, and put your final answer "
                               "within \\boxed{}.")
  config.data.allow_eval_overlap = False  # eval tasks in the training set are an error
  config.data.stratify_key = "data_type"  # REF stratified batches on metadata[key] ('' = off)
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.seed = 0  # synthetic task generator seed
  config.data.synthetic.n_train = 8  # synthetic tabular tasks for training
  config.data.synthetic.n_eval = 2  # synthetic tabular tasks for evaluation
  config.data.synthetic.difficulty = 1  # 1: linear targets, few columns; higher adds noise

  config.sandbox = common.sandbox_section(preset, paper_timeout_s=60.0)  # REF 60 s

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 2  # REF (0 = never)
  config.eval.at_start = True  # REF evaluate before training (logged as step 0)
  config.eval.n_samples_per_prompt = 2 if local else 4  # REF 2 x 2 engines
  # Eval set names: stems of data.eval_files ('synthetic' for the synthetic source); () = all.
  config.eval.sets = ()

  config.checkpoint = common.checkpoint_section(preset, paper_every_steps=4)  # REF
  config.logging = common.logging_section(preset)

  config.lock()
  return config
