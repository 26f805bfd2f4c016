"""Before/after tables of a run's evaluations: the untrained team (step 0) vs the trained one.

  table = before_after(load_json('step000000_amc.json'), load_json('step000020_amc.json'))
  print(format_before_after(table, before_label='base (step 0)', after_label='trained (step 20)'))
  print(run_summary(workdir))   # every eval set of a run: its first vs its last evaluation

Both inputs are EvalReport JSONs (eval/runner.py) of one eval set. Each row holds the two means
with their bootstrap CIs over problems and the paired-bootstrap CI of the change (per-problem
values from `per_task`, problems present in both). A row whose per-problem values are missing
(e.g. an older report) shows the change of the means without a CI.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

from mappa_jax.eval import metrics
from mappa_jax.metrics import run_dir

# (summary key, label, number format) of the headline rows, per report kind; coach score rows
# ('coach_score/<agent>') go between the headline and the team diagnostics.
_HEAD = {"math": (("rule_accuracy", "team accuracy", "rate"),),
         "dsbench": (("success_rate", "submission success", "rate"),
                     ("fair_gain", "fair metric gain", "rate"))}
_TAIL = (("executor_code_ok", "Code Executor run success", "rate"),
         ("verifier_agrees_tool", "Verifier agrees with tool", "rate"))
# Agents in workflow order (MathChat, then DSBench); unknown agents follow, sorted.
_AGENT_ORDER = ("problem_solver", "code_executor", "verifier", "data_engineer", "modeler",
                "analyst")
_RESULT_RE = re.compile(r"^step(\d{6,})_(.+)\.json$")
_LABEL_WIDTH = 30
_CELL_WIDTH = 23


def as_stat(value: Any) -> dict[str, float] | None:
  """A summary entry as {'mean', 'ci_low', 'ci_high', 'n'} (a plain number has no CI)."""
  if isinstance(value, Mapping):
    mean = value.get("mean")
    if mean is None or not math.isfinite(mean):
      return None
    lo, hi = value.get("ci_low"), value.get("ci_high")
    return {"mean": float(mean), "ci_low": float("nan") if lo is None else float(lo),
            "ci_high": float("nan") if hi is None else float(hi), "n": value.get("n")}
  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
    return {"mean": float(value), "ci_low": float("nan"), "ci_high": float("nan"), "n": None}
  return None


def _per_problem(report: Mapping[str, Any], key: str) -> dict[str, float]:
  """task id -> the per-problem value of `key` (problems without one left out)."""
  out = {}
  for tid, row in (report.get("per_task") or {}).items():
    v = row.get(key) if isinstance(row, Mapping) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
      out[tid] = float(v)
  return out


def _agents(*reports: Mapping[str, Any]) -> list[str]:
  names = {k.split("/", 1)[1] for r in reports for k in r.get("summary", {})
           if k.startswith("coach_score/")}
  known = [a for a in _AGENT_ORDER if a in names]
  return known + sorted(names - set(known))


def before_after(before: Mapping[str, Any], after: Mapping[str, Any], *, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
  """Compares two EvalReport JSONs of the same eval set (e.g. step 0 and the last step).

  Returns:
    {'name', 'kind', 'rows': [{'key', 'label', 'format', 'before', 'after', 'change'}]}, where
    before/after are {'mean', 'ci_low', 'ci_high', 'n'} (or None when the report lacks the
    metric) and change is {'diff', 'ci_low', 'ci_high', 'n'} (after - before; paired bootstrap
    over the problems both reports have, CI NaN without per-problem values) or None.

  Raises:
    ValueError: the reports are of different eval sets or kinds.
  """
  for field in ("name", "kind"):
    if before.get(field) != after.get(field):
      raise ValueError(f"before_after: the reports differ in {field} ({before.get(field)!r} vs "
                       f"{after.get(field)!r}); compare two evaluations of one eval set")
  kind = after.get("kind", "math")
  specs = list(_HEAD.get(kind, _HEAD["math"]))
  specs += [(f"coach_score/{a}", f"coach score  {a}", "score") for a in _agents(before, after)]
  specs += list(_TAIL)
  rows = []
  for key, label, fmt in specs:
    b, a = as_stat(before["summary"].get(key)), as_stat(after["summary"].get(key))
    if b is None and a is None:
      continue  # e.g. DSBench has no Verifier
    change = None
    if b is not None and a is not None:
      pb, pa = _per_problem(before, key), _per_problem(after, key)
      if set(pa) & set(pb):
        change = metrics.paired_bootstrap_diff(pa, pb, n_boot=n_boot, seed=seed)
      else:
        change = {"diff": a["mean"] - b["mean"], "ci_low": float("nan"),
                  "ci_high": float("nan"), "n": 0}
    rows.append({"key": key, "label": label, "format": fmt, "before": b, "after": a,
                 "change": change})
  return {"name": after.get("name"), "kind": kind, "rows": rows}


def _num(x: float, digits: int, sign: bool = False) -> str:
  if x is None or not math.isfinite(x):
    return "?"
  return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def format_stat(stat: Mapping[str, Any] | None, fmt: str = "rate", *, key: str = "mean",
                sign: bool = False) -> str:
  """'0.312 [0.27, 0.36]' (rates) or '5.10 [4.8, 5.4]' (0-10 scores); 'n/a' for None."""
  if stat is None:
    return "n/a"
  mean_digits, ci_digits = (3, 2) if fmt == "rate" else (2, 1)
  text = _num(stat[key], mean_digits, sign)
  if math.isfinite(stat.get("ci_low", float("nan"))):
    text += (f" [{_num(stat['ci_low'], ci_digits, sign)}, "
             f"{_num(stat['ci_high'], ci_digits, sign)}]")
  return text


def format_before_after(table: Mapping[str, Any], *, before_label: str = "before",
                        after_label: str = "after", title: str | None = None) -> str:
  """The `before_after` result as a fixed-width text table (one line per row)."""
  lines = [title] if title else []
  lines.append(" " * _LABEL_WIDTH + f"{before_label:<{_CELL_WIDTH}}{after_label:<{_CELL_WIDTH}}"
               "change")
  for row in table["rows"]:
    fmt = row["format"]
    lines.append(f"{row['label']:<{_LABEL_WIDTH}}"
                 f"{format_stat(row['before'], fmt):<{_CELL_WIDTH}}"
                 f"{format_stat(row['after'], fmt):<{_CELL_WIDTH}}"
                 f"{format_stat(row['change'], fmt, key='diff', sign=True)}".rstrip())
  return "\n".join(lines)


# ----------------------------------------------------------------------------------- runs

def eval_results(workdir: str) -> dict[str, dict[int, str]]:
  """{eval set: {step: path}} of <workdir>/eval_results/step<step>_<set>.json ({} if none)."""
  root = os.path.join(workdir, "eval_results")
  out: dict[str, dict[int, str]] = {}
  if not os.path.isdir(root):
    return out
  for fname in sorted(os.listdir(root)):
    m = _RESULT_RE.match(fname)
    if m:
      out.setdefault(m.group(2), {})[int(m.group(1))] = os.path.join(root, fname)
  return out


def has_before_after(workdir: str) -> bool:
  """Whether some eval set of the run has been evaluated at two steps or more."""
  return any(len(steps) >= 2 for steps in eval_results(workdir).values())


def load_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_config(workdir: str) -> dict[str, Any]:
  """The run's resolved config (<workdir>/config.json, written by launch/run.py)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a run directory written by "
                            "launch/run.py --workdir=...?")
  return load_json(path)


