"""Action and Trajectory records: the unit of RL data.

Every agent action is one RL sample. Token ids are kept end to end: `prompt_ids` is the full
context the agent actually generated from (earlier turns and tool responses included), and
`response_ids` are exactly the ids the engine sampled.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterable

from mappa_jax.coach.types import CoachResult


@dataclasses.dataclass
class ToolCall:
  """One executed code block.

  Attributes:
    code: the program text.
    stdout, stderr: captured output (capped keeping head and tail).
    exit_code: process exit status (None if it never ran).
    timed_out: killed by the wall-clock limit.
    files_changed: workspace files created or modified by this run.
  """
  code: str
  stdout: str = ""
  stderr: str = ""
  exit_code: int | None = None
  timed_out: bool = False
  files_changed: tuple[str, ...] = ()


@dataclasses.dataclass
class Action:
  """One agent action (one generation, plus the tools it triggered).

  Attributes:
    agent: agent name (config key, e.g. 'problem_solver').
    turn: 0-based turn index within this agent's part of the trajectory.
    prompt_ids: full conditioning context, [P] token ids.
    response_ids: sampled ids, [R] (EOS included when it finished with 'stop').
    rollout_logprobs: sampler logprob of each response id, [R].
    finish_reason: 'stop' | 'length' | 'abort'.
    weight_version: version of the policy weights that generated it.
    text: decoded response text (for tools, coach and logs; never re-encoded for training).
    tool_calls: executed code blocks in order.
    tool_observation: the tool response text shown to the agent (and the coach).
    coach: the coach result (None until awaited).
    timings: phase -> seconds ('generate', 'tools', 'coach').
  """
  agent: str
  turn: int
  prompt_ids: list[int]
  response_ids: list[int]
  rollout_logprobs: list[float]
  finish_reason: str
  weight_version: int = 0
  text: str = ""
  tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
  tool_observation: str = ""
  coach: CoachResult | None = None
  timings: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def truncated(self) -> bool:
    return self.finish_reason != "stop"


@dataclasses.dataclass
class Trajectory:
  """One run of a workflow on one task sample.

  Attributes:
    task_id: id of the task (problem id or DSBench task id).
    sample_index: which of the n samples of this task.
    task_type: stratum for statistics ('aime', 'classification', 'add_sub', ...).
    actions: every action in the order they happened.
    final_answer: the workflow's final answer text (MathChat: the Verifier's boxed answer).
    outcome: verifiable outcome signals (e.g. {'correct': 1.0} or DSBench metrics).
    error: set when the workflow itself failed; its actions are still kept.
    metadata: extras (label, workspace path, ...).
  """
  task_id: str
  sample_index: int
  task_type: str = ""
  actions: list[Action] = dataclasses.field(default_factory=list)
  final_answer: str = ""
  outcome: dict[str, Any] = dataclasses.field(default_factory=dict)
  error: str = ""
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def actions_of(self, agent: str) -> list[Action]:
    return [a for a in self.actions if a.agent == agent]


# ----------------------------------------------------------------------------- JSON dumps


def _jsonable(x: Any) -> Any:
  """JSON-safe copy: non-finite floats -> None, numpy scalars -> Python, unknown -> str.

  Metadata is free-form (paths, numpy values, tuples); a dump must never fail on it.
  """
  if x is None or isinstance(x, (bool, str, int)):
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, set, frozenset)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "item") and callable(x.item):  # numpy / jax scalars
    try:
      return _jsonable(x.item())
    except (TypeError, ValueError):
      pass
  return str(x)


def trajectory_to_dict(traj: Trajectory, decode: Callable[[list[int]], str] | None = None
                       ) -> dict[str, Any]:
  """A JSON-safe dict of one trajectory for reports and debugging (token ids left out).

  Args:
    traj: the trajectory.
    decode: token ids -> text; when given, each action's `prompt_text` is its decoded
      prompt_ids (the exact context the agent saw), else the key is omitted.

  Returns:
    {task_id, sample_index, task_type, final_answer, outcome, error, metadata, actions: [...]}
    where each action has agent, turn, [prompt_text], text, finish_reason, truncated,
    n_prompt_tokens, n_response_tokens, weight_version, tool_calls, tool_observation,
    timings and coach (every CoachResult field plus is_scored, or None).
  """
  actions = []
  for a in traj.actions:
    d: dict[str, Any] = {"agent": a.agent, "turn": a.turn}
    if decode is not None:
      d["prompt_text"] = decode(list(a.prompt_ids))
    d.update(
        text=a.text, finish_reason=a.finish_reason, truncated=a.truncated,
        n_prompt_tokens=len(a.prompt_ids), n_response_tokens=len(a.response_ids),
        weight_version=a.weight_version,
        tool_calls=[{"code": t.code, "stdout": t.stdout, "stderr": t.stderr,
                     "exit_code": t.exit_code, "timed_out": t.timed_out,
                     "files_changed": list(t.files_changed)} for t in a.tool_calls],
        tool_observation=a.tool_observation, timings=dict(a.timings),
        coach=(None if a.coach is None
               else dict(dataclasses.asdict(a.coach), is_scored=a.coach.is_scored)))
    actions.append(d)
  return _jsonable({
      "task_id": str(traj.task_id), "sample_index": traj.sample_index,
      "task_type": traj.task_type, "final_answer": traj.final_answer,
      "outcome": traj.outcome, "error": traj.error, "metadata": traj.metadata,
      "actions": actions})


def write_trajectories(trajs: Iterable[Trajectory], path: str | os.PathLike,
                       decode: Callable[[list[int]], str] | None = None) -> str:
  """Writes trajectories as JSONL (one trajectory_to_dict per line, atomically); returns path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for traj in trajs:
      f.write(json.dumps(trajectory_to_dict(traj, decode), allow_nan=False,
                         ensure_ascii=False))
      f.write("\n")
  os.replace(tmp, path)  # a reader (the report) never sees a half-written file
  return path


def read_trajectories(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a write_trajectories JSONL file back into a list of dicts (blank lines skipped)."""
  with open(os.fspath(path), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
