"""KV-cache sampler vs. repeated full forward passes (no cache) on tiny random decoders."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.rollout.sampler import Sampler
from mappa_jax.rollout.types import SamplingParams

EOS = 502  # <|im_end|> of the tiny tokenizer
REF_LEN = 64  # fixed right-padded length of the reference full forward
REF_BATCH = 8  # fixed batch of the reference (one compile per model)
# Few buckets, so the whole file compiles a handful of programs (compiles dominate its time).
BUCKETS = dict(prompt_buckets=(16, 32), max_new_buckets=(16,), batch_buckets=(1, 4))
PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7]]


def make_model(preset: str, seed: int, **overrides) -> Decoder:
  # HF's init (std 0.02) gives near-uniform logits; std 0.2 gives varied, peaked outputs.
  config = dataclasses.replace(ModelConfig.preset(preset), **overrides)
  model = Decoder(config, rngs=nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params))
  return model


class FullForward:
  """Log-softmax logits of whole sequences, no cache: [B, REF_LEN, V] for right-padded rows."""

  def __init__(self, model: Decoder):
    graphdef, self.state = nnx.split(model)

    @jax.jit
    def run(state, tokens, mask):
      m = nnx.merge(graphdef, state)
      positions = jnp.broadcast_to(jnp.arange(REF_LEN), tokens.shape)
      hidden, _ = m(tokens, positions, attention_mask=mask)
      return m.logits(hidden)

    self._run = run

  def logits(self, seqs: list[list[int]]) -> np.ndarray:
    assert len(seqs) <= REF_BATCH
    tokens = np.zeros((REF_BATCH, REF_LEN), np.int32)
    mask = np.zeros((REF_BATCH, REF_LEN), bool)
    for i, s in enumerate(seqs):
      tokens[i, :len(s)], mask[i, :len(s)] = s, True
    return np.asarray(self._run(self.state, tokens, mask))[:len(seqs)]

  def greedy(self, prompts, max_new: int, stop_ids=()) -> list[list[int]]:
    seqs, outs, done = [list(p) for p in prompts], [[] for _ in prompts], [False] * len(prompts)
    for _ in range(max_new):
      logits = self.logits(seqs)
      for i, s in enumerate(seqs):
        if done[i]:
          continue
        tok = int(np.argmax(logits[i, len(s) - 1]))
        s.append(tok)
        outs[i].append(tok)
        done[i] = tok in stop_ids
    return outs

  def logprobs(self, prompt, generated, temperature: float = 1.0) -> np.ndarray:
    logits = self.logits([list(prompt) + list(generated)])[0] / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    rows = np.arange(len(prompt) - 1, len(prompt) - 1 + len(generated))
    return np.asarray(logp[rows, np.asarray(generated)])


@pytest.fixture(scope="module")
def qwen3():
  model = make_model("tiny-qwen3", 0)
  return model, Sampler(model, eos_token_ids=(EOS,), **BUCKETS), FullForward(model)


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-qwen2"])
def test_greedy_equals_argmax_of_full_forwards(qwen3, preset):
  if preset == "tiny-qwen3":
    _, sampler, ref = qwen3
  else:  # untied LM head, q/k/v bias
    model = make_model(preset, 1)
    sampler, ref = Sampler(model, eos_token_ids=(EOS,), **BUCKETS), FullForward(model)
  outs = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0))
  expected = ref.greedy(PROMPTS, 12, stop_ids=(EOS,))
  for prompt, out, exp in zip(PROMPTS, outs, expected):
    assert out.token_ids == exp
    assert out.finish_reason == ("stop" if exp[-1] == EOS else "length")
    np.testing.assert_allclose(out.logprobs, ref.logprobs(prompt, out.token_ids), atol=1e-4)
  assert len({t for exp in expected for t in exp}) > 5  # not degenerate, so the test can fail


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_full_forward_log_softmax(qwen3, temperature):
  _, sampler, ref = qwen3
  sp = SamplingParams(max_new_tokens=16, temperature=temperature)
  outs = sampler.generate(PROMPTS, sp, seeds=[1, 2, 3])
  for prompt, out in zip(PROMPTS, outs):
    assert len(out.token_ids) == len(out.logprobs) >= 1
    np.testing.assert_allclose(out.logprobs, ref.logprobs(prompt, out.token_ids, temperature),
                               atol=1e-4)


def test_stop_on_eos_and_stop_ids(qwen3):
  model, _, ref = qwen3
  greedy = ref.greedy(PROMPTS, 8)
  # EOS = row 0's first greedy token: row 0 stops at once, with the EOS included.
  sampler = Sampler(model, eos_token_ids=(greedy[0][0],), **BUCKETS)
  sp = SamplingParams(max_new_tokens=8, temperature=0.0)
  outs = sampler.generate(PROMPTS, sp)
  assert outs[0].token_ids == [greedy[0][0]] and outs[0].finish_reason == "stop"
  # A per-request stop id: row 1 stops at its 4th token; the other rows run to their length.
  stop = greedy[1][3]
  sampler = Sampler(model, eos_token_ids=(EOS,), **BUCKETS)
  params = [sp, dataclasses.replace(sp, stop_token_ids=(stop,)), sp]
  outs = sampler.generate(PROMPTS, params)
  first = greedy[1].index(stop)
  assert outs[1].token_ids == greedy[1][:first + 1] and outs[1].finish_reason == "stop"
  for i in (0, 2):
    assert outs[i].token_ids == ref.greedy([PROMPTS[i]], 8, stop_ids=(EOS,))[0]


def test_min_new_tokens_suppresses_stop_ids(qwen3):
  model, _, ref = qwen3
  first = ref.greedy(PROMPTS[:1], 1)[0][0]
  sampler = Sampler(model, eos_token_ids=(first,), **BUCKETS)
  for temperature in (0.0, 1.0):
    sp = SamplingParams(max_new_tokens=8, temperature=temperature, min_new_tokens=4)
    outs = sampler.generate(PROMPTS[:1] * 4, sp, seeds=[0, 1, 2, 3])
    for out in outs:
      assert first not in out.token_ids[:4]
      assert len(out.token_ids) >= 5 or out.finish_reason == "length"
  # Greedy with EOS suppressed picks the best non-EOS token.
  logits = np.array(ref.logits([PROMPTS[0]])[0, len(PROMPTS[0]) - 1])
  logits[first] = -np.inf
  out = sampler.generate(PROMPTS[:1], SamplingParams(max_new_tokens=1, temperature=0.0,
                                                     min_new_tokens=1))[0]
  assert out.token_ids == [int(np.argmax(logits))] and out.finish_reason == "length"


def test_seeded_reproducible_and_independent_of_batch(qwen3):
  _, sampler, _ = qwen3
  sp = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95)
  alone = sampler.generate([PROMPTS[0]], sp, seeds=[7])[0]
  again = sampler.generate([PROMPTS[0]], sp, seeds=[7])[0]
  assert alone == again
  # Same request inside a bigger batch, next to a longer prompt (another prompt bucket).
  batch = sampler.generate([PROMPTS[1] * 2, PROMPTS[2], PROMPTS[0]], sp, seeds=[3, 4, 7])
  assert batch[2].token_ids == alone.token_ids
  np.testing.assert_allclose(batch[2].logprobs, alone.logprobs, atol=1e-5)
  # Next to rows with other settings (a top-k row, a greedy row): still the same output.
  mixed = sampler.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]],
                           [dataclasses.replace(sp, top_k=5, top_p=1.0), sp,
                            dataclasses.replace(sp, temperature=0.0)], seeds=[1, 7, 2])
  assert mixed[1].token_ids == alone.token_ids
  other = sampler.generate([PROMPTS[0]], sp, seeds=[8])[0]
  assert other.token_ids != alone.token_ids
  # The seed can also come from SamplingParams.
  via_params = sampler.generate([PROMPTS[0]], dataclasses.replace(sp, seed=7))[0]
  assert via_params.token_ids == alone.token_ids


def test_batch_invariant_rows_are_bit_identical_whatever_their_companions(qwen3):
  """batch_invariant=True (what the Trainer uses): a request's tokens AND logprobs are
  bit-identical whichever requests share its batch (other sizes, longer prompts, any order):
  the trainer's update depends on the logprobs, and batch composition depends on timing."""
  model, _, _ = qwen3
  sampler = Sampler(model, eos_token_ids=(EOS,), **BUCKETS, batch_invariant=True)
  sp = SamplingParams(max_new_tokens=12, temperature=1.0)
  alone = sampler.generate([PROMPTS[0]], sp, seeds=[7])[0]
  for batch, seeds, row in (([PROMPTS[1], PROMPTS[0]], [3, 7], 1),
                            ([PROMPTS[2], PROMPTS[1] * 2, PROMPTS[0], PROMPTS[1]], [1, 2, 7, 4], 2),
                            ([PROMPTS[0], PROMPTS[0]], [7, 9], 0)):
    out = sampler.generate(batch, sp, seeds=seeds)[row]
    assert out.token_ids == alone.token_ids and out.logprobs == alone.logprobs


