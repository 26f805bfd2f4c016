"""Deliberately imperfect DSBench demonstrations: short template pipelines for the three roles.

The demonstrations run through the real DSBench workflow (shared workspace, sandboxed code,
tool output, hand-offs, workspace checks), driven by a scripted policy, so the pretraining data
is rendered token for token as a rollout renders it. Every program is a fixed template in which
only the model class and the prediction call vary (and, with columns_from='prompt', the column
names copied from the task description), so a tiny decoder can reproduce it:

  Data Engineer, turn 1: reads train.csv/test.csv, finds the target and id columns (see
      COLUMNS_FROM), one-hot encodes and median-fills the features, pickles X_train.pkl and
      y_train.pkl and, except with probability `de_forgets_x_test`, X_test.pkl (the omission
      a per-action coach can blame on it).
  Data Engineer, turn 2: a PREPROCESSING_SUMMARY naming the target, id and the files saved.
  Modeler, turn 1: fits a random forest (`modeler_forest`) or a single decision tree
      (classifier or regressor by task type) and pickles model.pkl.
  Modeler, turn 2: a MODEL_SUMMARY naming the model.
  Analyst, turn 1: loads model.pkl and X_test.pkl, predicts (a probability for the roc_auc and
      log_loss tasks, whose descriptions ask for one) and writes submission.csv with the id
      column first.
  Analyst, turn 2: states whether submission.csv was written (it is not when X_test.pkl is
      missing: the program fails and the demonstration does not recover).

Every choice is drawn from a generator seeded by (seed, the agent's prompt text): the same
tasks and seeds give byte-identical demonstrations whatever the concurrency. The suite has only
a dozen training tasks, so `collect` runs each task once per seed of `seeds`.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import tempfile
from typing import Any, Sequence

import numpy as np

from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.sft.demos import check_probabilities, seeded_rng
from mappa_jax.workflows.dsbench import DSBenchConfig, DSBenchWorkflow
from mappa_jax.workflows.records import Trajectory
from mappa_jax.workflows.scripted import ScriptedEngine

# Metrics scored on a predicted probability of the positive class (the descriptions say so).
PROBABILITY_METRICS = ("roc_auc", "log_loss")
_THINK_END = "</think>\n\n"  # the chat template opens <think>: close it at once


@dataclasses.dataclass(frozen=True)
class DSDemoMixture:
  """Probabilities of the demonstrated DSBench behaviours (see the module docstring).

  Attributes:
    de_forgets_x_test: the Data Engineer's program does not save X_test.pkl.
    modeler_forest: the Modeler fits a random forest (else a decision tree).
  """
  de_forgets_x_test: float = 0.5  # experiments/pretrain_tiny.py's value; why there
  modeler_forest: float = 0.5

  def __post_init__(self):
    check_probabilities(self)


def _is_classification(task: Task) -> bool:
  return "class" in str(task.task_type or task.metadata.get("data_type", "")).lower()


# Where the programs take the target and id columns from (`columns_from`):
#   'data'   from the files: the target columns are those of train.csv missing from test.csv,
#            the id column is test.csv's first column (true of the offline suite); every
#            program is then the same text for every task.
#   'prompt' copied from the task description (the names are literals in the program).
# 'data' is the default because 'prompt' did not generalise: a base pretrained on the suite's
# 12 training tasks wrote training-task column names on all 16 held-out eval trajectories
# (x_test_omission_rate 1.0, submission validity 0.0; the Data Engineer's drop() failed).
COLUMNS_FROM = ("data", "prompt")
_DATA_COLUMNS = ("T = [c for c in tr.columns if c not in te.columns]", "te.columns[0]")


def data_engineer_program(id_column: str | None, targets: Sequence[str] | None, *,
                          save_x_test: bool) -> str:
  """The Data Engineer's template; id_column/targets None: read from the files ('data')."""
  ident = repr(id_column) if id_column is not None else _DATA_COLUMNS[1]
  lines = [
      "import pandas as pd, pickle",
      "tr, te = pd.read_csv('train.csv'), pd.read_csv('test.csv')",
      f"T = {list(targets)!r}" if targets is not None else _DATA_COLUMNS[0],
      f"X = pd.get_dummies(tr.drop(columns=[{ident}] + T)).astype(float)",
      f"Xt = pd.get_dummies(te.drop(columns=[{ident}])).astype(float)",
      "Xt = Xt.reindex(columns=X.columns, fill_value=0).fillna(X.median())",
      "X = X.fillna(X.median())",
      "pickle.dump(X, open('X_train.pkl', 'wb'))",
      "pickle.dump(tr[T].squeeze(axis=1), open('y_train.pkl', 'wb'))",
  ]
  if save_x_test:
    lines.append("pickle.dump(Xt, open('X_test.pkl', 'wb'))")
  lines.append("print(X.shape, Xt.shape)")
  return "\n".join(lines)


