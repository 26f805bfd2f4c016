"""Issue 12 wired into a real trainer run (smoke preset, TINY_RUN): the bias guard's scalars
reach the TensorBoard event files and coach_bias.jsonl, its state rides in the checkpoint, the
fault metric is logged with faults on, per-stratum re-centring runs on the update path, and the
HTML report renders the Coach bias section. One 1-step run covers all of it."""
import json
import os

import pytest

from mappa_jax import checkpoint as ckpt
from mappa_jax import config as mconfig
from mappa_jax import train
from mappa_jax.eval import report as report_lib
from tests.test_train import _OVERRIDES, _scalars

pytestmark = pytest.mark.slow

# Step 1 of the smoke data holds two task types (mixed, mul_div); two samples per task give
# each agent two scores per type, so with min_count=2 every agent has a gap estimate.
_RUN = _OVERRIDES + (
    "--config.train.num_steps=1", "--config.eval.every_steps=0", "--config.eval.at_start=False",
    "--config.rollout.n_samples_per_prompt=2",
    "--config.coach_bias.min_count=2", "--config.coach_bias.n_boot=50",
    "--config.coach_bias.require_widening=False",
    "--config.faults.agent=code_executor", "--config.faults.kind=wrong_operand",
    "--config.faults.rate=1.0",
    "--config.rl.score_recentre=rolling",
)


def test_guard_faults_and_recentring_in_a_trainer_run(tmp_path):
  workdir = str(tmp_path / "run")
  config = mconfig.validate(mconfig.load_config("experiments/mathchat.py:smoke",
                                                overrides=_RUN))
  metrics = train.Trainer(config, workdir).train()

  # The fault metric: the share of trajectories the injector rewrote (the random tiny model
  # rarely writes a program with a literal to misread, so only its presence and range count).
  assert 0.0 <= metrics["rollout/faults/applied"] <= 1.0

  gap = "coach_bias/problem_solver/mixed_minus_mul_div"
  scalars = _scalars(os.path.join(workdir, "tensorboard", config.name))
  for tag in (gap, f"{gap}/ci_low", f"{gap}/ci_high", f"{gap}/warn", "coach_bias/warnings",
              "coach_bias/problem_solver/mean/mixed", "coach_bias/outcome/mean/mixed"):
    assert [s for s, _ in scalars.get(tag, ())] == [1], (tag, sorted(scalars))
  (_, value), = scalars[gap]
  assert scalars[f"{gap}/ci_low"][0][1] <= value <= scalars[f"{gap}/ci_high"][0][1]

  with open(os.path.join(workdir, "coach_bias.jsonl")) as f:
    entries = [json.loads(line) for line in f]
  assert [e["step"] for e in entries] == [1]
  assert entries[0]["scalars"][gap] == pytest.approx(value)

  with ckpt.CheckpointManager(os.path.join(workdir, "checkpoints"), async_save=False) as mgr:
    data_state = mgr.restore(1).data_state
  assert data_state["epoch"] == 0 and len(data_state["coach_bias"]["window"]) == 1

  html = report_lib.build_report(workdir)
  assert '<h2 id="coach-bias">Coach bias</h2>' in html
  assert "score mixed - mul_div" in html and "outcome mixed - mul_div x10" in html
