"""Per-trajectory workspaces: a host directory that sandboxed programs see as their cwd.

Files the sandbox writes are untrusted: the host never follows a symlink found in a workspace
(a program could plant `submission.csv -> /etc/shadow`), and reads are size-capped.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Mapping

# path -> (size, mtime_ns, inode): enough to tell created/modified files apart.
Snapshot = dict[str, tuple[int, int, int]]


class Workspace:
  """A directory owned by one trajectory; artifacts persist across runs, turns and agents."""

  def __init__(self, path: str | os.PathLike, *, owned: bool = False):
    self.path = Path(path).resolve()
    self.path.mkdir(parents=True, exist_ok=True)
    self._owned = owned

  @classmethod
  def create(cls, root: str | os.PathLike | None = None, prefix: str = "ws_") -> "Workspace":
    """Makes a fresh empty workspace under `root` (system temp dir when None); removed by cleanup()."""
    if root is not None:
      Path(root).mkdir(parents=True, exist_ok=True)
    return cls(tempfile.mkdtemp(prefix=prefix, dir=root), owned=True)

  def add_file(self, name: str, src: str | os.PathLike | bytes) -> Path:
    """Copies a host file (or bytes) into the workspace under `name`."""
    dst = self._inside(name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, bytes):
      dst.write_bytes(src)
    else:
      shutil.copyfile(src, dst)
    return dst

  def add_files(self, files: Mapping[str, str | os.PathLike | bytes]) -> None:
    for name, src in files.items():
      self.add_file(name, src)

  def snapshot(self) -> Snapshot:
    """Regular files (relative paths) with size/mtime/inode; symlinks and specials are skipped."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
      for fn in filenames:
        full = os.path.join(dirpath, fn)
        try:
          st = os.lstat(full)
        except OSError:
          continue
        if stat.S_ISREG(st.st_mode):
          out[os.path.relpath(full, self.path)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out

  def size_bytes(self) -> int:
    return sum(v[0] for v in self.snapshot().values())

  def list_files(self) -> list[tuple[str, int]]:
    """[(relative name, size in bytes)] sorted by name."""
    return sorted((k, v[0]) for k, v in self.snapshot().items())

  def exists(self, name: str) -> bool:
    """True only for a regular file (a symlink planted by a program does not count)."""
    try:
      return stat.S_ISREG(os.lstat(self._inside(name)).st_mode)
    except (OSError, ValueError):
      return False

  def read_bytes(self, name: str, max_bytes: int = 64 << 20) -> bytes:
    """Reads a workspace file without following symlinks; refuses files over max_bytes."""
    p = self._inside(name)
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    try:
      st = os.fstat(fd)
      if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"workspace file {name!r} is not a regular file")
      if st.st_size > max_bytes:
        raise ValueError(f"workspace file {name!r} is {st.st_size} bytes (> {max_bytes})")
      with os.fdopen(fd, "rb", closefd=False) as f:
        return f.read(max_bytes + 1)[:max_bytes]
    finally:
      os.close(fd)

  def cleanup(self) -> None:
    if self._owned:
      shutil.rmtree(self.path, ignore_errors=True)

  def __enter__(self) -> "Workspace":
    return self

  def __exit__(self, *exc) -> None:
    self.cleanup()

  def _inside(self, name: str) -> Path:
    p = (self.path / name)
    if os.path.isabs(name) or ".." in Path(name).parts:
      raise ValueError(f"workspace file name {name!r} must be relative and stay inside the workspace")
    return p


def changed_files(before: Snapshot, after: Snapshot) -> tuple[str, ...]:
  """Files created or modified between two snapshots, sorted."""
  return tuple(sorted(k for k, v in after.items() if before.get(k) != v))