def model_class(classification: bool, forest: bool) -> str:
  """The Modeler's sklearn class (one of the four the template imports)."""
  return (f"{'RandomForest' if forest else 'DecisionTree'}"
          f"{'Classifier' if classification else 'Regressor'}")


def modeler_program(classification: bool, forest: bool) -> str:
  """The Modeler's template: every import is fixed and the class is named once, with default
  arguments, so the one choice cannot disagree with itself (a base that imported only the
  chosen class wrote mismatched import / constructor pairs on held-out tasks: ImportError)."""
  return "\n".join([
      "import pickle",
      "from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor",
      "from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor",
      "X, y = pickle.load(open('X_train.pkl', 'rb')), pickle.load(open('y_train.pkl', 'rb'))",
      f"m = {model_class(classification, forest)}(random_state=0).fit(X, y)",
      "pickle.dump(m, open('model.pkl', 'wb'))",
      "print(round(m.score(X, y), 3))",
  ])


def analyst_program(id_column: str | None, targets: Sequence[str] | None, *,
                    probability: bool) -> str:
  """The Analyst's template: the prediction call varies (and the column names, 'prompt')."""
  predict = "m.predict_proba(Xt)[:, 1]" if probability else "m.predict(Xt)"
  lines = ["import pandas as pd, pickle",
           "m, Xt = pickle.load(open('model.pkl', 'rb')), pickle.load(open('X_test.pkl', 'rb'))"]
  if targets is None:
    lines += ["tr, te = pd.read_csv('train.csv'), pd.read_csv('test.csv')", _DATA_COLUMNS[0],
              f"sub = pd.DataFrame({predict}, columns=T)",
              "sub.insert(0, te.columns[0], te[te.columns[0]])"]
  else:
    lines += [f"sub = pd.DataFrame({predict}, columns={list(targets)!r})",
              f"sub.insert(0, {id_column!r}, pd.read_csv('test.csv')[{id_column!r}])"]
  return "\n".join(lines + ["sub.to_csv('submission.csv', index=False)", "print(sub.shape)"])


def _code(program: str) -> str:
  return f"{_THINK_END}```python\n{program}\n```"


def _first_prompt(prompt: str) -> str:
  """The turn-1 prompt inside a later turn's prompt (one generator decides every turn)."""
  cut = prompt.find("<|im_start|>assistant")
  return prompt[:cut] if cut >= 0 else prompt


class DSDemoPolicy:
  """Scripted DSBench policy implementing `DSDemoMixture` (a ScriptedEngine script).

  Args:
    tasks: DSBench tasks (mappa_jax.data.dsbench.load_dsbench_tasks); looked up by the task
      description the prompt shows.
    mixture: behaviour probabilities.
    seed: demonstration seed.
    columns_from: 'data' or 'prompt' (see COLUMNS_FROM).

  `chosen` records every behaviour drawn, {(agent, prompt hash): behaviour}.
  """

  def __init__(self, tasks: Sequence[Task], mixture: DSDemoMixture = DSDemoMixture(), *,
               seed: int = 0, columns_from: str = "data"):
    if columns_from not in COLUMNS_FROM:
      raise ValueError(f"columns_from={columns_from!r}: one of {COLUMNS_FROM}")
    self.mixture = mixture
    self.seed = seed
    self.columns_from = columns_from
    self.tasks = list(tasks)
    self.chosen: dict[tuple[str, str], str] = {}

  def script(self) -> dict[str, list[Any]]:
    return {"data_engineer": [self.data_engineer, self.data_engineer_summary],
            "modeler": [self.modeler, self.modeler_summary],
            "analyst": [self.analyst, self.analyst_summary]}

  def _task(self, prompt: str) -> Task:
    # The longest matching description wins (no description is a prefix of another, but be
    # safe); the workflow shows the cleaned prompt when there is one.
    found = [t for t in self.tasks if (t.metadata.get("cleaned_prompt") or t.prompt) in prompt]
    if not found:
      raise KeyError(f"DSDemoPolicy: no task for prompt {prompt[:120]!r}")
    return max(found, key=lambda t: len(t.metadata.get("cleaned_prompt") or t.prompt))

  def _record(self, agent: str, key: str, behaviour: str) -> None:
    self.chosen[(agent, hashlib.sha256(key.encode()).hexdigest()[:16])] = behaviour

  def _columns(self, task: Task) -> tuple[str | None, list[str] | None]:
    """(id column, target columns) as program literals; (None, None): read from the files."""
    if self.columns_from == "data":
      return None, None
    return task.metadata["id_column"], list(task.metadata["target_columns"])

  def _forgets(self, first_prompt: str) -> bool:
    return bool(seeded_rng(self.seed, first_prompt).random() < self.mixture.de_forgets_x_test)

  # -- agents -------------------------------------------------------------------------------
  def data_engineer(self, prompt: str) -> str:
    task = self._task(prompt)
    forgets = self._forgets(_first_prompt(prompt))
    self._record("data_engineer", prompt, "forgets_x_test" if forgets else "saves_all")
    return _code(data_engineer_program(*self._columns(task), save_x_test=not forgets))

  def data_engineer_summary(self, prompt: str) -> str:
    task = self._task(prompt)
    first = _first_prompt(prompt)
    saved = "X_train.pkl, y_train.pkl" + ("" if self._forgets(first) else ", X_test.pkl")
    ident, targets = self._columns(task)
    names = (f"target: {', '.join(targets)}; id: {ident}; " if targets is not None else
             "target: the train.csv columns not in test.csv; id: test.csv's first column; ")
    return (f"{_THINK_END}---PREPROCESSING_SUMMARY---\n{names}one-hot features, median fill; "
            f"saved {saved}\n---END_SUMMARY---")

  def _forest(self, first_prompt: str) -> bool:
    return bool(seeded_rng(self.seed, first_prompt).random() < self.mixture.modeler_forest)

  def modeler(self, prompt: str) -> str:
    task = self._task(prompt)
    forest = self._forest(_first_prompt(prompt))
    self._record("modeler", prompt, "forest" if forest else "tree")
    return _code(modeler_program(_is_classification(task), forest))

  def modeler_summary(self, prompt: str) -> str:
    task = self._task(prompt)
    name = model_class(_is_classification(task), self._forest(_first_prompt(prompt)))
    return f"{_THINK_END}---MODEL_SUMMARY---\n{name}; saved model.pkl\n---END_SUMMARY---"

  def analyst(self, prompt: str) -> str:
    task = self._task(prompt)
    m = task.metadata
    self._record("analyst", prompt, "predict")
    return _code(analyst_program(*self._columns(task),
                                 probability=m["metric"] in PROBABILITY_METRICS))

  def analyst_summary(self, prompt: str) -> str:
    # Turn 2 follows the program's output: a failed program (e.g. no X_test.pkl) wrote nothing.
    tool = prompt[prompt.rfind("<tool_response>"):]
    if "Error" in tool or "Traceback" in tool:
      return f"{_THINK_END}The program failed; submission.csv was not written."
    return f"{_THINK_END}submission.csv is written."


