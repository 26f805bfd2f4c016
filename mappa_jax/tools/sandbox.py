"""Runs untrusted Python programs (agent-written code) in a per-trajectory workspace.

Backends (chosen in mappa_jax/tools/isolation.py, which fails closed):
  'bwrap'   bubblewrap: every namespace unshared (no network, new PID namespace, so killing its
            init kills every descendant), cleared environment, read-only binds of only the
            interpreter and system library paths (nothing else of the host's home or checkout),
            private /proc and /dev, size-capped tmpfs /tmp (also $HOME), the workspace bound
            read-write at /workspace (the cwd), all capabilities dropped, no_new_privs (bwrap
            always sets PR_SET_NO_NEW_PRIVS), uid/gid 65534 in its own user namespace with
            nested user namespaces disabled (bwrap >= 0.8), dies with its parent.
  'process' a plain subprocess with rlimits only (no file-system or network isolation). Only
            when explicitly accepted (`allow_unisolated=True`; CLI `--backend=process`); it
            logs loudly that it is unisolated.
  'auto'    'bwrap'. Without bubblewrap, 'auto' and 'bwrap' raise SandboxUnavailable: code is
            never run unisolated by default.

Limits (both backends), set in the child before exec: RLIMIT_AS (memory per process),
RLIMIT_CPU, RLIMIT_FSIZE (largest file), RLIMIT_NOFILE, RLIMIT_CORE=0. A per-run cgroup caps
the process count (pids: RLIMIT_NPROC is counted per real uid and ignored for root) and, where
the memory controller is available, the memory of the whole process tree; it also lets us
kill every process a run started, daemons included. Without a writable pids cgroup the process
count is unbounded (a warning says so). Which layers are active is logged once per process. A
wall-clock timeout kills the process group and the cgroup; stdout/stderr are read
incrementally, keeping head and tail, and a run printing more than `output_kill_bytes` is
killed. The workspace quota is checked while running (polling) and after the run (files this
run created are removed, largest first, until the workspace is back under quota).

    python -m mappa_jax.tools.sandbox --workspace DIR FILE.py   # prints the ExecResult as JSON
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Literal

from mappa_jax.schema import Section, field
from mappa_jax.tools.isolation import (SANDBOX_UID, RunCgroup, SandboxUnavailable,
                                       bwrap_supports, report_layers, resolve_backend)
from mappa_jax.tools.workspace import Workspace, changed_files

__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "SandboxLimits", "SandboxUnavailable"]

log = logging.getLogger(__name__)

SANDBOX_WORKDIR = "/workspace"
_SCRIPT_PATH = "/sandbox/main.py"
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Resource limits for one run.

  Attributes:
    timeout_s: wall-clock limit; the whole process tree is killed after it.
    memory_bytes: RLIMIT_AS per process.
    tree_memory_bytes: memory cgroup limit for the whole run (all its processes), where the
      memory controller is available (None: memory_bytes; 0: no cgroup memory limit).
    cpu_seconds: RLIMIT_CPU per process (None: ceil(timeout_s) + 1).
    file_size_bytes: RLIMIT_FSIZE: the largest file a run may write.
    open_files: RLIMIT_NOFILE.
    max_processes: pids cgroup limit (processes + threads) for the whole run.
    output_keep_bytes: per stream, bytes kept (half head, half tail).
    output_kill_bytes: per stream, a run printing more than this is killed.
    workspace_quota_bytes: total size of the workspace's regular files.
    tmp_size_bytes: size of the sandbox's private tmpfs /tmp (bwrap only).
  """
  timeout_s: float = 30.0
  memory_bytes: int = 4 << 30
  tree_memory_bytes: int | None = None
  cpu_seconds: int | None = None
  file_size_bytes: int = 512 << 20
  open_files: int = 256
  max_processes: int = 64
  output_keep_bytes: int = 32 << 10
  output_kill_bytes: int = 32 << 20
  workspace_quota_bytes: int = 1 << 30
  tmp_size_bytes: int = 64 << 20

  def replace(self, **kw) -> "SandboxLimits":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxConfig(Section):
  """The `sandbox` section: where model-written code runs, and its limits."""
  backend: Literal["auto", "bwrap", "process"] = field(
      "auto", "'auto'/'bwrap' (bubblewrap; refuses to run without it) | 'process' (NO "
      "isolation: needs allow_unisolated)")
  allow_unisolated: bool = field(False, "accept backend='process' running model-written code "
                                 "unisolated")
  timeout_s: float = field(30.0, "REF wall time per code block", check=lambda v: v > 0,
                           fix="Use > 0.")
  memory_mb: int = field(4096, "address-space limit (RLIMIT_AS) per process",
                         check=lambda v: v > 0, fix="Use >= 1.")
  max_concurrency: int = field(30, "REF simultaneous executions", check=lambda v: v > 0,
                               fix="Use >= 1.")
  output_cap_chars: int = field(20000, "stdout/stderr bytes kept per stream (half head, half "
                                "tail)", check=lambda v: v > 0, fix="Use >= 1.")

  def problems(self) -> list[tuple[str, str]]:
    if self.backend == "process" and not self.allow_unisolated:  # fail closed: explicit opt-in
      return [("backend", "= 'process' runs model-written code with NO isolation and needs "
               "sandbox.allow_unisolated=true (--config.sandbox.allow_unisolated=true) to "
               "accept that; or use backend='auto'/'bwrap' (`apt-get install bubblewrap`)")]
    return []

  @property
  def limits(self) -> SandboxLimits:
    return SandboxLimits(timeout_s=self.timeout_s, memory_bytes=self.memory_mb << 20,
                         output_keep_bytes=self.output_cap_chars)


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """Outcome of one run.

  Attributes:
    stdout, stderr: decoded output, head and tail kept when longer than the cap.
    exit_code: the program's exit status (negative: killed by that signal; None: never ran).
    timed_out: killed by the wall-clock limit.
    files_changed: workspace files (relative) created or modified by the run.
    duration_s: wall time of the run.
    limit: which enforced limit ended the run early: '', 'timeout', 'output', 'workspace_quota'.
    backend: 'bwrap' or 'process'.
  """
  stdout: str
  stderr: str
  exit_code: int | None
  timed_out: bool
  files_changed: tuple[str, ...]
  duration_s: float
  limit: str = ""
  backend: str = ""

  @property
  def ok(self) -> bool:
    return self.exit_code == 0 and not self.limit


