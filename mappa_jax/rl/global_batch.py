"""Multi-process experience: per-process TrainBatches -> one global TrainBatch on the mesh.

Every process rolls out its own shard of a step's tasks and builds its local TrainBatch with
`rl.experience.build_train_batch`. The jitted update (rl/update.py) wants ONE batch whose token
rows are sharded over the mesh's (data, fsdp) axes and whose per-action arrays are replicated,
so the processes first agree (via small all-gathers) on:
  * the row length T: the largest local T (every local T is a token bucket, so this is the
    bucket that fits the global longest sequence);
  * the local row count R: the largest local B, raised until the global B = R * P is a multiple
    of `samples_per_optimizer_step` and of the data-parallel size (data * fsdp);
  * task-type strata and prompt groups: local ids are enumerations that mean different things on
    different processes, so every action slot's (task type) and (task id, turn) key is hashed,
    the hashes are gathered, and ids are re-assigned from the sorted global set of keys.
Local batches are then padded to [R, T] exactly like experience.py pads (padding rows have no
tokens, action_ids -1; padding action slots valid=False, reward 0, next_action -1, stratum and
group 0). With S local action slots (S = R in the padded layout; packed rows hold several
actions, then S = the largest local slot count), process p's slots become global slots
[p * S, (p + 1) * S), so its action_ids and next_action are offset by p * S. The per-action
arrays ([P * S], tiny) are all-gathered and
built as replicated global arrays; token arrays become row-sharded global arrays with
`jax.make_array_from_process_local_data`.

Every function here is collective: all processes must call it in the same order.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from mappa_jax.rl.experience import TrainBatch
from mappa_jax.workflows.records import Trajectory

TOKEN_FIELDS = ("tokens", "targets", "positions", "attention_mask", "segment_ids",
                "action_ids", "rollout_logprobs")
ACTION_FIELDS = ("rewards", "truncated", "invalid", "valid", "strata", "groups", "next_action")
# Values experience.py fills padding with (everything else pads with zeros / False).
_TOKEN_PAD = {"action_ids": -1}
_ACTION_PAD = {"next_action": -1}
_STAT_KEYS = ("actions", "invalid", "truncated", "left_truncated")


@dataclasses.dataclass(frozen=True)
class GlobalShape:
  """The shape every process pads its local batch to.

  rows: local rows R (global B = R * process_count); seq_len: T.
  slots: local action slots S (global A = S * process_count; S = R unless packed).
  totals: experience stats summed over processes (actions, invalid, truncated, left_truncated).
  """
  rows: int
  seq_len: int
  slots: int
  totals: dict[str, int]


def _hash62(text: str) -> tuple[int, int]:
  """A stable 62-bit hash of `text` as two non-negative int32 halves (allgather-able)."""
  h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  return (h >> 31) & 0x7FFFFFFF, h & 0x7FFFFFFF


def slot_keys(trajectories: Sequence[Trajectory], agent: str) -> tuple[list[str], list[str]]:
  """(stratum key, group key) of each of `agent`'s action slots, in build_train_batch's slot
  order (trajectory order, then turn order)."""
  strata, groups = [], []
  for traj in trajectories:
    for action in traj.actions_of(agent):
      strata.append(str(traj.task_type))
      groups.append(f"{traj.task_id}\x00{action.turn}")
  return strata, groups


def agree_shape(local: TrainBatch, local_stats: dict[str, Any], *, samples_per_optimizer_step: int,
                data_parallel: int) -> GlobalShape:
  """All-gathers local (B, T, counts) and returns the common padded shape (collective)."""
  b, t = local.tokens.shape
  row = np.asarray([b, t, local.rewards.shape[0]] + [int(local_stats[k]) for k in _STAT_KEYS],
                   np.int32)
  table = np.asarray(multihost_utils.process_allgather(row)).reshape(-1, row.size)
  n_proc = table.shape[0]
  rows = int(table[:, 0].max())
  step = samples_per_optimizer_step
  rows = -(-rows // step) * step
  while (rows * n_proc) % step or (rows * n_proc) % data_parallel:
    rows += step
  totals = {k: int(table[:, 3 + i].sum()) for i, k in enumerate(_STAT_KEYS)}
  # Padded layout (one action per row everywhere): slots follow the rows. Packed: the most.
  slots = rows if (table[:, 0] == table[:, 2]).all() else int(table[:, 2].max())
  return GlobalShape(rows=rows, seq_len=int(table[:, 1].max()), slots=slots, totals=totals)


def _pad(x: np.ndarray, shape: tuple[int, ...], value) -> np.ndarray:
  out = np.full(shape, value, dtype=x.dtype)
  out[tuple(slice(0, s) for s in x.shape)] = x
  return out


def _remap(hashes: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[A, 2] int32 hash halves -> int32 ids: rank among the distinct valid keys (0 for padding)."""
  keys = hashes[:, 0].astype(np.int64) << 31 | hashes[:, 1].astype(np.int64)
  distinct = np.unique(keys[valid])
  ids = np.searchsorted(distinct, keys).astype(np.int32)
  return np.where(valid, ids, 0).astype(np.int32)


