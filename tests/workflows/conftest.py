"""Shared fixtures: the shipped tiny tokenizer, a real bwrap sandbox, a recording coach."""
import asyncio

import pytest

from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.models.tokenizer import Tokenizer, tiny_tokenizer_dir
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits


class RecordingCoach:
  """The rule coach, keeping every request it was given (optionally held until released)."""

  def __init__(self, hold: asyncio.Event | None = None):
    self.requests = []
    self.hold = hold
    self.inner = RuleCoach()

  async def score(self, request):
    self.requests.append(request)
    if self.hold is not None:
      await self.hold.wait()
    return await self.inner.score(request)

  def of(self, role):
    return [r for r in self.requests if r.role == role]


@pytest.fixture(scope="session")
def tokenizer():
  return Tokenizer.from_dir(tiny_tokenizer_dir())


@pytest.fixture(scope="session")
def sandbox():
  sb = Sandbox("bwrap", SandboxLimits(timeout_s=20.0, memory_bytes=2 << 30),
               max_concurrency=4)
  yield sb
  sb.close()
