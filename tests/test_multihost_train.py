"""Multi-process training: the global batch assembly (one process, fake devices) and the Trainer
across two jax.distributed processes on 127.0.0.1 (one CPU device each).

In the two-process test each process rolls out its half of every step's tasks with its own
sampler, the local batches are assembled into one global batch on the 2-device mesh (params
FSDP-sharded across the processes), every agent is updated, process 0 writes TensorBoard, both
write the Orbax checkpoint, both must end with bit-identical weights, and a second Trainer
resumes from the checkpoint, takes one more step in lockstep and evaluates (process 0's eval
scalars shared, its results file written once).
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from mappa_jax import sharding as shd
from mappa_jax.rl import global_batch
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl.update import UpdateConfig, advantages
from tests.rl.random_trajectories import batch_config, random_trajectories

_OVERRIDES = [
    "--config.rollout.rollout_batch_size=2",
    # The shipped pretrained team (not a random model, whose gibberish ties every score so
    # that whitened advantages are all 0): 4 trajectories whose coach scores differ.
    "--config.rollout.n_samples_per_prompt=2",
    "--config.train.samples_per_optimizer_step=2",
    "--config.train.micro_batch_size=1",
    "--config.data.synthetic.n_train=4",
    "--config.data.synthetic.n_eval=1",
    "--config.eval.every_steps=0",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.async_save=False",
    # A real first update: no warm-up (its first learning rate is 0), truncated actions too.
    "--config.train.warmup_ratio=0",
    "--config.rl.mask_truncated=False",
    # Params and optimizer state sharded across the two processes (the gather path).
    "--config.mesh.data=1",
    "--config.mesh.fsdp=-1",
]

_CHILD = r"""
import hashlib, json, sys
from mappa_jax import distributed
assert distributed.initialize()
import jax
import numpy as np
from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax.rl import global_batch

workdir, overrides = sys.argv[1], sys.argv[2:]

def load(num_steps, *extra):
  return mconfig.validate(mconfig.load_config(
      "experiments/mathchat.py:local",
      overrides=tuple(overrides) + (f"--config.train.num_steps={num_steps}",) + extra))

def digest(tree):
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(global_batch.local_replica(tree)):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()

def snapshot(trainer):
  return {a: digest(trainer.team.states[a].params) for a in trainer.agents}

trainer = train.Trainer(load(1), workdir)
metrics = trainer.train()
result = {
    "process": jax.process_index(), "metrics": metrics, "params": snapshot(trainer),
    "engine": {a: digest(trainer.engine.params(a)) for a in trainer.agents},
    "ref": digest(trainer.team.ref_params),
    "sharded_leaves": sum(not x.is_fully_replicated
                          for x in jax.tree.leaves(trainer.team.states[trainer.agents[0]].params)),
    "steps": {a: int(np.asarray(trainer.team.states[a].step.addressable_data(0)))
              for a in trainer.agents}}
