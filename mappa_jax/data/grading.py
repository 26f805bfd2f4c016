"""Rule-based grading of math answers: last-boxed extraction and equivalence.

`is_equivalent(pred, gold)` decides in three stages, cheapest first:
  1. normalisation (strip `$`, `\\text{}`, `\\left/\\right`, degrees, `%`, units words,
     thousands separators, `x =` prefixes) and an exact comparison of the normal forms;
  2. exact rational comparison when both sides are plain numbers (integers with leading zeros,
     decimals, `a/b`, `\\frac{a}{b}`, `\\dfrac`, `\\tfrac`): "023" = "23", "18.0" = "18",
     "0.5" = "\\frac12", while "23" != "23.0001";
  3. otherwise math-verify (symbolic: sets, radicals, pi, intervals, ...).

Competition golds with alternatives, e.g. AIME's "080 or 081 (both were accepted)", accept
either alternative; other "a or b" / "a and b" golds are sets of solutions, compared as sets.

Time is bounded. math-verify's timeout uses SIGALRM, which only works in the main thread (it
raises off the main thread). In the main thread we use it; in any other thread (thread pools,
asyncio executors) the math-verify stage runs in a small spawned worker process with a
wall-clock limit, and a hung worker is terminated and replaced. A timeout grades as False.
"""
from __future__ import annotations

import atexit
import fractions
import functools
import logging
import multiprocessing
import re
import threading

_LOG = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed_answer(text: str) -> str | None:
  """Content of the LAST `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces matched.

  `\\boxed 5` (no braces) gives the token up to the next space or `$`. Returns None when there
  is no box or the last box is unbalanced.
  """
  if not text:
    return None
  start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
  if start < 0:
    return None
  cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
  i = start + len(cmd)
  if i < len(text) and text[i] == "{":
    depth = 0
    for j in range(i, len(text)):
      ch = text[j]
      if ch == "\\":  # skip escaped braces such as \{ \}
        continue
      if ch == "{" and (j == 0 or text[j - 1] != "\\"):
        depth += 1
      elif ch == "}" and (j == 0 or text[j - 1] != "\\"):
        depth -= 1
        if depth == 0:
          return text[i + 1:j].strip()
    return None
  match = re.match(r"\s+([^\s$]+)", text[i:])
  return match.group(1).strip() if match else None


# ---------------------------------------------------------------------------------------------
# Normalisation

_ACCEPTED_NOTE = re.compile(r"\((?:[^()]*\b(?:accepted|either|both)\b[^()]*)\)", re.I)
_UNIT_WORDS = (
    "degrees", "degree", "cm", "km", "meters", "meter", "inches", "inch", "feet", "foot",
    "units", "unit", "dollars", "dollar", "cents", "cent", "minutes", "minute", "seconds",
    "second", "hours", "hour", "days", "day", "mph", "sq", "square",
)
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def _strip_text_macros(s: str) -> str:
  # \text{..}, \textbf{..}, \mathrm{..}, \mbox{..} -> their content.
  prev = None
  while prev != s:
    prev = s
    s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1",
               s)
  return s


def normalize_answer(s: str) -> str:
  """A canonical text form of a math answer (used for the cheap comparisons)."""
  s = s.strip()
  box = extract_boxed_answer(s)
  if box is not None:
    s = box
  s = s.replace("\\$", "").replace("$", "").replace("\u2212", "-")  # \u2212: unicode minus
  s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "")
  s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = _strip_text_macros(s)
  s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
  s = s.replace("\\%", "").replace("%", "").replace("°", "")
  s = s.strip().rstrip(".").strip()
  # Leading "x =" / "n=" (one variable name) is not part of the value.
  s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[^=])", "", s)
  # Trailing unit words ("5 cm", "30 degrees").
  words = "|".join(_UNIT_WORDS)
  s = re.sub(rf"(?<=[\d}}])\s*\\?(?:{words})\b\.?$", "", s, flags=re.I)
  s = s.strip()
  if _THOUSANDS.match(s.replace(" ", "")):
    s = s.replace(",", "")
  s = re.sub(r"(?<=\d)\\?\s+(?=\d{3}\b)", "", s) if re.fullmatch(r"\d{1,3}(\s\d{3})+", s) else s
  return s.strip()


_PLAIN = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_SLASH = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def parse_number(s: str) -> fractions.Fraction | None:
  """Exact value of a plain number string ("023", "18.0", "-3/4", "\\frac{7}{2}"), else None."""
  s = s.replace(" ", "").strip()
  if _PLAIN.match(s):
    try:
      return fractions.Fraction(s)
    except (ValueError, ZeroDivisionError):
      return None
  m = _SLASH.match(s)
  if m and int(m.group(2)) != 0:
    return fractions.Fraction(int(m.group(1)), int(m.group(2)))
  # \frac12, \frac{1}{2}, -\frac{1}{2}
  m = re.match(r"^(-?)\\frac\s*(?:\{(-?\d+)\}|(\d))\s*(?:\{(-?\d+)\}|(\d))$", s)
  if m:
    num = int(m.group(2) or m.group(3))
    den = int(m.group(4) or m.group(5))
    if den == 0:
      return None
    value = fractions.Fraction(num, den)
    return -value if m.group(1) else value
  return None


