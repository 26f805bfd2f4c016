"""The offline rule coach: rubric points, label gating, determinism, learning signal."""
import asyncio

import pytest

from mappa_jax.coach.rule_coach import RULE_RUBRIC_HASH, RuleCoach
from tests.coach.conftest import make_request


def rule(req, **kw):
  return asyncio.run(RuleCoach(**kw).score(req))


def test_verifier_correct_wrong_missing_are_ordered():
  correct = rule(make_request(output="6*7 = 42.\n\\boxed{42}", signals={"truncated": False}))
  equivalent = rule(make_request(output="\\boxed{42.0}"))
  wrong = rule(make_request(output="\\boxed{41}"))
  wordy = rule(make_request(output="\\boxed{forty-two}"))
  missing = rule(make_request(output="I am not sure."))
  cut = rule(make_request(output="Let me think", signals={"truncated": True}))
  assert correct.score == 10.0 and correct.answer_correct is True
  assert equivalent.score == 10.0 and equivalent.answer_correct is True
  assert wrong.answer_correct is False and wrong.score == pytest.approx(4.0)
  assert wordy.score == pytest.approx(0.4 * 9)
  assert missing.score == pytest.approx(0.8) and missing.answer_correct is False
  assert cut.score == 0.0
  assert correct.score > wrong.score > wordy.score > missing.score > cut.score
  assert "matches the label" in correct.rationale
  assert "+4.00/4 final answer present: '42'" in correct.rationale
  assert correct.template_hash == RULE_RUBRIC_HASH and correct.coach_name == "rule"


def test_roles_without_label_get_format_and_consistency_credit():
  # The Problem Solver may not see the label: a wrong but well-formed answer scores the same.
  right = rule(make_request(role="Problem Solver", output="\\boxed{42}"))
  wrong = rule(make_request(role="Problem Solver", output="\\boxed{41}"))
  assert right.score == wrong.score == 10.0 and right.answer_correct is None
  flip = rule(make_request(role="Problem Solver", output="\\boxed{40} no wait \\boxed{41}"))
  assert flip.score == 8.0 and "2 distinct boxed answers" in flip.rationale
  hidden = rule(make_request(role="problem_solver", output="<think>\\boxed{42}</think>\nhmm"))
  assert hidden.score == 2.0  # a box inside the reasoning is not an answer
  # The label is ignored for roles not allowed to see it, even if the workflow passes it.
  assert rule(make_request(role="Verifier", output="\\boxed{41}"),
              ground_truth_roles=()).score == 10.0


def test_code_executor_credits_code_that_runs():
  good = rule(make_request(role="Code Executor", output="```python\nprint(6*7)\n```\n\\boxed{42}",
                           signals={"code_blocks": 1, "tool_errors": 0}))
  crashed = rule(make_request(role="Code Executor", output="```python\n1/0\n```",
                              signals={"code_blocks": 2, "tool_errors": 1, "tool_timeouts": 0}))
  no_code = rule(make_request(role="Code Executor", output="The answer is 42."))
  assert good.score == 9.0  # written 2 + ran 2 + answer 2 + form 1 + finished 2; nothing printed
  assert crashed.score == pytest.approx(2 + 1.0 + 2)
  assert no_code.score == 2.0
  assert "1 of 2 blocks without error" in crashed.rationale


