"""Deliberately imperfect MathChat demonstrations for pretraining the tiny base team.

The demonstrations are produced by running the real MathChat workflow (chat template, role
prompts, sandboxed code, tool responses, hand-offs) with a scripted policy, so the pretraining
data is rendered token for token as the workflow renders a rollout. Each agent's behaviour is a
seeded mixture, chosen so that the untrained team is clearly imperfect and so that there are
behaviours a per-action coach can select between:

  Problem Solver (1 turn): writes the problem as one expression and a claimed result,
      `12 + 5 - 3 = 14` and `\\boxed{14}`. The claim is right with probability
      `solver_correct` (a mental-arithmetic slip otherwise: off by a small amount).
  Code Executor, turn 1 (first tokens decide the mode):
      compute  (`executor_compute`): a program that replays the story line by line
               (`n = 12`, `n += 5`, `n -= 3`, `print(n)`);
      restate  (`executor_restate`): no code, repeats the Problem Solver's claim;
      bug      (the rest): code without `print` (runs, shows nothing) or with a syntax error.
  Code Executor, turn 2 (after its tool output):
      report   (`executor_report_tool`): states the number the program printed;
      restate  (the rest, and always when nothing was printed): the Problem Solver's claim.
  Verifier (1 turn):
      trust tool  (`verifier_trust_tool`, when the tool output it is shown has a number):
                  boxes that number;
      trust claim (the rest): boxes the Code Executor's stated claim.

With perfect copying the team is right about 45 % of the time under the defaults (see
`expected_accuracy`); a per-action coach can move the Code Executor to compute and report, and
the Verifier to trust the tool output, which makes the team right whenever the copying is.

Every choice is drawn from a generator seeded by (seed, the agent's prompt text), so the same
tasks and seed give byte-identical demonstrations whatever the concurrency.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

import numpy as np

from mappa_jax.data.loaders import Task
from mappa_jax.tools import code_blocks

_PY_OPS = {"+": "+", "-": "-", "*": "*", "/": "//"}
_NUMBER = re.compile(r"-?\d+")
_TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n?</tool_response>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@dataclasses.dataclass(frozen=True)
class DemoMixture:
  """Probabilities of each demonstrated behaviour (see the module docstring).

  Attributes:
    solver_correct: the Problem Solver's claimed result is right.
    executor_compute: Code Executor turn 1 writes a correct program that prints the result.
    executor_restate: Code Executor turn 1 writes no code and repeats the claim.
      (1 - compute - restate: a buggy program, half without print, half a syntax error.)
    executor_report_tool: Code Executor turn 2 states the printed number (else the claim).
    verifier_trust_tool: the Verifier boxes the tool output's number (else the stated claim).
  """
  solver_correct: float = 0.25
  executor_compute: float = 0.35
  executor_restate: float = 0.40
  executor_report_tool: float = 0.5
  verifier_trust_tool: float = 0.5

  def __post_init__(self):
    check_probabilities(self)
    if self.executor_compute + self.executor_restate > 1.0:
      raise ValueError("DemoMixture: executor_compute + executor_restate must be <= 1")

  def expected_accuracy(self) -> float:
    """Team accuracy if every agent copied numbers perfectly (the demonstrations' own rate)."""
    c, r = self.executor_compute, self.executor_restate
    bug = 1.0 - c - r
    s, t, v = self.solver_correct, self.executor_report_tool, self.verifier_trust_tool
    computed = c * (t * 1.0 + (1 - t) * (v + (1 - v) * s))
    return computed + (r + bug) * s


def check_probabilities(mixture) -> None:
  """Every field of a behaviour-mixture dataclass must be a probability in [0, 1]."""
  for f in dataclasses.fields(mixture):
    p = getattr(mixture, f.name)
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"{type(mixture).__name__}.{f.name}={p} must be a probability in [0, 1]")


def expression(start: int, steps: list) -> str:
  """The story as one left-to-right expression: `(12 + 5) * 3`."""
  expr, prev = str(start), None
  for op, v in steps:
    if op in "*/" and prev in ("+", "-"):
      expr = f"({expr})"
    expr += f" {op} {v}"
    prev = op
  return expr


def program(start: int, steps: list, *, bug: str = "") -> str:
  """The Code Executor's program: one line per sentence of the story."""
  lines = [f"n = {start}"] + [f"n {_PY_OPS[op]}= {v}" for op, v in steps]
  if bug == "no_print":
    lines.append("n")
  elif bug == "syntax":
    lines.append("print(n")
  else:
    lines.append("print(n)")
  return "\n".join(lines)


def seeded_rng(seed: int, text: str) -> np.random.Generator:
  digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _wrong(answer: int, rng: np.random.Generator) -> int:
  delta = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 else -1)
  return answer + delta if answer + delta >= 0 else answer + abs(delta)


def _section(prompt: str, title: str) -> str:
  """The text of a `## title` section of a rendered role prompt."""
  start = prompt.find(f"## {title}\n")
  if start < 0:
    return ""
  body = prompt[start + len(title) + 4:]
  end = body.find("\n## ")
  end_turn = body.find("<|im_end|>")
  cut = min(x for x in (end, end_turn, len(body)) if x >= 0)
  return body[:cut]


