"""MathChat: Problem Solver (1 turn) -> Code Executor (up to 2 turns, Python) -> Verifier (1 turn).

Hand-offs follow the reference: the Code Executor gets the Problem Solver's output; the
Verifier gets the Code Executor's last action plus its last tool output (and, when its `sees`
includes 'problem_solver', the Problem Solver's output too). Special-token text is always
removed from hand-offs; reasoning is cut at </think> only when `strip_thinking_handoff` (the
reference forwards it). Only the Verifier's coach request carries the label.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from mappa_jax import workflows
from mappa_jax.coach.types import CoachRequest
from mappa_jax.data import config as data_config
from mappa_jax.data import grading
from mappa_jax.data import synthetic
from mappa_jax.data.loaders import Task
from mappa_jax.tools import code_blocks
from mappa_jax.workflows import prompts
from mappa_jax.workflows.base import AgentConfig, AgentSpec, LoopOptions, Workflow
from mappa_jax.workflows.records import Action, Trajectory

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MathChatConfig:
  """MathChat settings beyond its agents.

  Attributes:
    tool_timeout_s: sandbox limit per code block (reference 30 s; sandbox.timeout_s).
    token_budget: the budget the prompts announce (reference 4k; see `budget_text`).
    grade_with_rules: also grade the Verifier's boxed answer with data.grading (logged in
      trajectory.outcome['rule_correct']).
  """
  tool_timeout_s: float = 30.0
  token_budget: str = "4k"
  grade_with_rules: bool = True


def budget_text(max_new_tokens: int) -> str:
  """The per-action budget the prompts announce ('4k' for 4096, as the reference says)."""
  if max_new_tokens % 1024 == 0:
    return f"{max_new_tokens // 1024}k"
  return str(max_new_tokens)


@workflows.register
class MathChatWorkflow(Workflow):
  """Runs one math problem through the three agents; returns the Trajectory."""
  name = "mathchat"
  AGENTS = {
      "problem_solver": AgentConfig(
          role="Problem Solver", max_turns=1,  # REF
          role_description="Drafts a step-by-step solution to the problem for the next agents."),
      "code_executor": AgentConfig(
          role="Code Executor", max_turns=2, tools=("python",), sees=("problem_solver",),  # REF
          role_description=("Computes or verifies the solution with Python code that is run "
                            "in a sandbox; sees the Problem Solver's output.")),
      "verifier": AgentConfig(
          role="Verifier", max_turns=1,
          sees=("code_executor",),  # REF: never sees the Problem Solver directly
          sees_ground_truth_in_coach=True,  # REF: the coach judges ANSWER_CORRECT vs the label
          role_description=("Final agent: checks the Code Executor's work and states the final "
                            "answer as \\boxed{answer}.")),
  }
  PROMPTS = {"problem_solver": prompts.MATH_PROBLEM_SOLVER,
             "code_executor": prompts.MATH_CODE_EXECUTOR, "verifier": prompts.MATH_VERIFIER}
  # Rule-graded and coach-judged correctness (eval/summary.py reads the team diagnostics).
  OUTCOME_KEYS = ("rule_correct", "coach_correct")
  REWARD_OUTCOME_KEY = "rule_correct"
  EVAL_KIND = "math"
  EVAL_HEADLINE = ("rule_accuracy", "problems")
  SYNTHETIC_SET = "synthetic"

  def __init__(self, *, config: MathChatConfig = MathChatConfig(),
               options: LoopOptions = LoopOptions(), **kw):
    super().__init__(options=options, tool_timeout_s=config.tool_timeout_s, **kw)
    self.config = config

  @classmethod
  def load_tasks(cls, exp, workdir: str) -> tuple[list[Task], dict[str, list[Task]]]:
    """Synthetic: the seeded arithmetic family (held out by a hash of the arithmetic). Files:
    mappa-bench {prompt, answer} records with the prompt suffix."""
    del workdir
    data = exp.data
    if data.source == "synthetic":
      syn = data.synthetic
      cfg = synthetic.ArithmeticConfig(levels=tuple(range(1, syn.difficulty + 1)))
      train, evals = synthetic.generate_splits(syn.n_train, syn.n_eval, seed=syn.seed,
                                               config=cfg)
      return data_config.split(train, {cls.SYNTHETIC_SET: evals}, data, exp.eval.sets)
    train = data_config.load_files(data.train_files, data)
    evals = {Path(p).stem: data_config.load_files([p], data) for p in data.eval_files}
    return data_config.split(train, evals, data, exp.eval.sets)

  @classmethod
  def settings(cls, exp) -> dict[str, Any]:
    return {**super().settings(exp),
            "config": MathChatConfig(tool_timeout_s=exp.sandbox.timeout_s,
                                     token_budget=budget_text(exp.rollout.max_new_tokens))}

  async def run(self, task, sample_index: int = 0) -> Trajectory:
    """task: anything with task_id, prompt (problem incl. suffix), answer, task_type."""
    traj = Trajectory(task_id=str(task.task_id), sample_index=sample_index,
                      task_type=getattr(task, "task_type", ""),
                      metadata={"label": task.answer})
    fmt = {"problem": task.prompt, "budget": self.config.token_budget}
    try:
      ps = self.agents["problem_solver"]
      ps_run = await self.run_agent(traj, ps, ps.prompt_template.format(**fmt),
                                    request_fn=self._request_fn(task))
      solver_output = self.handoff(ps_run)
      ce = self.agents["code_executor"]
      ce_run = await self.run_agent(
          traj, ce, ce.prompt_template.format(**fmt, solver_output=solver_output),
          request_fn=self._request_fn(task))
      execution = self.handoff(ce_run)
      if ce_run.last_observation:
        execution += f"\n\n<tool_response>\n{ce_run.last_observation}\n</tool_response>"
      ver = self.agents["verifier"]
      solver_section = (prompts.MATH_VERIFIER_SOLVER_SECTION.format(solver_output=solver_output)
                        if "problem_solver" in ver.sees else "")
      ver_run = await self.run_agent(
          traj, ver, ver.prompt_template.format(**fmt, execution=execution,
                                                solver_section=solver_section),
          request_fn=self._request_fn(task))
      traj.final_answer = _answer(self.tokenizer.strip_special_text(ver_run.last_text)) or ""
    except Exception as e:  # pylint: disable=broad-except
      log.exception("mathchat failed on task %s", traj.task_id)
      traj.error = f"{type(e).__name__}: {e}"
    await self.finish(traj)
    await self._outcome(traj, task)
    return traj

  def _request_fn(self, task):
    def make(spec: AgentSpec, action: Action, agent_input: str) -> CoachRequest:
      signals: dict[str, Any] = self.base_signals(action)
      answer = _answer(self.tokenizer.strip_special_text(action.text))  # no '<|im_end|>'
      if answer is not None:
        signals["answer"] = answer
      return CoachRequest(
          workflow=self.name, role=spec.role, role_description=spec.role_description,
          task=task.prompt, agent_input=agent_input, agent_output=action.text,
          tool_observation=action.tool_observation,
          ground_truth=(str(task.answer) if spec.sees_ground_truth_in_coach and task.answer is not None
                        else None),
          task_type=getattr(task, "task_type", ""), signals=signals,
          metadata={"task_id": str(task.task_id), "agent": spec.name, "turn": action.turn})
    return make

  async def _outcome(self, traj: Trajectory, task) -> None:
    ver = traj.actions_of("verifier")
    if ver and ver[-1].coach is not None and ver[-1].coach.answer_correct is not None:
      traj.outcome["coach_correct"] = float(ver[-1].coach.answer_correct)
    if self.config.grade_with_rules and ver and task.answer is not None:
      text = code_blocks.visible_part(self.tokenizer.strip_special_text(ver[-1].text))
      traj.outcome["rule_correct"] = await asyncio.to_thread(grading.grade_response, text,
                                                             task.answer)
    # Per-sample team diagnostics for the before/after table (eval/summary.py).
    calls = [c for a in traj.actions_of("code_executor") for c in a.tool_calls]
    traj.outcome["executor_code_ok"] = float(bool(calls) and all(
        c.exit_code == 0 and not c.timed_out for c in calls))
    printed = _last_printed_number(traj)
    if printed is not None:
      agrees = bool(traj.final_answer) and await asyncio.to_thread(
          grading.is_equivalent, traj.final_answer, printed)
      traj.outcome["verifier_agrees_tool"] = float(agrees)


# A printed number: integer, decimal, scientific or a fraction (sympy prints Rationals as 7/2);
# thousands separators are allowed and removed; a sign counts only when it does not follow a
# word or a number ('2024-01' is not -1).
_NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
                     r"(?:\s*/\s*\d+)?")


def _last_printed_number(traj: Trajectory) -> str | None:
  """The last number the Code Executor's last tool output printed (stdout), or None.

  Falls back to the shown tool observation when the action has no ToolCall records.
  """
  for action in reversed(traj.actions_of("code_executor")):
    if action.tool_calls or action.tool_observation:
      text = ("\n".join(c.stdout for c in action.tool_calls) if action.tool_calls
              else action.tool_observation)
      found = _NUMBER.findall(text or "")
      return re.sub(r"[,\s]", "", found[-1]) if found else None
  return None


def _answer(text: str) -> str | None:
  return grading.extract_boxed_answer(code_blocks.visible_part(text))
