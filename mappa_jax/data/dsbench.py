"""DSBench data-modeling tasks: the original layout, submission scoring and fair metrics.

Layout (public DSBench release, and what `dsbench_suite` builds):
  <root>/<tasks>.json                      JSON Lines task records (prompt, answer=null, metadata)
  <root>/data_resplit/<task>/train.csv     features + target(s)
  <root>/data_resplit/<task>/test.csv      features only
  <root>/answers/<task>/test_answer.csv    id column + target column(s)
  optional cleaned-prompt JSON object keyed by task id: {cleaned_prompt, metric, task_type,
  target_column (str or list), id_column}.

Scoring (`score_submission`) fixes the reference's fragile metric code (mappa-reference §10.13):
predictions are JOINED ON THE ID COLUMN (never by position), every declared target column is
scored, and the metric is the task's declared one computed with sklearn.metrics.

Definitions used by the evaluation:
  * success: the submission is valid, i.e. it has the id column and every target column, one
    row per expected test id (no missing and no duplicated ids; extra ids are ignored), and
    every prediction parses for the metric (numbers for numeric metrics, probabilities in
    [0, 1] for roc_auc / log_loss, known labels not required). A run that produced no
    submission is a failure.
  * raw metric: the declared metric over successful runs only.
  * baseline: the metric of a trivial predictor fit on train.csv (or on the answers when no
    train file is given): the majority class for label metrics, the positive-class prior for
    probability metrics, the mean for squared-error/correlation/r2 metrics, the median for
    absolute-error metrics (mae, medae, smape).
  * fair metric: the metric of every run, where a failed run counts as the baseline value.
    Averages of fair metrics are therefore comparable between systems with different success
    rates.
  * normalized gain (unitless, for averaging across tasks): (v - b) / (perfect - b) for
    higher-is-better metrics with a finite perfect score, (b - v) / b for error metrics
    (perfect 0); 0 = baseline, 1 = perfect, negative = worse than baseline.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mappa_jax.data import loaders


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """How a metric reads predictions and which direction is better.

  kind: 'label' (class labels), 'proba' (probabilities), 'value' (numbers).
  perfect: the best possible value (None when unbounded).
  """
  name: str
  kind: str
  higher_is_better: bool
  perfect: float | None


METRICS: dict[str, MetricSpec] = {s.name: s for s in [
    MetricSpec("accuracy", "label", True, 1.0),
    MetricSpec("f1", "label", True, 1.0),
    MetricSpec("f1_macro", "label", True, 1.0),
    MetricSpec("f1_micro", "label", True, 1.0),
    MetricSpec("f1_weighted", "label", True, 1.0),
    MetricSpec("qwk", "label", True, 1.0),
    MetricSpec("map_at_3", "label", True, 1.0),
    MetricSpec("jaccard", "label", True, 1.0),
    MetricSpec("roc_auc", "proba", True, 1.0),
    MetricSpec("normalized_gini", "proba", True, 1.0),
    MetricSpec("log_loss", "proba", False, 0.0),
    MetricSpec("rmse", "value", False, 0.0),
    MetricSpec("mse", "value", False, 0.0),
    MetricSpec("mae", "value", False, 0.0),
    MetricSpec("medae", "value", False, 0.0),
    MetricSpec("rmsle", "value", False, 0.0),
    MetricSpec("mcrmse", "value", False, 0.0),
    MetricSpec("smape", "value", False, 0.0),
    MetricSpec("r2", "value", True, 1.0),
    MetricSpec("pearson", "value", True, 1.0),
    MetricSpec("spearman", "value", True, 1.0),
]}

ALIASES = {
    "acc": "accuracy", "auc": "roc_auc", "roc-auc": "roc_auc", "rocauc": "roc_auc",
    "logloss": "log_loss", "cross_entropy": "log_loss", "quadratic_weighted_kappa": "qwk",
    "kappa": "qwk", "gini": "normalized_gini", "medae": "medae",
    "median_absolute_error": "medae", "mean_absolute_error": "mae",
    "root_mean_squared_error": "rmse", "mean_squared_error": "mse", "f1_score": "f1",
    "r2_score": "r2", "mean_columnwise_rmse": "mcrmse", "map@3": "map_at_3", "map3": "map_at_3",
    "mapk": "map_at_3", "word_jaccard": "jaccard",
}


def metric_spec(metric: str) -> MetricSpec:
  """The MetricSpec of a declared metric name (case-insensitive, common aliases)."""
  key = metric.strip().lower().replace(" ", "_")
  key = ALIASES.get(key, key)
  if key not in METRICS:
    raise ValueError(f"unsupported DSBench metric '{metric}'; supported: {sorted(METRICS)} "
                     f"(aliases: {sorted(ALIASES)})")
  return METRICS[key]


def _smape(y: np.ndarray, p: np.ndarray) -> float:
  # Kaggle's SMAPE in percent; 0/0 terms count as 0.
  den = np.abs(y) + np.abs(p)
  ratio = np.where(den == 0, 0.0, 2.0 * np.abs(p - y) / np.where(den == 0, 1.0, den))
  return float(100.0 * ratio.mean())


def _corr(fn, y: np.ndarray, p: np.ndarray) -> float:
  if np.std(p) == 0 or np.std(y) == 0:
    return 0.0  # a constant prediction carries no ranking information
  return float(fn(y, p)[0])


def _value_metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if name in ("rmse", "mcrmse"):
    return float(skm.root_mean_squared_error(y, p))
  if name == "mse":
    return float(skm.mean_squared_error(y, p))
  if name == "mae":
    return float(skm.mean_absolute_error(y, p))
  if name == "medae":
    return float(skm.median_absolute_error(y, p))
  if name == "rmsle":
    if (p < 0).any() or (y < 0).any():
      raise ValueError("rmsle needs non-negative predictions")
    return float(skm.root_mean_squared_log_error(y, p))
  if name == "smape":
    return _smape(y, p)
  if name == "r2":
    return float(skm.r2_score(y, p))
  if name == "pearson":
    return _corr(stats.pearsonr, y, p)
  if name == "spearman":
    return _corr(stats.spearmanr, y, p)
  raise ValueError(name)


def _label_key(values: pd.Series) -> pd.Series:
  """Comparable labels: numbers as canonical floats ('1' == '1.0' == 1), else stripped text."""
  num = pd.to_numeric(values, errors="coerce")
  if num.notna().all():
    return num.astype(float).map(repr)
  return values.astype(str).str.strip()


def _average_precision_at_3(truth: str, guesses: str) -> float:
  # Kaggle MAP@3: a prediction is up to 3 space-separated labels, best first.
  for rank, guess in enumerate(str(guesses).split()[:3]):
    if guess == str(truth).strip():
      return 1.0 / (rank + 1)
  return 0.0


def _word_jaccard(truth: str, pred: str) -> float:
  # Kaggle tweet-sentiment-extraction: Jaccard of lower-cased word sets (two empty texts agree).
  a, b = set(str(truth).lower().split()), set(str(pred).lower().split())
  if not a and not b:
    return 1.0
  return len(a & b) / len(a | b)


def _label_metric(name: str, y: pd.Series, p: pd.Series) -> float:
  if name == "map_at_3":
    return float(np.mean([_average_precision_at_3(t, g) for t, g in zip(y, p)]))
  if name == "jaccard":
    return float(np.mean([_word_jaccard(t, q) for t, q in zip(y.fillna(""), p.fillna(""))]))
  if name == "qwk":
    yi, pi = pd.to_numeric(y, errors="coerce"), pd.to_numeric(p, errors="coerce")
    if pi.isna().any() or (pi != np.round(pi)).any():
      raise ValueError("qwk needs integer class predictions")
    return float(skm.cohen_kappa_score(yi.astype(int), pi.astype(int), weights="quadratic"))
  yk, pk = _label_key(y), _label_key(p)
  if name == "accuracy":
    return float(skm.accuracy_score(yk, pk))
  if name == "f1":
    classes = sorted(set(yk))
    if len(classes) <= 2:
      # Positive class: '1'/'1.0'/'True'-like when present, else the last label in sort order.
      pos = next((c for c in classes if c in ("1.0", "True", "true", "yes", "Yes")), classes[-1])
      return float(skm.f1_score(yk, pk, average="binary", pos_label=pos))
    return float(skm.f1_score(yk, pk, average="weighted"))
  average = name.split("_", 1)[1]
  return float(skm.f1_score(yk, pk, average=average))


def _proba_metric(name: str, y: pd.DataFrame, p: pd.DataFrame) -> float:
  pv = p.apply(pd.to_numeric, errors="coerce").to_numpy(float)
  if np.isnan(pv).any():
    raise ValueError("non-numeric probability")
  if ((pv < 0) | (pv > 1)).any():
    raise ValueError("probabilities must lie in [0, 1]")
  yv = y.apply(pd.to_numeric, errors="coerce").to_numpy(float)
  if np.isnan(yv).any():
    raise ValueError("answer file has non-numeric labels for a probability metric")
  if name == "log_loss":
    if yv.shape[1] == 1:
      return float(skm.log_loss(yv[:, 0], pv[:, 0], labels=[0, 1]))
    # One-hot truth columns (e.g. winner_model_a / _b / tie): multiclass log loss.
    return float(skm.log_loss(yv.argmax(1), pv, labels=list(range(yv.shape[1]))))
  aucs = []
  for j in range(yv.shape[1]):  # multi-target: mean column-wise AUC (Kaggle convention)
    if len(np.unique(yv[:, j])) < 2:
      raise ValueError(f"answer column {j} has a single class; AUC undefined")
    aucs.append(skm.roc_auc_score(yv[:, j], pv[:, j]))
  auc = float(np.mean(aucs))
  return 2.0 * auc - 1.0 if name == "normalized_gini" else auc


def compute_metric(metric: str, y_true: pd.DataFrame, y_pred: pd.DataFrame) -> float:
  """The declared metric between aligned frames ([N, T] each; same column order)."""
  spec = metric_spec(metric)
  if spec.kind == "proba":
    return _proba_metric(spec.name, y_true, y_pred)
  if spec.kind == "label":
    vals = [_label_metric(spec.name, y_true.iloc[:, j], y_pred.iloc[:, j])
            for j in range(y_true.shape[1])]
    return float(np.mean(vals))
  yv = y_true.apply(pd.to_numeric, errors="coerce").to_numpy(float)
  pv = y_pred.apply(pd.to_numeric, errors="coerce").to_numpy(float)
  if np.isnan(pv).any() or not np.isfinite(pv).all():
    raise ValueError("non-numeric or non-finite prediction")
  if np.isnan(yv).any():
    raise ValueError("answer file has non-numeric targets for a regression metric")
  # Multi-target: mean of the column-wise metric (MCRMSE, column-wise RMSLE, ...).
  return float(np.mean([_value_metric(spec.name, yv[:, j], pv[:, j])
                        for j in range(yv.shape[1])]))


def baseline_predictions(reference: pd.DataFrame, target_columns: Sequence[str], metric: str,
                         n: int) -> pd.DataFrame:
  """n rows of the trivial predictor fit on `reference` (train.csv or the answers).

  Majority class (label metrics), positive-class prior (probability metrics), median
  (mae/medae/smape) or mean (everything else).
  """
  spec = metric_spec(metric)
  out = {}
  for col in target_columns:
    y = reference[col]
    if spec.kind == "label":
      counts = y.astype(str).value_counts()
      top = sorted(counts[counts == counts.max()].index)[0]  # ties: smallest label
      value = y[y.astype(str) == top].iloc[0]
    elif spec.kind == "proba":
      value = float(pd.to_numeric(y).mean())
    elif spec.name in ("mae", "medae", "smape"):
      value = float(pd.to_numeric(y).median())
    else:
      value = float(pd.to_numeric(y).mean())
    out[col] = [value] * n
  return pd.DataFrame(out)


def _read_csv(path: str, id_column: str, what: str) -> pd.DataFrame:
  try:
    df = pd.read_csv(path, dtype={id_column: str}, keep_default_na=True)
  except FileNotFoundError as e:
    raise ValueError(f"{what} not found: {path}") from e
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise ValueError(f"{what} is not a readable CSV ({path}): {e}") from e
  df.columns = [str(c).strip() for c in df.columns]
  return df


def _baseline(answers: pd.DataFrame, metric: str, id_column: str, targets: list[str],
              train_csv: str | os.PathLike | None) -> float:
  reference = answers
  if train_csv is not None:
    reference = _read_csv(os.fspath(train_csv), id_column, "train file")
    lacking = [c for c in targets if c not in reference.columns]
    if lacking:
      raise ValueError(f"train file {train_csv} lacks target column(s) {lacking}")
  base_pred = baseline_predictions(reference, targets, metric, len(answers))
  return compute_metric(metric, answers[targets].reset_index(drop=True), base_pred)


def baseline_score(answer_csv: str | os.PathLike, *, metric: str, id_column: str,
                   target_columns: str | Sequence[str],
                   train_csv: str | os.PathLike | None = None) -> float:
  """The trivial baseline's metric value on the answers (see the module docstring)."""
  targets = [target_columns] if isinstance(target_columns, str) else list(target_columns)
  answers = _read_csv(os.fspath(answer_csv), id_column, "answer file")
  return _baseline(answers, metric_spec(metric).name, id_column, targets, train_csv)


