"""The team of agents being trained: each agent's weights, optimizer and compiled update.

  team = Team(exp, model_dir, mesh, outcome_key=workflow.REWARD_OUTCOME_KEY)
  batches, metrics = team.experience(trajectories)   # one TrainBatch per agent
  metrics, rng = team.update(batches, rng)           # one jitted update per agent
  await team.publish(engine, version)                # the new weights to the rollout engine

Every agent starts from the same base checkpoint (the `model` section) and owns its copy of the
weights; one frozen reference copy is shared by all. Agents with equal settings share one
compiled update. Across processes the batch of every agent is assembled into one global batch
(rl/global_batch.py) and the engine samples with a process-local replica of the weights; in one
process both are the arrays themselves.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mappa_jax import distributed
from mappa_jax import sharding
from mappa_jax.models import hf_io
from mappa_jax.models import tiny
from mappa_jax.models.config import PRESETS
from mappa_jax.rl import global_batch
from mappa_jax.rl import objectives
from mappa_jax.rl import stratum
from mappa_jax.rl.config import UpdateConfig
from mappa_jax.rl.experience import TrainBatch, build_train_batch
from mappa_jax.rl.update import TrainState, advantage_stats_fn, init_train_state, make_update_step
from mappa_jax.rollout.types import RolloutEngine
from mappa_jax.schema import Section, field
from mappa_jax.workflows.records import Trajectory

log = logging.getLogger(__name__)
_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseModelConfig(Section):
  """The `model` section: the checkpoint every agent starts from."""
  hf_dir: str | None = field(None, "Hugging Face checkpoint directory (config.json, "
                             "*.safetensors, tokenizer files); None = generate the embedded "
                             "random tiny model (tiny presets only)")
  preset: str = field("tiny-qwen3", "architecture preset (mappa_jax.models.config.PRESETS); with "
                      "hf_dir set, the checkpoint's config.json wins and this only names it",
                      check=lambda v: v in PRESETS,
                      fix=f"Allowed: {', '.join(sorted(PRESETS))}.")
  param_dtype: str = field("float32", "storage dtype of the weights", check=lambda v: v in _DTYPES,
                           fix="Allowed: 'float32', 'bfloat16'.")
  dtype: str = field("float32", "compute dtype of the activations", check=lambda v: v in _DTYPES,
                     fix="Allowed: 'float32', 'bfloat16'.")
  remat: bool = field(False, "rematerialise decoder layers in the backward pass (saves memory)")

  def problems(self) -> list[tuple[str, str]]:
    ckpt = "a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer files)"
    if not self.hf_dir:  # None or '': the generated tiny model
      if not self.preset.startswith("tiny"):
        return [("hf_dir", f"is required for model.preset={self.preset!r} (only tiny presets "
                 "are generated). Set --config.model.hf_dir=/path/to/hf_checkpoint (" + ckpt +
                 ").")]
    elif "://" not in self.hf_dir:
      if not os.path.isdir(self.hf_dir):
        return [("hf_dir", f"{self.hf_dir!r} is not a directory. Point it at {ckpt}.")]
      if not os.path.isfile(os.path.join(self.hf_dir, "config.json")):
        return [("hf_dir", f"{self.hf_dir!r} has no config.json; it must be {ckpt}.")]
    return []


def model_dir(cfg: BaseModelConfig, workdir: str, seed: int) -> str:
  """The checkpoint every agent starts from: hf_dir, or the embedded tiny model written (once)
  to <workdir>/tiny_model."""
  if cfg.hf_dir:
    return cfg.hf_dir
  path = os.path.join(workdir, "tiny_model")
  if not os.path.exists(os.path.join(path, "config.json")):
    arch = "qwen2" if "qwen2" in cfg.preset else "qwen3"
    tiny.write_tiny_model(path, architecture=arch, seed=seed)
  return path


def schedule_horizon(exp, agent: str) -> int:
  """An agent's schedule horizon in optimizer steps: train.lr_decay_steps, else its most
  actions per step over the whole run (FIX §10.10: the reference counts one action per
  trajectory, so multi-turn agents overran it)."""
  if exp.train.lr_decay_steps:
    return exp.train.lr_decay_steps
  per_step = (exp.rollout.rollout_batch_size * exp.rollout.n_samples_per_prompt
              * exp.agents[agent].max_turns)
  return max(1, math.ceil(per_step / exp.train.samples_per_optimizer_step)
             * exp.train.num_steps)


def _copy_tree(tree):
  # Each agent owns its buffers: update steps donate them, so no two agents (nor the frozen
  # reference) may share an array.
  return jax.tree.map(jnp.copy, tree)


class Team:
  """Per-agent training state, update and publishing (agents in workflow order).

  Args:
    exp: the experiment (mappa_jax.config.Experiment): model, rl, train, rollout, coach, agents.
    model_dir: the base checkpoint (see `model_dir`).
    mesh: the device mesh every agent's update runs on.
    agents: agent names in workflow order.
    outcome_key: the trajectory outcome rl.advantage_estimator='outcome' rewards.
  """

  def __init__(self, exp, model_dir: str, mesh, agents: tuple[str, ...], outcome_key: str):
    self.agents = agents
    self.mesh = mesh
    m = exp.model
    base = hf_io.load_hf(model_dir, mesh=mesh, param_dtype=m.param_dtype, dtype=m.dtype,
                         remat=m.remat)
    self.graphdef, self.ref_params = nnx.split(base, nnx.Param)
    # Logprobs of the sampling policy: greedy rollouts (T=0) are scored at T=1.
    self.configs = {a: UpdateConfig.of(exp.rl, exp.train, max_steps=schedule_horizon(exp, a),
                                       temperature=exp.rollout.temperature or 1.0,
                                       outcome_key=outcome_key) for a in agents}
    # coach.invalid_policy: an unscorable action is masked, or scored neutral_score.
    self.neutral_score = (exp.coach.neutral_score if exp.coach.invalid_policy == "neutral"
                          else None)
    self.states: dict[str, TrainState] = {}
    self._models: dict[str, nnx.Module] = {}
    step_fns: dict[UpdateConfig, Any] = {}
    for agent in agents:
      model = nnx.merge(self.graphdef, _copy_tree(self.ref_params))
      cfg = self.configs[agent]
      _, self.states[agent] = init_train_state(model, cfg, mesh)
      self._models[agent] = model
      if cfg not in step_fns:  # agents with equal settings share one compiled step
        step_fns[cfg] = make_update_step(self.graphdef, cfg, mesh=mesh)
    self.step_fns = {a: step_fns[self.configs[a]] for a in agents}
    self._stats_fns: dict[str, Any] = {}

  def models(self) -> dict[str, nnx.Module]:
    """What the rollout engine samples with: the agents' own models in one process, process-local
    replicas (collective) when the weights are global arrays across processes."""
    if distributed.process_count() == 1:
      return dict(self._models)
    return {a: nnx.merge(self.graphdef, global_batch.local_replica(self.states[a].params))
            for a in self.agents}

  # -------------------------------------------------------------------------- experience

  def experience(self, trajs: list[Trajectory],
                 stratum_means: Callable[[str], Mapping[str, float]] | None = None
                 ) -> tuple[dict[str, TrainBatch], dict[str, float]]:
    """Every agent's actions -> its TrainBatch (global across processes); agents without
    actions are left out (their update is skipped).

    stratum_means: agent -> {stratum: mean coach score} (the bias guard's window), used by
    rl.score_recentre='rolling'.
    """
    batches, metrics = {}, {}
    for agent in self.agents:
      cfg = self.configs[agent]
      batch, stats = build_train_batch(trajs, agent, cfg, neutral_score=self.neutral_score)
      if cfg.score_recentre != "none":  # on the local batch: globalize keeps the rewards
        batch = self._recentre(agent, batch, stats["strata"], stratum_means)
      batch, stats = global_batch.globalize(batch, stats, trajs, agent, self.mesh, cfg)
      for key in ("actions", "invalid", "truncated", "left_truncated"):
        metrics[f"experience/{agent}/{key}"] = float(stats[key])
      if stats["actions"] == 0:
        log.warning("agent %s has no actions; its update is skipped", agent)
        continue
      batches[agent] = batch
    return batches, metrics

  def _recentre(self, agent: str, batch: TrainBatch, names: list[str],
                stratum_means: Callable[[str], Mapping[str, float]] | None) -> TrainBatch:
    """rl.score_recentre: the batch with per-stratum re-centred rewards (rl/stratum.py).

    The per-stratum means and the common level are those of every process's counted actions
    ('batch'), or the guard's window means x rl.reward_scale where it has them ('rolling'); so
    every process re-centres alike.
    """
    cfg = self.configs[agent]
    rewards, strata = np.asarray(batch.rewards, np.float64), np.asarray(batch.strata)
    counted = np.asarray(batch.valid) & ~np.asarray(batch.invalid)
    local: dict[str, list[float]] = {}
    for r, s in zip(rewards[counted], strata[counted]):
      entry = local.setdefault(names[int(s)], [0.0, 0])
      entry[0], entry[1] = entry[0] + float(r), entry[1] + 1
    totals: dict[str, list[float]] = {}
    for part in distributed.allgather_json(local):
      for name, (total, n) in part.items():
        entry = totals.setdefault(name, [0.0, 0])
        entry[0], entry[1] = entry[0] + total, entry[1] + n
    if not totals:
      return batch
    means = {name: total / n for name, (total, n) in totals.items()}
    level = sum(t for t, _ in totals.values()) / sum(n for _, n in totals.values())
    if cfg.score_recentre == "rolling":
      window = stratum_means(agent) if stratum_means is not None else {}
      # The guard names an empty task type 'none' (coach.bias_guard.records_from_trajectories).
      means.update({name: window[name or "none"] * cfg.reward_scale for name in means
                    if (name or "none") in window})
    return stratum.recentre_batch(batch, strata_names=names, means=means, target=level)

  # ------------------------------------------------------------------------------ update

  def _pooled_stats(self, batches: Mapping[str, TrainBatch]):
    """rl.whiten_scope='pooled': one set of whitening statistics over every agent's tokens."""
    if any(self.configs[a].whitening != "pooled" for a in batches) or not batches:
      return None
    stats = []
    for agent, batch in batches.items():
      if agent not in self._stats_fns:
        self._stats_fns[agent] = advantage_stats_fn(self.graphdef, self.configs[agent])
      stats.append(self._stats_fns[agent](self.states[agent].params, self.ref_params, batch))
    return objectives.merge_stats(*stats)

  def update(self, batches: Mapping[str, TrainBatch], rng: jax.Array
             ) -> tuple[dict[str, float], jax.Array]:
    """One jitted update per agent (states donated); -> (train/<agent>/* metrics, next rng)."""
    pooled = self._pooled_stats(batches)
    metrics: dict[str, float] = {}
    for agent, batch in batches.items():
      rng, key = jax.random.split(rng)
      # Activation sharding constraints apply while the step is traced (first call per shape).
      with sharding.activation_sharding(self.mesh):
        self.states[agent], m = self.step_fns[agent](
            self.states[agent], self.ref_params, batch, distributed.global_key(key, self.mesh),
            pooled)
      metrics.update({f"train/{agent}/{k}": float(v) for k, v in jax.device_get(m).items()})
    return metrics, rng

  async def publish(self, engine: RolloutEngine, version: int,
                    agents: tuple[str, ...] | None = None) -> None:
    """Makes the agents' current weights the engine's (version = the global step)."""
    for agent in agents or self.agents:
      params = self.states[agent].params
      if distributed.process_count() > 1:  # the sampler runs on this process's devices only
        params = global_batch.local_replica(params)
      await engine.publish(agent, params, version)

  # ------------------------------------------------------------------------- checkpoints

  def checkpoint_state(self) -> dict[str, Any]:
    """{agent: {'params', 'opt_state', 'step'}} referencing the live arrays (shallow:
    dataclasses.asdict would deep-copy every buffer)."""
    return {a: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
            for a, s in self.states.items()}

  def restore(self, restored: Mapping[str, Any]) -> None:
    """Puts restored leaves (plain containers from Orbax) back into every agent's state."""
    states = {a: _like(self.states[a], restored[a]) for a in self.agents}
    self.states.update(states)


def _like(state, restored: Mapping[str, Any]):
  """`restored`'s leaves in `state`'s structure (nnx.State params, optax state), field by
  field, checking shapes."""
  fields = {}
  for f in dataclasses.fields(state):
    current = getattr(state, f.name)
    leaves = jax.tree.leaves(restored[f.name])
    old = jax.tree.leaves(current)
    if len(leaves) != len(old) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(leaves, old)):
      raise ValueError(f"checkpoint: {f.name} does not match the model (different architecture "
                       "or optimizer settings than the run that wrote it?)")
    fields[f.name] = jax.tree.unflatten(jax.tree.structure(current), leaves)
  return type(state)(**fields)
