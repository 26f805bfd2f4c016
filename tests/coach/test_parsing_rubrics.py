"""Strict verdict parsing, rubric rendering and truncation."""
import pytest

from mappa_jax.coach import parsing, rubrics
from mappa_jax.coach import requests as rq
from mappa_jax.coach.types import CoachResult
from tests.coach.conftest import make_request


@pytest.mark.parametrize("text,score", [
    ("PROCESS_SCORE: 7", 7.0),
    ("**PROCESS_SCORE:** 7", 7.0),
    ("PROCESS_SCORE: **7**", 7.0),
    ("PROCESS_SCORE: 7/10", 7.0),
    ("PROCESS_SCORE: 7.", 7.0),
    ("process_score: [8]", 8.0),
    ("### PROCESS_SCORE: 6.5", 6.5),
    ("`PROCESS_SCORE: 0`", 0.0),
    ("PROCESS_SCORE: 10", 10.0),
    ("Format: PROCESS_SCORE: <0-10>\nreasoning...\nPROCESS_SCORE: 2\nPROCESS_SCORE: 9", 9.0),
    ("<think>PROCESS_SCORE: 1</think>\nPROCESS_SCORE: 4", 4.0),
    ("reasoning with PROCESS_SCORE: 1 inside</think>\nPROCESS_SCORE: 5", 5.0),
])
def test_well_formed(text, score):
  v = parsing.parse_verdict(text, needs_answer_correct=False)
  assert v.ok and v.score == score


@pytest.mark.parametrize("text", [
    "",
    "I would give this a 7.",
    "Score: 7/10",
    "PROCESS_SCORE: 7 because the code ran",
    "PROCESS_SCORE:\n7",
    "PROCESS_SCORE: seven",
    "PROCESS_SCORE: 7/5",
    "PROCESS_SCORE: 11",
    "PROCESS_SCORE: -1",
    "PROCESS_SCORE: 3\nPROCESS_SCORE: 42",  # the LAST line decides, and it is out of range
    "<think>PROCESS_SCORE: 6</think>no verdict outside the reasoning",
])
def test_rejected(text):
  v = parsing.parse_verdict(text, needs_answer_correct=False)
  assert not v.ok and v.score is None


def test_answer_correct():
  v = parsing.parse_verdict("PROCESS_SCORE: 7\n**ANSWER_CORRECT:** 1", True)
  assert (v.score, v.answer_correct, v.ok) == (7.0, True, True)
  v = parsing.parse_verdict("PROCESS_SCORE: 7\nANSWER_CORRECT: 2", True)
  assert v.score == 7.0 and v.answer_correct is None and not v.ok
  v = parsing.parse_verdict("PROCESS_SCORE: 7\nANSWER_CORRECT: 0", False)
  assert v.ok and v.answer_correct is None  # not asked, not reported


def test_reward_policies():
  scored = CoachResult(status="scored", score=7.0)
  invalid = CoachResult(status="invalid", reason="parse_error: x")
  assert parsing.reward_from_result(scored) == pytest.approx(0.7)
  assert parsing.reward_from_result(invalid) is None
  assert parsing.reward_from_result(invalid, "neutral", 5.0) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="invalid_policy"):
    parsing.reward_from_result(invalid, "zero")


def test_truncation_keeps_head_and_tail():
  text = "H" * 100 + "M" * 1000 + "Traceback: KeyError 'target'"
  out = rq.truncate_head_tail(text, 50, 40)
  assert out.startswith("H" * 50) and out.endswith("Traceback: KeyError 'target'")
  assert "1038 characters omitted" in out
  assert rq.truncate_head_tail("short", 50, 40) == "short"
  assert rq.truncate_head_tail(text, 0, 0) == text


def test_tool_observation_tail_reaches_the_coach():
  obs = "x" * 10000 + "\nFileNotFoundError: X_test.pkl"
  req = make_request(workflow="dsbench", role="modeler", tool_observation=obs)
  text = rubrics.DSBENCH.render(req, rq.RenderLimits(obs_head_chars=100, obs_tail_chars=100)).text
  assert "FileNotFoundError: X_test.pkl" in text and "x" * 200 not in text


