"""Cluster launch scripts and the process-0 publisher, without a cluster.

* launch/local_multiprocess.py: the MAPPA_* environment of each process, prefixed output, the
  first non-zero exit code wins and the other processes are killed (not waited for);
* launch/slurm.sbatch and launch/tpu_pod.sh in DRY_RUN=1 mode with a fake SLURM environment
  (a fake `scontrol` on PATH): the srun / gcloud command and every task's command;
* SharedSGLangEngine: only process 0 publishes, everyone meets in the barrier after it, and a
  failure on process 0 reaches every process.
"""
import asyncio
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest

from mappa_jax import distributed
from mappa_jax.rollout.multiprocess import SharedSGLangEngine
from mappa_jax.rollout.sglang_engine import PublishError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.py")


def _launch(*args, timeout=60):
  return subprocess.run([sys.executable, LAUNCHER, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_local_launcher_gives_each_process_its_environment():
  code = ("import os, sys; from mappa_jax import distributed; "
          "print(distributed.detect()); print(os.environ['XLA_FLAGS'], file=sys.stderr)")
  out = _launch("--num_processes=3", "--cpu_devices_per_process=2", "--", sys.executable,
                "-c", code)
  assert out.returncode == 0, out.stdout + out.stderr
  lines = out.stdout.splitlines()
  seen = {}
  for line in lines:
    prefix, _, rest = line.partition(" ")
    if rest.startswith("{"):
      seen[prefix] = eval(rest)  # pylint: disable=eval-used  (a dict repr we printed)
    else:
      assert rest.endswith("--xla_force_host_platform_device_count=2"), line
  assert sorted(seen) == ["[p0]", "[p1]", "[p2]"]
  addresses = {d["coordinator_address"] for d in seen.values()}
  assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
  for i in range(3):
    assert seen[f"[p{i}]"]["process_id"] == i and seen[f"[p{i}]"]["num_processes"] == 3


def test_local_launcher_with_one_process_is_a_plain_run():
  out = _launch("--num_processes=1", "--", sys.executable, "-c",
                "from mappa_jax import distributed; print(distributed.detect())")
  assert out.returncode == 0 and out.stdout == "[p0] None\n", out.stdout + out.stderr


def test_first_failure_wins_and_the_others_are_killed():
  # Process 1 fails after a moment; process 0 would sleep for a minute; process 2 fails later.
  code = ("import os, sys, time; i = int(os.environ['MAPPA_PROCESS_ID']); "
          "print('up', flush=True); "
          "time.sleep(60) if i == 0 else (time.sleep(0.5 if i == 1 else 20), sys.exit(3 + i))")
  t0 = time.monotonic()
  out = _launch("--num_processes=3", "--", sys.executable, "-c", code)
  assert time.monotonic() - t0 < 20, "the launcher waited for the other processes"
  assert out.returncode == 4, out.stdout + out.stderr
  assert "process 1 exited with 4" in out.stdout
  assert sorted(l for l in out.stdout.splitlines() if l.endswith(" up")) == [
      "[p0] up", "[p1] up", "[p2] up"]


def test_launcher_runs_python_files_and_needs_a_command(tmp_path):
  script = tmp_path / "hello.py"
  script.write_text("import os\nprint('hello', os.environ['MAPPA_PROCESS_ID'])\n")
  out = _launch("--num_processes=2", "--", str(script))
  assert out.returncode == 0 and sorted(out.stdout.splitlines()) == ["[p0] hello 0",
                                                                    "[p1] hello 1"]
  assert _launch("--num_processes=2").returncode == 2


def _fake_slurm(tmp_path, **extra):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  scontrol = bin_dir / "scontrol"
  # Expands the one nodelist the tests use, like `scontrol show hostnames` would.
  scontrol.write_text('#!/bin/bash\n[[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]] || exit 9\n'
                      "echo gpu07; echo gpu08\n")
  scontrol.chmod(0o755)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1", "SLURM_JOB_ID": "4321",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
         "SLURM_SUBMIT_DIR": REPO, "PYTHON": "python3", **extra}
  return env


def _slurm(tmp_path, *args, **extra):
  out = subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=REPO, capture_output=True,
                       text=True, env=_fake_slurm(tmp_path, **extra), timeout=30)
  assert out.returncode == 0, out.stderr
  srun = next(l for l in out.stdout.splitlines() if l.startswith("srun "))
  tasks = [l for l in out.stdout.splitlines() if l.startswith("task ")]
  return shlex.split(srun), tasks


def _task_env(line):
  """'task I on HOST: env K=V ... python launch/run.py ARGS' -> (host, {K: V}, argv)."""
  head, _, cmd = line.partition(": ")
  words = shlex.split(cmd)
  assert words[0] == "env"
  env = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
  argv = words[words.index("launch/run.py") + 1:]
  return head.split()[-1], env, argv


def test_slurm_one_process_per_node(tmp_path):
  srun, tasks = _slurm(tmp_path, "--config=experiments/mathchat.py:paper",
                       "--workdir=/shared/run one")
  assert srun[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                      "--kill-on-bad-exit=1"]
  assert srun[-3:] == [f"{REPO}/launch/slurm.sbatch", "--config=experiments/mathchat.py:paper",
                       "--workdir=/shared/run one"]
  assert len(tasks) == 2
  for i, line in enumerate(tasks):
    host, env, argv = _task_env(line)
    assert host == f"gpu0{7 + i}"
    # The first node coordinates, on a port derived from the job id.
    assert env == {"MAPPA_COORDINATOR_ADDRESS": "gpu07:24321", "MAPPA_NUM_PROCESSES": "2",
                   "MAPPA_PROCESS_ID": str(i)}
    assert argv == ["--config=experiments/mathchat.py:paper", "--workdir=/shared/run one"]
    # What mappa_jax.distributed makes of that environment.
    assert distributed.detect(env) == {"coordinator_address": "gpu07:24321",
                                       "num_processes": 2, "process_id": i}


