"""The sandbox's isolation layers: backend choice (fail closed), per-run cgroups, layer report.

Backend choice never degrades: without bubblewrap, 'auto' and 'bwrap' refuse to run code, and
the unisolated 'process' backend runs only when the caller explicitly accepts it
(`allow_unisolated=True`), logging loudly that it is unisolated.

Per-run cgroups: a pids cgroup (the process count: RLIMIT_NPROC is per real uid and ignored
for root) and, where the memory controller is available, a memory limit for the whole process
tree (RLIMIT_AS only bounds each process). cgroup v1 (one hierarchy per controller) and v2
(one unified directory, controllers enabled in the parent's subtree_control) are both handled.
"""
from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # 'nobody': the uid/gid of sandboxed code inside bubblewrap's user namespace

INSTALL_HINT = (
    "Install bubblewrap (`apt-get install bubblewrap`, as root; `make run` does it when it "
    "can). Or, accepting that model-written code then runs WITHOUT file-system or network "
    "isolation (rlimits only), opt in explicitly: trainer `--config.sandbox.backend=process "
    "--config.sandbox.allow_unisolated=true`; sandbox CLI `--backend=process`.")


class SandboxUnavailable(RuntimeError):
  """No isolating backend is usable and the unisolated one was not explicitly accepted."""


def find_bwrap() -> str | None:
  """The bubblewrap executable on PATH (looked up on every call: tests hide it via PATH)."""
  return shutil.which("bwrap")


def resolve_backend(backend: str, allow_unisolated: bool) -> tuple[str, str | None]:
  """-> (backend to use, bwrap path or None). Raises instead of ever degrading to 'process'.

  Args:
    backend: 'auto' | 'bwrap' (both require bubblewrap) | 'process' (no isolation).
    allow_unisolated: the caller accepts running model-written code unisolated; required for
      'process'.

  Raises:
    ValueError: unknown backend.
    SandboxUnavailable: no bubblewrap for 'auto'/'bwrap', or 'process' without opt-in.
  """
  if backend not in ("bwrap", "process", "auto"):
    raise ValueError(f"sandbox backend={backend!r}: use 'bwrap', 'process' or 'auto'")
  if backend == "process":
    if not allow_unisolated:
      raise SandboxUnavailable(
          "sandbox backend='process' runs model-written code with NO isolation; it needs an "
          "explicit opt-in: sandbox.allow_unisolated=true (trainer: "
          "--config.sandbox.allow_unisolated=true; Python: Sandbox('process', "
          "allow_unisolated=True)), or use backend='bwrap' (`apt-get install bubblewrap`).")
    log.warning("!" * 70 + "\nsandbox: UNISOLATED backend 'process' (explicitly chosen): "
                "model-written code runs as this user with rlimits ONLY, no file-system or "
                "network isolation.\n" + "!" * 70)
    return "process", None
  bwrap = find_bwrap()
  if bwrap is None:
    raise SandboxUnavailable(f"sandbox backend={backend!r}: bubblewrap (`bwrap`) is not on "
                             f"PATH, so model-written code cannot run isolated; refusing to "
                             f"run it. {INSTALL_HINT}")
  return "bwrap", bwrap


def bwrap_supports(bwrap: str, flag: str) -> bool:
  """Whether this bubblewrap's --help lists `flag` (older releases lack some options)."""
  try:
    out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return False
  return flag in out.stdout + out.stderr


# ------------------------------------------------------------------------------ cgroups

# controller -> (file whose presence shows the controller in a child, limit files)
_CONTROLLERS = {"pids": ("pids.max",), "memory": ("memory.max", "memory.limit_in_bytes")}


def _own_cgroups() -> dict[str, str]:
  """{controller ('' = v2 unified): this process's cgroup path} from /proc/self/cgroup."""
  own: dict[str, str] = {}
  try:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
      _, ctrls, path = line.split(":", 2)
      for c in ctrls.split(","):
        own[c] = path
  except (OSError, ValueError):
    pass
  return own


def _has_control(d: Path, controller: str) -> bool:
  return any((d / f).exists() for f in _CONTROLLERS[controller])


