"""benchmarks/bias.py's comparison with the unbiased run (pure bookkeeping on EvalReport rows)."""
import importlib.util
import pathlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench():
  path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bias.py"
  spec = importlib.util.spec_from_file_location("bias_bench", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(after: dict[str, dict[str, float]]) -> tuple[dict, dict]:
  before = {t: {i: 0.0 for i in rows} for t, rows in after.items()}
  return before, after


def test_gap_to_unbiased_pairs_problems_and_seeds(bench):
  unbiased = [_run({"a": {"1": 1.0, "2": 1.0}, "b": {"3": 0.0}}),   # seed 1
              _run({"a": {"1": 0.0, "2": 1.0}, "b": {"3": 1.0}})]   # seed 2
  biased = [_run({"a": {"1": 0.0, "2": 1.0}, "b": {"3": 1.0}}),
            _run({"a": {"1": 0.0, "2": 0.0}, "b": {"3": 1.0}})]
  gaps = bench.gap_to_unbiased(biased, unbiased)
  # a: seed 1 (0-1, 1-1), seed 2 (0-0, 0-1); b: seed 1 1-0, seed 2 1-1.
  assert gaps == {"a": [-1.0, 0.0, 0.0, -1.0], "b": [1.0, 0.0]}
  # A problem the unbiased run was not evaluated on is left out, not counted as a gap.
  assert bench.gap_to_unbiased([_run({"a": {"9": 1.0}})], unbiased[:1]) == {"a": []}


def test_print_gap_to_unbiased_table(bench, capsys):
  unbiased = [_run({"add_sub": {"1": 1.0, "2": 1.0}, "mul_div": {"3": 1.0, "4": 0.0}})]
  spread = [_run({"add_sub": {"1": 0.0, "2": 1.0}, "mul_div": {"3": 1.0, "4": 0.0}})]
  bench.print_gap_to_unbiased({"local": unbiased, "spread": spread}, "mul_div")
  lines = capsys.readouterr().out.strip().split("\n")
  assert "mul_div*" in lines[1]
  row = lines[2].split()
  assert row[0] == "spread" and row[1] == "1"
  assert row[2] == "-0.500" and row[5] == "+0.000"
  assert float(row[-1]) == pytest.approx(np.mean([0.5, 0.0]))
  # Without an unbiased run there is nothing to compare with: nothing printed.
  bench.print_gap_to_unbiased({"spread": spread}, "mul_div")
  assert capsys.readouterr().out == ""
