"""The trainer under faults (smoke preset, real sampler/sandbox/update/Orbax, a real HTTP coach on
127.0.0.1): rollouts independent of timing and replayable bit for bit, a coach that fails and
recovers mid-run, a sustained outage that stops the run with the last checkpoint intact, and a
resume with an incompatible config that names the fix and leaves the checkpoints untouched."""
import asyncio
import os
import random

import pytest

from mappa_jax import checkpoint as ckpt
from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax.coach.openai_coach import CoachUnavailableError
from tests.coach import openai_test_server as ts
from tests.test_train import _OVERRIDES, _scalars

pytestmark = pytest.mark.slow

_COACH = ("--config.coach.kind=openai", "--config.coach.model=judge",
          "--config.coach.api_key_env=", "--config.coach.max_concurrency=8")


def _config(*extra: str):
  return mconfig.validate(mconfig.load_config(
      "experiments/mathchat.py:smoke",
      overrides=_OVERRIDES + ("--config.eval.every_steps=0", "--config.eval.at_start=False")
      + extra))


class _DelaySandbox:
  """The trainer's sandbox, each run delayed by a random duration (changes arrival order)."""

  def __init__(self, inner, rng: random.Random):
    self.inner, self.rng = inner, rng
    self.limits = inner.limits

  async def run(self, code, workspace, limits=None):
    await asyncio.sleep(self.rng.uniform(0.0, 0.05))
    return await self.inner.run(code, workspace, limits=limits)

  def close(self):
    self.inner.close()


class _DelayCoach:
  """The coach, each call delayed by a random duration; records (agent, verdict) as returned,
  before the trainer could touch it."""

  def __init__(self, inner, rng: random.Random):
    self.inner, self.rng = inner, rng
    self.verdicts = []

  async def score(self, request):
    await asyncio.sleep(self.rng.uniform(0.0, 0.05))
    result = await self.inner.score(request)
    self.verdicts.append((request.metadata["agent"], result.status, result.score))
    return result


class _DelayEngine:
  """Delays each generation request: stands for the sandbox latency before an agent's next
  turn (the random tiny model rarely writes code), so requests reach the engine in a random
  order and batch differently."""

  def __init__(self, inner, rng: random.Random):
    self.inner, self.rng = inner, rng

  async def generate(self, agent, prompt_ids, sampling):
    await asyncio.sleep(self.rng.uniform(0.0, 0.05))
    return await self.inner.generate(agent, prompt_ids, sampling)

  def __getattr__(self, name):
    return getattr(self.inner, name)


def _delayed_trainer(config, workdir: str, delay_seed: int):
  """A Trainer whose generations, sandbox and coach calls take random time, recording its
  trajectories."""
  trainer = train.Trainer(config, workdir)
  rng = random.Random(delay_seed)
  trainer.workflow.engine = _DelayEngine(trainer.workflow.engine, rng)
  trainer.workflow.sandbox = _DelaySandbox(trainer.sandbox, rng)
  trainer.coach.inner = _DelayCoach(trainer.coach.inner, rng)
  trainer.trajectories = []
  run = trainer.workflow.run

  async def recorded(task, i):
    traj = await run(task, i)
    trainer.trajectories.append(traj)
    return traj
  trainer.workflow.run = recorded
  return trainer


def _tokens(trajs) -> list:
  """Per trajectory (sorted): task, sample and every action's (agent, turn, prompt ids,
  response ids, rollout logprobs, coach verdict)."""
  return sorted(((t.task_id, t.sample_index, [
      (a.agent, a.turn, tuple(a.prompt_ids), tuple(a.response_ids), tuple(a.rollout_logprobs),
       a.coach.status if a.coach else None, a.coach.score if a.coach else None)
      for a in t.actions]) for t in trajs), key=repr)


def _comparable(metrics: dict) -> dict:
  """Everything but wall-clock, latency, token/cost accounting and cache-hit counts (a replay
  answers from the cache by design)."""
  skip = ("time/", "latency", "cache_hit", "cost", "tokens_in", "tokens_out")
  return {k: v for k, v in metrics.items() if not any(s in k for s in skip)}


