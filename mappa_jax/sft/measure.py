"""What the untrained team does: its accuracy and behaviour rates on held-out problems.

The pretraining script records these next to the checkpoint (pretrain_info.json, `base_team`),
and a test checks that the shipped base still behaves as recorded.
"""
from __future__ import annotations

import tempfile
from typing import Any

import ml_collections

from mappa_jax import train

# Summary entries of a MathChat eval report that describe the team's behaviour.
BEHAVIOUR_KEYS = ("rule_accuracy", "executor_code_ok", "verifier_agrees_tool",
                  "coach_score/problem_solver", "coach_score/code_executor",
                  "coach_score/verifier")


def measure_team(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Evaluates the config's base team (no training) on its eval sets in a scratch workdir.

  Args:
    config: a validated MathChat config (e.g. experiments/mathchat.py:local with
      model.hf_dir pointing at the checkpoint to measure).
  Returns:
    {eval set: {key: {'mean', 'ci_low', 'ci_high', 'n'}}} for BEHAVIOUR_KEYS present.
  """
  with tempfile.TemporaryDirectory(prefix="mappa_measure_") as workdir:
    trainer = train.Trainer(config, workdir)
    try:
      scalars = trainer.evaluate(0)
    finally:
      trainer.close()
  out: dict[str, Any] = {}
  for name in trainer.eval_sets:
    prefix = f"eval/{name}/"
    out[name] = {
        key: {"mean": scalars[prefix + key], "ci_low": scalars.get(prefix + key + "_ci_low"),
              "ci_high": scalars.get(prefix + key + "_ci_high")}
        for key in BEHAVIOUR_KEYS if prefix + key in scalars}
  return out
