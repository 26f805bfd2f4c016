"""Exact arithmetic on text and on straight-line programs.

Two verifiable checks a rule-based judge can make without solving a problem, shared by the
rule coach (which scores them) and fault injection (which makes sure an injected fault really
changes a result):

  * stated equations: `12 + 5 - 3 = 14` written in prose is either true or false. Every
    `<arithmetic> = <number>` is evaluated exactly (fractions; a decimal right-hand side is
    accepted at its shown precision, so `1/3 = 0.333` holds).
  * straight-line programs: a program made only of assignments of arithmetic to names and
    prints (`n = 12`, `n += 5`, `print(n)`) transcribes a calculation. Its numeric literals
    are its operands, and it can be run exactly without executing any code. An operand the
    problem never states (numbers_in: digits, `1,000`, `25%` as .25 and .75, number words
    such as `three` or `dozen`) nor implies (implied_constants: 60 when it speaks of hours or
    minutes, 7 of weeks, 100 of percent or cents, ...) was taken from somewhere else.

Nothing here executes Python: programs are walked with `ast` and only integer/decimal
constants, names, + - * / // % and unary minus are understood; anything else means "not
straight-line" (None).
"""
from __future__ import annotations

import ast
import dataclasses
import operator
import re
from fractions import Fraction
from typing import Callable

# Keeps evaluation cheap and bounded: a value past this is "not a calculation we check".
_MAX_ABS = Fraction(10) ** 15
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
# `1,000` and `12,500.50`: the plain pattern alone reads them as 1 and 0 (and 12 and 500.5).
_GROUPED = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)")
_PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:%|percent\b|per\s+cent\b)", re.I)
_FRACTION = re.compile(r"(?<![\w.])(\d+)\s*/\s*(\d+)(?![\d.])")


