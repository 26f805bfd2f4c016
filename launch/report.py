"""Writes the HTML report of a run's evaluations (see mappa_jax/eval/report.py).

  python launch/report.py WORKDIR [--out=FILE.html] [--max_trajectories=100]

One self-contained file (inline CSS and SVG, no JavaScript, no external URL): accuracy and
per-agent coach score curves over eval steps, and every trajectory of the latest (and first)
eval step with each agent's input, output, tool runs, coach score and rationale. Prints the
path written (default WORKDIR/report.html). The trainer writes the same file at every eval.
"""
from __future__ import annotations

import argparse
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mappa_jax.eval import report  # pylint: disable=wrong-import-position


def main(argv: list[str] | None = None) -> int:
  """Parses arguments, writes the report, prints its path; returns the exit code."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="run workdir (with config.json and eval_results/)")
  parser.add_argument("--out", default=None, help="output file (default WORKDIR/report.html)")
  parser.add_argument("--max_trajectories", type=int, default=100,
                      help="trajectories shown per eval set and step (the rest are counted)")
  parser.add_argument("--max_text_chars", type=int, default=20000,
                      help="longer prompts/outputs keep their head and tail")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.workdir):
    parser.error(f"no such workdir: {args.workdir}")
  print(report.write_report(args.workdir, args.out, max_trajectories=args.max_trajectories,
                            max_text_chars=args.max_text_chars))
  return 0


if __name__ == "__main__":
  sys.exit(main())