def _last_boxed(text: str) -> str | None:
  found = _BOXED.findall(text)
  return found[-1].strip() if found else None


def _last_number(text: str) -> str | None:
  found = _NUMBER.findall(text)
  return found[-1] if found else None


class DemoPolicy:
  """Scripted MathChat policy implementing `DemoMixture` (a ScriptedEngine script).

  Args:
    tasks: the tasks the demonstrations are made for (synthetic arithmetic: metadata holds
      'start' and 'steps'); looked up by their raw problem text in the prompt.
    mixture: behaviour probabilities.
    seed: demonstration seed.

  `chosen` records every behaviour drawn, {(agent, prompt hash): behaviour}, so a caller can
  report the realised mixture.
  """

  def __init__(self, tasks: list[Task], mixture: DemoMixture = DemoMixture(), *, seed: int = 0):
    self.mixture = mixture
    self.seed = seed
    self.by_text = {t.metadata["raw_prompt"]: t for t in tasks}
    self.chosen: dict[tuple[str, str], str] = {}

  def script(self) -> dict[str, list[Any]]:
    return {"problem_solver": [self.problem_solver],
            "code_executor": [self.executor_first, self.executor_second],
            "verifier": [self.verifier]}

  def _task(self, prompt: str) -> Task:
    problem = _section(prompt, "Problem")
    for raw, task in self.by_text.items():
      if raw in problem:
        return task
    raise KeyError(f"DemoPolicy: no task for problem {problem[:80]!r}")

  def _record(self, agent: str, key: str, behaviour: str) -> None:
    self.chosen[(agent, hashlib.sha256(key.encode()).hexdigest()[:16])] = behaviour

  # -- agents -------------------------------------------------------------------------------
  def problem_solver(self, prompt: str) -> str:
    task = self._task(prompt)
    rng = seeded_rng(self.seed, prompt)
    answer = int(task.answer)
    right = rng.random() < self.mixture.solver_correct
    claim = answer if right else _wrong(answer, rng)
    self._record("problem_solver", prompt, "correct" if right else "slip")
    expr = expression(task.metadata["start"], task.metadata["steps"])
    return f"</think>\n\n{expr} = {claim}\n\n\\boxed{{{claim}}}"

  def _executor_mode(self, first_prompt: str) -> str:
    u = seeded_rng(self.seed, first_prompt).random()
    m = self.mixture
    if u < m.executor_compute:
      return "compute"
    if u < m.executor_compute + m.executor_restate:
      return "restate"
    return "no_print" if (u - m.executor_compute - m.executor_restate) < (
        1.0 - m.executor_compute - m.executor_restate) / 2 else "syntax"

  def _claim(self, prompt: str) -> str:
    return _last_boxed(_section(prompt, "Input from Problem Solver")) or "0"

  def executor_first(self, prompt: str) -> str:
    task = self._task(prompt)
    mode = self._executor_mode(prompt)
    self._record("code_executor", prompt, mode)
    if mode == "restate":
      return f"</think>\n\nThe Problem Solver found {self._claim(prompt)}.\n\n\\boxed{{{self._claim(prompt)}}}"
    code = program(task.metadata["start"], task.metadata["steps"],
                   bug="" if mode == "compute" else mode)
    return f"</think>\n\n```python\n{code}\n```"

  def executor_second(self, prompt: str) -> str:
    # The turn-2 prompt starts with the turn-1 prompt: the same generator decides both turns.
    first = prompt[:prompt.find("<|im_start|>assistant")]
    rng = seeded_rng(self.seed + 1, first)
    responses = _TOOL_RESPONSE.findall(prompt)
    printed = _last_number(code_blocks.printed_part(responses[-1])) if responses else None
    if printed is not None and rng.random() < self.mixture.executor_report_tool:
      self._record("code_executor_turn2", first, "report")
      return f"</think>\n\nThe code printed {printed}.\n\n\\boxed{{{printed}}}"
    self._record("code_executor_turn2", first, "restate")
    claim = self._claim(prompt)
    return f"</think>\n\nThe Problem Solver found {claim}.\n\n\\boxed{{{claim}}}"

  def verifier(self, prompt: str) -> str:
    rng = seeded_rng(self.seed, prompt)
    execution = _section(prompt, "Input from Code Executor")
    responses = _TOOL_RESPONSE.findall(execution)
    tool = _last_number(code_blocks.printed_part(responses[-1])) if responses else None
    claim = _last_boxed(_TOOL_RESPONSE.sub("", execution))
    if tool is not None and (claim is None or rng.random() < self.mixture.verifier_trust_tool):
      self._record("verifier", prompt, "trust_tool")
      return f"</think>\n\nThe tool output is {tool}.\n\n**\\boxed{{{tool}}}**"
    self._record("verifier", prompt, "trust_claim")
    claim = claim or "0"
    return f"</think>\n\nThe Code Executor reports {claim}.\n\n**\\boxed{{{claim}}}**"
