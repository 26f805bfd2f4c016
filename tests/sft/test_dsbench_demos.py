"""The DSBench demonstration policy: template pipelines that run in the real workflow (sandbox),
the documented omission rate of X_test.pkl, and the `dsbench_smoke` pretraining preset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mappa_jax.data import dsbench as ds
from mappa_jax.data import dsbench_suite
from mappa_jax.models.tiny import TINY_TOKENIZER_DIR
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.sft import dsbench_demos as dd
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.workflows import prompts
from mappa_jax.workflows.dsbench import DSBenchWorkflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ("iris-species", "food-expenditure")  # a classification and a regression task


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("suite"))
  info = dsbench_suite.build(root, list(TASKS))
  return ds.load_dsbench_tasks(root, info["tasks_file"])


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


def _de_prompt(task) -> str:
  """The Data Engineer's first prompt as the workflow formats it (before the chat template)."""
  spec = DSBenchWorkflow.AGENTS["data_engineer"]
  return prompts.DS_DATA_ENGINEER.format(
      role_title="Data Engineer", max_turns=spec.max_turns,
      task=task.metadata.get("cleaned_prompt") or task.prompt, files="- test.csv\n- train.csv",
      de_summary="(none)", modeler_summary="(none)", warnings="")


def test_templates_vary_only_in_columns_model_and_prediction():
  keep = dd.data_engineer_program("id", ["y"], save_x_test=True)
  forget = dd.data_engineer_program("id", ["y"], save_x_test=False)
  assert "X_test.pkl" in keep and "X_test.pkl" not in forget
  assert set(forget.splitlines()) < set(keep.splitlines())
  assert dd.data_engineer_program("row", ["a", "b"], save_x_test=True) == (
      keep.replace("'id'", "'row'").replace("['y']", "['a', 'b']"))
  # The class is named once (every import is fixed): the choice cannot disagree with itself.
  forest, tree = dd.modeler_program(True, True), dd.modeler_program(False, False)
  assert "m = RandomForestClassifier(random_state=0)" in forest
  assert forest.replace("RandomForestClassifier(", "DecisionTreeRegressor(") == tree
  assert "predict_proba" in dd.analyst_program("id", ["y"], probability=True)
  # 'data': the columns come from the files, so the programs are one text for every task.
  assert "te.columns[0]" in dd.data_engineer_program(None, None, save_x_test=True)
  assert "'" + "id" + "'" not in dd.analyst_program(None, None, probability=False)
  with pytest.raises(ValueError, match="columns_from"):
    dd.DSDemoPolicy([], columns_from="guess")
  with pytest.raises(ValueError, match="de_forgets_x_test"):
    dd.DSDemoMixture(de_forgets_x_test=1.5)


def test_the_omission_rate_is_realised(tasks):
  # 400 seeded draws on real prompts: binomial sd 0.023, so 0.08 is > 3 sigma.
  for rate in (0.3, 0.0, 1.0):
    mix = dd.DSDemoMixture(de_forgets_x_test=rate)
    forgot = []
    for seed in range(200):
      for task in tasks:
        out = dd.DSDemoPolicy(tasks, mix, seed=seed).data_engineer(_de_prompt(task))
        forgot.append("X_test.pkl" not in out)
    assert abs(np.mean(forgot) - rate) < 0.08, rate


def test_pipelines_run_in_the_real_workflow_and_omissions_break_the_submission(tasks,
                                                                                tokenizer):
  sandbox = Sandbox("auto", SandboxLimits(timeout_s=60.0), max_concurrency=4)
  try:
    # Seeds 0 and 1: the iris Data Engineer saves X_test.pkl under one and forgets it under
    # the other (asserted below), so both outcomes run through the sandbox.
    trajs, counts = dd.collect(tasks, tokenizer, sandbox, seeds=[0, 1], max_concurrency=4)
  finally:
    sandbox.close()
  assert len(trajs) == 4 and not any(t.error for t in trajs)
  assert counts["data_engineer"]["forgets_x_test"] >= 1
  assert counts["data_engineer"]["saves_all"] >= 1
  for traj in trajs:
    files = {name for name, _ in traj.metadata["files"]}
    de_code = traj.actions_of("data_engineer")[0].tool_calls[0].code
    assert [a.agent for a in traj.actions] == ["data_engineer"] * 2 + ["modeler"] * 2 + [
        "analyst"] * 2
    assert {"X_train.pkl", "y_train.pkl", "model.pkl"} <= files
    if "X_test.pkl" in de_code:  # the pipeline is complete: a valid, scored submission
      assert "X_test.pkl" in files and "submission.csv" in files
      assert traj.outcome["valid"] and traj.outcome["normalized_gain"] > 0
    else:  # the omission: the Analyst's program fails and nothing is submitted
      assert "X_test.pkl" not in files and "submission.csv" not in files
      assert not traj.outcome.get("valid")
      analyst = traj.actions_of("analyst")[0]
      assert "X_test.pkl" in analyst.tool_observation and analyst.tool_calls[0].exit_code != 0
      # The rule coach blames the agent whose file is missing (upstream blame).
      de_score = traj.actions_of("data_engineer")[0].coach.score
      modeler_score = traj.actions_of("modeler")[0].coach.score
      assert de_score < modeler_score
  assert dd.omission_rate(trajs) == 1.0 - dd.validity_rate(trajs)


@pytest.mark.slow
def test_dsbench_smoke_pretraining_exports_a_checkpoint(tmp_path):
  out = tmp_path / "team"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "pretrain.py"),
       "--config=experiments/pretrain_tiny.py:dsbench_smoke", f"--out={out}",
       "--measure=false"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads((out / "pretrain_info.json").read_text())
  assert info["dsbench"]["trajectories"] == 2 and info["actions"] == 12
  assert set(info["dsbench"]["behaviours"]) == {"data_engineer", "modeler", "analyst"}
  assert np.isfinite(info["final_loss"]) and info["trajectories"] == 0  # no MathChat demos
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
    assert (out / name).is_file(), name
