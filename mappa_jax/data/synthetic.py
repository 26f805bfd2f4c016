"""Synthetic arithmetic word problems with exact integer answers (the embedded CPU default).

Task types (strata): 'add_sub', 'mul_div', 'mixed'. Difficulty level d in 1..5 sets the number
of operations (d) and the operand size (up to 10**min(d, 3) for +/-, smaller for */÷). Division
is always exact, and every intermediate value stays a non-negative integer, so the answer is an
exact integer computed left to right (the wording fixes the order: "then").

Splits are disjoint by construction: each problem's canonical form (its operand/operator
sequence) is hashed, and the hash decides the split ('eval' when hash % 1000 < eval_permille),
so a problem can never land in both splits whatever the seeds and sizes.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from mappa_jax.data.loaders import PROMPT_SUFFIX, Task

TASK_TYPES = ("add_sub", "mul_div", "mixed")
_NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun")
_THINGS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "shells", "cards")
_PHRASES = {
    "+": "then gets {v} more",
    "-": "then gives away {v}",
    "*": "then ends up with {v} times as many",
    "/": "then shares them equally among {v} friends and keeps one share",
}


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
  """Generator settings.

  Attributes:
    levels: difficulty levels to draw from (1..5: number of operations).
    task_types: strata to draw from (uniformly).
    eval_permille: share of the problem space reserved for the eval split (per mille).
    add_prompt_suffix: append the reference's boxed-answer instruction.
  """
  levels: tuple[int, ...] = (1, 2, 3)
  task_types: tuple[str, ...] = TASK_TYPES
  eval_permille: int = 200
  add_prompt_suffix: bool = True


def _operand_limit(op: str, level: int) -> int:
  if op in "+-":
    return 10 ** min(level, 3)
  return 3 + 2 * min(level, 4)  # small factors keep values readable


def _draw_problem(rng: np.random.Generator, task_type: str, level: int) -> tuple[int, list]:
  ops_allowed = {"add_sub": "+-", "mul_div": "*/", "mixed": "+-*/"}[task_type]
  start = int(rng.integers(2, 10 ** min(level, 3) + 1))
  value, steps = start, []
  for _ in range(level):
    op = ops_allowed[int(rng.integers(len(ops_allowed)))]
    if op == "-" and value < 1:
      op = "+" if "+" in ops_allowed else "*"
    if op == "/":
      divisors = [d for d in range(2, _operand_limit("/", level) + 1) if value % d == 0]
      if not divisors:
        op = "*"
      else:
        v = divisors[int(rng.integers(len(divisors)))]
    if op == "+":
      v = int(rng.integers(1, _operand_limit("+", level) + 1))
      value += v
    elif op == "-":
      v = int(rng.integers(1, value + 1)) if value < _operand_limit("-", level) else int(
          rng.integers(1, _operand_limit("-", level) + 1))
      value -= v
    elif op == "*":
      v = int(rng.integers(2, _operand_limit("*", level) + 1))
      value *= v
    else:
      value //= v
    steps.append((op, v))
  return start, steps


def _canonical(start: int, steps: list) -> str:
  # The problem's identity is its numbers and operators (not its stratum or wording), so the
  # same arithmetic can never appear in both splits under two task types.
  return f"{start}:" + ",".join(f"{op}{v}" for op, v in steps)


def _split_of(canonical: str, eval_permille: int) -> str:
  h = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")
  return "eval" if h % 1000 < eval_permille else "train"


def evaluate_steps(start: int, steps: Sequence[tuple[str, int]]) -> int:
  """The exact answer: apply the steps left to right."""
  value = start
  for op, v in steps:
    if op == "+":
      value += v
    elif op == "-":
      value -= v
    elif op == "*":
      value *= v
    elif op == "/":
      if value % v:
        raise ValueError(f"inexact division {value} / {v}")
      value //= v
  return value


def _render(rng: np.random.Generator, start: int, steps: list) -> str:
  name = _NAMES[int(rng.integers(len(_NAMES)))]
  thing = _THINGS[int(rng.integers(len(_THINGS)))]
  parts = [f"{name} has {start} {thing}"]
  parts += [_PHRASES[op].format(v=v) for op, v in steps]
  return ", ".join(parts) + f". How many {thing} does {name} have now?"


def generate(n: int, *, split: str = "train", seed: int = 0,
             config: ArithmeticConfig = ArithmeticConfig()) -> list[Task]:
  """n distinct problems of one split.

  Args:
    n: number of tasks.
    split: 'train' or 'eval' (disjoint problem sets).
    seed: generator seed (same seed and config -> same tasks).
    config: levels, task types, eval share.

  Returns:
    Tasks with task_id '<split>-<seed>-<i>', answer the exact integer as a string, task_type in
    config.task_types, metadata {'level', 'steps', 'start', 'split', 'canonical', 'raw_prompt'}.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  unknown = set(config.task_types) - set(TASK_TYPES)
  if unknown:
    raise ValueError(f"unknown task types {sorted(unknown)}; choose from {TASK_TYPES}")
  if not config.levels or any(not 1 <= lv <= 5 for lv in config.levels):
    raise ValueError(f"levels must be in 1..5, got {config.levels}")
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  tasks, seen = [], set()
  attempts = 0
  while len(tasks) < n:
    attempts += 1
    if attempts > 200 * n + 1000:
      raise ValueError(f"could not draw {n} distinct {split} problems with {config}; "
                       "widen levels or task types")
    task_type = config.task_types[int(rng.integers(len(config.task_types)))]
    level = config.levels[int(rng.integers(len(config.levels)))]
    start, steps = _draw_problem(rng, task_type, level)
    canonical = _canonical(start, steps)
    if canonical in seen or _split_of(canonical, config.eval_permille) != split:
      continue
    seen.add(canonical)
    raw = _render(rng, start, steps)
    answer = evaluate_steps(start, steps)
    tasks.append(Task(
        task_id=f"{split}-{seed}-{len(tasks)}",
        prompt=raw + (PROMPT_SUFFIX if config.add_prompt_suffix else ""),
        answer=str(answer),
        task_type=task_type,
        metadata={"level": level, "start": start, "steps": [list(s) for s in steps],
                  "split": split, "canonical": canonical, "raw_prompt": raw}))
  return tasks


