"""Rubric prompts for LLM coaches (MathChat and DSBench), with version hashes.

The templates follow the semantics of the MAPPA reference (one agent judged at a time, from its
full input, its output and the result of its code; ground truth only for the final agent;
DSBench blame assignment through the file trail and the outcome caps) in this project's words.

A template's version hash is the short sha256 of its text: it is stored with every score and in
checkpoints, so a score can always be traced to the exact rubric that produced it.
Slots are written `{name}` and filled in one pass (values are never re-scanned, so agent text
containing braces is safe); an unknown slot in a template is an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re

from mappa_jax.coach import requests as rq
from mappa_jax.coach.types import CoachRequest

MATHCHAT_TEMPLATE = r"""You are grading ONE step taken by one member of a team of three AI agents that solve a competition math problem together, strictly one after another:
1. Problem Solver - drafts a complete solution with a final answer.
2. Code Executor - checks or computes the solution with Python; its code blocks are run for it and it sees the printed results. It receives the Problem Solver's output.
3. Verifier - reads the Code Executor's work (not the Problem Solver's) and states the team's final answer as \boxed{...}.
The team succeeds only if the Verifier's final answer is correct.

Working conditions for every agent: about 4k tokens of output, thinking included; anything longer is cut off. Every agent sees the original problem.

Your task: judge how much THIS agent's output moves the team toward a correct final answer, given its role and only the information it had. Judge the agent's own contribution, not the quality of what it received: catching and fixing an upstream mistake deserves credit, repeating one unchecked does not. When code ran, its execution result below is evidence: credit correct code whose output supports the conclusion; penalise code that crashes or times out, and conclusions that ignore or misread what the code printed. Failing to finish within the length limit is a serious flaw. Length by itself is not a merit.

=== PROBLEM ===
{problem}

=== AGENT BEING GRADED ===
{agent_role}: {role_description}

=== THE AGENT'S FULL INPUT ===
{agent_input}

=== THE AGENT'S OUTPUT ===
{agent_output}

=== EXECUTION RESULT OF THE AGENT'S CODE ===
{tool_observation}

=== REFERENCE ANSWER ===
{ground_truth}

