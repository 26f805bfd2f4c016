"""Experiment configs: the schema (`Experiment`) and its validation; loading files with
overrides and saving the resolved config are in config_files.py (re-exported here).

An experiment is one frozen dataclass per config section (each next to the code it configures:
`RLConfig` in rl/config.py, `SandboxConfig` in tools/sandbox.py, ...); their fields are the
config's fields, with their defaults and one-line docs. `default_config(workflow)` generates
the ConfigDict an experiment file (`experiments/<workflow>.py:get_config(arg)`) starts from:
the file only sets values, and returns it locked, so an unknown key fails at override time
with its close matches. `experiment(config)` reads a ConfigDict back into the typed sections;
that construction is the validation (types, ranges, allowed values, each section's own rules),
followed by the few rules between sections (`Experiment.problems`). Every problem is reported
at once, each naming the field and the fix.

Defaults are the reference's values (mappa-reference.md §3.1) where they need nothing that is
not here; where the reference needs a checkpoint, an endpoint or data files, the default is the
offline stand-in (tiny model, rule coach, synthetic tasks) and the `paper` presets name the
real ones. A new option is one field in its section's dataclass.

    python -m mappa_jax.config experiments/mathchat.py:paper [field=value ...]
"""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any, Mapping, Sequence

import ml_collections

from mappa_jax import workflows
from mappa_jax.checkpoint import CheckpointConfig
from mappa_jax.coach.bias_guard import BiasGuardConfig
from mappa_jax.coach.config import CoachConfig
# Loading and saving a config's files are part of this module's API.
from mappa_jax.config_files import (ensure_loaded, explain_parse_error, flatten, load_config,
                                    previous_configs, save, to_json, to_python,
                                    unknown_field_message)