def test_top_k_and_top_p_truncate_the_distribution(qwen3):
  _, sampler, ref = qwen3
  greedy = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
  for params in (SamplingParams(max_new_tokens=8, top_k=1),
                 SamplingParams(max_new_tokens=8, top_p=1e-6)):
    outs = sampler.generate(PROMPTS, params, seeds=[5, 6, 7])
    assert [o.token_ids for o in outs] == [g.token_ids for g in greedy]
  outs = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=16, top_k=3), seeds=[4, 5, 6])
  for prompt, out in zip(PROMPTS, outs):
    logits = ref.logits([list(prompt) + out.token_ids])[0]
    for j, tok in enumerate(out.token_ids):
      top3 = np.argsort(-logits[len(prompt) - 1 + j])[:3]
      assert tok in top3


@pytest.mark.slow
def test_bounded_compilations_and_set_params():
  # A 1-layer model: an architecture no other test compiled programs for.
  model = make_model("tiny-qwen3", 4, num_hidden_layers=1)
  batch_buckets, prompt_buckets, new_buckets = (4,), (16, 32), (16,)
  sampler = Sampler(model, eos_token_ids=(EOS,), prompt_buckets=prompt_buckets,
                    max_new_buckets=new_buckets, batch_buckets=batch_buckets)
  rng = np.random.default_rng(0)
  shapes = set()
  for _ in range(12):
    n = int(rng.integers(1, 5))
    lens = rng.integers(1, 30, size=n)
    new = rng.integers(1, 16, size=n)
    prompts = [rng.integers(0, 500, size=int(l)).tolist() for l in lens]
    params = [SamplingParams(max_new_tokens=int(m), temperature=0.0) for m in new]
    outs = sampler.generate(prompts, params)
    for out, m in zip(outs, new):
      assert len(out.token_ids) <= m
      assert out.finish_reason == "stop" or len(out.token_ids) == m
    shapes.add((next(b for b in batch_buckets if b >= n),
                next(b for b in prompt_buckets if b >= max(lens)),
                next(b for b in new_buckets if b >= max(new))))
  assert sampler.num_traces == len(shapes) <= 2  # 12 calls of 1-4 varied requests
  # New weights: no recompilation, and outputs follow the new model.
  before = sampler.num_traces
  other = make_model("tiny-qwen3", 5, num_hidden_layers=1)
  sampler.set_params(nnx.state(other))
  sp = SamplingParams(max_new_tokens=8, temperature=0.0)
  swapped = sampler.generate(PROMPTS[:1], sp)[0]
  assert swapped.token_ids == FullForward(other).greedy(PROMPTS[:1], 8, stop_ids=(EOS,))[0]
  assert sampler.num_traces == before + (0 if (4, 16, 16) in shapes else 1)
  sampler.set_params(other)
  sampler.generate(PROMPTS[:1], sp)
  assert sampler.num_traces == before + (0 if (4, 16, 16) in shapes else 1)


