"""Experiment configs: presets, overrides, validation errors, and the saved config."""
import json
import os

import ml_collections
import pytest

from mappa_jax import config as mconfig
from mappa_jax import workflows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATHCHAT = os.path.join(ROOT, "experiments", "mathchat.py")
DSBENCH = os.path.join(ROOT, "experiments", "dsbench.py")
FILES = {"mathchat": MATHCHAT, "dsbench": DSBENCH}


@pytest.fixture
def hf_dir(tmp_path):
  """A directory that looks like a Hugging Face checkpoint to the validator."""
  path = tmp_path / "hf"
  path.mkdir()
  (path / "config.json").write_text("{}")
  return str(path)


def _errors(config) -> str:
  with pytest.raises(mconfig.ConfigError) as info:
    mconfig.validate(config)
  return str(info.value)


@pytest.mark.parametrize("workflow", ["mathchat", "dsbench"])
def test_local_preset_is_default_locked_and_valid(workflow):
  config = mconfig.load_config(FILES[workflow])
  assert config.preset == "local" and config.workflow == workflow
  assert config.name == f"{workflow}-local"
  assert config.coach.kind == "rule"
  # The shipped pretrained teams (launch/pretrain.py --config=experiments/pretrain_tiny.py).
  asset = {"mathchat": "tiny_team", "dsbench": "tiny_team_dsbench"}[workflow]
  assert config.model.hf_dir == os.path.join(ROOT, "mappa_jax", "assets", asset)
  assert os.path.isfile(os.path.join(config.model.hf_dir, "model.safetensors"))
  assert mconfig.validate(config) is config
  with pytest.raises(AttributeError):
    config.new_field = 1  # locked: new keys are refused
  assert mconfig.agent_names(config) == tuple(workflows.get(workflow).AGENTS)
  assert set(config.agents.keys()) == set(mconfig.agent_names(config))


def test_team_presets_differ_only_in_what_they_are_named_for():
  local = mconfig.flatten(mconfig.load_config(MATHCHAT))
  for preset, estimator in (("local_outcome", "outcome"), ("local_grpo", "grpo")):
    other = mconfig.flatten(mconfig.validate(mconfig.load_config(f"{MATHCHAT}:{preset}")))
    changed = {k for k in local if local[k] != other[k]}
    assert changed == {"name", "preset", "rl.advantage_estimator"}, changed
    assert other["rl.advantage_estimator"] == estimator and other["name"] == f"mathchat-{preset}"
  biased = {"coach.kind", "coach.bias_task_type", "coach.bias_delta"}
  spread = {"coach.kind", "coach.bias_task_type", "coach.bias_others_scale"}
  style = biased | {"coach.bias_style_pattern"}
  for preset, changes in (("local_biased", biased),
                          ("local_biased_stratum", biased | {"rl.whiten_scope"}),
                          ("local_biased_spread", spread),
                          ("local_biased_spread_stratum", spread | {"rl.whiten_scope"}),
                          ("local_biased_style", style),
                          ("local_biased_style_stratum", style | {"rl.whiten_scope"})):
    other = mconfig.flatten(mconfig.validate(mconfig.load_config(f"{MATHCHAT}:{preset}")))
    changed = {k for k in local if local[k] != other[k]}
    assert changed == {"name", "preset"} | changes, changed
    assert other["coach.kind"] == "biased"
    assert other["coach.bias_delta"] > 0 or other["coach.bias_others_scale"] < 1
  smoke = mconfig.validate(mconfig.load_config(f"{MATHCHAT}:smoke"))
  assert smoke.model.hf_dir is None and smoke.train.num_steps == 3
  assert "local_grpo" in _errors_of_preset("nope")


def _errors_of_preset(name: str) -> str:
  with pytest.raises(mconfig.ConfigError) as info:
    mconfig.load_config(f"{MATHCHAT}:{name}")
  return str(info.value)


