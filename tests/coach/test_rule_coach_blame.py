"""The rule coach's credit-assignment checks: false calculations, programs that compute with
numbers the problem lacks, and upstream blame for a missing DSBench file."""
import asyncio

import pytest

from mappa_jax.coach.rule_coach import RuleCoach
from tests.coach.conftest import make_request

PROBLEM = "Ava has 12 apples, then gets 5 more, then gives away 3. How many apples now?"


def rule(req):
  return asyncio.run(RuleCoach(check_arithmetic=True).score(req))


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


RAN = {"code_blocks": 1, "tool_errors": 0}


def executor(task, code, printed, **kw):
  return make_request(role="Code Executor", output=f"```python\n{code}\n```", task=task,
                      tool_observation=str(printed), signals=RAN, ground_truth=kw.pop("gt", None),
                      **kw)


def test_correct_programs_with_implied_or_worded_numbers_are_not_capped():
  for task, code, printed in (
      ("A $20 shirt is 25% off. What does it cost now?", "print(20 * 0.75)", 15),
      ("A $20 shirt is 25% off. How much is the discount?", "print(20 * 0.25)", 5),
      ("Ava has 1,000 coins and gets 250 more. How many coins now?", "n = 1000\nn += 250\n"
       "print(n)", 1250),
      ("A film lasts two hours. How many minutes is that?", "print(2 * 60)", 120),
      ("There are three boxes of 4 pens. How many pens?", "print(3 * 4)", 12),
      ("Ben buys a dozen eggs and uses half of them. How many are left?", "print(12 / 2)", 6),
  ):
    got = rule(executor(task, code, printed))
    assert got.score == 7.0 and "cap" not in got.rationale, (task, got.rationale)


def test_the_label_lifts_the_operand_cap_only_from_a_correct_program():
  task = "How many legs do 5 spiders have?"  # 8 legs each: nowhere in the text
  coach = RuleCoach(ground_truth_roles=("verifier", "code_executor"), check_arithmetic=True)
  right = coach.score_sync(executor(task, "print(5 * 8)", 40, gt="40"))
  assert "cap 3" not in right.rationale and "prints the labelled answer" in right.rationale
  assert right.score == pytest.approx(0.4 * 7)  # no boxed answer: not `correct`
  # A wrong result with a foreign operand is still capped; so is anything without the label.
  wrong = coach.score_sync(executor(task, "print(5 * 9)", 45, gt="40"))
  assert wrong.score == pytest.approx(0.4 * 3) and "cap 3" in wrong.rationale
  assert rule(executor(task, "print(5 * 8)", 40, gt="40")).score == 3.0  # role may not see it
  misread = coach.score_sync(make_request(
      role="Code Executor", output="```python\nn = 12\nn += 7\nn -= 3\nprint(n)\n```",
      task=PROBLEM, tool_observation="16", signals=RAN, ground_truth="14"))
  assert "cap 3" in misread.rationale and "7" in misread.rationale


def test_percentages_remainders_and_mixed_numbers_are_not_false_calculations():
  for text in ("3/4 = 75%, so \\boxed{75}", "10 / 3 = 3 remainder 1, so \\boxed{3}",
               "7 / 2 = 3 1/2 pies, so \\boxed{3.5}", "90 / 60 = 1 hour 30 minutes: \\boxed{90}"):
    got = rule(math("Problem Solver", f"</think>\n\n{text}"))
    assert got.score == 10.0 and "cap" not in got.rationale, (text, got.rationale)
  slip = rule(math("Problem Solver", "</think>\n\n3/4 = 70%, so \\boxed{70}"))
  assert slip.score == 4.0 and "3/4 = 70% (it is 0.75)" in slip.rationale


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
  # The sheet gives 9 (artifacts 2 of 3); the broken hand-off caps it at 5.
  assert ran.score == 5.0 and "missing ['X_test.pkl']" in ran.rationale
  assert "cap 5" in ran.rationale
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
  # Ran, artifacts (its own submission excused), finished: 2 + 2 + 2 + 0 (no submission) + 2,
  # capped at 7.5 for stopping (see the recovery test below).
  assert blocked.score == 7.5
  assert "1 failed on a missing upstream file: counted as ran" in blocked.rationale
  assert "+0.00/2 no valid submission (blocked by upstream)" in blocked.rationale
  assert "cap 7.5: stopped at a missing upstream file" in blocked.rationale
  # Its report after its own failed load is excused too (the failure is in its own earlier
  # turn's tool output): the no-code cap 2, not the cap 0 of abandoning its own file.
  report = rule(ds("analyst", ["X_test.pkl", "submission.csv"], code=False, upstream=DE_SAVED,
                   agent_input=own_turn(NOT_FOUND), gt="Submission invalid", **analyst_sig))
  assert report.score == 2.0 and "blocked by it" in report.rationale


def own_turn(observation, handoff="Modeler: model.pkl saved."):
  """An agent's turn-2 input: the upstream hand-off, its own program and that run's output."""
  return (f"<|im_start|>user\n{handoff}<|im_end|>\n<|im_start|>assistant\n```python\n"
          "import pickle\nX_test = pickle.load(open('X_test.pkl', 'rb'))\n```<|im_end|>\n"
          f"<|im_start|>user\n<tool_response>\n{observation}\n</tool_response><|im_end|>\n"
          "<|im_start|>assistant\n")


AUC = dict(metric_name="roc_auc", higher_is_better=True)


