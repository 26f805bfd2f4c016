"""Agents declared as data, and the action loop every workflow runs them with.

Action loop (reference `run_agent_with_per_action_coaching`, with its bugs fixed):
  context = chat-template ids of the agent's single user message (generation prompt included)
  for turn in 0..max_turns-1:
    response = engine.generate(agent, context)             # token ids + logprobs, kept as is
    run every ```python block of the action in the sandbox  # (tools agents only)
    start the coach on this action (asyncio task, awaited only at the end of the workflow)
    stop if the action had no code, or this was the last turn (its code still runs)
    context = context + response (+ end-of-turn id if it was cut off)
              + tokenizer.chat_suffix_ids(tool response turn + generation prompt)

Token ids are never decoded and re-encoded: the next prompt is the previous prompt ids, the
sampled ids and the template's suffix ids. Each Action records the full context it was
generated from (reference BUG §4.1 fixed); `reference_context_bug=True` records the reference's
wrong context instead (action k >= 2 conditioned on the k-1'th observation chunk only).

Code inside <think> is executed by default, as in the reference (`execute_code_in_thinking`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from typing import Any, Awaitable, Callable, ClassVar, Mapping

from mappa_jax.coach import requests as coach_requests
from mappa_jax.coach.types import Coach, CoachFatalError, CoachRequest, CoachResult
from mappa_jax.rollout import seeds
from mappa_jax.data.config import DataConfig
from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import RolloutEngine, SamplingParams
from mappa_jax.schema import Section, field
from mappa_jax.tools import code_blocks
from mappa_jax.tools.sandbox import ExecResult, Sandbox
from mappa_jax.tools.workspace import Workspace
from mappa_jax.workflows.records import Action, ToolCall, Trajectory

log = logging.getLogger(__name__)

TOOLS = ("python",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig(Section):
  """An `agents.<name>` section: one agent of the team (its own weights, prompt and coach role)."""
  role: str = field("", "role string shown to the coach (reference spelling)", check=bool,
                    fix="Give the coach's role string.")
  role_description: str = field("", "one paragraph on what the role must do, for the coach")
  max_turns: int = field(1, "actions per trajectory at most (an agent acts again only after a "
                         "tool result)", check=lambda v: v >= 1, fix="Use an integer >= 1.")
  tools: tuple[str, ...] = field((), "tools the agent may call: () or ('python',)",
                                 check=lambda v: set(v) <= set(TOOLS),
                                 fix=f"Allowed tools: {list(TOOLS)}.")
  sees: tuple[str, ...] = field((), "upstream agents whose outputs are in this agent's prompt")
  sees_ground_truth_in_coach: bool = field(False, "its coach request carries the label / "
                                           "outcome metrics")

  def problems(self) -> list[tuple[str, str]]:
    if self.max_turns > 1 and not self.tools:
      return [("max_turns", f"= {self.max_turns} has no effect without tools (an agent acts "
               "again only after a tool result); set it to 1 or give it tools=('python',)")]
    return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSpec(AgentConfig):
  """An agent as a workflow runs it: its section plus its name, prompt and tool time limit.

  Attributes:
    name: config key and engine agent name ('problem_solver').
    prompt_template: str.format template of the agent's single user message.
    tool_timeout_s: sandbox wall-clock limit per code block.
  """
  name: str
  prompt_template: str
  tool_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """Workflow-wide switches.

  Attributes:
    reference_context_bug: record the reference's wrong training context (comparisons only).
    execute_code_in_thinking: run ```python blocks written inside <think> (reference: yes).
    strip_thinking_handoff: hand downstream agents only the text after </think>.
    enable_thinking: passed to the chat template (None: template default).
    keep_workspace: keep the trajectory's workspace directory after the run.
  """
  reference_context_bug: bool = False
  execute_code_in_thinking: bool = True
  strip_thinking_handoff: bool = False
  enable_thinking: bool | None = None
  keep_workspace: bool = False


@dataclasses.dataclass
class AgentRun:
  """What one agent did: its actions and its last tool output (for hand-offs).

  thinking_open: the agent's generation prompt pre-filled <think>, so an action without
  </think> is all reasoning (see code_blocks.visible_part).
  """
  actions: list[Action]
  last_observation: str = ""
  thinking_open: bool = False

  @property
  def last_text(self) -> str:
    return self.actions[-1].text if self.actions else ""


class Workflow:
  """A team's workflow: its declaration (what the trainer and the config need to know of it)
  and the shared machinery (the action loop, sandbox runs, coach tasks, hand-off text).

  A subclass declares, once:
    name: the config's `workflow` value (`workflows.register` makes it known).
    AGENTS: {agent: AgentConfig}, the default team in execution order (the `agents` section).
    PROMPTS: {agent: prompt template} (str.format; fields are the workflow's business).
    DATA: the `data` section's class (DataConfig or a subclass with the loader's own fields).
    OUTCOME_KEYS: trajectory.outcome keys averaged into rollout/<key> (the first is shown in
      the step's log line).
    REWARD_OUTCOME_KEY: the outcome rl.advantage_estimator='outcome' rewards (in [0, 1]).
    EVAL_KIND: how eval sets are graded (a key of eval.runner.EVAL_KINDS).
    EVAL_HEADLINE: (summary key, unit) logged after each evaluation.
    SYNTHETIC_SET: the eval set name of data.source='synthetic'.
  and implements `load_tasks(exp, workdir)` and `async run(task, sample_index)`; `settings(exp)`
  gives its constructor arguments beyond the common ones.
  """
  name: ClassVar[str] = "base"
  AGENTS: ClassVar[dict[str, AgentConfig]] = {}
  PROMPTS: ClassVar[dict[str, str]] = {}
  DATA: ClassVar[type[DataConfig]] = DataConfig
  OUTCOME_KEYS: ClassVar[tuple[str, ...]] = ()
  REWARD_OUTCOME_KEY: ClassVar[str] = ""
  EVAL_KIND: ClassVar[str] = "math"
  EVAL_HEADLINE: ClassVar[tuple[str, str]] = ("rule_accuracy", "problems")
  SYNTHETIC_SET: ClassVar[str] = "synthetic"

  def __init__(self, *, engine: RolloutEngine, tokenizer, coach: Coach, sandbox: Sandbox | None,
               sampling: SamplingParams | dict[str, SamplingParams],
               options: LoopOptions = LoopOptions(), workspace_root: str | None = None,
               agents: Mapping[str, AgentConfig] | None = None, tool_timeout_s: float = 30.0):
    """agents: the team's sections (default: AGENTS), e.g. a config's `agents`;
    tool_timeout_s: the sandbox limit per code block of every agent with tools."""
    self.agents = self.specs(agents, tool_timeout_s=tool_timeout_s)
    self.engine = engine
    self.tokenizer = tokenizer
    self.coach = coach
    self.sandbox = sandbox
    self.sampling = sampling
    self.options = options
    self.workspace_root = workspace_root
    # Generation seeds: derived from (seed_base, task id, sample index, agent, turn) when set,
    # so trajectories do not depend on the order requests reach the engine (sandbox and coach
    # latency). The Trainer sets it per step and per evaluation; None: the engine chooses.
    self.seed_base: int | None = None
    self._eos = set(tokenizer.eos_token_ids)

  # -- declaration --------------------------------------------------------------------------------

  @classmethod
  def specs(cls, agents: Mapping[str, AgentConfig] | None = None, *,
            tool_timeout_s: float = 30.0) -> dict[str, AgentSpec]:
    """{name: AgentSpec} in execution order: each agent's section with its prompt."""
    agents = cls.AGENTS if agents is None else agents
    if sorted(agents) != sorted(cls.AGENTS):
      raise ValueError(f"{cls.name}: agents must be exactly {list(cls.AGENTS)}, got "
                       f"{sorted(agents)}")
    return {name: AgentSpec(name=name, prompt_template=cls.PROMPTS[name],
                            tool_timeout_s=tool_timeout_s, **dataclasses.asdict(agents[name]))
            for name in cls.AGENTS}

  @classmethod
  def team(cls, **changes: Mapping[str, Any]) -> dict[str, AgentConfig]:
    """AGENTS with some fields changed, e.g. team(code_executor={'max_turns': 3})."""
    return {name: dataclasses.replace(agent, **changes.get(name, {}))
            for name, agent in cls.AGENTS.items()}

  @classmethod
  def load_tasks(cls, exp, workdir: str) -> tuple[list[Task], dict[str, list[Task]]]:
    """-> (train tasks, {eval set name: tasks}) of an experiment (mappa_jax.config.Experiment)."""
    raise NotImplementedError(f"{cls.__name__}.load_tasks")

  @classmethod
  def settings(cls, exp) -> dict[str, Any]:
    """Constructor arguments of this workflow taken from an experiment, beyond the common ones."""
    return {"options": LoopOptions(reference_context_bug=exp.rl.reference_context_bug)}

  @classmethod
  def from_config(cls, exp, *, engine: RolloutEngine, tokenizer, coach: Coach,
                  sandbox: Sandbox | None, workspace_root: str, evaluation: bool = False
                  ) -> "Workflow":
    """The workflow of an experiment, bound to its engine, coach and sandbox."""
    return cls(engine=engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
               sampling=exp.rollout.sampling(cls.AGENTS, evaluation=evaluation),
               workspace_root=workspace_root, agents=exp.agents, **cls.settings(exp))

  # -- hand-offs --------------------------------------------------------------------------------

  def handoff_text(self, text: str, strip_thinking: bool | None = None, *,
                   thinking_open: bool = False) -> str:
    """Text given to another agent: special-token text removed, reasoning optionally cut
    (`thinking_open`: the action's prompt pre-filled <think>; see code_blocks.visible_part)."""
    strip = self.options.strip_thinking_handoff if strip_thinking is None else strip_thinking
    if strip:
      text = code_blocks.visible_part(text, thinking_open=thinking_open)
    return self.tokenizer.strip_special_text(text).strip()

  def handoff(self, run: "AgentRun") -> str:
    """The hand-off text of an agent's last action."""
    return self.handoff_text(run.last_text, thinking_open=run.thinking_open)

  def _sampling(self, agent: str) -> SamplingParams:
    if isinstance(self.sampling, dict):
      return self.sampling[agent]
    return self.sampling

  def _turn_sampling(self, traj: Trajectory, agent: str, turn: int) -> SamplingParams:
    """The agent's SamplingParams with this generation's own seed (see `seed_base`); an
    explicit SamplingParams.seed is kept as configured."""
    sampling = self._sampling(agent)
    if sampling.seed is not None or self.seed_base is None:
      return sampling
    return dataclasses.replace(sampling, seed=seeds.derive_seed(
        self.seed_base, traj.task_id, traj.sample_index, agent, turn))

  # -- the action loop --------------------------------------------------------------------------

  async def run_agent(self, traj: Trajectory, spec: AgentSpec, prompt_text: str, *,
                      workspace: Workspace | None = None,
                      request_fn: Callable[[AgentSpec, Action, str],
                                           CoachRequest | Awaitable[CoachRequest]]) -> AgentRun:
    """Runs one agent to completion; starts a coach task per action (see module docstring)."""
    tok = self.tokenizer
    # Upstream text, file names and tool output end up in this message: special-token text in
    # it would be encoded as real control tokens.
    user = [{"role": "user", "content": tok.strip_special_text(prompt_text)}]
    context = list(tok.apply_chat_template(user, add_generation_prompt=True,
                                           enable_thinking=self.options.enable_thinking))
    chunks = [list(context)]  # the reference's observation list, for reference_context_bug
    thinking_open = _ends_inside_thinking(tok.decode(context))
    run = AgentRun([], thinking_open=thinking_open)
    for turn in range(spec.max_turns):
      t0 = time.monotonic()
      comp = await self.engine.generate(spec.name, list(context),
                                       self._turn_sampling(traj, spec.name, turn))
      t_gen = time.monotonic() - t0
      response = list(comp.token_ids)
      text = tok.decode(response)
      recorded = context
      if self.options.reference_context_bug and turn >= 1:
        recorded = chunks[turn]  # observation[k-1] for action k = turn + 1 (1-based)
      action = Action(agent=spec.name, turn=turn, prompt_ids=list(recorded),
                      response_ids=response, rollout_logprobs=list(comp.logprobs),
                      finish_reason=comp.finish_reason, weight_version=comp.weight_version,
                      text=text, timings={"generate": t_gen})
      parsed = (code_blocks.parse_action(tok.strip_special_text(text),
                                         include_thinking=self.options.execute_code_in_thinking,
                                         thinking_open=thinking_open)
                if "python" in spec.tools else code_blocks.ParsedAction())
      if parsed.wants_tools:
        t1 = time.monotonic()
        action.tool_calls, outputs = await self._run_code(parsed, spec, traj, workspace)
        # Programs can print special-token text; it must not become control tokens in the
        # next turn's context or in a downstream prompt.
        action.tool_observation = tok.strip_special_text(code_blocks.join_outputs(outputs))
        action.timings["tools"] = time.monotonic() - t1
        run.last_observation = action.tool_observation
      traj.actions.append(action)
      run.actions.append(action)
      agent_input = tok.decode(context)
      request = request_fn(spec, action, agent_input)
      if inspect.isawaitable(request):
        request = await request
      self._start_coach(traj, action, request)
      if not parsed.wants_tools or turn == spec.max_turns - 1:
        break
      closed = response if response and response[-1] in self._eos else (
          response + [tok.eos_token_ids[0]])
      history = user + [{"role": "assistant",
                         "content": self.handoff_text(text, True, thinking_open=thinking_open)}]
      suffix = list(tok.chat_suffix_ids(
          history, [{"role": "tool", "content": action.tool_observation}],
          add_generation_prompt=True, enable_thinking=self.options.enable_thinking))
      chunks += [response, suffix]
      context = context + closed + suffix
    return run

  async def _run_code(self, parsed: code_blocks.ParsedAction, spec: AgentSpec, traj: Trajectory,
                      workspace: Workspace | None) -> tuple[list[ToolCall], list[str]]:
    if self.sandbox is None:
      raise ValueError(f"agent {spec.name!r} has tools but the workflow has no sandbox")
    ws = workspace or self._workspace(traj)
    calls, outputs = [], []
    limits = self.sandbox.limits.replace(timeout_s=spec.tool_timeout_s)
    for code in parsed.codes:  # in order: a file saved by block 1 is visible to block 2
      r: ExecResult = await self.sandbox.run(code, ws, limits=limits)
      calls.append(ToolCall(code=code, stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code,
                            timed_out=r.timed_out, files_changed=r.files_changed))
      outputs.append(code_blocks.format_run(r.stdout, r.stderr, timed_out=r.timed_out,
                                            limit=r.limit, exit_code=r.exit_code))
    outputs += [f"<error>{e}</error>" for e in parsed.errors]
    return calls, outputs

  def _workspace(self, traj: Trajectory) -> Workspace:
    ws = traj.metadata.get("_workspace")
    if ws is None:
      ws = Workspace.create(self.workspace_root, prefix=f"{_safe(traj.task_id)}_")
      traj.metadata["_workspace"] = ws
      traj.metadata["workspace"] = str(ws.path)
    return ws

  # -- coach ------------------------------------------------------------------------------------

  def base_signals(self, action: Action) -> dict[str, Any]:
    # tool_signals counts a timed-out block once (as a timeout, not also as an error).
    return {**coach_requests.tool_signals(action.tool_calls), "truncated": action.truncated}

  def _start_coach(self, traj: Trajectory, action: Action, request: CoachRequest) -> None:
    async def score() -> CoachResult:
      try:
        return await self.coach.score(request)
      except CoachFatalError:
        raise  # endpoint gone, misconfigured, or a replay miss: stop, never mask (finish())
      except Exception as e:  # pylint: disable=broad-except
        log.exception("coach failed on %s turn %d", action.agent, action.turn)
        return CoachResult(status="invalid", reason=f"coach error: {type(e).__name__}: {e}")
    pending = traj.metadata.setdefault("_coach_tasks", [])
    pending.append((action, asyncio.create_task(score())))

  async def finish(self, traj: Trajectory) -> Trajectory:
    """Awaits every coach task (off the critical path until now), cleans the workspace."""
    pending = traj.metadata.pop("_coach_tasks", [])
    try:
      results = await asyncio.gather(*[t for _, t in pending], return_exceptions=True)
    finally:
      ws = traj.metadata.pop("_workspace", None)
      if ws is not None and not self.options.keep_workspace:
        ws.cleanup()
    for res in results:
      if isinstance(res, BaseException):  # only CoachFatalError gets here (see _start_coach)
        raise res
    for (action, _), res in zip(pending, results):
      action.coach = res
      action.timings["coach"] = res.latency_s
    return traj


def _ends_inside_thinking(prompt_text: str) -> bool:
  """True when the generation prompt pre-fills an unclosed <think> (Qwen3 thinking templates)."""
  tail = prompt_text.rstrip()
  return tail.endswith(code_blocks.THINK_START)


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))[:40]
