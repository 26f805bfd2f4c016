r"""Runs one experiment: python launch/run.py --config=experiments/mathchat.py[:preset] \
  --workdir=/tmp/run [--config.train.learning_rate=2e-6 ...]

Validates the config, starts jax.distributed in a multi-process environment, writes the
resolved config (config.json, config.py) and run info into the workdir, opens the run's
TensorBoard directory (<workdir>/tensorboard/<config.name>) with the hparams, and hands over
to `mappa_jax.train.run(config, workdir)`.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mappa_jax import config as mconfig
from mappa_jax import distributed
from mappa_jax import metrics
from mappa_jax import progress
from mappa_jax import train
from mappa_jax.tools.isolation import SandboxUnavailable

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a preset: path.py[:preset].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, checkpoints and logs.")
_SETUP_ONLY = flags.DEFINE_bool("setup_only", False,
                                "Validate and write the workdir, then stop before training.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config errors (unknown field, bad preset) stated plainly."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f"FATAL: {mconfig.explain_parse_error(e, argv)}", file=sys.stderr)
    print("Pass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(1)


def _write_run_files(config, workdir: str, info: dict) -> None:
  """Process 0: resolved config, run info, and the TensorBoard run with the hparams."""
  saved = mconfig.save(config, workdir,
                       header=f"Resolved config of {config.name!r}, written by launch/run.py.")
  run_info = {"argv": sys.argv, **info}
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump(run_info, f, indent=2)
  logging.info("Resolved config: %s and %s", saved.json_path, saved.python_path)
  if config.logging.tensorboard:
    with metrics.MetricWriter(metrics.run_dir(workdir, config.name)) as writer:
      writer.hparams(mconfig.flatten(config), trial_id=config.name)
      writer.text(0, "config", "```\n" + mconfig.to_json(config) + "\n```")
    logging.info("TensorBoard run: %s", writer.logdir)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  progress.quiet_library_logs()
  config = _CONFIG.value
  try:
    mconfig.validate(config)  # before anything starts, on every process
  except mconfig.ConfigError as e:
    print(f"FATAL: {e}", file=sys.stderr)
    return 1
  distributed.initialize()  # before anything queries devices (importing jax does not)
  info = distributed.process_info()
  logging.info("Process %d/%d on %s: %d local / %d global %s devices (%s), jax %s",
               info["process_index"], info["process_count"], info["host"],
               info["local_device_count"], info["device_count"], info["platform"],
               ", ".join(info["device_kinds"]), info["jax_version"])
  workdir = os.path.abspath(_WORKDIR.value)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_run_files(config, workdir, info)

  if _SETUP_ONLY.value:
    logging.info("--setup_only: config valid, workdir %s ready; not training.", workdir)
    return 0
  try:
    train.run(config, workdir)
  except SandboxUnavailable as e:  # fail closed, stated plainly (how to fix it is in e)
    print(f"FATAL: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
