"""End-to-end: the Trainer on the embedded tiny setup (real sampler, sandbox, rule coach, update,
TensorBoard and Orbax), then a resume from its checkpoint."""
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from mappa_jax import config as mconfig
from mappa_jax import train
from tests.tiny_run import TINY_RUN

pytestmark = pytest.mark.slow

_OVERRIDES = TINY_RUN + (
    "--config.data.synthetic.n_eval=1",
    "--config.eval.n_samples_per_prompt=1",
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.async_save=False",
)


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags().get("tensors", []):
    out[tag] = [(e.step, float(e.tensor_proto.float_val[0]) if e.tensor_proto.float_val
                 else float("nan")) for e in acc.Tensors(tag)]
  for tag in acc.Tags().get("scalars", []):
    out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
  return out


def test_train_then_resume(tmp_path):
  workdir = str(tmp_path / "run")
  config = mconfig.validate(mconfig.load_config(
      "experiments/mathchat.py:smoke", overrides=_OVERRIDES + ("--config.train.num_steps=1",)))
  trainer = train.Trainer(config, workdir)
  metrics = trainer.train()
  agents = tuple(config.agents)
  for agent in agents:
    assert f"train/{agent}/loss" in metrics, sorted(metrics)
    assert metrics[f"experience/{agent}/actions"] >= 1
  assert metrics["rollout/trajectories"] == 2
  assert any(k.startswith("coach/") for k in metrics)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "1"

  # Resume: a second trainer with a longer horizon continues at step 2 from the checkpoint.
  config2 = mconfig.validate(mconfig.load_config(
      "experiments/mathchat.py:smoke", overrides=_OVERRIDES + ("--config.train.num_steps=2",)))
  trainer2 = train.Trainer(config2, workdir)
  trainer2._restore()  # pylint: disable=protected-access  (train() does this first)
  assert trainer2.step == 1
  for a in agents:
    assert int(trainer2.team.states[a].step) == int(trainer.team.states[a].step)
    same = jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))),
                        trainer2.team.states[a].params, trainer.team.states[a].params)
    assert all(jax.tree.leaves(same))
  restored_steps = {a: int(trainer2.team.states[a].step) for a in agents}
  metrics2 = trainer2.train()
  assert trainer2.step == 2
  assert all(int(trainer2.team.states[a].step) > restored_steps[a] for a in agents)
  assert any(k.startswith("eval/") for k in metrics2), sorted(metrics2)

  logdir = os.path.join(workdir, "tensorboard", config.name)
  scalars = _scalars(logdir)
  steps = {s for s, _ in scalars["train/problem_solver/loss"]}
  assert steps == {1, 2}
  assert 0 in {s for tag, v in scalars.items() if tag.startswith("eval/") for s, _ in v}


def test_dsbench_step_on_the_offline_suite(tmp_path):
  """One DSBench step: suite built into the workdir, real workspaces, every agent updated."""
  workdir = str(tmp_path / "ds")
  config = mconfig.validate(mconfig.load_config("experiments/dsbench.py:local", overrides=(
      "--config.train.num_steps=1", "--config.rollout.rollout_batch_size=2",
      "--config.rollout.n_samples_per_prompt=1", "--config.rollout.max_new_tokens=12",
      "--config.rollout.min_new_tokens=2", "--config.train.samples_per_optimizer_step=2",
      "--config.train.micro_batch_size=1", "--config.eval.every_steps=0",
      "--config.checkpoint.async_save=False")))
  trainer = train.Trainer(config, workdir)
  assert all(t.metadata.get("train_file") for t in trainer.train_tasks)
  assert not {t.task_id for t in trainer.train_tasks} & {
      t.task_id for tasks in trainer.eval_sets.values() for t in tasks}
  metrics = trainer.train()
  for agent in ("data_engineer", "modeler", "analyst"):
    assert f"train/{agent}/loss" in metrics, sorted(metrics)
  assert os.path.exists(os.path.join(workdir, "dsbench_suite", "manifest.json"))
