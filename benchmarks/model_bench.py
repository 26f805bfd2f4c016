"""Model throughput: training step (forward+backward) tokens/s and MFU, decode tokens/s.

  python benchmarks/model_bench.py --preset=tiny-qwen3 --batch=8 --seq_len=256
  python benchmarks/model_bench.py --preset=qwen3-1.7b --batch=8 --seq_len=2048 --remat  # GPU
  python benchmarks/model_bench.py --preset=qwen3-1.7b --batch=8 --seq_len=2048 --remat --aot

Random weights (no checkpoint needed). Rows:
  train fwd+bwd   value_and_grad of the next-token loss (chunked token logprobs from
                  mappa_jax.rl.logprobs when present, else full logits); MFU against the bf16 dense
                  peak of the device kind (n/a when unknown, e.g. CPU).
  decode (model)  greedy one-token steps with the KV cache in one jitted fori_loop;
                  roofline = HBM bandwidth / bytes read per step (params + KV cache).
  decode (Sampler) mappa_jax.rollout.sampler.Sampler.generate end to end (prefill included),
                  skipped when that module is absent.
FLOPs per trained token = 6 * matmul params + 6 * L * N * D * T (causal attention, fwd+bwd).
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mappa_jax import sharding as shd
from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder

# Dense bf16 peak FLOP/s and HBM bytes/s per device, keyed by a substring of device_kind.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}
HBM_BW = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L4": 0.3e12,
          "TPU v4": 1.2e12, "TPU v5 lite": 0.82e12, "TPU v5p": 2.76e12, "TPU v6": 1.64e12}


def _lookup(table, kind):
  for key, value in table.items():
    if key.lower() in kind.lower():
      return value
  return None


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in a matmul per token (LM head yes, embedding lookup no)."""
  n = cfg.num_params() - cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)  # norms
  if not cfg.tie_word_embeddings:
    n -= cfg.vocab_size * cfg.hidden_size  # embedding lookup is not a matmul
  return n


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
  return 6 * matmul_params(cfg) + attn


def _time(fn, steps: int) -> float:
  out = fn()
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def _loss_fn(use_kernel: bool):
  token_logprobs = None
  if use_kernel:
    try:
      from mappa_jax.rl.logprobs import token_logprobs  # pylint: disable=import-outside-toplevel
    except ImportError:
      token_logprobs = None

  def loss(model, tokens, positions):
    hidden, _ = model(tokens[:, :-1], positions[:, :-1])
    targets = tokens[:, 1:]
    if token_logprobs is not None:
      h = hidden.reshape(-1, hidden.shape[-1])
      logp, _ = token_logprobs(h, model.lm_head_kernel(), targets.reshape(-1))
    else:
      logits = model.logits(hidden)
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
    return -jnp.mean(logp)
  return loss, token_logprobs is not None


def bench_train(model, cfg, mesh, batch, seq_len, steps, use_kernel):
  loss, used_kernel = _loss_fn(use_kernel)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq_len + 1)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(seq_len + 1, dtype=jnp.int32), tokens.shape)
  tokens, positions = (jax.device_put(x, shd.data_sharding(mesh)) for x in (tokens, positions))
  # Functional (split) state + jax.jit: no per-call NNX graph traversal in the timed loop.
  graphdef, state = nnx.split(model)
  state_shardings = shd.state_shardings(state, mesh)
  grad_fn = jax.jit(jax.value_and_grad(
      lambda state, tokens, positions: loss(nnx.merge(graphdef, state), tokens, positions)),
                    out_shardings=(NamedSharding(mesh, PartitionSpec()), state_shardings))
  with shd.activation_sharding(mesh):
    start = time.perf_counter()
    jax.block_until_ready(grad_fn(state, tokens, positions))
    compile_s = time.perf_counter() - start
    step_s = _time(lambda: grad_fn(state, tokens, positions), steps)
  return step_s, compile_s, used_kernel


