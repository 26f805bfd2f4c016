"""Fail closed: without bubblewrap no model-written code runs unless unisolation is chosen.

bubblewrap is hidden by pointing PATH at an empty directory (the sandbox looks `bwrap` up on
PATH at construction). Each attack writes a marker file OUTSIDE its workspace; the tests assert
the marker never appears, i.e. the program was never executed.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mappa_jax import config as mconfig
from mappa_jax.tools import isolation
from mappa_jax.tools import sandbox as sbx
from mappa_jax.tools.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
MATHCHAT = str(REPO / "experiments" / "mathchat.py")


def attack(marker: Path) -> str:
  return f"open({str(marker)!r}, 'w').write('pwned')\nprint('RAN')\n"


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
  empty = tmp_path / "empty_bin"
  empty.mkdir()
  monkeypatch.setenv("PATH", str(empty))
  assert isolation.find_bwrap() is None
  return empty


@pytest.mark.parametrize("backend", ["auto", "bwrap"])
def test_without_bwrap_the_attack_never_runs(no_bwrap, tmp_path, backend):
  marker = tmp_path / "marker.txt"
  with pytest.raises(sbx.SandboxUnavailable, match="apt-get install bubblewrap") as e:
    sb = sbx.Sandbox(backend)
    sb.run_sync(attack(marker), Workspace(tmp_path / "ws"))
  assert "--config.sandbox.allow_unisolated=true" in str(e.value)
  assert "--config.sandbox.backend=process" in str(e.value)
  assert not marker.exists()


def test_process_backend_needs_the_explicit_opt_in(tmp_path):
  marker = tmp_path / "marker.txt"
  with pytest.raises(sbx.SandboxUnavailable, match="allow_unisolated"):
    sbx.Sandbox("process").run_sync(attack(marker), Workspace(tmp_path / "ws"))
  assert not marker.exists()


def test_explicit_unisolated_backend_runs_and_says_so(no_bwrap, tmp_path, caplog):
  marker = tmp_path / "marker.txt"
  with caplog.at_level("WARNING"):
    sb = sbx.Sandbox("process", sbx.SandboxLimits(timeout_s=20), allow_unisolated=True)
  assert "UNISOLATED" in caplog.text
  try:
    r = sb.run_sync(attack(marker), Workspace(tmp_path / "ws"))
  finally:
    sb.close()
  assert r.exit_code == 0 and r.stdout.strip() == "RAN" and r.backend == "process", r.stderr
  assert marker.read_text() == "pwned"  # unisolated indeed: it could write outside


def _cli(args, tmp_path, path_dir):
  env = dict(os.environ, PATH=str(path_dir))
  return subprocess.run([sys.executable, "-m", "mappa_jax.tools.sandbox", "--workspace",
                         str(tmp_path / "ws"), "--timeout", "20", *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_cli_refuses_without_bwrap(no_bwrap, tmp_path):
  marker = tmp_path / "marker.txt"
  prog = tmp_path / "attack.py"
  prog.write_text(attack(marker))
  for args in ([], ["--backend=bwrap"]):
    out = _cli(args + [str(prog)], tmp_path, no_bwrap)
    assert out.returncode != 0 and out.stdout == "", out.stdout
    assert "apt-get install bubblewrap" in out.stderr and "--backend=process" in out.stderr
    assert not marker.exists()


def test_cli_explicit_process_backend_runs(no_bwrap, tmp_path):
  marker = tmp_path / "marker.txt"
  prog = tmp_path / "attack.py"
  prog.write_text(attack(marker))
  out = _cli(["--backend=process", str(prog)], tmp_path, no_bwrap)
  assert out.returncode == 0, out.stderr
  assert "UNISOLATED" in out.stderr and marker.exists()


def _config(overrides=()):
  return mconfig.load_config(MATHCHAT, list(overrides))


def _sandbox_errors(config) -> str:
  """The validation problems of the `sandbox` section ('' when it is valid); other sections'
  problems are ignored, so this checks only what this module is about."""
  try:
    mconfig.validate(config)
  except mconfig.ConfigError as e:
    return "\n".join(l for l in str(e).splitlines() if "sandbox." in l)
  return ""


def test_trainer_sandbox_factory_refuses_without_bwrap(no_bwrap):
  """The Trainer builds its sandbox from the `sandbox` section before any rollout."""
  config = _config()
  assert _sandbox_errors(config) == ""  # valid: the refusal comes from the missing bubblewrap
  with pytest.raises(sbx.SandboxUnavailable, match="apt-get install bubblewrap"):
    sbx.Sandbox.from_config(mconfig.experiment(config).sandbox)


def test_trainer_sandbox_factory_explicit_unisolated(no_bwrap):
  config = _config(["sandbox.backend=process", "sandbox.allow_unisolated=true"])
  assert _sandbox_errors(config) == ""
  sb = sbx.Sandbox.from_config(mconfig.experiment(config).sandbox)
  try:
    assert sb.backend == "process"
  finally:
    sb.close()


def test_config_rejects_process_backend_without_opt_in():
  message = _sandbox_errors(_config(["sandbox.backend=process"]))
  assert "sandbox.backend:" in message and "sandbox.allow_unisolated=true" in message


def test_trainer_construction_stops_before_any_rollout(no_bwrap, monkeypatch, tmp_path):
  """Trainer construction raises at the sandbox; no workflow (rollout) is ever built."""
  from mappa_jax import train
  from mappa_jax.workflows.mathchat import MathChatWorkflow
  built = []
  monkeypatch.setattr(MathChatWorkflow, "from_config",
                      classmethod(lambda cls, *a, **k: built.append(1)))
  # The embedded random tiny model (hf_dir empty): no model assets needed for this check.
  config = _config(["train.num_steps=1", "model.hf_dir="])
  with pytest.raises(sbx.SandboxUnavailable):
    train.Trainer(config, str(tmp_path / "wd"))
  assert built == []


def test_make_run_setup_says_how_when_it_cannot_install(tmp_path):
  """launch/ensure_bwrap.sh (called by `make run`): no bwrap and no apt-get/sudo on PATH ->
  it prints how to install and how to opt out, and lets `make run` continue (exit 0)."""
  import shutil
  fake = tmp_path / "bin"
  fake.mkdir()
  for tool in ("id", "cat"):
    os.symlink(shutil.which(tool), fake / tool)
  out = subprocess.run([shutil.which("bash"), str(REPO / "launch" / "ensure_bwrap.sh")],
                       capture_output=True, text=True, timeout=60, env={"PATH": str(fake)})
  assert out.returncode == 0, out.stderr
  assert "apt-get install bubblewrap" in out.stdout
  assert "--config.sandbox.allow_unisolated=true" in out.stdout


def test_make_run_setup_is_silent_with_bwrap():
  if isolation.find_bwrap() is None:
    pytest.skip("bubblewrap not installed")
  out = subprocess.run(["bash", str(REPO / "launch" / "ensure_bwrap.sh")], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0 and out.stdout == "", out.stdout