def test_replay_reproduces_a_run_with_random_delays(tmp_path):
  """Part 6: a coach-backed run and its replay (endpoint down, another base_url), each with its
  own random generation/sandbox/coach delays, give the same trajectories token for token, the
  same metrics and bit-identical parameters (checkpoint digests)."""
  cache = str(tmp_path / "verdicts.sqlite")
  with ts.OpenAITestServer(responder=lambda body: ts.answer(
      f"ok\nPROCESS_SCORE: {len(str(body)) % 11}")) as server:
    config = _config(*_COACH, f"--config.coach.base_url={server.base_url}",
                     f"--config.coach.cache_path={cache}", "--config.train.num_steps=2")
    first = _delayed_trainer(config, str(tmp_path / "a"), delay_seed=1)
    metrics_a = first.train()
  # Replay: no server, a different base_url (where the model is served is not what it is).
  replay_config = _config(*_COACH, "--config.coach.kind=replay",
                          "--config.coach.base_url=http://127.0.0.1:9/v1",
                          f"--config.coach.cache_path={cache}", "--config.train.num_steps=2")
  replay = _delayed_trainer(replay_config, str(tmp_path / "r"), delay_seed=3)
  metrics_r = replay.train()
  assert len(first.trajectories) == len(replay.trajectories) == 4  # 2 steps x 2 tasks
  assert _tokens(replay.trajectories) == _tokens(first.trajectories)
  assert _comparable(metrics_r) == _comparable(metrics_a)
  assert metrics_r["coach/all/cache_hit_rate"] == 1.0
  digest_a, digest_r = _digest(str(tmp_path / "a")), _digest(str(tmp_path / "r"))
  assert digest_a == digest_r and digest_a[0] == 2


def _digest(workdir: str) -> tuple:
  step, digests = ckpt.checkpoint_digests(workdir)
  return step, tuple(sorted(digests.items()))


class _FaultyCoachScript:
  """A coach server's script: the first first-ask attempts cycle through every fault (429 with
  Retry-After, 500, a hang past the timeout, garbage, an out-of-range score), later ones are
  healthy. Every re-ask gets garbage, so a call whose first reply was unreadable ends invalid
  whatever the interleaving of concurrent calls (the test's counts do not depend on timing)."""
  FAULTS = (ts.status(429, retry_after=0.01), ts.status(500), ts.hang(),
            ts.answer("I think it went fine."), ts.answer("PROCESS_SCORE: 42"))

  def __init__(self, rounds: int = 2):
    self.first_asks = 0
    self.rounds = rounds

  def __call__(self, body: dict) -> dict:
    if len(body["messages"]) > 1:  # a re-ask (prompt, reply, format reminder)
      return ts.answer("still no score, sorry")
    i, self.first_asks = self.first_asks, self.first_asks + 1
    if i < self.rounds * len(self.FAULTS):
      return self.FAULTS[i % len(self.FAULTS)]
    return ts.answer("Good.\nPROCESS_SCORE: 7\nANSWER_CORRECT: yes")


_FLAKY = ("--config.coach.timeout_s=0.5", "--config.coach.max_retries=1",
          "--config.coach.invalid_policy=mask")


def test_failing_coach_mid_run_masks_and_counts(tmp_path):
  """Part 3: the run finishes through 429/500/hang/garbage/out-of-range replies; every unscored
  action is masked (never given a score), and the counts reach TensorBoard."""
  workdir = str(tmp_path / "run")
  script = _FaultyCoachScript()
  with ts.OpenAITestServer(responder=script) as server:
    config = _config(*_COACH, *_FLAKY, f"--config.coach.base_url={server.base_url}",
                     "--config.coach.circuit_breaker_failures=1000",
                     "--config.train.num_steps=1")
    trainer = _delayed_trainer(config, workdir, delay_seed=0)
    metrics = trainer.train()
  assert trainer.step == 1 and metrics["rollout/trajectories"] == 2
  actions = [a for t in trainer.trajectories for a in t.actions]
  invalid = [a for a in actions if not a.coach.is_scored]
  # Garbage and the out-of-range score each end one call invalid (their re-ask is garbage too).
  assert len(invalid) >= 2, [a.coach for a in actions]
  assert all(0.0 <= a.coach.score <= 10.0 for a in actions if a.coach.is_scored)
  assert not any("neutral" in (a.coach.rationale or "") for a in actions)  # nothing invented
  verdicts = trainer.coach.inner.verdicts  # what the coach returned, before the trainer
  assert len(verdicts) == len(actions)
  for agent in config.agents:  # masked: the update saw exactly the unscored actions as invalid
    unscored = sum(status != "scored" for a, status, _ in verdicts if a == agent)
    assert metrics[f"experience/{agent}/invalid"] == unscored == sum(
        not a.coach.is_scored for a in actions if a.agent == agent)
  scalars = _scalars(os.path.join(workdir, "tensorboard", config.name))
  assert scalars["coach/all/invalid"] == [(1, float(len(invalid)))]
  assert scalars["coach/all/parse_failures"][0][1] >= 2  # both unreadable replies were re-asked
  assert scalars["coach/all/n"] == [(1, float(len(actions)))]
  assert sum(1 for r in server.requests if r["body"]["messages"][0]["role"] == "user") > len(
      actions)  # retries happened


