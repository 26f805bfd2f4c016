"""Side-by-side comparison of runs: accuracy at each evaluation step, and sample efficiency.

  result = compare_runs(['/runs/mappa', '/runs/outcome_only'])
  print(format_compare(result))

Rows are evaluation steps with the rollouts seen so far (step x rollout_batch_size x
n_samples_per_prompt trajectories); columns are runs (named by config.json's `name`), each cell
the metric's mean [95% CI]. Sample efficiency: for each ordered pair of runs (A, B), the
rollouts A needed to first reach B's final value (linear interpolation between A's evaluation
points; None = not reached) and its ratio to the rollouts B used to get there (its last
evaluation): a ratio below 1 means A is the more sample-efficient run.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

from mappa_jax.eval import summary


@dataclasses.dataclass
class RunSeries:
  """One run's evaluations.

  Attributes:
    name: config.json's `name` (the directory name when they clash or it is missing).
    workdir: the run directory.
    rollouts_per_step: rollout_batch_size x n_samples_per_prompt.
    series: eval set -> [(step, stat)] sorted by step; stat {'mean', 'ci_low', 'ci_high', 'n'}.
  """
  name: str
  workdir: str
  rollouts_per_step: int
  series: dict[str, list[tuple[int, dict[str, float]]]]


def load_run(workdir: str, metric: str = "rule_accuracy") -> RunSeries:
  """Reads a run's config.json and eval_results/step<N>_<set>.json files.

  Raises:
    FileNotFoundError: no config.json, or no evaluation results.
  """
  workdir = os.path.abspath(workdir)
  config = summary.run_config(workdir)
  rollout = config.get("rollout", {})
  per_step = int(rollout.get("rollout_batch_size", 0)) * int(
      rollout.get("n_samples_per_prompt", 0))
  files = summary.eval_results(workdir)
  if not files:
    raise FileNotFoundError(f"{workdir}: no eval_results/step<N>_<set>.json (was the run "
                            "trained with eval.every_steps=0?)")
  series = {}
  for name, steps in files.items():
    points = []
    for step in sorted(steps):
      stat = summary.as_stat(summary.load_json(steps[step])["summary"].get(metric))
      if stat is not None:
        points.append((step, stat))
    if points:
      series[name] = points
  return RunSeries(name=str(config.get("name") or os.path.basename(workdir)), workdir=workdir,
                   rollouts_per_step=per_step, series=series)


def rollouts_to_reach(points: Sequence[tuple[float, float]], target: float) -> float | None:
  """Rollouts at which a run first reaches `target`, interpolating linearly.

  Args:
    points: [(rollouts, value)] of the run's evaluations (sorted here by rollouts).
    target: the value to reach.

  Returns:
    The rollouts of the first evaluation at or above target, moved back along the segment from
    the previous evaluation (below target) to where the line crosses it; None if never reached.
  """
  points = sorted(points)
  for i, (r, v) in enumerate(points):
    if v >= target:
      if i == 0:
        return float(r)
      r0, v0 = points[i - 1]
      return float(r0 + (target - v0) / (v - v0) * (r - r0))  # v0 < target <= v: v > v0
  return None


def sample_efficiency(runs: Sequence[RunSeries], eval_set: str) -> list[dict[str, Any]]:
  """For each ordered pair (A, B) of runs with `eval_set`: the rollouts A needed to reach B's
  final value, B's rollouts at its final evaluation, and their ratio (None if not reached)."""
  out = []
  have = [r for r in runs if eval_set in r.series]
  for a in have:
    points = [(step * a.rollouts_per_step, s["mean"]) for step, s in a.series[eval_set]]
    for b in have:
      if a is b:
        continue
      b_step, b_stat = b.series[eval_set][-1]
      target, b_rollouts = b_stat["mean"], b_step * b.rollouts_per_step
      needed = rollouts_to_reach(points, target)
      ratio = (needed / b_rollouts if needed is not None and b_rollouts > 0 else None)
      out.append({"run": a.name, "reference": b.name, "target": target,
                  "reference_rollouts": b_rollouts, "rollouts": needed, "ratio": ratio})
  return out


def compare_runs(workdirs: Sequence[str], metric: str = "rule_accuracy") -> dict[str, Any]:
  """Loads the runs and builds, per eval set, the step table and the sample-efficiency pairs.

  Returns:
    {'metric', 'runs': [{'name', 'workdir', 'rollouts_per_step'}], 'sets': {eval set:
    {'rows': [{'step', 'rollouts': {run: n}, 'values': {run: stat}}], 'efficiency': [...]}}}.
  """
  runs = [load_run(w, metric) for w in workdirs]
  names = [r.name for r in runs]
  for r in runs:  # columns need distinct names
    if names.count(r.name) > 1:
      r.name = f"{r.name} ({os.path.basename(r.workdir)})"
  sets: dict[str, Any] = {}
  for eval_set in sorted({s for r in runs for s in r.series}):
    steps = sorted({step for r in runs for step, _ in r.series.get(eval_set, ())})
    rows = []
    for step in steps:
      values = {r.name: stat for r in runs for st, stat in r.series.get(eval_set, ())
                if st == step}
      rows.append({"step": step,
                   "rollouts": {r.name: step * r.rollouts_per_step for r in runs},
                   "values": values})
    sets[eval_set] = {"rows": rows, "efficiency": sample_efficiency(runs, eval_set)}
  return {"metric": metric,
          "runs": [{"name": r.name, "workdir": r.workdir,
                    "rollouts_per_step": r.rollouts_per_step} for r in runs],
          "sets": sets}


def json_safe(x: Any) -> Any:
  """`x` with NaN/inf as None (strict JSON), e.g. for compare.py --json."""
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _count(x: float) -> str:
  return f"{x:,.0f}"


def format_compare(result: dict[str, Any]) -> str:
  """The `compare_runs` result as fixed-width text: a step table and the efficiency lines."""
  names = [r["name"] for r in result["runs"]]
  width = max([24] + [len(n) + 2 for n in names])
  blocks = []
  for eval_set, data in result["sets"].items():
    lines = [f"eval set {eval_set}: {result['metric']} mean [95% CI]",
             (f"{'step':>6}  {'rollouts':>12}  " + "".join(f"{n:<{width}}" for n in names)
              ).rstrip()]
    for row in data["rows"]:
      counts = sorted(set(row["rollouts"].values()))
      # Runs with different batch sizes have seen different numbers of rollouts at a step.
      rollouts = ("/".join(f"{c:,}" for c in row["rollouts"].values()) if len(counts) > 1
                  else f"{counts[0]:,}")
      cells = "".join(f"{summary.format_stat(row['values'].get(n)):<{width}}" for n in names)
      lines.append(f"{row['step']:>6}  {rollouts:>12}  {cells}".rstrip())
    if data["efficiency"]:
      lines.append("sample efficiency (rollouts to reach the other run's final value):")
    for e in data["efficiency"]:
      target = f"{e['reference']}'s final {e['target']:.3f}"
      if e["rollouts"] is None:
        lines.append(f"  {e['run']} never reaches {target} ({e['reference']}: "
                     f"{_count(e['reference_rollouts'])} rollouts): not reached")
        continue
      ratio = "" if e["ratio"] is None else f" = {e['ratio']:.2f}x"
      lines.append(f"  {e['run']} reaches {target} after {_count(e['rollouts'])} rollouts "
                   f"({e['reference']}: {_count(e['reference_rollouts'])}){ratio}")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)