def aot_train(cfg, mesh, batch, seq_len, use_kernel):
  """Lowers and compiles the training step from shapes only (no weights, nothing runs):
  catches sharding errors and reports the compiled memory footprint before using a GPU."""
  from mappa_jax.models.hf_io import abstract_model  # pylint: disable=import-outside-toplevel
  loss, used_kernel = _loss_fn(use_kernel)
  graphdef, state = nnx.split(abstract_model(cfg))
  state_shardings = shd.state_shardings(state, mesh)
  data = shd.data_sharding(mesh)
  tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32, sharding=data)
  grad_fn = jax.jit(jax.value_and_grad(
      lambda state, tokens, positions: loss(nnx.merge(graphdef, state), tokens, positions)),
                    in_shardings=(state_shardings, data, data),
                    out_shardings=(NamedSharding(mesh, PartitionSpec()), state_shardings))
  start = time.perf_counter()
  with shd.activation_sharding(mesh):
    compiled = grad_fn.lower(state, tokens, tokens).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  rows = [("aot train batch x seq", f"{batch} x {seq_len} "
                                    f"({'chunked token_logprobs' if used_kernel else 'full logits'})"),
          ("aot compile (s)", f"{compile_s:.1f}")]
  if mem is not None:
    gib = 1024 ** 3
    rows += [("aot args / outputs (GiB/dev)", f"{mem.argument_size_in_bytes / gib:.2f} / "
                                              f"{mem.output_size_in_bytes / gib:.2f}"),
             ("aot temp (GiB/dev)", f"{mem.temp_size_in_bytes / gib:.2f}")]
  return rows


