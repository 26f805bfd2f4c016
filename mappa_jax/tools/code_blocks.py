"""Finding the code an agent wants executed, and formatting what came back.

Parsing follows the reference's ToolParser: `<tool_call>` JSON calls when the text has that
tag, else every fenced block opened with exactly ```python (```py and bare ``` are ignored).
By default the whole action is parsed, reasoning included (the reference runs code written
inside <think> too); `include_thinking=False` parses only the text after the last </think>.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Sequence

_PY_BLOCK = re.compile(r"```python[ \t]*\r?\n(.*?)```", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
THINK_START = "<think>"
THINK_END = "</think>"


@dataclasses.dataclass(frozen=True)
class ParsedAction:
  """Code blocks to run, and parse errors to report back to the agent.

  `errors` non-empty means the action asked for tools but could not be understood; the loop
  then continues with the errors as the tool response (reference behaviour).
  """
  codes: tuple[str, ...] = ()
  errors: tuple[str, ...] = ()

  @property
  def wants_tools(self) -> bool:
    return bool(self.codes or self.errors)


def visible_part(text: str, *, thinking_open: bool = False) -> str:
  """The text after the last </think>.

  Without a </think>, an action that is still inside its reasoning (cut off at the length
  limit) has no visible part: `thinking_open` says the prompt pre-filled <think> (Qwen3
  thinking templates), and an action that opened <think> itself keeps only what came before.
  Otherwise the whole text is visible (a model that does not reason in tags).
  """
  i = text.rfind(THINK_END)
  if i >= 0:
    return text[i + len(THINK_END):]
  if thinking_open:
    return ""
  j = text.find(THINK_START)
  return text if j < 0 else text[:j]


def parse_action(text: str, *, include_thinking: bool = True,
                 thinking_open: bool = False) -> ParsedAction:
  """Code blocks of one action, in order (`thinking_open`: see visible_part)."""
  if not text.strip():
    return ParsedAction(errors=("empty action: write Python in a ```python block",))
  if not include_thinking:
    text = visible_part(text, thinking_open=thinking_open)
  if "<tool_call>" in text:
    if text.count("<tool_call>") != text.count("</tool_call>"):
      return ParsedAction(errors=("unbalanced <tool_call> tags",))
    codes, errors = [], []
    for body in _TOOL_CALL.findall(text):
      try:
        call = json.loads(body)
        args = call.get("arguments", {})
        if isinstance(args, str):
          args = json.loads(args)
        if call.get("name") not in ("code_interpreter", "python"):
          raise ValueError(f"unknown tool {call.get('name')!r}")
        codes.append(str(args["code"]))
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        errors.append(f"bad tool call: {e}")
    return ParsedAction(tuple(codes), tuple(errors))
  return ParsedAction(tuple(b for b in _PY_BLOCK.findall(text) if b.strip()))


def format_run(stdout: str, stderr: str, *, timed_out: bool = False, limit: str = "",
               exit_code: int | None = 0) -> str:
  """One run's output as the agent sees it (reference wording for each status).

  A program that died silently (killed by a signal, e.g. RLIMIT_CPU or the OOM killer: exit
  code 128+N inside the sandbox, or -N) is reported as a failed execution, never as an empty
  output, which would read as "ran fine and printed nothing".
  """
  silent = not (stdout.strip() or stderr.strip())
  if exit_code is None or timed_out or limit or (silent and exit_code != 0):
    status = {"timeout": "TimeLimitExceeded", "output": "OutputLimitExceeded",
              "workspace_quota": "WorkspaceQuotaExceeded"}.get(limit, "Failed")
    parts = [f"[Execution {status}]"]
    if stdout.strip():
      parts.append(f"[stdout]: {stdout.strip()}")
    if stderr.strip():
      parts.append(f"[stderr/error]: {stderr.strip()}")
    if len(parts) == 1:
      detail = ""
      if exit_code is not None and not timed_out and not limit:
        signal = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
        detail = (f" (exit code {exit_code}" + (f": killed by signal {signal}" if signal else "")
                  + ")")
      parts.append("[No error details available]" + detail)
    return "\n".join(parts)
  out = stdout.strip()
  if stderr.strip():
    out += "\n[stderr]: " + stderr.strip()
  return out


def printed_part(observation: str) -> str:
  """What a formatted run (format_run / join_outputs) printed to stdout: '' for a failed or
  cut-off execution, else the text before its '[stderr]: ' part (the last run's, when joined)."""
  last = observation.split("\n------\n")[-1].strip()
  if last.startswith("[Execution") or last.startswith("[stderr]: "):
    return ""
  return last.split("\n[stderr]: ")[0].strip()


def join_outputs(outputs: Sequence[str]) -> str:
  return "\n------\n".join(outputs)