@pytest.mark.parametrize("workflow", ["mathchat", "dsbench"])
def test_paper_preset_needs_model_and_coach_then_validates(workflow, hf_dir):
  config = mconfig.load_config(f"{FILES[workflow]}:paper")
  message = _errors(config)
  assert "model.hf_dir" in message and "--config.model.hf_dir=" in message
  assert "coach.base_url" in message
  config = mconfig.load_config(f"{FILES[workflow]}:paper", [
      f"model.hf_dir={hf_dir}", "coach.base_url=http://127.0.0.1:1/v1"])
  mconfig.validate(config)


def test_paper_presets_carry_reference_values():
  math = mconfig.load_config(f"{MATHCHAT}:paper")
  ds = mconfig.load_config(f"{DSBENCH}:paper")
  for c in (math, ds):
    assert (c.rl.kl_coef, c.rl.kl_estimator, c.rl.kl_placement) == (0.01, "k1", "reward")
    assert (c.rl.eps_clip_low, c.rl.eps_clip_high, c.rl.gamma) == (0.2, 0.2, 1.0)
    assert (c.train.learning_rate, c.train.b1, c.train.b2) == (1e-6, 0.9, 0.95)
    assert (c.train.samples_per_optimizer_step, c.train.warmup_ratio) == (16, 0.03)
    assert (c.rollout.temperature, c.rollout.eval_temperature) == (1.0, 0.6)
    assert c.rollout.min_new_tokens == 16 and c.rollout.n_samples_per_prompt == 2
    assert c.seed == 42 and not c.rl.reference_context_bug
  assert (math.rollout.max_new_tokens, ds.rollout.max_new_tokens) == (4096, 16384)
  assert (math.rollout.rollout_batch_size, ds.rollout.rollout_batch_size) == (32, 16)
  assert (math.rl.reward_scale, ds.rl.reward_scale) == (0.1, 1.0)
  assert (math.sandbox.timeout_s, ds.sandbox.timeout_s) == (30.0, 60.0)
  assert [math.agents[a].max_turns for a in mconfig.agent_names(math)] == [1, 2, 1]
  assert [ds.agents[a].max_turns for a in mconfig.agent_names(ds)] == [4, 4, 4]
  assert math.agents.verifier.sees == ("code_executor",)  # never the Problem Solver


@pytest.mark.parametrize("workflow", ["mathchat", "dsbench"])
def test_bad_preset_lists_valid_ones(workflow):
  with pytest.raises(mconfig.ConfigError) as info:
    mconfig.load_config(f"{FILES[workflow]}:huge")
  message = str(info.value)
  assert "'huge'" in message and "local" in message and "paper" in message
  assert "Traceback" not in message


def test_overrides_of_every_kind_apply(hf_dir):
  config = mconfig.load_config(MATHCHAT, [
      "train.learning_rate=2e-6",  # float
      "--config.train.num_steps=7",  # int, full flag spelling
      "rl.mask_truncated=false",  # bool
      "coach.kind=openai", "coach.model=judge", "coach.base_url=http://127.0.0.1:9/v1",
      f"model.hf_dir={hf_dir}",
      "rl.dual_clip=3.0",  # float placeholder
      "train.token_budget_buckets=(128, 1024)",  # int tuple
      'agents.code_executor.sees=("problem_solver",)',
      "name=ablation-1",
  ])
  assert config.train.learning_rate == 2e-6 and config.train.num_steps == 7
  assert config.rl.mask_truncated is False and config.rl.dual_clip == 3.0
  assert config.coach.base_url == "http://127.0.0.1:9/v1" and config.model.hf_dir == hf_dir
  assert config.train.token_budget_buckets == (128, 1024) and config.name == "ablation-1"
  mconfig.validate(config)


