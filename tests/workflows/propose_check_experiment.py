"""The experiment of the test workflow tests/workflows/propose_check.py (CPU scale, random tiny
model, rule coach, synthetic arithmetic). Importing the workflow module registers it."""
import ml_collections

from experiments import common
from tests.workflows import propose_check  # pylint: disable=unused-import  (registers it)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg, ("local",))
  config = common.base("propose_check", preset)
  common.local(config)
  config.rl.reward_scale = 0.1  # scores / 10, as MathChat
  config.lock()
  return config
