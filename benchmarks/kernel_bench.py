"""Benchmark the RL kernels: token logprobs (naive / xla / pallas) and KL+returns (xla / pallas).

Prints one table row per implementation: compile time, median step time, and memory from the
compiled executable's memory_analysis (temp = scratch the program needs, the number that blows
up with [N, V] logits) plus the device's peak_bytes_in_use where the backend reports it.

Defaults are the paper's shapes (B*T = 64*4096 tokens, H = 2048, V = 151,936, bf16). On a CPU,
shrink them, e.g.:
  python benchmarks/kernel_bench.py --tokens 2048 --hidden 256 --vocab 8192 --iters 3
On an H100, run it unchanged. An implementation that fails to compile or run (e.g. the Pallas
kernel on a backend it does not lower to, or naive out of memory) is reported, not fatal.
"""
from __future__ import annotations

import argparse
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from mappa_jax.rl.logprobs import token_logprobs
from mappa_jax.rl.objectives import kl_rewards_returns


def _mib(x) -> str:
  return "-" if x is None else f"{x / 2**20:,.1f}"


def _peak_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get("peak_bytes_in_use")


def _run(name, fn, args, iters, skip_run_above_bytes):
  row = dict(impl=name, compile_s=None, step_ms=None, temp=None, args=None, out=None,
             peak=None, note="")
  try:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
      row["temp"] = getattr(mem, "temp_size_in_bytes", None)
      row["args"] = getattr(mem, "argument_size_in_bytes", None)
      row["out"] = getattr(mem, "output_size_in_bytes", None)
    if args_global.compile_only:
      row["note"] = "compile only"
      return row
    if row["temp"] is not None and skip_run_above_bytes and row["temp"] > skip_run_above_bytes:
      row["note"] = "not run: temp memory above --max_temp_gib"
      return row
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    row["step_ms"] = 1e3 * statistics.median(times)
    row["peak"] = _peak_bytes()
  except Exception as e:  # pylint: disable=broad-except
    row["note"] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    if args_global.verbose:
      traceback.print_exc()
  return row


def _print(title, rows):
  print(f"\n{title}")
  head = f"{'impl':<10} {'compile s':>10} {'step ms':>10} {'temp MiB':>12} {'args MiB':>10} " \
         f"{'out MiB':>9} {'peak MiB':>10}  note"
  print(head)
  print("-" * len(head))
  for r in rows:
    cs = "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
    st = "-" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
    print(f"{r['impl']:<10} {cs:>10} {st:>10} {_mib(r['temp']):>12} {_mib(r['args']):>10} "
          f"{_mib(r['out']):>9} {_mib(r['peak']):>10}  {r['note']}")


def bench_logprobs(a):
  dtype = jnp.dtype(a.dtype)
  if a.compile_only:  # shapes only: memory of the paper's shapes on any machine
    hidden = jax.ShapeDtypeStruct((a.tokens, a.hidden), dtype)
    head = jax.ShapeDtypeStruct((a.hidden, a.vocab), dtype)
    targets = jax.ShapeDtypeStruct((a.tokens,), jnp.int32)
  else:
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(k1, (a.tokens, a.hidden), dtype)
    head = (jax.random.normal(k2, (a.hidden, a.vocab), jnp.float32)
            * a.hidden ** -0.5).astype(dtype)
    targets = jax.random.randint(k3, (a.tokens,), 0, a.vocab, jnp.int32)
  impl_of = {"naive": "reference", "xla": "xla", "pallas": "pallas"}
  rows = []
  for name in a.impls.split(","):
    impl = impl_of[name]

    def fwd(h, w, t, impl=impl):
      return token_logprobs(h, w, t, impl=impl, with_entropy=True, chunk_size=a.chunk,
                            block_v=a.block_v)

    def fwd_bwd(h, w, t, impl=impl):
      def loss(h_, w_):
        lp, _ = token_logprobs(h_, w_, t, impl=impl, chunk_size=a.chunk, block_v=a.block_v)
        return jnp.sum(lp)
      return jax.grad(loss, argnums=(0, 1))(h, w)

    rows.append(_run(f"{name}", fwd, (hidden, head, targets), a.iters, a.max_temp_gib * 2**30))
    if a.grad:
      rows.append(_run(f"{name}+bwd", fwd_bwd, (hidden, head, targets), a.iters,
                       a.max_temp_gib * 2**30))
  _print(f"token_logprobs: N={a.tokens} H={a.hidden} V={a.vocab} {a.dtype} chunk={a.chunk} "
         f"block_v={a.block_v} on {jax.devices()[0].device_kind}", rows)


def bench_rewards(a):
  b = a.batch
  t = a.tokens // b
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
  resp_start = rng.integers(0, t // 2, b)
  ids = np.where(np.arange(t)[None] >= resp_start[:, None], np.arange(b)[:, None], -1)
  ids = jnp.asarray(ids, jnp.int32)
  end = jnp.zeros((b, t), jnp.float32).at[:, -1].set(1.0)
  w = (ids >= 0).astype(jnp.float32)
  rows = []
  for name in ("reference", "xla", "pallas"):
    if name == "reference" and not a.rewards_reference:
      continue

    def fn(lp, rf, i, e, ww, impl=name):
      return kl_rewards_returns(lp, rf, i, e, ww, beta=0.01, gamma=1.0, impl=impl,
                                block_b=a.rewards_block_b, block_t=a.rewards_block_t)
    rows.append(_run(name, fn, (logp, ref, ids, end, w), a.iters, 0))
  _print(f"kl_rewards_returns: B={b} T={t} on {jax.devices()[0].device_kind}", rows)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--tokens", type=int, default=64 * 4096, help="B*T tokens")
  p.add_argument("--batch", type=int, default=64, help="B for the rewards kernel")
  p.add_argument("--hidden", type=int, default=2048)
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--chunk", type=int, default=1024, help="tokens per chunk / pallas block")
  p.add_argument("--block_v", type=int, default=2048, help="pallas vocab tile")
  p.add_argument("--impls", default="naive,xla,pallas")
  p.add_argument("--grad", action="store_true", default=True)
  p.add_argument("--no_grad", dest="grad", action="store_false")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--max_temp_gib", type=float, default=60.0,
                 help="do not run a program whose scratch memory exceeds this")
  p.add_argument("--skip_logprobs", action="store_true")
  p.add_argument("--skip_rewards", action="store_true")
  p.add_argument("--rewards_reference", action="store_true",
                 help="also time the serial-loop reference (slow)")
  p.add_argument("--rewards_block_b", type=int, default=8)
  p.add_argument("--rewards_block_t", type=int, default=128)
  p.add_argument("--compile_only", action="store_true",
                 help="lower+compile token_logprobs from shapes only; report memory, no timing")
  p.add_argument("--verbose", action="store_true")
  global args_global
  args_global = p.parse_args()
  print(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.device_count()}")
  if not args_global.skip_logprobs:
    bench_logprobs(args_global)
  if not args_global.skip_rewards and not args_global.compile_only:
    bench_rewards(args_global)


args_global = None

if __name__ == "__main__":
  main()
