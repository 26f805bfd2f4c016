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


def test_percent_remainder_mixed_numbers_and_scales_after_the_result():
  judged = {t: [(e.rhs, e.holds) for e in arith.stated_equations(t)] for t in (
      "3/4 = 75%", "3/4 * 100 = 75%", "1/3 = 33%", "3/4 = 70%", "1/3 = 34%")}
  assert judged == {"3/4 = 75%": [("75%", True)], "3/4 * 100 = 75%": [("75%", True)],
                    "1/3 = 33%": [("33%", True)], "3/4 = 70%": [("70%", False)],
                    "1/3 = 34%": [("34%", False)]}
  # Another notation after the result: not a plain value, not judged.
  for text in ("10 / 3 = 3 remainder 1", "10/3 = 3 r 1", "10 / 3 = 3 R1", "10/3 = 3 rem. 1",
               "10 / 3 = 3 with a remainder of 1", "7 / 2 = 3 1/2", "3000 * 2 = 6 thousand",
               "90 / 60 = 1 hour 30 minutes", "350 / 100 = 3 dollars and 50 cents",
               "3/4 = 75 percent"):
    assert not arith.stated_equations(text), text
  # A plain unit does not change the value: still judged, either way.
  assert [e.holds for e in arith.stated_equations("120 / 60 = 2 hours; 120 / 60 = 3 hours")] \
      == [True, False]
  # `10 / 3 = 3` without a remainder is false; a chain `= 16 and 16 - 3 = 13` is judged.
  assert [e.holds for e in arith.stated_equations("10 / 3 = 3")] == [False]
  assert [e.holds for e in arith.stated_equations("12 + 5 = 16 and 16 - 3 = 13")] == [False,
                                                                                     True]


def test_numbers_in_reads_separators_percentages_fractions_and_words():
  assert arith.numbers_in("1,000 coins and 12,500.5 more") >= {1000, Fraction(25001, 2)}
  assert arith.numbers_in("25% off") == {25, Fraction(1, 4), Fraction(3, 4)}
  assert arith.numbers_in("12.5 percent") >= {Fraction(1, 8), Fraction(7, 8)}
  assert arith.numbers_in("3/4 of them") == {3, 4, Fraction(3, 4)}
  words = arith.numbers_in("two hundred and fifty, twenty-five, three four, a dozen, half")
  assert words == {2, 100, 250, 50, 20, 5, 25, 3, 4, 12, Fraction(1, 2)}
  assert arith.numbers_in("three thousand four hundred") >= {3, 1000, 4, 100, 3400}
  assert arith.numbers_in("someone often") == set()  # `one`/`ten` inside words are not numbers


def test_implied_constants_follow_the_units_a_problem_speaks_of():
  assert arith.implied_constants("Ava reads for two hours") >= {60, 24}
  assert {7, 52} <= arith.implied_constants("every week")
  assert 100 in arith.implied_constants("50 cents") and 100 in arith.implied_constants("5%")
  assert arith.implied_constants("Ava has 12 apples and gets 5 more") == set()
  # Small integers are not allowed wholesale: the usual misreading is one.
  problem = "Ava has 12 apples, then gets 5 more. How many now?"
  assert arith.foreign_operands("n = 12\nn += 7\nprint(n)", problem) == [7]
  assert arith.foreign_operands("print(2 * 60)", "A film lasts two hours. Minutes?") == []
  assert arith.foreign_operands("n = 1000\nn += 250\nprint(n)", "1,000 coins, 250 more") == []
