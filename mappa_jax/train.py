"""The Trainer: rollout -> coach -> experience -> update -> publish -> log, once per step.

  trainer = Trainer(config, workdir)   # builds data, models, engine, coach, sandbox, workflow
  trainer.train()                      # resumes from the latest checkpoint in workdir

One global step (mappa-reference.md §2.2, with its bugs fixed):
  1. the next `rollout.rollout_batch_size` tasks, each run `n_samples_per_prompt` times through
     the workflow (concurrently; coach calls start as soon as each action finishes);
  2. for every agent: its actions -> one fixed-shape TrainBatch -> one jitted update (old and
     reference logprobs, KL, token rewards, return-to-go, whitening, PPO-clip, AdamW);
  3. the new weights are published to the rollout engine (version = global step);
  4. scalars to TensorBoard, a checkpoint every `checkpoint.every_steps`, evaluation every
     `eval.every_steps` (and before training, logged as step 0).
Every agent has its own weights and optimizer; one frozen reference model is shared (all agents
start from the same checkpoint).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mappa_jax import config as mconfig
from mappa_jax import factory
from mappa_jax import sharding
from mappa_jax.checkpoint import CheckpointManager
from mappa_jax.coach import build_coach, build_stats
from mappa_jax.coach.types import CoachFatalError, CoachResult
from mappa_jax.data import batching
from mappa_jax.eval import report as eval_report
from mappa_jax.eval import runner as eval_runner
from mappa_jax.eval import summary as eval_summary
from mappa_jax.metrics import MetricWriter
from mappa_jax.models import hf_io
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.progress import phase
from mappa_jax.rl import global_batch
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl import objectives
from mappa_jax.rl.update import advantage_stats_fn, init_train_state, make_update_step
from mappa_jax.rollout.seeds import derive_seed
from mappa_jax.workflows.records import Trajectory

log = logging.getLogger(__name__)


def _copy_tree(tree):
  # Each agent owns its buffers: update steps donate them, so no two agents (nor the frozen
  # reference) may share an array.
  return jax.tree.map(jnp.copy, tree)


class _RecordingCoach:
  """Feeds every verdict to the per-role statistics (score, parse failures, latency, cost)."""

  def __init__(self, inner, stats):
    self.inner = inner
    self.stats = stats

  async def score(self, request):
    result = await self.inner.score(request)
    self.stats.record(request, result)
    return result


class Trainer:
  """Owns every long-lived part of a run (engine, coach, sandbox, writer, checkpoints)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.agents = mconfig.agent_names(config)  # workflow order (ConfigDict sorts keys)
    self.loop = asyncio.new_event_loop()
    # Multi-process: every process rolls out its shard of each step's tasks (see train_step).
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    self.multihost = self.process_count > 1
    if config.rollout.rollout_batch_size % self.process_count:
      raise ValueError(f"rollout.rollout_batch_size={config.rollout.rollout_batch_size} must be "
                       f"a multiple of the number of processes ({self.process_count}) so every "
                       "process rolls out the same number of tasks")
    self.train_tasks, self.eval_sets = self._on_process0_first(
        "build_tasks", lambda: factory.build_tasks(config, self.workdir))
    if len(self.train_tasks) < config.rollout.rollout_batch_size:
      raise ValueError(f"data: {len(self.train_tasks)} training tasks, fewer than "
                       f"rollout.rollout_batch_size={config.rollout.rollout_batch_size}")
    self.mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    self.model_dir = self._on_process0_first(
        "model_dir", lambda: factory.model_dir(config, self.workdir))
    self.tokenizer = Tokenizer.from_dir(self.model_dir)
    base = hf_io.load_hf(self.model_dir, mesh=self.mesh, param_dtype=config.model.param_dtype,
                         dtype=config.model.dtype, remat=bool(config.model.remat))
    self.graphdef, self.ref_params = nnx.split(base, nnx.Param)
    self.update_configs = {a: factory.update_config(config, a) for a in self.agents}
    self.states, models, step_fns = {}, {}, {}
    for agent in self.agents:
      model = nnx.merge(self.graphdef, _copy_tree(self.ref_params))
      models[agent] = model
      _, self.states[agent] = init_train_state(model, self.update_configs[agent], self.mesh)
      cfg = self.update_configs[agent]
      if cfg not in step_fns:  # agents with equal settings share one compiled step
        step_fns[cfg] = make_update_step(self.graphdef, cfg, mesh=self.mesh)
    self.step_fns = {a: step_fns[self.update_configs[a]] for a in self.agents}
    self._stats_fns: dict[str, Any] = {}
    self.experience_config = factory.experience_config(config)
    if self.multihost:
      # The sampler runs on this process's devices only: it gets a process-local replica.
      models = {a: nnx.merge(self.graphdef, self._local_params(self.states[a].params))
                for a in self.agents}
    self.engine = self._build_engine(models)
    self.coach_stats = build_stats(config.coach)
    self.coach = _RecordingCoach(build_coach(config.coach, self.workdir), self.coach_stats)
    self.sandbox = factory.build_sandbox(config)
    workspaces = os.path.join(self.workdir, "workspaces")
    if self.multihost:  # processes share the workdir, not their sandboxes' files
      workspaces = os.path.join(workspaces, f"process{self.process_index}")
    self.workflow = factory.build_workflow(
        config, engine=self.engine, tokenizer=self.tokenizer, coach=self.coach,
        sandbox=self.sandbox, workspace_root=workspaces)
    self.eval_workflow = factory.build_workflow(
        config, engine=self.engine, tokenizer=self.tokenizer, coach=self.coach,
        sandbox=self.sandbox, workspace_root=workspaces, evaluation=True)
    self.writer = MetricWriter.from_config(config, self.workdir)
    self.checkpoints = CheckpointManager.from_config(config.checkpoint, self.workdir)
    self.rng = jax.random.key(int(config.seed))
    self.step = 0
    self.data_state = {"epoch": 0, "batch": 0}
    self._epoch_batches = None  # (epoch, its batches of task indices)

  # ------------------------------------------------------------------------------ setup

  def _on_process0_first(self, name: str, fn):
    """Runs `fn` on process 0, then (after a barrier) on the others: files that `fn` writes
    into the shared workdir (tiny model, DSBench suite) are written once."""
    if not self.multihost:
      return fn()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    out = fn() if self.process_index == 0 else None
    multihost_utils.sync_global_devices(f"mappa_trainer_{name}")
    return out if self.process_index == 0 else fn()

  def _local_params(self, params):
    """What the rollout engine samples with: the params themselves in a single process, a
    process-local replica (collective) when they are global arrays across processes."""
    return global_batch.local_replica(params) if self.multihost else params

  def _global_rng(self, key):
    """The update key as a replicated global array (every process holds the same key)."""
    if not self.multihost:
      return key
    from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
    data = np.asarray(jax.random.key_data(key))
    rep = NamedSharding(self.mesh, PartitionSpec())
    return jax.random.wrap_key_data(
        jax.make_array_from_process_local_data(rep, data, data.shape),
        impl=jax.random.key_impl(key))

  def _build_engine(self, models):
    rollout = self.config.rollout
    if rollout.engine == "sglang":
      from mappa_jax.rollout.publish import WeightPublisher
      from mappa_jax.rollout.sglang_engine import SGLangEngine
      # Multi-process: one copy of the weights per server, so process 0 alone exports and
      # reloads; every process generates (rollout/multiprocess.py). Only the HF export (what
      # the servers load): an Orbax save is collective across processes and would wait for
      # the others forever.
      publisher = WeightPublisher(os.path.join(self.workdir, "published"),
                                  templates=next(iter(models.values())),
                                  tokenizer_dirs=self.model_dir, write_orbax=not self.multihost
                                  ) if self.process_index == 0 else None
      engine = SGLangEngine({a: tuple(rollout.sglang_urls[a]) for a in self.agents},
                            publisher=publisher)
      if self.multihost:
        from mappa_jax.rollout.multiprocess import SharedSGLangEngine
        engine = SharedSGLangEngine(engine, process_index=self.process_index)
      return engine
    from mappa_jax.rollout.engine import InProcessEngine, InProcessEngineConfig
    # Batch-invariant sampling: a row's logits (so its logprobs, hence the update) are
    # bit-identical only between batches of the same padded shapes (XLA picks kernels by
    # shape), and which requests batch together depends on timing. An agent never has more
    # requests in flight than there are workflows: that is the one batch size.
    # rollout.batch_buckets[-1], when set, caps that batch: larger batches run in chunks of it
    # (on CPU a batch of 8 decodes about as fast as 1, and 4 chunks of 8 as fast as one of 32).
    size = int(rollout.max_concurrent_workflows)
    if rollout.batch_buckets:
      size = min(size, int(rollout.batch_buckets[-1]))
    return InProcessEngine(models, eos_token_ids=self.tokenizer.eos_token_ids,
                           config=InProcessEngineConfig(
                               seed=int(self.config.seed) + 1000 * self.process_index,
                               max_batch_size=int(rollout.max_concurrent_workflows),
                               batch_buckets=(size,), batch_invariant=True,
                               prompt_buckets=tuple(rollout.prompt_buckets) or None))

  def _restore(self, step: int | None = None) -> None:
    """Restores checkpoint `step` (default: the latest, if any) into the states and engine."""
    try:
      restored = self.checkpoints.restore(step, agents_target=self._checkpoint_state())
      if restored is None:
        return
      states = {a: _like(self.states[a], restored.agents[a]) for a in self.agents}
    except Exception as e:  # a read-only failure: nothing in the workdir is touched
      # launch/run.py keeps a replaced config as config.<n>.py (mconfig.save): the newest one
      # is the config the checkpoints were written with.
      kept = mconfig.previous_configs(self.workdir)
      original = kept[-1] if kept else os.path.join(self.workdir, "config.py")
      raise ValueError(
          f"checkpoint: cannot resume {self.checkpoints.directory} with this config ({e}). "
          "The workdir was written by another config (model architecture, agents or "
          "optimizer); its checkpoints are untouched. Either train with a new --workdir, or "
          f"resume with the config that wrote it: --config={original}") from e
    for agent in self.agents:
      self.states[agent] = states[agent]
      self.loop.run_until_complete(self.engine.publish(
          agent, self._local_params(self.states[agent].params), restored.step))
    self.step = restored.step
    self.data_state = dict(restored.data_state or self.data_state)
    if restored.rng is not None:
      self.rng = restored.rng
      if self.multihost:  # back to a process-local key (saved as a replicated global array)
        self.rng = jax.random.wrap_key_data(
            np.asarray(jax.random.key_data(self.rng)), impl=jax.random.key_impl(self.rng))
    log.info("resumed from step %d (%s)", self.step, self.checkpoints.directory)

  # ------------------------------------------------------------------------------- data

  def _next_tasks(self):
    """The next batch of tasks; a shuffled pass per epoch (seed + epoch), drop_last."""
    size = int(self.config.rollout.rollout_batch_size)
    seed = int(self.config.data.subsample_seed)
    key = self.config.data.get("stratify_key", "")
    while True:
      epoch, index = self.data_state["epoch"], self.data_state["batch"]
      if self._epoch_batches is None or self._epoch_batches[0] != epoch:  # once per epoch
        if key:  # REF DSBench: fixed share of each task type per batch
          batches = batching.StratifiedBatchSampler(
              [str(t.metadata.get(key, t.task_type)) for t in self.train_tasks], size,
              seed=seed).batches(epoch)
        else:
          batches = batching.epoch_batches(len(self.train_tasks), size, epoch, seed=seed)
        self._epoch_batches = (epoch, batches)
      batches = self._epoch_batches[1]
      if index < len(batches):
        self.data_state = {"epoch": epoch, "batch": index + 1}
        return [self.train_tasks[i] for i in batches[index]]
      self.data_state = {"epoch": epoch + 1, "batch": 0}

  # ---------------------------------------------------------------------------- rollout

  async def _run_all(self, workflow, tasks, n_samples: int, name: str = "rollout"
                     ) -> list[Trajectory]:
    # A training step's rollout is reported in the step's own log line.
    with phase(name, total=len(tasks) * n_samples, unit="traj",
               log_end=name != "rollout") as bar:
      trajs = await eval_runner.run_trajectories(
          tasks, _counted(workflow.run, bar), n_samples=n_samples,
          max_concurrency=int(self.config.rollout.max_concurrent_workflows))
    # Completion order is nondeterministic; training order must not be.
    return sorted(trajs, key=lambda t: (t.task_id, t.sample_index))

  def _apply_invalid_policy(self, trajs: list[Trajectory]) -> None:
    """coach.invalid_policy='neutral' scores unscorable actions; 'mask' leaves them out."""
    if self.config.coach.invalid_policy != "neutral":
      return
    neutral = float(self.config.coach.neutral_score)
    for traj in trajs:
      for action in traj.actions:
        if action.coach is None or not action.coach.is_scored:
          reason = action.coach.reason if action.coach else "no coach result"
          action.coach = CoachResult(status="scored", score=neutral,
                                     rationale=f"neutral score (invalid: {reason})")

  def _rollout_metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
    if self.multihost:
      return self._global_rollout_metrics(trajs)
    out: dict[str, float] = {"rollout/trajectories": len(trajs),
                             "rollout/errors": sum(bool(t.error) for t in trajs)}
    # MathChat: rule/coach-judged correctness; DSBench: submission validity and metric gain.
    for key in ("rule_correct", "coach_correct", "valid", "normalized_gain"):
      values = [float(t.outcome[key]) for t in trajs if key in t.outcome]
      if values:
        out[f"rollout/{key}"] = float(np.mean(values))
    for agent in self.agents:
      actions = [a for t in trajs for a in t.actions_of(agent)]
      if actions:
        out[f"rollout/{agent}/actions"] = len(actions)
        out[f"rollout/{agent}/response_tokens"] = float(np.mean(
            [len(a.response_ids) for a in actions]))
        out[f"rollout/{agent}/truncated"] = float(np.mean([a.truncated for a in actions]))
    return out

  def _global_rollout_metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
    """_rollout_metrics over every process's trajectories: sums and counts are all-gathered,
    means are taken over the global counts (collective)."""
    sums: dict[str, float] = {"trajectories": len(trajs),
                              "errors": sum(bool(t.error) for t in trajs)}
    for key in ("rule_correct", "coach_correct", "valid", "normalized_gain"):
      values = [float(t.outcome[key]) for t in trajs if key in t.outcome]
      sums[f"{key}/sum"], sums[f"{key}/n"] = sum(values), len(values)
    for agent in self.agents:
      actions = [a for t in trajs for a in t.actions_of(agent)]
      sums[f"{agent}/actions"] = len(actions)
      sums[f"{agent}/response_tokens"] = sum(len(a.response_ids) for a in actions)
      sums[f"{agent}/truncated"] = sum(bool(a.truncated) for a in actions)
    total = global_batch.sum_over_processes(sums)
    out = {"rollout/trajectories": total["trajectories"], "rollout/errors": total["errors"]}
    for key in ("rule_correct", "coach_correct", "valid", "normalized_gain"):
      if total[f"{key}/n"]:
        out[f"rollout/{key}"] = total[f"{key}/sum"] / total[f"{key}/n"]
    for agent in self.agents:
      n = total[f"{agent}/actions"]
      if n:
        out[f"rollout/{agent}/actions"] = n
        out[f"rollout/{agent}/response_tokens"] = total[f"{agent}/response_tokens"] / n
        out[f"rollout/{agent}/truncated"] = total[f"{agent}/truncated"] / n
    return out

  def _coach_scalars(self) -> dict[str, float]:
    """coach/<role>/* of this step. Multi-process: over every process's verdicts (the raw
    records are all-gathered and merged, so counts are global sums and means, percentiles and
    correlations are those of the pooled verdicts; collective). Evaluation runs every eval
    task on every process, so its coach calls (counted in the next step) count once per
    process."""
    if not self.multihost:
      return self.coach_stats.to_scalars()
    merged = build_stats(self.config.coach)
    for state in global_batch.allgather_json(self.coach_stats.state()):
      merged.merge(state)
    return merged.to_scalars()

  # ----------------------------------------------------------------------------- update

  def _pooled_stats(self, batches):
    """whiten_scope='pooled': one set of whitening statistics over every agent's tokens."""
    if self.config.rl.whiten_scope != "pooled":
      return None
    stats = []
    for agent, batch in batches.items():
      if agent not in self._stats_fns:
        self._stats_fns[agent] = advantage_stats_fn(self.graphdef, self.update_configs[agent])
      stats.append(self._stats_fns[agent](self.states[agent].params, self.ref_params, batch))
    return objectives.merge_stats(*stats)

  def _update(self, trajs: list[Trajectory]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    batches = {}
    for agent in self.agents:
      batch, stats = build_train_batch(trajs, agent, self.experience_config)
      if self.multihost:  # agree on one shape; counts become global (collective)
        shape = global_batch.agree_shape(
            batch, stats, samples_per_optimizer_step=self.experience_config.rows_multiple,
            data_parallel=self.mesh.shape["data"] * self.mesh.shape["fsdp"])
        stats = {**stats, **shape.totals}
      for key in ("actions", "invalid", "truncated", "left_truncated"):
        metrics[f"experience/{agent}/{key}"] = float(stats[key])
      if stats["actions"] == 0:
        log.warning("step %d: agent %s has no actions; its update is skipped", self.step, agent)
        continue
      if self.multihost:
        batch = global_batch.to_global(batch, trajs, agent, shape, self.mesh,
                                       max_strata=self.experience_config.max_strata)
      batches[agent] = batch
    pooled = self._pooled_stats(batches)
    for agent, batch in batches.items():
      self.rng, key = jax.random.split(self.rng)
      # Activation sharding constraints apply while the step is traced (first call per shape).
      with sharding.activation_sharding(self.mesh):
        self.states[agent], m = self.step_fns[agent](self.states[agent], self.ref_params, batch,
                                                     self._global_rng(key), pooled)
      metrics.update({f"train/{agent}/{k}": float(v) for k, v in jax.device_get(m).items()})
      self.loop.run_until_complete(self.engine.publish(
          agent, self._local_params(self.states[agent].params), self.step))
    return metrics

  # ------------------------------------------------------------------------------- eval

  def evaluate(self, step: int) -> dict[str, float]:
    """Runs every eval set and logs its scalars.

    Multi-process: every process evaluates ALL eval tasks with its own replica of the (identical)
    weights; only process 0 writes the results JSON and TensorBoard. Simple and correct, but
    evaluation is not sped up by more processes (generation seeds are derived from the step,
    eval set, task and sample, so every process samples the same trajectories): process 0's
    scalars are logged and returned on every process, so checkpoint metrics agree.
    """
    scalars: dict[str, float] = {}
    kind = "math" if self.config.workflow == "mathchat" else "dsbench"
    out_dir = os.path.join(self.workdir, "eval_results")
    for name, tasks in self.eval_sets.items():
      t0 = time.perf_counter()
      n_samples = int(self.config.eval.n_samples_per_prompt)
      self.eval_workflow.seed_base = derive_seed(int(self.config.seed), "eval", step, name)
      with phase(f"eval {name}", total=len(tasks) * n_samples, unit="traj") as bar:
        report, _ = self.loop.run_until_complete(eval_runner.run_eval(
            name, tasks, _counted(self.eval_workflow.run, bar), kind=kind,
            n_samples=n_samples,
            max_concurrency=int(self.config.rollout.max_concurrent_workflows),
            seed=int(self.config.seed),
            results_path=(os.path.join(out_dir, f"step{step:06d}_{name}.json")
                          if self.process_index == 0 else None),
            trajectories_path=(os.path.join(out_dir, f"step{step:06d}_{name}.trajectories.jsonl")
                               if self.process_index == 0 else None),
            decode=self.tokenizer.decode))
      headline = next(k for k in ("rule_accuracy", "success_rate") if k in report.summary)
      stat = report.summary[headline]
      log.info("eval %s at step %d (%.1f s): %s %.3f [95%% CI %.3f, %.3f] over %d %s", name,
               step, time.perf_counter() - t0, headline, stat["mean"], stat["ci_low"],
               stat["ci_high"], stat["n"], "problems" if headline == "rule_accuracy" else "tasks")
      scalars.update(report.scalars())
    if self.process_index == 0:
      log.info("eval report: %s", eval_report.write_report(self.workdir))
    if self.multihost:
      scalars = global_batch.from_process0(scalars)
    self.writer.scalars(step, scalars)
    return scalars

  # ------------------------------------------------------------------------------ train

  def _log_samples(self, trajs: list[Trajectory]) -> None:
    for traj in trajs[:int(self.config.logging.text_samples_per_step)]:
      lines = [f"task {traj.task_id} sample {traj.sample_index} outcome {traj.outcome}"]
      for a in traj.actions:
        score = a.coach.score if a.coach and a.coach.is_scored else "invalid"
        lines.append(f"[{a.agent} turn {a.turn} score {score}]\n{a.text}\n"
                     f"{('tool: ' + a.tool_observation) if a.tool_observation else ''}")
      self.writer.text(self.step, f"samples/{traj.task_id}-{traj.sample_index}",
                       "\n\n".join(lines))

  def train_step(self) -> dict[str, float]:
    """One global step; returns its scalars (already written to TensorBoard)."""
    self.step += 1
    # Every generation's seed comes from (run seed, step, task, sample, agent, turn), not from
    # arrival order at the engine: the same config and seed give the same rollouts under any
    # sandbox/coach timing, and a resumed run samples what an uninterrupted one would.
    self.workflow.seed_base = derive_seed(int(self.config.seed), "train", self.step)
    tasks = self._next_tasks()
    if self.multihost:  # every process draws the same global batch and rolls out its shard
      tasks = tasks[self.process_index::self.process_count]
    t0 = time.perf_counter()
    trajs = self.loop.run_until_complete(self._run_all(
        self.workflow, tasks, int(self.config.rollout.n_samples_per_prompt)))
    t1 = time.perf_counter()
    self._apply_invalid_policy(trajs)
    metrics = self._rollout_metrics(trajs)
    metrics.update(self._update(trajs))
    t2 = time.perf_counter()
    metrics.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                    "data/epoch": float(self.data_state["epoch"])})
    metrics.update(self._coach_scalars())
    self.coach_stats.reset()  # statistics are per step (evaluation calls count in the next)
    if self.step % int(self.config.logging.every_steps) == 0:
      self.writer.scalars(self.step, metrics)
      self._log_samples(trajs)
    return metrics

  def train(self) -> dict[str, float]:
    """Runs (or resumes) to `train.num_steps`; returns the last step's scalars.

    A CoachFatalError (circuit breaker open, misconfigured coach, replay miss) stops the run:
    pending checkpoint writes are finished first, so the last checkpoint stays the resume point.
    """
    try:
      return self._train()
    except CoachFatalError as e:
      self.checkpoints.wait()  # an async save of the last step completes before we report it
      log.error("run stopped at step %d by the coach: %s. The last checkpoint (step %s in %s) "
                "is intact: fix the coach and rerun the same command to resume.", self.step, e,
                self.checkpoints.latest_step(), self.checkpoints.directory)
      self.close()
      raise

  def _train(self) -> dict[str, float]:
    self._restore()
    cfg = self.config
    if cfg.eval.at_start and self.step == 0 and cfg.eval.every_steps:
      self.evaluate(0)
    metrics: dict[str, float] = {}
    num_steps = int(cfg.train.num_steps)
    if self.step >= num_steps:
      log.warning("%s is already at step %d of train.num_steps=%d: nothing to do (raise "
                  "--config.train.num_steps or use a new --workdir)", self.workdir, self.step,
                  num_steps)
    with phase("train", total=num_steps - self.step, unit="step") as bar:
      while self.step < num_steps:
        metrics = self.train_step()
        if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0:
          metrics.update(self.evaluate(self.step))
        self.checkpoints.save(self.step, self._checkpoint_state(),
                              rng=self._global_rng(self.rng), data_state=self.data_state,
                              metrics=metrics, force=self.step == num_steps)
        bar.update(1)
        log.info("step %d/%d: %s", self.step, num_steps, _summary(metrics, self.agents))
    self.close()
    if self.process_index == 0 and eval_summary.has_before_after(self.workdir):
      print(eval_summary.run_summary(self.workdir), flush=True)  # for the user, not the log
    return metrics

  def _checkpoint_state(self) -> dict[str, Any]:
    # Shallow: {agent: {'params', 'opt_state', 'step'}} referencing the live arrays
    # (dataclasses.asdict would deep-copy every buffer).
    return {a: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
            for a, s in self.states.items()}

  def close(self) -> None:
    self.checkpoints.close()
    self.writer.close()
    closer = getattr(self.engine, "aclose", None)
    if closer is not None:
      self.loop.run_until_complete(closer())
    self.sandbox.close()