def test_slurm_one_process_per_gpu(tmp_path):
  srun, tasks = _slurm(tmp_path, "--config=c", PROCESS_PER="gpu", SLURM_GPUS_ON_NODE="4",
                       MAPPA_COORDINATOR_PORT="29500")
  assert "--ntasks=8" in srun and "--ntasks-per-node=4" in srun
  got = [_task_env(l)[:2] for l in tasks]
  assert [h for h, _ in got] == ["gpu07"] * 4 + ["gpu08"] * 4
  assert [e["MAPPA_PROCESS_ID"] for _, e in got] == [str(i) for i in range(8)]
  assert [e["CUDA_VISIBLE_DEVICES"] for _, e in got] == ["0", "1", "2", "3"] * 2
  assert {e["MAPPA_COORDINATOR_ADDRESS"] for _, e in got} == {"gpu07:29500"}


def test_slurm_task_mode_execs_run_py_with_its_procid(tmp_path):
  # What srun runs on each node: the same script with MAPPA_SLURM_TASK=1. The "python" here
  # prints the environment and arguments it was started with.
  fake_python = tmp_path / "python"
  fake_python.write_text('#!/bin/bash\necho "$MAPPA_COORDINATOR_ADDRESS $MAPPA_NUM_PROCESSES '
                         '$MAPPA_PROCESS_ID $CUDA_VISIBLE_DEVICES $PWD" "$@"\n')
  fake_python.chmod(0o755)
  env = {**_fake_slurm(tmp_path), "MAPPA_SLURM_TASK": "1", "REPO": REPO,
         "PYTHON": str(fake_python), "COORDINATOR": "gpu07:1", "NUM_PROCESSES": "8",
         "PROCESS_PER": "gpu", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "slurm.sbatch"), "--workdir=/a b"],
                       cwd="/", env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert out.stdout == f"gpu07:1 8 5 1 {REPO} launch/run.py --workdir=/a b\n"


def test_slurm_outside_an_allocation_fails_clearly(tmp_path):
  env = _fake_slurm(tmp_path)
  del env["SLURM_JOB_NUM_NODES"]
  out = subprocess.run(["bash", "launch/slurm.sbatch"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=30)
  assert out.returncode != 0 and "not inside a SLURM allocation" in out.stderr


def test_tpu_pod_runs_run_py_on_every_worker():
  env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "pod-32", "ZONE": "us-west4-a",
         "PROJECT": "proj", "SETUP": "git pull"}
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "--config=experiments/mathchat.py:paper",
                        "--workdir=gs://b/run 1"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  cmd = shlex.split(out.stdout)
  assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-32", "--zone=us-west4-a"]
  assert "--worker=all" in cmd and "--project=proj" in cmd
  remote = next(w for w in cmd if w.startswith("--command="))[len("--command="):]
  steps = [shlex.split(s) for s in remote.split(" && ")]
  assert steps == [["cd", "~/mappa_jax"], ["git", "pull"],
                   [".venv/bin/python", "launch/run.py", "--config=experiments/mathchat.py:paper",
                    "--workdir=gs://b/run 1"]]
  missing = subprocess.run(["bash", "launch/tpu_pod.sh"], cwd=REPO, capture_output=True,
                           text=True, env={**env, "TPU_NAME": ""}, timeout=30)
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


class _StubEngine:
  """Records publishes; fails them when told to."""

  def __init__(self, publisher=True, fail=False):
    self.publisher = object() if publisher else None
    self.fail = fail
    self.published = []

  async def publish(self, agent, params, version):
    if self.fail:
      raise PublishError("server down")
    self.published.append((agent, version))


class _Barrier:
  """broadcast_one_to_all stand-in: returns what process 0 sent (given in advance)."""

  def __init__(self, process0_value):
    self.value = np.asarray(process0_value, np.int32)
    self.calls = []

  def __call__(self, local):
    self.calls.append(np.asarray(local).tolist())
    return self.value


def test_only_process0_publishes_and_everyone_meets_after_it():
  e0, e1 = _StubEngine(), _StubEngine(publisher=False)
  b0, b1 = _Barrier([7, 0]), _Barrier([7, 0])
  asyncio.run(SharedSGLangEngine(e0, process_index=0, broadcast=b0).publish("a", None, 7))
  asyncio.run(SharedSGLangEngine(e1, process_index=1, broadcast=b1).publish("a", None, 7))
  assert e0.published == [("a", 7)] and e1.published == []
  assert b0.calls == [[7, 0]] and b1.calls == [[7, 0]]  # both reached the barrier


def test_a_failed_publish_on_process0_fails_every_process():
  e0 = _StubEngine(fail=True)
  b0 = _Barrier([3, 1])
  with pytest.raises(PublishError, match="server down"):
    asyncio.run(SharedSGLangEngine(e0, process_index=0, broadcast=b0).publish("a", None, 3))
  assert b0.calls == [[3, 1]]  # process 0 still reached the barrier, with its failure
  with pytest.raises(PublishError, match="process 0 failed"):
    asyncio.run(SharedSGLangEngine(_StubEngine(publisher=False), process_index=1,
                                   broadcast=_Barrier([3, 1])).publish("a", None, 3))
  with pytest.raises(PublishError, match="out of step"):
    asyncio.run(SharedSGLangEngine(_StubEngine(publisher=False), process_index=1,
                                   broadcast=_Barrier([4, 0])).publish("a", None, 3))
  with pytest.raises(ValueError, match="needs a publisher"):
    SharedSGLangEngine(_StubEngine(publisher=False), process_index=0)
