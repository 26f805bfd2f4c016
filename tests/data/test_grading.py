"""Grader tests: boxed extraction and a table of tricky answer pairs."""
import asyncio
import concurrent.futures
import threading

import pytest

from mappa_jax.data import grading

EXTRACT_CASES = [
    ("so the answer is \\boxed{23}.", "23"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{\\{1, 2\\}} done", "\\{1, 2\\}"),
    ("$\\boxed 5$", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and finally \\fbox{4}", "4"),
    ("no box here, answer 5", None),
    ("\\boxed{unbalanced", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_boxed_answer(text, expected):
  assert grading.extract_boxed_answer(text) == expected


# (pred, gold, expected)
EQUIV_CASES = [
    # integers, leading zeros, decimals
    ("023", "23", True),
    ("23", "023", True),
    ("18", 18.0, True),
    ("18.0", "18", True),
    ("18.00", "18", True),
    ("24", "23", False),
    ("23.0001", "23", False),
    ("-5", "5", False),
    # fractions vs decimals, LaTeX forms
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("1/2", "\\tfrac{1}{2}", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{1}{3}", "0.3", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    # radicals, pi
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("3\\pi", "3\\pi", True),
    ("2\\sqrt{3}", "3\\sqrt{2}", False),
    # "or"-answers and sets
    ("080", "080 or 081 (both were accepted)", True),
    ("81", "080 or 081 (both were accepted)", True),
    ("82", "080 or 081 (both were accepted)", False),
    ("2, 1", "1 or 2", True),
    ("\\{1,2\\}", "2, 1", True),
    ("1", "1 or 2", False),
    # text, units, degrees, percent, thousands separators
    ("336", "336^\\circ", True),
    ("336^{\\circ}", "336", True),
    ("\\text{5 cm}", "5", True),
    ("30 degrees", "30", True),
    ("10\\%", "10", True),
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1,001", "1000", False),
    ("x = 7", "7", True),
    ("\\$18", "18", True),
    ("\u22125", "-5", True),
    ("x=2 \\text{ or } x=3", "2, 3", True),
    ("$\\boxed{12}$", "12", True),
    # no answer
    (None, "5", False),
    ("", "5", False),
    ("   ", "0", False),
]


@pytest.mark.parametrize("pred,gold,expected", EQUIV_CASES)
def test_is_equivalent_table(pred, gold, expected):
  assert grading.is_equivalent(pred, gold) is expected


def test_grade_response():
  assert grading.grade_response("work... \\boxed{023}", "23") == 1.0
  assert grading.grade_response("work... no box 23", "23") == 0.0


def test_safe_off_main_thread():
  """math-verify's SIGALRM timeout raises off the main thread: the grader must not."""
  cases = [("2\\sqrt{3}", "\\sqrt{12}", True), ("\\{1,3\\}", "3, 1", True),
           ("3\\sqrt{2}", "\\sqrt{12}", False)]
  grading._cached_math_verify.cache_clear()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    got = list(pool.map(lambda c: grading.is_equivalent(c[0], c[1]), cases))
  assert got == [c[2] for c in cases]
  assert threading.current_thread() is threading.main_thread()
  assert grading._WORKER._pool is not None  # the symbolic stage ran in the worker process


def test_safe_in_asyncio_executor():
  async def main():
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, grading.is_equivalent, "\\pi/2", "\\frac{\\pi}{2}")
  grading._cached_math_verify.cache_clear()
  assert asyncio.run(main()) is True
