"""A third workflow (tests/workflows/propose_check.py) trains a step through the real trainer,
factory and config, none of which knows it: its module, its experiment file and this test are
all it takes."""
import os

import pytest

from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax import workflows
from tests.tiny_run import TINY_RUN

EXPERIMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "propose_check_experiment.py")


def test_the_experiment_is_generated_from_the_declaration():
  config = mconfig.load_config(EXPERIMENT)
  exp = mconfig.experiment(config)
  assert exp.workflow == "propose_check" and exp.agent_names == ("proposer", "checker")
  assert set(config.rollout.sglang_urls) == {"proposer", "checker"}
  assert "propose_check" in workflows.names()
  with pytest.raises(mconfig.ConfigError, match="agents.proposer.sees"):
    mconfig.validate(mconfig.load_config(EXPERIMENT, ["agents.proposer.sees=('checker',)"]))


@pytest.mark.slow
def test_a_third_workflow_trains_one_step(tmp_path):
  config = mconfig.validate(mconfig.load_config(EXPERIMENT, TINY_RUN + (
      "--config.train.num_steps=1", "--config.eval.every_steps=1",
      "--config.eval.at_start=false", "--config.eval.n_samples_per_prompt=1",
      "--config.data.synthetic.n_eval=1", "--config.checkpoint.async_save=false")))
  metrics = train.Trainer(config, str(tmp_path / "run")).train()
  for agent in ("proposer", "checker"):
    assert f"train/{agent}/loss" in metrics and metrics[f"experience/{agent}/actions"] >= 1
    assert metrics[f"experience/{agent}/invalid"] == 0  # the math rubric scored every action
  assert "rollout/rule_correct" in metrics and "eval/synthetic/rule_accuracy" in metrics