class RunCgroup:
  """One cgroup per run (pids limit; memory limit where available), under parents probed once
  per process. Unavailable controllers are simply absent (`self.dirs` may be empty)."""
  _parents: dict[str, Path | None] | None = None  # controller -> parent dir; None: not probed
  _counter = itertools.count()

  @classmethod
  def parents(cls) -> dict[str, Path | None]:
    """{controller: writable parent cgroup directory or None}, probed on first use."""
    if cls._parents is None:
      cls._parents = {c: cls._find_parent(c) for c in _CONTROLLERS}
      if cls._parents["pids"] is None:
        log.warning("sandbox: no writable pids cgroup; the process count of a run is NOT "
                    "bounded (fork bombs are only stopped by the timeout)")
    return cls._parents

  @classmethod
  def parent(cls) -> Path | None:
    """The pids parent (kept for callers that only check the process-count layer)."""
    return cls.parents()["pids"]

  @staticmethod
  def _find_parent(controller: str) -> Path | None:
    own = _own_cgroups()
    candidates = []
    if controller in own:  # cgroup v1: this controller's own hierarchy
      candidates.append(Path("/sys/fs/cgroup") / controller / own[controller].lstrip("/"))
    if "" in own:  # cgroup v2 unified hierarchy
      candidates.append(Path("/sys/fs/cgroup") / own[""].lstrip("/"))
    for base in candidates:
      if not base.is_dir():
        continue
      parent = base / f"mappa_sandbox_{os.getpid()}"
      existed = parent.exists()  # v2: the other controller's probe may have made it
      try:
        parent.mkdir(exist_ok=True)
        if (parent / "cgroup.subtree_control").exists():  # v2: enable it for the children
          try:
            (parent / "cgroup.subtree_control").write_text(f"+{controller}")
          except OSError:
            pass  # refused (not delegated): the probe below decides
        probe = parent / f"probe_{controller}"
        probe.mkdir(exist_ok=True)
        ok = _has_control(probe, controller)
        probe.rmdir()
        if ok:
          if not existed:
            atexit.register(_rmdir_quiet, parent)
          return parent
        if not existed:
          parent.rmdir()
      except OSError:
        continue
    return None

  def __init__(self, max_pids: int, memory_bytes: int | None):
    self.dirs: list[Path] = []  # distinct per-run directories (v1: one per hierarchy)
    self.layers: set[str] = set()
    made: dict[Path, Path] = {}
    n = next(self._counter)
    for controller, parent in self.parents().items():
      if parent is None or (controller == "memory" and not memory_bytes):
        continue
      path = made.get(parent)
      try:
        if path is None:
          path = parent / f"run_{n}"
          path.mkdir()
          made[parent] = path
          self.dirs.append(path)
        if controller == "pids":
          (path / "pids.max").write_text(str(max_pids))
        else:
          _write_memory_limit(path, int(memory_bytes))
        self.layers.add(controller)
      except OSError as e:
        log.warning("sandbox: could not set up the %s cgroup %s: %s", controller, path, e)

  @property
  def procs_files(self) -> list[str]:
    """cgroup.procs of every per-run directory: the launcher writes its pid into each."""
    return [str(d / "cgroup.procs") for d in self.dirs]

  def pids(self) -> list[int]:
    out: set[int] = set()
    for d in self.dirs:
      try:
        out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
      except OSError:
        pass
    return sorted(out)

  async def kill_all(self) -> None:
    if not self.dirs:
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
    log.warning("sandbox: processes survived in %s", self.dirs)

  async def remove(self) -> None:
    await self.kill_all()
    for d in self.dirs:
      for _ in range(100):
        try:
          d.rmdir()
          break
        except OSError:
          await asyncio.sleep(0.02)
      else:
        log.warning("sandbox: could not remove cgroup %s", d)


def _write_memory_limit(path: Path, limit: int) -> None:
  """memory.max (v2) or memory.limit_in_bytes (v1); swap capped too where the kernel has it,
  so the limit cannot be dodged by swapping out."""
  if (path / "memory.max").exists():
    (path / "memory.max").write_text(str(limit))
    if (path / "memory.swap.max").exists():
      (path / "memory.swap.max").write_text("0")
    return
  (path / "memory.limit_in_bytes").write_text(str(limit))
  if (path / "memory.memsw.limit_in_bytes").exists():  # must be >= limit_in_bytes
    try:
      (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError:
      pass  # swap accounting off: the RAM limit alone still holds


def _rmdir_quiet(path: Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass


_reported: set[str] = set()


def report_layers(backend: str, layers: dict[str, bool]) -> None:
  """Logs once per process and backend which isolation layers are active."""
  if backend in _reported:
    return
  _reported.add(backend)
  on = [k for k, v in layers.items() if v]
  off = [k for k, v in layers.items() if not v]
  log.log(logging.WARNING if off else logging.INFO,
          "sandbox backend=%s layers active: %s%s", backend, ", ".join(on) or "none",
          f"; NOT active: {', '.join(off)}" if off else "")
