"""Time the jitted per-agent update step (old+ref logprobs, advantages, PPO micro-batches, AdamW).

  python benchmarks/update_bench.py --preset tiny-qwen3 --rows 16 --seq 256      # CPU
  python benchmarks/update_bench.py --preset qwen3-1.7b --rows 16 --seq 4096 \
      --dtype bfloat16 --micro 1                                                  # one GPU

Random weights and tokens; every row is a 1/4-prompt, 3/4-response action. Prints compile time,
median step time, trained tokens/s and MFU: model FLOPs per token = 6 N (the trained pass) +
2 x 2 N (the old and reference log-prob passes) + causal attention, N = matmul parameters
(remat recomputation not counted), against the bf16 dense peak of the device kind
(benchmarks/model_bench.py's table; n/a on CPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_bench import PEAK_FLOPS, _lookup, matmul_params  # benchmarks/ is sys.path[0]

from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.rl.experience import TrainBatch
from mappa_jax.rl.update import UpdateConfig, init_train_state, make_update_step


def random_batch(rows: int, seq: int, vocab: int, seed: int = 0) -> TrainBatch:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
  start = seq // 4
  ids = np.where(np.arange(seq)[None] >= start, np.arange(rows)[:, None], -1).astype(np.int32)
  ids[:, -1] = -1
  return TrainBatch(
      tokens=tokens, targets=np.roll(tokens, -1, 1), positions=np.tile(np.arange(seq), (rows, 1)),
      attention_mask=np.ones((rows, seq), bool), segment_ids=np.ones((rows, seq), np.int32),
      action_ids=ids, rollout_logprobs=np.zeros((rows, seq), np.float32),
      rewards=rng.random(rows).astype(np.float32), truncated=np.zeros(rows, bool),
      invalid=np.zeros(rows, bool), valid=np.ones(rows, bool), strata=np.zeros(rows, np.int32),
      groups=np.arange(rows, dtype=np.int32), next_action=np.full(rows, -1, np.int32))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--preset", default="tiny-qwen3")
  p.add_argument("--rows", type=int, default=16)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--micro", type=int, default=1, help="rows per micro-batch")
  p.add_argument("--samples_per_step", type=int, default=16)
  p.add_argument("--dtype", default="float32", help="param and compute dtype")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--logprob_impl", default="xla")
  p.add_argument("--chunk", type=int, default=1024)
  p.add_argument("--iters", type=int, default=3)
  a = p.parse_args()
  mc = ModelConfig.preset(a.preset, param_dtype=a.dtype, dtype=a.dtype, remat=a.remat)
  model = Decoder(mc, rngs=nnx.Rngs(0))
  cfg = UpdateConfig(samples_per_optimizer_step=a.samples_per_step, micro_batch_size=a.micro,
                     logprob_impl=a.logprob_impl, logprob_chunk=a.chunk)
  graphdef, state = init_train_state(model, cfg)
  state = jax.tree.map(jnp.copy, state)
  ref = nnx.split(model, nnx.Param)[1]
  batch = jax.tree.map(jnp.asarray, random_batch(a.rows, a.seq, mc.vocab_size))
  step = make_update_step(graphdef, cfg)
  t0 = time.perf_counter()
  state, metrics = step(state, ref, batch, jax.random.key(0))
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for i in range(a.iters):
    t0 = time.perf_counter()
    state, metrics = step(state, ref, batch, jax.random.key(i + 1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  tokens = a.rows * a.seq
  print(f"jax {jax.__version__} {jax.devices()[0].device_kind}: preset={a.preset} "
        f"params={mc.num_params() / 1e6:.1f}M dtype={a.dtype} rows={a.rows} seq={a.seq} "
        f"micro={a.micro} opt_steps/call={a.rows // a.samples_per_step}")
  attn_fwd = 2 * mc.num_hidden_layers * mc.num_attention_heads * mc.head_dim * a.seq
  flops = tokens * (10 * matmul_params(mc) + 5 * attn_fwd)  # fwd+bwd = 3 x fwd, + 2 fwd
  peak = _lookup(PEAK_FLOPS, jax.devices()[0].device_kind)
  mfu = "n/a" if peak is None else f"{100 * flops / med / peak:.1f} %"
  print(f"{'first call s':>13} {'step s':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>8} "
        f"{'loss':>9} {'grad_norm':>10}")
  print(f"{first:>13.2f} {med:>8.3f} {tokens / med:>10.0f} {flops / med / 1e12:>8.2f} "
        f"{mfu:>8} {float(metrics['loss']):>9.4f} {float(metrics['grad_norm']):>10.4f}")


if __name__ == "__main__":
  main()
