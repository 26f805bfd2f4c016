"""Attention implementations (mappa_jax.models.attention): error against einsum, time, memory.

  python benchmarks/attention_bench.py             # CPU: the vs_transformers.py shapes, fp32
  python benchmarks/attention_bench.py --batch=8 --seq=2048 --heads=16 --kv_heads=8 \
      --head_dim=128 --dtype=bfloat16 --decode_batch=64 --cache=2048   # GPU: Qwen3-1.7B

Training rows (causal, all keys valid, one layer's attention): max |out - einsum| and max
|grad - einsum grad| (over dq, dk, dv; relative to the largest reference gradient), forward ms,
forward+backward ms, and the compiled forward+backward's scratch memory (the number a
materialised [B, N, T, S] score tensor blows up). Decode rows: one query per row over a
`--cache`-slot KV cache in the cache's [B, K, S, D] layout, ms per step inside a jitted loop.
'auto' resolves per backend; this is the measurement behind that choice. An implementation that
fails (cuDNN off GPU, say) is reported, not fatal. Times are the best of --iters after a warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mappa_jax.models import attention as attn


def _best_ms(fn, *args, iters: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return 1e3 * best


def _temp_mib(fn, *args) -> str:
  try:
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    return f"{mem.temp_size_in_bytes / 2**20:,.1f}"
  except Exception:  # pylint: disable=broad-except
    return "-"


def _max_err(a, b, scale=None) -> float:
  err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
  if scale is not None:
    err /= max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-30)
  return err


def bench_training(a, dtype) -> list[tuple]:
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (a.batch, a.seq, a.heads, a.head_dim), dtype)
  k = jax.random.normal(keys[1], (a.batch, a.seq, a.kv_heads, a.head_dim), dtype)
  v = jax.random.normal(keys[2], (a.batch, a.seq, a.kv_heads, a.head_dim), dtype)
  w = jax.random.normal(keys[3], q.shape, jnp.float32)

  def make(impl):
    fwd = jax.jit(lambda q, k, v: attn.attention(q, k, v, impl=impl))
    loss = lambda q, k, v: jnp.sum(w * attn.attention(q, k, v, impl=impl).astype(jnp.float32))
    return fwd, jax.jit(jax.grad(loss, argnums=(0, 1, 2))), jax.grad(loss, argnums=(0, 1, 2))

  ref_fwd, ref_grad, _ = make("einsum")
  ref_out, ref_grads = ref_fwd(q, k, v), ref_grad(q, k, v)
  rows = []
  for impl in a.impls.split(","):
    try:
      fwd, grad, raw_grad = make(impl)
      out, grads = fwd(q, k, v), grad(q, k, v)
      rows.append((impl, attn.resolve_impl(impl, dtype=dtype, query_len=a.seq, cached=False),
                   f"{_max_err(out, ref_out):.2e}",
                   f"{max(_max_err(g, r, scale=True) for g, r in zip(grads, ref_grads)):.2e}",
                   f"{_best_ms(fwd, q, k, v, iters=a.iters):.2f}",
                   f"{_best_ms(grad, q, k, v, iters=a.iters):.2f}",
                   _temp_mib(raw_grad, q, k, v)))
    except Exception as e:  # pylint: disable=broad-except
      rows.append((impl, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:60]}",
                   "", "", "", ""))
  return rows


def bench_decode(a, dtype) -> list[tuple]:
  b, s = a.decode_batch, a.cache
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (b, 1, a.heads, a.head_dim), dtype)
  kc = jax.random.normal(keys[1], (b, a.kv_heads, s, a.head_dim), dtype)   # cache layout
  vc = jax.random.normal(keys[2], (b, a.kv_heads, s, a.head_dim), dtype)
  valid = jnp.ones((b, s), bool)
  steps = a.decode_steps
  first = s - steps  # the loop's queries sit at slots first .. s-1

  def make(impl):
    def step(q, start):
      return attn.attention(q, kc, vc, impl=impl, query_start=start, key_mask=valid,
                            kv_layout="bksd")

    @jax.jit
    def loop(q):
      body = lambda i, acc: acc + step(q + 1e-3 * acc, first + i)
      return jax.lax.fori_loop(0, steps, body, jnp.zeros_like(q))
    return jax.jit(step), loop

  ref_step, _ = make("einsum")
  ref = ref_step(q, jnp.int32(s - 1))
  rows = []
  for impl in a.decode_impls.split(","):
    try:
      step, loop = make(impl)
      rows.append((impl, attn.resolve_impl(impl, dtype=dtype, query_len=1, cached=True),
                   f"{_max_err(step(q, jnp.int32(s - 1)), ref):.2e}",
                   f"{_best_ms(loop, q, iters=a.iters) / steps:.4f}"))
    except Exception as e:  # pylint: disable=broad-except
      rows.append((impl, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:60]}", ""))
  return rows


def _table(title, head, rows):
  widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
  print(f"\n{title}")
  print("  ".join(f"{h:>{w}}" for h, w in zip(head, widths)))
  for r in rows:
    print("  ".join(f"{str(x):>{w}}" for x, w in zip(r, widths)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=2)
  p.add_argument("--head_dim", type=int, default=32)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--impls", default="einsum,xla,blocked,cudnn,auto")
  p.add_argument("--decode_impls", default="einsum,xla,grouped,auto")
  p.add_argument("--decode_batch", type=int, default=16)
  p.add_argument("--cache", type=int, default=96, help="KV cache slots for the decode rows")
  p.add_argument("--decode_steps", type=int, default=32)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--skip_decode", action="store_true")
  a = p.parse_args(argv)
  dtype = jnp.dtype(a.dtype)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.device_kind} ({dev.platform}); {a.dtype}")
  _table(f"attention fwd / fwd+bwd: B={a.batch} T=S={a.seq} N={a.heads} K={a.kv_heads} "
         f"D={a.head_dim}, causal",
         ("impl", "runs as", "max|dout|", "rel max|dgrad|", "fwd ms", "fwd+bwd ms",
          "temp MiB"), bench_training(a, dtype))
  if not a.skip_decode:
    _table(f"decode step: B={a.decode_batch}, one query over S={a.cache} cache slots "
           f"[B, K, S, D]", ("impl", "runs as", "max|dout|", "ms/step"), bench_decode(a, dtype))
  return 0


if __name__ == "__main__":
  sys.exit(main())
