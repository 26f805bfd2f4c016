"""A third workflow, declared in one place: a Proposer drafts an answer, a Checker states the
team's final one, on the synthetic arithmetic tasks. It exists to prove that a workflow is one
module plus an experiment file (tests/workflows/propose_check_experiment.py): nothing in the
trainer, the factory or the config knows it."""
from __future__ import annotations

import asyncio
from typing import Any

from mappa_jax import workflows
from mappa_jax.coach.types import CoachRequest
from mappa_jax.data import config as data_config
from mappa_jax.data import grading
from mappa_jax.data import synthetic
from mappa_jax.data.loaders import Task
from mappa_jax.tools import code_blocks
from mappa_jax.workflows.base import AgentConfig, AgentSpec, Workflow
from mappa_jax.workflows.records import Action, Trajectory


def _answer(text: str) -> str | None:
  return grading.extract_boxed_answer(code_blocks.visible_part(text))


@workflows.register
class ProposeCheckWorkflow(Workflow):
  """Proposer -> Checker; the Checker's boxed answer is the team's."""
  name = "propose_check"
  # The coach grades with the math rubric: the roles are its Problem Solver and Verifier.
  RUBRIC = "mathchat"
  AGENTS = {
      "proposer": AgentConfig(role="Problem Solver",
                              role_description="Proposes an answer for the Checker."),
      "checker": AgentConfig(role="Verifier", sees=("proposer",),
                             sees_ground_truth_in_coach=True,
                             role_description="Checks the proposal and states the answer."),
  }
  PROMPTS = {
      "proposer": "Problem: {problem}\nPropose the answer as \\boxed{{}}.",
      "checker": ("Problem: {problem}\nProposal: {proposal}\nCheck it and give the final "
                  "answer as \\boxed{{}}."),
  }
  OUTCOME_KEYS = ("rule_correct",)
  REWARD_OUTCOME_KEY = "rule_correct"
  EVAL_KIND = "math"
  EVAL_HEADLINE = ("rule_accuracy", "problems")
  SYNTHETIC_SET = "synthetic"

  @classmethod
  def load_tasks(cls, exp, workdir: str) -> tuple[list[Task], dict[str, list[Task]]]:
    del workdir
    syn = exp.data.synthetic
    train, evals = synthetic.generate_splits(syn.n_train, syn.n_eval, seed=syn.seed)
    return data_config.split(train, {cls.SYNTHETIC_SET: evals}, exp.data, exp.eval.sets)

  async def run(self, task, sample_index: int = 0) -> Trajectory:
    traj = Trajectory(task_id=str(task.task_id), sample_index=sample_index,
                      task_type=task.task_type, metadata={"label": task.answer})
    try:
      proposer, checker = self.agents["proposer"], self.agents["checker"]
      first = await self.run_agent(traj, proposer,
                                   proposer.prompt_template.format(problem=task.prompt),
                                   request_fn=self._request_fn(task))
      last = await self.run_agent(
          traj, checker, checker.prompt_template.format(problem=task.prompt,
                                                        proposal=self.handoff(first)),
          request_fn=self._request_fn(task))
      traj.final_answer = _answer(self.tokenizer.strip_special_text(last.last_text)) or ""
    except Exception as e:  # pylint: disable=broad-except  (a failed run counts as wrong)
      traj.error = f"{type(e).__name__}: {e}"
    await self.finish(traj)
    text = self.tokenizer.strip_special_text(traj.actions[-1].text) if traj.actions else ""
    traj.outcome["rule_correct"] = await asyncio.to_thread(grading.grade_response,
                                                           code_blocks.visible_part(text),
                                                           task.answer)
    return traj

  def _request_fn(self, task):
    def make(spec: AgentSpec, action: Action, agent_input: str) -> CoachRequest:
      signals: dict[str, Any] = self.base_signals(action)
      answer = _answer(self.tokenizer.strip_special_text(action.text))
      if answer is not None:
        signals["answer"] = answer
      return CoachRequest(
          workflow=self.RUBRIC, role=spec.role, role_description=spec.role_description,
          task=task.prompt, agent_input=agent_input, agent_output=action.text,
          ground_truth=str(task.answer) if spec.sees_ground_truth_in_coach else None,
          task_type=task.task_type, signals=signals,
          metadata={"task_id": str(task.task_id), "agent": spec.name, "turn": action.turn})
    return make