def _floordiv(a: Fraction, b: Fraction) -> Fraction:
  return Fraction(a // b)


def _mod(a: Fraction, b: Fraction) -> Fraction:
  return a - b * (a // b)


_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: _floordiv, ast.Mod: _mod,
}


def _constant(node: ast.AST) -> Fraction | None:
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
  return None


def _eval(node: ast.AST, env: dict[str, Fraction]) -> Fraction | None:
  """Exact value of an arithmetic expression node, None when it is not plain arithmetic."""
  value = _constant(node)
  if value is not None:
    return value
  if isinstance(node, ast.Name):
    return env.get(node.id)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
    inner = _eval(node.operand, env)
    if inner is None:
      return None
    return -inner if isinstance(node.op, ast.USub) else inner
  if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    left, right = _eval(node.left, env), _eval(node.right, env)
    if left is None or right is None:
      return None
    if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
      return None
    out = _BINOPS[type(node.op)](left, right)
    return out if abs(out) <= _MAX_ABS else None
  return None


def eval_arith(expr: str) -> Fraction | None:
  """Exact value of an arithmetic expression ('(12 + 6) * 3 / 2 - 4'), else None.

  `×`, `÷` and `·` are read as * and /. Names, calls, powers and anything else give None.
  """
  text = expr.replace("×", "*").replace("·", "*").replace("÷", "/").strip()
  if not text or len(text) > 300:
    return None
  try:
    tree = ast.parse(text, mode="eval")
  except SyntaxError:
    return None
  return _eval(tree.body, {})


# ------------------------------------------------------------------------- stated equations

_ARITH_CHARS = set("0123456789.+-*/×÷·() \t")
_OPERATORS = set("+-*/×÷·")
_RHS = re.compile(r"\s*(-?\d+(?:\.\d+)?)")
# What may follow a right-hand side that makes it something else than the plain value of the
# left (a `%` sign is judged instead: Equation.holds): a percentage in words, a quotient with its remainder (`10 / 3 = 3 remainder 1`,
# `3 r 1`, `3 R1`, `3 rem. 1`, `3 with a remainder of 1`), a mixed number (`7 / 2 = 3 1/2`), a
# scale word (`3000 * 2 = 6 thousand`) or a compound quantity (`90 / 60 = 1 hour 30 minutes`,
# `= 3 dollars and 50 cents`). A plain unit (`120 / 60 = 2 hours`) does not change the value:
# those are still checked.
_UNITS = (r"(?:hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s|days?|weeks?|months?|years?|"
          r"feet|foot|ft|inch(?:es)?|yards?|yd|miles?|pounds?|lbs?|ounces?|oz|dollars?|"
          r"euros?|cents?|kilograms?|kg|grams?|g|kilometers?|km|meters?|metres?|"
          r"centimeters?|cm|liters?|litres?|l)")
_NOT_PLAIN_RESULT = re.compile(
    r"\s*(?:per\s*cent\b|percent\b"
    r"|(?:with\s+(?:a\s+)?)?remainder\b|(?:rem|r)\.?\s*\d"
    r"|\d+\s*/\s*\d+"
    r"|(?:hundred|thousand|million|billion|trillion|dozen|k|m|bn)\b"
    r"|" + _UNITS + r"\.?\s*,?\s*(?:and\s+)?\d)", re.I)


@dataclasses.dataclass(frozen=True)
class Equation:
  """A stated equation `lhs = rhs` and the exact value of its left side."""
  lhs: str
  rhs: str
  value: Fraction

  @property
  def holds(self) -> bool:
    """True when the left side equals the right at its shown precision (an integer right side
    exactly: `10 / 3 = 3` is false). A percentage (`75%`) holds read as a share (`3/4 = 75%`)
    or as percent already multiplied out (`3/4 * 100 = 75%`), rounded at its shown precision
    either way (`1/3 = 33%` is the usual rounding)."""
    percent = self.rhs.endswith("%")
    number = self.rhs.rstrip("%")
    rhs = Fraction(number)
    decimals = len(number.split(".")[1]) if "." in number else 0
    tol = Fraction(1, 2 * 10 ** decimals) if decimals or percent else Fraction(0)
    if not percent:
      return abs(self.value - rhs) <= tol
    return abs(self.value * 100 - rhs) <= tol or abs(self.value - rhs) <= tol


def _lhs_before(text: str, eq: int) -> str | None:
  """The arithmetic run that ends at `text[eq] == '='`, or None (not an arithmetic equation)."""
  start = eq
  while start > 0 and text[start - 1] in _ARITH_CHARS:
    start -= 1
  while start < eq and text[start] in " \t":
    start += 1
  cut = text.rfind(". ", start, eq)
  if cut >= 0:  # a sentence ended inside the run: `... = 23. 1/3 = 0.333`
    start = cut + 2
  run = text[start:eq]
  # The run must start at a boundary: `x1,000 + 5`, `\frac{1}{2} + 3` or `2^3 + 1` are not
  # plain arithmetic, and reading only their tail would call a true statement false.
  if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_,.}^%$\\'\""):
    return None
  if start < eq and text[start] == "-":  # `x - 3 + 2`: a minus after an operand is binary
    before = text[:start].rstrip(" \t")
    if before and (before[-1].isalnum() or before[-1] in "_)]}"):
      return None
  run = run.strip()
  while run.startswith(")"):
    run = run[1:].lstrip()
  # Unbalanced opening brackets belong to the surrounding prose: `(so 2 + 3 = 5)`.
  while run.count("(") > run.count(")") and run.startswith("("):
    run = run[1:].lstrip()
  if not run or not (run[0].isdigit() or run[0] in "(-"):
    return None
  if not any(op in run.lstrip("-") for op in _OPERATORS):
    return None  # `n = 12`, `x = 5`: an assignment or a definition, not a calculation
  return run