def score_submission(submission_csv: str | os.PathLike, answer_csv: str | os.PathLike, *,
                     metric: str, id_column: str, target_columns: str | Sequence[str],
                     train_csv: str | os.PathLike | None = None) -> dict[str, Any]:
  """Scores a submission CSV against the answers, joined on the id column.

  Args:
    submission_csv: the agent's file (id column + target column(s)).
    answer_csv: ground truth (id column + target column(s)).
    metric: declared metric name (see METRICS / ALIASES).
    id_column: join key.
    target_columns: one column name or a list (multi-target).
    train_csv: when given, the baseline is fit on it; else on the answers.

  Returns:
    {'valid', 'error', 'metric', 'value', 'baseline_value', 'higher_is_better',
     'n_predictions', 'n_expected'} (+ 'fair_value', 'normalized_gain'). `value` is NaN
    when invalid; see the module docstring for the definitions.
  """
  spec = metric_spec(metric)
  targets = [target_columns] if isinstance(target_columns, str) else list(target_columns)
  answers = _read_csv(os.fspath(answer_csv), id_column, "answer file")
  missing_cols = [c for c in [id_column, *targets] if c not in answers.columns]
  if missing_cols:
    raise ValueError(f"answer file {answer_csv} lacks columns {missing_cols}")
  answers[id_column] = answers[id_column].str.strip()
  baseline = _baseline(answers, spec.name, id_column, targets, train_csv)
  result: dict[str, Any] = {
      "valid": False, "error": "", "metric": spec.name, "value": float("nan"),
      "baseline_value": baseline, "higher_is_better": spec.higher_is_better,
      "n_predictions": 0, "n_expected": int(len(answers))}

  def fail(msg: str) -> dict[str, Any]:
    result["error"] = msg
    result["fair_value"] = baseline
    result["normalized_gain"] = 0.0
    return result

  try:
    sub = _read_csv(os.fspath(submission_csv), id_column, "submission")
  except ValueError as e:
    return fail(str(e))
  result["n_predictions"] = int(len(sub))
  if id_column not in sub.columns:
    return fail(f"submission lacks the id column '{id_column}' (columns: {list(sub.columns)})")
  lacking = [c for c in targets if c not in sub.columns]
  if lacking:
    return fail(f"submission lacks target column(s) {lacking} (columns: {list(sub.columns)})")
  sub[id_column] = sub[id_column].astype(str).str.strip()
  dup = sub[id_column][sub[id_column].duplicated()]
  if len(dup):
    return fail(f"submission has {len(dup)} duplicated id(s), e.g. {dup.iloc[0]!r}")
  merged = answers[[id_column, *targets]].merge(
      sub[[id_column, *targets]], on=id_column, how="left", suffixes=("", "__pred"),
      indicator=True)
  n_missing = int((merged["_merge"] == "left_only").sum())
  if n_missing:
    example = merged.loc[merged["_merge"] == "left_only", id_column].iloc[0]
    return fail(f"submission misses {n_missing} of {len(answers)} test ids, e.g. {example!r}")
  pred = merged[[f"{c}__pred" for c in targets]]
  if pred.isna().any().any():
    return fail(f"submission has {int(pred.isna().sum().sum())} empty prediction(s)")
  pred.columns = targets
  try:
    value = compute_metric(spec.name, merged[targets], pred)
  except ValueError as e:
    return fail(f"invalid predictions for {spec.name}: {e}")
  if not math.isfinite(value):
    return fail(f"{spec.name} is not finite ({value})")
  result.update(valid=True, value=value, fair_value=value,
                normalized_gain=normalized_gain(value, baseline, spec.name))
  return result


