"""Scripted teams that solve their tasks correctly (ScriptedEngine scripts).

They stand in for a trained team wherever what is measured is not the team but what happens
around it, e.g. the blame benchmark (benchmarks/blame.py): every agent does its job right, so
an injected fault (workflows/faults.py) is the only mistake in a trajectory, and every
downstream agent handles it as a careful agent would. Everything is deterministic.

MathChat (synthetic arithmetic tasks, data/synthetic.py), built on sft.demos.DemoPolicy with
every behaviour set to the correct one:
  Problem Solver: the problem as one expression and its correct value, `12 + 5 - 3 = 14`,
      `\\boxed{14}`.
  Code Executor: turn 1 a straight-line program of the story (`n = 12`, `n += 5`, ...,
      `print(n)`); turn 2 reports the number it printed.
  Verifier: re-derives the answer from the problem and compares it with the tool output it is
      shown; it says whether they agree and boxes its own, correct value (so a faulty tool
      output does not reach the final answer).

DSBench (tasks from data.dsbench.load_dsbench_tasks, e.g. the offline suite): templated correct
pipelines, each agent one program and then a hand-off report without code.
  Data Engineer: one-hot encodes categorical features (test columns aligned with train),
      fills missing values with train medians, saves X_train.pkl, y_train.pkl, X_test.pkl
      (one line each), prints a ---PREPROCESSING_SUMMARY--- block.
  Modeler: a random forest (classifier or regressor by the task's metric), 3-fold CV score,
      saves model.pkl.
  Analyst: loads model.pkl, then X_test.pkl, predicts (probabilities for roc_auc/log_loss),
      writes submission.csv with the id column first. When its program failed because an
      upstream file is missing, its report says so instead of claiming a submission.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from mappa_jax.data import dsbench as ds
from mappa_jax.data.loaders import Task
from mappa_jax.sft import demos

_TOOL_RESPONSE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.S)
_NUMBER = re.compile(r"-?\d+")

CORRECT_MIXTURE = demos.DemoMixture(solver_correct=1.0, executor_compute=1.0,
                                    executor_restate=0.0, executor_report_tool=1.0,
                                    verifier_trust_tool=1.0)


class MathChatTeam(demos.DemoPolicy):
  """The correct MathChat team (see the module docstring); `script()` gives the script."""

  def __init__(self, tasks: Sequence[Task], *, seed: int = 0):
    super().__init__(list(tasks), CORRECT_MIXTURE, seed=seed)

  def verifier(self, prompt: str) -> str:
    task = self._task(prompt)
    expr = demos.expression(task.metadata["start"], task.metadata["steps"])
    answer = int(task.answer)
    execution = prompt[prompt.find("## Input from Code Executor"):]
    responses = _TOOL_RESPONSE.findall(execution)
    found = _NUMBER.findall(responses[-1]) if responses else []
    tool = found[-1] if found else None
    if tool is None:
      check = f"There is no tool output to compare; I checked the problem: {expr} = {answer}."
    elif int(tool) == answer:
      check = f"The tool output {tool} agrees with my own check: {expr} = {answer}."
    else:
      check = (f"The tool output {tool} does not match my own check of the problem: "
               f"{expr} = {answer}.")
    self._record("verifier", prompt, "check")
    return f"</think>\n\n{check}\n\n**\\boxed{{{answer}}}**"


_DE_CODE = """I load the data, encode it and save the features.
</think>

```python
import pickle
import pandas as pd
ID, TARGETS = {id!r}, {targets!r}
train = pd.read_csv('train.csv', dtype={{ID: str}})
test = pd.read_csv('test.csv', dtype={{ID: str}})
X = pd.get_dummies(train.drop(columns=[ID] + TARGETS)).astype(float)
X_test = pd.get_dummies(test.drop(columns=[ID])).reindex(columns=X.columns, fill_value=0)
X_test = X_test.astype(float)
medians = X.median()
X, X_test = X.fillna(medians), X_test.fillna(medians)
y = train[TARGETS[0]] if len(TARGETS) == 1 else train[TARGETS]
pickle.dump(X, open('X_train.pkl', 'wb'))
pickle.dump(y, open('y_train.pkl', 'wb'))
pickle.dump(X_test, open('X_test.pkl', 'wb'))
print('---PREPROCESSING_SUMMARY---')
print('train', X.shape, 'test', X_test.shape, 'target', TARGETS)
print('---END_SUMMARY---')
```"""

_DE_REPORT = ("Done.\n</think>\n\nSaved X_train.pkl, y_train.pkl and X_test.pkl: one-hot "
              "encoded features, missing values filled with the training medians.")

_MODELER_CODE = """I train a random forest on the saved features.
</think>

