"""The shipped base team (mappa_jax/assets/tiny_team) behaves as its pretraining recorded, and
the trainer takes a step on it.

launch/pretrain.py measured the untrained team on the local preset's 256 held-out problems and
wrote the rates into pretrain_info.json (`base_team`). Here the first 48 of those problems are
run again: each rate is a mean of 48 draws (standard deviation <= 0.073), so a tolerance of 0.22
is 3 sigma of the sampling noise while still catching a different base (e.g. a random model:
accuracy 0, no code) or a broken workflow.
"""
import json
import math
import os

import pytest

from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax.sft import measure

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATHCHAT = os.path.join(ROOT, "experiments", "mathchat.py")
TEAM = os.path.join(ROOT, "mappa_jax", "assets", "tiny_team")
TOLERANCE = 0.22


def _info() -> dict:
  with open(os.path.join(TEAM, "pretrain_info.json"), encoding="utf-8") as f:
    return json.load(f)


def test_shipped_base_is_small_and_documented():
  info = _info()
  size = sum(os.path.getsize(os.path.join(TEAM, f)) for f in os.listdir(TEAM))
  assert size < 20 << 20
  recorded = info["base_team"]["synthetic"]
  # The documented team is clearly imperfect, with behaviours a coach can select between.
  assert 0.1 <= recorded["rule_accuracy"]["mean"] <= 0.6
  assert 0.1 <= recorded["executor_code_ok"]["mean"] <= 0.9
  assert info["demonstration_accuracy"] == pytest.approx(info["expected_accuracy"], abs=0.1)


def test_untrained_team_behaves_as_recorded():
  config = mconfig.validate(mconfig.load_config(MATHCHAT, [
      "data.synthetic.n_eval=48", "logging.tensorboard=False"]))
  assert config.model.hf_dir == TEAM
  measured = measure.measure_team(config)["synthetic"]
  recorded = _info()["base_team"]["synthetic"]
  for key in ("rule_accuracy", "executor_code_ok", "verifier_agrees_tool"):
    assert abs(measured[key]["mean"] - recorded[key]["mean"]) <= TOLERANCE, (
        key, measured[key], recorded[key])


def test_one_trainer_step_on_the_shipped_base(tmp_path):
  config = mconfig.validate(mconfig.load_config(MATHCHAT, [
      "train.num_steps=1", "rollout.rollout_batch_size=2", "eval.every_steps=0",
      "checkpoint.async_save=False", "checkpoint.every_steps=1"]))
  metrics = train.Trainer(config, str(tmp_path / "run")).train()
  for agent in mconfig.agent_names(config):
    assert math.isfinite(metrics[f"train/{agent}/loss"]), sorted(metrics)
    assert metrics[f"experience/{agent}/actions"] >= 2
  assert metrics["rollout/trajectories"] == 4
