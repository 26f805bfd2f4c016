"""Multi-process (multi-host) start-up and a summary of the processes and devices.

`initialize()` calls `jax.distributed.initialize` only when the environment says this is
one process of several; a single-process run never touches the coordination service.
Detected environments:
  * explicit: MAPPA_COORDINATOR_ADDRESS (host:port), MAPPA_NUM_PROCESSES, MAPPA_PROCESS_ID
    (e.g. several processes on one machine, or a hand-written launcher);
  * clusters that JAX auto-detects: SLURM (SLURM_NTASKS > 1), Open MPI
    (OMPI_COMM_WORLD_SIZE > 1), Cloud TPU pods (several TPU_WORKER_HOSTNAMES).
Must run before anything creates a JAX array or queries devices.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Mapping

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
  import jax  # pylint: disable=g-import-not-at-top
  _LOG.info("jax.distributed.initialize(%s)", kwargs or "auto-detected cluster")
  jax.distributed.initialize(**kwargs)
  return True


def process_info() -> dict[str, Any]:
  """Process index/count, host, platform and device counts/kinds (for logs and run info)."""
  import jax  # pylint: disable=g-import-not-at-top
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
