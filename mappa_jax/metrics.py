"""TensorBoard logging without TensorFlow: scalars, text (sample trajectories) and hparams.

Events are written with TensorBoard's own `EventFileWriter` and summary protos (the same
records `tf.summary` writes), so the stock TensorBoard UI and its `EventAccumulator` read
them. One run directory per run: <workdir>/tensorboard/<config.name>, so ablations launched
with different `--config.name` values line up side by side under one `tensorboard --logdir`.
Only process 0 writes; other processes get a writer that drops everything.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from mappa_jax.schema import Section, field

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig(Section):
  """The `logging` section."""
  every_steps: int = field(1, "scalar logging interval (global steps)", check=lambda v: v > 0,
                           fix="Use >= 1.")
  tensorboard: bool = field(True, "write <workdir>/tensorboard/<name>")
  text_samples_per_step: int = field(2, "sample trajectories logged as text per step",
                                     check=lambda v: v >= 0, fix="Use >= 0.")


def run_dir(workdir: str, name: str) -> str:
  """<workdir>/tensorboard/<name>: the TensorBoard run directory of one run."""
  return os.path.join(workdir, "tensorboard", name)


def hparam_value(value: Any) -> bool | int | float | str:
  """HParams take bool/int/float/str; sequences and None become their text."""
  if isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return str(value)


class MetricWriter:
  """Writes scalars, text and hparams to one TensorBoard run directory.

  Thread-compatible (not thread-safe): call it from the training loop only.
  """

  def __init__(self, logdir: str, *, enabled: bool = True, flush_secs: float = 30.0):
    self.logdir = logdir
    self.enabled = enabled
    self._writer = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      self._writer = EventFileWriter(logdir, flush_secs=flush_secs)

  @classmethod
  def from_config(cls, cfg: LoggingConfig, workdir: str, name: str) -> "MetricWriter":
    """Writer for <workdir>/tensorboard/<name>; a no-op off process 0 or when off."""
    import jax  # pylint: disable=g-import-not-at-top  (after jax.distributed.initialize)
    enabled = cfg.tensorboard and jax.process_index() == 0
    return cls(run_dir(workdir, name), enabled=enabled)

  def _emit(self, step: int, values: list[summary_pb2.Summary.Value],
            wall_time: float | None = None) -> None:
    event = event_pb2.Event(step=int(step), wall_time=wall_time or time.time(),
                            summary=summary_pb2.Summary(value=values))
    self._writer.add_event(event)

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """Logs {tag: number} at `step`; non-finite values are logged as they are (NaN shows)."""
    if not self.enabled or not values:
      return
    metadata = scalar_metadata.create_summary_metadata(display_name="", description="")
    out = []
    for tag, value in values.items():
      array = np.asarray(value, dtype=np.float32)
      if array.shape != ():
        raise ValueError(f"scalar {tag!r} has shape {array.shape}; log a single number")
      out.append(summary_pb2.Summary.Value(
          tag=tag, metadata=metadata, tensor=tensor_util.make_tensor_proto(array)))
    self._emit(step, out)

  def text(self, step: int, tag: str, text: str) -> None:
    """Logs markdown text (e.g. a sample trajectory) under `tag`."""
    if not self.enabled:
      return
    metadata = text_metadata.create_summary_metadata(display_name="", description="")
    tensor = tensor_util.make_tensor_proto(np.array(text.encode("utf-8"), dtype=object))
    self._emit(step, [summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])

  def hparams(self, values: Mapping[str, Any], trial_id: str | None = None) -> None:
    """Logs this run's hyper-parameters for TensorBoard's HParams dashboard.

    The dashboard compares runs by these values and by every scalar logged in the run.
    """
    if not self.enabled:
      return
    clean = {k: hparam_value(v) for k, v in values.items()}
    summary = hparams_summary.hparams_pb(clean, trial_id=trial_id)
    self._writer.add_event(event_pb2.Event(step=0, wall_time=time.time(), summary=summary))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self.enabled = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