def test_outage_stops_the_run_and_the_last_checkpoint_resumes(tmp_path):
  """Part 3: after a healthy step 1 the coach answers only 500s; the circuit breaker opens and
  the run stops with CoachUnavailableError; checkpoint 1 is bit-identical afterwards and a
  second trainer (coach healthy again) resumes from it."""
  workdir = str(tmp_path / "run")
  with ts.OpenAITestServer() as server:
    overrides = (*_COACH, *_FLAKY, f"--config.coach.base_url={server.base_url}",
                 "--config.coach.circuit_breaker_failures=3", "--config.train.num_steps=3")
    trainer = train.Trainer(_config(*overrides), workdir)
    trainer.coach.inner.breaker.min_duration_s = 0.0  # no 60 s streak in a test
    step = trainer.train_step

    def step_then_outage():
      out = step()
      server.default = ts.status(500)  # from step 2 on, a sustained outage
      return out
    trainer.train_step = step_then_outage
    with pytest.raises(CoachUnavailableError, match="circuit breaker open"):
      trainer.train()
    before = _digest(workdir)
    assert before[0] == 1
    server.default = ts.answer("Good.\nPROCESS_SCORE: 6\nANSWER_CORRECT: yes")
    resumed = train.Trainer(_config(*overrides[:-1], "--config.train.num_steps=2"), workdir)
    resumed._restore()  # pylint: disable=protected-access  (train() does this first)
    assert resumed.step == 1
    assert _digest(workdir) == before  # the failed run left checkpoint 1 as it was
    resumed.train()
  assert resumed.step == 2 and _digest(workdir)[0] == 2


def _files(directory: str) -> dict:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
  return out


def test_resume_with_an_incompatible_config_names_the_fix(tmp_path):
  """Part 4: resuming a workdir with another architecture fails naming the workdir, a new
  --workdir and the original config (kept by mconfig.save as config.1.py when launch/run.py
  writes the new one); the checkpoints are untouched and the original config still resumes."""
  from mappa_jax.models.tiny import write_tiny_model
  workdir = str(tmp_path / "run")
  config = _config("--config.train.num_steps=1")
  mconfig.save(config, workdir)  # what launch/run.py writes first
  train.Trainer(config, workdir).train()
  before, files = _digest(workdir), _files(os.path.join(workdir, "checkpoints"))
  other = str(tmp_path / "qwen2")
  write_tiny_model(other, architecture="qwen2", seed=0)  # no q/k norms: other parameters
  wrong = _config("--config.train.num_steps=2", f"--config.model.hf_dir={other}")
  mconfig.save(wrong, workdir)  # launch/run.py on the resume: the original is kept
  kept = os.path.join(workdir, "config.1.py")
  assert os.path.isfile(kept) and mconfig.previous_configs(workdir) == [kept]
  with pytest.raises(ValueError) as info:
    train.Trainer(wrong, workdir).train()
  message = str(info.value)
  assert os.path.join(workdir, "checkpoints") in message and "new --workdir" in message
  assert f"--config={kept}" in message and "untouched" in message
  assert _files(os.path.join(workdir, "checkpoints")) == files and _digest(workdir) == before
  original = mconfig.load_config(kept)  # the kept file is a loadable config
  assert mconfig.to_json(original) == mconfig.to_json(config)
  resumed = train.Trainer(config, workdir)
  resumed._restore()  # pylint: disable=protected-access
  assert resumed.step == 1
