"""Progress for long phases (rollout, update, eval): a bar on a terminal, log lines elsewhere.

On an interactive terminal (stderr is a TTY and CI is not set) a tqdm bar shows the phase.
Otherwise (CI, batch jobs, redirected output) nothing is drawn: one log line when the phase
ends, with its count and duration, so logs stay readable and small. Only process 0 reports.

    with progress.phase("rollout", total=64) as bar:
      for trajectory in ...:
        bar.update()
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

_LOG = logging.getLogger("mappa_jax")


def interactive(stream: IO | None = None) -> bool:
  """True when a progress bar is welcome: a TTY, and not under CI (CI=true/1/yes)."""
  if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
    return False
  stream = sys.stderr if stream is None else stream
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


class Phase:
  """Counts work in one phase; draws a bar when interactive, else logs once at the end."""

  def __init__(self, name: str, total: int | None = None, *, unit: str = "it",
               enabled: bool = True, stream: IO | None = None, logger: logging.Logger = _LOG,
               log_end: bool = True):
    self.name = name
    self._log_end = log_end  # False: the caller reports this phase in its own log line
    self.total = total
    self.unit = unit
    self.count = 0
    self._logger = logger
    self._enabled = enabled
    self._start = time.perf_counter()
    self._bar = None
    if enabled and interactive(stream):
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, desc=name, unit=unit, file=stream or sys.stderr,
                       leave=False, dynamic_ncols=True)

  @property
  def elapsed_s(self) -> float:
    return time.perf_counter() - self._start

  def update(self, n: int = 1, **postfix) -> None:
    self.count += n
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._enabled and self._log_end:
      of = f"/{self.total}" if self.total is not None else ""
      self._logger.info("%s: %d%s %s in %.1f s", self.name, self.count, of, self.unit,
                        self.elapsed_s)
    self._enabled = False

  def __enter__(self) -> "Phase":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING that were emitted from inside the given packages."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
        part in record.pathname for part in self._parts)


def quiet_library_logs(packages: tuple[str, ...] = ("orbax", "jax"),
                       logger: logging.Logger | None = None) -> None:
  """Keeps run logs readable: hides INFO chatter of libraries (Orbax logs every save step;
  JAX reports every accelerator backend it could not start, e.g. TPU on a CPU machine).

  Installs a filter on the handlers of `logger` (default: the root logger, where absl's
  handler lives); warnings and errors from those packages still show.
  """
  drop = _DropLibraryInfo(packages)
  for handler in (logger or logging.getLogger()).handlers:
    handler.addFilter(drop)


def phase(name: str, total: int | None = None, *, unit: str = "it",
          stream: IO | None = None, log_end: bool = True) -> Phase:
  """A `Phase` that reports only on process 0 (safe to call on every host); log_end=False
  keeps the bar but not the closing log line (the caller's own line reports the phase)."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    enabled = jax.process_index() == 0
  except ImportError:  # progress is also usable from jax-free tools
    enabled = True
  return Phase(name, total, unit=unit, enabled=enabled, stream=stream, log_end=log_end)
