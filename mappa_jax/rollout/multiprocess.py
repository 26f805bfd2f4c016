"""SGLang servers shared by every process of a multi-process (jax.distributed) run.

Every process rolls out its own shard of a step's tasks and sends those generation requests to
the agents' servers itself (SGLangEngine.generate, unchanged). Weights are different: the
servers hold ONE copy per agent, so exactly one process may write it and reload the servers.
`SharedSGLangEngine.publish` is therefore collective:
  * process 0 writes the version (Orbax + HF export) and drives pause_generation ->
    update_weights_from_disk -> continue_generation on every server of the agent;
  * then all processes meet in a broadcast of process 0's outcome. It is the barrier that keeps
    any process from sampling the next step with stale weights (a process that returned from
    publish early would start its rollouts while the servers still serve the old version), and
    it carries process 0's failure to the others (they raise instead of waiting forever).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mappa_jax.rollout.sglang_engine import PublishError, SGLangEngine


def _broadcast_from_process0(value: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.broadcast_one_to_all(value))


class SharedSGLangEngine:
  """An SGLangEngine of which only process 0 publishes; every process generates.

  Args:
    engine: this process's SGLangEngine (process 0's needs a publisher; others need none).
    process_index: this process's index (jax.process_index()).
    broadcast: collective that returns process 0's array on every process (tests inject one).
  """

  def __init__(self, engine: SGLangEngine, *, process_index: int,
               broadcast: Callable[[np.ndarray], np.ndarray] = _broadcast_from_process0):
    if process_index == 0 and engine.publisher is None:
      raise ValueError("process 0 publishes the weights: its SGLangEngine needs a publisher")
    self.engine = engine
    self.process_index = process_index
    self._broadcast = broadcast

  @property
  def agents(self) -> tuple[str, ...]:
    return self.engine.agents

  async def generate(self, agent: str, prompt_ids, sampling):
    return await self.engine.generate(agent, prompt_ids, sampling)

  async def publish(self, agent: str, params: Any, version: int) -> None:
    """Process 0 publishes; every process returns only once the servers serve `version`
    (collective: every process must call it with the same agent and version)."""
    error = None
    if self.process_index == 0:
      try:
        await self.engine.publish(agent, params, version)
      except Exception as e:  # pylint: disable=broad-except  (re-raised after the barrier)
        error = e
    # The barrier. It blocks this event loop on purpose: publish runs between rollouts, when
    # nothing else of this process's is waiting on the loop.
    status = self._broadcast(np.asarray([version, error is not None], np.int32))
    if error is not None:
      raise error
    if int(status[0]) != int(version):
      raise PublishError(f"agent {agent!r}: process {self.process_index} published version "
                         f"{version} but process 0 version {int(status[0])} (the processes "
                         "are out of step)")
    if status[1]:
      raise PublishError(f"agent {agent!r} version {version}: process 0 failed to update the "
                         "servers (see its log)")

  async def aclose(self) -> None:
    await self.engine.aclose()

  def __getattr__(self, name: str):
    # pause/resume/health/servers...: the wrapped engine's (called per process).
    return getattr(self.engine, name)
