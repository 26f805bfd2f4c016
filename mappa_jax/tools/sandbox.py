"""Runs untrusted Python programs (agent-written code) in a per-trajectory workspace.

Backends:
  'bwrap'   bubblewrap: every namespace unshared (no network, new PID namespace, so killing its
            init kills every descendant), cleared environment, read-only binds of only the
            interpreter and system library paths, private /proc and /dev, size-capped tmpfs
            /tmp, the workspace bound read-write at /workspace (the cwd), all capabilities
            dropped, dies with its parent.
  'process' a plain subprocess with rlimits only (no file-system or network isolation); used
            when bubblewrap is missing. 'auto' picks bwrap when present, else process with a
            loud warning.

Limits (both backends), set in the child before exec (`preexec_fn`): RLIMIT_AS (memory),
RLIMIT_CPU, RLIMIT_FSIZE (largest file), RLIMIT_NOFILE, RLIMIT_CORE=0. The process count is
capped with a pids cgroup (v1 `pids` hierarchy, or v2 with the pids controller delegated):
RLIMIT_NPROC is counted per real uid and ignored for root, so it cannot bound one run. The
cgroup also lets us kill every process a run started, daemons included. Without a writable
pids cgroup the process count is unbounded (a warning says so). A wall-clock timeout kills
the process group and the cgroup; stdout/stderr are read incrementally, keeping head and tail,
and a run printing more than `output_kill_bytes` is killed. The workspace quota is checked
while running (polling) and after the run (files this run created are removed, largest
first, until the workspace is back under quota).

    python -m mappa_jax.tools.sandbox --workspace DIR FILE.py   # prints the ExecResult as JSON
"""
from __future__ import annotations

import asyncio
import atexit
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

from mappa_jax.tools.workspace import Workspace, changed_files

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


class _PidsCgroup:
  """One pids cgroup per run, under a parent found once per process (None when unavailable)."""
  _parent: Path | None | bool = False  # False: not probed yet
  _counter = itertools.count()

  @classmethod
  def parent(cls) -> Path | None:
    if cls._parent is False:
      cls._parent = cls._find_parent()
      if cls._parent is None:
        log.warning("sandbox: no writable pids cgroup; the process count of a run is NOT bounded "
                    "(fork bombs are only stopped by the timeout)")
    return cls._parent

  @staticmethod
  def _find_parent() -> Path | None:
    own: dict[str, str] = {}
    try:
      for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
          own[c] = path
    except OSError:
      return None
    candidates = []
    if "pids" in own:  # cgroup v1 pids hierarchy
      candidates.append(Path("/sys/fs/cgroup/pids") / own["pids"].lstrip("/"))
    if "" in own:  # cgroup v2 unified hierarchy
      candidates.append(Path("/sys/fs/cgroup") / own[""].lstrip("/"))
    for base in candidates:
      parent = base / f"mappa_sandbox_{os.getpid()}"
      try:
        parent.mkdir(exist_ok=True)
        if not (parent / "pids.max").exists():
          (parent / "cgroup.subtree_control").write_text("+pids")  # v2: may be refused
        probe = parent / "probe"
        probe.mkdir(exist_ok=True)
        ok = (probe / "pids.max").exists()
        probe.rmdir()
        if ok:
          atexit.register(_rmdir_quiet, parent)
          return parent
        parent.rmdir()
      except OSError:
        continue
    return None

  def __init__(self, max_pids: int):
    parent = self.parent()
    self.path: Path | None = None
    if parent is None:
      return
    path = parent / f"run_{next(self._counter)}"
    try:
      path.mkdir()
      (path / "pids.max").write_text(str(max_pids))
      self.path = path
    except OSError as e:
      log.warning("sandbox: could not create pids cgroup %s: %s", path, e)

  @property
  def procs_file(self) -> str | None:
    return str(self.path / "cgroup.procs") if self.path else None

  def pids(self) -> list[int]:
    if not self.path:
      return []
    try:
      return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
    except OSError:
      return []

  async def kill_all(self) -> None:
    if not self.path:
      return
    for _ in range(200):
      pids = self.pids()
      if not pids:
        return
      for pid in pids:
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      await asyncio.sleep(0.01)
    log.warning("sandbox: processes survived in %s", self.path)

  async def remove(self) -> None:
    if not self.path:
      return
    await self.kill_all()
    for _ in range(100):
      try:
        self.path.rmdir()
        return
      except OSError:
        await asyncio.sleep(0.02)
    log.warning("sandbox: could not remove cgroup %s", self.path)


def _rmdir_quiet(path: Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass


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


def _bwrap_supports(bwrap: str, flag: str) -> bool:
  try:
    out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return False
  return flag in out.stdout + out.stderr


def _env(workdir: str) -> dict[str, str]:
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
         "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
         "PYTHONUNBUFFERED": "1", "PYTHONPATH": workdir, "MPLBACKEND": "Agg"}
  env.update({k: "1" for k in _THREAD_ENV})  # threads count against the pids limit
  return env