def stated_equations(text: str) -> list[Equation]:
  """Every `<arithmetic> = <number>` in `text` whose left side evaluates exactly."""
  out = []
  for m in re.finditer(r"=", text):
    i = m.start()
    if (i > 0 and text[i - 1] in "=<>!:+-*/") or (i + 1 < len(text) and text[i + 1] == "="):
      continue  # ==, <=, >=, !=, :=, += ...
    lhs = _lhs_before(text, i)
    if lhs is None:
      continue
    rhs = _RHS.match(text, i + 1)
    if rhs is None:
      continue
    tail = text[rhs.end():rhs.end() + 40]
    if re.match(r"\s*[-+*/×÷·]\s*\d|\w|\.\d", tail):
      continue  # `= 14 + 3` (a chain) or a longer token (`= 45x`): not a stated result
    percent = re.match(r"\s*%", tail)
    if not percent and _NOT_PLAIN_RESULT.match(tail):
      continue  # `10 / 3 = 3 remainder 1`, `7 / 2 = 3 1/2`, `= 6 thousand`: another notation
    value = eval_arith(lhs)
    if value is not None:
      out.append(Equation(lhs=lhs, rhs=rhs.group(1) + ("%" if percent else ""), value=value))
  return out


def false_equations(text: str) -> list[Equation]:
  """The stated equations of `text` that do not hold."""
  return [e for e in stated_equations(text) if not e.holds]


_SMALL_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
_TENS_WORDS = {"thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
               "seventy": 70, "eighty": 80, "ninety": 90}
_SCALE_WORDS = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9}
# Words that state a number without digits (a value of 0 or 1 is always allowed anyway).
_COUNT_WORDS: dict[str, tuple[Fraction, ...]] = {
    "dozen": (Fraction(12),), "dozens": (Fraction(12),),
    "half": (Fraction(2), Fraction(1, 2)), "halves": (Fraction(2), Fraction(1, 2)),
    "halved": (Fraction(2), Fraction(1, 2)), "twice": (Fraction(2),),
    "double": (Fraction(2),), "doubled": (Fraction(2),), "doubles": (Fraction(2),),
    "pair": (Fraction(2),), "pairs": (Fraction(2),), "couple": (Fraction(2),),
    "both": (Fraction(2),), "twins": (Fraction(2),),
    "thrice": (Fraction(3),), "triple": (Fraction(3),), "tripled": (Fraction(3),),
    "third": (Fraction(3), Fraction(1, 3)), "thirds": (Fraction(3), Fraction(1, 3)),
    "quadruple": (Fraction(4),), "quadrupled": (Fraction(4),),
    "quarter": (Fraction(4), Fraction(1, 4), Fraction(3, 4)),
    "quarters": (Fraction(4), Fraction(1, 4), Fraction(3, 4)),
}
_WORD_VALUES = {**{w: i for i, w in enumerate(_SMALL_WORDS)}, **_TENS_WORDS}
_WORD = re.compile(r"[a-z]+")


def _number_words(text: str) -> set[Fraction]:
  """Numbers written in words: each word's value and each run's (`two hundred fifty` gives 2,
  100, 200 and 250; `twenty-five` 25; `a dozen` 12; `half` 2 and 1/2)."""
  out: set[Fraction] = set()
  total = current = 0
  in_run = last_scale = False

  def close() -> None:
    nonlocal total, current, in_run, last_scale
    if in_run:
      out.add(Fraction(total + current))
    total = current = 0
    in_run = last_scale = False

  for m in _WORD.finditer((text or "").lower()):
    word = m.group(0)
    # A run of number words is broken by anything but spaces, hyphens and `and`.
    gap = text[m.start() - 1] if m.start() > 0 else " "
    if in_run and gap not in " -":
      close()
    if word in _WORD_VALUES:
      if in_run and not last_scale and current % 100 and current % 10 == 0 < _WORD_VALUES[word] \
          < 10:
        pass  # `twenty-five`: a tens word and a unit make one number
      elif in_run and not last_scale and current % 100:
        close()  # `three four`: two numbers
      out.add(Fraction(_WORD_VALUES[word]))
      current += _WORD_VALUES[word]
      in_run, last_scale = True, False
    elif word in _SCALE_WORDS:
      scale = _SCALE_WORDS[word]
      out.add(Fraction(scale))
      if scale == 100:
        current = max(current, 1) * 100
      else:
        total += max(current, 1) * scale
        current = 0
      in_run, last_scale = True, True
    elif word == "and" and in_run and last_scale:
      continue  # `two hundred and fifty` is one number; `three and four` are two
    else:
      close()
      out.update(_COUNT_WORDS.get(word, ()))
  close()
  return out


