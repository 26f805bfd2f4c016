"""Rollout contracts shared by engines, workflows and the trainer.

Token ids in, token ids out: nothing here ever decodes and re-encodes text, so the ids a
policy sampled are exactly the ids it is trained on.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, Sequence, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Per-request sampling settings (the reference's defaults: T=1.0, top_p=1, top_k off).

  Attributes:
    max_new_tokens: generation budget for one action.
    temperature: 0 means greedy.
    top_p: nucleus mass; 1.0 disables.
    top_k: keep the k most likely tokens; 0 or negative disables.
    min_new_tokens: EOS/stop ids are suppressed before this many tokens (reference: 16).
    stop_token_ids: extra ids that end generation (the tokenizer's EOS is always one).
    seed: per-request seed; None lets the engine choose.
  """
  max_new_tokens: int = 256
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  min_new_tokens: int = 0
  stop_token_ids: tuple[int, ...] = ()
  seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
  """One generated response.

  Attributes:
    token_ids: the sampled ids, [n] (the stop token included when finish_reason == 'stop').
    logprobs: log-probability of each sampled id under the sampling policy, [n].
    finish_reason: 'stop' (EOS/stop id), 'length' (hit max_new_tokens) or 'abort'.
    weight_version: version of the weights that produced every token.
  """
  token_ids: tuple[int, ...]
  logprobs: tuple[float, ...]
  finish_reason: FinishReason
  weight_version: int = 0


@runtime_checkable
class RolloutEngine(Protocol):
  """Generates for named agents; batching across concurrent calls is the engine's job."""

  async def generate(self, agent: str, prompt_ids: Sequence[int],
                     sampling: SamplingParams) -> Completion:
    ...

  async def publish(self, agent: str, params, version: int) -> None:
    ...

  async def pause(self) -> None:
    ...

  async def resume(self) -> None:
    ...

  async def health(self) -> dict:
    ...
