"""One process of a multi-process test, started by launch/local_multiprocess.py (N=1 or 2).

  python launch/local_multiprocess.py --num_processes=2 -- tests/multiprocess_worker.py \
    MODE WORKDIR [--config.x=y ...]

Prints one `RESULT {json}` line. Modes:
  update  mathchat smoke Trainer; a fixed global batch of trajectories (process p takes the
          p-th contiguous block, so the optimizer steps group the same rows as in one process)
          goes through the team's experience and update; fixed coach verdicts (process p
          records its share) go through Trainer._coach_scalars. Reports the update metrics, the pooled whitening
          statistics, per-leaf weight changes and the coach scalars.
  sglang  mathchat smoke Trainer with rollout.engine='sglang' against the servers named in
          the overrides; trains train.num_steps steps and reports, per step, the weight version
          of every sampled action, the number of /generate calls this process made, and where
          the weights were published.
  barrier SharedSGLangEngine alone against the fake SGLang server at the URL given: publish
          version 1 (process 0 takes 2 s to write it), then generate once at once.
"""
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

# jax.distributed starts in main(), before any array exists; importing jax does not start it.
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mappa_jax import config as mconfig  # pylint: disable=wrong-import-position
from mappa_jax import distributed  # pylint: disable=wrong-import-position
from mappa_jax import train  # pylint: disable=wrong-import-position
from mappa_jax.coach.openai_coach import LLMResult  # pylint: disable=wrong-import-position
from mappa_jax.coach.types import CoachRequest, CoachResult  # pylint: disable=wrong-import-position
from mappa_jax.rl import global_batch  # pylint: disable=wrong-import-position
from mappa_jax.workflows.records import Action, Trajectory  # pylint: disable=wrong-import-position

N_TRAJ = 4  # global trajectories of the update mode; one action per agent each


def fixed_trajectories(agents):
  """N_TRAJ trajectories, each with one action of every agent (varied lengths and scores)."""
  rng = np.random.default_rng(0)
  trajs = []
  for i in range(N_TRAJ):
    actions = []
    for turn, agent in enumerate(agents):
      n = int(rng.integers(2, 9))
      actions.append(Action(
          agent=agent, turn=turn, prompt_ids=[int(t) for t in rng.integers(3, 60, 5)],
          response_ids=[int(t) for t in rng.integers(3, 60, n)], rollout_logprobs=[-1.0] * n,
          finish_reason="stop", coach=CoachResult(status="scored",
                                                  score=float(rng.integers(0, 11)))))
    trajs.append(Trajectory(f"t{i}", 0, "aime" if i % 2 else "amc", actions=actions))
  return trajs


def fixed_verdicts():
  """(request, result) pairs covering every statistic: invalid, cached, re-asked, latencies,
  tokens, answer votes, two roles and two task types."""
  out = []
  for i in range(10):
    role = "Problem Solver" if i % 3 else "Verifier"
    request = CoachRequest(workflow="mathchat", role=role, role_description="", task="t",
                           agent_input="in", agent_output="x" * (5 + 7 * i),
                           task_type="aime" if i % 2 else "amc")
    if i == 4:
      result = CoachResult(status="invalid", reason="unparseable", latency_s=0.5, tokens_in=9)
    else:
      result = LLMResult(status="scored", score=float((i * 7) % 11), answer_correct=i % 4 == 0,
                         coach_name="c", latency_s=0.1 * (i + 1), tokens_in=100 + i,
                         tokens_out=20 + i, cached=i == 6, attempts=0 if i == 6 else 1,
                         reasked=i == 7)
    out.append((request, result))
  return out


def _flat(tree):
  return [np.asarray(x, np.float64).ravel()
          for x in jax.tree.leaves(global_batch.local_replica(tree))]