def test_bad_input_errors(qwen3):
  model, sampler, _ = qwen3
  sp = SamplingParams(max_new_tokens=4)
  with pytest.raises(ValueError, match="prompt length 33 exceeds the largest bucket 32"):
    sampler.generate([[1] * 33], sp)
  with pytest.raises(ValueError, match="max_new_tokens 17 exceeds the largest bucket 16"):
    sampler.generate([[1]], SamplingParams(max_new_tokens=17))
  with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
    sampler.generate([[1], []], sp)
  with pytest.raises(ValueError, match=r"sampling\[0\].top_p=0.0"):
    sampler.generate([[1]], SamplingParams(top_p=0.0))
  with pytest.raises(ValueError, match="outside"):
    sampler.generate([[1, 600]], sp)
  with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
    sampler.generate([[1], [2]], sp, seeds=[1])
  qwen2 = Decoder(ModelConfig.preset("tiny-qwen2"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="state tree differs"):
    sampler.set_params(nnx.state(qwen2))
  with pytest.raises(ValueError, match="strictly increasing"):
    Sampler(model, eos_token_ids=(EOS,), prompt_buckets=(16, 8))


def test_from_config_reads_buckets(qwen3):
  import ml_collections
  model, sampler, _ = qwen3
  cfg = ml_collections.ConfigDict(dict(prompt_buckets=(16, 32), max_new_buckets=(16,),
                                       batch_buckets=(1, 4), cache_dtype=""))
  built = Sampler.from_config(model, cfg, eos_token_ids=(EOS,))
  assert built.prompt_buckets == (16, 32) and built.batch_buckets == (1, 4)
  assert built.cache_dtype is None and built.max_stop_ids == 16
  sp = SamplingParams(max_new_tokens=8, temperature=0.0)
  assert built.generate(PROMPTS, sp) == sampler.generate(PROMPTS, sp)
  assert built.num_traces == 0  # shares the compiled program of the fixture's sampler


def test_more_prompts_than_the_largest_batch_bucket(qwen3):
  _, sampler, _ = qwen3
  sp = SamplingParams(max_new_tokens=10, temperature=1.0)
  outs = sampler.generate(PROMPTS * 2, sp, seeds=[1, 2, 3, 4, 5, 6])  # chunks of 4 + 2
  assert len(outs) == 6
  again = sampler.generate([PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[0]], sp,
                           seeds=[5, 6, 4, 1])
  assert [o.token_ids for o in again] == [outs[i].token_ids for i in (4, 5, 3, 0)]
