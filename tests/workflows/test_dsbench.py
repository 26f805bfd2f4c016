"""DSBench with a scripted policy: real workspace, real sklearn training inside bwrap."""
import asyncio

import numpy as np
import pandas as pd
import pytest

from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.workflows.dsbench import DSBenchConfig, DSBenchWorkflow
from mappa_jax.workflows.scripted import ScriptedEngine
from tests.workflows.conftest import RecordingCoach

DE_CODE = """Load and split.
</think>

```python
import pandas as pd, pickle
train, test = pd.read_csv('train.csv'), pd.read_csv('test.csv')
feats = ['f1', 'f2']
pickle.dump(train[feats].values, open('X_train.pkl', 'wb'))
pickle.dump(train['target'].values, open('y_train.pkl', 'wb'))
{save_test}print('---PREPROCESSING_SUMMARY---', train.shape, '---END_SUMMARY---')
```"""
DE_DONE = "Done.\n</think>\n\nSaved X_train.pkl, y_train.pkl, X_test.pkl; features f1, f2."
MOD_CODE = """Fit a forest.
</think>

```python
import pickle
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score
X, y = pickle.load(open('X_train.pkl', 'rb')), pickle.load(open('y_train.pkl', 'rb'))
m = RandomForestClassifier(n_estimators=20, random_state=0)
print('cv', cross_val_score(m, X, y, cv=3).mean())
pickle.dump(m.fit(X, y), open('model.pkl', 'wb'))
```"""
MOD_DONE = "Done.\n</think>\n\n---MODEL_SUMMARY--- random forest, 20 trees ---END_SUMMARY---"
AN_CODE = """Predict.
</think>

```python
import pickle, pandas as pd
m, X = pickle.load(open('model.pkl', 'rb')), pickle.load(open('X_test.pkl', 'rb'))
ids = pd.read_csv('test.csv')['id']
pd.DataFrame({'id': ids, 'target': m.predict(X)}).to_csv('submission.csv', index=False)
print(pd.read_csv('submission.csv').shape)
```"""
AN_DONE = "Done.\n</think>\n\nsubmission.csv written."


@pytest.fixture
def task(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(90, 2))
  y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
  df = pd.DataFrame({"id": [f"r{i}" for i in range(90)], "f1": x[:, 0], "f2": x[:, 1],
                     "target": y})
  d = tmp_path / "data"
  d.mkdir()
  df[:60].to_csv(d / "train.csv", index=False)
  df[60:].drop(columns="target").to_csv(d / "test.csv", index=False)
  df[60:][["id", "target"]].to_csv(d / "test_answer.csv", index=False)
  meta = {"train_file": str(d / "train.csv"), "test_file": str(d / "test.csv"),
          "answer_file": str(d / "test_answer.csv"), "metric": "accuracy", "id_column": "id",
          "target_columns": ["target"], "higher_is_better": True, "cleaned_prompt": None}
  return Task("toy-cls", "Predict `target` from f1, f2. Metric: accuracy.", None,
              "classification", meta)


def run(tokenizer, sandbox, task, tmp_path, save_test=True):
  de = DE_CODE.format(save_test="pickle.dump(test[feats].values, open('X_test.pkl', 'wb'))\n"
                      if save_test else "")
  engine = ScriptedEngine(tokenizer, {"data_engineer": [de, DE_DONE],
                                      "modeler": [MOD_CODE, MOD_DONE],
                                      "analyst": [AN_CODE, AN_DONE]})
  coach = RecordingCoach()
  wf = DSBenchWorkflow(engine=engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
                       sampling=SamplingParams(max_new_tokens=1024),
                       config=DSBenchConfig(tool_timeout_s=60.0), workspace_root=str(tmp_path))
  return asyncio.run(wf.run(task)), coach


@pytest.mark.slow
def test_full_pipeline_trains_a_real_model(tokenizer, sandbox, task, tmp_path):
  traj, coach = run(tokenizer, sandbox, task, tmp_path)
  assert not traj.error
  assert [(a.agent, a.turn) for a in traj.actions] == [
      ("data_engineer", 0), ("data_engineer", 1), ("modeler", 0), ("modeler", 1),
      ("analyst", 0), ("analyst", 1)]
  de0, _, mod0, _, an0, _ = traj.actions
  assert set(de0.tool_calls[0].files_changed) == {"X_train.pkl", "y_train.pkl", "X_test.pkl"}
  assert "---PREPROCESSING_SUMMARY---" in de0.tool_observation
  assert mod0.tool_calls[0].exit_code == 0 and "model.pkl" in mod0.tool_calls[0].files_changed
  assert an0.tool_calls[0].files_changed == ("submission.csv",)
  # Each agent is told which files exist; hand-offs are think-stripped summaries.
  mod_prompt = tokenizer.decode(mod0.prompt_ids)
  assert "- X_test.pkl (" in mod_prompt and "- train.csv (" in mod_prompt
  assert "Saved X_train.pkl, y_train.pkl, X_test.pkl" in mod_prompt and "Done." not in mod_prompt
  an_prompt = tokenizer.decode(an0.prompt_ids)
  assert "- model.pkl (" in an_prompt and "WARNING" not in an_prompt
  assert "random forest, 20 trees" in an_prompt
  # The real submission is scored by the evaluation module, joined on ids.
  assert traj.outcome["valid"] and traj.outcome["metric"] == "accuracy"
  assert traj.outcome["value"] > 0.7 and traj.outcome["n_predictions"] == 30
  req = coach.of("analyst")[0]
  assert req.signals["submission_valid"] and req.signals["missing_files"] == []
  assert req.signals["metric_name"] == "accuracy" and "Metric accuracy" in req.ground_truth
  assert coach.of("modeler")[0].ground_truth is None
  assert dict(req.upstream_files)["data_engineer"] == ("X_test.pkl", "X_train.pkl",
                                                       "y_train.pkl")
  assert all(a.coach.is_scored for a in traj.actions)


@pytest.mark.slow
def test_forgotten_x_test_shows_in_the_analyst_request(tokenizer, sandbox, task, tmp_path):
  traj, coach = run(tokenizer, sandbox, task, tmp_path, save_test=False)
  de_req = coach.of("data_engineer")[0]
  assert de_req.signals["missing_files"] == ["X_test.pkl"]
  an0 = traj.actions_of("analyst")[0]
  assert "WARNING: the working directory has no X_test file" in tokenizer.decode(an0.prompt_ids)
  assert "FileNotFoundError" in an0.tool_observation and "X_test.pkl" in an0.tool_observation
  req = coach.of("analyst")[0]
  assert req.signals["missing_files"] == ["X_test.pkl", "submission.csv"]
  assert "MISSING required files: X_test.pkl, submission.csv" in req.tool_observation
  assert req.signals["submission_valid"] is False
  assert not any("X_test.pkl" in f for f in req.workspace_files)
  assert "valid" not in traj.outcome or not traj.outcome["valid"]


def test_missing_task_file_raises_and_leaves_no_workspace(tokenizer, task, tmp_path):
  import dataclasses
  bad = dataclasses.replace(task, metadata=dict(task.metadata,
                                                train_file=str(tmp_path / "nope.csv")))
  root = tmp_path / "ws"
  wf = DSBenchWorkflow(engine=ScriptedEngine(tokenizer, {"data_engineer": ["x"]}),
                       tokenizer=tokenizer, coach=RecordingCoach(), sandbox=None,
                       sampling=SamplingParams(max_new_tokens=16), workspace_root=str(root))
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    asyncio.run(wf.run(bad))
  assert list(root.iterdir()) == []
