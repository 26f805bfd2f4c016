"""Experiment configs: loading (`path.py:preset` + overrides), validation, and saving.

Configs are `ml_collections.ConfigDict`s built by `experiments/<workflow>.py:get_config(arg)`
and locked, so unknown keys fail at override time. `validate` checks everything else before
anything runs: types, ranges, allowed values, required paths and contradictory options. It
reports every problem at once, each naming the field and the fix.

Every field of a valid config is checked here; a field the validator does not know is an
error too (a typo in a hand-written config file must not be silently ignored), so a new
config field needs one line in `_check` below.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pprint
import re
from typing import Any, Callable, Iterable, Sequence

import ml_collections

# Agents of each workflow, in execution order (ConfigDict iterates keys sorted).
WORKFLOW_AGENTS: dict[str, tuple[str, ...]] = {
    "mathchat": ("problem_solver", "code_executor", "verifier"),
    "dsbench": ("data_engineer", "modeler", "analyst"),
}
TOOLS = ("python",)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


class ConfigError(ValueError):
  """An invalid experiment config; the message names each bad field and its fix."""


def agent_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's agents in workflow execution order."""
  return WORKFLOW_AGENTS[config.workflow]


# ----------------------------------------------------------------------------- loading


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:preset]` and applies command-line style overrides.

  Uses the same `config_flags` parsing as `launch/run.py`, so what works here works there.

  Args:
    spec: config file path, optionally followed by `:preset`.
    overrides: 'train.learning_rate=2e-6' or '--config.train.learning_rate=2e-6'.

  Returns:
    The locked, overridden (not yet validated) config.

  Raises:
    ConfigError: unknown preset, unknown field, or a value of the wrong type.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  argv = ["load_config", f"--config={spec}"]
  argv += [o if o.startswith("--") else f"--config.{o}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(explain_parse_error(e, argv)) from e
  config = flag_values["config"].value
  _ensure_loaded(config)
  return config


def _ensure_loaded(config: Any) -> None:
  """config_flags defers file-loading errors to first use: surface them as ConfigError."""
  if isinstance(config, ml_collections.ConfigDict):
    return
  try:
    getattr(config, "name")
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(str(e).strip()) from e
  raise ConfigError(f"a config must be an ml_collections.ConfigDict, got {type(config)}")


def _override_args(argv: Iterable[str]) -> list[tuple[str, str]]:
  """('train.lr', '--config.train.lr=1') for each `--config.<path>[=value]` argument."""
  out = []
  for arg in argv:
    if arg.startswith("--config."):
      out.append((arg[len("--config."):].split("=", 1)[0], arg))
  return out


def unknown_field_message(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why `path` is not a field of `config` (with close matches), or None if it is one."""
  node: Any = config
  walked = []
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      where = ".".join(walked) or "the top level"
      close = difflib.get_close_matches(part, keys, n=3)
      hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
      return (f"unknown config field {path!r}: {part!r} is not a field of {where} "
              f"(fields: {', '.join(sorted(keys)) or 'none'}).{hint} Configs are locked: "
              "fix the name, or add the field to the experiment file.")
    walked.append(part)
    node = node[part]
  return None


def explain_parse_error(error: BaseException, argv: Sequence[str]) -> str:
  """A readable message for an exception raised while parsing `--config*` flags."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = _override_args(argv)
  if spec is not None and overrides:
    try:
      base = load_config(spec)
    except ConfigError:
      base = None  # the file/preset itself is bad: the original message says why
    if base is not None:
      for path, arg in overrides:
        message = unknown_field_message(base, path)
        if message:
          return f"{arg}: {message}"
  message = str(error)
  if "Traceback (most recent call last)" in message:
    # config_flags embeds the traceback of get_config(); its last line says what went wrong.
    last = [line for line in message.splitlines() if line.strip()][-1]
    message = f"--config={spec}: {last}" if spec is not None else last
  if isinstance(error, (AttributeError, KeyError)) and overrides:
    message = f"unknown config field in {[a for _, a in overrides]}: {message}"
  return message


# -------------------------------------------------------------------------- validation


class _Checker:
  """Collects problems; each check marks its field as known."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.errors: list[str] = []
    self.known: set[str] = set()

  def has(self, path: str) -> bool:
    node: Any = self.config
    for part in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        return False
      node = node[part]
    return True

  def get(self, path: str) -> Any:
    node: Any = self.config
    for part in path.split("."):
      node = node[part]
    return node

  def error(self, path: str, message: str) -> None:
    self.errors.append(f"{path}: {message}")

  def field(self, path: str, kind: str, predicate: Callable[[Any], bool] | None = None,
            fix: str = "", optional: bool = False) -> Any:
    """Checks that `path` exists, has type `kind` and satisfies `predicate`; returns it."""
    self.known.add(path)
    if not self.has(path):
      self.error(path, "missing; start from experiments/<workflow>.py, which sets every field")
      return None
    value = self.get(path)
    if value is None:
      if not optional:
        self.error(path, f"is None; expected {kind}. {fix}".strip())
      return None
    ok_type = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "str tuple": (isinstance(value, (tuple, list))
                      and all(isinstance(v, str) for v in value)),
        "int tuple": (isinstance(value, (tuple, list))
                      and all(isinstance(v, int) and not isinstance(v, bool) for v in value)),
    }[kind]
    if not ok_type:
      self.error(path, f"{value!r} has type {type(value).__name__}; expected {kind}")
      return None
    if predicate is not None and not predicate(value):
      self.error(path, f"{value!r} is invalid. {fix}".strip())
      return None
    return value

  def choice(self, path: str, allowed: Sequence[str]) -> str | None:
    return self.field(path, "str", lambda v: v in allowed,
                      f"Allowed: {', '.join(repr(a) for a in allowed)}.")

  def leaf_paths(self, node: Any = None, prefix: str = "") -> list[str]:
    node = self.config if node is None else node
    out = []
    for key in node.keys():
      value = node[key]
      path = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        out += self.leaf_paths(value, path + ".") if len(value) else [path]
      else:
        out.append(path)
    return out


def _positive(v) -> bool:
  return v > 0


def _non_negative(v) -> bool:
  return v >= 0


def _check(c: _Checker) -> None:
  """Every field, its type and range, then the cross-field rules."""
  c.field("name", "str", lambda v: bool(_NAME_RE.match(v)),
          "Use letters, digits and . _ - = , + (it names the TensorBoard run directory).")
  c.field("seed", "int", _non_negative, "Use an integer >= 0.")
  c.field("preset", "str")
  workflow = c.choice("workflow", tuple(WORKFLOW_AGENTS))

  # model
  model_preset = c.field("model.preset", "str")
  if model_preset is not None:
    try:
      from mappa_jax.models.config import PRESETS  # pylint: disable=g-import-not-at-top
    except ImportError:
      PRESETS = None  # pylint: disable=invalid-name
    if PRESETS is not None and model_preset not in PRESETS:
      c.error("model.preset", f"{model_preset!r} is not a model preset. "
              f"Allowed: {', '.join(sorted(PRESETS))}.")
  hf_dir = c.field("model.hf_dir", "str", optional=True)
  if hf_dir is None and model_preset is not None and not model_preset.startswith("tiny"):
    c.error("model.hf_dir", f"is required for model.preset={model_preset!r} (only tiny presets "
            "are generated). Set --config.model.hf_dir=/path/to/hf_checkpoint (a directory "
            "with config.json, *.safetensors and tokenizer files).")
  if hf_dir is not None and "://" not in hf_dir:
    if not os.path.isdir(hf_dir):
      c.error("model.hf_dir", f"{hf_dir!r} is not a directory. Point it at a Hugging Face "
              "checkpoint directory (config.json, *.safetensors, tokenizer files).")
    elif not os.path.isfile(os.path.join(hf_dir, "config.json")):
      c.error("model.hf_dir", f"{hf_dir!r} has no config.json; it must be a Hugging Face "
              "checkpoint directory (config.json, *.safetensors, tokenizer files).")
  for key in ("param_dtype", "dtype"):
    c.choice(f"model.{key}", ("float32", "bfloat16"))
  c.field("model.remat", "bool")

  # mesh
  fills = 0
  for axis in ("data", "fsdp", "tensor"):
    size = c.field(f"mesh.{axis}", "int", lambda v: v == -1 or v >= 1,
                   "Use -1 (all remaining devices) or a positive size.")
    fills += size == -1
  if fills > 1:
    c.error("mesh", "at most one axis may be -1 (fill); give the others explicit sizes")

  # agents
  names = WORKFLOW_AGENTS.get(workflow, ()) if workflow else ()
  if c.has("agents"):
    got = tuple(c.get("agents").keys())
    if names and set(got) != set(names):
      c.error("agents", f"workflow {workflow!r} needs exactly the agents {list(names)}; got "
              f"{sorted(got)}. Rename or remove agents (or change `workflow`).")
    for position, agent in enumerate(names):
      p = f"agents.{agent}"
      if not c.has(p):
        continue
      c.field(f"{p}.role", "str", bool, "Give the coach's role string.")
      c.field(f"{p}.role_description", "str")
      tools = c.field(f"{p}.tools", "str tuple", lambda v: set(v) <= set(TOOLS),
                      f"Allowed tools: {list(TOOLS)}.")
      turns = c.field(f"{p}.max_turns", "int", _positive, "Use an integer >= 1.")
      if turns is not None and turns > 1 and tools == ():
        c.error(f"{p}.max_turns", f"= {turns} has no effect without tools (an agent acts again "
                f"only after a tool result); set it to 1 or give {p}.tools=('python',)")
      upstream = names[:position]
      c.field(f"{p}.sees", "str tuple", lambda v, up=upstream: set(v) <= set(up),
              f"An agent can only see earlier agents: {list(upstream) or 'none'}.")
      c.field(f"{p}.sees_ground_truth_in_coach", "bool")
  else:
    c.field("agents", "str")  # reports it missing

  # rollout
  c.choice("rollout.engine", ("inprocess", "sglang"))
  if c.has("rollout.sglang_urls"):
    urls = c.get("rollout.sglang_urls")
    if set(urls.keys()) != set(names):
      c.error("rollout.sglang_urls", f"needs one entry per agent {list(names)}; got "
              f"{sorted(urls.keys())}")
    for agent in urls.keys():
      c.field(f"rollout.sglang_urls.{agent}", "str tuple",
              lambda v: all(u.startswith(("http://", "https://")) for u in v),
              "URLs must start with http:// or https://.")
      if (c.get("rollout.engine") == "sglang" and not urls[agent]):
        c.error(f"rollout.sglang_urls.{agent}", "is empty but rollout.engine='sglang'; set "
                f"--config.rollout.sglang_urls.{agent}='(\"http://host:30000\",)'")
  else:
    c.field("rollout.sglang_urls", "str")
  c.field("rollout.temperature", "number", _non_negative, "Use >= 0 (0 = greedy).")
  c.field("rollout.eval_temperature", "number", _non_negative, "Use >= 0 (0 = greedy).")
  c.field("rollout.top_p", "number", lambda v: 0 < v <= 1, "Use 0 < top_p <= 1 (1 = off).")
  c.field("rollout.top_k", "int", _non_negative, "Use >= 0 (0 = off).")
  max_new = c.field("rollout.max_new_tokens", "int", _positive, "Use >= 1.")
  min_new = c.field("rollout.min_new_tokens", "int", _non_negative, "Use >= 0.")
  if max_new is not None and min_new is not None and min_new >= max_new:
    c.error("rollout.min_new_tokens", f"= {min_new} must be < rollout.max_new_tokens "
            f"({max_new}); lower it or raise max_new_tokens")
  n_samples = c.field("rollout.n_samples_per_prompt", "int", _positive, "Use >= 1.")
  c.field("rollout.rollout_batch_size", "int", _positive, "Use >= 1.")
  c.field("rollout.max_concurrent_workflows", "int", _positive, "Use >= 1.")
  prompt_max = c.field("rollout.prompt_max_len", "int", _positive, "Use >= 1.")
  for key in ("prompt_buckets", "batch_buckets"):
    c.field(f"rollout.{key}", "int tuple",
            lambda v: all(b > 0 for b in v) and all(a < b for a, b in zip(v, v[1:])),
            "Use () for the sampler's defaults or a strictly increasing tuple of sizes.")
  prompt_buckets = c.get("rollout.prompt_buckets") if c.has("rollout.prompt_buckets") else ()
  if prompt_buckets and prompt_max is not None and prompt_buckets[-1] < prompt_max:
    c.error("rollout.prompt_buckets", f"the largest bucket ({prompt_buckets[-1]}) cannot hold "
            f"rollout.prompt_max_len ({prompt_max}); add a bucket >= {prompt_max}")

  # coach
  kind = c.choice("coach.kind", ("rule", "openai", "panel", "replay"))
  c.field("coach.model", "str")
  base_url = c.field("coach.base_url", "str", lambda v: v.startswith(("http://", "https://")),
                     "It must start with http:// or https://.", optional=True)
  if kind in ("openai", "panel") and base_url is None:
    c.error("coach.base_url", f"is required for coach.kind={kind!r}: set "
            "--config.coach.base_url=https://host/v1 (an OpenAI-compatible endpoint), or use "
            "coach.kind='rule' / 'replay'")
  if kind == "openai" and not c.get("coach.model"):
    c.error("coach.model", "is empty; coach.kind='openai' needs the model name to request")
  c.field("coach.api_key_env", "str")
  c.field("coach.temperature", "number", _non_negative, "Use >= 0.")
  c.field("coach.max_output_tokens", "int", _positive, "Use >= 1 or None.", optional=True)
  c.field("coach.max_concurrency", "int", _positive, "Use >= 1.")
  c.field("coach.rpm_limit", "int", _non_negative, "Use >= 0 (0 = unlimited).")
  c.field("coach.timeout_s", "number", _positive, "Use > 0.")
  c.field("coach.max_retries", "int", _non_negative, "Use >= 0.")
  c.field("coach.format_retry", "bool")
  c.field("coach.circuit_breaker_failures", "int", _positive, "Use >= 1.")
  cache = c.field("coach.cache_path", "str", optional=True)
  if kind == "replay" and cache is None:
    c.error("coach.cache_path", "is required for coach.kind='replay' (the cache to answer "
            "from); set --config.coach.cache_path=/path/to/coach_cache.jsonl")
  c.choice("coach.invalid_policy", ("mask", "neutral"))
  c.field("coach.neutral_score", "number", lambda v: 0 <= v <= 10, "Use a score in [0, 10].")
  c.field("coach.tool_observation_head_chars", "int", _non_negative, "Use >= 0.")
  c.field("coach.tool_observation_tail_chars", "int", _non_negative, "Use >= 0.")
  members = c.field("coach.panel_models", "str tuple")
  if kind == "panel" and not members:
    c.error("coach.panel_models", "is empty but coach.kind='panel'; list the member models, "
            "e.g. --config.coach.panel_models='(\"model-a\", \"model-b\")'")
  c.choice("coach.panel_aggregate", ("mean", "median"))
  c.field("coach.prices.input_per_mtok", "number", _non_negative, "Use >= 0 (USD).")
  c.field("coach.prices.output_per_mtok", "number", _non_negative, "Use >= 0 (USD).")

  # rl
  c.field("rl.kl_coef", "number", _non_negative, "Use >= 0 (0 disables the KL penalty).")
  estimator = c.choice("rl.kl_estimator", ("k1", "k2", "k3"))
  placement = c.choice("rl.kl_placement", ("reward", "loss", "none"))
  if placement == "loss" and estimator == "k1":
    c.error("rl.kl_estimator", "'k1' as a loss term has zero expected gradient of the KL; with "
            "rl.kl_placement='loss' use 'k3' (or 'k2'), or keep kl_placement='reward'")
  c.field("rl.gamma", "number", lambda v: 0 <= v <= 1, "Use 0 <= gamma <= 1.")
  c.field("rl.return_across_actions", "bool")
  c.field("rl.reward_scale", "number", _positive, "Use > 0 (0.1 maps scores to [0, 1]).")
  c.choice("rl.whiten_scope", ("per_agent", "pooled", "per_agent_per_stratum", "none"))
  c.choice("rl.whiten_weighting", ("token", "action"))
  c.field("rl.whiten_truncated", "bool")
  c.field("rl.eps_clip_low", "number", lambda v: 0 < v < 1, "Use 0 < eps_clip_low < 1.")
  c.field("rl.eps_clip_high", "number", _positive, "Use eps_clip_high > 0.")
  c.field("rl.dual_clip", "number", lambda v: v > 1, "Use c > 1, or None (off).",
          optional=True)
  c.choice("rl.loss_agg", ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum"))
  c.field("rl.mask_truncated", "bool")
  estimator = c.choice("rl.advantage_estimator",
                       ("reinforce_pp", "reinforce_pp_baseline", "grpo", "outcome"))
  if estimator in ("grpo", "reinforce_pp_baseline") and n_samples is not None and n_samples < 2:
    c.error("rl.advantage_estimator", f"{estimator!r} needs a group baseline, i.e. "
            "rollout.n_samples_per_prompt >= 2; raise it or use 'reinforce_pp'")
  c.field("rl.reference_context_bug", "bool")
  c.choice("rl.impl", ("xla", "pallas"))

  # train
  c.field("train.learning_rate", "number", _positive, "Use > 0.")
  c.field("train.warmup_ratio", "number", lambda v: 0 <= v < 1, "Use 0 <= warmup_ratio < 1.")
  c.field("train.min_lr_ratio", "number", lambda v: 0 <= v <= 1, "Use 0 <= min_lr_ratio <= 1.")
  c.field("train.lr_decay_steps", "int", _positive, "Use >= 1 or None (derived).",
          optional=True)
  c.field("train.b1", "number", lambda v: 0 <= v < 1, "Use 0 <= b1 < 1.")
  c.field("train.b2", "number", lambda v: 0 <= v < 1, "Use 0 <= b2 < 1.")
  c.field("train.weight_decay", "number", _non_negative, "Use >= 0.")
  c.field("train.max_grad_norm", "number", _non_negative, "Use >= 0 (0 = no clipping).")
  c.field("train.fp32_master_weights", "bool")
  c.field("train.pack_sequences", "bool")
  per_step = c.field("train.samples_per_optimizer_step", "int", _positive, "Use >= 1.")
  micro = c.field("train.micro_batch_size", "int", _positive, "Use >= 1.")
  if per_step is not None and micro is not None and per_step % micro:
    c.error("train.micro_batch_size", f"= {micro} must divide "
            f"train.samples_per_optimizer_step ({per_step})")
  c.field("train.num_steps", "int", _positive, "Use >= 1.")
  buckets = c.field("train.token_budget_buckets", "int tuple",
                    lambda v: len(v) > 0 and all(b > 0 for b in v)
                    and all(a < b for a, b in zip(v, v[1:])),
                    "Use a non-empty, strictly increasing tuple of positive lengths.")
  if buckets and prompt_max is not None and max_new is not None \
      and buckets[-1] < prompt_max + max_new:
    c.error("train.token_budget_buckets", f"the largest bucket ({buckets[-1]}) cannot hold "
            f"rollout.prompt_max_len + rollout.max_new_tokens ({prompt_max + max_new}); add "
            f"a bucket >= {prompt_max + max_new}")

  # data
  source = c.choice("data.source", ("synthetic", "files"))
  train_files = c.field("data.train_files", "str tuple")
  eval_files = c.field("data.eval_files", "str tuple")
  if source == "files" and not train_files:
    c.error("data.train_files", "is empty but data.source='files'; set "
            "--config.data.train_files='(\"path/train.json\",)' or data.source='synthetic'")
  c.field("data.max_train_samples", "int", _non_negative, "Use >= 0 (0 = all).")
  c.field("data.subsample_seed", "int", _non_negative, "Use >= 0.")
  c.field("data.prompt_suffix", "str")
  c.field("data.allow_eval_overlap", "bool")
  for key in ("cleaned_prompts_file", "stratify_key", "dsbench_root"):  # DSBench only
    if c.has(f"data.{key}"):
      c.field(f"data.{key}", "str")
  c.field("data.synthetic.seed", "int", _non_negative, "Use >= 0.")
  n_train = c.field("data.synthetic.n_train", "int", _non_negative, "Use >= 0.")
  c.field("data.synthetic.n_eval", "int", _non_negative, "Use >= 0.")
  c.field("data.synthetic.difficulty", "int", _positive, "Use >= 1.")
  if source == "synthetic" and n_train == 0:
    c.error("data.synthetic.n_train", "is 0 but data.source='synthetic'; use >= 1")

  # sandbox
  sandbox_backend = c.choice("sandbox.backend", ("auto", "bwrap", "process"))
  unisolated = c.field("sandbox.allow_unisolated", "bool")
  if sandbox_backend == "process" and unisolated is False:  # fail closed: an explicit opt-in
    c.error("sandbox.backend", "= 'process' runs model-written code with NO isolation and "
            "needs sandbox.allow_unisolated=true (--config.sandbox.allow_unisolated=true) to "
            "accept that; or use backend='auto'/'bwrap' (`apt-get install bubblewrap`)")
  c.field("sandbox.timeout_s", "number", _positive, "Use > 0.")
  c.field("sandbox.memory_mb", "int", _positive, "Use >= 1.")
  c.field("sandbox.max_concurrency", "int", _positive, "Use >= 1.")
  c.field("sandbox.output_cap_chars", "int", _positive, "Use >= 1.")

  # eval
  eval_every = c.field("eval.every_steps", "int", _non_negative, "Use >= 0 (0 = never).")
  c.field("eval.at_start", "bool")
  c.field("eval.n_samples_per_prompt", "int", _positive, "Use >= 1.")
  available = (("synthetic",) if source == "synthetic" else
               tuple(os.path.splitext(os.path.basename(f))[0] for f in eval_files or ()))
  c.field("eval.sets", "str tuple", lambda v: set(v) <= set(available),
          f"Eval sets must be among {list(available)} (stems of data.eval_files, or "
          "'synthetic'); () means all.")

  # checkpoint
  ckpt_every = c.field("checkpoint.every_steps", "int", _non_negative, "Use >= 0 (0 = never).")
  c.field("checkpoint.keep_last", "int", _positive, "Use >= 1.")
  best = c.field("checkpoint.keep_best_metric", "str")
  c.choice("checkpoint.best_mode", ("max", "min"))
  c.field("checkpoint.async_save", "bool")
  if best and ckpt_every == 0:
    c.error("checkpoint.keep_best_metric", f"= {best!r} but checkpoint.every_steps=0 (no "
            "checkpoints); set every_steps > 0 or keep_best_metric=''")
  if best and best.startswith("eval/") and ckpt_every and eval_every is not None:
    if eval_every == 0 or ckpt_every % eval_every:
      c.error("checkpoint.keep_best_metric", f"= {best!r} is measured every eval.every_steps="
              f"{eval_every} steps, which never coincides with checkpoint.every_steps="
              f"{ckpt_every}; make checkpoint.every_steps a multiple of eval.every_steps")

  # logging
  c.field("logging.every_steps", "int", _positive, "Use >= 1.")
  c.field("logging.tensorboard", "bool")
  c.field("logging.text_samples_per_step", "int", _non_negative, "Use >= 0.")

  for path in c.leaf_paths():
    if path not in c.known and not any(path.startswith(k + ".") for k in c.known):
      parent, _, leaf = path.rpartition(".")
      siblings = [k.rpartition(".")[2] for k in c.known if k.rpartition(".")[0] == parent]
      close = difflib.get_close_matches(leaf, siblings, n=1)
      hint = f" (did you mean {(parent + '.' if parent else '') + close[0]!r}?)" if close else ""
      c.error(path, f"unknown field{hint}; remove it, or teach mappa_jax/config.py about it")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a config before anything runs; returns it unchanged.

  Raises:
    ConfigError: listing every problem, one line each: `field: problem. fix`.
  """
  _ensure_loaded(config)
  checker = _Checker(config)
  _check(checker)
  if checker.errors:
    lines = "\n".join(f"  - {e}" for e in checker.errors)
    raise ConfigError(f"invalid config ({len(checker.errors)} problem"
                      f"{'s' if len(checker.errors) > 1 else ''}):\n{lines}")
  return config


# ------------------------------------------------------------------------------ saving


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'train.learning_rate': 1e-06, ...} with tuples as lists and None kept."""
  out: dict[str, Any] = {}
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def to_python(config: ml_collections.ConfigDict, header: str = "") -> str:
  """Source of a config file that rebuilds `config` exactly (usable as --config=...).

  None fields become typed placeholders so they stay overridable.
  """

  def render(node: ml_collections.ConfigDict, indent: str) -> str:
    lines = ["ml_collections.ConfigDict({"]
    for key in node.keys():
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        text = render(value, indent + "    ")
      elif value is None:
        field_type = node.get_type(key)
        type_name = field_type.__name__ if field_type not in (type(None), None) else "object"
        text = f"config_dict.placeholder({type_name})"
      else:
        text = pprint.pformat(value, width=200)
      lines.append(f"{indent}    {key!r}: {text},")
    lines.append(f"{indent}}})")
    return "\n".join(lines)

  doc = header or "Resolved experiment config written by launch/run.py."
  return (f'"""{doc}"""\nimport ml_collections\nfrom ml_collections import config_dict\n\n\n'
          f"def get_config(arg=None):\n  del arg\n  config = {render(config, '  ')}\n"
          "  config.lock()\n  return config\n")


@dataclasses.dataclass(frozen=True)
class SavedConfig:
  json_path: str
  python_path: str


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def previous_configs(workdir: str) -> list[str]:
  """The config.<n>.py files `save` kept in `workdir`, oldest first."""
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  kept = sorted((int(m.group(1)), n) for n in names
                if (m := re.fullmatch(r"config\.(\d+)\.py", n)))
  return [os.path.join(workdir, n) for _, n in kept]


def save(config: ml_collections.ConfigDict, workdir: str, header: str = "") -> SavedConfig:
  """Writes <workdir>/config.json and <workdir>/config.py (atomically, via rename).

  A workdir that already holds a different config (a resume with changed settings) keeps it as
  config.<n>.json / config.<n>.py (n = 1, 2, ...) first: the config that wrote the existing
  checkpoints is never lost, and an incompatible resume can name it.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = SavedConfig(os.path.join(workdir, "config.json"), os.path.join(workdir, "config.py"))
  new_json = to_json(config)
  if os.path.isfile(paths.json_path) and _read(paths.json_path) != new_json:
    kept = previous_configs(workdir)
    n = int(re.fullmatch(r".*config\.(\d+)\.py", kept[-1]).group(1)) + 1 if kept else 1
    for path in (paths.json_path, paths.python_path):
      if os.path.isfile(path):
        stem, ext = os.path.splitext(path)
        os.replace(path, f"{stem}.{n}{ext}")
  for path, text in ((paths.json_path, new_json),
                     (paths.python_path, to_python(config, header))):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  return paths


__all__ = ["ConfigError", "WORKFLOW_AGENTS", "agent_names", "load_config", "validate",
           "flatten", "to_json", "to_python", "save", "previous_configs", "explain_parse_error",
           "unknown_field_message"]


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m mappa_jax.config path.py[:preset] [field=value ...]`: print and validate."""
  import sys  # pylint: disable=g-import-not-at-top
  args = list(sys.argv[1:] if argv is None else argv)
  if not args or args[0].startswith("-"):
    print("usage: python -m mappa_jax.config experiments/<file>.py[:preset] [field=value ...]",
          file=sys.stderr)
    return 2
  try:
    config = load_config(args[0], args[1:])
  except ConfigError as e:
    print(f"FATAL: {e}", file=sys.stderr)
    return 1
  for path, value in flatten(config).items():
    print(f"{path} = {value!r}")
  try:
    validate(config)
  except ConfigError as e:
    print(f"\n{e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
