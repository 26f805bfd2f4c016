"""Coach contracts: what a coach is asked and what it answers."""
from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class CoachRequest:
  """Everything the coach may see about one agent action.

  Attributes:
    workflow: 'mathchat' or 'dsbench'.
    role: the agent's role name (e.g. 'Problem Solver', 'data_engineer').
    role_description: one paragraph on what this role must do.
    task: the task text (the problem or the Kaggle description).
    agent_input: the agent's full rendered input (chat markup included).
    agent_output: the agent's full action text.
    tool_observation: this action's tool output ('' when no tool ran).
    workspace_files: DSBench workspace state: file names the agent saw (and their sizes).
    upstream_files: DSBench: what each previous agent saved, {agent: [file, ...]}.
    ground_truth: the label or outcome metrics text, set only for roles allowed to see it.
    task_type: stratum for bias statistics ('aime', 'regression', 'add_sub', ...).
    signals: verifiable facts computed by the workflow (never by the coach), used by the
      rule coach and shown to LLM coaches where the rubric asks. Keys in use:
      'code_blocks' (int), 'tool_errors' (int: runs with non-zero exit), 'tool_timeouts' (int),
      'required_files' / 'missing_files' (list[str]), 'answer' (str, extracted final answer),
      'submission_valid' (bool), 'metric_name' (str), 'metric_value' (float),
      'baseline_value' (float), 'higher_is_better' (bool), 'truncated' (bool).
    metadata: free-form extras (turn index, trajectory id) for logging; never rendered.
  """
  workflow: str
  role: str
  role_description: str
  task: str
  agent_input: str
  agent_output: str
  tool_observation: str = ""
  workspace_files: tuple[str, ...] = ()
  upstream_files: tuple[tuple[str, tuple[str, ...]], ...] = ()
  ground_truth: str | None = None
  task_type: str = ""
  signals: dict = dataclasses.field(default_factory=dict)
  metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CoachResult:
  """A coach's verdict on one action.

  Attributes:
    status: 'scored' or 'invalid'.
    score: 0..10 when scored, else None.
    answer_correct: the coach's binary correctness verdict when it gave one.
    rationale: the coach's explanation (raw text for LLM coaches).
    reason: why the result is invalid ('' when scored).
    template_hash: version hash of the rubric template that produced the prompt.
    coach_name: which coach (model/endpoint) answered.
    latency_s: wall time of the call(s).
    tokens_in, tokens_out: usage reported by the endpoint (0 if unknown).
    cached: True when the result came from the cache.
  """
  status: Literal["scored", "invalid"]
  score: float | None = None
  answer_correct: bool | None = None
  rationale: str = ""
  reason: str = ""
  template_hash: str = ""
  coach_name: str = ""
  latency_s: float = 0.0
  tokens_in: int = 0
  tokens_out: int = 0
  cached: bool = False

  @property
  def is_scored(self) -> bool:
    return self.status == "scored"


class CoachFatalError(Exception):
  """A coach failure that must stop the run instead of masking the action: the endpoint is
  down for good (circuit breaker open), misconfigured, or a replay has no verdict. Workflows
  and the trainer re-raise it; every other coach error becomes an invalid (masked) verdict."""


@runtime_checkable
class Coach(Protocol):

  async def score(self, request: CoachRequest) -> CoachResult:
    ...
