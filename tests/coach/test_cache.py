"""Verdict cache: content addressing, WAL, concurrency, replay."""
import asyncio
import json
import sqlite3
import threading

import pytest

from mappa_jax.coach.cache import CachedVerdict, CoachCache, CoachCacheMissError, cache_key
from mappa_jax.coach.config import CoachConfig
from mappa_jax.coach.openai_coach import OpenAICoach
from tests.coach.conftest import make_request
from tests.coach.openai_test_server import answer

BASE = dict(model="m", template_hash="abc", prompt="p", decoding={"temperature": 0.0},
            sample_index=0)


def _verdict(score=5.0):
  return CachedVerdict(status="scored", score=score, answer_correct=None, reason="",
                       response=f"PROCESS_SCORE: {score}", reasked=False, tokens_in=3,
                       tokens_out=2)


def test_key_changes_with_every_component():
  k0 = cache_key(**BASE)
  assert k0 == cache_key(**dict(BASE, decoding={"temperature": 0.0}))
  changes = [dict(model="m2"), dict(template_hash="abd"), dict(prompt="p "),
             dict(decoding={"temperature": 0.1}), dict(sample_index=1)]
  keys = {cache_key(**dict(BASE, **c)) for c in changes}
  assert k0 not in keys and len(keys) == len(changes)


def test_wal_mode_roundtrip_and_first_writer_wins(tmp_path):
  path = str(tmp_path / "sub" / "c.sqlite")
  cache = CoachCache(path)
  assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  cache.put("k", "m", "h", _verdict(5.0))
  cache.put("k", "m", "h", _verdict(9.0))
  assert cache.get("k") == _verdict(5.0) and cache.get("other") is None
  with pytest.raises(ValueError):
    cache.put("k2", "m", "h", CachedVerdict("error", None, None, "x", "", False, 0, 0))
  out = tmp_path / "audit.jsonl"
  assert cache.export_jsonl(str(out)) == 1
  row = json.loads(out.read_text())
  assert row["key"] == "k" and row["score"] == 5.0 and row["response"] == "PROCESS_SCORE: 5.0"
  cache.close()
  assert CoachCache(path).get("k").score == 5.0  # persisted


def test_concurrent_threads_and_asyncio_writers(tmp_path):
  path = str(tmp_path / "c.sqlite")
  cache = CoachCache(path)
  errors = []

  def thread_writer(t):
    try:
      other = CoachCache(path) if t % 2 else cache  # separate handles and a shared one
      for i in range(40):
        other.put(f"t{t}-{i}", "m", "h", _verdict(i % 11))
        assert other.get(f"t{t}-{i}").score == i % 11
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  async def async_writers():
    async def one(i):
      await asyncio.sleep(0)
      cache.put(f"a-{i}", "m", "h", _verdict(1.0))
      return cache.get(f"a-{i}")
    return await asyncio.gather(*(one(i) for i in range(60)))

  threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(4)]
  for t in threads:
    t.start()
  got = asyncio.run(async_writers())
  for t in threads:
    t.join()
  assert not errors and all(g.score == 1.0 for g in got)
  assert len(cache) == 4 * 40 + 60


