"""A scripted policy: a RolloutEngine answering from canned responses (tests and demos).

Responses are chosen per agent and per turn, where the turn is read from the prompt itself
(number of assistant generation prompts in it minus one), so concurrent trajectories sharing
one engine each get their own script position. An entry is a string or a callable
(prompt_text) -> str. The text is encoded with the real tokenizer and the end-of-turn id is
appended, exactly like a model that stopped; a response longer than max_new_tokens is cut and
reported as finish_reason='length'.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Mapping, Sequence

from mappa_jax.rollout.types import Completion, SamplingParams

Entry = str | Callable[[str], str]


class ScriptedEngine:
  """RolloutEngine from a script {agent: [turn0 response, turn1 response, ...]}.

  Args:
    tokenizer: the contract Tokenizer (encode/decode/eos_token_ids).
    script: per-agent responses; past the end, the last one repeats.
    delay_s: simulated generation latency (asyncio.sleep, never blocks the loop).
    assistant_marker: text that opens an assistant turn in the rendered prompt.
  """

  def __init__(self, tokenizer, script: Mapping[str, Sequence[Entry]], *, delay_s: float = 0.0,
               assistant_marker: str = "<|im_start|>assistant"):
    for agent, entries in script.items():
      if not entries:
        raise ValueError(f"ScriptedEngine: script for agent {agent!r} is empty")
    self.tokenizer = tokenizer
    self.script = {k: list(v) for k, v in script.items()}
    self.delay_s = delay_s
    self.marker = assistant_marker
    self.calls: list[tuple[str, list[int]]] = []
    self.version = 0

  async def generate(self, agent: str, prompt_ids: Sequence[int],
                     sampling: SamplingParams) -> Completion:
    if agent not in self.script:
      raise KeyError(f"ScriptedEngine: no script for agent {agent!r} "
                     f"(scripted: {sorted(self.script)})")
    self.calls.append((agent, list(prompt_ids)))
    prompt = self.tokenizer.decode(prompt_ids)
    turn = max(prompt.count(self.marker) - 1, 0)
    entries = self.script[agent]
    entry = entries[min(turn, len(entries) - 1)]
    text = entry(prompt) if callable(entry) else entry
    if self.delay_s:
      await asyncio.sleep(self.delay_s)
    ids = list(self.tokenizer.encode(text)) + [self.tokenizer.eos_token_ids[0]]
    finish = "stop"
    if len(ids) > sampling.max_new_tokens:
      ids, finish = ids[:sampling.max_new_tokens], "length"
    return Completion(token_ids=tuple(ids), logprobs=tuple(-1.0 for _ in ids),
                      finish_reason=finish, weight_version=self.version)

  async def publish(self, agent: str, params, version: int) -> None:
    self.version = version

  async def pause(self) -> None:
    return None

  async def resume(self) -> None:
    return None

  async def health(self) -> dict:
    return {"ok": True, "engine": "scripted", "agents": sorted(self.script)}
