"""Exact arithmetic on text and on straight-line programs.

Two verifiable checks a rule-based judge can make without solving a problem, shared by the
rule coach (which scores them) and fault injection (which makes sure an injected fault really
changes a result):

  * stated equations: `12 + 5 - 3 = 14` written in prose is either true or false. Every
    `<arithmetic> = <number>` is evaluated exactly (fractions; a decimal right-hand side is
    accepted at its shown precision, so `1/3 = 0.333` holds).
  * straight-line programs: a program made only of assignments of arithmetic to names and
    prints (`n = 12`, `n += 5`, `print(n)`) transcribes a calculation. Its numeric literals
    are its operands, and it can be run exactly without executing any code.

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


@dataclasses.dataclass(frozen=True)
class Equation:
  """A stated equation `lhs = rhs` and the exact value of its left side."""
  lhs: str
  rhs: str
  value: Fraction

  @property
  def holds(self) -> bool:
    rhs = Fraction(self.rhs)
    if "." not in self.rhs:
      return self.value == rhs
    decimals = len(self.rhs.split(".")[1])
    return abs(self.value - rhs) <= Fraction(1, 2 * 10 ** decimals)


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
    tail = text[rhs.end():rhs.end() + 12]
    if re.match(r"\s*[-+*/×÷·]\s*\d|\w|\.\d", tail):
      continue  # `= 14 + 3` (a chain) or a longer token (`= 45x`): not a stated result
    value = eval_arith(lhs)
    if value is not None:
      out.append(Equation(lhs=lhs, rhs=rhs.group(1), value=value))
  return out


def false_equations(text: str) -> list[Equation]:
  """The stated equations of `text` that do not hold."""
  return [e for e in stated_equations(text) if not e.holds]


def numbers_in(text: str) -> set[Fraction]:
  """Every plain number written in `text` (integers and decimals, signs ignored)."""
  return {abs(Fraction(n)) for n in _NUMBER.findall(text or "")}


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
  """Operands of a straight-line program that `source` (the problem) never mentions.

  Returns None when the program is not straight-line (a general program may need constants of
  its own: loop bounds, exponents), else the literal values (sorted, unique) absent from
  `source`, with the idiomatic `ignore` values allowed.
  """
  program = straight_line(code)
  if program is None:
    return None
  known = numbers_in(source) | {Fraction(i) for i in ignore}
  return sorted({lit.value for lit in program.literals if abs(lit.value) not in known})


def format_number(value: Fraction) -> str:
  """A Fraction as the shortest plain text: '14', '2.5', '7/3'."""
  if value.denominator == 1:
    return str(value.numerator)
  as_float = float(value)
  if Fraction(repr(as_float)) == value:
    return repr(as_float)
  return f"{value.numerator}/{value.denominator}"
