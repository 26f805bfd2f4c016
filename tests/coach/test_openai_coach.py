"""The OpenAI-compatible coach over real HTTP against the scripted local server."""
import asyncio
import dataclasses
import time

import pytest

from mappa_jax.coach import rubrics
from mappa_jax.coach.config import CoachConfig
from mappa_jax.coach.openai_coach import CoachConfigError, CoachUnavailableError, OpenAICoach
from tests.coach.conftest import make_request
from tests.coach.openai_test_server import answer, drop, hang, prompt_of, status

KEY_ENV = "MAPPA_TEST_COACH_KEY"
KEY = "sk-test-7d1f0c9a-never-log-me"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, KEY)


def make_coach(server, **kw) -> OpenAICoach:
  fast = dict(base_url=server.base_url, model="judge-1", api_key_env=KEY_ENV, timeout_s=5.0,
              max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, retry_after_max_s=1.0,
              circuit_breaker_failures=50)
  fast.update(kw)
  return OpenAICoach(CoachConfig(kind="openai", **fast))


def score(coach, request):
  async def run():
    try:
      return await coach.score(request)
    finally:
      await coach.aclose()
  return asyncio.run(run())


@pytest.mark.parametrize("reply,expected", [
    ("Good.\nPROCESS_SCORE: 8\nANSWER_CORRECT: 1", (8.0, True)),
    ("Good.\n**PROCESS_SCORE:** 6\n**ANSWER_CORRECT:** 0", (6.0, False)),
    ("PROCESS_SCORE: **9**\nANSWER_CORRECT: **1**", (9.0, True)),
    ("Format: PROCESS_SCORE: <0-10>\n...\nPROCESS_SCORE: 3/10.\nANSWER_CORRECT: 0", (3.0, False)),
])
def test_well_formed_replies_are_parsed_without_reask(server, reply, expected):
  server.push(answer(reply))
  result = score(make_coach(server), make_request())
  assert result.is_scored and not result.reasked
  assert (result.score, result.answer_correct) == expected
  assert len(server.requests) == 1
  body = server.requests[0]["body"]
  assert body["model"] == "judge-1" and body["temperature"] == 0.0
  assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
  assert result.template_hash == rubrics.MATHCHAT.hash
  assert result.tokens_in > 0 and result.attempts == 1


def test_garbage_then_reask_with_full_prompt(server):
  server.push(answer("I think this deserves a 9 out of 10 overall, 100%."),
              answer("PROCESS_SCORE: 4\nANSWER_CORRECT: 0"))
  coach = make_coach(server)
  req = make_request()
  result = score(coach, req)
  assert result.is_scored and result.reasked and result.score == 4.0
  assert result.answer_correct is False
  assert len(server.requests) == 2
  retry_msgs = server.requests[1]["body"]["messages"]
  # The re-ask resends the full original prompt, the unreadable reply, then a reminder.
  assert retry_msgs[0]["content"] == coach.render(req).text == prompt_of(server.requests[0]["body"])
  assert retry_msgs[1] == {"role": "assistant",
                           "content": "I think this deserves a 9 out of 10 overall, 100%."}
  assert "PROCESS_SCORE:" in retry_msgs[2]["content"]
  assert "ANSWER_CORRECT" in retry_msgs[2]["content"]


def test_out_of_range_twice_is_invalid_never_first_number(server):
  server.push(answer("Score 7 would be fair.\nPROCESS_SCORE: 12"),
              answer("PROCESS_SCORE: 11"))
  result = score(make_coach(server), make_request())
  assert result.status == "invalid" and result.score is None
  assert result.reason.startswith("parse_error") and "outside 0-10" in result.reason
  assert len(server.requests) == 2


def test_missing_answer_correct_is_filled_by_reask(server):
  server.push(answer("PROCESS_SCORE: 7"), answer("PROCESS_SCORE: 2\nANSWER_CORRECT: 1"))
  result = score(make_coach(server), make_request())
  # The first reply's score stands; the re-ask only fills what was missing.
  assert (result.score, result.answer_correct, result.reasked) == (7.0, True, True)


