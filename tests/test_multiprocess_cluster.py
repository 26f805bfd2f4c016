"""Two-process CPU runs through launch/local_multiprocess.py (one CPU device per process).

* pooled whitening + coach statistics: the same fixed global batch through Trainer._update
  with rl.whiten_scope='pooled', in two processes (each holding one contiguous half) and in one
  process on two devices (the same 2-device mesh): equal update metrics, pooled statistics and
  weight changes (up to float summation order); coach/<role>/* over both processes' verdicts
  equal one accumulator's over all of them;
* SGLang across processes: two processes train two steps against our SGLang-protocol servers
  (one per agent, in this process); both send generation requests, only process 0 publishes,
  and every action of step s was sampled with weight version s - 1 (none stale; in the
  trainer, later collectives order the processes too, so the barrier is also tested alone);
* the publish barrier alone (SharedSGLangEngine, a fake SGLang server, a slow process 0);
* DSBench: one step of `launch/run.py` on the default local preset in two processes; the
  global counts are the one-process ones (2 trajectories, one action of every agent each)
  and the coach statistics count every process's verdicts.
Rollouts differ between a one- and a two-process run (every process samples its own shard
with its own engine), so rollout-based runs compare counts, not samples.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from mappa_jax import config as mconfig
from mappa_jax.rl import team as team_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.py")

_SMALL = [
    "--config.rollout.rollout_batch_size=2",
    "--config.rollout.n_samples_per_prompt=1",
    "--config.rollout.max_new_tokens=8",
    "--config.rollout.min_new_tokens=2",
    "--config.data.synthetic.n_train=4",
    "--config.data.synthetic.n_eval=1",
    "--config.eval.every_steps=0",
    "--config.checkpoint.async_save=False",
    "--config.train.samples_per_optimizer_step=2",
    "--config.train.micro_batch_size=1",
    "--config.train.warmup_ratio=0",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=-1",
]


def _launch(num_processes, command, *, cpu_devices=1, timeout=600):
  """Runs `command` under launch/local_multiprocess.py; {process: RESULT json}, output."""
  out = subprocess.run(
      [sys.executable, LAUNCHER, f"--num_processes={num_processes}",
       f"--cpu_devices_per_process={cpu_devices}", "--", *command],
      cwd=REPO, capture_output=True, text=True, timeout=timeout,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
  results = {}
  for line in out.stdout.splitlines():
    prefix, _, rest = line.partition(" ")
    if rest.startswith("RESULT "):
      results[int(prefix[2:-1])] = json.loads(rest[len("RESULT "):])
  return results, out.stdout


@pytest.mark.slow
def test_pooled_update_and_coach_stats_equal_one_process(tmp_path):
  overrides = [*_SMALL, "--config.rl.whiten_scope=pooled"]
  two, _ = _launch(2, ["tests/multiprocess_worker.py", "update", str(tmp_path / "two"),
                       *overrides])
  one, _ = _launch(1, ["tests/multiprocess_worker.py", "update", str(tmp_path / "one"),
                       *overrides], cpu_devices=2)
  assert sorted(two) == [0, 1] and sorted(one) == [0]
  ref = one[0]
  for r in two.values():  # both processes report the same global numbers
    assert r["metrics"] == two[0]["metrics"] and r["pooled"] == two[0]["pooled"]
    assert r["coach"] == two[0]["coach"]
  r = two[0]

  # The batch: 4 trajectories x one action of each of 3 agents, counted globally.
  assert {k: v for k, v in r["metrics"].items() if k.startswith("experience/")} == {
      k: v for k, v in ref["metrics"].items() if k.startswith("experience/")}
  assert all(r["metrics"][f"experience/{a}/actions"] == 4 for a in r["deltas"])
  # Pooled whitening: one set of statistics over every agent's tokens on both processes (a
  # process-local or per-agent set would count fewer tokens).
  assert r["pooled"]["n"] == ref["pooled"]["n"]
  np.testing.assert_allclose(r["pooled"]["mean"], ref["pooled"]["mean"], rtol=1e-5)
  np.testing.assert_allclose(r["pooled"]["m2"], ref["pooled"]["m2"], rtol=1e-4)
  # The update given that batch: same losses, gradients and weight changes.
  train_keys = sorted(k for k in ref["metrics"] if k.startswith("train/"))
  assert train_keys and sorted(k for k in r["metrics"] if k.startswith("train/")) == train_keys
  for k in train_keys:
    np.testing.assert_allclose(r["metrics"][k], ref["metrics"][k], rtol=1e-4, atol=1e-6,
                               err_msg=k)
  for agent, leaves in ref["deltas"].items():
    assert r["metrics"][f"train/{agent}/grad_norm"] > 0
    assert any(abs(leaf[-1]) > 0 for leaf in leaves), agent
    for i, (want, got) in enumerate(zip(leaves, r["deltas"][agent])):
      # [first 64 changes..., sum of |changes|]; Adam's first step is ~lr * sign(g), so the
      # changes are compared relative to the largest one (measured: within 2e-5 of it).
      scale = max(np.abs(want[:-1]).max(), 1e-12)
      np.testing.assert_allclose(got[:-1], want[:-1], rtol=0, atol=1e-3 * scale,
                                 err_msg=f"{agent} leaf {i}")
      np.testing.assert_allclose(got[-1], want[-1], rtol=1e-3, err_msg=f"{agent} leaf {i}")

  # Coach statistics: all 10 verdicts (process 0 recorded 5), the same as in one process.
  assert r["coach"]["coach/all/n"] == 10
  assert sorted(r["coach"]) == sorted(ref["coach"])
  for k, v in ref["coach"].items():
    np.testing.assert_allclose(r["coach"][k], v, rtol=1e-9, err_msg=k)


@pytest.mark.slow
def test_sglang_servers_shared_by_two_processes(tmp_path):
  from mappa_jax.rollout.server import BackgroundServer, load_server  # after conftest's env
  workdir = str(tmp_path / "run")
  base = mconfig.validate(mconfig.load_config("experiments/mathchat.py:smoke",
                                              overrides=tuple(_SMALL)))
  agents = mconfig.agent_names(base)
  # The servers start from the weights the trainer starts from (the run's tiny model).
  model_dir = team_lib.model_dir(mconfig.experiment(base).model, workdir, base.seed)
  servers = {a: BackgroundServer(load_server(model_dir)) for a in agents}
  try:
    urls = {a: s.start() for a, s in servers.items()}
    overrides = [*_SMALL, "--config.train.num_steps=2", "--config.rollout.engine=sglang",
                 *(f"--config.rollout.sglang_urls.{a}=('{u}',)" for a, u in urls.items())]
    results, _ = _launch(2, ["tests/multiprocess_worker.py", "sglang", workdir, *overrides])
    final = {a: s.server.engine.weight_version(s.server.agent) for a, s in servers.items()}
  finally:
    for s in servers.values():
      s.stop()
  assert sorted(results) == [0, 1]
  for pid, r in results.items():
    assert r["calls"] > 0, f"process {pid} sent no /generate request"
    # Step 1 sampled the initial weights, step 2 the weights published after step 1.
    assert r["versions"] == {"1": [0], "2": [1]}, (pid, r["versions"])
    assert r["publisher"] == (pid == 0)
    assert r["published"] == ["v00000001", "v00000002"]
    for agent in agents:
      assert r["metrics"][f"train/{agent}/loss"] == results[0]["metrics"][f"train/{agent}/loss"]
  assert final == {a: 2 for a in agents}


@pytest.mark.slow
def test_no_process_samples_before_process0_has_published(tmp_path):
  """The publish barrier on its own (the trainer's later collectives would hide its absence):
  process 0 takes 2 s to write version 1; process 1 returns from publish only once the server
  serves it, so its very next request is answered by version 1."""
  from tests.rollout.test_sglang_engine import Servers  # pylint: disable=g-import-not-at-top
  servers = Servers(1)
  try:
    results, _ = _launch(2, ["tests/multiprocess_worker.py", "barrier", str(tmp_path),
                             servers.urls[0]], timeout=300)
    fake = servers.fakes[0]
  finally:
    servers.close()
  assert {p: r["weight_version"] for p, r in results.items()} == {0: 1, 1: 1}
  # One process (0) drove the update; both sent their generate request.
  assert [c[0] for c in fake.control] == ["pause", "update", "continue"]
  assert sorted(r["input_ids"][-1] for r in fake.requests) == [5, 6]


def _scalars(logdir):
  """tag -> {step: value}."""
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags().get("tensors", []):
    out[tag] = {e.step: float(e.tensor_proto.float_val[0]) for e in acc.Tensors(tag)
                if e.tensor_proto.float_val}
  for tag in acc.Tags().get("scalars", []):
    out[tag] = {e.step: e.value for e in acc.Scalars(tag)}
  return out


@pytest.mark.slow
def test_dsbench_step_in_two_processes(tmp_path):
  workdir = str(tmp_path / "ds")
  _, output = _launch(2, [
      "launch/run.py", "--config=experiments/dsbench.py", f"--workdir={workdir}",
      "--config.train.num_steps=1", "--config.rollout.rollout_batch_size=2",
      "--config.rollout.n_samples_per_prompt=1", "--config.rollout.max_new_tokens=12",
      "--config.rollout.min_new_tokens=2", "--config.train.samples_per_optimizer_step=2",
      "--config.train.micro_batch_size=1", "--config.eval.every_steps=0",
      "--config.checkpoint.async_save=False", "--config.mesh.data=1", "--config.mesh.fsdp=-1"])
  assert "[p0]" in output and "[p1]" in output
  scalars = _scalars(os.path.join(workdir, "tensorboard", "dsbench-local"))
  agents = ("data_engineer", "modeler", "analyst")
  # One-process counts of this global batch: 2 tasks x 1 sample, one action of every agent.
  assert scalars["rollout/trajectories"] == {1: 2.0}
  for agent in agents:
    assert 1 in scalars[f"train/{agent}/loss"], sorted(scalars)
    assert scalars[f"experience/{agent}/actions"] == {1: 2.0}
    # Every process's verdicts: process 0 alone scored one action per agent.
    assert scalars[f"coach/{agent}/n"] == {1: 2.0}, sorted(k for k in scalars if "coach" in k)
  assert scalars["coach/all/n"] == {1: 6.0}
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
  # Each process had its own sandbox workspaces in the shared workdir.
  assert sorted(os.listdir(os.path.join(workdir, "workspaces"))) == ["process0", "process1"]