def normalized_gain(value: float, baseline: float, metric: str) -> float:
  """Unitless improvement over the baseline (see the module docstring); 0 when undefined."""
  spec = metric_spec(metric)
  if not math.isfinite(value) or not math.isfinite(baseline):
    return 0.0
  if spec.higher_is_better:
    if spec.perfect is None or spec.perfect == baseline:
      return 0.0
    return (value - baseline) / (spec.perfect - baseline)
  if baseline == 0:
    return 0.0
  return (baseline - value) / baseline


# ---------------------------------------------------------------------------------------------
# Original-layout loader


def _resolve(root: str, path: str | None, fallback: str) -> str:
  if path:
    rel = path[2:] if path.startswith("./") else path
    candidates = [rel if os.path.isabs(rel) else os.path.join(root, rel)]
    # The reference's metadata points at ./data/DSBench/data/...: also try below root.
    marker = "data_resplit/" if "data_resplit/" in rel else "answers/"
    if marker in rel:
      candidates.append(os.path.join(root, rel[rel.index(marker):]))
    for c in candidates:
      if os.path.exists(c):
        return os.path.abspath(c)
  return os.path.abspath(os.path.join(root, fallback))


def load_cleaned_prompts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """The cleaned-prompt JSON object keyed by task id (metric, target/id columns, task type)."""
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise loaders.DataFormatError(f"{path}: expected a JSON object keyed by task id")
  return data