@pytest.mark.parametrize("override,names", [
    ("no_such_key=1", ["no_such_key", "top level"]),
    ("train.lerning_rate=1e-5", ["train.lerning_rate", "learning_rate"]),
    ("agents.verifer.max_turns=2", ["agents.verifer", "verifier"]),
])
def test_unknown_override_names_the_field(override, names):
  with pytest.raises(mconfig.ConfigError) as info:
    mconfig.load_config(MATHCHAT, [override])
  for name in names:
    assert name in str(info.value)


def test_wrong_type_override_names_the_flag():
  with pytest.raises(mconfig.ConfigError) as info:
    mconfig.load_config(MATHCHAT, ["train.num_steps=many"])
  assert "train.num_steps" in str(info.value)


@pytest.mark.parametrize("overrides,field,fix", [
    (["workflow=dsbench"], "agents", "data_engineer"),
    (["rl.kl_placement=loss"], "rl.kl_estimator", "k3"),
    (["rl.kl_estimator=k4"], "rl.kl_estimator", "'k3'"),
    (["rl.whiten_scope=global"], "rl.whiten_scope", "per_agent"),
    (["rl.eps_clip_low=1.5"], "rl.eps_clip_low", "0 < eps_clip_low < 1"),
    (["rl.dual_clip=0.5"], "rl.dual_clip", "c > 1"),
    (["rollout.eval_temperature=-0.1"], "rollout.eval_temperature", ">= 0"),
    (["rollout.min_new_tokens=100"], "rollout.min_new_tokens", "max_new_tokens"),
    (["rollout.n_samples_per_prompt=1", "rl.advantage_estimator=grpo"],
     "rl.advantage_estimator", "n_samples_per_prompt >= 2"),
    (["rollout.engine=sglang"], "rollout.sglang_urls.problem_solver", "http://host"),
    (["rollout.sglang_urls.verifier=('localhost:30000',)"], "rollout.sglang_urls.verifier",
     "http://"),
    (["agents.verifier.max_turns=3"], "agents.verifier.max_turns", "tools"),
    (["agents.problem_solver.sees=('verifier',)"], "agents.problem_solver.sees", "earlier"),
    (["agents.verifier.tools=('shell',)"], "agents.verifier.tools", "python"),
    (["coach.kind=openai"], "coach.base_url", "--config.coach.base_url="),
    (["coach.kind=replay"], "coach.cache_path", "coach_cache"),
    (["coach.kind=panel", "coach.base_url=http://x/v1"], "coach.panel_models", "model-a"),
    (["coach.invalid_policy=drop"], "coach.invalid_policy", "'neutral'"),
    (["model.preset=qwen3-4b"], "model.hf_dir", "required"),
    (["model.hf_dir=/nonexistent/ckpt"], "model.hf_dir", "not a directory"),
    (["model.dtype=float8"], "model.dtype", "bfloat16"),
    (["mesh.fsdp=-1"], "mesh", "at most one axis"),
    (["train.micro_batch_size=3"], "train.micro_batch_size", "divide"),
    (["train.token_budget_buckets=(64, 32)"], "train.token_budget_buckets", "increasing"),
    (["train.token_budget_buckets=(64, 128)"], "train.token_budget_buckets", "a bucket >="),
    (["data.source=files"], "data.train_files", "data.source='synthetic'"),
    (["eval.sets=('aime_2025',)"], "eval.sets", "synthetic"),
    (["checkpoint.keep_best_metric=eval/reward", "eval.every_steps=3"],
     "checkpoint.keep_best_metric", "multiple of eval.every_steps"),
    (["name=my run/1"], "name", "letters"),
    (["faults.agent=coder", "faults.rate=0.5"], "faults.agent", "'code_executor'"),
    (["faults.agent=code_executor", "faults.rate=0.5", "rl.old_logprobs=rollout"],
     "rl.old_logprobs", "'recompute'"),
    (["faults.rate=1.5"], "faults.rate", "0 <= rate <= 1"),
    (["faults.kind=typo"], "faults.kind", "'missing_file'"),
    (["coach.kind=biased"], "coach.bias_task_type", "bias_task_type=<task type>"),
    (["coach.bias_delta=2.0"], "coach.bias_delta", "--config.coach.kind=biased"),
    (["coach.bias_style_pattern=x="], "coach.bias_style_pattern", "bias_inner='rule'"),
    (["coach.bias_inner=openai"], "coach.bias_inner", "--config.coach.bias_inner='openai'"),
    (["coach.kind=biased", "coach.bias_task_type=add_sub", "coach.bias_inner=openai"],
     "coach.base_url", "bias_inner='openai'"),
    (["rl.score_recentre=rolling", "coach_bias.enabled=False"], "rl.score_recentre",
     "'batch'"),
    (["coach_bias.outcome_key=accuracy"], "coach_bias.outcome_key", "'rule_correct'"),
    (["coach_bias.trend_updates=1"], "coach_bias.trend_updates", ">= 2"),
])
def test_invalid_configs_name_field_and_fix(overrides, field, fix):
  # The smoke preset (random model, hf_dir None) is the plain base every check starts from.
  message = _errors(mconfig.load_config(f"{MATHCHAT}:smoke", overrides))
  assert f"{field}:" in message, message
  assert fix in message, message