def generate_splits(n_train: int, n_eval: int, *, seed: int = 0,
                    config: ArithmeticConfig = ArithmeticConfig()) -> tuple[list[Task], list[Task]]:
  """(train, eval) task lists; disjoint by construction."""
  return (generate(n_train, split="train", seed=seed, config=config),
          generate(n_eval, split="eval", seed=seed, config=config))


def write_jsonl(tasks: Sequence[Task], path: str) -> str:
  """Writes tasks as {"task_id", "prompt", "answer", "task_type"} JSONL (launch/eval.py reads
  it); the prompt is the raw problem, without the boxed-answer suffix the run adds."""
  import json  # pylint: disable=g-import-not-at-top
  with open(path, "w", encoding="utf-8") as f:
    for t in tasks:
      f.write(json.dumps({"task_id": t.task_id, "prompt": t.metadata["raw_prompt"],
                          "answer": t.answer, "task_type": t.task_type}) + "\n")
  return path


def main(argv: Sequence[str] | None = None) -> int:
  """python -m mappa_jax.data.synthetic --split=eval --n=200 --seed=7 --out=problems.jsonl"""
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description="Writes synthetic arithmetic problems as JSONL.")
  ap.add_argument("--n", type=int, required=True, help="number of problems")
  ap.add_argument("--split", default="eval", choices=("train", "eval"))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--difficulty", type=int, default=2, help="levels 1..difficulty (1-5)")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  config = ArithmeticConfig(levels=tuple(range(1, args.difficulty + 1)))
  path = write_jsonl(generate(args.n, split=args.split, seed=args.seed, config=config), args.out)
  print(f"{args.n} {args.split}-split problems (seed {args.seed}) -> {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