def load_dsbench_tasks(root: str | os.PathLike, tasks_file: str | os.PathLike, *,
                       cleaned_prompts: dict[str, dict[str, Any]] | str | None = None,
                       require_files: bool = True, add_prompt_suffix: bool = True,
                       on_error: loaders.OnError = "raise") -> list[loaders.Task]:
  """DSBench tasks from the original layout, with resolved file paths and scoring fields.

  Args:
    root: the DSBench data root (holds data_resplit/ and answers/).
    tasks_file: JSON Lines task records (relative paths are taken below root).
    cleaned_prompts: dict or path of the cleaned-prompt object; it supplies metric,
      target_column, id_column and the corrected task_type (the reference metadata mislabels six
      data_type values). Records may also carry these in their own metadata.
    require_files: raise when train/test/answer files are missing (else keep the task).

  Returns:
    Tasks whose metadata holds absolute 'train_file', 'test_file', 'answer_file', and
    'metric', 'id_column', 'target_columns' (list), 'higher_is_better', 'cleaned_prompt'
    (or None), 'data_type' (original label).
  """
  root = os.fspath(root)
  tasks_file = os.fspath(tasks_file)
  if not os.path.isabs(tasks_file) and not os.path.exists(tasks_file):
    tasks_file = os.path.join(root, tasks_file)
  if isinstance(cleaned_prompts, (str, os.PathLike)):
    cleaned_prompts = load_cleaned_prompts(cleaned_prompts)
  cleaned_prompts = cleaned_prompts or {}
  raw = loaders.load_tasks(tasks_file, allow_null_answer=True, add_prompt_suffix=add_prompt_suffix,
                           on_error=on_error)
  out = []
  for t in raw:
    meta = dict(t.metadata)
    info = {**{k: meta[k] for k in ("metric", "target_column", "id_column", "task_type_clean")
               if k in meta}, **cleaned_prompts.get(t.task_id, {})}
    meta["train_file"] = _resolve(root, meta.get("train_file"),
                                  f"data_resplit/{t.task_id}/train.csv")
    meta["test_file"] = _resolve(root, meta.get("test_file"), f"data_resplit/{t.task_id}/test.csv")
    answer_dir = _resolve(root, meta.get("answer_dir"), f"answers/{t.task_id}")
    meta["answer_dir"] = answer_dir
    meta["answer_file"] = os.path.join(answer_dir, "test_answer.csv")
    if require_files:
      for key in ("train_file", "test_file", "answer_file"):
        if not os.path.exists(meta[key]):
          raise loaders.DataFormatError(
              f"{tasks_file}:{meta.get('line')}: task '{t.task_id}': {key} not found at "
              f"{meta[key]} (pass the DSBench root that holds data_resplit/ and answers/, or "
              "require_files=False)")
    target = info.get("target_column")
    meta["target_columns"] = [target] if isinstance(target, str) else (list(target or []))
    meta["id_column"] = info.get("id_column")
    meta["metric"] = metric_spec(info["metric"]).name if info.get("metric") else None
    meta["higher_is_better"] = (metric_spec(info["metric"]).higher_is_better
                                if info.get("metric") else None)
    meta["cleaned_prompt"] = info.get("cleaned_prompt")
    task_type = info.get("task_type") or meta.get("data_type") or "data_modeling"
    out.append(dataclasses.replace(t, task_type=str(task_type), metadata=meta))
  return out


def score_task(task: loaders.Task, submission_csv: str | os.PathLike, *,
               baseline_from_train: bool = True) -> dict[str, Any]:
  """`score_submission` with the metric, columns and files from a DSBench task's metadata."""
  m = task.metadata
  missing = [k for k in ("metric", "id_column", "target_columns", "answer_file") if not m.get(k)]
  if missing:
    raise ValueError(f"task '{task.task_id}' lacks {missing} in its metadata (load it with "
                     "cleaned prompts or from a suite that declares them)")
  return score_submission(submission_csv, m["answer_file"], metric=m["metric"],
                          id_column=m["id_column"], target_columns=m["target_columns"],
                          train_csv=m.get("train_file") if baseline_from_train else None)