class Sandbox:
  """Executes Python programs under limits; async, with a concurrency cap.

  Args:
    backend: 'bwrap' | 'process' | 'auto'.
    limits: default SandboxLimits (overridable per run).
    python: interpreter run inside the sandbox (default: this process's interpreter, whose
      venv must hold numpy/pandas/scikit-learn/scipy).
    max_concurrency: simultaneous runs (others wait on a semaphore).
  """

  def __init__(self, backend: str = "auto", limits: SandboxLimits | None = None, *,
               python: str | None = None, max_concurrency: int = 8):
    if backend not in ("bwrap", "process", "auto"):
      raise ValueError(f"sandbox backend={backend!r}: use 'bwrap', 'process' or 'auto'")
    bwrap = shutil.which("bwrap")
    if backend == "auto":
      backend = "bwrap" if bwrap else "process"
      if not bwrap:
        log.warning("!" * 70 + "\nsandbox: bubblewrap (bwrap) not found: running model-written "
                    "code with rlimits ONLY (no file-system or network isolation). Install it "
                    "with `apt-get install bubblewrap`.\n" + "!" * 70)
    elif backend == "bwrap" and not bwrap:
      raise RuntimeError("sandbox backend='bwrap' but no `bwrap` on PATH: "
                         "`apt-get install bubblewrap`, or use backend='process'")
    self.backend = backend
    self._bwrap = bwrap
    self.limits = limits or SandboxLimits()
    self.python = python or sys.executable
    self.max_concurrency = max_concurrency
    self._sems: dict[int, asyncio.Semaphore] = {}
    self._tmp = Path(tempfile.mkdtemp(prefix="mappa_sandbox_"))
    self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
    self._ro_paths = _interpreter_paths(self.python) if backend == "bwrap" else []
    self._disable_userns = backend == "bwrap" and _bwrap_supports(bwrap, "--disable-userns")
    self._count = itertools.count()

  @classmethod
  def from_config(cls, cfg) -> "Sandbox":
    """cfg: ConfigDict with backend, max_concurrency, python (optional) and limit fields."""
    fields = {f.name for f in dataclasses.fields(SandboxLimits)}
    lim = SandboxLimits(**{k: cfg[k] for k in fields if k in cfg})
    return cls(cfg.get("backend", "auto"), lim, python=cfg.get("python") or None,
               max_concurrency=cfg.get("max_concurrency", 8))

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
    if self._disable_userns:  # no nested user namespaces (as root --unshare-all skips userns)
      argv += ["--unshare-user", "--disable-userns"]
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
    cg = _PidsCgroup(limits.max_processes)
    before = ws.snapshot()
    t0 = time.monotonic()
    out, err = _CappedBuffer(limits.output_keep_bytes), _CappedBuffer(limits.output_keep_bytes)
    reason = ""
    try:
      launcher = _launcher(limits, cg.procs_file)
      # Limits are applied by exec'd programs (sh + prlimit), never by Python code between
      # fork and exec: the trainer is multithreaded (JAX), where a preexec_fn can deadlock.
      extra = ({"preexec_fn": _child_setup(limits, cg.procs_file)} if launcher is None
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


def _launcher(limits: SandboxLimits, cgroup_procs: str | None) -> list[str] | None:
  """argv prefix that joins the pids cgroup (sh) and sets the rlimits (util-linux prlimit),
  then execs the sandbox; None when prlimit is missing (fall back to a preexec_fn)."""
  prlimit = shutil.which("prlimit")
  if prlimit is None or not os.path.exists("/bin/sh"):
    return None
  cmd = [prlimit] + [f"{flag}={value}" for _, flag, value in _rlimits(limits)] + ["--"]
  if cgroup_procs:
    cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup_procs] + cmd
  return cmd


def _child_setup(limits: SandboxLimits, cgroup_procs: str | None):
  """preexec_fn: only syscalls (no allocation-heavy Python) between fork and exec."""
  rl = [(res, value) for res, _, value in _rlimits(limits)]

  def setup() -> None:
    if cgroup_procs:
      fd = os.open(cgroup_procs, os.O_WRONLY)
      os.write(fd, str(os.getpid()).encode())
      os.close(fd)
    for res, val in rl:
      resource.setrlimit(res, (val, val))
  return setup


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m mappa_jax.tools.sandbox",
                               description="Run one Python file in the sandbox; print JSON.")
  ap.add_argument("file", help="Python program to run")
  ap.add_argument("--workspace", required=True, help="directory bound as the program's cwd")
  ap.add_argument("--backend", default="auto", choices=["auto", "bwrap", "process"])
  ap.add_argument("--timeout", type=float, default=30.0)
  ap.add_argument("--memory-mb", type=int, default=4096)
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  code = Path(args.file).read_text()
  sb = Sandbox(args.backend, SandboxLimits(timeout_s=args.timeout,
                                           memory_bytes=args.memory_mb << 20))
  try:
    res = sb.run_sync(code, args.workspace)
  finally:
    sb.close()
  print(json.dumps(dataclasses.asdict(res), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
