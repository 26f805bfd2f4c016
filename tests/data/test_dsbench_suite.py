"""The offline DSBench suite: deterministic build, layout, and baseline/oracle submissions."""
import collections
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mappa_jax.data import dsbench, dsbench_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  root = tmp_path_factory.mktemp("suite")
  dsbench_suite.build(str(root / "a"))
  return root


def _tree(path):
  out = []
  for d, _, names in os.walk(path):
    out += [os.path.relpath(os.path.join(d, n), path) for n in names]
  return sorted(out)


def test_build_twice_identical_bytes(suite):
  # Second build through the real command line.
  subprocess.run([sys.executable, "-m", "mappa_jax.data.dsbench_suite", "build",
                  str(suite / "b")], check=True, capture_output=True)
  a, b = suite / "a", suite / "b"
  assert _tree(a) == _tree(b)
  match, mismatch, errors = filecmp.cmpfiles(a, b, _tree(a), shallow=False)
  assert not mismatch and not errors and len(match) == len(_tree(a))


def test_suite_size_balance_and_layout(suite):
  root = suite / "a"
  manifest = json.loads((root / "manifest.json").read_text())
  types = collections.Counter(t["data_type"] for t in manifest["tasks"])
  assert len(manifest["tasks"]) >= 12
  assert abs(types["classification"] - types["regression"]) <= 1
  tasks = dsbench.load_dsbench_tasks(root, "tasks.jsonl")
  assert len(tasks) == len(manifest["tasks"])
  evals = dsbench.load_dsbench_tasks(root, "eval_tasks.jsonl")
  trains = dsbench.load_dsbench_tasks(root, "train_tasks.jsonl")
  assert {t.task_id for t in evals}.isdisjoint({t.task_id for t in trains})
  assert len(evals) + len(trains) == len(tasks)
  assert sorted(manifest["eval_task_ids"]) == sorted(t.task_id for t in evals)
  assert len(dsbench.load_dsbench_tasks(root, manifest["tasks_file"])) == len(tasks)
  cleaned = json.loads((root / "cleaned_prompts.json").read_text())
  for t in tasks:
    m = t.metadata
    assert m["metric"] in dsbench.METRICS and t.task_id in cleaned
    train, test = pd.read_csv(m["train_file"]), pd.read_csv(m["test_file"])
    answers = pd.read_csv(m["answer_file"])
    assert m["id_column"] == train.columns[0] == test.columns[0] == answers.columns[0]
    assert not set(m["target_columns"]) & set(test.columns)  # test has no target
    assert set(m["target_columns"]) <= set(train.columns)
    assert list(answers[m["id_column"]]) == list(test[m["id_column"]])
    assert set(train[m["id_column"]]).isdisjoint(test[m["id_column"]])
    assert "Evaluation" in t.raw_prompt and "Submission File" in t.raw_prompt
    assert t.task_type in ("classification", "regression")


def _independent_baseline(metric, train, answers, targets):
  """The trivial baseline's score computed with numpy/scipy formulas (not dsbench code)."""
  vals = []
  for c in targets:
    y = answers[c]
    if metric in ("accuracy", "f1", "f1_macro", "f1_weighted", "qwk"):
      counts = train[c].astype(str).value_counts()
      top = sorted(counts[counts == counts.max()].index)[0]
      hit = (y.astype(str) == top).to_numpy()
      if metric == "accuracy":
        vals.append(hit.mean())
      elif metric == "qwk":
        vals.append(0.0)  # constant predictions: no agreement beyond chance
      else:
        # constant prediction `top`: only that class gets a non-zero F1 = 2p/(p+1), p = share.
        p = hit.mean()
        f1_top = 2 * p / (1 + p)
        if metric == "f1":
          vals.append(f1_top if top in ("1", "1.0") else 0.0)
        elif metric == "f1_macro":
          vals.append(f1_top / y.nunique())
        else:
          vals.append(f1_top * p)
    elif metric == "roc_auc":
      vals.append(0.5)
    elif metric == "log_loss":
      q = train[c].mean()
      yv = y.to_numpy(float)
      vals.append(-np.mean(yv * np.log(q) + (1 - yv) * np.log(1 - q)))
    else:
      yv = y.to_numpy(float)
      centre = train[c].median() if metric in ("mae", "medae", "smape") else train[c].mean()
      e = yv - centre
      vals.append({
          "rmse": lambda: np.sqrt(np.mean(e ** 2)),
          "mcrmse": lambda: np.sqrt(np.mean(e ** 2)),
          "mae": lambda: np.mean(np.abs(e)),
          "medae": lambda: np.median(np.abs(e)),
          "rmsle": lambda: np.sqrt(np.mean((np.log1p(centre) - np.log1p(yv)) ** 2)),
          "r2": lambda: 1 - np.sum(e ** 2) / np.sum((yv - yv.mean()) ** 2),
          "smape": lambda: 100 * np.mean(2 * np.abs(e) / (np.abs(yv) + abs(centre))),
      }[metric]())
  return float(np.mean(vals))


def test_every_baseline_submission_scores_as_expected(suite):
  root = suite / "a"
  for t in dsbench.load_dsbench_tasks(root, "tasks.jsonl"):
    m = t.metadata
    sample = os.path.join(os.path.dirname(m["test_file"]), "sample_submission.csv")
    r = dsbench.score_task(t, sample)
    assert r["valid"], (t.task_id, r["error"])
    assert r["n_predictions"] == r["n_expected"]
    assert r["value"] == pytest.approx(r["baseline_value"], rel=1e-9, abs=1e-12), t.task_id
    expected = _independent_baseline(m["metric"], pd.read_csv(m["train_file"]),
                                      pd.read_csv(m["answer_file"]), m["target_columns"])
    assert r["value"] == pytest.approx(expected, rel=1e-6, abs=1e-9), t.task_id
    assert r["normalized_gain"] == pytest.approx(0.0, abs=1e-9)


def test_oracle_submission_beats_baseline(suite, tmp_path):
  root = suite / "a"
  for t in dsbench.load_dsbench_tasks(root, "tasks.jsonl"):
    m = t.metadata
    answers = pd.read_csv(m["answer_file"])
    oracle = answers.sample(frac=1.0, random_state=0)  # shuffled rows: joined on id
    path = tmp_path / f"{t.task_id}.csv"
    oracle.to_csv(path, index=False)
    r = dsbench.score_task(t, path)
    assert r["valid"], (t.task_id, r["error"])
    spec = dsbench.metric_spec(m["metric"])
    if spec.name == "log_loss":
      assert r["value"] < 1e-6
    else:
      assert r["value"] == pytest.approx(spec.perfect, abs=1e-9), t.task_id
    assert r["normalized_gain"] == pytest.approx(1.0, abs=1e-6)


def test_only_and_unknown_task(tmp_path):
  manifest = dsbench_suite.build(str(tmp_path / "s"), only=["linnerud-fitness"])
  assert [t["task_id"] for t in manifest["tasks"]] == ["linnerud-fitness"]
  with pytest.raises(ValueError, match="unknown suite task"):
    dsbench_suite.build(str(tmp_path / "s"), only=["nope"])
