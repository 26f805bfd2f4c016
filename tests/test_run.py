"""launch/run.py end to end, as a user runs it (real subprocesses)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mappa_jax import config as mconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "launch", "run.py")


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "true"}
  return subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_unknown_config_key_exits_nonzero_naming_it(tmp_path):
  result = _run("--config=experiments/mathchat.py", "--config.no_such_key=1",
                f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "no_such_key" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # nothing was set up


def test_bad_preset_lists_the_valid_ones(tmp_path):
  result = _run("--config=experiments/dsbench.py:large", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "'large'" in result.stderr and "local, paper" in result.stderr


def test_invalid_config_stops_before_anything_runs(tmp_path):
  result = _run("--config=experiments/mathchat.py:paper", f"--workdir={tmp_path / 'w'}")
  assert result.returncode != 0
  assert "model.hf_dir" in result.stderr and "coach.base_url" in result.stderr
  assert not (tmp_path / "w").exists()


def test_setup_only_writes_config_run_info_and_tensorboard_run(tmp_path):
  workdir = tmp_path / "work"
  result = _run(f"--config={os.path.join(ROOT, 'experiments', 'mathchat.py')}",
                "--config.name=kl-0.02", "--config.rl.kl_coef=0.02", f"--workdir={workdir}",
                "--setup_only", cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["rl"]["kl_coef"] == 0.02 and saved["name"] == "kl-0.02"
  rebuilt = mconfig.load_config(str(workdir / "config.py"))
  assert rebuilt.rl.kl_coef == 0.02 and mconfig.validate(rebuilt)
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["process_count"] == 1 and info["device_count"] >= 1
  assert "--config.rl.kl_coef=0.02" in info["argv"]
  acc = EventAccumulator(str(workdir / "tensorboard" / "kl-0.02"))
  acc.Reload()
  assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
  assert "config" in acc.Tags()["tensors"]
  assert "Process 0/1" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("mappa_jax.train") is not None,
                    reason="the trainer exists: run.py hands over to it")
def test_without_trainer_it_stops_after_setup_and_says_so(tmp_path):
  result = _run("--config=experiments/dsbench.py", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert "not available yet" in result.stderr and "nothing was trained" in result.stderr
  assert (tmp_path / "config.json").exists()
  assert not (tmp_path / "checkpoints").exists()
