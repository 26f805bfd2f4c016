"""The rule coach's credit-assignment checks: false calculations, programs that compute with
numbers the problem lacks, and upstream blame for a missing DSBench file."""
import asyncio

import pytest

from mappa_jax.coach.rule_coach import RuleCoach
from tests.coach.conftest import make_request

PROBLEM = "Ava has 12 apples, then gets 5 more, then gives away 3. How many apples now?"


def rule(req):
  return asyncio.run(RuleCoach().score(req))


def math(role, output, **kw):
  return make_request(role=role, output=output, task=PROBLEM, ground_truth=kw.pop("gt", None),
                      **kw)


def test_a_false_stated_calculation_caps_the_author():
  right = rule(math("Problem Solver", "</think>\n\n12 + 5 - 3 = 14\n\n\\boxed{14}"))
  slip = rule(math("Problem Solver", "</think>\n\n12 + 5 - 3 = 16\n\n\\boxed{16}"))
  assert right.score == 10.0 and "cap" not in right.rationale
  assert slip.score == 4.0 and "12 + 5 - 3 = 16 (it is 14)" in slip.rationale
  # Reasoning is not judged; code is not prose (`n = 12` is an assignment).
  assert rule(math("Problem Solver", "<think>2 + 2 = 5?</think>\n\n\\boxed{14}")).score == 10.0
  # The Verifier: the cap binds the process part, the label still dominates.
  verifier = rule(math("Verifier", "</think>\n\n12 + 5 - 3 = 13.\n\n**\\boxed{14}**", gt="14"))
  assert verifier.score == pytest.approx(0.4 * 4 + 6) and verifier.answer_correct


def test_a_program_with_numbers_the_problem_lacks_caps_the_code_executor():
  ran = {"code_blocks": 1, "tool_errors": 0}
  good = rule(math("Code Executor", "```python\nn = 12\nn += 5\nn -= 3\nprint(n)\n```",
                   tool_observation="14", signals=ran))
  misread = rule(math("Code Executor", "```python\nn = 12\nn += 7\nn -= 3\nprint(n)\n```",
                      tool_observation="16", signals=ran))
  assert good.score == 7.0 and misread.score == 3.0
  assert "its program computes with number(s) the problem does not contain: 7" in \
      misread.rationale
  # A general program may need constants of its own: not checked.
  loop = rule(math("Code Executor", "```python\nprint(sum([12, 5, -3]) * 100 // 100)\n```",
                   tool_observation="14", signals=ran))
  assert loop.score == 7.0 and "cap" not in loop.rationale


def test_the_report_answers_for_the_program_whose_output_it_reports():
  def turn2(code, printed):
    return (f"<|im_start|>user\n{PROBLEM}<|im_end|>\n<|im_start|>assistant\n```python\n{code}\n"
            f"```<|im_end|>\n<|im_start|>user\n<tool_response>\n{printed}\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n")
  honest = rule(math("Code Executor", "The code printed 14.\n\n\\boxed{14}",
                     agent_input=turn2("n = 12\nn += 5\nn -= 3\nprint(n)", 14)))
  misread = rule(math("Code Executor", "The code printed 16.\n\n\\boxed{16}",
                      agent_input=turn2("n = 12\nn += 7\nn -= 3\nprint(n)", 16)))
  assert honest.score == 7.0
  assert misread.score == 3.0 and "the program whose output it reports" in misread.rationale


REQUIRED = {"data_engineer": ["X_train.pkl", "y_train.pkl", "X_test.pkl"],
            "modeler": ["X_train.pkl", "y_train.pkl", "X_test.pkl", "model.pkl"],
            "analyst": ["X_train.pkl", "y_train.pkl", "X_test.pkl", "model.pkl",
                        "submission.csv"]}
NOT_FOUND = ("[stderr]: Traceback (most recent call last):\n  File \"/sandbox/main.py\", line 4\n"
             "FileNotFoundError: [Errno 2] No such file or directory: 'X_test.pkl'")
DE_SAVED = (("data_engineer", ("X_train.pkl", "y_train.pkl")),)


def ds(role, missing, *, code=True, errors=0, obs="", upstream=(), agent_input="", gt=None,
       **signals):
  sig = {"code_blocks": 1 if code else 0, "tool_errors": errors, "required_files": REQUIRED[role],
         "missing_files": missing, **signals}
  return make_request(workflow="dsbench", role=role, output="```python\n...\n```" if code
                      else "Done.", tool_observation=obs, upstream_files=upstream,
                      agent_input=agent_input, ground_truth=gt, task_type="classification",
                      signals=sig)


def test_the_data_engineer_owns_its_missing_file():
  assert rule(ds("data_engineer", [])).score == 10.0
  ran = rule(ds("data_engineer", ["X_test.pkl"]))
  assert ran.score == 9.0 and "missing ['X_test.pkl']" in ran.rationale
  # A hand-off without code while its own file is missing: it declares done without it.
  report = rule(ds("data_engineer", ["X_test.pkl"], code=False))
  assert report.score == 0.0 and "cap 0" in report.rationale
  assert rule(ds("data_engineer", [], code=False)).score == 2.0


def test_downstream_agents_are_not_blamed_for_an_upstream_omission():
  modeler = rule(ds("modeler", ["X_test.pkl"], upstream=DE_SAVED))
  assert modeler.score == 10.0 and "never saved by its owner (data_engineer)" in modeler.rationale
  analyst_sig = dict(submission_valid=False, metric_name="accuracy",
                     metric_value=float("nan"), baseline_value=0.5, higher_is_better=True)
  blocked = rule(ds("analyst", ["X_test.pkl", "submission.csv"], errors=1, obs=NOT_FOUND,
                    upstream=DE_SAVED, gt="Submission invalid", **analyst_sig))
  assert blocked.score == 9.0
  assert "1 failed on a missing upstream file: counted as ran" in blocked.rationale
  assert "blocked by upstream (excused)" in blocked.rationale and "cap 9" in blocked.rationale
  # Its report after the failed load is excused too (the failure is in its input).
  report = rule(ds("analyst", ["X_test.pkl", "submission.csv"], code=False, upstream=DE_SAVED,
                   agent_input=f"<tool_response>\n{NOT_FOUND}\n</tool_response>",
                   gt="Submission invalid", **analyst_sig))
  assert report.score == 2.0


def test_upstream_blame_is_not_a_loophole():
  analyst_sig = dict(submission_valid=False, metric_name="accuracy",
                     metric_value=float("nan"), baseline_value=0.5, higher_is_better=True)
  # The Data Engineer saved X_test.pkl and it is gone now: whoever runs now is not excused.
  saved = (("data_engineer", ("X_test.pkl", "X_train.pkl", "y_train.pkl")),)
  deleted = rule(ds("analyst", ["X_test.pkl", "submission.csv"], errors=1, obs=NOT_FOUND,
                    upstream=saved, gt="Submission invalid", **analyst_sig))
  assert "upstream" not in deleted.rationale and deleted.score <= 3.0
  # An upstream file is missing but this agent never tried to use it: its own missing output is
  # its own fault (no block), and an own failure still counts.
  idle = rule(ds("analyst", ["X_test.pkl", "submission.csv"], errors=1,
                 obs="[stderr]: NameError: name 'x' is not defined", upstream=DE_SAVED,
                 gt="Submission invalid", **analyst_sig))
  assert "blocked" not in idle.rationale and idle.score <= 3.0
  idle_modeler = rule(ds("modeler", ["X_test.pkl", "model.pkl"], upstream=DE_SAVED))
  assert idle_modeler.score == pytest.approx(2 + 3 + 3 * 2 / 3 + 2)