def test_validation_reports_every_problem_at_once():
  config = mconfig.load_config(MATHCHAT, ["rl.gamma=2.0", "train.num_steps=0",
                                          "sandbox.backend=docker"])
  message = _errors(config)
  assert "3 problems" in message
  for field in ("rl.gamma", "train.num_steps", "sandbox.backend"):
    assert field in message


def _unlocked_copy(config) -> ml_collections.ConfigDict:
  """A hand-written-config stand-in: same content, not type-safe, not locked."""
  return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def test_handwritten_config_wrong_type_missing_and_unknown_fields():
  config = _unlocked_copy(mconfig.load_config(DSBENCH))
  config.train.num_steps = "10"
  del config.coach["rpm_limit"]
  config.rl.kl_coeff = 0.1
  message = _errors(config)
  assert "train.num_steps: '10' has type str; expected int" in message
  assert "coach.rpm_limit: missing" in message
  assert "rl.kl_coeff: unknown field (did you mean 'rl.kl_coef'?)" in message


def test_saved_python_config_rebuilds_the_same_config(tmp_path, hf_dir):
  config = mconfig.load_config(f"{MATHCHAT}:paper", [
      f"model.hf_dir={hf_dir}", "coach.base_url=http://127.0.0.1:1/v1", "rl.kl_coef=0.02"])
  paths = mconfig.save(config, str(tmp_path / "work"))
  assert json.load(open(paths.json_path))["rl"]["kl_coef"] == 0.02
  rebuilt = mconfig.load_config(paths.python_path)
  assert rebuilt.to_dict() == config.to_dict()
  mconfig.validate(rebuilt)
  # None fields stay typed placeholders, so the saved config is still overridable.
  again = mconfig.load_config(paths.python_path, ["rl.dual_clip=3.0"])
  assert again.rl.dual_clip == 3.0


def test_flatten_lists_every_leaf():
  flat = mconfig.flatten(mconfig.load_config(f"{MATHCHAT}:smoke"))
  assert flat["train.learning_rate"] == 1e-4
  assert flat["agents.code_executor.tools"] == ["python"]
  assert flat["model.hf_dir"] is None
  assert all(not isinstance(v, ml_collections.ConfigDict) for v in flat.values())


def test_config_cli_prints_and_validates(capsys):
  assert mconfig.main([MATHCHAT, "train.num_steps=9"]) == 0
  assert "train.num_steps = 9" in capsys.readouterr().out
  assert mconfig.main([f"{MATHCHAT}:paper"]) == 1
  assert "model.hf_dir" in capsys.readouterr().err