def run_summary(workdir: str, *, n_boot: int = 2000, seed: int = 0) -> str:
  """The before/after table (first vs last evaluation) of every eval set of a run, then
  where its TensorBoard run and HTML report are.

  Raises:
    FileNotFoundError: the run has no evaluation results.
  """
  workdir = os.path.abspath(workdir)
  sets = eval_results(workdir)
  if not sets:
    raise FileNotFoundError(f"no evaluation results in {workdir}/eval_results (the trainer "
                            "writes step<N>_<set>.json at each evaluation; eval.every_steps=0 "
                            "turns them off)")
  blocks = []
  for name, steps in sorted(sets.items()):
    first, last = min(steps), max(steps)
    if first == last:
      blocks.append(f"eval set {name}: evaluated at step {first} only, nothing to compare")
      continue
    table = before_after(load_json(steps[first]), load_json(steps[last]), n_boot=n_boot,
                         seed=seed)
    blocks.append(format_before_after(
        table, before_label=f"base (step {first})", after_label=f"trained (step {last})",
        title=f"eval set {name} ({_n_problems(table)} problems):"))
  try:
    name = run_config(workdir).get("name", "")
  except FileNotFoundError:
    name = ""
  blocks.append(f"TensorBoard: tensorboard --logdir {run_dir(workdir, name or '<config.name>')}"
                f"\nHTML report: {os.path.join(workdir, 'report.html')}")
  return "\n\n".join(blocks)


def _n_problems(table: Mapping[str, Any]) -> str:
  for row in table["rows"]:
    if row["after"] is not None and row["after"].get("n") is not None:
      return str(row["after"]["n"])
  return "?"