class _CappedBuffer:
  """Keeps the first and last `keep // 2` bytes of a stream and counts the rest."""

  def __init__(self, keep: int):
    self.half = max(keep // 2, 1)
    self.head = bytearray()
    self.tail = bytearray()
    self.total = 0

  def add(self, chunk: bytes) -> None:
    self.total += len(chunk)
    room = self.half - len(self.head)
    if room > 0:
      self.head += chunk[:room]
      chunk = chunk[room:]
    if chunk:
      self.tail += chunk
      if len(self.tail) > self.half:
        del self.tail[:len(self.tail) - self.half]

  def text(self) -> str:
    omitted = self.total - len(self.head) - len(self.tail)
    mid = f"\n...[{omitted} bytes omitted]...\n".encode() if omitted > 0 else b""
    return (bytes(self.head) + mid + bytes(self.tail)).decode("utf-8", errors="replace")


def _interpreter_paths(python: str) -> list[str]:
  """Prefixes the interpreter needs (venv and base installation), as absolute paths."""
  if os.path.abspath(python) == os.path.abspath(sys.executable):
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
  else:
    out = subprocess.run([python, "-c", "import sys,json;print(json.dumps([sys.prefix,"
                          "sys.base_prefix,sys.exec_prefix,sys.base_exec_prefix]))"],
                         capture_output=True, text=True, timeout=60, check=True)
    prefixes = set(json.loads(out.stdout))
  prefixes.add(os.path.dirname(os.path.abspath(python)))
  prefixes.add(os.path.dirname(os.path.realpath(python)))
  return sorted(p for p in prefixes if p and not p.startswith("/usr/"))


def _env(workdir: str) -> dict[str, str]:
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
         "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
         "PYTHONUNBUFFERED": "1", "PYTHONPATH": workdir, "MPLBACKEND": "Agg"}
  env.update({k: "1" for k in _THREAD_ENV})  # threads count against the pids limit
  return env