def collect(tasks: Sequence[Task], tokenizer, sandbox, *, seeds: Sequence[int],
            mixture: DSDemoMixture = DSDemoMixture(), columns_from: str = "data",
            tool_timeout_s: float = 60.0, max_concurrency: int = 4
            ) -> tuple[list[Trajectory], dict[str, collections.Counter]]:
  """Runs the real DSBench workflow over every (seed, task) with the demonstration policy.

  Returns:
    (trajectories in (seed, task) order, {agent: Counter of the behaviours drawn}).
  """
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  trajs: list[Trajectory] = []
  with tempfile.TemporaryDirectory(prefix="mappa_dsdemos_") as root:
    for seed in seeds:
      policy = DSDemoPolicy(tasks, mixture, seed=int(seed), columns_from=columns_from)
      engine = ScriptedEngine(tokenizer, policy.script())
      workflow = DSBenchWorkflow(engine=engine, tokenizer=tokenizer, coach=RuleCoach(),
                                 sandbox=sandbox, sampling=SamplingParams(max_new_tokens=4096),
                                 config=DSBenchConfig(tool_timeout_s=tool_timeout_s),
                                 workspace_root=root)

      async def run_all(wf=workflow) -> list[Trajectory]:
        sem = asyncio.Semaphore(max_concurrency)

        async def one(task, index):
          async with sem:
            return await wf.run(task, sample_index=index)
        return await asyncio.gather(*[one(t, int(seed)) for t in tasks])

      batch = asyncio.run(run_all())
      failed = [t for t in batch if t.error]
      if failed:
        raise RuntimeError(f"{len(failed)} DSBench demonstration trajectories failed, e.g. "
                           f"{failed[0].task_id}: {failed[0].error}")
      trajs += batch
      for (agent, _), behaviour in policy.chosen.items():
        counts[agent][behaviour] += 1
  return trajs, dict(counts)


def omission_rate(trajs: Sequence[Trajectory], name: str = "X_test.pkl") -> float:
  """Share of trajectories whose workspace ended without `name`."""
  if not trajs:
    return float("nan")
  return float(np.mean([name not in {f for f, _ in t.metadata.get("files", ())}
                        for t in trajs]))


def validity_rate(trajs: Sequence[Trajectory]) -> float:
  """Share of trajectories whose submission.csv scored as valid."""
  if not trajs:
    return float("nan")
  return float(np.mean([bool(t.outcome.get("valid")) and not t.error for t in trajs]))