def test_stopping_at_a_missing_upstream_file_earns_less_than_recovering():
  # The Data Engineer never saved X_test.pkl. Analyst A loads it, gets FileNotFoundError and
  # stops; Analyst B rebuilds the features from test.csv and submits (AUC 0.70).
  stop = rule(ds("analyst", ["X_test.pkl", "submission.csv"], errors=1, obs=NOT_FOUND,
                 upstream=DE_SAVED, gt="Submission invalid", submission_valid=False, **AUC))
  ok_run = "[stdout]:\n(30, 2)"
  rebuilt = rule(ds("analyst", ["X_test.pkl"], obs=ok_run, upstream=DE_SAVED, gt="roc_auc 0.70",
                    submission_valid=True, metric_value=0.70, **AUC))
  # Also when it first hit the error itself (an earlier run of this action or an earlier turn).
  retried = rule(ds("analyst", ["X_test.pkl"], errors=1, obs=NOT_FOUND + "\n------\n" + ok_run,
                    upstream=DE_SAVED, gt="roc_auc 0.70", submission_valid=True,
                    metric_value=0.70, code_blocks=2, **AUC))
  later = rule(ds("analyst", ["X_test.pkl"], obs=ok_run, upstream=DE_SAVED,
                  agent_input=own_turn(NOT_FOUND), gt="roc_auc 0.70", submission_valid=True,
                  metric_value=0.70, **AUC))
  assert stop.score == 7.5
  for recovery in (rebuilt, retried, later):
    assert recovery.score == 8.0 > stop.score, recovery.rationale
    assert "cap 8: roc_auc=0.7 >= 0.65 (+2: delivered despite the missing upstream file)" in \
        recovery.rationale and "delivered anyway" in recovery.rationale
  # The bonus needs the upstream omission: the same result in a fault-free run keeps cap 6 ...
  plain = rule(ds("analyst", [], obs=ok_run, upstream=(), gt="roc_auc 0.70",
                  submission_valid=True, metric_value=0.70, **AUC))
  assert plain.score == 6.0 and "delivered despite" not in plain.rationale
  # ... and a poor or junk submission does not beat an honest stop; a good one tops at 9.
  junk = rule(ds("analyst", ["X_test.pkl"], obs=ok_run, upstream=DE_SAVED, gt="roc_auc 0.50",
                 submission_valid=True, metric_value=0.50, **AUC))
  great = rule(ds("analyst", ["X_test.pkl"], obs=ok_run, upstream=DE_SAVED, gt="roc_auc 0.90",
                  submission_valid=True, metric_value=0.90, **AUC))
  poor = rule(ds("analyst", ["X_test.pkl"], obs=ok_run, upstream=DE_SAVED, gt="roc_auc 0.60",
                 submission_valid=True, metric_value=0.60, **AUC))
  assert junk.score == 5.0 and poor.score == 6.0 and poor.score < stop.score
  assert great.score == 9.0


def test_only_its_own_tool_output_blocks_an_agent():
  # The Modeler's hand-off quotes the FileNotFoundError; the Analyst never tried to load
  # X_test.pkl itself and wrote no submission: that is its own failure, not a block.
  quoted = own_turn("[stdout]:\nloaded", handoff=f"Modeler: could not score the test set.\n"
                    f"{NOT_FOUND}")
  upstream_only = quoted[:quoted.index("<|im_start|>assistant")]
  for agent_input in (upstream_only, f"<tool_response>\n{NOT_FOUND}\n</tool_response>"):
    ran = rule(ds("analyst", ["X_test.pkl", "submission.csv"], obs="[stdout]:\nloaded",
                  upstream=DE_SAVED, agent_input=agent_input, gt="Submission invalid",
                  submission_valid=False, metric_value=float("nan"), baseline_value=0.5,
                  metric_name="accuracy"))
    assert "blocked" not in ran.rationale and ran.score <= 3.0, ran.rationale
    report = rule(ds("analyst", ["X_test.pkl", "submission.csv"], code=False,
                     upstream=DE_SAVED, agent_input=agent_input, gt="Submission invalid",
                     submission_valid=False))
    assert report.score == 0.0 and "cap 0" in report.rationale
  # In an own earlier turn's output (after its first own turn) it does count.
  assert rule(ds("analyst", ["X_test.pkl", "submission.csv"], code=False, upstream=DE_SAVED,
                 agent_input=quoted.replace("[stdout]:\nloaded", NOT_FOUND),
                 submission_valid=False)).score == 2.0


def test_a_blocked_modeler_is_capped_too_and_a_recovered_one_is_not():
  not_found = NOT_FOUND.replace("X_test.pkl", "X_train.pkl")
  saved = (("data_engineer", ("y_train.pkl", "X_test.pkl")),)
  stop = rule(ds("modeler", ["X_train.pkl", "model.pkl"], errors=1, obs=not_found,
                 upstream=saved))
  assert stop.score == 7.5 and "(own outputs excused: blocked)" in stop.rationale
  rebuilt = rule(ds("modeler", ["X_train.pkl"], upstream=saved))
  assert rebuilt.score == 10.0 and "delivered anyway" in rebuilt.rationale


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
  # Its own model.pkl is missing too: the sheet's 2 + 3 + 3 * 2/3 + 2 = 9 is capped at 5.
  assert idle_modeler.score == pytest.approx(5.0) and "cap 5" in idle_modeler.rationale
