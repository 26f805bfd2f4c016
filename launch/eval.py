r"""Evaluates a trained team on a task file: python launch/eval.py --workdir=/tmp/run \
  --tasks=problems.jsonl [--step=N | --base] [--n_samples=K] [--out=results.json]

Runs the team of the run in --workdir (its latest checkpoint, checkpoint --step, or the untrained
base team with --base) with the run's own config on {"prompt", "answer"} records (JSON or
JSONL), prints the accuracy with its 95% CI and writes a results JSON (summary.accuracy holds
mean, ci_low, ci_high, n). See mappa_jax/eval/team.py.
"""
import sys

from absl import app
from absl import flags

from mappa_jax import config as mconfig
from mappa_jax import progress
from mappa_jax.eval import team

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (written by launch/run.py).")
_TASKS = flags.DEFINE_string("tasks", None, "JSON or JSONL file of {prompt, answer} records.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_BASE = flags.DEFINE_bool("base", False, "Evaluate the untrained base team instead.")
_N_SAMPLES = flags.DEFINE_integer(
    "n_samples", None, "Samples per task (default: the run's eval.n_samples_per_prompt).")
_OUT = flags.DEFINE_string(
    "out", None, "Results JSON (default: <workdir>/eval_cli/<tasks stem>_<base|stepN>.json).")
flags.mark_flags_as_required(["workdir", "tasks"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  progress.quiet_library_logs()
  try:
    result = team.evaluate_team(_WORKDIR.value, _TASKS.value, step=_STEP.value, base=_BASE.value,
                                n_samples=_N_SAMPLES.value, out=_OUT.value)
  except (FileNotFoundError, ValueError, mconfig.ConfigError) as e:
    print(f"FATAL: {e}", file=sys.stderr)
    return 1
  print(result.line)
  print(f"results: {result.results_path}")
  return 0


if __name__ == "__main__":
  app.run(main)
