"""In-process rollout engine: a per-agent batching dispatcher in front of the JAX Sampler.

Workflows call `await engine.generate(agent, prompt_ids, sampling)` as plain sequential code;
concurrent calls for the same agent that arrive within `batch_window_s` of each other (or while
the device is busy) are run as one padded batch by the Sampler (which pads prompts and budgets
to its buckets). Device work runs in one worker thread, one batch at a time, so the event loop
stays free (HTTP servers keep answering) and agents take turns on the shared device(s).

Agents whose Decoders have the same ModelConfig share one Sampler (one set of compiled
prefill/decode programs); the Sampler is pointed at the right agent's params before each batch.
`publish` swaps an agent's params by reference: the arrays already on device are used as is
(no host round trip); a batch already running finishes on the weights it started with, and
each Completion records the version it was sampled with.

Engine classes for the RolloutEngine protocol (mappa_jax.rollout.types):
  InProcessEngine  this module
  SGLangEngine     mappa_jax.rollout.sglang_engine (HTTP, SGLang or our server)
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx

from mappa_jax.rollout import publish as publish_lib
from mappa_jax.rollout.sampler import Sampler
from mappa_jax.rollout.types import Completion, SamplingParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InProcessEngineConfig:
  """Dispatcher and sampler settings.

  Attributes:
    max_batch_size: most requests of one agent run together (the Sampler pads the batch to
      its next batch bucket).
    batch_window_s: how long the first request of a batch waits for others to join.
    seed: seeds requests whose SamplingParams.seed is None (reproducible per engine).
    prompt_buckets, max_new_buckets, batch_buckets: passed to the Sampler when set (None keeps
      the Sampler's defaults).
    batch_invariant: Sampler(batch_invariant=...): each request's tokens and logprobs are
      bit-identical whatever it is batched with (every batch padded to the largest batch
      bucket, rows grouped by prompt bucket): rollouts independent of arrival timing.
  """
  max_batch_size: int = 64
  batch_window_s: float = 0.005
  seed: int = 0
  prompt_buckets: tuple[int, ...] | None = None
  max_new_buckets: tuple[int, ...] | None = None
  batch_buckets: tuple[int, ...] | None = None
  batch_invariant: bool = False

  def sampler_kwargs(self) -> dict:
    kw = {}
    for name in ("prompt_buckets", "max_new_buckets", "batch_buckets"):
      if getattr(self, name) is not None:
        kw[name] = tuple(getattr(self, name))
    if self.batch_invariant:  # only when asked: custom sampler factories need not know it
      kw["batch_invariant"] = True
    return kw


@dataclasses.dataclass
class _Request:
  prompt: list[int]
  sampling: SamplingParams
  seed: int
  future: asyncio.Future


@dataclasses.dataclass
class _Agent:
  name: str
  group: int                  # index of the shared Sampler
  params: nnx.State           # what the next batch of this agent samples with
  version: int
  vocab_size: int | None = None
  max_len: int | None = None  # max_position_embeddings
  queue: asyncio.Queue | None = None
  task: asyncio.Task | None = None
  batches: int = 0
  tokens: int = 0


class InProcessEngine:
  """RolloutEngine running the Sampler in this process.

  Args:
    models: agent name -> Decoder (each agent's own weights; the Decoders may share a config).
    eos_token_ids: ids that end generation (the tokenizer's EOS ids); SamplingParams
      .stop_token_ids add to them per request.
    config: dispatcher/sampler settings.
    versions: initial weight version per agent (default 0).
    sampler_factory: builds a Sampler from (model, eos_token_ids=..., **bucket kwargs); defaults
      to mappa_jax.rollout.sampler.Sampler.
  """

  def __init__(self, models: Mapping[str, nnx.Module], *, eos_token_ids: Sequence[int],
               config: InProcessEngineConfig = InProcessEngineConfig(),
               versions: Mapping[str, int] | None = None, sampler_factory=None):
    if not models:
      raise ValueError("models: give at least one agent -> Decoder")
    if sampler_factory is None:
      sampler_factory = Sampler
    self.config = config
    self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
    self._samplers: list[Any] = []
    self._sampler_keys: list[Any] = []
    self._sampler_params: list[nnx.State | None] = []  # the params each Sampler holds now
    self._agents: dict[str, _Agent] = {}
    versions = dict(versions or {})
    for name, model in models.items():
      key = getattr(model, "config", None)
      group = None
      for i, k in enumerate(self._sampler_keys):
        if key is not None and k == key:
          group = i
          break
      if group is None:
        self._samplers.append(sampler_factory(
            model, eos_token_ids=self.eos_token_ids, **config.sampler_kwargs()))
        self._sampler_keys.append(key)
        self._sampler_params.append(None)
        group = len(self._samplers) - 1
      cfg = getattr(model, "config", None)
      self._agents[name] = _Agent(
          name=name, group=group, params=publish_lib.params_state(model),
          version=int(versions.get(name, 0)),
          vocab_size=getattr(cfg, "vocab_size", None),
          max_len=getattr(cfg, "max_position_embeddings", None))
    self._seeds = np.random.default_rng(config.seed)
    self._device = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="mappa-rollout-device")
    self._loop: asyncio.AbstractEventLoop | None = None
    self._running: asyncio.Event | None = None
    self._idle: asyncio.Condition | None = None
    self._batches_in_flight = 0
    self._closed = False

  # --- bookkeeping -------------------------------------------------------------------------

  @property
  def agents(self) -> tuple[str, ...]:
    return tuple(self._agents)

  def _agent(self, name: str) -> _Agent:
    try:
      return self._agents[name]
    except KeyError:
      raise KeyError(f"unknown agent {name!r}; this engine serves {sorted(self._agents)}") from None

  def weight_version(self, agent: str) -> int:
    return self._agent(agent).version

  def params(self, agent: str) -> nnx.State:
    """The params the agent's next batch will use (the published arrays themselves)."""
    return self._agent(agent).params

  def num_samplers(self) -> int:
    """How many distinct Samplers (compiled program sets) serve the agents."""
    return len(self._samplers)

  def _bind_loop(self) -> None:
    """(Re)creates loop-bound primitives; a new event loop (e.g. a new asyncio.run) starts
    fresh dispatchers."""
    loop = asyncio.get_running_loop()
    if self._loop is loop:
      return
    if self._closed:
      raise RuntimeError("this InProcessEngine was closed")
    self._loop = loop
    self._running = asyncio.Event()
    self._running.set()
    self._idle = asyncio.Condition()
    self._batches_in_flight = 0
    for a in self._agents.values():
      a.queue = asyncio.Queue()
      a.task = None

  # --- RolloutEngine -----------------------------------------------------------------------

  async def generate(self, agent: str, prompt_ids: Sequence[int],
                     sampling: SamplingParams) -> Completion:
    """Queues one request for `agent`'s dispatcher and waits for its Completion."""
    a = self._agent(agent)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
      raise ValueError("prompt_ids is empty: a prompt needs at least one token")
    if sampling.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={sampling.max_new_tokens}: must be >= 1")
    # Checked here, not in the batch: one bad request must not fail the others batched with it.
    if a.vocab_size is not None and not all(0 <= t < a.vocab_size for t in prompt):
      bad = next(t for t in prompt if not 0 <= t < a.vocab_size)
      raise ValueError(f"prompt_ids contains {bad}, outside the model's vocabulary "
                       f"[0, {a.vocab_size}) of agent {agent!r}")
    sampler = self._samplers[a.group]
    for what, n, buckets in (("prompt length", len(prompt), "prompt_buckets"),
                             ("max_new_tokens", sampling.max_new_tokens, "max_new_buckets")):
      sizes = getattr(sampler, buckets, None)
      if sizes and n > sizes[-1]:
        raise ValueError(f"{what} {n} exceeds the largest sampler bucket {sizes[-1]}; add a "
                         f"larger size to the rollout engine's {buckets}")
    if a.max_len is not None and len(prompt) + sampling.max_new_tokens > a.max_len:
      raise ValueError(
          f"prompt ({len(prompt)} tokens) + max_new_tokens ({sampling.max_new_tokens}) exceeds "
          f"agent {agent!r}'s max_position_embeddings={a.max_len}; shorten the prompt or budget")
    self._bind_loop()
    await self._running.wait()
    seed = sampling.seed
    if seed is None:
      seed = int(self._seeds.integers(0, 2**31 - 1))
    fut = self._loop.create_future()
    a.queue.put_nowait(_Request(prompt, sampling, int(seed), fut))
    if a.task is None or a.task.done():
      a.task = self._loop.create_task(self._dispatch(a), name=f"rollout-dispatch-{agent}")
    return await fut

  async def _collect(self, a: _Agent) -> list[_Request]:
    """One batch: the first request, plus whatever is queued once the window has passed."""
    batch = [await a.queue.get()]
    if self.config.batch_window_s > 0 and a.queue.qsize() + 1 < self.config.max_batch_size:
      await asyncio.sleep(self.config.batch_window_s)  # let concurrent callers join
    while len(batch) < self.config.max_batch_size and not a.queue.empty():
      batch.append(a.queue.get_nowait())
    return batch

  async def _dispatch(self, a: _Agent) -> None:
    while True:
      batch = await self._collect(a)
      await self._running.wait()  # paused: hold the batch until resume()
      batch = [r for r in batch if not r.future.done()]  # callers that gave up
      if not batch:
        continue
      params, version = a.params, a.version  # snapshot: a publish now applies to the next batch
      self._batches_in_flight += 1
      try:
        outs = await self._loop.run_in_executor(
            self._device, self._run_batch, a, params, version, batch)
      except Exception as e:  # surface to every caller of this batch, keep serving
        log.exception("rollout batch for agent %s failed", a.name)
        for r in batch:
          if not r.future.done():
            r.future.set_exception(e)
        continue
      finally:
        self._batches_in_flight -= 1
        async with self._idle:
          self._idle.notify_all()
      for r, out in zip(batch, outs):
        if not r.future.done():
          r.future.set_result(Completion(
              token_ids=tuple(int(t) for t in out.token_ids),
              logprobs=tuple(float(x) for x in out.logprobs),
              finish_reason=out.finish_reason,
              weight_version=version))

  def _run_batch(self, a: _Agent, params: nnx.State, version: int,
                 batch: list[_Request]) -> list[Any]:
    """Device thread: point the shared Sampler at this agent's params, then sample."""
    sampler = self._samplers[a.group]
    if self._sampler_params[a.group] is not params:
      sampler.set_params(params)
      self._sampler_params[a.group] = params
    outs = sampler.generate([r.prompt for r in batch], [r.sampling for r in batch],
                            seeds=[r.seed for r in batch])
    a.batches += 1
    a.tokens += sum(len(o.token_ids) for o in outs)
    return outs

  async def publish(self, agent: str, params, version: int) -> None:
    """Makes `params` (Decoder or nnx.State, arrays already on device) the agent's weights.

    No copy and no host transfer: the arrays are used by reference. Their paths, shapes and
    dtypes must match the agent's current params.
    """
    a = self._agent(agent)
    state = publish_lib.params_state(params)
    publish_lib.check_compatible(state, a.params, what=f"publish({agent!r})")
    a.params, a.version = state, int(version)

  async def pause(self) -> None:
    """Stops starting batches and returns once the running batch (if any) has finished."""
    self._bind_loop()
    self._running.clear()
    async with self._idle:
      await self._idle.wait_for(lambda: self._batches_in_flight == 0)

  async def resume(self) -> None:
    self._bind_loop()
    self._running.set()

  @property
  def paused(self) -> bool:
    return self._running is not None and not self._running.is_set()

  async def health(self) -> dict:
    return {
        "ok": not self._closed,
        "paused": self.paused,
        "samplers": len(self._samplers),
        "agents": {
            name: {"weight_version": a.version,
                   "queued": a.queue.qsize() if a.queue is not None else 0,
                   "batches": a.batches, "tokens": a.tokens}
            for name, a in self._agents.items()},
    }

  async def aclose(self) -> None:
    """Cancels the dispatchers and stops the device thread."""
    for a in self._agents.values():
      if a.task is not None and not a.task.done():
        a.task.cancel()
    self._closed = True
    self._device.shutdown(wait=False, cancel_futures=True)

  async def __aenter__(self) -> "InProcessEngine":
    return self

  async def __aexit__(self, *exc) -> None:
    await self.aclose()