from mappa_jax.data.config import DataConfig
from mappa_jax.eval.runner import EvalConfig
from mappa_jax.metrics import LoggingConfig
from mappa_jax.rl.config import RLConfig, TrainConfig
from mappa_jax.rl.team import BaseModelConfig
from mappa_jax.rollout.config import RolloutConfig
from mappa_jax.schema import ConfigError, Section, field, from_configdict, to_configdict
from mappa_jax.schema import walk_docs
from mappa_jax.sharding import MeshConfig
from mappa_jax.tools.sandbox import SandboxConfig
from mappa_jax.workflows.base import AgentConfig
from mappa_jax.workflows.faults import FaultsConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment(Section):
  """A whole experiment: run identity plus one typed section per part of the system."""
  name: str = field("run", "run name: TensorBoard run directory <workdir>/tensorboard/<name>",
                    check=lambda v: bool(_NAME_RE.match(v)),
                    fix="Use letters, digits and . _ - = , + (it names the TensorBoard run "
                    "directory).")
  seed: int = field(42, "REF global seed", check=lambda v: v >= 0, fix="Use an integer >= 0.")
  workflow: str = field("mathchat", "which workflow drives the agents (mappa_jax.workflows)",
                        check=lambda v: v in workflows.names(),
                        fix=f"Allowed: {', '.join(repr(n) for n in workflows.names())}.")
  preset: str = field("", "the preset this config was built from (informational)")
  model: BaseModelConfig = field(BaseModelConfig(), "the base checkpoint")
  mesh: MeshConfig = field(MeshConfig(), "the device mesh")
  agents: dict[str, AgentConfig] = field({}, "the team, one section per agent")
  rollout: RolloutConfig = field(RolloutConfig(), "sampling and rollout sizes")
  coach: CoachConfig = field(CoachConfig(), "the coach scoring every action")
  coach_bias: BiasGuardConfig = field(BiasGuardConfig(), "the bias guard watching the coach's "
                                      "score gaps between task types")
  faults: FaultsConfig = field(FaultsConfig(), "fault injection: one agent makes a realistic "
                               "mistake at a given rate (credit-assignment experiments)")
  rl: RLConfig = field(RLConfig(), "the RL objective")
  train: TrainConfig = field(TrainConfig(), "optimizer, batching and run length")
  data: DataConfig = field(DataConfig(), "training and eval tasks (the workflow's section)")
  sandbox: SandboxConfig = field(SandboxConfig(), "where model-written code runs")
  eval: EvalConfig = field(EvalConfig(), "evaluations during training")
  checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpoints")
  logging: LoggingConfig = field(LoggingConfig(), "TensorBoard logging")

  @classmethod
  def field_types(cls, node: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` section is the workflow's own (Workflow.DATA)."""
    types = super().field_types(node)
    if node.get("workflow") in workflows.names():
      types["data"] = workflows.get(node["workflow"]).DATA
    return types

  @property
  def workflow_class(self) -> type:
    return workflows.get(self.workflow)

  @property
  def agent_names(self) -> tuple[str, ...]:
    """The agents in workflow execution order."""
    return tuple(self.workflow_class.AGENTS)

  @staticmethod
  def team_problem(workflow: Any, agents: tuple[str, ...]) -> tuple[str, str] | None:
    """('agents', why) unless `agents` are exactly the workflow's."""
    if workflow not in workflows.names():
      return None
    names = tuple(workflows.get(workflow).AGENTS)
    if set(agents) == set(names):
      return None
    return ("agents", f"workflow {workflow!r} needs exactly the agents {list(names)}; got "
            f"{sorted(agents)}. Rename or remove agents (or change `workflow`).")

  def problems(self) -> list[tuple[str, str]]:
    """The rules between sections."""
    found: list[tuple[str, str]] = []
    names = self.agent_names
    team = self.team_problem(self.workflow, tuple(self.agents))
    if team:
      found.append(team)
    else:
      for position, agent in enumerate(names):
        upstream = names[:position]
        if not set(self.agents[agent].sees) <= set(upstream):
          found.append((f"agents.{agent}.sees", f"{self.agents[agent].sees!r} is invalid. An "
                        f"agent can only see earlier agents: {list(upstream) or 'none'}."))
    if set(self.rollout.sglang_urls) != set(names):
      found.append(("rollout.sglang_urls", f"needs one entry per agent {list(names)}; got "
                    f"{sorted(self.rollout.sglang_urls)}"))
    estimator, n_samples = self.rl.advantage_estimator, self.rollout.n_samples_per_prompt
    if estimator in ("grpo", "reinforce_pp_baseline") and n_samples < 2:
      found.append(("rl.advantage_estimator", f"{estimator!r} needs a group baseline, i.e. "
                    "rollout.n_samples_per_prompt >= 2; raise it or use 'reinforce_pp'"))
    longest = self.rollout.prompt_max_len + self.rollout.max_new_tokens
    if self.train.token_budget_buckets[-1] < longest:
      found.append(("train.token_budget_buckets", f"the largest bucket "
                    f"({self.train.token_budget_buckets[-1]}) cannot hold rollout.prompt_max_len"
                    f" + rollout.max_new_tokens ({longest}); add a bucket >= {longest}"))
    available = self.data.eval_set_names(self.workflow_class.SYNTHETIC_SET)
    if not set(self.eval.sets) <= set(available):
      found.append(("eval.sets", f"{self.eval.sets!r} is invalid. Eval sets must be among "
                    f"{list(available)} (stems of data.eval_files, or the synthetic set); () "
                    "means all."))
    found += self._fault_and_bias_problems(names)
    best, ckpt_every, eval_every = (self.checkpoint.keep_best_metric,
                                    self.checkpoint.every_steps, self.eval.every_steps)
    if best.startswith("eval/") and ckpt_every and (eval_every == 0 or ckpt_every % eval_every):
      found.append(("checkpoint.keep_best_metric", f"= {best!r} is measured every "
                    f"eval.every_steps={eval_every} steps, which never coincides with "
                    f"checkpoint.every_steps={ckpt_every}; make checkpoint.every_steps a "
                    "multiple of eval.every_steps"))
    return found


  def _fault_and_bias_problems(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """The `faults` and `coach_bias` sections against the workflow and the `rl` section."""
    found: list[tuple[str, str]] = []
    faults = self.faults
    if faults.agent and faults.agent not in names:
      found.append(("faults.agent", f"{faults.agent!r} is not an agent of workflow "
                    f"{self.workflow!r}; use one of {list(names)}, or '' (no injection)"))
    if faults.enabled and self.rl.old_logprobs == "rollout":
      found.append(("rl.old_logprobs", "'rollout' with faults on: rewritten tokens were not "
                    "sampled and carry rollout logprob 0.0, so the PPO ratio would be wrong; use "
                    "rl.old_logprobs='recompute' (or faults.rate=0)"))
    keys = tuple(self.workflow_class.OUTCOME_KEYS) if self.workflow in workflows.names() else ()
    if self.coach_bias.outcome_key and self.coach_bias.outcome_key not in keys:
      found.append(("coach_bias.outcome_key", f"{self.coach_bias.outcome_key!r} is not an "
                    f"outcome of workflow {self.workflow!r}; use one of {list(keys)}, or '' "
                    "(its reward outcome)"))
    if self.rl.score_recentre == "rolling" and not self.coach_bias.enabled:
      found.append(("rl.score_recentre", "'rolling' uses the bias guard's means but "
                    "coach_bias.enabled=False; enable the guard or use 'batch'"))
    return found

  @property
  def bias_outcome_key(self) -> str:
    """The outcome the bias guard compares strata on (coach_bias.outcome_key, else the
    workflow's reward outcome)."""
    return self.coach_bias.outcome_key or self.workflow_class.REWARD_OUTCOME_KEY


def default_config(workflow: str) -> ml_collections.ConfigDict:
  """The (unlocked) ConfigDict of `workflow` with every field at its default: the starting
  point of an experiment file."""
  cls = workflows.get(workflow)
  return to_configdict(Experiment(
      workflow=workflow, agents=dict(cls.AGENTS), data=cls.DATA(),
      rollout=RolloutConfig(sglang_urls={a: () for a in cls.AGENTS})))


def experiment(config: ml_collections.ConfigDict) -> Experiment:
  """The typed sections of a config, checked.

  Raises:
    ConfigError: listing every problem, one line each: `field: problem. fix`.
  """
  ensure_loaded(config)
  try:
    return from_configdict(Experiment, config)
  except ConfigError as e:
    # The team is checked even when other sections fail: the wrong workflow for these agents
    # is the one problem that explains the others.
    team = Experiment.team_problem(config.get("workflow"), tuple(config.get("agents", {})))
    if team and team not in e.problems:
      raise ConfigError([team] + e.problems) from None
    raise


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a config before anything runs; returns it unchanged (see `experiment`)."""
  experiment(config)
  return config


def agent_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config's agents in workflow execution order (ConfigDict iterates keys sorted)."""
  return tuple(workflows.get(config.workflow).AGENTS)


__all__ = ["ConfigError", "Experiment", "agent_names", "default_config", "experiment",
           "load_config", "validate", "flatten", "to_json", "to_python", "save",
           "previous_configs", "explain_parse_error", "unknown_field_message"]


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m mappa_jax.config path.py[:preset] [field=value ...]`: print every field with
  its doc, then validate."""
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
  docs = walk_docs(Experiment, config)
  values = flatten(config)
  width = max(len(f"{p} = {v!r}") for p, v in values.items())
  for path, value in values.items():
    text = f"{path} = {value!r}"
    print(f"{text:<{min(width, 60)}}  # {docs[path]}" if docs.get(path) else text)
  try:
    validate(config)
  except ConfigError as e:
    print(f"\n{e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