def _alternatives(gold: str) -> list[str]:
  """Gold answers that each count as correct ("080 or 081 (both were accepted)")."""
  if _ACCEPTED_NOTE.search(gold):
    core = _ACCEPTED_NOTE.sub("", gold).strip()
    parts = re.split(r"\s+or\s+|\s*,\s*", core)
    return [p for p in (x.strip() for x in parts) if p]
  return [gold]


def _as_set_text(s: str) -> str:
  """'2 or 3' / '2 and 3' -> '2, 3' (a set of solutions)."""
  return re.sub(r"\s+(?:or|and)\s+|\s*\\text\{\s*(?:or|and)\s*\}\s*", ", ", s)


# ---------------------------------------------------------------------------------------------
# math-verify stage with a bounded time in every thread


def _math_verify_raw(pred: str, gold: str, timeout_s: int | None) -> bool:
  from math_verify import parse, verify  # pylint: disable=g-import-not-at-top
  wrap = lambda x: "$" + x + "$"
  gold_parsed = parse(wrap(gold), parsing_timeout=timeout_s)
  pred_parsed = parse(wrap(pred), parsing_timeout=timeout_s)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


def _worker_entry(pred: str, gold: str, timeout_s: int) -> bool:
  # Runs in the worker's main thread, so math-verify's own alarm bounds each call there.
  try:
    return _math_verify_raw(pred, gold, timeout_s=timeout_s)
  except Exception:  # pylint: disable=broad-except
    return False


class _Worker:
  """A one-process pool for off-main-thread math-verify calls (restarted after a hang)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._pool = None

  def run(self, pred: str, gold: str, timeout_s: float) -> bool:
    with self._lock:
      if self._pool is None:
        self._pool = multiprocessing.get_context("spawn").Pool(processes=1)
      pool = self._pool
    inner = max(1, int(round(timeout_s)))
    result = pool.apply_async(_worker_entry, (pred, gold, inner))
    # The worker's own alarm stops a slow parse/verify (2 x inner); the outer limit only
    # catches a truly hung worker, and allows for its start-up (spawn + sympy import).
    try:
      return bool(result.get(timeout=2 * inner + 30.0))
    except multiprocessing.TimeoutError:
      _LOG.warning("math-verify worker hung (pred=%r gold=%r); restarting it", pred[:80],
                   gold[:80])
      with self._lock:
        if self._pool is pool:
          pool.terminate()
          self._pool = None
      return False

  def close(self):
    with self._lock:
      if self._pool is not None:
        self._pool.terminate()
        self._pool = None


_WORKER = _Worker()
atexit.register(_WORKER.close)  # no Pool.__del__ noise at interpreter exit


def _math_verify(pred: str, gold: str, timeout_s: float) -> bool:
  if threading.current_thread() is threading.main_thread():
    try:
      return _math_verify_raw(pred, gold, timeout_s=max(1, int(round(timeout_s))))
    except Exception:  # pylint: disable=broad-except  (math-verify TimeoutException etc.)
      return False
  return _WORKER.run(pred, gold, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------


def _compare_one(pred: str, gold: str, timeout_s: float) -> bool:
  p, g = normalize_answer(pred), normalize_answer(gold)
  if not p:
    return False
  if p == g or p.replace(" ", "").lower() == g.replace(" ", "").lower():
    return True
  pv, gv = parse_number(p), parse_number(g)
  if pv is not None and gv is not None:
    return pv == gv
  p_set, g_set = _as_set_text(p), _as_set_text(g)
  return _cached_math_verify(p_set, g_set, timeout_s)


@functools.lru_cache(maxsize=4096)
def _cached_math_verify(pred: str, gold: str, timeout_s: float) -> bool:
  return _math_verify(pred, gold, timeout_s)


def is_equivalent(pred: str | None, gold: str | float | int | None, *,
                  timeout_s: float = 5.0) -> bool:
  """True when the predicted answer equals the gold answer (see the module docstring).

  Args:
    pred: the model's answer (a bare answer or a text with a `\\boxed{}`); None is wrong.
    gold: the label (AMC floats such as 18.0 are accepted as numbers).
    timeout_s: bound on the symbolic stage; a timeout grades as False. Safe in any thread.
  """
  if pred is None or gold is None:
    return False
  gold_text = repr(gold) if isinstance(gold, float) else str(gold)
  pred = str(pred)
  if not pred.strip():
    return False
  if normalize_answer(pred) == normalize_answer(gold_text):
    return True
  return any(_compare_one(pred, alt, timeout_s) for alt in _alternatives(gold_text))


def grade_response(text: str, gold: str | float | int | None, **kwargs) -> float:
  """1.0 if the last boxed answer in `text` is equivalent to `gold`, else 0.0."""
  return float(is_equivalent(extract_boxed_answer(text), gold, **kwargs))
