r"""Pretraining of the tiny MathChat base team (the model the `local` presets load).

  python launch/pretrain.py --config=experiments/pretrain_tiny.py --out=mappa_jax/assets/tiny_team

Supervised fine-tuning of a Qwen3-architecture decoder on deliberately imperfect MathChat
demonstrations (mappa_jax/sft/demos.py documents the behaviour mixture), rendered by the real
workflow. Presets: `default`; `smoke` (a few seconds, for tests); `dsbench`: the DSBench base
team (Data Engineer -> Modeler -> Analyst template pipelines, mappa_jax/sft/dsbench_demos.py) on
the offline suite's training tasks, its own asset:

  python launch/pretrain.py --config=experiments/pretrain_tiny.py:dsbench \
    --out=mappa_jax/assets/tiny_team_dsbench --team_config=experiments/dsbench.py:local

`dsbench_smoke`: the same wiring in seconds (tests). The `dsbench` presets add a `dsbench`
section and train on DSBench demonstrations only (data.n_tasks = 0: the MathChat
demonstrations would add about 15 minutes on the 2-core machine); the MathChat presets are
unchanged.
"""
import ml_collections

from mappa_jax.models.tiny import TINY_TOKENIZER_DIR


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = (arg or "default").strip()
  if preset not in _PRESETS:
    raise ValueError(f"unknown preset {preset!r}: valid presets are {', '.join(_PRESETS)}")
  smoke = preset in ("smoke", "dsbench_smoke")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0  # parameter init and batch order

  # The team's tokenizer: a byte-level BPE fitted to its own transcripts (sft/train.py).
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.bootstrap_dir = str(TINY_TOKENIZER_DIR)  # renders the corpus (shipped tiny BPE)
  c.tokenizer.train_tasks = 16 if smoke else 400  # tasks whose demonstrations form the corpus
  c.tokenizer.vocab_size = 4096  # most BPE tokens (the corpus yields fewer)
  c.tokenizer.max_digits = 3  # digits per number token (1 = Qwen's digit-by-digit split)
  c.tokenizer.number_tokens = 1000  # 0 .. 999 each become one token (copying is one lookup)

  c.model = ml_collections.ConfigDict()
  c.model.architecture = "qwen3"
  c.model.hidden_size = 64 if smoke else 128
  c.model.intermediate_size = 128 if smoke else 384
  c.model.num_hidden_layers = 1 if smoke else 4
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2 if smoke else 4  # every head its own keys (retrieval)
  c.model.head_dim = 16 if smoke else 32
  c.model.rope_theta = 10_000.0  # short contexts: a small base separates nearby positions
  c.model.tie_word_embeddings = True
  c.model.max_position_embeddings = 2048

  c.data = ml_collections.ConfigDict()
  c.data.seed = 0  # task generator and demonstration draws
  c.data.n_tasks = 16 if smoke else 6000  # training-split problems, one trajectory each
  c.data.levels = (1, 2)  # operations per problem; must match the local presets' difficulty
  # Share of the problem space held out for evaluation: must equal the synthetic generator's
  # default that the local presets use, so pretraining never sees an eval problem.
  c.data.eval_permille = 200

  # How the workflow renders the prompts: must equal the local presets' values.
  c.workflow = ml_collections.ConfigDict()
  c.workflow.max_new_tokens = 48  # rollout.max_new_tokens (the prompts announce this budget)
  c.workflow.executor_max_turns = 2  # agents.code_executor.max_turns

  c.mixture = ml_collections.ConfigDict()  # DemoMixture fields (see mappa_jax/sft/demos.py)
  c.mixture.solver_correct = 0.25
  c.mixture.executor_compute = 0.35
  c.mixture.executor_restate = 0.40
  c.mixture.executor_report_tool = 0.5
  c.mixture.verifier_trust_tool = 0.5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # actions per step (one per row, similar lengths batched together)
  c.train.length_multiple = 64  # rows are padded to a multiple of this (few shapes to compile)
  c.train.epochs = 1 if smoke else 2
  c.train.learning_rate = 2e-3
  c.train.warmup_ratio = 0.05
  c.train.min_lr_ratio = 0.05
  c.train.weight_decay = 0.0
  c.train.max_grad_norm = 1.0

  c.sandbox = ml_collections.ConfigDict()
  c.sandbox.backend = "auto"  # runs the demonstrations' own programs
  c.sandbox.max_concurrency = 4
  c.sandbox.allow_unisolated = False  # True with backend='process' (no bubblewrap)

  if preset.startswith("dsbench"):
    _dsbench(c, smoke)
  c.lock()
  return c


_PRESETS = ("default", "smoke", "dsbench", "dsbench_smoke")


def _dsbench(c: ml_collections.ConfigDict, smoke: bool) -> None:
  """The DSBench base team: DSBench demonstrations only, longer rows, more epochs.

  Lengths under the fitted tokenizer are recorded in pretrain_info.json (dsbench.longest_*);
  experiments/dsbench.py:local sizes prompt_max_len / max_new_tokens from them.
  """
  c.tokenizer.train_tasks = 0  # no MathChat transcripts in the corpus
  c.data.n_tasks = 0  # no MathChat demonstrations
  d = c.dsbench = ml_collections.ConfigDict()
  # The suite has 12 training tasks; each seed runs every one of them once (6 sandboxed
  # programs per trajectory, about 1.5 s each on the shared 2-core machine).
  d.seeds = (0, 1) if smoke else tuple(range(6))
  # Training-task ids to use (() = every training task of the suite).
  d.tasks = ("iris-species",) if smoke else ()
  d.tokenizer_seeds = (100,)  # one pass over the tasks is enough text for the BPE
  # Programs read the target/id columns from the files ('data'), not from the task text
  # ('prompt': copying names did not generalise to held-out tasks; sft/dsbench_demos.py).
  d.columns_from = "data"
  d.tool_timeout_s = 60.0  # sandbox limit per code block: experiments/dsbench.py's value
  d.mixture = ml_collections.ConfigDict()  # DSDemoMixture fields (mappa_jax/sft/dsbench_demos.py)
  # 0.3 left the base omitting X_test.pkl on 1 of 16 held-out trajectories at the eval
  # temperature (too rare for the fall to be measurable); 0.5 gives 3 of 16 (issue 12).
  d.mixture.de_forgets_x_test = 0.5
  d.mixture.modeler_forest = 0.5
  c.train.batch_size = 4 if smoke else 8
  c.train.length_multiple = 128
  c.train.epochs = 1 if smoke else 6