def numbers_in(text: str) -> set[Fraction]:
  """Every number `text` states (signs ignored): integers and decimals, with thousands
  separators (`1,000` is 1000; its pieces are kept too, in case the comma separates a list),
  fractions `3/4` (3, 4 and 3/4), percentages `25%` / `25 percent` (25, 1/4 and 3/4: a share
  and what is left), and number words (`three`, `twenty-five`, `two hundred`, `dozen`,
  `half`, `twice`; see _number_words)."""
  text = text or ""
  out = {abs(Fraction(n)) for n in _NUMBER.findall(text)}
  out |= {Fraction(n.replace(",", "")) for n in _GROUPED.findall(text)}
  out |= {Fraction(int(a), int(b)) for a, b in _FRACTION.findall(text) if int(b) != 0}
  for p in _PERCENT.findall(text):
    share = Fraction(p) / 100
    out |= {share, abs(1 - share)}
  return out | _number_words(text)


# Constants a problem implies without writing them, by the words it uses: a program that
# turns hours into minutes multiplies by 60 although the problem never says 60.
_IMPLIED: tuple[tuple[re.Pattern, tuple[int, ...]], ...] = tuple(
    (re.compile(r"\b(?:" + words + r")\b", re.I), values) for words, values in (
        (r"hours?|hourly|hrs?", (60, 3600, 24)),
        (r"minutes?|mins?", (60, 3600)),
        (r"seconds?|secs?", (60, 3600)),
        (r"days?|daily", (24, 7, 30, 31, 365)),
        (r"weeks?|weekly|fortnights?", (7, 14, 52)),
        (r"months?|monthly", (12, 30, 31, 4)),
        (r"years?|yearly|annual(?:ly)?", (12, 52, 365, 366)),
        (r"decades?", (10,)),
        (r"centur(?:y|ies)", (100,)),
        (r"percent|per\s+cent|percentage|%", (100,)),
        (r"cents?|dollars?|euros?|pennies|penny", (100,)),
        (r"nickels?", (5, 100)),
        (r"dimes?", (10, 100)),
        (r"quarters?", (25, 100)),
        (r"inch(?:es)?|feet|foot|ft", (12, 3)),
        (r"yards?", (3, 36)),
        (r"miles?", (5280, 1760)),
        (r"pounds?|lbs?|ounces?|oz", (16,)),
        (r"grams?|kilograms?|kilos?|kg|g", (1000,)),
        (r"meters?|metres?|kilometers?|kilometres?|km|centimeters?|centimetres?|cm|mm",
         (10, 100, 1000)),
        (r"liters?|litres?|milliliters?|millilitres?|ml|l", (1000,)),
        (r"thousands?|kilo\w*", (1000,)),
    ))
# `%` is not a word character: `\b%\b` would need letters around it.
_PERCENT_SIGN = re.compile(r"\d\s*%")


def implied_constants(text: str) -> set[Fraction]:
  """Unit constants that the words of `text` imply: 60 for hours or minutes, 24 and 7 for days,
  12 for months or inches, 100 for percent or cents, 1000 for grams or meters, ..."""
  out = {Fraction(v) for pattern, values in _IMPLIED if pattern.search(text or "")
         for v in values}
  if _PERCENT_SIGN.search(text or ""):
    out.add(Fraction(100))
  return out


# ----------------------------------------------------------------------- straight-line code


@dataclasses.dataclass(frozen=True)
class Literal:
  """A numeric literal of a program: its value and where it is (1-based line, columns)."""
  value: Fraction
  line: int
  col: int
  end_col: int


