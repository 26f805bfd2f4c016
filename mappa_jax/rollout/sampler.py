"""In-process KV-cache sampler for a `Decoder`: one jitted prefill + decode loop per batch.

Shapes are bucketed so that a run compiles a handful of programs: the batch is padded to a
`batch_buckets` size with inactive rows, prompts are left-padded to a `prompt_buckets` length,
and the decode loop runs for at most a `max_new_buckets` length (a `lax.while_loop` that exits
early once every row has stopped). Per-row settings (temperature, top-p, top-k, min/max new
tokens, stop ids, seed) are arrays, so they never trigger a recompile.

Randomness is per row: the token at step i of row b is drawn with key
`fold_in(PRNGKey(seed_b), i)` by Gumbel-argmax over that row's logits only, so a request's output
does not depend on which other requests share its batch (up to float reduction order, which
depends on the padded shapes; `batch_invariant=True` fixes the shapes per row, so its tokens and
logprobs are bit-identical whatever shares its batch: what the Trainer uses).

Log-probabilities: `logprobs[i]` is `log_softmax(logits / T)[token_i]` of the model's logits
with the row's temperature T (T = 1 for greedy rows), taken BEFORE top-k/top-p truncation and
before the min_new_tokens suppression of stop ids. With T == 1 (the reference's setting) this
is exactly the unscaled policy's log-probability, i.e. what the trainer recomputes.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mappa_jax.models.decoder import Decoder
from mappa_jax.rollout.types import SamplingParams

Array = jax.Array

DEFAULT_PROMPT_BUCKETS = tuple(2 ** i for i in range(4, 16))    # 16 .. 32768
DEFAULT_MAX_NEW_BUCKETS = tuple(2 ** i for i in range(4, 16))   # 16 .. 32768
DEFAULT_BATCH_BUCKETS = tuple(2 ** i for i in range(0, 9))      # 1 .. 256


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """One generated response: ids (stop id included when 'stop'), their logprobs, why it ended."""
  token_ids: list[int]
  logprobs: list[float]
  finish_reason: Literal["stop", "length"]


def _bucket(n: int, buckets: Sequence[int], what: str, field: str) -> int:
  i = bisect.bisect_left(buckets, n)
  if i == len(buckets):
    raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]}; add a larger size "
                     f"to Sampler({field}=...)")
  return buckets[i]


def _check_buckets(buckets: Sequence[int], field: str) -> tuple[int, ...]:
  buckets = tuple(int(b) for b in buckets)
  if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f"Sampler({field}={buckets}): need strictly increasing positive sizes")
  return buckets


def _top_k_top_p_filter(logits: Array, top_k: Array, top_p: Array) -> Array:
  """Sets logits outside each row's top-k, then top-p (of the renormalised top-k), to -inf.

  logits [B, V] float32; top_k int32 [B] (<= 0: off); top_p float32 [B] (1: off).
  Ties with the smallest kept logit are kept too (threshold filtering, no scatter).
  """
  vocab = logits.shape[-1]
  desc = -jnp.sort(-logits, axis=-1)  # [B, V]
  ranks = jnp.arange(vocab)[None, :]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)[:, None]
  desc = jnp.where(ranks < k, desc, -jnp.inf)
  probs = jax.nn.softmax(desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # top_p == 1 keeps everything (rounding can push the cumulative mass of the tail past 1).
  keep = (ranks < k) & ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0))
  num_kept = jnp.maximum(jnp.sum(keep, axis=-1), 1)
  threshold = jnp.take_along_axis(desc, (num_kept - 1)[:, None], axis=-1)  # [B, 1]
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _choose_tokens(logits: Array, step: Array, keys: Array, temperature: Array, top_p: Array,
                   top_k: Array, min_new: Array, stop_mask: Array) -> tuple[Array, Array]:
  """Picks one token per row. logits [B, V] f32; keys [B, 2]; stop_mask bool [B, V].

  Returns (tokens int32 [B], logprobs f32 [B]) with logprobs as documented in the module.
  """
  greedy = temperature <= 0
  temp = jnp.where(greedy, 1.0, temperature)[:, None]
  scaled = logits / temp
  logp = jax.nn.log_softmax(scaled, axis=-1)
  suppress = (step < min_new)[:, None] & stop_mask
  allowed = jnp.where(suppress, -jnp.inf, scaled)
  row_filters = ~greedy & ((top_k > 0) | (top_p < 1.0))
  # Skip the sort when no row truncates; rows that do not truncate keep their logits exactly.
  filtered = jax.lax.cond(jnp.any(row_filters), _top_k_top_p_filter, lambda x, *_: x,
                          allowed, top_k, top_p)
  filtered = jnp.where(row_filters[:, None], filtered, allowed)

  def sample(filtered):
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    return jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)

  # All-greedy batches skip the per-row Gumbel noise ([B, V] threefry draws: ~7 % of a decode
  # step on CPU); a sampled row's draw depends only on its own key, so skipping is exact.
  sampled = jax.lax.cond(jnp.all(greedy), lambda f: jnp.zeros(f.shape[:1], jnp.int32), sample,
                         filtered)
  tokens = jnp.where(greedy, jnp.argmax(allowed, axis=-1), sampled).astype(jnp.int32)
  return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


_TRACES = [0]  # programs traced (== compiled) by `_generate_program`, all samplers together


def _generate_batch(graphdef, state, tokens, prompt_mask, seeds, temperature, top_p, top_k,
                    min_new, max_new_rows, stop_ids, active, *, max_new: int, pad_token_id: int,
                    cache_dtype):
  """Prefill + decode loop for one padded batch.

  tokens/prompt_mask [B, P] (left-padded); per-row arrays [B]; stop_ids int32 [B, K] (-1 pads).
  Returns (out_tokens int32 [B, max_new], out_logprobs f32 [B, max_new], num_generated [B],
  stopped bool [B]).
  """
  _TRACES[0] += 1  # Python side effect: runs once per trace, i.e. per compiled program
  model = nnx.merge(graphdef, state)
  batch, prompt_len = tokens.shape
  vocab = model.config.vocab_size
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1, dtype=jnp.int32) - 1, 0)
  cache = model.init_cache(batch, prompt_len + max_new, cache_dtype)
  cache_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new), bool)], axis=1)
  keys = jax.vmap(jax.random.PRNGKey)(seeds)
  stop_mask = jnp.any(jnp.arange(vocab)[None, None, :] == stop_ids[:, :, None], axis=1)
  choose = lambda logits, step: _choose_tokens(logits, step, keys, temperature, top_p, top_k,
                                               min_new, stop_mask)
  rows = jnp.arange(batch)

  hidden, cache = model(tokens, positions, attention_mask=cache_mask, cache=cache,
                        cache_index=jnp.int32(0))
  tok, logp = choose(model.logits(hidden[:, -1]), jnp.int32(0))
  out_tokens = jnp.full((batch, max_new), pad_token_id, jnp.int32)
  out_tokens = out_tokens.at[:, 0].set(jnp.where(active, tok, pad_token_id))
  out_logp = jnp.zeros((batch, max_new), jnp.float32).at[:, 0].set(jnp.where(active, logp, 0.))
  stopped = active & stop_mask[rows, tok]
  num_generated = active.astype(jnp.int32)
  done = ~active | stopped | (num_generated >= max_new_rows)

  def cond(carry):
    step, _, _, done, *_ = carry
    return (step < max_new) & ~jnp.all(done)

  def body(carry):
    step, cache, prev, done, num_generated, stopped, out_tokens, out_logp = carry
    # `prev` is generated token step-1: position length + step - 1, cache slot P + step - 1.
    hidden, cache = model(prev[:, None], (lengths + step - 1)[:, None],
                          attention_mask=cache_mask, cache=cache,
                          cache_index=prompt_len + step - 1)
    tok, logp = choose(model.logits(hidden[:, 0]), step)
    write = ~done
    out_tokens = out_tokens.at[:, step].set(jnp.where(write, tok, pad_token_id))
    out_logp = out_logp.at[:, step].set(jnp.where(write, logp, 0.))
    num_generated = num_generated + write.astype(jnp.int32)
    hit_stop = write & stop_mask[rows, tok]
    stopped = stopped | hit_stop
    done = done | hit_stop | (num_generated >= max_new_rows)
    return step + 1, cache, tok, done, num_generated, stopped, out_tokens, out_logp

  carry = (jnp.int32(1), cache, tok, done, num_generated, stopped, out_tokens, out_logp)
  carry = jax.lax.while_loop(cond, body, carry)
  _, _, _, _, num_generated, stopped, out_tokens, out_logp = carry
  return out_tokens, out_logp, num_generated, stopped


# One compiled program per (architecture, shapes): samplers of same-architecture agents share it.
_generate_program = jax.jit(_generate_batch, static_argnums=(0,),
                            static_argnames=("max_new", "pad_token_id", "cache_dtype"))


class Sampler:
  """Batched generation from token ids with a `Decoder` and its KV cache.

  Example:
    sampler = Sampler(model, eos_token_ids=tok.eos_token_ids)
    outs = sampler.generate([ids_a, ids_b], SamplingParams(max_new_tokens=64), seeds=[1, 2])
  """

  def __init__(self, model: Decoder, *, eos_token_ids: Sequence[int],
               prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
               max_new_buckets: Sequence[int] = DEFAULT_MAX_NEW_BUCKETS,
               batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
               pad_token_id: int = 0, max_stop_ids: int = 16, cache_dtype=None, seed: int = 0,
               batch_invariant: bool = False):
    self.config = model.config
    self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
    if not self.eos_token_ids:
      raise ValueError("Sampler(eos_token_ids=()): give at least one end-of-turn id "
                       "(Tokenizer.eos_token_ids)")
    self.prompt_buckets = _check_buckets(prompt_buckets, "prompt_buckets")
    self.max_new_buckets = _check_buckets(max_new_buckets, "max_new_buckets")
    self.batch_buckets = _check_buckets(batch_buckets, "batch_buckets")
    self.pad_token_id = int(pad_token_id)
    self.max_stop_ids = int(max_stop_ids)
    # A jnp.dtype (hashable, canonical) or None for the model's compute dtype.
    self.cache_dtype = None if cache_dtype is None else jnp.dtype(cache_dtype)
    self._graphdef, self._state = nnx.split(model)
    self._seed_rng = np.random.default_rng(seed)
    # Bit-identical rows whatever shares their batch: a row's floats depend on the padded
    # shapes (XLA picks kernels and reduction orders by shape), so every chunk is padded to the
    # largest batch bucket and rows are grouped by their own prompt bucket.
    self.batch_invariant = bool(batch_invariant)
    self.num_traces = 0  # programs traced (== compiled) during this sampler's calls

  @classmethod
  def from_config(cls, model: Decoder, cfg, *, eos_token_ids: Sequence[int],
                  pad_token_id: int = 0) -> "Sampler":
    """Builds from a ConfigDict section: prompt_buckets, max_new_buckets, batch_buckets
    (tuples of sizes), and optionally max_stop_ids, cache_dtype ('' = compute dtype), seed."""
    get = lambda name, default: cfg.get(name, default) if hasattr(cfg, "get") else default
    return cls(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
               prompt_buckets=tuple(get("prompt_buckets", DEFAULT_PROMPT_BUCKETS)),
               max_new_buckets=tuple(get("max_new_buckets", DEFAULT_MAX_NEW_BUCKETS)),
               batch_buckets=tuple(get("batch_buckets", DEFAULT_BATCH_BUCKETS)),
               max_stop_ids=int(get("max_stop_ids", 16)),
               cache_dtype=get("cache_dtype", None) or None, seed=int(get("seed", 0)))

  # -- weights ----------------------------------------------------------------------------------

  def set_params(self, state) -> None:
    """Swaps in new weights (an nnx.State like `nnx.state(model)`, or a Decoder).

    Same structure, shapes and dtypes as the current weights, so nothing recompiles (the
    shardings must match too, or the next call compiles a new program).
    """
    if isinstance(state, nnx.Module):
      state = nnx.state(state)
    old = jax.tree.structure(self._state)
    if jax.tree.structure(state) != old:
      raise ValueError("Sampler.set_params: state tree differs from the model's "
                       "(pass nnx.state(model) of the same architecture)")
    for a, b in zip(jax.tree.leaves(self._state), jax.tree.leaves(state)):
      if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"Sampler.set_params: leaf {b.shape} {b.dtype} does not match "
                         f"{a.shape} {a.dtype}")
    self._state = state

  # -- the public API ---------------------------------------------------------------------------

  def generate(self, prompts: list[list[int]], sampling: list[SamplingParams] | SamplingParams,
               *, seeds: list[int] | None = None) -> list[SampleOutput]:
    """Generates one response per prompt (token ids, never text).

    Args:
      prompts: token-id lists (non-empty); they may have different lengths.
      sampling: one SamplingParams for all prompts or one per prompt.
      seeds: per-prompt seeds; default SamplingParams.seed, else drawn from Sampler(seed=...).
    """
    n = len(prompts)
    if isinstance(sampling, SamplingParams):
      sampling = [sampling] * n
    if len(sampling) != n:
      raise ValueError(f"generate: {n} prompts but {len(sampling)} SamplingParams")
    if seeds is not None and len(seeds) != n:
      raise ValueError(f"generate: {n} prompts but {len(seeds)} seeds")
    row_seeds = []
    for i, params in enumerate(sampling):
      self._validate(prompts[i], params, i)
      if seeds is not None:
        row_seeds.append(int(seeds[i]))
      elif params.seed is not None:
        row_seeds.append(int(params.seed))
      else:
        row_seeds.append(int(self._seed_rng.integers(0, 2 ** 31)))
    chunk = self.batch_buckets[-1]
    if self.batch_invariant:
      groups: dict[int, list[int]] = {}
      for i, p in enumerate(prompts):
        groups.setdefault(_bucket(len(p), self.prompt_buckets, "prompt length",
                                  "prompt_buckets"), []).append(i)
      rows = [idx for _, idx in sorted(groups.items())]
    else:
      rows = [list(range(n))]
    by_row: dict[int, SampleOutput] = {}
    for idx in rows:
      for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        outs = self._generate_chunk([prompts[i] for i in part], [sampling[i] for i in part],
                                    [row_seeds[i] for i in part])
        by_row.update(zip(part, outs))
    return [by_row[i] for i in range(n)]

  def _validate(self, prompt, params: SamplingParams, i: int) -> None:
    if len(prompt) == 0:
      raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token")
    if params.max_new_tokens < 1:
      raise ValueError(f"sampling[{i}].max_new_tokens={params.max_new_tokens}: must be >= 1")
    if params.temperature < 0:
      raise ValueError(f"sampling[{i}].temperature={params.temperature}: must be >= 0")
    if not 0.0 < params.top_p <= 1.0:
      raise ValueError(f"sampling[{i}].top_p={params.top_p}: must be in (0, 1]")
    if len(set(params.stop_token_ids) | set(self.eos_token_ids)) > self.max_stop_ids:
      raise ValueError(f"sampling[{i}].stop_token_ids: more than {self.max_stop_ids} stop ids "
                       "with EOS; raise Sampler(max_stop_ids=...)")
    total = len(prompt) + params.max_new_tokens
    if total > self.config.max_position_embeddings:
      raise ValueError(f"prompts[{i}] ({len(prompt)} tokens) + max_new_tokens "
                       f"({params.max_new_tokens}) exceeds the model's max_position_embeddings "
                       f"({self.config.max_position_embeddings})")
    bad = [t for t in prompt if not 0 <= int(t) < self.config.vocab_size]
    if bad:
      raise ValueError(f"prompts[{i}] has token ids outside [0, {self.config.vocab_size}): "
                       f"{bad[:5]}")

  def _generate_chunk(self, prompts, sampling, seeds) -> list[SampleOutput]:
    n = len(prompts)
    batch = (self.batch_buckets[-1] if self.batch_invariant
             else _bucket(n, self.batch_buckets, "batch size", "batch_buckets"))
    prompt_len = _bucket(max(len(p) for p in prompts), self.prompt_buckets, "prompt length",
                         "prompt_buckets")
    max_new = _bucket(max(s.max_new_tokens for s in sampling), self.max_new_buckets,
                      "max_new_tokens", "max_new_buckets")
    tokens = np.full((batch, prompt_len), self.pad_token_id, np.int32)
    mask = np.zeros((batch, prompt_len), bool)
    stop_ids = np.full((batch, self.max_stop_ids), -1, np.int32)
    rows = dict(seeds=np.zeros(batch, np.uint32), temperature=np.ones(batch, np.float32),
                top_p=np.ones(batch, np.float32), top_k=np.zeros(batch, np.int32),
                min_new=np.zeros(batch, np.int32), max_new_rows=np.ones(batch, np.int32),
                active=np.zeros(batch, bool))
    for i, (prompt, params) in enumerate(zip(prompts, sampling)):
      tokens[i, prompt_len - len(prompt):] = prompt
      mask[i, prompt_len - len(prompt):] = True
      stops = sorted(set(self.eos_token_ids) | set(int(t) for t in params.stop_token_ids))
      stop_ids[i, :len(stops)] = stops
      rows["seeds"][i] = seeds[i] & 0xFFFFFFFF
      rows["temperature"][i] = params.temperature
      rows["top_p"][i] = params.top_p
      rows["top_k"][i] = params.top_k
      rows["min_new"][i] = params.min_new_tokens
      rows["max_new_rows"][i] = params.max_new_tokens
      rows["active"][i] = True
    traces_before = _TRACES[0]
    out = _generate_program(self._graphdef, self._state, tokens, mask, rows["seeds"],
                            rows["temperature"], rows["top_p"], rows["top_k"], rows["min_new"],
                            rows["max_new_rows"], stop_ids, rows["active"], max_new=max_new,
                            pad_token_id=self.pad_token_id, cache_dtype=self.cache_dtype)
    self.num_traces += _TRACES[0] - traces_before
    out_tokens, out_logp, num_generated, stopped = jax.device_get(out)
    return [SampleOutput(token_ids=out_tokens[i, :num_generated[i]].tolist(),
                         logprobs=out_logp[i, :num_generated[i]].tolist(),
                         finish_reason="stop" if stopped[i] else "length")
            for i in range(n)]
