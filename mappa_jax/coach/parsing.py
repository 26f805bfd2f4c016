"""Strict parsing of coach replies, and the reward an invalid verdict turns into.

A verdict line is `PROCESS_SCORE: <number>` (and `ANSWER_CORRECT: 0|1` when asked), alone on its
line apart from markdown decoration: `**PROCESS_SCORE:** 7`, `PROCESS_SCORE: **7**`,
`PROCESS_SCORE: 7/10`, `PROCESS_SCORE: [7].` all read as 7. The LAST such line decides (a coach
often quotes the format before answering); a value outside the range makes the reply
unparseable rather than being clamped. Nothing else in the text is ever read as a score.
"""
from __future__ import annotations

import dataclasses
import re

from mappa_jax.coach.types import CoachResult

_DECOR = r"[ \t*_`~#>]*"  # markdown decoration, never a line break
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_LINE = re.compile(
    rf"^{_DECOR}PROCESS[_ ]SCORE{_DECOR}[:=]{_DECOR}\[?{_DECOR}{_NUMBER}{_DECOR}\]?"
    rf"(?:{_DECOR}/{_DECOR}10(?:\.0+)?)?{_DECOR}\]?{_DECOR}\.?{_DECOR}$",
    re.IGNORECASE | re.MULTILINE)
_ANSWER_LINE = re.compile(
    rf"^{_DECOR}ANSWER[_ ]CORRECT{_DECOR}[:=]{_DECOR}\[?{_DECOR}([01])(?:\.0+)?{_DECOR}\]?"
    rf"{_DECOR}\.?{_DECOR}$",
    re.IGNORECASE | re.MULTILINE)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What could be read from one reply.

  score: 0..10 or None; answer_correct: bool or None; problem: '' when everything needed was
  found, else what is wrong (fed back to the coach in the re-ask).
  """
  score: float | None
  answer_correct: bool | None
  problem: str

  @property
  def ok(self) -> bool:
    return not self.problem


def strip_reasoning(text: str) -> str:
  """The visible answer of a thinking model: `<think>...</think>` blocks removed, and for a
  reply whose opening tag was pre-filled, everything up to the last `</think>`."""
  text = _THINK_BLOCK.sub("", text)
  close = text.lower().rfind("</think>")
  if close >= 0:
    text = text[close + len("</think>"):]
  return text.strip()


def _last_score(text: str) -> tuple[float | None, str]:
  matches = list(_SCORE_LINE.finditer(text))
  if not matches:
    return None, "no line of the form 'PROCESS_SCORE: <0-10>'"
  m = matches[-1]
  raw = m.group(1)
  value = float(raw)
  if not 0.0 <= value <= 10.0:
    return None, f"PROCESS_SCORE {raw} is outside 0-10"
  return value, ""


def _last_answer(text: str) -> bool | None:
  matches = list(_ANSWER_LINE.finditer(text))
  return matches[-1].group(1) == "1" if matches else None


def parse_verdict(text: str, needs_answer_correct: bool) -> Verdict:
  """Reads the verdict from a coach reply (reasoning blocks ignored)."""
  visible = strip_reasoning(text)
  score, problem = _last_score(visible)
  answer = _last_answer(visible)
  if not problem and needs_answer_correct and answer is None:
    problem = "no line of the form 'ANSWER_CORRECT: 0' or 'ANSWER_CORRECT: 1'"
  return Verdict(score=score, answer_correct=answer if needs_answer_correct else None,
                 problem=problem)


def merge_verdicts(first: Verdict, retry: Verdict, needs_answer_correct: bool) -> Verdict:
  """Fills what the first reply lacked from the re-ask reply."""
  score = first.score if first.score is not None else retry.score
  answer = first.answer_correct if first.answer_correct is not None else retry.answer_correct
  problem = ""
  if score is None:
    problem = retry.problem or first.problem
  elif needs_answer_correct and answer is None:
    problem = "no ANSWER_CORRECT after the re-ask"
  return Verdict(score=score, answer_correct=answer, problem=problem)


def reward_from_result(result: CoachResult, invalid_policy: str = "mask",
                       neutral_score: float = 5.0, scale: float = 0.1) -> float | None:
  """The scalar reward of an action: score * scale, or for an invalid verdict None (masked out
  of the loss, the default) or neutral_score * scale (invalid_policy='neutral')."""
  if result.is_scored:
    return float(result.score) * scale
  if invalid_policy == "mask":
    return None
  if invalid_policy == "neutral":
    return float(neutral_score) * scale
  raise ValueError(f"coach.invalid_policy must be 'mask' or 'neutral', got {invalid_policy!r}")
