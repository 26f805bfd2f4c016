r"""Runs N copies of a command on this machine as one multi-process (jax.distributed) job.

  python launch/local_multiprocess.py --num_processes=2 -- launch/run.py \
    --config=experiments/mathchat.py:smoke --workdir=/tmp/mp --config.train.num_steps=1

Every copy gets the explicit environment `mappa_jax.distributed` reads:
MAPPA_COORDINATOR_ADDRESS=127.0.0.1:<free port>, MAPPA_NUM_PROCESSES=N, MAPPA_PROCESS_ID=i.
A command starting with a `.py` file runs under this Python interpreter. Each process's output
(stdout and stderr together) is streamed line by line with a `[pI] ` prefix. The first process
to exit non-zero decides the exit code, and the others are killed: a crashed process would
otherwise leave its peers blocked in a collective until the coordinator's timeout.

On CPU, `--cpu_devices_per_process` (default 1) sets XLA's fake host device count, so N
processes form an N * D-device mesh; `mappa_jax.distributed.initialize` adds the CPU scheduler
flag that keeps collectives in the same order on every process.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port that is free right now (the coordinator binds it moments later)."""
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], *, coordinator: str, num_processes: int, process_id: int,
                cpu_devices: int | None) -> dict[str, str]:
  """The environment of process `process_id`: the explicit MAPPA_* variables (they take
  precedence over a cluster's own variables in mappa_jax.distributed.detect)."""
  env = {**base, "MAPPA_COORDINATOR_ADDRESS": coordinator,
         "MAPPA_NUM_PROCESSES": str(num_processes), "MAPPA_PROCESS_ID": str(process_id),
         "PYTHONUNBUFFERED": "1"}  # lines arrive as they are printed, not at exit
  if cpu_devices:
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count"))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()
  return env


def _stream(prefix: str, pipe: IO[str], out: IO[str], lock: threading.Lock) -> None:
  for line in pipe:
    with lock:  # whole lines: the processes' output interleaves but never mid-line
      out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
      out.flush()


def _kill(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
  """SIGTERM to each still-running process's group, then SIGKILL after `grace_s`."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)  # its own session: also ends what it started (sandboxes)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
      time.sleep(0.05)


def launch(command: Sequence[str], num_processes: int, *, port: int | None = None,
           cpu_devices: int | None = 1, out: IO[str] = sys.stdout,
           kill_grace_s: float = 5.0) -> int:
  """Starts the processes, streams their output, returns the job's exit code.

  0 when every process exited 0; otherwise the exit code of the first process that failed
  (a process killed by signal S counts as 128 + S), after the others were killed.
  """
  if num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  command = list(command)
  if not command:
    raise ValueError("no command: pass it after `--`, e.g. -- launch/run.py --config=...")
  if command[0].endswith(".py"):
    command = [sys.executable, *command]
  coordinator = f"127.0.0.1:{port or free_port()}"
  lock = threading.Lock()
  procs, threads = [], []
  try:
    for pid in range(num_processes):
      env = process_env(dict(os.environ), coordinator=coordinator,
                        num_processes=num_processes, process_id=pid, cpu_devices=cpu_devices)
      proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              start_new_session=True)
      procs.append(proc)
      t = threading.Thread(target=_stream, args=(f"[p{pid}] ", proc.stdout, out, lock),
                           daemon=True)
      t.start()
      threads.append(t)
    code = 0
    while True:
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed:  # the first to fail (in process order when several did at once)
        code = failed[0].returncode
        break
      if all(p.poll() is not None for p in procs):
        break
      time.sleep(0.05)
    if code:
      who = next(i for i, p in enumerate(procs) if p.returncode == code)
      with lock:
        out.write(f"[local_multiprocess] process {who} exited with {code}; stopping the "
                  "others\n")
        out.flush()
  finally:
    _kill(procs, kill_grace_s)  # no-op when all have exited; also on KeyboardInterrupt
    for t in threads:
      t.join(timeout=5)
  return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              usage="%(prog)s --num_processes=N [--port=P] -- COMMAND ...")
  p.add_argument("--num_processes", type=int, required=True)
  p.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  p.add_argument("--cpu_devices_per_process", type=int, default=1,
                 help="XLA host device count per process on CPU (0: leave XLA_FLAGS alone)")
  args = p.parse_args(own)
  if not command:
    p.error("no command: pass it after `--`, e.g. -- launch/run.py --config=...")
  # SIGTERM (e.g. from a cluster scheduler) ends the children too, via the finally in launch().
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  return launch(command, args.num_processes, port=args.port,
                cpu_devices=args.cpu_devices_per_process or None)


if __name__ == "__main__":
  sys.exit(main())