```python
import pickle
from sklearn.ensemble import {model}
from sklearn.model_selection import cross_val_score
X = pickle.load(open('X_train.pkl', 'rb'))
y = pickle.load(open('y_train.pkl', 'rb'))
model = {model}(n_estimators=40, random_state=0, n_jobs=1)
print('cv', cross_val_score(model, X, y, cv=3).mean())
model.fit(X, y)
pickle.dump(model, open('model.pkl', 'wb'))
print('---MODEL_SUMMARY---')
print('{model}, 40 trees, saved model.pkl')
print('---END_SUMMARY---')
```"""

_MODELER_REPORT = "Done.\n</think>\n\n---MODEL_SUMMARY--- random forest, 40 trees ---END_SUMMARY---"

_ANALYST_CODE = """I predict the test set with the saved model.
</think>

```python
import pickle
import pandas as pd
ID, TARGETS = {id!r}, {targets!r}
model = pickle.load(open('model.pkl', 'rb'))
X_test = pickle.load(open('X_test.pkl', 'rb'))
pred = {predict}
sub = pd.DataFrame(pred.reshape(len(X_test), -1), columns=TARGETS)
sub.insert(0, ID, pd.read_csv('test.csv', dtype={{ID: str}})[ID])
sub.to_csv('submission.csv', index=False)
print(sub.shape)
print(sub.head(3))
```"""

_ANALYST_DONE = "Done.\n</think>\n\nsubmission.csv written: one row per test id."


def _analyst_report(prompt: str) -> str:
  responses = _TOOL_RESPONSE.findall(prompt)
  last = responses[-1] if responses else ""
  missing = re.search(r"No such file or directory: '([^']+)'", last)
  if missing:
    return (f"Stopping.\n</think>\n\n{missing.group(1)} is missing: an earlier agent did not "
            "save it, so I cannot predict. No submission was written.")
  return _ANALYST_DONE


class DSBenchTeam:
  """The correct DSBench team (see the module docstring) for `tasks`."""

  def __init__(self, tasks: Sequence[Task]):
    self.by_title: dict[str, Task] = {}
    for t in tasks:
      for key in ("id_column", "target_columns", "metric"):
        if not t.metadata.get(key):
          raise ValueError(f"DSBenchTeam: task {t.task_id!r} lacks metadata[{key!r}] (load it "
                           "with data.dsbench.load_dsbench_tasks and cleaned prompts)")
      self.by_title[self._title(t)] = t

  @staticmethod
  def _title(task: Task) -> str:
    text = task.metadata.get("cleaned_prompt") or task.prompt
    return text.strip().split("\n")[0]

  def task_of(self, prompt: str) -> Task:
    for title, task in self.by_title.items():
      if f"## Task\n{title}" in prompt:
        return task
    raise KeyError(f"DSBenchTeam: no task for prompt {prompt[:200]!r}")

  def script(self) -> dict[str, list[Any]]:
    return {"data_engineer": [self.data_engineer, _DE_REPORT],
            "modeler": [self.modeler, _MODELER_REPORT],
            "analyst": [self.analyst, _analyst_report]}

  def _fields(self, prompt: str) -> tuple[Task, dict[str, Any]]:
    task = self.task_of(prompt)
    m = task.metadata
    return task, {"id": m["id_column"], "targets": list(m["target_columns"])}

  def data_engineer(self, prompt: str) -> str:
    _, f = self._fields(prompt)
    return _DE_CODE.format(**f)

  def modeler(self, prompt: str) -> str:
    task, _ = self._fields(prompt)
    kind = ds.metric_spec(task.metadata["metric"]).kind
    model = "RandomForestRegressor" if kind == "value" else "RandomForestClassifier"
    return _MODELER_CODE.format(model=model)

  def analyst(self, prompt: str) -> str:
    task, f = self._fields(prompt)
    kind = ds.metric_spec(task.metadata["metric"]).kind
    predict = ("model.predict_proba(X_test)[:, 1]" if kind == "proba"
               else "model.predict(X_test)")
    return _ANALYST_CODE.format(predict=predict, **f)
