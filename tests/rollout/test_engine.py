"""InProcessEngine: per-agent batching dispatcher, publish without host transfer, pause/resume.

The dispatcher logic is tested with a recording stand-in sampler (fast, exact batch sizes);
everything about generations uses the real Sampler and a tiny random Decoder.
"""
from __future__ import annotations

import asyncio
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from mappa_jax.rollout.engine import InProcessEngine, InProcessEngineConfig
from mappa_jax.rollout.sampler import SampleOutput, Sampler
from mappa_jax.rollout.types import Completion, RolloutEngine, SamplingParams
from tests.rollout.rollout_fixtures import PROMPTS, SMALL, run, tiny_dirs  # noqa: F401

# --- dispatcher logic with a recording sampler -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cfg:
  name: str
  vocab_size: int = 1000
  max_position_embeddings: int = 64


class _Toy(nnx.Module):
  def __init__(self, cfg: _Cfg, value: float):
    self.config = cfg
    self.w = nnx.Param(jax.numpy.full((2,), value))


class RecordingSampler:
  """Echo sampler: token i of a row = prompt[-1] + seed + 100 * weights value + i."""
  instances: list["RecordingSampler"] = []

  max_new_buckets = (4,)

  def __init__(self, model, *, eos_token_ids, **kw):
    self.batches: list[int] = []
    self.params = nnx.state(model, nnx.Param)
    self.set_calls = 0
    self.fail_next = False
    RecordingSampler.instances.append(self)

  def set_params(self, state):
    self.params, self.set_calls = state, self.set_calls + 1

  def generate(self, prompts, sampling, *, seeds):
    self.batches.append(len(prompts))
    if self.fail_next:
      self.fail_next = False
      raise RuntimeError("device fell over")
    w = float(jax.device_get(self.params["w"][...])[0])
    return [SampleOutput([int(p[-1] + s + 100 * w + i) for i in range(sp.max_new_tokens)],
                         [-1.0] * sp.max_new_tokens, "length")
            for p, sp, s in zip(prompts, sampling, seeds)]


def _toy_engine(**cfg):
  RecordingSampler.instances.clear()
  models = {"a": _Toy(_Cfg("x"), 1.0), "b": _Toy(_Cfg("x"), 2.0), "c": _Toy(_Cfg("y"), 3.0)}
  config = InProcessEngineConfig(**{"max_batch_size": 4, "batch_window_s": 0.05, **cfg})
  return InProcessEngine(models, eos_token_ids=[0], config=config,
                         sampler_factory=RecordingSampler)


def test_engine_satisfies_protocol():
  assert isinstance(_toy_engine(), RolloutEngine)


def test_concurrent_calls_are_batched_per_agent_and_capped():
  engine = _toy_engine()
  sp = SamplingParams(max_new_tokens=2)

  async def main():
    calls = [engine.generate("a", [i], dataclasses.replace(sp, seed=0)) for i in range(6)]
    calls += [engine.generate("c", [i], dataclasses.replace(sp, seed=0)) for i in range(3)]
    return await asyncio.gather(*calls)

  outs = run(main())
  # Agents 'a' and 'b' share a sampler (same config); 'c' has its own.
  assert engine.num_samplers() == 2
  shared, own = RecordingSampler.instances
  assert shared.batches == [4, 2]  # 6 concurrent requests, max_batch_size 4
  assert own.batches == [3]
  assert [o.token_ids[0] for o in outs[:6]] == [100 + i for i in range(6)]
  assert [o.token_ids[0] for o in outs[6:]] == [300 + i for i in range(3)]


def test_shared_sampler_switches_params_between_agents():
  engine = _toy_engine()
  sp = SamplingParams(max_new_tokens=1, seed=0)

  async def main():
    return await asyncio.gather(engine.generate("a", [0], sp), engine.generate("b", [0], sp),
                                engine.generate("a", [0], sp))

  a1, b, a2 = run(main())
  assert (a1.token_ids, b.token_ids, a2.token_ids) == ((100,), (200,), (100,))
  shared = RecordingSampler.instances[0]
  assert shared.batches == [2, 1]  # the two 'a' calls batched together; 'b' separately
  assert shared.set_calls == 2


def test_unseeded_requests_get_distinct_reproducible_seeds():
  sp = SamplingParams(max_new_tokens=1)

  async def main(engine):
    return [o.token_ids[0] for o in await asyncio.gather(
        *(engine.generate("a", [0], sp) for _ in range(4)))]

  first = run(main(_toy_engine(seed=7)))
  assert len(set(first)) == 4
  assert run(main(_toy_engine(seed=7))) == first


def test_pause_holds_requests_until_resume():
  engine = _toy_engine()

  async def main():
    await engine.pause()
    task = asyncio.ensure_future(engine.generate("a", [1], SamplingParams(max_new_tokens=1,
                                                                          seed=0)))
    await asyncio.sleep(0.3)
    assert not task.done()
    assert (await engine.health())["paused"]
    await engine.resume()
    return await asyncio.wait_for(task, 10)

  assert run(main()).token_ids == (101,)


