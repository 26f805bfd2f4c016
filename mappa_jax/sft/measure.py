"""What the untrained team does: its accuracy and behaviour rates on held-out problems.

The pretraining script records these next to the checkpoint (pretrain_info.json, `base_team`),
and a test checks that the shipped base still behaves as recorded.
"""
from __future__ import annotations

import glob
import os
import tempfile
from typing import Any

import ml_collections

from mappa_jax import train
from mappa_jax.workflows import records

# Summary entries of a MathChat eval report that describe the team's behaviour.
BEHAVIOUR_KEYS = ("rule_accuracy", "executor_code_ok", "verifier_agrees_tool",
                  "coach_score/problem_solver", "coach_score/code_executor",
                  "coach_score/verifier")
# The same for a DSBench eval report (plus the X_test.pkl omission rate read from the
# trajectories, see dsbench_file_rates).
DSBENCH_KEYS = ("success_rate", "fair_gain", "raw_gain")


def measure_team(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Evaluates the config's base team (no training) on its eval sets in a scratch workdir.

  Args:
    config: a validated MathChat config (e.g. experiments/mathchat.py:local with
      model.hf_dir pointing at the checkpoint to measure).
  Returns:
    {eval set: {key: {'mean', 'ci_low', 'ci_high', 'n'}}} for BEHAVIOUR_KEYS present.
  """
  dsbench = config.get("workflow") == "dsbench"
  keys = BEHAVIOUR_KEYS + (DSBENCH_KEYS if dsbench else ())
  with tempfile.TemporaryDirectory(prefix="mappa_measure_") as workdir:
    trainer = train.Trainer(config, workdir)
    try:
      scalars = trainer.evaluate(0)
    finally:
      trainer.close()
    rates = dsbench_file_rates(workdir) if dsbench else {}
  out: dict[str, Any] = {}
  for name in trainer.eval_sets:
    prefix = f"eval/{name}/"
    out[name] = {
        key: {"mean": scalars[prefix + key], "ci_low": scalars.get(prefix + key + "_ci_low"),
              "ci_high": scalars.get(prefix + key + "_ci_high")}
        for key in keys if prefix + key in scalars}
    if rates:
      out[name].update(rates.get((0, name), {}))
  return out


def _data_engineer_ran(traj: dict[str, Any]) -> bool:
  """Whether one of the Data Engineer's code blocks ran to the end (exit 0, no timeout)."""
  return any(call.get("exit_code") == 0 and not call.get("timed_out")
             for action in traj.get("actions", ()) if action.get("agent") == "data_engineer"
             for call in action.get("tool_calls", ()))


def dsbench_file_rates(workdir: str) -> dict[tuple[int, str], dict[str, float]]:
  """File hand-off rates of the trajectories a run's evaluations wrote
  (<workdir>/eval_results/step*_<set>.trajectories.jsonl).

  Returns:
    {(eval step, eval set): rates}, the rates being shares of that evaluation's trajectories:
      'x_test_omission_rate': the workspace ended without X_test.pkl, for any reason;
      'x_test_forgotten_rate': ... although a Data Engineer program ran without error (it
        forgot to save the file, the fault the demonstrations teach; the rest of the omissions
        are programs that crashed before saving anything);
      'submission_validity': a valid submission.csv;
      'n': the number of trajectories.
  """
  out = {}
  pattern = os.path.join(workdir, "eval_results", "step*_*.trajectories.jsonl")
  for path in sorted(glob.glob(pattern)):
    stem = os.path.basename(path)[:-len(".trajectories.jsonl")]
    step, name = stem.split("_", 1)
    trajs = records.read_trajectories(path)
    if not trajs:
      continue
    missing = ["X_test.pkl" not in {f[0] for f in t.get("metadata", {}).get("files", ())}
               for t in trajs]
    out[(int(step[len("step"):]), name)] = {
        "x_test_omission_rate": float(sum(missing) / len(trajs)),
        "x_test_forgotten_rate": float(sum(m and _data_engineer_ran(t)
                                           for m, t in zip(missing, trajs)) / len(trajs)),
        "submission_validity": float(sum(bool(t.get("outcome", {}).get("valid"))
                                         and not t.get("error") for t in trajs) / len(trajs)),
        "n": len(trajs)}
  return out
