"""Action and Trajectory records: the unit of RL data.

Every agent action is one RL sample. Token ids are kept end to end: `prompt_ids` is the full
context the agent actually generated from (earlier turns and tool responses included), and
`response_ids` are exactly the ids the engine sampled.
"""
from __future__ import annotations

import dataclasses
from typing import Any

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