def test_code_executor_prefers_computing_and_reporting_the_tool_result():
  # The behaviours the tiny base team mixes (mappa_jax/sft/demos.py), ordered by the rubric.
  ran = dict(signals={"code_blocks": 1, "tool_errors": 0})
  compute = rule(make_request(role="Code Executor", output="```python\nprint(6*7)\n```",
                              tool_observation="42", **ran))
  no_print = rule(make_request(role="Code Executor", output="```python\n6*7\n```",
                               tool_observation="", **ran))
  syntax = rule(make_request(role="Code Executor", output="```python\nprint(6*7\n```",
                             tool_observation="[Execution Failed]\n[stderr/error]: SyntaxError",
                             signals={"code_blocks": 1, "tool_errors": 1}))
  restate = rule(make_request(role="Code Executor", output="The solver found 41. \\boxed{41}"))
  turn2 = "user\n<tool_response>\n42\n</tool_response><|im_end|>"
  report = rule(make_request(role="Code Executor", output="Printed 42. \\boxed{42}",
                             agent_input=turn2))
  ignore = rule(make_request(role="Code Executor", output="The solver found 41. \\boxed{41}",
                             agent_input=turn2))
  assert compute.score == 7.0 and "printed a result" in compute.rationale
  assert no_print.score == 6.0 and "no result printed" in no_print.rationale
  assert syntax.score == 4.0
  assert restate.score == 5.0 and "no tool output seen" in restate.rationale
  assert report.score == 7.0 and "grounded: the answer is the tool output" in report.rationale
  assert ignore.score == 5.0 and "result is '42'" in ignore.rationale
  assert compute.score > no_print.score > restate.score > syntax.score


def test_uses_signal_answer_when_given():
  r = rule(make_request(output="final: 42", signals={"answer": "42"}))
  assert r.answer_correct is True and r.score == 10.0


def _ds(role, signals, gt=None):
  return make_request(workflow="dsbench", role=role, output="```python\n...\n```",
                      ground_truth=gt, task_type="classification", signals=signals)


def test_dsbench_artifacts_errors_and_caps():
  de_ok = rule(_ds("data_engineer", {"code_blocks": 2, "tool_errors": 0,
                                     "required_files": ["X_train.pkl", "y_train.pkl",
                                                        "X_test.pkl"], "missing_files": []}))
  de_missing = rule(_ds("Data Engineer", {"code_blocks": 2, "tool_errors": 1,
                                          "required_files": ["X_train.pkl", "y_train.pkl",
                                                             "X_test.pkl"],
                                          "missing_files": ["X_test.pkl"]}))
  assert de_ok.score == 10.0
  # The sheet gives 2 + 1.5 + 2 + 2 = 7.5; a broken hand-off is capped at 5.
  assert de_missing.score == pytest.approx(5.0)
  assert "missing ['X_test.pkl']" in de_missing.rationale and "cap 5" in de_missing.rationale
  # Below the cap the sheet decides: nothing saved and every block failed.
  de_nothing = rule(_ds("data_engineer", {"code_blocks": 1, "tool_errors": 1,
                                          "required_files": ["X_train.pkl", "y_train.pkl",
                                                             "X_test.pkl"],
                                          "missing_files": ["X_train.pkl", "y_train.pkl",
                                                            "X_test.pkl"]}))
  assert de_nothing.score == pytest.approx(2 + 0 + 0 + 2)
  text_only = rule(_ds("modeler", {"code_blocks": 0, "required_files": ["model.pkl"],
                                   "missing_files": []}))
  assert text_only.score == 2.0 and "cap 2" in text_only.rationale
  analyst_sig = {"code_blocks": 1, "tool_errors": 0, "required_files": ["submission.csv"],
                 "missing_files": [], "submission_valid": True, "metric_name": "accuracy",
                 "metric_value": 0.6, "higher_is_better": True}
  capped = rule(_ds("analyst", analyst_sig, gt="accuracy 0.6"))
  assert capped.score == 4.0 and "cap 4" in capped.rationale
  unseen = rule(_ds("analyst", analyst_sig, gt=None))  # no outcome visible: no cap
  assert unseen.score == 10.0
  rmse = dict(analyst_sig, metric_name="rmse", metric_value=3.0, baseline_value=10.0,
              higher_is_better=False)
  assert rule(_ds("analyst", rmse, gt="rmse 3")).score == 9.0
  worse = dict(rmse, metric_value=12.0)
  assert rule(_ds("analyst", worse, gt="rmse 12")).score == 3.0
  invalid_sub = dict(analyst_sig, submission_valid=False)
  assert rule(_ds("analyst", invalid_sub)).score == 8.0


def test_deterministic_and_unknown_workflow():
  req = make_request(output="\\boxed{42}")
  a, b = rule(req), rule(req)
  assert a == b
  bad = rule(make_request(workflow="chess"))
  assert bad.status == "invalid" and "unknown workflow" in bad.reason
