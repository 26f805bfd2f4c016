"""DSBench scoring (hand-computed metrics, id join, validity) and the original-layout loader."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from mappa_jax.data import dsbench, loaders


def _write(path, df):
  df.to_csv(path, index=False)
  return str(path)


@pytest.fixture
def reg_files(tmp_path):
  ans = pd.DataFrame({"id": ["a", "b", "c", "d"], "y": [1.0, 2.0, 3.0, 10.0]})
  return tmp_path, _write(tmp_path / "ans.csv", ans)


def _score(tmp_path, answer, sub_df, metric, targets="y", id_column="id", **kw):
  sub = _write(tmp_path / "sub.csv", sub_df)
  return dsbench.score_submission(sub, answer, metric=metric, id_column=id_column,
                                  target_columns=targets, **kw)


# Hand-computed values: y = [1, 2, 3, 10], p = [2, 2, 5, 6] (after the id join).
# errors = [1, 0, 2, -4] -> mse = 21/4, rmse = sqrt(5.25), mae = 7/4, medae = 1.5
REG_EXPECTED = {
    "mse": 21 / 4,
    "rmse": math.sqrt(21 / 4),
    "mae": 7 / 4,
    "medae": 1.5,
    "r2": 1 - 21 / (((np.array([1, 2, 3, 10]) - 4) ** 2).sum()),
    "rmsle": math.sqrt(np.mean((np.log1p([2, 2, 5, 6]) - np.log1p([1, 2, 3, 10])) ** 2)),
    "smape": 100 * np.mean([2 * 1 / 3, 0, 2 * 2 / 8, 2 * 4 / 16]),
}


@pytest.mark.parametrize("metric", sorted(REG_EXPECTED))
def test_regression_metrics_hand_computed_and_joined_on_id(reg_files, metric):
  tmp_path, answer = reg_files
  # Rows in a different order than the answers: positional alignment would be wrong.
  sub = pd.DataFrame({"id": ["d", "c", "b", "a"], "y": [6.0, 5.0, 2.0, 2.0]})
  r = _score(tmp_path, answer, sub, metric)
  assert r["valid"] and r["error"] == ""
  assert r["value"] == pytest.approx(REG_EXPECTED[metric], rel=1e-12)
  assert r["n_predictions"] == 4 and r["n_expected"] == 4
  assert r["higher_is_better"] == (metric == "r2")


def test_baseline_value_hand_computed(reg_files):
  tmp_path, answer = reg_files
  sub = pd.DataFrame({"id": ["a", "b", "c", "d"], "y": [4.0] * 4})
  r = _score(tmp_path, answer, sub, "rmse")
  # The baseline (mean of the answers = 4) equals this submission.
  assert r["baseline_value"] == pytest.approx(math.sqrt((9 + 4 + 1 + 36) / 4))
  assert r["value"] == pytest.approx(r["baseline_value"])
  assert r["normalized_gain"] == pytest.approx(0.0)
  train = _write(tmp_path / "train.csv", pd.DataFrame({"id": ["x", "z"], "y": [0.0, 2.0]}))
  better = sub.assign(y=[1.0, 2.0, 3.0, 8.0])
  r2 = _score(tmp_path, answer, better, "mae", train_csv=train)
  assert r2["baseline_value"] == pytest.approx(np.mean([0, 1, 2, 9]))  # train median = 1
  assert r2["value"] == pytest.approx(0.5)
  assert r2["normalized_gain"] == pytest.approx((3 - 0.5) / 3)


INVALID_CASES = [
    ("missing id", pd.DataFrame({"id": ["a", "b", "c"], "y": [1, 2, 3]}), "misses 1 of 4"),
    ("duplicate", pd.DataFrame({"id": ["a", "a", "b", "c", "d"], "y": [1] * 5}), "duplicated"),
    ("nan", pd.DataFrame({"id": ["a", "b", "c", "d"], "y": [1, None, 3, 4]}), "empty"),
    ("no target", pd.DataFrame({"id": ["a", "b", "c", "d"], "pred": [1, 2, 3, 4]}),
     "lacks target column"),
    ("no id", pd.DataFrame({"row": ["a", "b", "c", "d"], "y": [1, 2, 3, 4]}), "lacks the id"),
    ("text", pd.DataFrame({"id": ["a", "b", "c", "d"], "y": ["x", 2, 3, 4]}), "non-numeric"),
]


@pytest.mark.parametrize("name,sub,message", INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_invalid_submissions_fail_with_baseline_as_fair_value(reg_files, name, sub, message):
  tmp_path, answer = reg_files
  r = _score(tmp_path, answer, sub, "rmse")
  assert not r["valid"] and message in r["error"], r["error"]
  assert math.isnan(r["value"])
  assert r["fair_value"] == r["baseline_value"]


def test_extra_ids_ignored_and_missing_file(reg_files):
  tmp_path, answer = reg_files
  sub = pd.DataFrame({"id": ["a", "b", "c", "d", "zz"], "y": [1.0, 2.0, 3.0, 10.0, 99.0]})
  assert _score(tmp_path, answer, sub, "rmse")["value"] == 0.0
  r = dsbench.score_submission(tmp_path / "nope.csv", answer, metric="rmse", id_column="id",
                               target_columns="y")
  assert not r["valid"] and "not found" in r["error"]
  assert _score(tmp_path, answer, sub.assign(y=-1.0), "rmsle")["valid"] is False


def test_label_metrics(tmp_path):
  ans = _write(tmp_path / "a.csv", pd.DataFrame({"id": [1, 2, 3, 4, 5, 6],
                                                 "c": ["x", "y", "y", "z", "z", "z"]}))
  sub = pd.DataFrame({"id": [6, 5, 4, 3, 2, 1], "c": ["z", "z", "y", "y", "y", "x"]})
  r = _score(tmp_path, ans, sub, "accuracy", targets="c")
  assert r["value"] == pytest.approx(5 / 6)
  assert r["baseline_value"] == pytest.approx(3 / 6)  # majority 'z'
  # per class F1: x 1, y 2*2/(3+2)=0.8, z 2*2/(2+3)=0.8
  assert _score(tmp_path, ans, sub, "f1_macro", targets="c")["value"] == pytest.approx(
      (1 + 0.8 + 0.8) / 3)
  assert _score(tmp_path, ans, sub, "f1_micro", targets="c")["value"] == pytest.approx(5 / 6)
  assert _score(tmp_path, ans, sub, "f1_weighted", targets="c")["value"] == pytest.approx(
      (1 + 2 * 0.8 + 3 * 0.8) / 6)
  # numeric labels: '1' == '1.0'
  ans2 = _write(tmp_path / "b.csv", pd.DataFrame({"id": [1, 2, 3, 4], "t": [1, 0, 1, 1]}))
  sub2 = pd.DataFrame({"id": [1, 2, 3, 4], "t": ["1.0", "0", "0", "1"]})
  assert _score(tmp_path, ans2, sub2, "accuracy", targets="t")["value"] == 0.75
  # binary F1 on class 1: tp 2, fp 0, fn 1 -> 0.8
  assert _score(tmp_path, ans2, sub2, "f1", targets="t")["value"] == pytest.approx(0.8)


def test_qwk_against_formula(tmp_path):
  y = np.array([0, 1, 2, 2, 3, 1])
  p = np.array([0, 2, 2, 1, 3, 0])
  ans = _write(tmp_path / "a.csv", pd.DataFrame({"id": range(6), "k": y}))
  r = _score(tmp_path, ans, pd.DataFrame({"id": range(6), "k": p}), "quadratic_weighted_kappa",
             targets="k")
  n = 4
  obs = np.zeros((n, n))
  for a, b in zip(y, p):
    obs[a, b] += 1
  w = np.array([[(i - j) ** 2 / (n - 1) ** 2 for j in range(n)] for i in range(n)])
  exp = np.outer(obs.sum(1), obs.sum(0)) / obs.sum()
  assert r["metric"] == "qwk"
  assert r["value"] == pytest.approx(1 - (w * obs).sum() / (w * exp).sum())
  bad = _score(tmp_path, ans, pd.DataFrame({"id": range(6), "k": p + 0.5}), "qwk", targets="k")
  assert not bad["valid"] and "integer" in bad["error"]


def test_map_at_3_and_word_jaccard_hand_computed(tmp_path):
  # MAP@3: truth in 1st, 2nd, 3rd place, absent, and a single guess -> 1, 1/2, 1/3, 0, 1.
  ans = _write(tmp_path / "a.csv", pd.DataFrame({"id": range(5), "c": list("ABCDE")}))
  sub = pd.DataFrame({"id": [4, 3, 2, 1, 0], "c": ["E", "A B C", "A B C", "A B C", "A B C"]})
  r = _score(tmp_path, ans, sub, "map@3", targets="c")
  assert r["metric"] == "map_at_3" and r["valid"], r
  assert r["value"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 0 + 1) / 5)
  # Word Jaccard, case-insensitive: {good day} vs {good night} -> 1/3; identical -> 1.
  ans = _write(tmp_path / "j.csv", pd.DataFrame({"id": [0, 1], "t": ["Good day", "so sad"]}))
  r = _score(tmp_path, ans, pd.DataFrame({"id": [0, 1], "t": ["good NIGHT", "so sad"]}),
             "jaccard", targets="t")
  assert r["valid"] and r["value"] == pytest.approx((1 / 3 + 1) / 2)


def test_probability_metrics(tmp_path):
  ans = _write(tmp_path / "a.csv", pd.DataFrame({"id": [1, 2, 3, 4], "t": [0, 0, 1, 1]}))
  sub = pd.DataFrame({"id": [4, 3, 2, 1], "t": [0.8, 0.35, 0.4, 0.1]})
  # pairs (pos, neg): (0.8>0.1)(0.8>0.4)(0.35>0.1)(0.35<0.4) -> 3/4
  assert _score(tmp_path, ans, sub, "roc_auc", targets="t")["value"] == pytest.approx(0.75)
  assert _score(tmp_path, ans, sub, "gini", targets="t")["value"] == pytest.approx(0.5)
  ll = -np.mean([np.log(0.9), np.log(0.6), np.log(0.35), np.log(0.8)])
  r = _score(tmp_path, ans, sub, "log_loss", targets="t")
  assert r["value"] == pytest.approx(ll) and not r["higher_is_better"]
  assert r["baseline_value"] == pytest.approx(np.log(2))  # prior 0.5
  out_of_range = _score(tmp_path, ans, sub.assign(t=[1.2, 0, 0, 0]), "roc_auc", targets="t")
  assert not out_of_range["valid"] and "[0, 1]" in out_of_range["error"]


def test_multi_target_auc_and_one_hot_log_loss(tmp_path):
  ans = pd.DataFrame({"id": [1, 2, 3, 4], "A": [1, 0, 0, 1], "B": [0, 1, 0, 0],
                      "C": [0, 0, 1, 0]})
  a = _write(tmp_path / "a.csv", ans)
  probs = pd.DataFrame({"id": [1, 2, 3, 4], "A": [0.7, 0.2, 0.1, 0.3],
                        "B": [0.2, 0.5, 0.3, 0.3], "C": [0.1, 0.3, 0.6, 0.4]})
  r = _score(tmp_path, a, probs, "roc_auc", targets=["A", "B", "C"])
  # A: pos {0.7,0.3} neg {0.2,0.1}: 4/4; B: pos {0.5} neg {0.2,0.3,0.3}: 1; C: pos {.6}: 1
  assert r["value"] == pytest.approx(1.0)
  r = _score(tmp_path, a, probs, "log_loss", targets=["A", "B", "C"])
  assert r["value"] == pytest.approx(-np.mean(np.log([0.7, 0.5, 0.6, 0.3])))
  reg = _score(tmp_path, a, probs, "mcrmse", targets=["A", "B", "C"])
  exp = np.mean([np.sqrt(np.mean((probs[c] - ans[c]) ** 2)) for c in "ABC"])
  assert reg["value"] == pytest.approx(exp)


def test_unknown_metric():
  with pytest.raises(ValueError, match="unsupported DSBench metric 'ndcg'"):
    dsbench.metric_spec("ndcg")
  assert dsbench.metric_spec("QWK").name == "qwk"


def _make_layout(root):
  """A tiny original-layout DSBench root (reference-style ./data/DSBench/data/ paths)."""
  d = root / "data_resplit" / "toy"
  a = root / "answers" / "toy"
  d.mkdir(parents=True)
  a.mkdir(parents=True)
  pd.DataFrame({"Id": [1, 2, 3], "x": [1, 2, 3], "y": [2, 4, 6]}).to_csv(d / "train.csv",
                                                                         index=False)
  pd.DataFrame({"Id": [4, 5], "x": [4, 5]}).to_csv(d / "test.csv", index=False)
  pd.DataFrame({"Id": [4, 5], "y": [8, 10]}).to_csv(a / "test_answer.csv", index=False)
  rec = {"prompt": "Predict y.", "answer": None, "metadata": {
      "task_id": "toy", "task_type": "data_modeling", "data_type": "classification",
      "train_file": "./data/DSBench/data/data_resplit/toy/train.csv",
      "test_file": "./data/DSBench/data/data_resplit/toy/test.csv",
      "answer_dir": "./data/DSBench/data/answers/toy", "url": "x"}}
  (root / "tasks.json").write_text(json.dumps(rec) + "\n")
  cleaned = {"toy": {"cleaned_prompt": "Task: predict y.", "metric": "RMSE",
                     "task_type": "regression", "target_column": "y", "id_column": "Id"}}
  (root / "cleaned.json").write_text(json.dumps(cleaned))


def test_original_layout_loader_and_score_task(tmp_path):
  _make_layout(tmp_path)
  tasks = dsbench.load_dsbench_tasks(tmp_path, "tasks.json",
                                     cleaned_prompts=str(tmp_path / "cleaned.json"))
  (t,) = tasks
  assert t.task_type == "regression"  # corrected from the mislabelled data_type
  assert t.metadata["data_type"] == "classification"
  assert t.metadata["train_file"] == str(tmp_path / "data_resplit" / "toy" / "train.csv")
  assert t.metadata["answer_file"].endswith("answers/toy/test_answer.csv")
  assert t.metadata["metric"] == "rmse" and t.metadata["target_columns"] == ["y"]
  assert t.prompt.endswith(loaders.PROMPT_SUFFIX)
  sub = _write(tmp_path / "s.csv", pd.DataFrame({"Id": [5, 4], "y": [10, 7]}))
  r = dsbench.score_task(t, sub)
  assert r["valid"] and r["value"] == pytest.approx(math.sqrt(0.5))
  assert r["baseline_value"] == pytest.approx(math.sqrt(((8 - 4) ** 2 + (10 - 4) ** 2) / 2))
  os.remove(tmp_path / "answers" / "toy" / "test_answer.csv")
  with pytest.raises(loaders.DataFormatError, match="answer_file not found"):
    dsbench.load_dsbench_tasks(tmp_path, "tasks.json")
  (t2,) = dsbench.load_dsbench_tasks(tmp_path, "tasks.json", require_files=False)
  with pytest.raises(ValueError, match="lacks"):
    dsbench.score_task(t2, sub)