def run_update(workdir, overrides):
  config = mconfig.validate(mconfig.load_config("experiments/mathchat.py:smoke",
                                                overrides=tuple(overrides)))
  trainer = train.Trainer(config, workdir)
  pid, n_proc = jax.process_index(), jax.process_count()
  trajs = fixed_trajectories(trainer.agents)
  block = N_TRAJ // n_proc
  mine = trajs[pid * block:(pid + 1) * block]
  pooled = {}
  team = trainer.team
  inner = team._pooled_stats  # pylint: disable=protected-access

  def capture(batches):
    stats = inner(batches)
    if stats is not None:
      pooled.update(zip(("n", "mean", "m2"), (np.asarray(
          global_batch.local_replica(s), np.float64).ravel().tolist() for s in stats)))
    return stats

  team._pooled_stats = capture  # pylint: disable=protected-access
  before = {a: _flat(team.states[a].params) for a in trainer.agents}
  batches, metrics = team.experience(mine)
  updates, trainer.rng = team.update(batches, trainer.rng)
  metrics.update(updates)
  deltas = {}
  for agent in trainer.agents:
    after = _flat(team.states[agent].params)
    deltas[agent] = [(a - b).tolist()[:64] + [float(np.sum(np.abs(a - b)))]
                     for a, b in zip(after, before[agent])]
  for i, (request, result) in enumerate(fixed_verdicts()):
    if i % n_proc == pid:
      trainer.coach_stats.record(request, result)
  coach = trainer._coach_scalars()  # pylint: disable=protected-access
  trainer.close()
  return {"metrics": metrics, "pooled": pooled, "deltas": deltas, "coach": coach}


def run_sglang(workdir, overrides):
  config = mconfig.validate(mconfig.load_config("experiments/mathchat.py:smoke",
                                                overrides=tuple(overrides)))
  trainer = train.Trainer(config, workdir)
  versions, calls = {}, {"generate": 0}
  inner_generate = trainer.engine.engine.generate
  inner_run_all = trainer._rollout  # pylint: disable=protected-access

  async def generate(*args, **kwargs):
    calls["generate"] += 1
    return await inner_generate(*args, **kwargs)

  async def run_all(workflow, tasks, n_samples, name="rollout"):
    trajs = await inner_run_all(workflow, tasks, n_samples, name)
    if name == "rollout":
      versions[str(trainer.step)] = sorted({a.weight_version for t in trajs for a in t.actions})
    return trajs

  trainer.engine.engine.generate = generate
  trainer._rollout = run_all  # pylint: disable=protected-access
  metrics = trainer.train()
  published = sorted(os.listdir(os.path.join(workdir, "published", trainer.agents[0])))
  return {"metrics": metrics, "versions": versions, "calls": calls["generate"],
          "published": published, "publisher": trainer.engine.engine.publisher is not None}


class _SlowPublisher:
  """Writes a fake HF dir (what FakeSGLang checks for) after a delay: a real export takes time,
  and that is when a process without a barrier would already sample the old weights."""

  def __init__(self, root, delay_s):
    self.root, self.delay_s = root, delay_s

  def write(self, agent, params, version):
    import pathlib  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    from mappa_jax.rollout import publish  # pylint: disable=g-import-not-at-top
    time.sleep(self.delay_s)
    path = pathlib.Path(self.root) / agent / publish.version_dirname(version)
    (path / publish.HF_SUBDIR).mkdir(parents=True)
    (path / publish.HF_SUBDIR / "config.json").write_text("{}")
    (path / publish.HF_SUBDIR / "model.safetensors").write_text("")
    return publish.PublishedVersion(agent, version, path, None, path / publish.HF_SUBDIR)


def run_barrier(workdir, args):
  """SharedSGLangEngine alone: publish version 1 (process 0 slowly), then generate at once."""
  import asyncio  # pylint: disable=g-import-not-at-top
  from mappa_jax.rollout.multiprocess import SharedSGLangEngine  # pylint: disable=g-import-not-at-top
  from mappa_jax.rollout.sglang_engine import SGLangEngine  # pylint: disable=g-import-not-at-top
  from mappa_jax.rollout.types import SamplingParams  # pylint: disable=g-import-not-at-top
  pid = jax.process_index()
  publisher = _SlowPublisher(workdir, delay_s=2.0) if pid == 0 else None
  engine = SharedSGLangEngine(SGLangEngine({"a": [args[0]]}, publisher=publisher),
                              process_index=pid)

  async def main():
    try:
      await engine.publish("a", None, 1)
      done = await engine.generate("a", [5 + pid], SamplingParams(max_new_tokens=3, seed=pid))
      return done.weight_version
    finally:
      await engine.aclose()

  return {"weight_version": asyncio.run(main())}


def main():
  distributed.initialize()
  mode, workdir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
  result = {"update": run_update, "sglang": run_sglang, "barrier": run_barrier}[mode](workdir, overrides)
  result["process"] = jax.process_index()
  print("RESULT " + json.dumps(result), flush=True)
  if jax.process_count() > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
