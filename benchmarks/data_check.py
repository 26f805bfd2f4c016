"""Checks the real mappa-bench files against the facts in mappa-reference.md §2.1, §6, §10.11.

    python benchmarks/data_check.py /path/to/mappa-bench

Prints record counts, verifies the reference's 512-of-933 AIME selection, the overlap facts
(aime_eval_32 vs the AIME pool, the default eval split vs the sample, amc_eval_32 vs amc),
DSBench metadata counts and label fixes, and times the rule grader on the AIME answers.
Exit status 1 when a fact does not hold.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mappa_jax.data import dsbench, grading, loaders  # pylint: disable=g-import-not-at-top

FAILURES: list[str] = []


def check(name: str, got, expected) -> None:
  ok = got == expected
  print(f"  [{'ok' if ok else 'FAIL'}] {name}: {got}" + ("" if ok else f" (expected {expected})"))
  if not ok:
    FAILURES.append(name)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("bench_dir")
  args = parser.parse_args()
  d = args.bench_dir
  p = lambda name: os.path.join(d, name)

  print("== counts")
  pool = loaders.load_tasks(p("AIME_1983_2024.json"), task_type="aime")
  aime25 = loaders.load_tasks(p("aime_2025.json"), task_type="aime")
  aime32 = loaders.load_tasks(p("aime_eval_32.json"), task_type="aime")
  amc = loaders.load_tasks(p("amc.json"), task_type="amc")
  amc32 = loaders.load_tasks(p("amc_eval_32.json"), task_type="amc")
  ds_train = loaders.load_tasks(p("dsbench_modeling_train.json"), allow_null_answer=True)
  ds_eval = loaders.load_tasks(p("dsbench_modeling_eval.json"), allow_null_answer=True)
  cleaned = dsbench.load_cleaned_prompts(p("dsbench_modeling_cleaned_prompts.json"))
  for name, tasks, n in [("AIME_1983_2024", pool, 933), ("aime_2025", aime25, 30),
                         ("aime_eval_32", aime32, 32), ("amc", amc, 117),
                         ("amc_eval_32", amc32, 32), ("dsbench train", ds_train, 64),
                         ("dsbench eval", ds_eval, 8)]:
    check(f"{name} records", len(tasks), n)
  check("cleaned prompts keys", len(cleaned), 72)
  check("AMC labels become strings like the reference", amc[0].answer.endswith(".0"), True)

  print("== 512-of-933 selection (np.random.seed(42); choice(933, 512, replace=False); sort)")
  state = np.random.get_state()
  np.random.seed(42)
  ref_idx = np.sort(np.random.choice(933, 512, replace=False))
  np.random.set_state(state)
  idx = loaders.subsample_indices(933, 512, seed=42)
  check("indices equal the reference procedure", bool(np.array_equal(idx, ref_idx)), True)
  sample = loaders.subsample(pool, 512, seed=42)
  print(f"  first ids: {[t.task_id for t in sample[:6]]}  last: {sample[-1].task_id}")

  print("== overlaps (normalised prompt text or canonical competition id)")
  ov = loaders.find_overlap(pool, aime32)
  check("aime_eval_32 in the 933 pool", ov.n_overlap, 18)
  check("aime_eval_32 in the 512 sample", loaders.find_overlap(sample, aime32).n_overlap, 10)
  for by in (("prompt",), ("competition_id",), ("id",)):
    print(f"  (by {by[0]} only: {loaders.find_overlap(pool, aime32, by=by).n_overlap}/32 in the "
          f"pool, {loaders.find_overlap(sample, aime32, by=by).n_overlap} in the sample)")
  try:
    loaders.check_heldout(pool, aime32, name="aime_eval_32")
    check("aime_eval_32 refused as held-out", False, True)
  except loaders.HeldOutOverlapError as e:
    check("aime_eval_32 refused as held-out", True, True)
    print(f"  message: {e}")
  default_eval = loaders.reference_default_eval_split(pool)
  check("reference default eval split size", len(default_eval), 27)
  check("default eval split in the 512 sample",
        loaders.find_overlap(sample, default_eval).n_overlap, 16)
  check("aime_2025 vs pool", loaders.find_overlap(pool, aime25).n_overlap, 0)
  check("amc_eval_32 is a subset of amc", loaders.find_overlap(amc, amc32).n_overlap, 32)
  check("amc_eval_32 vs AIME 512 sample", loaders.find_overlap(sample, amc32).n_overlap, 0)
  check("dsbench eval vs train", loaders.find_overlap(ds_train, ds_eval, by=("id",)).n_overlap, 0)

  print("== DSBench metadata")
  check("train data_type counts",
        dict(sorted(collections.Counter(t.task_type for t in ds_train).items())),
        {"classification": 30, "regression": 34})
  check("eval data_type counts",
        dict(sorted(collections.Counter(t.task_type for t in ds_eval).items())),
        {"classification": 4, "regression": 4})
  missing = sorted(t.task_id for t in ds_train + ds_eval if t.task_id not in cleaned)
  check("tasks without a cleaned prompt", missing, ["liverpool-ion-switching"])
  mislabelled = sorted(t.task_id for t in ds_train + ds_eval
                       if t.task_id in cleaned and cleaned[t.task_id]["task_type"] != t.task_type)
  check("data_type mislabels fixed by the cleaned task_type", len(mislabelled), 6)
  print(f"  {mislabelled}")
  eval_types = collections.Counter(cleaned[t.task_id]["task_type"] for t in ds_eval)
  check("eval cleaned types", dict(sorted(eval_types.items())),
        {"classification": 6, "regression": 2})
  metrics = collections.Counter(cleaned[t.task_id]["metric"] for t in ds_train + ds_eval
                                if t.task_id in cleaned)
  unsupported = {}
  for m, c in metrics.items():
    try:
      dsbench.metric_spec(m)
    except ValueError:
      unsupported[m] = c
  print(f"  metrics: {dict(metrics.most_common())}")
  print(f"  metrics score_submission does not support: {unsupported}")

  print("== rule grader on the real labels")
  t0 = time.perf_counter()
  self_ok = sum(grading.is_equivalent(t.answer, t.answer) for t in pool + aime25 + amc)
  t1 = time.perf_counter()
  n = len(pool) + len(aime25) + len(amc)
  check("every label equivalent to itself", self_ok, n)
  print(f"  {n} self-comparisons in {t1 - t0:.2f}s ({1e3 * (t1 - t0) / n:.2f} ms each)")
  special = [t for t in pool if "or" in t.answer]
  for t in special:
    print(f"  {t.task_id}: gold {t.answer!r}: '080' -> {grading.is_equivalent('080', t.answer)}, "
          f"'81' -> {grading.is_equivalent('81', t.answer)}, '82' -> "
          f"{grading.is_equivalent('82', t.answer)}")
  deg = [t for t in aime25 if "circ" in t.answer]
  for t in deg:
    print(f"  aime_2025 {t.task_id}: gold {t.answer!r}: '336' -> "
          f"{grading.is_equivalent('336', t.answer)}")
  wrong = sum(grading.is_equivalent(a.answer, b.answer) for a, b in zip(pool, pool[1:]))
  print(f"  neighbouring AIME labels judged equal: {wrong} of {len(pool) - 1} "
        "(true duplicates of the same integer)")
  dup = sum(int(a.answer) == int(b.answer) for a, b in zip(pool, pool[1:])
            if a.answer.isdigit() and b.answer.isdigit())
  check("grader agrees with int() on neighbouring integer labels", wrong >= dup, True)

  print(f"== {'ALL FACTS HOLD' if not FAILURES else 'FAILED: ' + ', '.join(FAILURES)}")
  return 1 if FAILURES else 0


if __name__ == "__main__":
  sys.exit(main())