# Resume in the same workdir: restore (every process), one more global step, then evaluate.
resumed = train.Trainer(load(2, "--config.eval.every_steps=2"), workdir)
resumed._restore()
result["restored"] = snapshot(resumed)
result["restored_step"] = resumed.step
result["metrics2"] = resumed.train()
result["params2"] = snapshot(resumed)
print("RESULT " + json.dumps(result), flush=True)
jax.distributed.shutdown()
"""


def _trajectories():
  return random_trajectories(0)


@pytest.mark.parametrize("whiten,estimator,pack", [
    ("per_agent", "reinforce_pp", False), ("per_agent_per_stratum", "reinforce_pp", False),
    ("per_agent", "grpo", False), ("per_agent", "reinforce_pp_baseline", True)])
def test_global_batch_in_one_process_matches_the_local_batch(whiten, estimator, pack):
  """One process, 8 fake devices: the global batch is the local one padded (to a row count the
  mesh divides) with re-numbered strata/groups, and gives the same advantages."""
  trajs = _trajectories()
  local, stats = build_train_batch(trajs, "a", batch_config((16,), 2, pack_sequences=pack))
  mesh = shd.make_mesh(shd.MeshConfig(data=-1, fsdp=1, tensor=1))
  shape = global_batch.agree_shape(local, stats, samples_per_optimizer_step=2, data_parallel=8)
  b, a = local.tokens.shape[0], local.num_actions
  assert (shape.rows, shape.seq_len) == (16 if not pack else 8, 16)
  assert shape.slots == (shape.rows if not pack else a) and (b, a) == ((10, 10) if not pack
                                                                    else (4, 10))
  assert shape.totals == {k: stats[k] for k in ("actions", "invalid", "truncated",
                                                 "left_truncated")}
  glob = global_batch.to_global(local, trajs, "a", shape, mesh, max_strata=8)
  assert glob.tokens.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  for f in dataclasses.fields(local):
    got, want = np.asarray(getattr(glob, f.name)), np.asarray(getattr(local, f.name))
    n = b if f.name in global_batch.TOKEN_FIELDS else a
    assert got.shape[0] == (shape.rows if n == b else shape.slots)
    if f.name in ("strata", "groups"):  # same partition of the real slots, ids re-assigned
      real = want[local.valid]
      pairs = set(zip(real.tolist(), got[:n][local.valid].tolist()))
      assert len(pairs) == len(set(real.tolist())) == len(set(p[1] for p in pairs))
      continue
    np.testing.assert_array_equal(got[:n], want, err_msg=f.name)
    pad = {"action_ids": -1, "next_action": -1}.get(f.name, 0)
    assert (got[n:] == pad).all(), f.name
  assert not np.asarray(glob.valid)[a:].any()

  cfg = UpdateConfig(whiten_scope=whiten, advantage_estimator=estimator)
  rng = np.random.default_rng(1)
  lp = rng.normal(size=(shape.rows, 16)).astype(np.float32) * 0.2
  ref = rng.normal(size=(shape.rows, 16)).astype(np.float32) * 0.2
  want = advantages(jnp.asarray(lp[:b]), jnp.asarray(ref[:b]), jax.tree.map(jnp.asarray, local),
                    cfg)["advantages"]
  got = jax.jit(lambda l, r, g: advantages(l, r, g, cfg)["advantages"])(lp, ref, glob)
  np.testing.assert_allclose(np.asarray(got)[:b], np.asarray(want), rtol=1e-5, atol=1e-6)
  assert not np.asarray(got)[b:].any()


def _scalars(logdir):
  """tag -> the steps it was written at."""
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {t: {e.step for e in acc.Tensors(t)} for t in acc.Tags().get("tensors", [])}
  out.update({t: {e.step for e in acc.Scalars(t)} for t in acc.Tags().get("scalars", [])})
  return out


@pytest.mark.slow
def test_two_process_training_step(tmp_path):
  workdir = str(tmp_path / "run")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = []
  for pid in range(2):
    env = {**os.environ, "MAPPA_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "MAPPA_NUM_PROCESSES": "2", "MAPPA_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu",
           # XLA:CPU's concurrency-optimised scheduler lets the two processes issue a step's
           # Gloo collectives in different orders (a mismatch abort); GPUs are unaffected.
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
                        "--xla_cpu_enable_concurrency_optimized_scheduler=false"}
    procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, workdir, *_OVERRIDES],
                                  cwd=repo, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=600)
      assert proc.returncode == 0, err[-4000:]
      lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
      assert lines, out[-2000:] + err[-2000:]
      results.append(json.loads(lines[-1][len("RESULT "):]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  assert sorted(r["process"] for r in results) == [0, 1]
  r0, r1 = results
  agents = sorted(r0["params"])
  assert agents and sorted(r1["params"]) == agents

  # One global step: both processes end with the same (updated) weights, and their samplers
  # were given exactly those weights.
  assert r0["params"] == r1["params"]
  assert r0["sharded_leaves"] > 0  # the weights really are split across the processes
  assert r0["ref"] == r1["ref"]
  for r in results:
    assert r["engine"] == r["params"]
    for agent in agents:
      assert r["steps"][agent] >= 1
      # An agent whose advantages are all 0 (equal rewards, whitened) keeps its weights.
      moved = r["metrics"][f"train/{agent}/grad_norm"] > 0
      assert (r["params"][agent] != r["ref"]) == moved, agent
  assert any(r0["params"][a] != r0["ref"] for a in agents), "no agent was updated"
  # Rollout counts are global (one task x 2 samples per process); update metrics come from the global batch.
  for r in results:
    assert r["metrics"]["rollout/trajectories"] == 4
    for agent in agents:
      assert r["metrics"][f"train/{agent}/loss"] == r0["metrics"][f"train/{agent}/loss"]
      assert r["metrics"][f"experience/{agent}/actions"] >= 2

  # Resume: both processes restore step 1's weights, then take step 2 in lockstep.
  for r in results:
    assert r["restored_step"] == 1 and r["restored"] == r["params"]
    assert r["metrics2"]["rollout/trajectories"] == 4
  assert r0["params2"] == r1["params2"]
  # Evaluation: every process ran it; process 0's scalars are shared, written once.
  evals = {k: v for k, v in r0["metrics2"].items() if k.startswith("eval/")}
  assert evals and evals == {k: v for k, v in r1["metrics2"].items() if k.startswith("eval/")}
  assert sorted(os.listdir(os.path.join(workdir, "eval_results"))) == [
      "step000002_synthetic.json", "step000002_synthetic.trajectories.jsonl"]  # written once

  scalars = _scalars(os.path.join(workdir, "tensorboard", "mathchat-local"))
  for agent in agents:
    assert scalars[f"train/{agent}/loss"] == {1, 2}, sorted(scalars)
  assert scalars["rollout/trajectories"] == {1, 2}
  assert all(scalars[k] == {2} for k in evals)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
