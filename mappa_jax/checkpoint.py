"""Checkpoints of the whole training state of several agents, on Orbax's CheckpointManager.

One checkpoint (one step directory) holds:
  state/  every agent's params and optimizer state, plus the RNG key data (Orbax
          StandardSave: sharded arrays written by every process, restored onto the target's
          shardings);
  meta/   JSON: step, agent names, the data cursor, the RNG implementation, the metrics.
Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest one (atomic), and writes in the
background when `async_save` (call `wait()` before reading what was just written).
Retention: the newest `keep_last` steps, plus the best one by `keep_best_metric`.

    python -m mappa_jax.checkpoint digest WORKDIR [--step=N]   # '<agent> <sha256>' per agent
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
from typing import Any, Literal, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from mappa_jax.schema import Section, field

try:  # preservation policies (keep last N *and* best) arrived in orbax-checkpoint 0.11.10
  from orbax.checkpoint import checkpoint_managers
  _HAS_POLICIES = hasattr(checkpoint_managers, "AnyPreservationPolicy")
except ImportError:
  checkpoint_managers = None
  _HAS_POLICIES = False

_LOG = logging.getLogger(__name__)
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig(Section):
  """The `checkpoint` section: when to save and what to keep."""
  every_steps: int = field(32, "REF save interval in global steps (0 = never; the last step "
                           "is always saved)", check=lambda v: v >= 0,
                           fix="Use >= 0 (0 = never).")
  keep_last: int = field(10, "REF most recent checkpoints kept", check=lambda v: v > 0,
                         fix="Use >= 1.")
  keep_best_metric: str = field("eval/reward", "also keep the best checkpoint by this logged "
                                "metric ('' = off)")
  best_mode: Literal["max", "min"] = field("max", "whether keep_best_metric is better high or low")
  async_save: bool = field(True, "write in the background while training continues")

  def problems(self) -> list[tuple[str, str]]:
    if self.keep_best_metric and self.every_steps == 0:
      return [("keep_best_metric", f"= {self.keep_best_metric!r} but checkpoint.every_steps=0 "
               "(no checkpoints); set every_steps > 0 or keep_best_metric=''")]
    return []


@dataclasses.dataclass
class Restored:
  """A restored training state.

  Attributes:
    step: the global step the checkpoint was taken at.
    agents: {agent: pytree} as saved (e.g. {'params': ..., 'opt_state': ...}), with the
      structure, dtypes and shardings of the restore target when one was given.
    rng: the saved PRNG key (typed key if one was saved typed), or None.
    data_state: the data cursor dict given to `save`.
    metrics: the metrics given to `save` ({} if none).
  """
  step: int
  agents: dict[str, Any]
  rng: jax.Array | None
  data_state: dict[str, Any]
  metrics: dict[str, float]


def _split_rng(rng: jax.Array | None) -> tuple[np.ndarray | jax.Array | None, str | None]:
  """Key data (uint32) and implementation name ('' for a legacy raw uint32 key)."""
  if rng is None:
    return None, None
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng), str(jax.random.key_impl(rng))
  return rng, ""


def _join_rng(data: Any, impl: str | None) -> jax.Array | None:
  if impl is None:
    return None
  data = jax.numpy.asarray(data)
  return data if impl == "" else jax.random.wrap_key_data(data, impl=impl)


class CheckpointManager:
  """Saves/restores {agent: state} + step + RNG + data cursor; resumes from the latest.

  Every process must construct it and call `save`/`restore` (Orbax coordinates hosts).
  """

  def __init__(self, directory: str, *, keep_last: int = 3, keep_best_metric: str = "",
               best_mode: str = "max", async_save: bool = True, every_steps: int = 1):
    """Args:
      directory: where step directories go (created if missing).
      keep_last: the newest checkpoints kept (>= 1).
      keep_best_metric: also keep the best checkpoint by this metric key ('' = off).
      best_mode: 'max' or 'min' for keep_best_metric.
      async_save: write in a background thread.
      every_steps: `save` only writes on multiples of this (0 = only with force=True).
    """
    if keep_last < 1:
      raise ValueError(f"keep_last={keep_last}: must be >= 1")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode={best_mode!r}: use 'max' or 'min'")
    self.directory = os.path.abspath(directory)
    self.keep_best_metric = keep_best_metric
    self.best_mode = best_mode
    self.every_steps = every_steps
    if _HAS_POLICIES:
      policies = [checkpoint_managers.LatestN(n=keep_last)]
      if keep_best_metric:
        policies.append(checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: metrics[keep_best_metric],
            reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False))
      retention = {"preservation_policy": checkpoint_managers.AnyPreservationPolicy(policies)}
    else:
      if keep_best_metric:
        _LOG.warning("orbax-checkpoint %s cannot keep the best checkpoint besides the last "
                     "%d (needs >= 0.11.10): keeping the last %d only.",
                     getattr(ocp, "__version__", "?"), keep_last, keep_last)
      retention = {"max_to_keep": keep_last}
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True,
                                           **retention)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  @classmethod
  def from_config(cls, cfg: CheckpointConfig, workdir: str) -> "CheckpointManager":
    """From the `checkpoint` section; checkpoints go to <workdir>/checkpoints."""
    return cls(os.path.join(workdir, "checkpoints"), keep_last=cfg.keep_last,
               keep_best_metric=cfg.keep_best_metric, best_mode=cfg.best_mode,
               async_save=cfg.async_save, every_steps=cfg.every_steps)

  # ------------------------------------------------------------------------------ save

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, agents: Mapping[str, Any], *, rng: jax.Array | None = None,
           data_state: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
    """Saves the state at `step` if due (or `force`); returns whether a save started.

    Args:
      step: global step (checkpoints are ordered by it).
      agents: {agent name: pytree of arrays}, e.g. {'params': ..., 'opt_state': ...}.
      rng: a PRNG key (typed or raw uint32), or None.
      data_state: JSON-serialisable data cursor (epoch, position, sampler seed, ...).
      metrics: scalars of this step; `keep_best_metric` ranks checkpoints by one of them.
      force: save even when `step` is not a multiple of every_steps.
    """
    if not force and not self.should_save(step):
      return False
    rng_data, rng_impl = _split_rng(rng)
    state = {"agents": dict(agents)}
    if rng_data is not None:
      state["rng"] = rng_data
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    meta = {"version": _FORMAT_VERSION, "step": int(step), "agents": sorted(agents),
            "rng_impl": rng_impl, "data_state": dict(data_state or {}), "metrics": metrics}
    # Orbax ranks only checkpoints whose metrics carry the key; others are kept by recency.
    ranked = ({self.keep_best_metric: metrics[self.keep_best_metric]}
              if self.keep_best_metric in metrics else None)
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        metrics=ranked, force=True)
    if saved:
      _LOG.info("checkpoint: saving step %d to %s", step, self.directory)
    return bool(saved)

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  # --------------------------------------------------------------------------- restore

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step with the best `keep_best_metric` among kept checkpoints (None if none has it)."""
    if not self.keep_best_metric:
      return None
    self.wait()
    scored = []
    for step in self.all_steps():
      metrics = self._meta(step)["metrics"]
      if self.keep_best_metric in metrics:
        scored.append((metrics[self.keep_best_metric], step))
    if not scored:
      return None
    return (max if self.best_mode == "max" else min)(scored)[1]

  def restore(self, step: int | None = None, *, agents_target: Mapping[str, Any] | None = None
              ) -> Restored | None:
    """Restores `step` (default: the latest); None when there is no checkpoint.

    Args:
      step: which checkpoint; None = latest.
      agents_target: {agent: pytree} of arrays or jax.ShapeDtypeStruct with the wanted
        structure, dtypes and shardings (e.g. `nnx.eval_shape` of the train state). Without
        it, arrays come back with the saved structure as plain (dict/list) containers.
    """
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        return None
    meta = self._meta(step)
    if agents_target is not None:
      missing = set(meta["agents"]) ^ set(agents_target)
      if missing:
        raise ValueError(f"checkpoint step {step} in {self.directory} holds agents "
                         f"{meta['agents']} but the restore target has {sorted(agents_target)}")
      target = {"agents": jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(agents_target))}
      if meta["rng_impl"] is not None:
        target["rng"] = self._rng_target(meta["rng_impl"])
      state_args = ocp.args.StandardRestore(target)
    else:
      state_args = ocp.args.StandardRestore()
    state = self._manager.restore(step, args=ocp.args.Composite(state=state_args))["state"]
    _LOG.info("checkpoint: restored step %d from %s", step, self.directory)
    return Restored(step=int(meta["step"]), agents=dict(state["agents"]),
                    rng=_join_rng(state.get("rng"), meta["rng_impl"]),
                    data_state=meta["data_state"], metrics=meta["metrics"])

  def _meta(self, step: int) -> dict[str, Any]:
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return self._manager.restore(step, args=args)["meta"]

  @staticmethod
  def _rng_target(impl: str) -> jax.ShapeDtypeStruct:
    if impl == "":
      return jax.ShapeDtypeStruct((2,), np.uint32)
    shape = jax.random.key_data(jax.random.key(0, impl=impl)).shape
    return jax.ShapeDtypeStruct(shape, np.uint32)

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---------------------------------------------------------------------------- digests