def test_cache_hits_and_replay_are_identical(server, tmp_path, monkeypatch):
  monkeypatch.setenv("K", "secret")
  server.responder = lambda body: answer(
      f"Looks fine.\nPROCESS_SCORE: {len(body['messages'][0]['content']) % 11}\n"
      "ANSWER_CORRECT: 1")
  cache = CoachCache(str(tmp_path / "c.sqlite"))
  cfg = CoachConfig(kind="openai", base_url=server.base_url, model="judge", api_key_env="K",
                    backoff_base_s=0.01)
  reqs = [make_request(output=f"\\boxed{{{i}}}" + "x" * i) for i in range(6)]
  reqs += [make_request(role="Problem Solver", output="\\boxed{3}")]

  async def run(coach):
    try:
      return await asyncio.gather(*(coach.score(r) for r in reqs))
    finally:
      await coach.aclose()

  live = asyncio.run(run(OpenAICoach(cfg, cache=cache)))
  assert not any(r.cached for r in live) and len(server.requests) == len(reqs)
  again = asyncio.run(run(OpenAICoach(cfg, cache=cache)))
  assert all(r.cached for r in again) and len(server.requests) == len(reqs)
  # Replay: a different process/coach with no endpoint and no key reproduces every verdict.
  monkeypatch.delenv("K")
  server.stop()
  replay_cfg = CoachConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="judge",
                           api_key_env="K")
  replayed = asyncio.run(run(OpenAICoach(replay_cfg, cache=CoachCache(cache.path), replay=True)))
  fields = ("status", "score", "answer_correct", "reason", "rationale", "template_hash",
            "cache_key", "raw_response")
  for a, b in zip(live, replayed):
    assert all(getattr(a, f) == getattr(b, f) for f in fields)
  # A miss is an error that names the key.
  missing = make_request(output="never scored")
  coach = OpenAICoach(replay_cfg, cache=CoachCache(cache.path), replay=True)
  with pytest.raises(CoachCacheMissError, match=coach.key_for(missing)):
    asyncio.run(coach.score(missing))


def test_a_coach_is_its_model_not_its_url(tmp_path, monkeypatch):
  """The same model served at another base_url is the same coach: its verdicts are cache hits
  (live and replay); another model name is another coach (a miss)."""
  from tests.coach.openai_test_server import OpenAITestServer
  monkeypatch.setenv("K", "secret")
  cache = CoachCache(str(tmp_path / "c.sqlite"))
  reqs = [make_request(role="Problem Solver", ground_truth=None, output=f"step {i}")
          for i in range(3)]

  async def run(coach):
    try:
      return await asyncio.gather(*(coach.score(r) for r in reqs))
    finally:
      await coach.aclose()

  with OpenAITestServer() as first, OpenAITestServer() as elsewhere:
    live = asyncio.run(run(OpenAICoach(CoachConfig(
        kind="openai", base_url=first.base_url, model="judge", api_key_env="K"), cache=cache)))
    moved = asyncio.run(run(OpenAICoach(CoachConfig(
        kind="openai", base_url=elsewhere.base_url, model="judge", api_key_env="K"),
        cache=cache)))
    assert all(r.cached for r in moved) and not elsewhere.requests
    assert [r.cache_key for r in moved] == [r.cache_key for r in live]
    other_model = asyncio.run(run(OpenAICoach(CoachConfig(
        kind="openai", base_url=elsewhere.base_url, model="judge-2", api_key_env="K"),
        cache=cache)))
    assert not any(r.cached for r in other_model) and len(elsewhere.requests) == len(reqs)
  # Replay at a third (dead) address answers from the same rows.
  replay = OpenAICoach(CoachConfig(kind="openai", base_url="http://127.0.0.1:9/v1",
                                   model="judge", api_key_env=""), cache=cache, replay=True)
  assert [r.score for r in asyncio.run(run(replay))] == [r.score for r in live]


def test_temperature_samples_are_keyed_by_sample_index(server, tmp_path, monkeypatch):
  monkeypatch.setenv("K", "secret")
  cache = CoachCache(str(tmp_path / "c.sqlite"))
  cfg = CoachConfig(kind="openai", base_url=server.base_url, model="judge", api_key_env="K",
                    temperature=0.7)
  server.push(answer("PROCESS_SCORE: 2\nANSWER_CORRECT: 0"),
              answer("PROCESS_SCORE: 8\nANSWER_CORRECT: 1"))
  coach = OpenAICoach(cfg, cache=cache)

  async def run():
    try:
      r0 = await coach.score(make_request(metadata={"coach_sample_index": 0}))
      r1 = await coach.score(make_request(metadata={"coach_sample_index": 1}))
      r0b = await coach.score(make_request(metadata={"coach_sample_index": 0}))
      return r0, r1, r0b
    finally:
      await coach.aclose()

  r0, r1, r0b = asyncio.run(run())
  assert (r0.score, r1.score, r0b.score, r0b.cached) == (2.0, 8.0, 2.0, True)
  assert len(server.requests) == 2
