"""An offline DSBench-style suite built from datasets that install from PyPI.

    python -m mappa_jax.data.dsbench_suite build DIR [--only TASK ...]

writes the original DSBench layout (see `dsbench.py`):
  DIR/tasks.jsonl, DIR/train_tasks.jsonl, DIR/eval_tasks.jsonl   DSBench-format task records
  DIR/cleaned_prompts.json                                       metric / columns / task type
  DIR/data_resplit/<task>/{train.csv, test.csv, sample_submission.csv}
  DIR/answers/<task>/test_answer.csv
  DIR/manifest.json                                              tasks, sources, sha256 of files

Sources: scikit-learn's bundled datasets, statsmodels' bundled datasets and `palmerpenguins`
(optional: its two tasks are left out, and listed as skipped in the manifest, when it is not
installed). Classification and regression are balanced. Every description is written for this
project in the Kaggle style. The build is deterministic: fixed per-task seeds, sorted keys and
fixed CSV formatting, so building twice gives identical bytes (with the same library versions).
`sample_submission.csv` is the trivial baseline (majority / prior / mean / median from train).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mappa_jax.data import dsbench

_EVAL_TASKS = ("breast-cancer-diagnosis", "party-identification", "diabetes-progression",
               "school-math-performance")


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  """One suite task: where the data comes from and how it is judged."""
  task_id: str
  data_type: str  # 'classification' | 'regression'
  metric: str
  id_column: str
  target_columns: tuple[str, ...]
  source: str
  load: Callable[[], pd.DataFrame]  # features + targets, no id column
  title: str
  overview: str
  fields: dict[str, str]
  seed: int
  max_rows: int | None = None
  test_fraction: float = 0.25


# ---------------------------------------------------------------------------------------------
# Data sources (each returns a DataFrame with feature and target columns)


def _sklearn(name: str, target: str, target_names: bool = False, **kwargs) -> pd.DataFrame:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  bunch = getattr(datasets, f"load_{name}")(as_frame=True, **kwargs)
  df = bunch.frame.copy()
  tcol = bunch.target.name if hasattr(bunch.target, "name") else None
  if tcol is not None and tcol in df.columns:
    y = df.pop(tcol)
    df[target] = np.asarray(bunch.target_names)[y.to_numpy()] if target_names else y
  return df


def _iris() -> pd.DataFrame:
  df = _sklearn("iris", "species", target_names=True)
  df.columns = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm",
                "species"]
  return df


def _wine() -> pd.DataFrame:
  df = _sklearn("wine", "cultivar")
  df["cultivar"] = df["cultivar"].astype(int) + 1
  return df


def _breast_cancer() -> pd.DataFrame:
  df = _sklearn("breast_cancer", "malignant")
  df["malignant"] = 1 - df["malignant"].astype(int)  # sklearn: 0 = malignant
  df.columns = [c.replace(" ", "_") for c in df.columns]
  return df


def _digits() -> pd.DataFrame:
  df = _sklearn("digits", "digit")
  df.columns = [c.replace("pixel_", "px") for c in df.columns]
  return df.astype(int)


def _diabetes() -> pd.DataFrame:
  return _sklearn("diabetes", "progression", scaled=False)


def _linnerud() -> pd.DataFrame:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  b = datasets.load_linnerud(as_frame=True)
  return pd.concat([b.data, b.target], axis=1)


def _statsmodels(name: str) -> pd.DataFrame:
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return getattr(sm.datasets, name).load_pandas().data.copy()


def _fair() -> pd.DataFrame:
  df = _statsmodels("fair")
  df["had_affair"] = (df.pop("affairs") > 0).astype(int)
  return df


def _anes_vote() -> pd.DataFrame:
  df = _statsmodels("anes96").drop(columns=["logpopul"])
  df["vote"] = df["vote"].astype(int)
  return df


def _anes_party() -> pd.DataFrame:
  df = _statsmodels("anes96").drop(columns=["logpopul"])
  df["party_id"] = df.pop("PID").astype(int)
  return df


def _grunfeld() -> pd.DataFrame:
  df = _statsmodels("grunfeld")
  df["year"] = df["year"].astype(int)
  return df[["firm", "year", "value", "capital", "invest"]]


def _randhie() -> pd.DataFrame:
  return _statsmodels("randhie")


def _star98() -> pd.DataFrame:
  df = _statsmodels("star98")
  above, below = df.pop("NABOVE"), df.pop("NBELOW")
  df["pass_rate"] = (above / (above + below)).round(6)
  return df


def _engel() -> pd.DataFrame:
  return _statsmodels("engel")[["income", "foodexp"]]


def _macro() -> pd.DataFrame:
  df = _statsmodels("macrodata")
  df["year"], df["quarter"] = df["year"].astype(int), df["quarter"].astype(int)
  return df


def _penguins() -> pd.DataFrame:
  import palmerpenguins  # pylint: disable=g-import-not-at-top
  return palmerpenguins.load_penguins()


def _penguins_species() -> pd.DataFrame:
  df = _penguins()
  df["species"] = df.pop("species")
  return df


def _penguins_mass() -> pd.DataFrame:
  df = _penguins()
  df = df[df["body_mass_g"].notna()].reset_index(drop=True)
  df["body_mass_g"] = df.pop("body_mass_g")
  return df


# ---------------------------------------------------------------------------------------------
# The suite

_T = SuiteTask
SUITE: tuple[SuiteTask, ...] = (
    _T("iris-species", "classification", "accuracy", "id", ("species",), "sklearn iris",
       _iris, "Iris Species Classification",
       "Botanists measured the sepals and petals of iris flowers from three species. Predict the "
       "species of each flower in the test set from its four measurements.",
       {"sepal_length_cm": "sepal length (cm)", "sepal_width_cm": "sepal width (cm)",
        "petal_length_cm": "petal length (cm)", "petal_width_cm": "petal width (cm)",
        "species": "setosa, versicolor or virginica (TARGET)"}, seed=101),
    _T("wine-cultivar", "classification", "f1_macro", "sample_id", ("cultivar",),
       "sklearn wine", _wine, "Wine Cultivar Recognition",
       "Chemical analysis of wines grown in one region of Italy from three cultivars. Identify "
       "the cultivar (1, 2 or 3) of each wine from its 13 chemical constituents.",
       {"alcohol ... proline": "13 chemical measurements of the wine",
        "cultivar": "1, 2 or 3 (TARGET)"}, seed=102),
    _T("breast-cancer-diagnosis", "classification", "roc_auc", "id", ("malignant",),
       "sklearn breast_cancer", _breast_cancer, "Breast Mass Diagnosis",
       "Features were computed from digitized images of fine needle aspirates of breast masses "
       "and describe the cell nuclei. Predict the probability that each mass is malignant.",
       {"mean_radius ... worst_fractal_dimension": "30 nucleus shape and texture statistics",
        "malignant": "1 = malignant, 0 = benign (TARGET; submit a probability)"}, seed=103),
    _T("digits-recognition", "classification", "accuracy", "ImageId", ("digit",),
       "sklearn digits", _digits, "Handwritten Digit Recognition (8x8)",
       "Each row is an 8x8 image of a handwritten digit, flattened to 64 grey levels (0-16). "
       "Predict which digit (0-9) each image shows.",
       {"px0_0 ... px7_7": "grey level of the pixel at row/column (0-16)",
        "digit": "0-9 (TARGET)"}, seed=104),
    _T("affairs-prediction", "classification", "log_loss", "id", ("had_affair",),
       "statsmodels fair", _fair, "Marital Survey: Extramarital Affairs",
       "A 1974 magazine survey of married women asked about their marriage and background. "
       "Predict the probability that a respondent reported any extramarital affair.",
       {"rate_marriage": "marriage rating, 1 (very poor) to 5 (very good)", "age": "age",
        "yrs_married": "years married", "children": "number of children",
        "religious": "religiousness, 1 (not) to 4 (strongly)", "educ": "education level",
        "occupation": "own occupation code (1-6)", "occupation_husb": "husband's occupation",
        "had_affair": "1 if any affair was reported (TARGET; submit a probability)"}, seed=105),
    _T("election-vote-1996", "classification", "f1", "respondent_id", ("vote",),
       "statsmodels anes96", _anes_vote, "1996 US Presidential Vote Intention",
       "Respondents of the 1996 American National Election Study described their politics and "
       "background. Predict each respondent's expected vote: 0 = Clinton, 1 = Dole.",
       {"popul": "census place population (1000s)", "TVnews": "TV news days per week",
        "selfLR / ClinLR / DoleLR": "left-right placement of self, Clinton, Dole (1-7)",
        "PID": "party identification, 0 (strong Democrat) to 6 (strong Republican)",
        "age": "age", "educ": "education level (1-7)", "income": "household income band (1-24)",
        "vote": "0 = Clinton, 1 = Dole (TARGET)"}, seed=106),
    _T("party-identification", "classification", "qwk", "respondent_id", ("party_id",),
       "statsmodels anes96", _anes_party, "Party Identification (ordinal)",
       "From the 1996 American National Election Study, predict each respondent's party "
       "identification on the 7-point scale from 0 (strong Democrat) to 6 (strong Republican).",
       {"popul, TVnews, selfLR, ClinLR, DoleLR, age, educ, income": "as in the ANES codebook",
        "vote": "expected vote, 0 = Clinton, 1 = Dole",
        "party_id": "integer 0-6 (TARGET)"}, seed=107),
    _T("penguin-species", "classification", "f1_weighted", "id", ("species",),
       "palmerpenguins", _penguins_species, "Palmer Penguins Species",
       "Size measurements of adult penguins near Palmer Station, Antarctica. Predict the species "
       "(Adelie, Chinstrap, Gentoo). Some measurements are missing.",
       {"island": "Biscoe, Dream or Torgersen", "bill_length_mm": "bill length",
        "bill_depth_mm": "bill depth", "flipper_length_mm": "flipper length",
        "body_mass_g": "body mass", "sex": "male/female", "year": "study year",
        "species": "Adelie, Chinstrap or Gentoo (TARGET)"}, seed=108),
    _T("diabetes-progression", "regression", "rmse", "id", ("progression",),
       "sklearn diabetes", _diabetes, "Diabetes Disease Progression",
       "Ten baseline variables were recorded for diabetes patients. Predict a quantitative "
       "measure of disease progression one year after baseline.",
       {"age, sex, bmi, bp": "age, sex, body mass index, mean blood pressure",
        "s1 ... s6": "six blood serum measurements",
        "progression": "disease progression after one year (TARGET)"}, seed=201),
    _T("linnerud-fitness", "regression", "mcrmse", "id", ("Weight", "Waist", "Pulse"),
       "sklearn linnerud", _linnerud, "Linnerud Exercise and Physiology (multi-target)",
       "Twenty middle-aged men did three exercises. Predict their weight, waist and pulse from "
       "the exercise counts. Scored by the mean column-wise RMSE over the three targets.",
       {"Chins, Situps, Jumps": "exercise repetitions",
        "Weight, Waist, Pulse": "pounds, inches, beats per minute (TARGETS)"}, seed=202),
    _T("grunfeld-investment", "regression", "rmsle", "row_id", ("invest",),
       "statsmodels grunfeld", _grunfeld, "Grunfeld Corporate Investment",
       "Yearly data (1935-1954) on large US firms. Predict each firm-year's gross investment.",
       {"firm": "company name", "year": "year", "value": "market value of the firm",
        "capital": "stock of plant and equipment", "invest": "gross investment (TARGET)"},
       seed=203),
    _T("doctor-visits", "regression", "mae", "person_id", ("mdvis",),
       "statsmodels randhie", _randhie, "RAND Health Insurance: Doctor Visits",
       "From the RAND Health Insurance Experiment, predict each person's number of outpatient "
       "visits to a doctor in a year from the insurance plan and health status.",
       {"lncoins": "ln(coinsurance + 1)", "idp": "1 if individual deductible plan",
        "lpi": "ln participation incentive", "fmde": "ln max expenditure term",
        "physlm": "1 if physical limitation", "disea": "number of chronic diseases",
        "hlthg / hlthf / hlthp": "self-rated health good / fair / poor",
        "mdvis": "number of outpatient visits (TARGET)"}, seed=204, max_rows=4000),
    _T("school-math-performance", "regression", "r2", "county_id", ("pass_rate",),
       "statsmodels star98", _star98, "California Schools: Math Results",
       "County-level data on California schools (1998). Predict the share of students above the "
       "national median in mathematics.",
       {"LOWINC ... PCTYRRND": "demographics, teachers, spending, programmes (percent/ratios)",
        "interaction columns": "products of the base variables",
        "pass_rate": "students above the national median / all tested (TARGET)"}, seed=205),
    _T("food-expenditure", "regression", "medae", "household_id", ("foodexp",),
       "statsmodels engel", _engel, "Engel Food Expenditure",
       "Household budget data from 19th-century Belgium. Predict annual food expenditure from "
       "household income.",
       {"income": "annual household income (Belgian francs)",
        "foodexp": "annual food expenditure (TARGET)"}, seed=206),
    _T("us-macro-investment", "regression", "smape", "quarter_id", ("realinv",),
       "statsmodels macrodata", _macro, "US Macroeconomy: Real Investment",
       "Quarterly US macroeconomic series, 1959-2009. Predict real private investment for the "
       "held-out quarters. Scored by SMAPE (percent).",
       {"year, quarter": "period", "realgdp, realcons, realgovt, realdpi": "real aggregates",
        "cpi, m1, tbilrate, unemp, pop, infl, realint": "prices, money, rates, population",
        "realinv": "real gross private investment (TARGET)"}, seed=207),
    _T("penguin-body-mass", "regression", "rmse", "id", ("body_mass_g",),
       "palmerpenguins", _penguins_mass, "Palmer Penguins Body Mass",
       "Predict the body mass (grams) of penguins near Palmer Station, Antarctica, from species, "
       "island, sex and bill/flipper measurements. Some measurements are missing.",
       {"species, island, sex, year": "categorical descriptors",
        "bill_length_mm, bill_depth_mm, flipper_length_mm": "measurements",
        "body_mass_g": "body mass in grams (TARGET)"}, seed=208),
)

_METRIC_TEXT = {
    "accuracy": "accuracy (the share of exactly correct labels) - higher is better",
    "f1_macro": "macro-averaged F1 score over the classes - higher is better",
    "f1_weighted": "support-weighted F1 score over the classes - higher is better",
    "f1": "F1 score of the positive class (1) - higher is better",
    "qwk": "quadratic weighted kappa between predicted and true integer labels - higher is better",
    "roc_auc": "area under the ROC curve of the predicted probability - higher is better",
    "log_loss": "binary log loss of the predicted probability - lower is better",
    "rmse": "root mean squared error - lower is better",
    "mcrmse": "mean column-wise root mean squared error - lower is better",
    "rmsle": "root mean squared logarithmic error - lower is better",
    "mae": "mean absolute error - lower is better",
    "medae": "median absolute error - lower is better",
    "r2": "coefficient of determination (R^2) - higher is better",
    "smape": "symmetric mean absolute percentage error (percent) - lower is better",
}


def _description(t: SuiteTask, test_ids: Sequence[str], example: pd.DataFrame) -> str:
  header = ",".join([t.id_column, *t.target_columns])
  rows = [",".join([str(test_ids[i]), *[_fmt(v) for v in example.iloc[i]]])
          for i in range(min(3, len(test_ids)))]
  fields = "\n".join(f"- {k}: {v}" for k, v in t.fields.items())
  return (
      f"{t.title}\n\nOverview\n{t.overview}\n\nEvaluation\nSubmissions are evaluated on the "
      f"{_METRIC_TEXT[t.metric]}.\n\nSubmission File\nFor each {t.id_column} in the test set, "
      f"predict {', '.join(t.target_columns)}. The file should contain a header and have the "
      f"following format:\n\n{header}\n" + "\n".join(rows) + "\netc.\n\nDataset Description\n"
      f"Files\n- train.csv - the training set, with the target\n- test.csv - the test set; "
      f"predict the target for each {t.id_column}\n- sample_submission.csv - a sample submission "
      f"file in the correct format\n\nData Fields\n- {t.id_column}: row identifier\n{fields}\n\n"
      f"Source: {t.source} (installed from PyPI).")


def _fmt(v) -> str:
  return f"{v:.6g}" if isinstance(v, float) else str(v)


def _to_csv(df: pd.DataFrame, path: str) -> None:
  # Default float formatting is the shortest round-trip repr: exact and deterministic.
  df.to_csv(path, index=False, lineterminator="\n")


def _available(t: SuiteTask) -> str | None:
  """None if the task's source is installed, else why not."""
  if t.source == "palmerpenguins":
    try:
      import palmerpenguins  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      return "palmerpenguins is not installed (pip install palmerpenguins)"
  if t.source.startswith("statsmodels"):
    try:
      import statsmodels  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      return "statsmodels is not installed (pip install statsmodels)"
  return None


