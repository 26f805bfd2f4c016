"""Supervised examples from demonstration trajectories, and fixed-shape batches of them.

An example is one action: the exact prompt ids the workflow built and the response ids the
scripted policy produced (the end-of-turn id included). The loss covers the response only.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import tempfile
from typing import Mapping, Sequence

import numpy as np

from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.sft.demos import DemoMixture, DemoPolicy
from mappa_jax.workflows.base import AgentConfig
from mappa_jax.workflows.mathchat import MathChatConfig, MathChatWorkflow
from mappa_jax.workflows.records import Trajectory
from mappa_jax.workflows.scripted import ScriptedEngine


@dataclasses.dataclass(frozen=True)
class Example:
  """One supervised action: prompt ids [P] then response ids [R] (loss on the response)."""
  agent: str
  prompt_ids: tuple[int, ...]
  response_ids: tuple[int, ...]

  @property
  def length(self) -> int:
    return len(self.prompt_ids) + len(self.response_ids)


def collect_demonstrations(tasks: Sequence[Task], tokenizer, sandbox, *,
                           mixture: DemoMixture = DemoMixture(), seed: int = 0,
                           config: MathChatConfig = MathChatConfig(),
                           agents: Mapping[str, AgentConfig] | None = None,
                           max_concurrency: int = 8
                           ) -> tuple[list[Trajectory], dict[str, collections.Counter]]:
  """Runs the real MathChat workflow over `tasks` with the demonstration policy (agents:
  MathChatWorkflow.AGENTS unless given).

  Returns:
    (trajectories in task order, {agent: Counter of the behaviours drawn}).
  """
  policy = DemoPolicy(list(tasks), mixture, seed=seed)
  engine = ScriptedEngine(tokenizer, policy.script())
  with tempfile.TemporaryDirectory(prefix="mappa_demos_") as root:
    workflow = MathChatWorkflow(engine=engine, tokenizer=tokenizer, coach=RuleCoach(),
                                sandbox=sandbox, sampling=SamplingParams(max_new_tokens=4096),
                                config=config, agents=agents, workspace_root=root)

    async def run_all() -> list[Trajectory]:
      sem = asyncio.Semaphore(max_concurrency)

      async def one(task):
        async with sem:
          return await workflow.run(task)
      return await asyncio.gather(*[one(t) for t in tasks])

    trajs = asyncio.run(run_all())
  failed = [t for t in trajs if t.error]
  if failed:
    raise RuntimeError(f"{len(failed)} demonstration trajectories failed, e.g. "
                       f"{failed[0].task_id}: {failed[0].error}")
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for (agent, _), behaviour in policy.chosen.items():
    counts[agent][behaviour] += 1
  return list(trajs), dict(counts)


def examples_from(trajs: Sequence[Trajectory]) -> list[Example]:
  return [Example(a.agent, tuple(a.prompt_ids), tuple(a.response_ids))
          for t in trajs for a in t.actions]


def bucketed_batches(examples: Sequence[Example], batch_size: int, pad_id: int, *,
                     multiple: int = 64) -> list[dict[str, np.ndarray]]:
  """Fixed-shape batches of examples of similar length (one example per row).

  Examples are sorted by length and cut into batches of `batch_size` (the last partial batch is
  dropped); each batch is padded to its longest example rounded up to `multiple`, so there are
  few distinct shapes (compilations) and little padding. Rows are independent, so attention
  costs O(len^2) per example rather than per packed row.

  Returns:
    A list of {'tokens': [B, T] int32, 'loss_mask': [B, T] float32 (1 where the NEXT token is
    a response token to predict), 'positions': [B, T] int32, 'segment_ids': [B, T] int32
    (1 on the example, 0 on padding)}.
  """
  ordered = sorted(examples, key=lambda e: (e.length, e.agent, e.prompt_ids, e.response_ids))
  out = []
  for i in range(0, len(ordered) - batch_size + 1, batch_size):
    group = ordered[i:i + batch_size]
    t = -(-max(e.length for e in group) // multiple) * multiple
    tokens = np.full((batch_size, t), pad_id, np.int32)
    mask = np.zeros((batch_size, t), np.float32)
    segments = np.zeros((batch_size, t), np.int32)
    for r, ex in enumerate(group):
      ids = ex.prompt_ids + ex.response_ids
      tokens[r, :len(ids)] = ids
      segments[r, :len(ids)] = 1
      # Position t predicts token t+1: the targets are the response tokens.
      mask[r, len(ex.prompt_ids) - 1:len(ids) - 1] = 1.0
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (batch_size, t)).copy()
    out.append({"tokens": tokens, "loss_mask": mask, "positions": positions,
                "segment_ids": segments})
  return out


def epoch_order(n_batches: int, *, seed: int, epochs: int) -> list[int]:
  """Batch indices over all epochs: a seeded shuffle per epoch."""
  return [int(i) for epoch in range(epochs)
          for i in np.random.default_rng([seed, epoch]).permutation(n_batches)]


def add_number_masks(batches: list[dict[str, np.ndarray]], tokenizer) -> None:
  """Adds 'number_mask' [B, T] to each batch: loss_mask where the target token is a number."""
  is_number = np.zeros(tokenizer.vocab_size, bool)
  for i in range(tokenizer.vocab_size):
    is_number[i] = tokenizer.decode([i]).strip().isdigit()
  for b in batches:
    targets = np.concatenate([b["tokens"][:, 1:], b["tokens"][:, :1]], axis=1)
    b["number_mask"] = b["loss_mask"] * is_number[targets]
