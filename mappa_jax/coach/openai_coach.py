"""A coach backed by any OpenAI-compatible chat endpoint (Gemini, vLLM, SGLang, local servers).

Reliability policy (the reference retried for a day, then invented a score):
- at most `max_concurrency` requests in flight and at most `rpm_limit` request starts per minute;
- each HTTP attempt has a timeout; 429 (Retry-After honoured, capped), 5xx, timeouts and
  dropped connections are retried up to `max_retries` times with exponential backoff + jitter;
- a call that still fails yields an `invalid` result (masked out of training, never cached);
- `circuit_breaker_failures` consecutive failed attempts, lasting at least
  `circuit_breaker_min_s`, open a circuit breaker: every later call raises CoachUnavailableError, which fails the
  training step loudly;
- authentication/permission/not-found errors raise CoachConfigError at once.
The reply is parsed strictly (parsing.py); an unreadable reply gets ONE re-ask that resends the
full original prompt, the reply, and a format reminder. The API key is read from the environment
variable named in the config and is never logged, cached or checkpointed.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import threading
import time
import urllib.parse

import openai

from mappa_jax.coach import parsing
from mappa_jax.coach import rubrics
from mappa_jax.coach.cache import CachedVerdict, CoachCache, CoachCacheMissError, cache_key
from mappa_jax.coach.config import CoachConfig
from mappa_jax.coach.types import CoachFatalError, CoachRequest, CoachResult

log = logging.getLogger(__name__)


class CoachUnavailableError(CoachFatalError, RuntimeError):
  """The coach endpoint failed persistently (circuit breaker open): stop the step."""


class CoachConfigError(CoachFatalError, ValueError):
  """The coach cannot work as configured (missing key, 401/403/404 from the endpoint)."""


@dataclasses.dataclass(frozen=True)
class LLMResult(CoachResult):
  """CoachResult plus the audit trail of an LLM call.

  reasked: the first reply was unreadable and the coach was asked again.
  attempts: HTTP attempts made (0 for a cache hit).
  raw_response: the coach's reply text(s), re-ask reply appended.
  cache_key: the content address of this verdict.
  """
  reasked: bool = False
  attempts: int = 0
  raw_response: str = ""
  cache_key: str = ""


class _CallFailed(Exception):
  """All attempts of one call failed (or the request itself was rejected)."""


class RateLimiter:
  """Token bucket on request starts: `rpm` per minute, bursts of at most `burst`."""

  def __init__(self, rpm: float, burst: int = 1):
    self.interval = 60.0 / rpm
    self.capacity = float(max(1, burst))
    self.tokens = self.capacity
    self.stamp = time.monotonic()
    self.lock = asyncio.Lock()

  async def acquire(self) -> None:
    async with self.lock:
      while True:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now
        if self.tokens >= 1.0:
          self.tokens -= 1.0
          return
        await asyncio.sleep((1.0 - self.tokens) * self.interval)


class CircuitBreaker:
  """Opens after `threshold` consecutive failed attempts spanning at least `min_duration_s`
  (so a burst of concurrent failures during a short blip does not stop training; a sustained
  outage does). Any success closes the streak. Once open it stays open until reset()."""

  def __init__(self, threshold: int, min_duration_s: float = 0.0):
    self.threshold = threshold
    self.min_duration_s = min_duration_s
    self.consecutive = 0
    self.streak_start = 0.0
    self.is_open = False
    self.last_error = ""
    self._lock = threading.Lock()

  def check(self, name: str) -> None:
    if self.is_open:
      raise CoachUnavailableError(
          f"coach {name}: circuit breaker open after {self.consecutive} consecutive failed "
          f"attempts over {time.monotonic() - self.streak_start:.0f} s (last: "
          f"{self.last_error}); check the endpoint, then restart (or reset the breaker)")

  def failure(self, error: str) -> None:
    with self._lock:
      now = time.monotonic()
      if self.consecutive == 0:
        self.streak_start = now
      self.consecutive += 1
      self.last_error = error
      if (self.threshold > 0 and self.consecutive >= self.threshold
          and now - self.streak_start >= self.min_duration_s):
        self.is_open = True

  def success(self) -> None:
    with self._lock:
      self.consecutive = 0

  def reset(self) -> None:
    with self._lock:
      self.consecutive, self.is_open, self.last_error = 0, False, ""


def _retry_after_s(error: openai.APIStatusError) -> float | None:
  headers = error.response.headers
  for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
    value = headers.get(name)
    if value is not None:
      try:
        return max(0.0, float(value) * scale)
      except ValueError:
        return None  # an HTTP date: fall back to exponential backoff
  return None


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after_s: float | None = None,
                  retry_after_max_s: float = 120.0) -> float:
  """Seconds to wait before retry number `attempt + 1`.

  With a server's Retry-After: that value capped at retry_after_max_s, plus up to 10 % jitter.
  Otherwise exponential with "equal jitter": uniform in [d/2, d], d = min(max_s, base_s * 2^a),
  so concurrent callers spread out but never retry sooner than half the nominal delay.
  """
  if retry_after_s is not None:
    return min(retry_after_s, retry_after_max_s) * random.uniform(1.0, 1.1)
  nominal = min(max_s, base_s * 2 ** attempt)
  return nominal * random.uniform(0.5, 1.0)


@dataclasses.dataclass
class _LoopState:
  loop: asyncio.AbstractEventLoop
  client: openai.AsyncOpenAI | None
  semaphore: asyncio.Semaphore
  limiter: RateLimiter | None


class OpenAICoach:
  """Coach over an OpenAI-compatible `/chat/completions` endpoint.

  Args:
    config: the `coach` section (endpoint, decoding and reliability settings).
    cache: verdict cache (None: no caching).
    replay: answer from the cache only; a miss raises CoachCacheMissError. No client is made
      and no API key is needed.
  """

  def __init__(self, config: CoachConfig, cache: CoachCache | None = None,
               replay: bool = False):
    if replay and cache is None:
      raise CoachConfigError("coach replay mode needs a cache (set coach.cache_path)")
    self.config = config
    self.cache = cache
    self.replay = replay
    self.breaker = CircuitBreaker(config.circuit_breaker_failures, config.circuit_breaker_min_s)
    url = config.base_url or ""  # None for a replayed coach
    host = urllib.parse.urlparse(url).netloc or url
    self.name = config.name or f"{config.model}@{host}"
    self._state: _LoopState | None = None

  def __repr__(self) -> str:
    return f"OpenAICoach(name={self.name!r}, base_url={self.config.base_url!r})"

  def describe(self) -> dict:
    """What a checkpoint records about this coach (never the API key)."""
    return {"kind": "openai", "name": self.name, "model": self.config.model,
            "base_url": self.config.base_url, "decoding": self.config.decoding(),
            "template_hashes": rubrics.template_hashes()}

  def render(self, request: CoachRequest) -> rubrics.RenderedPrompt:
    return rubrics.get_rubric(request.workflow).render(
        request, self.config.render_limits, self.config.ground_truth_roles)

  def key_for(self, request: CoachRequest) -> str:
    """The verdict's cache key: model, rubric template, prompt, decoding and sample index
    (never base_url: see mappa_jax/coach/cache.py)."""
    rendered = self.render(request)
    return cache_key(self.config.model, rendered.template_hash, rendered.text,
                     self.config.decoding(), self._sample_index(request))

  def _sample_index(self, request: CoachRequest) -> int:
    return int(request.metadata.get("coach_sample_index", self.config.sample_index))

  def _loop_state(self) -> _LoopState:
    loop = asyncio.get_running_loop()
    if self._state is None or self._state.loop is not loop:
      cfg = self.config
      self._state = _LoopState(
          loop=loop, client=None, semaphore=asyncio.Semaphore(cfg.max_concurrency),
          limiter=RateLimiter(cfg.rpm_limit, cfg.rpm_burst) if cfg.rpm_limit > 0 else None)
    if self._state.client is None:
      self._state.client = openai.AsyncOpenAI(
          base_url=self.config.base_url, api_key=self._api_key(), max_retries=0,
          timeout=self.config.timeout_s)
    return self._state

  def _api_key(self) -> str:
    env = self.config.api_key_env
    if not env:
      return "EMPTY"  # local servers that want no key
    key = os.environ.get(env)
    if not key:
      raise CoachConfigError(
          f"coach {self.name}: environment variable {env} (coach.api_key_env) is not set; "
          "export the endpoint's API key there, or set api_key_env='' for a keyless server")
    return key

  async def aclose(self) -> None:
    if self._state is not None and self._state.client is not None:
      await self._state.client.close()
      self._state.client = None

  async def _complete(self, messages: list[dict]) -> tuple[str, int, int, int]:
    """One chat call with the retry policy. Returns (reply, tokens_in, tokens_out, attempts)."""
    cfg = self.config
    state = self._loop_state()
    decoding = cfg.decoding()
    extra_body = decoding.pop("extra_body", None)
    last_error = ""
    for attempt in range(cfg.max_retries + 1):
      self.breaker.check(self.name)
      if state.limiter is not None:
        await state.limiter.acquire()
      retry_after = None
      async with state.semaphore:
        try:
          # The client's timeout bounds each socket phase; wait_for also bounds a server that
          # trickles bytes forever.
          response = await asyncio.wait_for(
              state.client.chat.completions.create(
                  model=cfg.model, messages=messages, extra_body=extra_body, **decoding),
              timeout=cfg.timeout_s * 2 + 1.0)
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as e:
          raise CoachConfigError(
              f"coach {self.name}: HTTP {e.status_code} from {cfg.base_url} "
              f"(model {cfg.model!r}): check coach.base_url, coach.model and the key in "
              f"${cfg.api_key_env}") from None
        except openai.APIStatusError as e:
          if e.status_code in (429,) or e.status_code >= 500:
            last_error = f"HTTP {e.status_code}"
            retry_after = _retry_after_s(e) if e.status_code == 429 else None
          else:
            raise _CallFailed(f"bad_request: HTTP {e.status_code}") from None
        except (openai.APITimeoutError, asyncio.TimeoutError):
          last_error = f"timeout after {cfg.timeout_s} s"
        except openai.APIConnectionError as e:
          last_error = f"connection error ({type(e.__cause__ or e).__name__})"
        else:
          self.breaker.success()
          choice = response.choices[0] if response.choices else None
          text = (choice.message.content or "") if choice is not None else ""
          usage = response.usage
          return (text, getattr(usage, "prompt_tokens", 0) or 0,
                  getattr(usage, "completion_tokens", 0) or 0, attempt + 1)
      self.breaker.failure(last_error)
      if attempt == cfg.max_retries:
        break
      self.breaker.check(self.name)
      delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s, retry_after,
                            cfg.retry_after_max_s)
      log.warning("coach %s: attempt %d/%d failed (%s); retrying in %.2f s", self.name,
                  attempt + 1, cfg.max_retries + 1, last_error, delay)
      await asyncio.sleep(delay)
    raise _CallFailed(f"api_error: {last_error} after {cfg.max_retries + 1} attempts")

  async def score(self, request: CoachRequest) -> LLMResult:
    start = time.monotonic()
    rendered = self.render(request)
    key = cache_key(self.config.model, rendered.template_hash, rendered.text,
                    self.config.decoding(), self._sample_index(request))
    common = dict(template_hash=rendered.template_hash, coach_name=self.name, cache_key=key)
    if self.cache is not None:
      hit = self.cache.get(key)
      if hit is not None:
        return LLMResult(status=hit.status, score=hit.score, answer_correct=hit.answer_correct,
                         rationale=parsing.strip_reasoning(hit.response), reason=hit.reason,
                         latency_s=time.monotonic() - start, cached=True,
                         reasked=hit.reasked, raw_response=hit.response, **common)
      if self.replay:
        raise CoachCacheMissError(
            f"coach replay: no cached verdict for key {key} (coach {self.name}, role "
            f"{request.role!r}, template {rendered.template_hash}); the run being replayed "
            "used a different prompt, model or decoding, or a different cache file")
    messages = [{"role": "user", "content": rendered.text}]
    tokens_in = tokens_out = attempts = 0
    try:
      reply, t_in, t_out, n = await self._complete(messages)
      tokens_in, tokens_out, attempts = t_in, t_out, n
      verdict = parsing.parse_verdict(reply, rendered.needs_answer_correct)
      raw, reasked = reply, False
      if not verdict.ok and self.config.format_retry:
        reasked = True
        log.info("coach %s: unreadable reply for role %s (%s); re-asking", self.name,
                 request.role, verdict.problem)
        retry_messages = messages + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": rubrics.format_reminder(
                verdict.problem, rendered.needs_answer_correct)}]
        reply2, t_in, t_out, n = await self._complete(retry_messages)
        tokens_in, tokens_out, attempts = tokens_in + t_in, tokens_out + t_out, attempts + n
        verdict = parsing.merge_verdicts(
            verdict, parsing.parse_verdict(reply2, rendered.needs_answer_correct),
            rendered.needs_answer_correct)
        raw = f"{reply}\n\n[re-ask reply]\n{reply2}"
    except _CallFailed as e:
      log.warning("coach %s: giving up on role %s: %s", self.name, request.role, e)
      return LLMResult(status="invalid", reason=str(e), latency_s=time.monotonic() - start,
                       tokens_in=tokens_in, tokens_out=tokens_out, attempts=attempts, **common)
    if verdict.score is None:
      status, reason = "invalid", f"parse_error: {verdict.problem}"
    else:
      status, reason = "scored", ""
    if self.cache is not None:
      self.cache.put(key, self.config.model, rendered.template_hash, CachedVerdict(
          status=status, score=verdict.score, answer_correct=verdict.answer_correct,
          reason=reason, response=raw, reasked=reasked, tokens_in=tokens_in,
          tokens_out=tokens_out))
    return LLMResult(status=status, score=verdict.score, answer_correct=verdict.answer_correct,
                     rationale=parsing.strip_reasoning(raw),
                     reason=reason, latency_s=time.monotonic() - start, tokens_in=tokens_in,
                     tokens_out=tokens_out, reasked=reasked, attempts=attempts,
                     raw_response=raw, **common)
