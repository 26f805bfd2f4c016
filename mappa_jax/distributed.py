"""Multi-process (multi-host) start-up and a summary of the processes and devices.

`initialize()` calls `jax.distributed.initialize` only when the environment says this is
one process of several; a single-process run never touches the coordination service.
Detected environments:
  * explicit: MAPPA_COORDINATOR_ADDRESS (host:port), MAPPA_NUM_PROCESSES, MAPPA_PROCESS_ID
    (e.g. several processes on one machine, or a hand-written launcher);
  * clusters that JAX auto-detects: SLURM (SLURM_NTASKS > 1), Open MPI
    (OMPI_COMM_WORLD_SIZE > 1), Cloud TPU pods (several TPU_WORKER_HOSTNAMES).
Must run before anything creates a JAX array or queries devices.

The collectives below are what a training step needs across processes; each is the identity
(or its one-process equivalent) in a single process, so the trainer has one code path.
Every one of them is collective: all processes must call it in the same order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from typing import Any, Callable, Mapping, Sequence, TypeVar

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

_LOG = logging.getLogger(__name__)
_EXPLICIT = ("MAPPA_COORDINATOR_ADDRESS", "MAPPA_NUM_PROCESSES", "MAPPA_PROCESS_ID")


def detect(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
  """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

  Raises:
    ValueError: an incomplete or malformed explicit setting (names the variable).
  """
  env = os.environ if environ is None else environ
  present = [k for k in _EXPLICIT if env.get(k)]
  if present:
    missing = [k for k in _EXPLICIT if not env.get(k)]
    if missing:
      raise ValueError(f"{', '.join(present)} set but {', '.join(missing)} missing: set all "
                       f"of {', '.join(_EXPLICIT)} for a multi-process run, or none")
    try:
      num, pid = int(env["MAPPA_NUM_PROCESSES"]), int(env["MAPPA_PROCESS_ID"])
    except ValueError as e:
      raise ValueError(f"MAPPA_NUM_PROCESSES / MAPPA_PROCESS_ID must be integers: {e}") from e
    if not 0 <= pid < num:
      raise ValueError(f"MAPPA_PROCESS_ID={pid} must be in [0, MAPPA_NUM_PROCESSES={num})")
    if num == 1:
      return None
    return {"coordinator_address": env["MAPPA_COORDINATOR_ADDRESS"], "num_processes": num,
            "process_id": pid}

  def count(key: str) -> int:
    try:
      return int(env.get(key, "1"))
    except ValueError:
      return 1

  if count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1:
    return {}  # JAX reads the cluster's own variables
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return {}
  return None


def initialize(environ: Mapping[str, str] | None = None) -> bool:
  """Initialises jax.distributed when in a multi-process environment; True if it did."""
  kwargs = detect(environ)
  if kwargs is None:
    return False
  # XLA:CPU's concurrency-optimised scheduler may order the update step's cross-process
  # collectives differently in each process (Gloo then aborts with a collective mismatch).
  # The flag only concerns the CPU backend; it must be set before the backend starts.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
                               ).strip()
  _LOG.info("jax.distributed.initialize(%s)", kwargs or "auto-detected cluster")
  jax.distributed.initialize(**kwargs)
  return True


def process_info() -> dict[str, Any]:
  """Process index/count, host, platform and device counts/kinds (for logs and run info)."""
  local = jax.local_devices()
  return {
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "host": socket.gethostname(),
      "platform": jax.default_backend(),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "device_kinds": sorted({d.device_kind for d in local}),
      "jax_version": jax.__version__,
  }


# ------------------------------------------------------------------------------ collectives

T = TypeVar("T")


def process_count() -> int:
  return jax.process_count()


def process_index() -> int:
  return jax.process_index()


def on_process0_first(name: str, fn: Callable[[], T]) -> T:
  """Runs `fn` on process 0, then (after a barrier) on the others: files that `fn` writes into
  a shared workdir (tiny model, DSBench suite) are written once."""
  if process_count() == 1:
    return fn()
  out = fn() if process_index() == 0 else None
  multihost_utils.sync_global_devices(f"mappa_{name}")
  return out if process_index() == 0 else fn()


def shard(items: Sequence[T]) -> Sequence[T]:
  """This process's share of a global list (every process holds the same list)."""
  return items[process_index()::process_count()]


def global_key(key: jax.Array, mesh) -> jax.Array:
  """A PRNG key as a replicated global array (every process holds the same key)."""
  if process_count() == 1:
    return key
  data = np.asarray(jax.random.key_data(key))
  rep = NamedSharding(mesh, PartitionSpec())
  return jax.random.wrap_key_data(jax.make_array_from_process_local_data(rep, data, data.shape),
                                  impl=jax.random.key_impl(key))


def local_key(key: jax.Array) -> jax.Array:
  """A (replicated global) PRNG key as a process-local one."""
  if process_count() == 1:
    return key
  return jax.random.wrap_key_data(np.asarray(jax.random.key_data(key)),
                                  impl=jax.random.key_impl(key))


def sum_over_processes(values: dict[str, float]) -> dict[str, float]:
  """Each scalar summed over processes (every process must pass the same keys)."""
  keys = sorted(values)
  if process_count() == 1 or not keys:
    return dict(values)
  local = np.asarray([float(values[k]) for k in keys], np.float32)
  total = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys)).sum(0)
  return dict(zip(keys, (float(v) for v in total)))


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order, on every process.

  For small variable-size records (e.g. coach statistics): the UTF-8 JSON is padded to the
  longest process's length, since an all-gather needs one shape everywhere.
  """
  if process_count() == 1:
    return [json.loads(json.dumps(value))]
  data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
  sizes = sizes.reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  table = np.asarray(multihost_utils.process_allgather(padded)).reshape(sizes.size, -1)
  return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(table, sizes)]


def from_process0(values: dict[str, float]) -> dict[str, float]:
  """Process 0's scalars on every process (every process must pass the same keys, checked by
  hashing them)."""
  if process_count() == 1:
    return dict(values)
  keys = sorted(values)
  digest = hashlib.sha256("\x00".join(keys).encode()).digest()
  check = np.asarray([len(keys), int.from_bytes(digest[:3], "little"),
                      int.from_bytes(digest[3:6], "little")], np.int32)
  seen = np.asarray(multihost_utils.process_allgather(check)).reshape(-1, check.size)
  if (seen != seen[0]).any():
    raise ValueError(f"processes disagree on the scalar names to share (process "
                     f"{process_index()} has {keys})")
  if not keys:
    return {}
  local = np.asarray([float(values[k]) for k in keys], np.float32)
  shared = np.asarray(multihost_utils.broadcast_one_to_all(local))
  return dict(zip(keys, (float(v) for v in shared)))