def test_ground_truth_only_for_allowed_roles():
  for role, shown in [("Verifier", True), ("Problem Solver", False), ("Code Executor", False)]:
    p = rubrics.MATHCHAT.render(make_request(role=role, ground_truth="4711"))
    assert ("4711" in p.text) == shown and p.needs_answer_correct == shown
    assert ("ANSWER_CORRECT" in p.text) == shown
  analyst = make_request(workflow="dsbench", role="analyst", ground_truth="accuracy 0.91",
                         signals={"metric_value": 0.91, "code_blocks": 1})
  modeler = dataclasses_replace(analyst, role="modeler")
  pa, pm = rubrics.DSBENCH.render(analyst), rubrics.DSBENCH.render(modeler)
  assert "accuracy 0.91" in pa.text and "metric_value: 0.91" in pa.text
  assert "accuracy 0.91" not in pm.text and "metric_value" not in pm.text
  assert "code_blocks: 1" in pm.text
  assert not pa.needs_answer_correct  # DSBench has no ANSWER_CORRECT
  # Configurable: nobody sees the label.
  assert "4711" not in rubrics.MATHCHAT.render(make_request(ground_truth="4711"),
                                               ground_truth_roles=()).text


def dataclasses_replace(obj, **kw):
  import dataclasses
  return dataclasses.replace(obj, **kw)


def test_render_fills_all_slots_once_and_hashes_are_versions():
  req = make_request(output="{problem} {ground_truth} \\boxed{5}", task="What is {x}?",
                     workspace_files=("train.csv",),
                     upstream_files=(("Data Engineer", ("X_test.pkl",)), ("Modeler", ())))
  for rubric in rubrics.RUBRICS.values():
    text = rubric.render(req).text
    assert "{problem} {ground_truth} \\boxed{5}" in text  # agent text is not re-substituted
    assert "What is {x}?" in text
    assert not any("{" + s + "}" in text.replace(req.agent_output, "")
                   for s in ("agent_role", "tool_observation", "answer_format"))
    assert rubric.render(req).template_hash == rubric.hash == rubrics.template_hash(rubric.text)
    assert len(rubric.hash) == 12
  dsb = rubrics.DSBENCH.render(dataclasses_replace(req, workflow="dsbench")).text
  assert "Data Engineer saved: X_test.pkl" in dsb and "Modeler saved: NO FILES SAVED" in dsb
  assert "- train.csv" in dsb
  assert rubrics.MATHCHAT.hash != rubrics.DSBENCH.hash
  assert rubrics.template_hashes() == {"mathchat": rubrics.MATHCHAT.hash,
                                       "dsbench": rubrics.DSBENCH.hash}
  changed = rubrics.Rubric("mathchat", rubrics.MATHCHAT_TEMPLATE + " ")
  assert changed.hash != rubrics.MATHCHAT.hash
  with pytest.raises(ValueError, match="unknown slots"):
    rubrics.Rubric("bad", "{nonsense}")
  with pytest.raises(ValueError, match="no coach rubric"):
    rubrics.get_rubric("chess")


def test_tool_signals_from_records():
  from mappa_jax.workflows.records import ToolCall
  calls = [ToolCall("print(1)", exit_code=0), ToolCall("1/0", exit_code=1),
           ToolCall("while True: pass", exit_code=None, timed_out=True),
           ToolCall("x", exit_code=None)]
  assert rq.tool_signals(calls) == {"code_blocks": 4, "tool_errors": 2, "tool_timeouts": 1}
  assert rq.tool_signals([]) == {"code_blocks": 0, "tool_errors": 0, "tool_timeouts": 0}


def test_dsbench_quality_caps_use_only_what_the_evaluation_reports():
  # The workflow's evaluation text gives the metric and a trivial baseline (no target range or
  # IQR), so the rubric's caps for error metrics must be stated against the baseline.
  from mappa_jax.workflows.dsbench import metrics_text
  evaluation = metrics_text({"valid": True, "metric": "rmse", "value": 3.0,
                             "higher_is_better": False, "n_predictions": 10, "n_expected": 10,
                             "baseline_value": 6.0, "normalized_gain": 0.5})
  assert "baseline 6" in evaluation and "range" not in evaluation
  text = rubrics.DSBENCH.render(make_request(workflow="dsbench", role="analyst",
                                             ground_truth=evaluation)).text
  caps = text[text.index("caps the score"):text.index("The cap is the default")]
  assert "baseline" in caps and "range" not in caps and "IQR" not in caps


def test_code_that_printed_nothing_is_not_reported_as_no_tool():
  silent = make_request(role="Code Executor", tool_observation="",
                        signals={"code_blocks": 1, "tool_errors": 0})
  text = rubrics.MATHCHAT.render(silent).text
  assert rq.RAN_SILENTLY_TEXT in text and rq.NO_TOOL_TEXT not in text
  assert rq.NO_TOOL_TEXT in rubrics.MATHCHAT.render(make_request(tool_observation="")).text