def _counted(run, bar):
  """`run(task, i)` that advances the progress bar when it finishes (or fails)."""
  async def counted(task, i):
    try:
      return await run(task, i)
    finally:
      bar.update(1)
  return counted


def _like(state, restored: dict):
  """Puts restored leaves (plain containers from Orbax) back into `state`'s structure
  (nnx.State params, optax state), field by field, checking shapes."""
  fields = {}
  for f in dataclasses.fields(state):
    current = getattr(state, f.name)
    leaves = jax.tree.leaves(restored[f.name])
    old = jax.tree.leaves(current)
    if len(leaves) != len(old) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, old)):
      raise ValueError(f"checkpoint: {f.name} does not match the model (different architecture "
                       "or optimizer settings than the run that wrote it?)")
    fields[f.name] = jax.tree.unflatten(jax.tree.structure(current), leaves)
  return type(state)(**fields)


def _summary(metrics: dict[str, float], agents: tuple[str, ...]) -> str:
  """One readable line per step: rollout outcome, per-agent mean reward, time, eval result."""
  parts = [f"{k} {metrics[f'rollout/{k}']:.2f}" for k in ("rule_correct", "valid")
           if f"rollout/{k}" in metrics]
  rewards = " ".join(f"{a} {metrics[f'train/{a}/reward_mean']:.2f}" for a in agents
                     if f"train/{a}/reward_mean" in metrics)
  if rewards:
    parts.append(f"reward {rewards}")
  if "time/rollout_s" in metrics:
    parts.append(f"{metrics['time/rollout_s']:.1f} s rollout + "
                 f"{metrics['time/update_s']:.1f} s update")
  for key in sorted(metrics):
    if key.startswith("eval/") and key.endswith(("/rule_accuracy", "/success_rate")):
      parts.append(f"{key} {metrics[key]:.3f}")
  return " | ".join(parts)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Entry point used by launch/run.py."""
  return Trainer(config, workdir).train()