def test_answer_correct_not_requested_for_roles_without_ground_truth(server):
  server.push(answer("PROCESS_SCORE: 5"))
  req = make_request(role="Problem Solver", ground_truth="42")
  # coach.ground_truth_roles: only these roles may see a label the workflow sent anyway.
  coach = make_coach(server, ground_truth_roles=("verifier", "analyst"))
  result = score(coach, req)
  assert result.is_scored and not result.reasked and result.answer_correct is None
  prompt = prompt_of(server.requests[0]["body"])
  assert "ANSWER_CORRECT" not in prompt
  assert "=== REFERENCE ANSWER ===\nN/A" in prompt  # the label is hidden from this role


def test_reask_disabled_gives_invalid(server):
  server.push(answer("no verdict here"))
  result = score(make_coach(server, format_retry=False), make_request())
  assert result.status == "invalid" and len(server.requests) == 1


def test_thinking_model_uses_visible_content(server):
  server.push(answer("<think>maybe PROCESS_SCORE: 1</think>\nFine work.\nPROCESS_SCORE: 8\n"
                     "ANSWER_CORRECT: 1", reasoning="PROCESS_SCORE: 0"))
  result = score(make_coach(server), make_request())
  assert result.score == 8.0 and "maybe" not in result.rationale


def test_retries_on_429_500_timeout_and_dropped_connection(server):
  server.push(status(429, retry_after=0.3), status(500), hang(), drop(),
              answer("PROCESS_SCORE: 9\nANSWER_CORRECT: 1"))
  coach = make_coach(server, timeout_s=1.0, max_retries=4)
  result = score(coach, make_request())
  assert result.is_scored and result.score == 9.0 and result.attempts == 5
  times = [r["time"] for r in server.requests]
  assert len(times) == 5
  assert times[1] - times[0] >= 0.3  # Retry-After honoured (lower bound only, never timed)
  assert coach.breaker.consecutive == 0


def test_backoff_delays_stay_within_bounds():
  from mappa_jax.coach.openai_coach import backoff_delay
  for attempt in range(12):
    nominal = min(8.0, 0.5 * 2 ** attempt)
    for _ in range(50):
      d = backoff_delay(attempt, 0.5, 8.0)
      assert nominal / 2 <= d <= nominal
  for _ in range(50):
    assert 2.0 <= backoff_delay(0, 0.5, 8.0, retry_after_s=2.0) <= 2.2
    assert 30.0 <= backoff_delay(0, 0.5, 8.0, retry_after_s=3600.0, retry_after_max_s=30.0) <= 33.0


def test_retry_after_is_capped(server):
  server.push(status(429, retry_after=3600), answer("PROCESS_SCORE: 5\nANSWER_CORRECT: 0"))
  result = score(make_coach(server, retry_after_max_s=0.05), make_request())
  assert result.is_scored and len(server.requests) == 2


def test_exhausted_retries_give_invalid_and_are_not_cached(server, tmp_path):
  from mappa_jax.coach.cache import CoachCache
  cache = CoachCache(str(tmp_path / "c.sqlite"))
  server.push(*[status(503)] * 3)
  coach = OpenAICoach(dataclasses.replace(make_coach(server).config, max_retries=2), cache=cache)
  result = score(coach, make_request())
  assert result.status == "invalid" and result.reason.startswith("api_error")
  assert "HTTP 503" in result.reason and len(server.requests) == 3
  assert len(cache) == 0  # errors are never cached
  server.push(answer("PROCESS_SCORE: 6\nANSWER_CORRECT: 1"))
  assert score(coach, make_request()).score == 6.0 and len(cache) == 1


def test_bad_request_is_invalid_without_retry(server):
  server.push(status(400))
  result = score(make_coach(server), make_request())
  assert result.status == "invalid" and "HTTP 400" in result.reason
  assert len(server.requests) == 1


def test_auth_error_and_missing_key_fail_loudly(server, monkeypatch):
  server.push(status(401))
  with pytest.raises(CoachConfigError, match="HTTP 401"):
    score(make_coach(server), make_request())
  monkeypatch.delenv(KEY_ENV)
  with pytest.raises(CoachConfigError, match=KEY_ENV):
    score(make_coach(server), make_request())