def test_failed_batch_reaches_its_callers_and_engine_keeps_serving():
  engine = _toy_engine()
  sp = SamplingParams(max_new_tokens=1, seed=0)

  async def main():
    await engine.generate("a", [1], sp)
    RecordingSampler.instances[0].fail_next = True
    with pytest.raises(RuntimeError, match="device fell over"):
      await engine.generate("a", [1], sp)
    return await engine.generate("a", [1], sp)

  assert run(main()).token_ids == (101,)


def test_bad_requests_fail_alone_with_clear_errors():
  engine = _toy_engine()

  async def main():
    with pytest.raises(KeyError, match="unknown agent 'zz'"):
      await engine.generate("zz", [1], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
      await engine.generate("a", [], SamplingParams())
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
      await engine.generate("a", [5, 1000], SamplingParams())
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
      await engine.generate("a", [1] * 62, SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="largest sampler bucket 4"):
      await engine.generate("a", [1], SamplingParams(max_new_tokens=5))
    with pytest.raises(ValueError, match="shape"):
      await engine.publish("a", nnx.State({"w": nnx.Param(jax.numpy.zeros(3))}), 1)

  run(main())


# --- real sampler ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_dirs):  # noqa: F811
  from mappa_jax.models import hf_io
  return {"v0": hf_io.load_hf(tiny_dirs["v0"]), "v1": hf_io.load_hf(tiny_dirs["v1"])}


@pytest.fixture(scope="module")
def engine(models):
  """Two agents with the same architecture: one shared Sampler, one compiled program."""
  return InProcessEngine({"solver": models["v0"], "verifier": models["v1"]},
                         eos_token_ids=models["v0"].config.eos_token_ids, config=SMALL)


def _sp(i, **kw):
  return SamplingParams(max_new_tokens=kw.pop("max_new_tokens", 6), seed=100 + i, **kw)


def _generate_all(engine, agent, prompts=PROMPTS, **kw):
  async def main():
    return await asyncio.gather(*(engine.generate(agent, p, _sp(i, **kw))
                                  for i, p in enumerate(prompts)))
  return run(main())


def test_batched_generations_equal_one_at_a_time_sampler_runs(engine, models):
  outs = _generate_all(engine, "solver")
  assert all(isinstance(o, Completion) and o.weight_version == 0 for o in outs)
  assert engine.num_samplers() == 1
  ref = Sampler(models["v0"], eos_token_ids=models["v0"].config.eos_token_ids,
                prompt_buckets=(64,), max_new_buckets=(8,), batch_buckets=(8,))
  for i, (p, o) in enumerate(zip(PROMPTS, outs)):
    (r,) = ref.generate([p], [_sp(i)])
    assert o.token_ids == tuple(r.token_ids)
    np.testing.assert_allclose(o.logprobs, r.logprobs, rtol=0, atol=1e-5)
    assert o.finish_reason == r.finish_reason
  h = run(engine.health())
  assert h["agents"]["solver"]["batches"] >= 1


def test_agents_sharing_a_sampler_keep_their_own_weights(engine):
  async def main():
    calls = []
    for i, p in enumerate(PROMPTS):
      calls += [engine.generate("solver", p, _sp(i)), engine.generate("verifier", p, _sp(i))]
    return await asyncio.gather(*calls)

  mixed = run(main())
  solver_alone = _generate_all(engine, "solver")
  verifier_alone = _generate_all(engine, "verifier")
  assert [o.token_ids for o in mixed[0::2]] == [o.token_ids for o in solver_alone]
  assert [o.token_ids for o in mixed[1::2]] == [o.token_ids for o in verifier_alone]
  assert [o.token_ids for o in solver_alone] != [o.token_ids for o in verifier_alone]


def test_publish_swaps_device_arrays_without_transfers(engine, models):
  before = _generate_all(engine, "solver")
  verifier_out = _generate_all(engine, "verifier")
  new_params = nnx.state(models["v1"], nnx.Param)  # already on device

  async def publish(params, version):
    with jax.transfer_guard("disallow"):
      await engine.publish("solver", params, version)

  run(publish(new_params, 5))
  assert engine.weight_version("solver") == 5
  got = jax.tree.leaves(engine.params("solver"))
  assert all(a is b for a, b in zip(got, jax.tree.leaves(new_params)))  # by reference
  after = _generate_all(engine, "solver")
  assert all(o.weight_version == 5 for o in after)
  # Same weights and seeds as the verifier agent -> the verifier's generations, exactly.
  assert [o.token_ids for o in after] == [o.token_ids for o in verifier_out]
  assert [o.token_ids for o in after] != [o.token_ids for o in before]
  # Publishing the old weights back restores the old generations (deterministic).
  run(publish(models["v0"], 6))
  again = _generate_all(engine, "solver")
  assert [o.token_ids for o in again] == [o.token_ids for o in before]
  assert {o.weight_version for o in again} == {6}