@dataclasses.dataclass(frozen=True)
class StraightLine:
  """A straight-line arithmetic program: its operands and what it prints."""
  literals: tuple[Literal, ...]
  printed: tuple[Fraction, ...]


def _literals(node: ast.AST) -> list[Literal]:
  out = []
  for sub in ast.walk(node):
    value = _constant(sub)
    if value is not None:
      out.append(Literal(value, sub.lineno, sub.col_offset, sub.end_col_offset))
  return out


def straight_line(code: str) -> StraightLine | None:
  """The program as a straight-line calculation, or None when it is anything else.

  Statements allowed: `name = expr`, `name op= expr` (op in + - * / // %), `print(expr, ...)`
  and a bare `expr`; expressions: numeric constants, assigned names, those operators and unary
  minus. A program that uses an unassigned name, divides by zero or prints nothing is still
  straight-line when every statement has that form (its printed tuple is then shorter).
  """
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return None
  if not tree.body:
    return None
  env: dict[str, Fraction] = {}
  literals: list[Literal] = []
  printed: list[Fraction] = []
  for stmt in tree.body:
    if isinstance(stmt, ast.Assign):
      if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
        return None
      expr, target, op = stmt.value, stmt.targets[0].id, None
    elif isinstance(stmt, ast.AugAssign):
      if not isinstance(stmt.target, ast.Name) or type(stmt.op) not in _BINOPS:
        return None
      expr, target, op = stmt.value, stmt.target.id, type(stmt.op)
    elif isinstance(stmt, ast.Expr):
      call = stmt.value
      is_print = (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                  and call.func.id == "print" and not call.keywords)
      for arg in (call.args if is_print else [call]):
        if not _is_arith(arg):
          return None
        literals += _literals(arg)
        value = _eval(arg, env)
        if is_print and value is not None:
          printed.append(value)
      continue
    else:
      return None
    if not _is_arith(expr):
      return None
    literals += _literals(expr)
    value = _eval(expr, env)
    if op is not None:
      old = env.get(target)
      value = (None if old is None or value is None or (value == 0 and op in (
          ast.Div, ast.FloorDiv, ast.Mod)) else _BINOPS[op](old, value))
    if value is None:
      env.pop(target, None)
    else:
      env[target] = value
  return StraightLine(tuple(literals), tuple(printed))


def _is_arith(node: ast.AST) -> bool:
  """Only constants, names, the arithmetic operators and unary +/-."""
  for sub in ast.walk(node):
    if isinstance(sub, (ast.Constant,)) and type(sub.value) not in (int, float):
      return False
    if not isinstance(sub, (ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp,
                            ast.USub, ast.UAdd, *_BINOPS)):
      return False
  return True


def foreign_operands(code: str, source: str, *, ignore: tuple[int, ...] = (0, 1)
                     ) -> list[Fraction] | None:
  """Operands of a straight-line program that `source` (the problem) neither states nor
  implies.

  Returns None when the program is not straight-line (a general program may need constants of
  its own: loop bounds, exponents), else the literal values (sorted, unique) absent from
  numbers_in(source) and implied_constants(source), with the idiomatic `ignore` values
  allowed. Small integers are not allowed wholesale: a misread operand is usually one (a 5
  read as 7), and a problem that needs one without writing it says so in words (`twice`,
  `half`, `three`).
  """
  program = straight_line(code)
  if program is None:
    return None
  known = numbers_in(source) | implied_constants(source) | {Fraction(i) for i in ignore}
  return sorted({lit.value for lit in program.literals if abs(lit.value) not in known})


def format_number(value: Fraction) -> str:
  """A Fraction as the shortest plain text: '14', '2.5', '7/3'."""
  if value.denominator == 1:
    return str(value.numerator)
  as_float = float(value)
  if Fraction(repr(as_float)) == value:
    return repr(as_float)
  return f"{value.numerator}/{value.denominator}"
