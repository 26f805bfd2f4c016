"""The README's quick start (Makefile) and CI entry point (.ci/run), with stand-in tools.

The real commands install packages and run the whole suite; here `python`, `make` and
`apt-get` are replaced by scripts that record their arguments, so what is checked is the
bootstrap logic: create the venv once, re-install only when setup.cfg/pyproject.toml change,
install missing system packages, and propagate failures.
"""
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None,
                                reason="needs make and bash")


def _script(path, body: str) -> None:
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def repo(tmp_path):
  """A checkout with the real Makefile and .ci/run, and a `python3` that fakes a venv."""
  for name in ("Makefile", "setup.cfg", "pyproject.toml"):
    shutil.copy(os.path.join(ROOT, name), tmp_path / name)
  (tmp_path / ".ci").mkdir()
  shutil.copy(os.path.join(ROOT, ".ci", "run"), tmp_path / ".ci" / "run")
  (tmp_path / "launch").mkdir()  # `make run` first makes sure bubblewrap is there
  shutil.copy(os.path.join(ROOT, "launch", "ensure_bwrap.sh"), tmp_path / "launch")
  bin_dir = tmp_path / "fakebin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  # The fake interpreter logs every call; `-m pytest` exits with $PYTEST_RC.
  _script(bin_dir / "venv-python",
          f'echo "venv-python $*" >> {log}\n'
          'if [[ "$1 $2" == "-m pytest" ]]; then exit "${PYTEST_RC:-0}"; fi\n')
  _script(bin_dir / "python3",
          f'echo "python3 $*" >> {log}\n'
          'if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin"; '
          f'cp {bin_dir / "venv-python"} "$3/bin/python"; fi\n')
  return tmp_path


def _make(repo, *args, **env):
  return subprocess.run(["make", "-s", *args, "PYTHON=" + str(repo / "fakebin" / "python3")],
                        cwd=repo, env={**os.environ, **env}, capture_output=True, text=True)


def _calls(repo) -> list[str]:
  log = repo / "calls.log"
  return log.read_text().splitlines() if log.exists() else []


def test_make_test_bootstraps_once_and_reinstalls_when_setup_changes(repo):
  assert _make(repo, "test").returncode == 0
  first = _calls(repo)
  assert any(c.startswith("python3 -m venv .venv") for c in first)
  assert "venv-python -m pip install -e .[test,dsbench]" in first
  assert first[-1] == "venv-python -m pytest tests -q --durations=25"

  assert _make(repo, "test").returncode == 0  # second run: no install
  assert _calls(repo)[len(first):] == ["venv-python -m pytest tests -q --durations=25"]

  stamp = os.stat(repo / ".venv" / ".mappa_jax-installed").st_mtime
  os.utime(repo / "setup.cfg", (stamp + 10, stamp + 10))  # dependencies changed
  before = len(_calls(repo))
  assert _make(repo, "test").returncode == 0
  new = _calls(repo)[before:]
  assert "venv-python -m pip install -e .[test,dsbench]" in new
  assert not any(c.startswith("python3 -m venv") for c in new)  # the venv is reused


def test_make_test_fails_when_pytest_fails_or_collects_nothing(repo):
  assert _make(repo, "test", PYTEST_RC="1").returncode != 0
  assert _make(repo, "test", PYTEST_RC="5").returncode != 0  # 5 = no tests collected


@pytest.mark.parametrize("args,line", [
    (["ARGS=--config.train.num_steps=1"],
     "--config=experiments/mathchat.py --workdir=workdir/mathchat-local "
     "--config.train.num_steps=1"),
    # The workdir follows the config: another config never lands in the default run's workdir.
    (["CONFIG=experiments/dsbench.py"],
     "--config=experiments/dsbench.py --workdir=workdir/dsbench-local"),
    (["CONFIG=experiments/mathchat.py:local_outcome"],
     "--config=experiments/mathchat.py:local_outcome --workdir=workdir/mathchat-local_outcome")])
def test_make_run_launches_the_config_in_its_workdir(repo, args, line):
  _script(repo / "fakebin" / "bwrap", "exit 0\n")  # present: ensure_bwrap.sh installs nothing
  path = f"{repo / 'fakebin'}:{os.environ.get('PATH', '')}"
  result = _make(repo, "run", *args, PATH=path)
  assert result.returncode == 0, result.stderr
  assert _calls(repo)[-1].rstrip() == "venv-python launch/run.py " + line


def _ci(repo, *, have_bwrap: bool, make_rc: int = 0, have_chromium: bool = True):
  """Runs .ci/run with a PATH holding only the tools it may use."""
  bin_dir = repo / "ci-bin"
  bin_dir.mkdir(exist_ok=True)
  log = repo / "ci.log"
  tools = {t: shutil.which(t) for t in ("bash", "dirname", "id")}
  tools["python3"] = os.path.realpath(sys.executable)  # the interpreter, not a pyenv shim
  for tool, path in tools.items():
    target = bin_dir / tool
    if not target.exists():
      target.symlink_to(path)
  _script(bin_dir / "make", f'echo "make $*" >> {log}\nexit {make_rc}\n')
  _script(bin_dir / "apt-get", f'echo "apt-get $*" >> {log}\n')
  _script(bin_dir / "sudo", '"$@"\n')
  for tool, present in (("bwrap", have_bwrap), ("chromium", have_chromium)):
    if present:
      _script(bin_dir / tool, "exit 0\n")
    elif (bin_dir / tool).exists():
      (bin_dir / tool).unlink()
  if log.exists():
    log.unlink()
  result = subprocess.run([str(bin_dir / "bash"), ".ci/run"], cwd=repo,
                          env={"PATH": str(bin_dir), "HOME": str(repo)},
                          capture_output=True, text=True)
  return result, (log.read_text().splitlines() if log.exists() else [])


def test_ci_installs_bubblewrap_when_missing_then_runs_the_tests(repo):
  probe = [os.path.realpath(sys.executable), "-c", "import ensurepip, venv"]
  if subprocess.run(probe, check=False).returncode:
    pytest.skip("this machine's python3 lacks venv: .ci/run would install it too")
  result, calls = _ci(repo, have_bwrap=False)
  assert result.returncode == 0, result.stderr
  assert calls == ["apt-get update",
                   "apt-get install -y --no-install-recommends bubblewrap", "make test"]
  result, calls = _ci(repo, have_bwrap=True)
  assert result.returncode == 0 and calls == ["make test"]
  # The headless browser of the HTML report's test is installed the same way.
  result, calls = _ci(repo, have_bwrap=False, have_chromium=False)
  assert result.returncode == 0 and calls[1] == (
      "apt-get install -y --no-install-recommends bubblewrap chromium")


def test_ci_fails_when_the_tests_fail(repo):
  result, calls = _ci(repo, have_bwrap=True, make_rc=2)
  assert result.returncode != 0 and calls[-1] == "make test"
