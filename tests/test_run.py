"""launch/run.py end to end, as a user runs it (real subprocesses)."""
import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments import dsbench as dsbench_config
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
  # The message lists every preset the file defines, so a user can pick one without reading it.
  assert "'large'" in result.stderr
  assert "valid presets are " + ", ".join(dsbench_config.PRESETS) in result.stderr


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


def test_without_bubblewrap_it_refuses_to_train_and_says_how_to_fix(tmp_path):
  empty_bin = tmp_path / "bin"  # no bwrap on PATH: the sandbox cannot isolate model code
  empty_bin.mkdir()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "true", "PATH": str(empty_bin)}
  result = subprocess.run([sys.executable, RUN, "--config=experiments/mathchat.py:smoke",
                           f"--workdir={tmp_path / 'w'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "FATAL:" in result.stderr and "apt-get install bubblewrap" in result.stderr
  assert "--config.sandbox.allow_unisolated=true" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints" / "1")


def test_two_process_launch_initialises_jax_distributed(tmp_path):
  """Both processes join one runtime; only process 0 writes the run files."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "work"
  procs = []
  for pid in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "true",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "MAPPA_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "MAPPA_NUM_PROCESSES": "2",
           "MAPPA_PROCESS_ID": str(pid)}
    procs.append(subprocess.Popen(
        [sys.executable, RUN, "--config=experiments/mathchat.py", f"--workdir={workdir}",
         "--setup_only"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  try:
    outputs = [p.communicate(timeout=180) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "Process 0/2" in outputs[0][1] and "Process 1/2" in outputs[1][1]
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["process_count"] == 2 and info["device_count"] == 4
