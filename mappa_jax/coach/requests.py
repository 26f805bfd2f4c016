"""Turning a CoachRequest into the text blocks a rubric shows the coach.

Everything here is pure string work: truncation that keeps both ends of long tool output,
file-list rendering for DSBench, and the ground-truth visibility rule.
"""
from __future__ import annotations

import dataclasses
import re

from mappa_jax.coach.types import CoachRequest

# Roles allowed to see ground truth (reference: the last agent of each workflow).
DEFAULT_GROUND_TRUTH_ROLES = ("verifier", "analyst")

NO_TOOL_TEXT = "N/A (no tool ran in this action)"
RAN_SILENTLY_TEXT = "(the code ran without error and printed nothing)"
NO_GROUND_TRUTH_TEXT = "N/A"


@dataclasses.dataclass(frozen=True)
class RenderLimits:
  """Character limits applied when rendering a request (0 = unlimited).

  Attributes:
    obs_head_chars, obs_tail_chars: tool observation keeps this many leading and trailing
      characters (tracebacks live at the tail; the reference kept only the head).
    input_head_chars, input_tail_chars: same for the agent's rendered input.
    output_head_chars, output_tail_chars: same for the agent's action text.
  """
  obs_head_chars: int = 2000
  obs_tail_chars: int = 2000
  input_head_chars: int = 0
  input_tail_chars: int = 0
  output_head_chars: int = 0
  output_tail_chars: int = 0


def normalize_role(role: str) -> str:
  """'Problem Solver', 'problem-solver', 'problem_solver' -> 'problem_solver'."""
  return re.sub(r"[^a-z0-9]+", "_", role.strip().lower()).strip("_")


def truncate_head_tail(text: str, head_chars: int, tail_chars: int) -> str:
  """Keeps the first `head_chars` and last `tail_chars` characters with a marker between.

  Both limits 0 means no truncation. Text that fits is returned unchanged.
  """
  if head_chars < 0 or tail_chars < 0:
    raise ValueError(f"truncation limits must be >= 0, got head={head_chars} tail={tail_chars}")
  if head_chars == 0 and tail_chars == 0:
    return text
  if len(text) <= head_chars + tail_chars:
    return text
  omitted = len(text) - head_chars - tail_chars
  head = text[:head_chars]
  tail = text[len(text) - tail_chars:] if tail_chars else ""
  return f"{head}\n[... {omitted} characters omitted ...]\n{tail}"


def ground_truth_visible(request: CoachRequest,
                         roles: tuple[str, ...] | None = DEFAULT_GROUND_TRUTH_ROLES) -> bool:
  """True when the request carries ground truth and its role may see it.

  `roles=None` trusts the workflow (any request with ground truth shows it).
  """
  if request.ground_truth is None:
    return False
  if roles is None:
    return True
  return normalize_role(request.role) in {normalize_role(r) for r in roles}


def render_file_list(files: tuple[str, ...]) -> str:
  if not files:
    return "(no files)"
  return "\n".join(f"- {f}" for f in files)


def render_upstream_files(upstream: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
  if not upstream:
    return "(first agent: nothing was handed over)"
  lines = []
  for agent, files in upstream:
    lines.append(f"{agent} saved: {', '.join(files) if files else 'NO FILES SAVED'}")
  return "\n".join(lines)


def render_signals(signals: dict) -> str:
  """Verifiable facts computed by the workflow, one per line, sorted by key."""
  if not signals:
    return "(none)"
  return "\n".join(f"- {k}: {signals[k]}" for k in sorted(signals))


def render_tool_observation(request: CoachRequest, limits: RenderLimits) -> str:
  if not request.tool_observation:
    # Code that ran and printed nothing is not "no tool ran".
    return RAN_SILENTLY_TEXT if request.signals.get("code_blocks", 0) else NO_TOOL_TEXT
  return truncate_head_tail(request.tool_observation, limits.obs_head_chars,
                            limits.obs_tail_chars)


def tool_signals(tool_calls) -> dict:
  """The execution signals of one action from its executed code blocks.

  Args:
    tool_calls: objects with `exit_code` (None: never ran) and `timed_out`, e.g.
      mappa_jax.workflows.records.ToolCall.
  Returns:
    {'code_blocks', 'tool_errors' (non-zero exit or never ran, timeouts excluded),
     'tool_timeouts'}: the CoachRequest.signals keys the rule coach reads.
  """
  calls = list(tool_calls)
  timeouts = sum(1 for c in calls if c.timed_out)
  errors = sum(1 for c in calls if not c.timed_out and c.exit_code != 0)
  return {"code_blocks": len(calls), "tool_errors": errors, "tool_timeouts": timeouts}