class Sandbox:
  """Executes Python programs under limits; async, with a concurrency cap.

  Args:
    backend: 'bwrap' | 'auto' (both need bubblewrap) | 'process' (unisolated).
    limits: default SandboxLimits (overridable per run).
    allow_unisolated: the caller accepts running model-written code without isolation;
      required for backend='process'.
    python: interpreter run inside the sandbox (default: this process's interpreter, whose
      venv must hold numpy/pandas/scikit-learn/scipy).
    max_concurrency: simultaneous runs (others wait on a semaphore).

  Raises:
    ValueError: unknown backend.
    SandboxUnavailable: no bubblewrap for 'auto'/'bwrap' (never a silent fallback), 'process'
      without allow_unisolated, or an interpreter the sandbox user cannot run.
  """

  def __init__(self, backend: str = "auto", limits: SandboxLimits | None = None, *,
               allow_unisolated: bool = False, python: str | None = None,
               max_concurrency: int = 8):
    backend, bwrap = resolve_backend(backend, allow_unisolated)
    self.backend = backend
    self._bwrap = bwrap
    self.limits = limits or SandboxLimits()
    self.python = python or sys.executable
    self.max_concurrency = max_concurrency
    self._sems: dict[int, asyncio.Semaphore] = {}
    self._tmp = Path(tempfile.mkdtemp(prefix="mappa_sandbox_"))
    self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
    self._ro_paths = _interpreter_paths(self.python) if backend == "bwrap" else []
    # bwrap >= 0.8: an own user namespace (uid 65534, no nested namespaces). Older releases
    # as root skip the user namespace under --unshare-all: no --uid is possible there.
    self._userns = backend == "bwrap" and bwrap_supports(bwrap, "--disable-userns")
    self._count = itertools.count()
    if backend == "bwrap":
      self._probe_interpreter()
    parents = RunCgroup.parents()
    report_layers(backend, {
        "namespaces (net, pid, ipc, uts, mount: bwrap)": backend == "bwrap",
        f"uid/gid {SANDBOX_UID} in own user namespace, nested userns disabled": self._userns,
        "no_new_privs (bwrap)": backend == "bwrap",
        "capabilities dropped": backend == "bwrap",
        "rlimits": True,
        "pids cgroup": parents["pids"] is not None,
        "memory cgroup (whole run)": parents["memory"] is not None,
    })

  def _probe_interpreter(self) -> None:
    """Runs the interpreter once inside bubblewrap: as uid 65534 it must still be readable
    (a prefix under a 0700 home of another user would not be); fail now, not on every run."""
    ws = self._tmp / "probe_ws"
    ws.mkdir()
    script = self._tmp / "probe.py"
    script.write_text("import encodings, json\n")
    os.chmod(script, 0o444)
    try:
      out = subprocess.run(self._bwrap_argv(ws, script, self.limits), capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL, env={})
    except (OSError, subprocess.SubprocessError) as e:
      raise SandboxUnavailable(f"sandbox: bubblewrap could not start {self.python}: {e}") from e
    finally:
      script.unlink(missing_ok=True)
    if out.returncode != 0:
      raise SandboxUnavailable(
          f"sandbox: {self.python} does not run inside bubblewrap (uid {SANDBOX_UID}; exit "
          f"{out.returncode}): {out.stderr.strip()[-500:]}. Use an interpreter whose files are "
          "world-readable (e.g. /usr/bin/python3 with the data stack installed), set "
          "sandbox.python, or fix the permissions of its prefix.")
    ws.rmdir()

  @classmethod
  def from_config(cls, cfg: SandboxConfig) -> "Sandbox":
    """The sandbox of a `sandbox` section. Fails closed: raises SandboxUnavailable when
    bubblewrap is missing, unless the section chose backend='process' with allow_unisolated."""
    return cls(cfg.backend, cfg.limits, allow_unisolated=cfg.allow_unisolated,
               max_concurrency=cfg.max_concurrency)

  def _sem(self) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = self._sems.get(id(loop))
    if sem is None:
      self._sems = {id(loop): asyncio.Semaphore(self.max_concurrency)}
      sem = self._sems[id(loop)]
    return sem

  def _bwrap_argv(self, workspace: Path, script: Path, limits: SandboxLimits) -> list[str]:
    argv = [self._bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv"]
    if self._userns:  # unprivileged uid, no nested user namespaces
      argv += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID),
               "--gid", str(SANDBOX_UID)]
    for k, v in _env(SANDBOX_WORKDIR).items():
      argv += ["--setenv", k, v]
    for p in _SYSTEM_PATHS:
      if os.path.islink(p):
        argv += ["--symlink", os.readlink(p), p]
      elif os.path.isdir(p):
        argv += ["--ro-bind", p, p]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.tmp_size_bytes), "--tmpfs", "/tmp"]
    # After the private /tmp: an interpreter installed under /tmp (a checkout there with its
    # .venv) must stay visible instead of being hidden by the tmpfs.
    for p in self._ro_paths:
      argv += ["--ro-bind", p, p]
    argv += ["--bind", str(workspace), SANDBOX_WORKDIR,
             "--ro-bind", str(script), _SCRIPT_PATH,
             "--remount-ro", "/",  # bwrap's own root (mount points) read-only too
             "--chdir", SANDBOX_WORKDIR,
             self.python, "-s", _SCRIPT_PATH]
    return argv

  async def run(self, code: str, workspace: Workspace | str | os.PathLike, *,
                limits: SandboxLimits | None = None) -> ExecResult:
    """Runs `code` with cwd = the workspace; waits for a slot under the concurrency cap."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    async with self._sem():
      return await self._run(code, ws, limits or self.limits)

  def run_sync(self, code: str, workspace, *, limits: SandboxLimits | None = None) -> ExecResult:
    return asyncio.run(self.run(code, workspace, limits=limits))

  async def _run(self, code: str, ws: Workspace, limits: SandboxLimits) -> ExecResult:
    script = self._tmp / f"main_{next(self._count)}.py"
    script.write_text(code)
    os.chmod(script, 0o444)
    if self.backend == "bwrap":
      argv, cwd, env = self._bwrap_argv(ws.path, script, limits), None, {}
    else:
      argv, cwd, env = [self.python, "-s", str(script)], str(ws.path), _env(str(ws.path))
    tree_memory = (limits.memory_bytes if limits.tree_memory_bytes is None
                   else limits.tree_memory_bytes)
    cg = RunCgroup(limits.max_processes, tree_memory)
    before = ws.snapshot()
    t0 = time.monotonic()
    out, err = _CappedBuffer(limits.output_keep_bytes), _CappedBuffer(limits.output_keep_bytes)
    reason = ""
    try:
      launcher = _launcher(limits, cg.procs_files)
      # Limits are applied by exec'd programs (sh + prlimit), never by Python code between
      # fork and exec: the trainer is multithreaded (JAX), where a preexec_fn can deadlock.
      extra = ({"preexec_fn": _child_setup(limits, cg.procs_files)} if launcher is None
               else {})
      proc = await asyncio.create_subprocess_exec(
          *(launcher or []), *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
          stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
          start_new_session=True, **extra)
    except OSError as e:
      await cg.remove()
      script.unlink(missing_ok=True)
      return ExecResult("", f"sandbox failed to start: {e}", None, False, (),
                        time.monotonic() - t0, "", self.backend)

    async def kill(why: str) -> None:
      nonlocal reason
      reason = reason or why
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
      await cg.kill_all()

    async def pump(stream, buf: _CappedBuffer) -> None:
      while chunk := await stream.read(1 << 16):
        buf.add(chunk)
        if buf.total > limits.output_kill_bytes and not reason:
          await kill("output")

    async def watch_quota() -> None:
      while True:
        await asyncio.sleep(0.25)
        if await asyncio.to_thread(ws.size_bytes) > limits.workspace_quota_bytes:
          await kill("workspace_quota")
          return

    pumps = asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err))
    watcher = asyncio.create_task(watch_quota())
    deadline = t0 + limits.timeout_s
    try:
      # Python 3.11's Process.wait() also waits for the pipes to close, which a daemonized
      # child can hold open forever: watch the exit status and the pipes separately.
      while not pumps.done() and proc.returncode is None:
        left = deadline - time.monotonic()
        if left <= 0:
          await kill("timeout")
          break
        await asyncio.wait([pumps], timeout=min(left, 0.05))
    finally:
      watcher.cancel()
    await cg.kill_all()  # whatever the program left behind (daemons)
    try:
      await asyncio.wait_for(pumps, 2.0)
    except asyncio.TimeoutError:  # a survivor holds the pipe open (no cgroup available)
      pumps.cancel()
    try:
      await asyncio.wait_for(proc.wait(), 2.0)
    except asyncio.TimeoutError:
      log.warning("sandbox: pid %d did not report its exit", proc.pid)
    duration = time.monotonic() - t0
    await cg.remove()
    script.unlink(missing_ok=True)
    after = ws.snapshot()
    changed = changed_files(before, after)
    stderr = err.text()
    if sum(v[0] for v in after.values()) > limits.workspace_quota_bytes:
      reason = reason or "workspace_quota"
      removed = _enforce_quota(ws, after, changed, limits.workspace_quota_bytes)
      stderr += f"\n[sandbox] workspace quota exceeded; removed {', '.join(removed)}"
      changed = tuple(c for c in changed if c not in removed)
    return ExecResult(out.text(), stderr, proc.returncode, reason == "timeout", changed, duration, reason,
                      self.backend)

  def close(self) -> None:
    """Removes the per-sandbox scratch directory (also done at garbage collection / exit)."""
    self._finalizer()


def _enforce_quota(ws: Workspace, snap, changed, quota: int) -> list[str]:
  total = sum(v[0] for v in snap.values())
  removed = []
  for name in sorted(changed, key=lambda n: -snap[n][0]):
    if total <= quota:
      break
    try:
      os.unlink(ws.path / name)
    except OSError:
      continue
    total -= snap[name][0]
    removed.append(name)
  return removed


def _rlimits(limits: SandboxLimits) -> list[tuple[int, str, int]]:
  """(resource, prlimit flag, value) of every limit set on the sandboxed process."""
  cpu = limits.cpu_seconds or int(limits.timeout_s) + 1
  return [(resource.RLIMIT_AS, "--as", limits.memory_bytes), (resource.RLIMIT_CPU, "--cpu", cpu),
          (resource.RLIMIT_FSIZE, "--fsize", limits.file_size_bytes),
          (resource.RLIMIT_NOFILE, "--nofile", limits.open_files),
          (resource.RLIMIT_CORE, "--core", 0)]


def _launcher(limits: SandboxLimits, cgroup_procs: list[str]) -> list[str] | None:
  """argv prefix that joins the run's cgroups (sh) and sets the rlimits (util-linux prlimit),
  then execs the sandbox; None when prlimit is missing (fall back to a preexec_fn).

  A cgroup that cannot be joined stops the run (sh exits 126) instead of running unbounded.
  """
  prlimit = shutil.which("prlimit")
  if prlimit is None or not os.path.exists("/bin/sh"):
    return None
  cmd = [prlimit] + [f"{flag}={value}" for _, flag, value in _rlimits(limits)] + ["--"]
  if cgroup_procs:
    join = ('n=$0; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 126; shift; '
            'n=$((n - 1)); done; exec "$@"')
    cmd = ["/bin/sh", "-c", join, str(len(cgroup_procs)), *cgroup_procs] + cmd
  return cmd


def _child_setup(limits: SandboxLimits, cgroup_procs: list[str]):
  """preexec_fn: only syscalls (no allocation-heavy Python) between fork and exec."""
  rl = [(res, value) for res, _, value in _rlimits(limits)]
  files = list(cgroup_procs)

  def setup() -> None:
    for procs in files:
      fd = os.open(procs, os.O_WRONLY)
      os.write(fd, str(os.getpid()).encode())
      os.close(fd)
    for res, val in rl:
      resource.setrlimit(res, (val, val))
  return setup


def main(argv=None) -> int:
  """CLI: runs one file, prints the ExecResult as JSON; exit 2 (nothing run) when no isolating
  backend is available and `--backend=process` was not given explicitly."""
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m mappa_jax.tools.sandbox",
                               description="Run one Python file in the sandbox; print JSON.")
  ap.add_argument("file", help="Python program to run")
  ap.add_argument("--workspace", required=True, help="directory bound as the program's cwd")
  ap.add_argument("--backend", default="auto", choices=["auto", "bwrap", "process"],
                  help="'process' runs the file WITHOUT isolation (an explicit opt-in)")
  ap.add_argument("--timeout", type=float, default=30.0)
  ap.add_argument("--memory-mb", type=int, default=4096)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  code = Path(args.file).read_text()
  try:
    # Naming --backend=process on the command line is the CLI's explicit opt-in.
    sb = Sandbox(args.backend, SandboxLimits(timeout_s=args.timeout,
                                             memory_bytes=args.memory_mb << 20),
                 allow_unisolated=args.backend == "process")
  except SandboxUnavailable as e:
    print(f"sandbox: refusing to run {args.file}: {e}", file=sys.stderr)
    return 2
  try:
    res = sb.run_sync(code, args.workspace)
  finally:
    sb.close()
  print(json.dumps(dataclasses.asdict(res), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