def to_global(local: TrainBatch, trajectories: Sequence[Trajectory], agent: str,
              shape: GlobalShape, mesh: Mesh, *, max_strata: int) -> TrainBatch:
  """Pads `local` (built by build_train_batch from `trajectories`) to `shape` and assembles the
  global TrainBatch on `mesh` (collective).

  Returns a TrainBatch of global jax.Arrays: token arrays [P * R, T] sharded over
  (data, fsdp); per-action arrays [P * S] replicated.
  """
  r, t, a = shape.rows, shape.seq_len, shape.slots
  pid, n_proc = jax.process_index(), jax.process_count()
  n_local = int(np.sum(local.valid))
  strata_keys, group_keys = slot_keys(trajectories, agent)
  if len(strata_keys) != n_local:
    raise ValueError(f"agent {agent!r}: {n_local} actions in the batch but {len(strata_keys)} "
                     "in the trajectories it was built from")

  # Per-action arrays: pad to S slots, offset the slot references, pack into one int32 table.
  act = {f: _pad(np.asarray(getattr(local, f)), (a,), _ACTION_PAD.get(f, 0))
         for f in ACTION_FIELDS}
  act["next_action"] = np.where(act["next_action"] >= 0, act["next_action"] + pid * a, -1)
  hashes = np.zeros((a, 4), np.int32)
  for i, (s, g) in enumerate(zip(strata_keys, group_keys)):
    hashes[i, :2], hashes[i, 2:] = _hash62(s), _hash62(g)
  packed = np.concatenate([
      np.stack([act["rewards"].astype(np.float32).view(np.int32)]
               + [act[f].astype(np.int32) for f in ACTION_FIELDS[1:]], axis=1), hashes], axis=1)
  table = np.asarray(multihost_utils.process_allgather(packed)).reshape(n_proc * a, -1)
  full = {f: table[:, i] for i, f in enumerate(ACTION_FIELDS)}
  full["rewards"] = np.ascontiguousarray(full["rewards"]).view(np.float32)
  for f in ("truncated", "invalid", "valid"):
    full[f] = full[f].astype(bool)
  valid = full["valid"]
  full["strata"] = _remap(table[:, 7:9], valid)
  full["groups"] = _remap(table[:, 9:11], valid)
  n_strata = int(full["strata"].max(initial=0)) + 1 if valid.any() else 0
  if n_strata > max_strata:
    raise ValueError(f"{n_strata} task types across processes exceed experience.max_strata="
                     f"{max_strata}; raise it")

  rep = NamedSharding(mesh, P())
  rows_sh = NamedSharding(mesh, P(("data", "fsdp")))
  out: dict[str, jax.Array] = {}
  for f in ACTION_FIELDS:
    out[f] = jax.make_array_from_process_local_data(rep, full[f], full[f].shape)
  for f in TOKEN_FIELDS:
    x = _pad(np.asarray(getattr(local, f)), (r, t), _TOKEN_PAD.get(f, 0))
    if f == "action_ids":
      x = np.where(x >= 0, x + pid * a, -1).astype(np.int32)
    out[f] = jax.make_array_from_process_local_data(rows_sh, x, (n_proc * r, t))
  return TrainBatch(**out)


def globalize(local: TrainBatch, stats: dict[str, Any], trajectories: Sequence[Trajectory],
              agent: str, mesh: Mesh, cfg) -> tuple[TrainBatch, dict[str, Any]]:
  """An agent's local batch as the global batch of all processes, with global counts in
  `stats` (collective); the batch and stats themselves in one process. cfg: UpdateConfig."""
  if jax.process_count() == 1:
    return local, stats
  shape = agree_shape(local, stats, samples_per_optimizer_step=cfg.samples_per_optimizer_step,
                      data_parallel=mesh.shape["data"] * mesh.shape["fsdp"])
  if shape.totals["actions"] == 0:
    return local, {**stats, **shape.totals}
  return (to_global(local, trajectories, agent, shape, mesh, max_strata=cfg.max_strata),
          {**stats, **shape.totals})


def local_replica(tree: Any, device: jax.Device | None = None) -> Any:
  """A process-local copy of a pytree of (possibly multi-process) jax.Arrays on one local device
  (collective when some leaf is sharded across processes).

  Leaves sharded over the mesh are first all-gathered on device (a jitted reshard to a fully
  replicated layout, one leaf at a time so at most one extra full tensor is live), then the
  local shard is taken; nothing goes through host memory. The copy owns its buffers (the update
  step donates the originals).
  """
  device = device or jax.local_devices()[0]

  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_replicated:
      shard = x.addressable_data(0)
      # Same device: an explicit copy (device_put would alias the donated buffer).
      return jnp.copy(shard) if shard.devices() == {device} else jax.device_put(shard, device)
    if not isinstance(x.sharding, NamedSharding):  # no mesh to reshard over: via the host
      return jax.device_put(np.asarray(multihost_utils.process_allgather(x, tiled=True)), device)
    replicated = _replicate(x.sharding.mesh)(x)
    return jax.device_put(replicated.addressable_data(0), device)

  return jax.tree.map(one, tree)


@functools.lru_cache(maxsize=None)
def _replicate(mesh: Mesh):
  return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))