def build_task(t: SuiteTask, root: str) -> dict:
  """Writes one task's CSVs and returns its task record (DSBench format)."""
  df = t.load().reset_index(drop=True)
  rng = np.random.RandomState(t.seed)
  if t.max_rows is not None and len(df) > t.max_rows:
    df = df.iloc[np.sort(rng.choice(len(df), t.max_rows, replace=False))].reset_index(drop=True)
  order = rng.permutation(len(df))
  n_test = max(3, int(round(len(df) * t.test_fraction)))
  width = len(str(len(df) + 1000))
  ids = np.array([str(1000 + i).zfill(width) for i in range(len(df))])
  df.insert(0, t.id_column, ids)
  test = df.iloc[np.sort(order[:n_test])].reset_index(drop=True)
  train = df.iloc[np.sort(order[n_test:])].reset_index(drop=True)
  data_dir = os.path.join(root, "data_resplit", t.task_id)
  answer_dir = os.path.join(root, "answers", t.task_id)
  os.makedirs(data_dir, exist_ok=True)
  os.makedirs(answer_dir, exist_ok=True)
  targets = list(t.target_columns)
  _to_csv(train, os.path.join(data_dir, "train.csv"))
  _to_csv(test.drop(columns=targets), os.path.join(data_dir, "test.csv"))
  _to_csv(test[[t.id_column, *targets]], os.path.join(answer_dir, "test_answer.csv"))
  baseline = dsbench.baseline_predictions(train, targets, t.metric, len(test))
  baseline.insert(0, t.id_column, test[t.id_column].to_numpy())
  _to_csv(baseline, os.path.join(data_dir, "sample_submission.csv"))
  prompt = _description(t, test[t.id_column].tolist(), baseline[targets])
  target_field = targets[0] if len(targets) == 1 else targets
  return {
      "prompt": prompt,
      "answer": None,
      "metadata": {
          "task_id": t.task_id, "task_type": "data_modeling", "data_type": t.data_type,
          "train_file": f"./data_resplit/{t.task_id}/train.csv",
          "test_file": f"./data_resplit/{t.task_id}/test.csv",
          "answer_dir": f"./answers/{t.task_id}", "url": f"offline:{t.source}",
          "metric": t.metric, "target_column": target_field, "id_column": t.id_column,
          "n_train": int(len(train)), "n_test": int(len(test)),
      },
  }


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for r in records:
      f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def build(root: str, only: Sequence[str] | None = None) -> dict:
  """Builds the suite under `root`; returns the manifest (also written to manifest.json)."""
  known = {t.task_id for t in SUITE}
  unknown = set(only or ()) - known
  if unknown:
    raise ValueError(f"unknown suite task(s) {sorted(unknown)}; known: {sorted(known)}")
  os.makedirs(root, exist_ok=True)
  records, skipped = [], {}
  for t in SUITE:
    if only and t.task_id not in only:
      continue
    why = _available(t)
    if why:
      skipped[t.task_id] = why
      continue
    records.append(build_task(t, root))
  cleaned = {
      r["metadata"]["task_id"]: {
          "cleaned_prompt": r["prompt"], "metric": r["metadata"]["metric"],
          "task_type": r["metadata"]["data_type"], "target_column": r["metadata"]["target_column"],
          "id_column": r["metadata"]["id_column"]} for r in records}
  _write_jsonl(os.path.join(root, "tasks.jsonl"), records)
  _write_jsonl(os.path.join(root, "train_tasks.jsonl"),
               [r for r in records if r["metadata"]["task_id"] not in _EVAL_TASKS])
  _write_jsonl(os.path.join(root, "eval_tasks.jsonl"),
               [r for r in records if r["metadata"]["task_id"] in _EVAL_TASKS])
  with open(os.path.join(root, "cleaned_prompts.json"), "w", encoding="utf-8",
            newline="\n") as f:
    json.dump(cleaned, f, indent=1, sort_keys=True, ensure_ascii=False)
    f.write("\n")
  files = {}
  for dirpath, _, names in sorted(os.walk(root)):
    for name in sorted(names):
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      if rel == "manifest.json":
        continue
      with open(path, "rb") as f:
        files[rel] = hashlib.sha256(f.read()).hexdigest()
  manifest = {
      "tasks": [{"task_id": r["metadata"]["task_id"], "data_type": r["metadata"]["data_type"],
                 "metric": r["metadata"]["metric"], "source": r["metadata"]["url"],
                 "split": "eval" if r["metadata"]["task_id"] in _EVAL_TASKS else "train",
                 "n_train": r["metadata"]["n_train"], "n_test": r["metadata"]["n_test"]}
                for r in records],
      "skipped": skipped,
      "files": files,
      "tasks_file": "tasks.jsonl",
      "train_tasks_file": "train_tasks.jsonl",
      "eval_tasks_file": "eval_tasks.jsonl",
      "cleaned_prompts_file": "cleaned_prompts.json",
      "eval_task_ids": [r["metadata"]["task_id"] for r in records
                        if r["metadata"]["task_id"] in _EVAL_TASKS],
  }
  with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mappa_jax.data.dsbench_suite",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="build the suite into DIR")
  b.add_argument("dir")
  b.add_argument("--only", nargs="*", default=None, help="task ids to build (default: all)")
  sub.add_parser("list", help="list the suite's tasks")
  args = parser.parse_args(argv)
  if args.command == "list":
    for t in SUITE:
      print(f"{t.task_id:28s} {t.data_type:15s} {t.metric:12s} {t.source}")
    return 0
  manifest = build(args.dir, args.only)
  for t in manifest["tasks"]:
    print(f"{t['task_id']:28s} {t['data_type']:15s} {t['metric']:12s} train={t['n_train']:5d} "
          f"test={t['n_test']:5d} {t['split']}")
  for k, why in manifest["skipped"].items():
    print(f"skipped {k}: {why}", file=sys.stderr)
  print(f"{len(manifest['tasks'])} tasks written to {args.dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