How to grade each role:
- Problem Solver: correct, well-justified reasoning that ends in one clear final answer.
- Code Executor: ```python blocks that run, compute something that actually settles the question, and a conclusion consistent with the printed output.
- Verifier: a careful synthesis of the evidence it was given and one final answer in \boxed{}.
Use the whole scale: 0 = useless or harmful to the team, 5 = partly useful with clear flaws, 10 = flawless for this role.
{answer_instruction}
Write a brief justification first. Then end your reply with exactly these line(s) and nothing after them:
PROCESS_SCORE: <integer from 0 to 10>
{answer_format}"""

DSBENCH_TEMPLATE = r"""You are grading ONE step taken by one member of a three-agent data-science pipeline working on a Kaggle-style modelling task. Each agent must write executable ```python code; its code is run in a shared workspace and files saved there are handed to the next agent:
1. Data Engineer - loads and preprocesses the data; MUST save X_train.pkl, y_train.pkl and X_test.pkl (X_test.pkl is critical: nothing can be predicted without it).
2. Modeler - trains and validates a model on those files; MUST save model.pkl.
3. Analyst - loads model.pkl and X_test.pkl, predicts, and MUST write submission.csv (the final deliverable, in the competition's format).

=== AGENT BEING GRADED ===
{agent_role}: {role_description}

=== TASK ===
{problem}

=== FILES AVAILABLE TO THIS AGENT ===
{workspace_files}

=== FILES SAVED BY PREVIOUS AGENTS ===
{upstream_files}

=== VERIFIED FACTS FROM THE EXECUTION ENVIRONMENT ===
{signals}

=== THE AGENT'S FULL INPUT ===
{agent_input}

=== THE AGENT'S OUTPUT ===
{agent_output}

=== RESULT OF RUNNING THE AGENT'S CODE ===
{tool_observation}

=== EVALUATION OF THE SUBMISSION AGAINST HIDDEN LABELS ===
{ground_truth}

Assign blame by tracing the file trail and the errors:
- If no predictions were produced, find the root cause. A missing or unreadable X_test.pkl points to the Data Engineer; a missing model.pkl points to the Modeler; KeyError, TypeError or AttributeError inside the Analyst's own code points to the Analyst.
- The agent whose mistake broke the pipeline downstream gets 0-2. An agent that failed only because an upstream file was missing gets 3-5 if its own code was sensible. Otherwise grade the work actually done.
- An output with no executable ```python code is a critical failure: 0-2.

Checklist: code present; code ran without error according to the result above; every required file saved; existing files checked before loading; the role's own job done well (clean leakage-free preprocessing, validated modelling, or a correctly formatted submission).

Base scale:
- 9-10: everything executed, all files saved, clearly strong method. 10 is for exceptional work only; merely doing what was asked tops out at 8-9.
- 6-7: works, with minor issues.
- 4-5: errors or missing outputs.
- 2-3: crashed because of upstream problems, or a fundamentally flawed approach.
- 0-1: nothing useful.

When the evaluation section reports metrics (Analyst only), the submission's quality caps the score:
- A score between 0 and 1 where higher is better (ROC-AUC, accuracy, F1): >= 0.85 caps at 9; 0.75-0.85 at 8; 0.65-0.75 at 6; 0.55-0.65 at 4; below 0.55 at 3.
- Any other metric (errors such as RMSE, MAE or log-loss, or unbounded scores): compare with the trivial baseline reported above. An error below 50% of the baseline's (a score above twice the baseline's) caps at 9; below 75% at 8; below 90% at 6; below 100% at 4; no better than the baseline at 3.
The cap is the default. Only clear evidence that the weak result was caused upstream allows going above it, up to 8, never 10.
{answer_instruction}
Write 3-5 sentences: which files existed, whether the code ran, which files were saved, and where any blame lies. Then end your reply with exactly these line(s) and nothing after them:
PROCESS_SCORE: <integer from 0 to 10>
{answer_format}"""

ANSWER_INSTRUCTION = (
    "A reference answer is given: also decide whether the agent's final answer is "
    "mathematically equivalent to it (1) or not (0).")
ANSWER_FORMAT = "ANSWER_CORRECT: <1 or 0>"

# Sent after an unparseable reply, together with the full original prompt and that reply.
FORMAT_REMINDER = (
    "Your reply above could not be read: {problem}. Keep your judgement, but finish with the "
    "required line(s), each on its own line, with a plain number and nothing after them:\n"
    "PROCESS_SCORE: <integer from 0 to 10>{answer_line}")

_SLOT = re.compile(r"\{([a-z_]+)\}")
_SLOTS = frozenset({
    "problem", "agent_role", "role_description", "agent_input", "agent_output",
    "tool_observation", "ground_truth", "workspace_files", "upstream_files", "signals",
    "answer_instruction", "answer_format"})
# Signals that reveal the outcome: shown only to roles that may see ground truth.
_OUTCOME_SIGNALS = frozenset({"metric_name", "metric_value", "baseline_value",
                              "higher_is_better", "answer_correct"})


def template_hash(text: str) -> str:
  """Short, stable version id of a template: first 12 hex digits of sha256."""
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
  text: str
  template_hash: str
  needs_answer_correct: bool


@dataclasses.dataclass(frozen=True)
class Rubric:
  """One coach prompt template.

  Attributes:
    name: workflow name it serves.
    text: the template with `{slot}` placeholders.
    answer_roles: normalized roles that must also give ANSWER_CORRECT when they see ground truth.
  """
  name: str
  text: str
  answer_roles: tuple[str, ...] = ()

  def __post_init__(self):
    unknown = set(_SLOT.findall(self.text)) - _SLOTS
    if unknown:
      raise ValueError(f"rubric {self.name!r} has unknown slots {sorted(unknown)}; "
                       f"known slots: {sorted(_SLOTS)}")

  @property
  def hash(self) -> str:
    return template_hash(self.text)

  def render(self, request: CoachRequest, limits: rq.RenderLimits = rq.RenderLimits(),
             ground_truth_roles: tuple[str, ...] | None = rq.DEFAULT_GROUND_TRUTH_ROLES
             ) -> RenderedPrompt:
    """Fills the template from a request; ground truth only for roles allowed to see it."""
    sees_truth = rq.ground_truth_visible(request, ground_truth_roles)
    needs_answer = sees_truth and rq.normalize_role(request.role) in self.answer_roles
    signals = {k: v for k, v in request.signals.items()
               if sees_truth or k not in _OUTCOME_SIGNALS}
    values = {
        "problem": request.task,
        "agent_role": request.role,
        "role_description": request.role_description,
        "agent_input": rq.truncate_head_tail(request.agent_input, limits.input_head_chars,
                                             limits.input_tail_chars),
        "agent_output": rq.truncate_head_tail(request.agent_output, limits.output_head_chars,
                                              limits.output_tail_chars),
        "tool_observation": rq.render_tool_observation(request, limits),
        "ground_truth": request.ground_truth if sees_truth else rq.NO_GROUND_TRUTH_TEXT,
        "workspace_files": rq.render_file_list(request.workspace_files),
        "upstream_files": rq.render_upstream_files(request.upstream_files),
        "signals": rq.render_signals(signals),
        "answer_instruction": ANSWER_INSTRUCTION if needs_answer else "",
        "answer_format": ANSWER_FORMAT if needs_answer else "",
    }
    text = _SLOT.sub(lambda m: values[m.group(1)], self.text).rstrip() + "\n"
    return RenderedPrompt(text=text, template_hash=self.hash, needs_answer_correct=needs_answer)


MATHCHAT = Rubric("mathchat", MATHCHAT_TEMPLATE, answer_roles=("verifier",))
DSBENCH = Rubric("dsbench", DSBENCH_TEMPLATE)
RUBRICS = {"mathchat": MATHCHAT, "dsbench": DSBENCH}


def get_rubric(workflow: str) -> Rubric:
  try:
    return RUBRICS[workflow]
  except KeyError:
    raise ValueError(f"no coach rubric for workflow {workflow!r}; "
                     f"known: {sorted(RUBRICS)}") from None


def template_hashes() -> dict[str, str]:
  """{workflow: version hash}: what a checkpoint records about the coach's rubrics."""
  return {name: r.hash for name, r in RUBRICS.items()}


def format_reminder(problem: str, needs_answer_correct: bool) -> str:
  answer_line = f"\n{ANSWER_FORMAT}" if needs_answer_correct else ""
  return FORMAT_REMINDER.format(problem=problem, answer_line=answer_line)
