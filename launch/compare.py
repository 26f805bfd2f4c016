r"""Compares runs side by side: python launch/compare.py /runs/a /runs/b [--json=out.json]

Prints, per eval set, the metric (default rule_accuracy) with its 95% CI at every evaluation
step of each run, with the rollouts seen so far, and the sample efficiency of each pair of
runs (rollouts to reach the other run's final value). See mappa_jax/eval/compare.py.
"""
import json
import sys

from absl import app
from absl import flags

from mappa_jax.eval import compare

_JSON = flags.DEFINE_string("json", None, "Also write the comparison as JSON to this path.")
_METRIC = flags.DEFINE_string("metric", "rule_accuracy", "Summary metric of the eval results.")


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    raise app.UsageError("pass one or more run directories: launch/compare.py DIR [DIR ...]")
  try:
    result = compare.compare_runs(argv[1:], metric=_METRIC.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"FATAL: {e}", file=sys.stderr)
    return 1
  print(compare.format_compare(result))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(compare.json_safe(result), f, indent=1, allow_nan=False)
  return 0


if __name__ == "__main__":
  app.run(main)