def bench_decode(model, cfg, batch, prompt_len, new_tokens):
  """Greedy decode of `new_tokens` tokens after a `prompt_len` context, all inside one jitted
  fori_loop (no per-token dispatch); returns seconds per one-token step."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode(state, tokens):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(batch, prompt_len + new_tokens)

    def body(i, carry):
      tokens, cache = carry
      index = jnp.int32(prompt_len) + i
      positions = jnp.full(tokens.shape, index, jnp.int32)
      hidden, cache = model(tokens, positions, cache=cache, cache_index=index)
      next_tokens = jnp.argmax(model.logits(hidden[:, -1]), -1)[:, None].astype(jnp.int32)
      return next_tokens, cache

    tokens, _ = jax.lax.fori_loop(0, new_tokens, body, (tokens, cache))
    return tokens

  tokens = jnp.ones((batch, 1), jnp.int32)
  return _time(lambda: decode(state, tokens), 2) / new_tokens


def bench_sampler(model, cfg, batch, prompt_len, new_tokens):
  try:
    from mappa_jax.rollout.sampler import Sampler  # pylint: disable=import-outside-toplevel
    from mappa_jax.rollout.types import SamplingParams  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  sampler = Sampler(model, eos_token_ids=(cfg.vocab_size - 1,), prompt_buckets=(prompt_len,),
                    max_new_buckets=(new_tokens,), batch_buckets=(batch,))
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, cfg.vocab_size - 1, prompt_len).tolist() for _ in range(batch)]
  # min_new_tokens == max_new_tokens: every row generates the full budget.
  params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0)
  sampler.generate(prompts, params, seeds=list(range(batch)))  # compile
  start = time.perf_counter()
  outs = sampler.generate(prompts, params, seeds=list(range(batch)))
  elapsed = time.perf_counter() - start
  return sum(len(o.token_ids) for o in outs) / elapsed


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny-qwen3")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--param_dtype", default=None, help="float32|bfloat16 (default: preset's)")
  p.add_argument("--dtype", default=None, help="compute dtype (default: param dtype)")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--no_kernel", action="store_true", help="full logits instead of chunked")
  p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1")
  p.add_argument("--num_devices", type=int, default=0, help="use the first N devices (0 = all)")
  p.add_argument("--decode_batch", type=int, default=None, help="default: --batch")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--decode_tokens", type=int, default=64)
  p.add_argument("--aot", action="store_true",
                 help="only lower+compile the train step from shapes (no weights) and print "
                      "its memory footprint")
  p.add_argument("--skip", default="", help="comma list of rows to skip: train,decode,sampler")
  args = p.parse_args(argv)

  overrides = {"remat": args.remat}
  if args.param_dtype:
    overrides["param_dtype"] = args.param_dtype
    overrides["dtype"] = args.dtype or args.param_dtype
  elif args.dtype:
    overrides["dtype"] = args.dtype
  cfg = ModelConfig.preset(args.preset, **overrides)
  cfg = cfg.replace(max_position_embeddings=max(cfg.max_position_embeddings,
                                                args.seq_len + 1,
                                                args.prompt_len + args.decode_tokens))
  devices = jax.devices()[:args.num_devices] if args.num_devices else None
  mesh = shd.make_mesh({k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))},
                       devices)
  device = jax.devices()[0]
  kind = device.device_kind
  n_dev = mesh.size
  skip = set(filter(None, args.skip.split(",")))

  if args.aot:
    rows = [("device", f"{mesh.size} x {device.device_kind} ({device.platform}), AOT only"),
            ("preset", f"{args.preset}: {cfg.num_params() / 1e6:.1f} M params, "
                       f"{cfg.param_dtype} params / {cfg.dtype} compute, remat={cfg.remat}"),
            ("mesh", str(dict(mesh.shape)))]
    rows += aot_train(cfg, mesh, args.batch, args.seq_len, not args.no_kernel)
    _print_table(rows)
    return 0

  start = time.perf_counter()
  model = nnx.jit(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))()
  shd.shard_model(model, mesh)
  init_s = time.perf_counter() - start

  rows = [("device", f"{n_dev} x {kind} ({device.platform})"),
          ("preset", f"{args.preset}: {cfg.num_params() / 1e6:.1f} M params, "
                     f"{cfg.param_dtype} params / {cfg.dtype} compute, remat={cfg.remat}"),
          ("mesh", str(dict(mesh.shape))), ("init (s)", f"{init_s:.1f}")]
  peak = _lookup(PEAK_FLOPS, kind)
  bandwidth = _lookup(HBM_BW, kind)

  if "train" not in skip:
    step_s, compile_s, used_kernel = bench_train(model, cfg, mesh, args.batch, args.seq_len,
                                                 args.steps, not args.no_kernel)
    tokens = args.batch * args.seq_len
    flops = train_flops_per_token(cfg, args.seq_len) * tokens
    mfu = "n/a (unknown peak)" if peak is None else f"{100 * flops / step_s / (peak * n_dev):.1f} %"
    rows += [("train batch x seq", f"{args.batch} x {args.seq_len} "
                                   f"({'chunked token_logprobs' if used_kernel else 'full logits'})"),
             ("train compile (s)", f"{compile_s:.1f}"),
             ("train step (s)", f"{step_s:.3f}"),
             ("train tokens/s", f"{tokens / step_s:,.0f}"),
             ("train TFLOP/s (per device)", f"{flops / step_s / n_dev / 1e12:.3f}"),
             ("train MFU", mfu)]

  decode_batch = args.decode_batch or args.batch
  if "decode" not in skip:
    step_s = bench_decode(model, cfg, decode_batch, args.prompt_len, args.decode_tokens)
    kv_bytes = (2 * cfg.num_hidden_layers * decode_batch * (args.prompt_len + args.decode_tokens)
                * cfg.num_key_value_heads * cfg.head_dim * jnp.dtype(cfg.jnp_dtype).itemsize)
    param_bytes = cfg.num_params() * jnp.dtype(cfg.jnp_param_dtype).itemsize
    roofline = ("n/a (unknown bandwidth)" if bandwidth is None else
                f"{decode_batch * bandwidth * n_dev / (param_bytes + kv_bytes):,.0f} tokens/s")
    rows += [("decode batch / context", f"{decode_batch} / {args.prompt_len + args.decode_tokens}"),
             ("decode step (ms)", f"{1e3 * step_s:.2f}"),
             ("decode tokens/s (model)", f"{decode_batch / step_s:,.0f}"),
             ("decode roofline", roofline)]
  if "sampler" not in skip:
    tps = bench_sampler(model, cfg, decode_batch, args.prompt_len, args.decode_tokens)
    rows.append(("decode tokens/s (Sampler)", "skipped (no mappa_jax.rollout.sampler)"
                 if tps is None else f"{tps:,.0f} (prefill included)"))

  _print_table(rows)
  return 0


def _print_table(rows):
  width = max(len(k) for k, _ in rows)
  print("-" * (width + 50))
  for k, v in rows:
    print(f"{k:<{width}}  {v}")
  print("-" * (width + 50))


if __name__ == "__main__":
  sys.exit(main())
