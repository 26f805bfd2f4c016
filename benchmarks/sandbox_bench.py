"""Sandbox throughput and latency: executions/s and p50/p99 per concurrency level.

    python benchmarks/sandbox_bench.py [--runs 40] [--levels 1,2,4,8] [--backend bwrap]
        [--program trivial|numpy]

Each run executes one short program in its own workspace; latency is ExecResult.duration_s
(sandbox spawn to exit, output captured; time queued on the concurrency cap excluded);
throughput counts all runs of a level over the level's wall time (everything included).
"""
import argparse
import asyncio
import shutil
import statistics
import tempfile
import time

from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.tools.workspace import Workspace

PROGRAMS = {
    "trivial": "print(sum(range(1000)))",
    "numpy": "import numpy as np\nprint(np.arange(10).sum())",
}


async def level(sb: Sandbox, code: str, runs: int, root: str) -> tuple[float, list[float], int]:
  lat: list[float] = []
  failures = 0

  async def one(i: int) -> None:
    nonlocal failures
    ws = Workspace(f"{root}/w{i}")
    r = await sb.run(code, ws)
    lat.append(r.duration_s)  # spawn to exit, queueing on the concurrency cap excluded
    failures += int(r.exit_code != 0)

  t0 = time.perf_counter()
  await asyncio.gather(*[one(i) for i in range(runs)])
  return time.perf_counter() - t0, lat, failures


def pct(xs: list[float], q: float) -> float:
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--runs", type=int, default=40)
  ap.add_argument("--levels", default="1,2,4,8")
  ap.add_argument("--backend", default="bwrap")
  ap.add_argument("--program", default="trivial", choices=sorted(PROGRAMS))
  args = ap.parse_args()
  print(f"backend={args.backend} program={args.program} runs/level={args.runs}")
  print(f"{'concurrency':>11} {'exec/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failures':>8}")
  for c in [int(x) for x in args.levels.split(",")]:
    # --backend process is the explicit, benchmark-only opt-in to running unisolated.
    sb = Sandbox(args.backend, SandboxLimits(timeout_s=60), max_concurrency=c,
                 allow_unisolated=args.backend == "process")
    root = tempfile.mkdtemp(prefix="sbx_bench_")
    try:
      wall, lat, fails = asyncio.run(level(sb, PROGRAMS[args.program], args.runs, root))
    finally:
      sb.close()
      shutil.rmtree(root, ignore_errors=True)
    print(f"{c:>11} {args.runs / wall:>8.1f} {1e3 * statistics.median(lat):>8.1f} "
          f"{1e3 * pct(lat, 0.99):>8.1f} {fails:>8}")


if __name__ == "__main__":
  main()
