r"""The coach-bias experiment: does a coach that favours one task type make the team specialise,
does the bias guard notice, and does per-stratum whitening undo it?

  python benchmarks/bias.py --out=/tmp/bias \
      [--presets=local,local_biased,local_biased_stratum] [--seeds=42] [--num_steps=32] \
      [--eval_every=8]

Runs the presets of experiments/mathchat.py one after another (benchmarks/learning.py's runner;
finished runs are reused): `local` (the unbiased rule coach), `local_biased` (the same coach
+BIAS_DELTA on every action of BIAS_TASK_TYPE problems) and `local_biased_stratum` (the biased
coach with advantages whitened per task type); `--presets=local_biased_spread,
local_biased_spread_stratum,local` runs the behaviour-dependent bias (the other types' scores
scaled down) instead, and `--presets=local_biased_style,local_biased_style_stratum,local` the
style bias (+BIAS_DELTA on any output matching BIAS_STYLE_PATTERN, on every type). Then prints,
per run,

  * accuracy per task type on the held-out problems, before (step 0) and after, with bootstrap
    CIs over problems;
  * the specialisation: the favoured type's accuracy change minus the other types' (paired per
    problem, bootstrap CI); a team that specialises shows a positive value against the
    unbiased run's;
  * the bias guard (<workdir>/coach_bias.jsonl): the first step it warned, how many steps it
    warned on, and each agent's last score gap favoured-minus-others next to the outcome gap;

then one line per preset over its seeds (each type's mean accuracy change, the pooled
specialisation), and last, per preset and type, the final accuracy minus the unbiased
(`local`) run's at the same seed, paired per problem: what the bias cost on each type and
how much of it a mitigation gives back.

This is a benchmark, not a test: it asserts nothing and prints what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import learning  # pylint: disable=wrong-import-position
from experiments import mathchat  # pylint: disable=wrong-import-position
from mappa_jax.coach import bias_guard as bg  # pylint: disable=wrong-import-position
from mappa_jax.eval import metrics, summary  # pylint: disable=wrong-import-position

EVAL_SET = "synthetic"
AGENTS = ("problem_solver", "code_executor", "verifier")


def per_type(report: dict) -> dict[str, dict[str, float]]:
  """{task type: {task id: rule accuracy}} of one EvalReport JSON."""
  out: dict[str, dict[str, float]] = {}
  for tid, row in report["per_task"].items():
    out.setdefault(row["task_type"], {})[tid] = float(row["rule_accuracy"])
  return out


def _ci(values, seed: int = 0) -> str:
  v = list(values)
  lo, hi = metrics.bootstrap_ci(v, seed=seed)
  return f"{np.mean(v):.3f} [{lo:.2f}, {hi:.2f}]"


def specialisation(before: dict, after: dict, favoured: str, *, n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
  """Favoured type's mean accuracy change minus the other types' (per problem, paired), with
  a percentile bootstrap CI (each group resampled on its own)."""
  fav, rest = [], []
  for ttype, rows in after.items():
    deltas = [rows[t] - before.get(ttype, {}).get(t, np.nan) for t in rows]
    (fav if ttype == favoured else rest).extend(d for d in deltas if np.isfinite(d))
  return bg.bootstrap_mean_diff(fav, rest, n_boot=n_boot, seed=seed)


def rejudge(entries: list[dict], config: bg.BiasGuardConfig = bg.BiasGuardConfig()
            ) -> list[tuple[int, str, str, str]]:
  """The current guard's verdicts on a run's logged estimates: [(step, agent, pair, why)].

  The estimates (gaps, CIs, outcome gaps) do not depend on the warning rule, so this gives
  exactly the warnings the current rule raises on that run, also for a run logged before a
  rule change (the live warnings are the 'warnings' of each coach_bias.jsonl line).
  """
  guard, out = bg.BiasGuard(config), []
  for e in entries:
    s = e["scalars"]
    seen = set()
    for key, gap in sorted(s.items()):
      parts = key.split("/")
      if len(parts) != 3 or parts[1] == bg.OUTCOME or "_minus_" not in parts[2]:
        continue
      a, _, b = parts[2].partition("_minus_")
      seen.add((parts[1], a, b))
      est = bg.Estimate(e["step"], gap, s[f"{key}/ci_low"], s[f"{key}/ci_high"],
                        s.get(f"coach_bias/{bg.OUTCOME}/{parts[2]}"))
      warn, why = guard.observe((parts[1], a, b), est)
      if warn:
        out.append((e["step"], parts[1], parts[2], why))
    guard.drop_lapsed(seen)
  return out


def guard_summary(workdir: str, favoured: str) -> list[str]:
  """Lines about the bias guard of one run, from <workdir>/coach_bias.jsonl."""
  path = os.path.join(workdir, "coach_bias.jsonl")
  if not os.path.exists(path):
    return ["  bias guard: no coach_bias.jsonl (guard disabled?)"]
  with open(path, encoding="utf-8") as f:
    entries = [json.loads(line) for line in f if line.strip()]
  live = [e["step"] for e in entries if e["warnings"] or e["scalars"].get(
      "coach_bias/warnings", 0.0) > 0]
  judged = rejudge(entries)
  steps = sorted({j[0] for j in judged})
  lines = [f"  bias guard: the current rule warns on {len(steps)} of {len(entries)} steps"
           + (f", first at step {steps[0]}" if steps else "")
           + f" (the run's own log: {len(live)} steps)"]
  if judged:
    step, agent, pair, why = judged[0]
    lines.append(f"  first: step {step}, {agent} {pair}: {why}")
  last = entries[-1]["scalars"] if entries else {}
  for agent in AGENTS + ("outcome",):
    gaps = []
    for key, value in sorted(last.items()):
      parts = key.split("/")
      if len(parts) == 3 and parts[0] == "coach_bias" and parts[1] == agent:
        a, _, b = parts[2].partition("_minus_")
        if favoured in (a, b):  # report as favoured minus the other type
          other, sign = (b, 1.0) if a == favoured else (a, -1.0)
          lo, hi = last.get(f"{key}/ci_low"), last.get(f"{key}/ci_high")
          ci = (f" [{min(sign * lo, sign * hi):+.2f}, {max(sign * lo, sign * hi):+.2f}]"
                if lo is not None and hi is not None else "")
          gaps.append(f"{favoured}-{other} {sign * value:+.2f}{ci}")
    if gaps:
      unit = " (outcome, 0-1)" if agent == "outcome" else " (coach points)"
      lines.append(f"  last window gap, {agent}{unit}: " + "; ".join(gaps))
  return lines


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  learning.add_run_flags(ap, "local,local_biased,local_biased_stratum", num_steps=32,
                         eval_every=8)
  args = ap.parse_args()
  rc, workdirs = learning.run_presets(args)
  if rc:
    return rc
  favoured = mathchat.BIAS_TASK_TYPE
  print(f"\nbiased coaches (experiments/mathchat.py), favoured type {favoured!r}: local_biased* "
        f"+{mathchat.BIAS_DELTA:g} on it; local_biased_spread* the other types' scores "
        f"x{mathchat.BIAS_OTHERS_SCALE:g}; local_biased_style* +{mathchat.BIAS_DELTA:g} on "
        f"any output matching /{mathchat.BIAS_STYLE_PATTERN}/; eval set {EVAL_SET!r}")
  changes: dict[str, list[tuple[dict, dict]]] = {}
  for workdir in workdirs:
    steps = summary.eval_results(workdir)[EVAL_SET]
    first, last = min(steps), max(steps)
    before = per_type(summary.load_json(steps[first]))
    after = per_type(summary.load_json(steps[last]))
    print(f"\n== {os.path.basename(workdir)}  (step {first} -> step {last})")
    for ttype in sorted(after):
      mark = "  (favoured)" if ttype == favoured else ""
      b, a = before.get(ttype, {}), after[ttype]
      print(f"  accuracy {ttype:<8} n={len(a):<3} {_ci(b.values()):<22} -> "
            f"{_ci(a.values()):<22}{mark}")
    s, lo, hi = specialisation(before, after, favoured)
    print(f"  specialisation (favoured change - others' change): {s:+.3f} [{lo:+.2f}, {hi:+.2f}]")
    for line in guard_summary(workdir, favoured):
      print(line)
    preset = os.path.basename(workdir).removeprefix("mathchat-").rsplit("-seed", 1)[0]
    changes.setdefault(preset, []).append((before, after))
  print_summary(changes, favoured)
  print_gap_to_unbiased(changes, favoured)
  return 0


def print_summary(changes: dict[str, list[tuple[dict, dict]]], favoured: str) -> None:
  """One line per preset over its seeds: each type's mean accuracy change (before -> after,
  per problem, pooled over seeds) and the specialisation with a bootstrap CI over the pooled
  per-problem changes (seeds share the held-out problems, so this CI is about problems)."""
  types = sorted({t for runs in changes.values() for _, after in runs for t in after})
  head = "".join(f"  d {t + ('*' if t == favoured else ''):<9}" for t in types)
  print(f"\n{'preset':<30} seeds{head}  specialisation (* favoured)")
  for preset, runs in changes.items():
    # One pooled 'run': problem ids made unique per seed.
    before = {t: {f"{k}:{i}": v for k, (b, _) in enumerate(runs) for i, v in b.get(t, {}).items()}
              for t in types}
    after = {t: {f"{k}:{i}": v for k, (_, a) in enumerate(runs) for i, v in a.get(t, {}).items()}
             for t in types}
    cells = "".join(f"  {np.mean([after[t][i] - before[t][i] for i in after[t]]):+.3f}     "
                    for t in types)
    s, lo, hi = specialisation(before, after, favoured)
    print(f"{preset:<30} {len(runs):<5}{cells}{s:+.3f} [{lo:+.2f}, {hi:+.2f}]")


def gap_to_unbiased(runs: list[tuple[dict, dict]], unbiased: list[tuple[dict, dict]]
                    ) -> dict[str, list[float]]:
  """{task type: per-problem final accuracy of a run minus the unbiased run's at the same
  seed}, pooled over the seeds both have (runs and unbiased in the same seed order)."""
  out: dict[str, list[float]] = {}
  for (_, after), (_, ref) in zip(runs, unbiased):
    for ttype, rows in after.items():
      out.setdefault(ttype, []).extend(
          v - ref[ttype][t] for t, v in rows.items() if t in ref.get(ttype, {}))
  return out


def print_gap_to_unbiased(changes: dict[str, list[tuple[dict, dict]]], favoured: str,
                          unbiased: str = "local") -> None:
  """Per preset and task type, the final accuracy minus the unbiased run's (paired per
  problem and seed, bootstrap CI): what a biased coach cost or gained on each type, and what
  of it a mitigation gives back (a mitigated run's gaps should sit nearer 0)."""
  if unbiased not in changes:
    return
  ref = changes[unbiased]
  types = sorted({t for _, after in ref for t in after})
  head = "".join(f"  {t + ('*' if t == favoured else ''):<22}" for t in types)
  print(f"\nfinal accuracy minus {unbiased!r} at the same seed (per problem, 95% CI)")
  print(f"{'preset':<30} seeds{head}  mean |gap|")
  for preset, runs in changes.items():
    if preset == unbiased:
      continue
    n = min(len(runs), len(ref))
    gaps = gap_to_unbiased(runs[:n], ref[:n])
    cells = ""
    means = {t: float(np.mean(gaps[t])) for t in types if gaps.get(t)}
    for t in types:
      lo, hi = metrics.bootstrap_ci(gaps.get(t, []))
      cells += f"  {means.get(t, np.nan):+.3f} [{lo:+.2f}, {hi:+.2f}]  "
    size = np.mean([abs(m) for m in means.values()])
    print(f"{preset:<30} {n:<5}{cells}{size:.3f}")


if __name__ == "__main__":
  sys.exit(main())