def test_circuit_breaker_opens_and_stays_open(server):
  server.default = status(500)
  coach = make_coach(server, max_retries=10, circuit_breaker_failures=4, circuit_breaker_min_s=0.0)
  with pytest.raises(CoachUnavailableError, match="circuit breaker open"):
    score(coach, make_request())
  assert len(server.requests) == 4
  server.default = answer("PROCESS_SCORE: 7\nANSWER_CORRECT: 1")
  with pytest.raises(CoachUnavailableError):
    score(coach, make_request())
  assert len(server.requests) == 4  # an open breaker sends nothing
  coach.breaker.reset()
  assert score(coach, make_request()).score == 7.0


def test_short_failure_burst_does_not_open_the_breaker(server):
  server.default = status(503)
  coach = make_coach(server, max_retries=3, circuit_breaker_failures=2, circuit_breaker_min_s=60.0)
  result = score(coach, make_request())
  assert result.status == "invalid" and len(server.requests) == 4
  assert coach.breaker.consecutive == 4 and not coach.breaker.is_open
  server.default = answer("PROCESS_SCORE: 7\nANSWER_CORRECT: 1")
  assert score(coach, make_request()).score == 7.0 and coach.breaker.consecutive == 0


def test_concurrency_limit_is_respected(server):
  server.default = answer("PROCESS_SCORE: 5\nANSWER_CORRECT: 0", delay=0.3)
  coach = make_coach(server, max_concurrency=3)

  async def run():
    reqs = [make_request(output=f"\\boxed{{{i}}}") for i in range(12)]
    try:
      return await asyncio.gather(*(coach.score(r) for r in reqs))
    finally:
      await coach.aclose()

  results = asyncio.run(run())
  assert all(r.score == 5.0 for r in results)
  assert len(server.requests) == 12
  assert 1 < server.max_in_flight <= 3


def test_rpm_limiter_spaces_request_starts(server):
  server.default = answer("PROCESS_SCORE: 5\nANSWER_CORRECT: 0")
  coach = make_coach(server, rpm_limit=600, rpm_burst=1)  # one start per 0.1 s

  async def run():
    reqs = [make_request(output=f"\\boxed{{{i}}}") for i in range(6)]
    try:
      return await asyncio.gather(*(coach.score(r) for r in reqs))
    finally:
      await coach.aclose()

  t0 = time.monotonic()  # same clock as the server's arrival stamps (same process)
  asyncio.run(run())
  arrivals = sorted(r["time"] - t0 for r in server.requests)
  assert len(arrivals) == 6
  # The k-th start is released no earlier than k intervals after the first; network latency
  # can only delay an arrival further, so this lower bound holds on any machine.
  for k, t in enumerate(arrivals):
    assert t >= k * 0.1 - 0.005, arrivals


def test_api_key_never_logged_or_cached(server, tmp_path, caplog):
  import logging
  from mappa_jax.coach.cache import CoachCache
  caplog.set_level(logging.DEBUG)
  cache = CoachCache(str(tmp_path / "cache.sqlite"))
  server.push(answer("garbage"), answer("PROCESS_SCORE: 5\nANSWER_CORRECT: 1"), status(429),
              status(500), answer("PROCESS_SCORE: 3\nANSWER_CORRECT: 0"))
  coach = OpenAICoach(make_coach(server).config, cache=cache)

  async def run():
    try:
      await coach.score(make_request())
      await coach.score(make_request(output="\\boxed{41}"))
    finally:
      await coach.aclose()

  asyncio.run(run())
  assert len(cache) == 2
  cache.close()
  assert KEY not in caplog.text and "never-log-me" not in caplog.text
  assert "retrying" in caplog.text  # the logs did capture the retry path
  for f in tmp_path.iterdir():
    assert KEY.encode() not in f.read_bytes(), f
  assert KEY not in repr(coach) and KEY not in str(coach.describe())