def _key_name(key: Any) -> str:
  """One path entry as a plain name, whatever the container (dict, list, attribute)."""
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def params_digest(tree: Any) -> str:
  """sha256 of a parameter pytree, independent of container types and leaf order.

  Leaves are hashed in path-sorted order ('/'-joined key names), each as its path, dtype,
  shape and C-order bytes, so two trees digest equal iff every named array is bit-identical.
  Leaves must be addressable on this process (a restored checkpoint, a local replica).
  """
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaves.append(("/".join(_key_name(k) for k in path), np.ascontiguousarray(np.asarray(leaf))))
  h = hashlib.sha256()
  for name, arr in sorted(leaves, key=lambda x: x[0]):
    # Length-prefixed fields: no two different (path, dtype, shape, bytes) runs collide.
    for field in (name.encode(), str(arr.dtype).encode(), repr(arr.shape).encode(),
                  arr.tobytes()):
      h.update(len(field).to_bytes(8, "little"))
      h.update(field)
  return h.hexdigest()


def _checkpoint_dir(run: str) -> str:
  """<run>/checkpoints for a trainer workdir; `run` itself when it is the checkpoint directory."""
  nested = os.path.join(run, "checkpoints")
  return nested if os.path.isdir(nested) else run


def checkpoint_digests(run: str, step: int | None = None) -> tuple[int, dict[str, str]]:
  """-> (step, {agent: params_digest of its 'params'}) of the latest (or given) checkpoint.

  Raises:
    FileNotFoundError: no checkpoint directory, no checkpoint, or no checkpoint at `step`.
  """
  directory = _checkpoint_dir(run)
  if not os.path.isdir(directory):  # CheckpointManager would create it: read-only here
    raise FileNotFoundError(f"no checkpoints: {directory} does not exist (is {run} a workdir "
                            "of `launch/run.py`?)")
  with CheckpointManager(directory, async_save=False) as manager:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoints in {directory}")
    if step is not None and step not in steps:
      raise FileNotFoundError(f"no checkpoint at step {step} in {directory}; steps: {steps}")
    restored = manager.restore(step)
  out = {}
  for agent, state in sorted(restored.agents.items()):
    params = state["params"] if isinstance(state, Mapping) and "params" in state else state
    out[agent] = params_digest(params)
  return restored.step, out


def main(argv: Sequence[str] | None = None) -> int:
  """CLI: `digest W [--step=N]` prints '<agent> <sha256 of its params>' per agent."""
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m mappa_jax.checkpoint")
  sub = ap.add_subparsers(dest="command", required=True)
  dig = sub.add_parser("digest", help="sha256 of each agent's parameters in a checkpoint")
  dig.add_argument("run", help="trainer workdir (or its checkpoints/ directory)")
  dig.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = ap.parse_args(argv)
  try:
    _, digests = checkpoint_digests(args.run, args.step)
  except FileNotFoundError as e:
    print(f"mappa_jax.checkpoint: {e}", file=sys.stderr)
    return 1
  for agent, digest in digests.items():
    print(f"{agent} {digest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
