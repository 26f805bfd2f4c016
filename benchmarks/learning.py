r"""The learning benchmark: MAPPA against outcome-only RL (and GRPO) on the tiny team, same budget.

  python benchmarks/learning.py --out=/tmp/learning [--presets=local,local_outcome]
      [--num_steps=16] [--eval_every=4] [--seeds=42] [-- extra --config.* overrides]

Runs `launch/run.py --config=experiments/mathchat.py:<preset>` for every preset and seed, one
after another (each run gets the machine to itself), with evaluations every `--eval_every`
steps on the presets' held-out problems, then prints for each run the before/after table and
for all runs the side-by-side table with the sample-efficiency figure (launch/compare.py).
Wall time per run is printed too. Runs whose workdir already holds a finished run are reused.
This is a benchmark, not a test: it asserts nothing and prints what it measured.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mappa_jax.eval import compare, summary  # pylint: disable=wrong-import-position


def _finished(workdir: str, num_steps: int) -> bool:
  return os.path.exists(os.path.join(workdir, "checkpoints", str(num_steps)))


def add_run_flags(ap: argparse.ArgumentParser, presets: str, num_steps: int,
                  eval_every: int) -> None:
  """The flags every run-and-compare benchmark shares (learning.py, bias.py)."""
  ap.add_argument("--out", required=True, help="parent directory of the runs")
  ap.add_argument("--presets", default=presets)
  ap.add_argument("--seeds", default="42", help="comma-separated config.seed values")
  ap.add_argument("--num_steps", type=int, default=num_steps)
  ap.add_argument("--eval_every", type=int, default=eval_every)
  ap.add_argument("overrides", nargs="*", help="extra --config.* overrides for every run")


def run_presets(args: argparse.Namespace) -> tuple[int, list[str]]:
  """Runs experiments/mathchat.py:<preset> for every preset and seed, one after another.

  Returns (the first non-zero exit status or 0, the run workdirs in order).
  """
  workdirs = []
  for preset in args.presets.split(","):
    for seed in args.seeds.split(","):
      name = f"mathchat-{preset}-seed{seed}"
      workdir = os.path.join(os.path.abspath(args.out), name)
      workdirs.append(workdir)
      if _finished(workdir, args.num_steps):
        print(f"{name}: reusing the finished run in {workdir}")
        continue
      cmd = [sys.executable, os.path.join(ROOT, "launch", "run.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'mathchat.py')}:{preset}",
             f"--workdir={workdir}", f"--config.name={name}", f"--config.seed={seed}",
             f"--config.train.num_steps={args.num_steps}",
             f"--config.eval.every_steps={args.eval_every}", *args.overrides]
      print("$", " ".join(cmd), flush=True)
      t0 = time.perf_counter()
      with open(os.path.join(os.path.abspath(args.out), f"{name}.log"), "w") as log:
        os.makedirs(workdir, exist_ok=True)
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
      wall = time.perf_counter() - t0
      print(f"{name}: exit {proc.returncode}, wall time {wall:.0f} s "
            f"(log: {log.name})", flush=True)
      if proc.returncode:
        return proc.returncode, workdirs
  return 0, workdirs


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_run_flags(ap, "local,local_outcome", num_steps=16, eval_every=4)
  rc, workdirs = run_presets(ap.parse_args())
  if rc:
    return rc
  for workdir in workdirs:
    print(f"\n== {os.path.basename(workdir)}")
    print(summary.run_summary(workdir))
  print()
  print(compare.format_compare(compare.compare_runs(workdirs)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
