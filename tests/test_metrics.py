"""TensorBoard writer: events read back with TensorBoard's own EventAccumulator."""
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from mappa_jax import config as mconfig
from mappa_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(logdir: str) -> EventAccumulator:
  acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  return acc


def _values(acc: EventAccumulator, tag: str) -> list[tuple[int, object]]:
  return [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_scalars_text_and_hparams_read_back(tmp_path):
  logdir = str(tmp_path / "run")
  with metrics.MetricWriter(logdir) as writer:
    writer.hparams({"rl.kl_coef": 0.01, "train.num_steps": 3, "rl.mask_truncated": True,
                    "model.hf_dir": None, "agents.code_executor.tools": ("python",),
                    "name": "kl-0.01"})
    writer.scalars(1, {"problem_solver/loss": 0.5, "coach/mean": np.float32(7.25)})
    writer.scalars(2, {"problem_solver/loss": 0.25})
    writer.text(2, "samples/verifier", "**answer** \\boxed{42} — ünïcode")
  acc = _read(logdir)
  assert _values(acc, "problem_solver/loss") == [(1, 0.5), (2, 0.25)]
  assert _values(acc, "coach/mean") == [(1, 7.25)]
  [(step, text)] = _values(acc, "samples/verifier")
  assert step == 2 and text.item().decode() == "**answer** \\boxed{42} — ünïcode"
  # Plugin metadata is what makes the Scalars/Text dashboards pick the tags up.
  assert acc.SummaryMetadata("coach/mean").plugin_data.plugin_name == "scalars"
  assert acc.SummaryMetadata("samples/verifier").plugin_data.plugin_name == "text"
  content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  hp = {k: v for k, v in start.hparams.items()}
  assert hp["rl.kl_coef"].number_value == pytest.approx(0.01)
  assert hp["train.num_steps"].number_value == 3
  assert hp["rl.mask_truncated"].bool_value is True
  assert hp["model.hf_dir"].string_value == "None"
  assert hp["agents.code_executor.tools"].string_value == "python"
  assert start.group_name  # the trial id groups sessions in the HParams dashboard


def test_non_scalar_is_refused(tmp_path):
  with metrics.MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="shape"):
      writer.scalars(0, {"x": [1.0, 2.0]})


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path / "off"), enabled=False)
  writer.scalars(0, {"x": 1.0})
  writer.text(0, "t", "hi")
  writer.hparams({"a": 1})
  writer.close()
  assert not os.path.exists(tmp_path / "off")


def test_run_dirs_from_config_names_line_up(tmp_path):
  """Two ablations under one parent: TensorBoard sees one run per config.name."""
  for name, kl in (("kl-0", 0.0), ("kl-0.05", 0.05)):
    config = mconfig.load_config(os.path.join(ROOT, "experiments", "mathchat.py"),
                                 [f"name={name}", f"rl.kl_coef={kl}"])
    workdir = str(tmp_path / name)
    exp = mconfig.experiment(config)
    with metrics.MetricWriter.from_config(exp.logging, workdir, exp.name) as writer:
      assert writer.logdir == os.path.join(workdir, "tensorboard", name)
      writer.hparams(mconfig.flatten(config), trial_id=config.name)
      writer.scalars(1, {"eval/reward": kl})
  from tensorboard.backend.event_processing import plugin_event_multiplexer
  multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"tensors": 0})
  multiplexer.AddRunsFromDirectory(str(tmp_path))
  multiplexer.Reload()
  runs = multiplexer.Runs()
  assert sorted(runs) == ["kl-0.05/tensorboard/kl-0.05", "kl-0/tensorboard/kl-0"]
  for run in runs:
    assert "eval/reward" in multiplexer.GetAccumulator(run).Tags()["tensors"]
