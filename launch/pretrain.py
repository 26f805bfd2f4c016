r"""Pretrains the tiny base team: python launch/pretrain.py --config=experiments/pretrain_tiny.py \
  --out=mappa_jax/assets/tiny_team

Writes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer files) and
pretrain_info.json (the realised behaviour mixture, loss curve, wall time) into --out, then
measures the untrained team on the held-out problems of experiments/mathchat.py:local and
records it there too (`base_team`), unless --measure=false.
"""
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mappa_jax import config as mconfig
from mappa_jax import progress
from mappa_jax.sft import measure
from mappa_jax.sft import train as sft

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file[:preset].",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output checkpoint directory (replaced).")
_MEASURE = flags.DEFINE_bool("measure", True, "Measure the untrained team afterwards.")
_TEAM_CONFIG = flags.DEFINE_string(
    "team_config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments", "mathchat.py:local"),
    "The experiment whose held-out problems and eval settings measure the team.")
flags.mark_flags_as_required(["config", "out"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  progress.quiet_library_logs()
  info = sft.pretrain(_CONFIG.value, _OUT.value)
  keys = ("parameters", "actions", "steps", "final_loss", "demonstration_accuracy",
          "expected_accuracy", "data_seconds", "train_seconds", "wall_seconds")
  print(json.dumps({k: info[k] for k in keys}, indent=1))
  print(f"pretraining wall time: {info['wall_seconds']:.0f} s; checkpoint: {_OUT.value}")
  if _MEASURE.value:
    team = mconfig.validate(mconfig.load_config(
        _TEAM_CONFIG.value, [f"model.hf_dir={os.path.abspath(_OUT.value)}",
                             "logging.tensorboard=False"]))
    info["base_team"] = measure.measure_team(team)
    info["base_team_config"] = _TEAM_CONFIG.value
    sft.write_info(_OUT.value, info)
    print("untrained team:", json.dumps(info["base_team"], indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
