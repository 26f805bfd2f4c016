"""Exact arithmetic checks: stated equations and straight-line programs (no code executed)."""
from fractions import Fraction

from mappa_jax.tools import arith


def test_stated_equations_are_found_and_judged_exactly():
  text = ("So 12 + 5 - 3 = 16, and (12 + 6) * 3 / 2 - 4 = 23. Also 1/3 = 0.333 and "
          "7 × 2 = 14; (so 2 + 3 = 5).")
  found = [(e.lhs, e.rhs, e.holds) for e in arith.stated_equations(text)]
  assert found == [("12 + 5 - 3", "16", False), ("(12 + 6) * 3 / 2 - 4", "23", True),
                   ("1/3", "0.333", True), ("7 × 2", "14", True), ("2 + 3", "5", True)]
  assert [e.value for e in arith.false_equations(text)] == [Fraction(14)]


def test_what_is_not_a_stated_calculation_is_left_alone():
  # Assignments, comparisons, chains, powers, LaTeX and thousands separators: reading only a
  # tail of them would call a true statement false.
  for text in ("n = 12", "x = 5 + 2", "a == 3 + 4", "n += 5", "2^3 + 1 = 9", "1,000 + 5 = 1005",
               "\\frac{1}{2} + 3 = 3.5", "7 * 2 = 14 + 0", "2 + 2 = 45x", "x1 + 2 = 3",
               "1/3 = 0.3", "x - 3 + 2 = 14", "f(x) - 1 + 1 = 7", "so -3 + 5 = 2"):
    eqs = arith.stated_equations(text)
    assert all(e.holds for e in eqs), (text, eqs)
  assert not arith.stated_equations("x = 5 + 2") and not arith.stated_equations("2^3 + 1 = 9")
  assert not arith.stated_equations("x - 3 + 2 = 14")  # the left operand is not a number
  # A minus after a word may be either; after punctuation it is a sign.
  assert not arith.stated_equations("so -3 + 5 = 2")
  assert [e.lhs for e in arith.stated_equations("so: -3 + 5 = 2")] == ["-3 + 5"]
  # A decimal result holds at its shown precision: 1/3 = 0.3 is a correct rounding, 0.4 is not.
  assert [e.holds for e in arith.stated_equations("1/3 = 0.3 and 1/3 = 0.4")] == [True, False]
  assert arith.eval_arith("1/0") is None and arith.eval_arith("2 ** 3") is None
  assert arith.eval_arith("(12 + 6) * 3 / 2 - 4") == 23 and arith.eval_arith("7 // 2") == 3


def test_straight_line_programs_run_exactly_and_expose_their_operands():
  prog = arith.straight_line("n = 12\nn += 5\nn //= 4\nprint(n)\nprint(n * 2, 7 / 2)")
  assert [lit.value for lit in prog.literals] == [12, 5, 4, 2, 7, 2]
  assert prog.printed == (4, 8, Fraction(7, 2))
  lit = prog.literals[1]
  assert (lit.line, lit.col, lit.end_col) == (2, 5, 6)
  for code in ("import math\nprint(math.pi)", "for i in range(3):\n  print(i)",
               "def f():\n  return 1", "print(x, sep='')", "n = 'a'", "syntax error("):
    assert arith.straight_line(code) is None, code
  # Printing nothing, or a name never assigned, is still straight-line (just no value).
  assert arith.straight_line("n = 2\nn").printed == ()
  assert arith.straight_line("print(m)").printed == ()


def test_foreign_operands_are_numbers_the_problem_does_not_contain():
  problem = "Ava has 12 apples, then gets 5 more, then gives away 3. How many now?"
  assert arith.foreign_operands("n = 12\nn += 5\nn -= 3\nprint(n)", problem) == []
  assert arith.foreign_operands("n = 12\nn += 7\nn -= 3\nprint(n)", problem) == [7]
  assert arith.foreign_operands("n = 0\nn += 12 * 1\nprint(n)", problem) == []  # 0, 1 allowed
  assert arith.foreign_operands("import math\nprint(99)", problem) is None
  assert arith.numbers_in("x1 has 12 and 3.5; 2024-01") == {12, Fraction(7, 2), 2024, 1}
  assert arith.format_number(Fraction(7, 2)) == "3.5" and arith.format_number(Fraction(7, 3)) \
      == "7/3" and arith.format_number(Fraction(14)) == "14"
