"""The Trainer: tasks -> rollout (coach scores every action) -> experience -> update -> publish
-> log, once per step (the README's diagram).

  trainer = Trainer(config, workdir)   # builds data, team, engine, coach, sandbox, workflow
  trainer.train()                      # resumes from the latest checkpoint in workdir

One global step (mappa-reference.md §2.2, with its bugs fixed):
  1. the next `rollout.rollout_batch_size` tasks, each run `n_samples_per_prompt` times through
     the workflow (concurrently; coach calls start as soon as each action finishes);
  2. `team.experience`: every agent's actions -> one fixed-shape TrainBatch;
  3. `team.update`: one jitted update per agent (old and reference logprobs, KL, token rewards,
     return-to-go, whitening, PPO-clip, AdamW);
  4. `team.publish`: the new weights to the rollout engine (version = global step);
  5. scalars to TensorBoard, a checkpoint every `checkpoint.every_steps`, evaluation every
     `eval.every_steps` (and before training, logged as step 0).
Across processes every process rolls out its shard of the step's tasks; the collectives that
needs are the `mappa_jax.distributed` helpers, the identity in one process.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import jax
import ml_collections

from mappa_jax import config as mconfig
from mappa_jax import distributed
from mappa_jax import factory
from mappa_jax import sharding
from mappa_jax.checkpoint import CheckpointManager
from mappa_jax.coach.bias_monitor import BiasMonitor
from mappa_jax.coach.config import build_stats
from mappa_jax.coach.types import CoachFatalError
from mappa_jax.data import batching
from mappa_jax.eval import report as eval_report
from mappa_jax.eval import runner as eval_runner
from mappa_jax.eval import summary as eval_summary
from mappa_jax.metrics import MetricWriter
from mappa_jax.progress import phase
from mappa_jax.rollout.seeds import derive_seed
from mappa_jax.workflows.records import Trajectory

log = logging.getLogger(__name__)


class Trainer:
  """Owns every long-lived part of a run (team, engine, coach, sandbox, writer, checkpoints)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.exp = mconfig.experiment(config)
    self.workdir = os.path.abspath(workdir)
    self.agents = self.exp.agent_names  # workflow order (ConfigDict sorts keys)
    self.loop = asyncio.new_event_loop()
    self.mesh = sharding.make_mesh(self.exp.mesh)
    parts = factory.build(self.exp, self.workdir, self.mesh)
    self.train_tasks, self.eval_sets = parts.train_tasks, parts.eval_sets
    self.tokenizer, self.team, self.engine = parts.tokenizer, parts.team, parts.engine
    self.coach, self.coach_stats, self.sandbox = parts.coach, parts.coach.stats, parts.sandbox
    self.workflow, self.eval_workflow = parts.workflow, parts.eval_workflow
    self.writer = MetricWriter.from_config(self.exp.logging, self.workdir, self.exp.name)
    self.checkpoints = CheckpointManager.from_config(self.exp.checkpoint, self.workdir)
    self.bias = BiasMonitor(self.exp.coach_bias, self.exp.bias_outcome_key, self.workdir)
    self.rng = jax.random.key(self.exp.seed)
    self.step = 0
    self.data_state = {"epoch": 0, "batch": 0}
    self._epoch_batches = None  # (epoch, its batches of task indices)

  # ---------------------------------------------------------------------------- the step

  def train_step(self) -> dict[str, float]:
    """One global step; returns its scalars (already written to TensorBoard)."""
    self.step += 1
    # Every generation's seed comes from (run seed, step, task, sample, agent, turn), not from
    # arrival order at the engine: the same config and seed give the same rollouts under any
    # sandbox/coach timing, and a resumed run samples what an uninterrupted one would.
    self.workflow.seed_base = derive_seed(self.exp.seed, "train", self.step)
    tasks = distributed.shard(self._next_tasks())  # every process rolls out its shard
    t0 = time.perf_counter()
    trajs = self.loop.run_until_complete(self._rollout(
        self.workflow, tasks, self.exp.rollout.n_samples_per_prompt))
    t1 = time.perf_counter()
    # The guard sees the step before the update: rl.score_recentre='rolling' uses its means.
    bias = self.bias.update(self.step, trajs)
    batches, metrics = self.team.experience(trajs, stratum_means=self.bias.stratum_means)
    updates, self.rng = self.team.update(batches, self.rng)
    self.loop.run_until_complete(self.team.publish(self.engine, self.step, tuple(batches)))
    t2 = time.perf_counter()
    metrics.update(self._rollout_metrics(trajs), **updates, **self._coach_scalars(), **bias)
    metrics.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                    "data/epoch": float(self.data_state["epoch"])})
    self.coach_stats.reset()  # statistics are per step (evaluation calls count in the next)
    if self.step % self.exp.logging.every_steps == 0:
      self.writer.scalars(self.step, metrics)
      self._log_samples(trajs)
    return metrics

  def _next_tasks(self):
    """The next batch of tasks; a shuffled pass per epoch (seed + epoch), drop_last."""
    size, seed, key = (self.exp.rollout.rollout_batch_size, self.exp.data.subsample_seed,
                       self.exp.data.stratify_key)
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

  async def _rollout(self, workflow, tasks, n_samples: int, name: str = "rollout"
                     ) -> list[Trajectory]:
    # A training step's rollout is reported in the step's own log line.
    with phase(name, total=len(tasks) * n_samples, unit="traj",
               log_end=name != "rollout") as bar:
      trajs = await eval_runner.run_trajectories(
          tasks, _counted(workflow.run, bar), n_samples=n_samples,
          max_concurrency=self.exp.rollout.max_concurrent_workflows)
    # Completion order is nondeterministic; training order must not be.
    return sorted(trajs, key=lambda t: (t.task_id, t.sample_index))

  def _rollout_metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
    """rollout/* over every process's trajectories: sums and counts, then global means."""
    sums: dict[str, float] = {"trajectories": len(trajs),
                              "errors": sum(bool(t.error) for t in trajs)}
    if self.exp.faults.enabled:  # workflows/faults.py records every rewrite on the trajectory
      sums["faults"] = sum(bool(t.metadata.get("fault", {}).get("applied")) for t in trajs)
    for key in self.exp.workflow_class.OUTCOME_KEYS:
      values = [float(t.outcome[key]) for t in trajs if key in t.outcome]
      sums[f"{key}/sum"], sums[f"{key}/n"] = sum(values), len(values)
    for agent in self.agents:
      actions = [a for t in trajs for a in t.actions_of(agent)]
      sums[f"{agent}/actions"] = len(actions)
      sums[f"{agent}/response_tokens"] = sum(len(a.response_ids) for a in actions)
      sums[f"{agent}/truncated"] = sum(bool(a.truncated) for a in actions)
    total = distributed.sum_over_processes(sums)
    out = {"rollout/trajectories": total["trajectories"], "rollout/errors": total["errors"]}
    if "faults" in total and total["trajectories"]:
      out["rollout/faults/applied"] = total["faults"] / total["trajectories"]
    for key in self.exp.workflow_class.OUTCOME_KEYS:
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
    """coach/<role>/* of this step over every process's verdicts (the raw records are merged,
    so counts are global sums and means, percentiles and correlations those of the pooled
    verdicts). Evaluation runs every eval task on every process, so its coach calls (counted
    in the next step) count once per process."""
    merged = build_stats(self.exp.coach)
    for state in distributed.allgather_json(self.coach_stats.state()):
      merged.merge(state)
    return merged.to_scalars()

  def _log_samples(self, trajs: list[Trajectory]) -> None:
    for traj in trajs[:self.exp.logging.text_samples_per_step]:
      lines = [f"task {traj.task_id} sample {traj.sample_index} outcome {traj.outcome}"]
      for a in traj.actions:
        score = a.coach.score if a.coach and a.coach.is_scored else "invalid"
        lines.append(f"[{a.agent} turn {a.turn} score {score}]\n{a.text}\n"
                     f"{('tool: ' + a.tool_observation) if a.tool_observation else ''}")
      self.writer.text(self.step, f"samples/{traj.task_id}-{traj.sample_index}",
                       "\n\n".join(lines))

  # -------------------------------------------------------------------------------- eval

  def evaluate(self, step: int) -> dict[str, float]:
    """Runs every eval set and logs its scalars.

    Multi-process: every process evaluates ALL eval tasks with its own replica of the (identical)
    weights; only process 0 writes the results JSON and TensorBoard. Simple and correct, but
    evaluation is not sped up by more processes (generation seeds are derived from the step,
    eval set, task and sample, so every process samples the same trajectories): process 0's
    scalars are logged and returned on every process, so checkpoint metrics agree.
    """
    scalars: dict[str, float] = {}
    wf, n_samples = self.exp.workflow_class, self.exp.eval.n_samples_per_prompt
    headline, unit = wf.EVAL_HEADLINE
    out_dir = os.path.join(self.workdir, "eval_results")
    writes = distributed.process_index() == 0
    for name, tasks in self.eval_sets.items():
      t0 = time.perf_counter()
      self.eval_workflow.seed_base = derive_seed(self.exp.seed, "eval", step, name)
      path = os.path.join(out_dir, f"step{step:06d}_{name}")
      with phase(f"eval {name}", total=len(tasks) * n_samples, unit="traj") as bar:
        report, _ = self.loop.run_until_complete(eval_runner.run_eval(
            name, tasks, _counted(self.eval_workflow.run, bar), kind=wf.EVAL_KIND,
            n_samples=n_samples, max_concurrency=self.exp.rollout.max_concurrent_workflows,
            seed=self.exp.seed, results_path=f"{path}.json" if writes else None,
            trajectories_path=f"{path}.trajectories.jsonl" if writes else None,
            decode=self.tokenizer.decode))
      stat = report.summary[headline]
      log.info("eval %s at step %d (%.1f s): %s %.3f [95%% CI %.3f, %.3f] over %d %s", name,
               step, time.perf_counter() - t0, headline, stat["mean"], stat["ci_low"],
               stat["ci_high"], stat["n"], unit)
      scalars.update(report.scalars())
    if writes:
      log.info("eval report: %s", eval_report.write_report(self.workdir))
    scalars = distributed.from_process0(scalars)
    self.writer.scalars(step, scalars)
    return scalars

  # ------------------------------------------------------------------------------- train

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
    ev, num_steps = self.exp.eval, self.exp.train.num_steps
    if ev.at_start and self.step == 0 and ev.every_steps:
      self.evaluate(0)
    metrics: dict[str, float] = {}
    if self.step >= num_steps:
      log.warning("%s is already at step %d of train.num_steps=%d: nothing to do (raise "
                  "--config.train.num_steps or use a new --workdir)", self.workdir, self.step,
                  num_steps)
    with phase("train", total=num_steps - self.step, unit="step") as bar:
      while self.step < num_steps:
        metrics = self.train_step()
        if ev.every_steps and self.step % ev.every_steps == 0:
          metrics.update(self.evaluate(self.step))
        self.checkpoints.save(self.step, self.team.checkpoint_state(),
                              rng=distributed.global_key(self.rng, self.mesh),
                              data_state=self._data_state(), metrics=metrics,
                              force=self.step == num_steps)
        bar.update(1)
        log.info("step %d/%d: %s", self.step, num_steps, self._summary(metrics))
    self.close()
    if distributed.process_index() == 0 and eval_summary.has_before_after(self.workdir):
      print(eval_summary.run_summary(self.workdir), flush=True)  # for the user, not the log
    return metrics

  def _summary(self, metrics: dict[str, float]) -> str:
    """One readable line per step: rollout outcome, per-agent mean reward, time, eval result."""
    wf = self.exp.workflow_class
    parts = [f"{k} {metrics[f'rollout/{k}']:.2f}" for k in wf.OUTCOME_KEYS[:1]
             if f"rollout/{k}" in metrics]
    rewards = " ".join(f"{a} {metrics[f'train/{a}/reward_mean']:.2f}" for a in self.agents
                       if f"train/{a}/reward_mean" in metrics)
    if rewards:
      parts.append(f"reward {rewards}")
    if "time/rollout_s" in metrics:
      parts.append(f"{metrics['time/rollout_s']:.1f} s rollout + "
                   f"{metrics['time/update_s']:.1f} s update")
    parts += [f"{k} {metrics[k]:.3f}" for k in sorted(metrics)
              if k.startswith("eval/") and k.endswith(f"/{wf.EVAL_HEADLINE[0]}")]
    return " | ".join(parts)

  def _data_state(self) -> dict:
    """What a checkpoint keeps beside the weights: the data cursor and the bias guard."""
    guard = self.bias.state()
    return self.data_state if guard is None else {**self.data_state, "coach_bias": guard}

  def _restore(self, step: int | None = None) -> None:
    """Restores checkpoint `step` (default: the latest, if any) into the team and engine."""
    try:
      restored = self.checkpoints.restore(step, agents_target=self.team.checkpoint_state())
      if restored is None:
        return
      self.team.restore(restored.agents)
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
    self.loop.run_until_complete(self.team.publish(self.engine, restored.step))
    self.step = restored.step
    data_state = dict(restored.data_state or self.data_state)
    self.bias.restore(data_state.pop("coach_bias", None), self.step)
    self.data_state = data_state
    if restored.rng is not None:  # saved as a replicated global array
      self.rng = distributed.local_key(restored.rng)
    log.info("resumed from step %d (%s)", self.step, self.checkpoints.directory)

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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Entry point used by launch/run.py."""
  return Trainer(config, workdir).train()
