"""Kill -9, then resume exactly: a `launch/run.py` run SIGKILLed mid-run (process group) and
restarted on the same workdir ends with the parameters of an uninterrupted run, bit for bit,
and leaves no corrupt checkpoint behind."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mappa_jax import checkpoint
from tests.tiny_run import TINY_RUN

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OVERRIDES = TINY_RUN + (
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=1",
)
# Longer horizons, tried in turn when the run finished before it could be killed.
_NUM_STEPS = (5, 10, 20)


def _env() -> dict[str, str]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "true"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's local run (conftest fakes 8)
  return env


def _cmd(workdir: str, num_steps: int, async_save: bool) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "launch", "run.py"),
          "--config=experiments/mathchat.py:smoke", f"--workdir={workdir}", *_OVERRIDES,
          f"--config.train.num_steps={num_steps}",
          f"--config.checkpoint.async_save={async_save}"]


def _run(workdir: str, num_steps: int, async_save: bool, log_path: str) -> str:
  with open(log_path, "w") as log:
    result = subprocess.run(_cmd(workdir, num_steps, async_save), cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
  text = open(log_path).read()
  assert result.returncode == 0, text[-4000:]
  return text


def _finished_steps(workdir: str) -> list[int]:
  """Steps Orbax finalised: it writes into '<step>.orbax-checkpoint-tmp-*' and renames to
  '<step>' when the save is complete, so only all-digit names are finished checkpoints."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _cli_digest(workdir: str, step: int) -> dict[str, str]:
  result = subprocess.run(
      [sys.executable, "-m", "mappa_jax.checkpoint", "digest", workdir, f"--step={step}"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  lines = [l.split() for l in result.stdout.splitlines() if l.strip()]
  assert lines and all(len(l) == 2 for l in lines), result.stdout
  return dict(lines)


def _kill_mid_run(workdir: str, num_steps: int, async_save: bool, log_path: str) -> int | None:
  """Starts the run, SIGKILLs its process group once step 1 is checkpointed and a later step
  is under way; -> the last finished checkpoint step at the kill, or None when the run ended
  (or checkpointed its last step) before it could be killed."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(_cmd(workdir, num_steps, async_save), cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + 600
    while not _finished_steps(workdir):
      if proc.poll() is not None:
        raise AssertionError(f"run exited ({proc.returncode}) before its first checkpoint:\n"
                             + open(log_path).read()[-4000:])
      assert time.monotonic() < deadline, "no checkpoint within 600 s"
      time.sleep(0.02)
    # Step 1 is on disk; step 2 starts right after the save: kill inside it (rollout/update,
    # or the next save's write under async_save).
    time.sleep(0.2)
    ended = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  steps = _finished_steps(workdir)
  if ended or not steps or steps[-1] >= num_steps:
    return None
  assert proc.returncode == -signal.SIGKILL, proc.returncode
  return steps[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Uninterrupted runs, one per horizon, made on demand: {num_steps: (workdir, digests)}."""
  cache = {}

  def get(num_steps: int):
    if num_steps not in cache:
      workdir = str(tmp_path_factory.mktemp(f"reference{num_steps}") / "run")
      _run(workdir, num_steps, False, workdir + ".log")
      steps = _finished_steps(workdir)
      assert steps[-1] == num_steps, steps
      cache[num_steps] = (workdir, {s: checkpoint.checkpoint_digests(workdir, s)[1]
                                    for s in steps})
    return cache[num_steps]
  return get


@pytest.mark.parametrize("async_save", [False, True])
def test_kill_9_then_resume_exactly(tmp_path, reference, async_save):
  for attempt, num_steps in enumerate(_NUM_STEPS):
    workdir = str(tmp_path / f"run{attempt}")
    killed_at = _kill_mid_run(workdir, num_steps, async_save, str(tmp_path / f"kill{attempt}.log"))
    if killed_at is not None:
      break
  else:
    pytest.fail(f"every run ({_NUM_STEPS} steps) finished before it could be killed: the test "
                "could not interrupt a run")
  assert 1 <= killed_at < num_steps

  # (b) what the kill left: every finished checkpoint restores (a torn write stays a tmp dir).
  for step in _finished_steps(workdir):
    assert checkpoint.checkpoint_digests(workdir, step)[0] == step

  # The same command on the same workdir resumes and finishes.
  log = _run(workdir, num_steps, async_save, str(tmp_path / "resume.log"))
  # (c) it really resumed, from a step the killed run had checkpointed.
  resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", log)]
  assert resumed, log[-4000:]
  assert resumed[0] >= max(1, killed_at), (resumed, killed_at)
  assert resumed[0] < num_steps, (resumed, num_steps)
  assert f"step {resumed[0] + 1}/{num_steps}" in log, log[-4000:]

  # (a) final parameters of every agent equal the uninterrupted run's, bit for bit (CLI).
  ref_dir, ref_digests = reference(num_steps)
  final = _cli_digest(workdir, num_steps)
  assert final == _cli_digest(ref_dir, num_steps)
  assert final == ref_digests[num_steps]
  assert len(final) >= 2  # every agent of the team

  # (b) every checkpoint left after the resume restores, and matches the reference's step.
  steps = _finished_steps(workdir)
  assert steps[-1] == num_steps, steps
  for step in steps:
    step_read, digests = checkpoint.checkpoint_digests(workdir, step)
    assert step_read == step
    if step in ref_digests:
      assert digests == ref_digests[step], step
