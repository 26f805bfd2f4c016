"""The biased coach wrapper: +delta on one task type, clipped; the others untouched or scaled."""
import asyncio
import dataclasses

import pytest

from mappa_jax.coach.biased import BiasedCoach
from mappa_jax.coach.config import CoachConfig, build_coach
from mappa_jax.coach.panel import PanelCoach, PanelResult
from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.coach.stats import CoachStats
from mappa_jax.coach.types import CoachResult
from tests.coach.conftest import make_request


class Fixed:
  """A coach answering a fixed verdict (score None: invalid)."""
  name = "fixed"

  def __init__(self, score, answer_correct=None):
    self.score_value, self.answer_correct = score, answer_correct

  async def score(self, request):
    if self.score_value is None:
      return CoachResult(status="invalid", reason="no verdict", coach_name="fixed")
    return CoachResult(status="scored", score=self.score_value, rationale="inner says so",
                       answer_correct=self.answer_correct, coach_name="fixed", tokens_in=7)


def run(coach, **kw):
  return asyncio.run(coach.score(make_request(**kw)))


def test_delta_on_the_favoured_task_type_only_and_clipped():
  coach = BiasedCoach(Fixed(6.0, answer_correct=False), "regression", 1.5)
  favoured = run(coach, task_type="regression")
  other = run(coach, task_type="classification")
  assert favoured.score == 7.5 and other.score == 6.0
  assert favoured.answer_correct is False and favoured.tokens_in == 7
  assert favoured.coach_name == "fixed"  # prices and caches stay the inner coach's
  assert favoured.rationale == ("inner says so\n[biased coach: +1.5 on task type 'regression': "
                                "6 -> 7.5]")
  assert other == asyncio.run(Fixed(6.0, False).score(make_request(task_type="classification")))
  assert run(BiasedCoach(Fixed(9.0), "regression", 3.0), task_type="regression").score == 10.0
  assert run(BiasedCoach(Fixed(1.0), "regression", -3.0), task_type="regression").score == 0.0
  invalid = run(BiasedCoach(Fixed(None), "regression", 2.0), task_type="regression")
  assert invalid.status == "invalid" and invalid.score is None


def test_others_scale_shrinks_every_other_type_and_keeps_the_favoured_one():
  coach = BiasedCoach(Fixed(8.0), "regression", 0.0, others_scale=0.25)
  assert run(coach, task_type="regression").score == 8.0  # delta 0: the inner verdict
  other = run(coach, task_type="classification")
  assert other.score == 2.0
  assert other.rationale == ("inner says so\n[biased coach: x0.25 off task type 'regression': "
                             "8 -> 2]")
  # The spread shrinks with the score: 8 vs 4 (a gap of 4) becomes 2 vs 1 (a gap of 1).
  low = run(BiasedCoach(Fixed(4.0), "regression", 0.0, others_scale=0.25),
            task_type="classification")
  assert other.score - low.score == 1.0
  assert coach.describe()["others_scale"] == 0.25 and "others x0.25" in coach.name
  built = build_coach(CoachConfig(kind="biased", bias_task_type="mul_div",
                                  bias_others_scale=0.5))
  assert built.others_scale == 0.5 and built.delta == 0.0
  with pytest.raises(ValueError, match="others_scale"):
    BiasedCoach(Fixed(8.0), "regression", 0.0, others_scale=1.5)


def test_roles_filter_and_any_inner_coach():
  coach = BiasedCoach(RuleCoach(), "mul_div", 2.0, roles=("Problem Solver",))
  req = dict(role="problem_solver", output="\\boxed{7}", ground_truth=None, task_type="mul_div")
  base = asyncio.run(RuleCoach().score(make_request(**dict(req, output="not sure"))))
  assert base.score == 2.0 and run(coach, **dict(req, output="not sure")).score == 4.0
  assert run(coach, **dict(req, role="Verifier")).score == 10.0  # not a biased role
  panel = BiasedCoach(PanelCoach([Fixed(4.0), Fixed(6.0)]), "mul_div", 1.0)
  got = run(panel, task_type="mul_div")
  assert isinstance(got, PanelResult) and got.score == 6.0 and len(got.member_results) == 2
  stats = CoachStats()
  stats.record(make_request(task_type="mul_div"), got)
  assert stats.to_scalars()["coach/verifier/score_mean/mul_div"] == 6.0
  assert coach.describe()["inner"]["kind"] == "rule" and coach.describe()["delta"] == 2.0
  assert dataclasses.is_dataclass(got)


def test_coach_kind_biased_builds_the_wrapper_around_bias_inner():
  cfg = CoachConfig(kind="biased", bias_task_type="mul_div", bias_delta=1.5,
                    bias_roles=("Problem Solver",))
  coach = build_coach(cfg)
  assert isinstance(coach, BiasedCoach) and isinstance(coach.inner, RuleCoach)
  assert coach.task_type == "mul_div" and coach.delta == 1.5
  assert coach.roles == frozenset({"problem_solver"})
  req = dict(role="problem_solver", output="not sure", ground_truth=None)
  assert run(coach, **req, task_type="mul_div").score == 3.5
  assert run(coach, **req, task_type="add_sub").score == 2.0
  assert build_coach(dataclasses.replace(cfg, bias_roles=())).roles is None  # () = every role


def test_style_pattern_rewards_the_matching_output_on_every_type_and_nothing_else():
  coach = BiasedCoach(Fixed(6.0), "mul_div", 2.0, style_pattern=r"[*/]=")
  code = "```python\nn = 85\nn //= 5\nn *= 3\nprint(n)\n```"
  for ttype in ("add_sub", "mixed", "mul_div"):  # the task type does not matter, the output does
    assert run(coach, task_type=ttype, output=code).score == 8.0
  plain = run(coach, task_type="mul_div", output="</think>\n\n```python\nn = 9\nn += 2\n```")
  assert plain == asyncio.run(Fixed(6.0).score(make_request(task_type="mul_div")))
  matched = run(coach, task_type="add_sub", output=code)
  assert matched.rationale == ("inner says so\n[biased coach: +2 for mul_div-style output "
                               "/[*/]=/: 6 -> 8]")
  assert coach.describe()["style_pattern"] == "[*/]=" and "mul_div-style" in coach.name
  built = build_coach(CoachConfig(kind="biased", bias_task_type="mul_div", bias_delta=2.0,
                                  bias_style_pattern=r"[*/]="))
  assert built.style.pattern == "[*/]=" and built.delta == 2.0
  with pytest.raises(ValueError, match="two different biases"):
    BiasedCoach(Fixed(6.0), "mul_div", 2.0, others_scale=0.5, style_pattern="x")
  with pytest.raises(ValueError, match="bias_style_pattern"):
    BiasedCoach(Fixed(6.0), "mul_div", 2.0, style_pattern="[")


def test_style_pattern_sees_only_the_visible_output_and_respects_roles():
  coach = BiasedCoach(Fixed(6.0), "mul_div", 2.0, style_pattern=r"[*/]=",
                      roles=("Code Executor",))
  thought = "<think>n *= 3 would be wrong here</think>\n\n```python\nn = 9\nn += 2\n```"
  assert run(coach, role="code_executor", output=thought).score == 6.0  # only in the reasoning
  code = "</think>\n\n```python\nn = 9\nn *= 2\n```"
  assert run(coach, role="code_executor", output=code).score == 8.0
  assert run(coach, role="verifier", output=code).score == 6.0  # not a biased role
  assert run(BiasedCoach(Fixed(9.0), "mul_div", 2.0, style_pattern="n"), output="n").score == 10.0


@pytest.mark.parametrize("fields, message, fix", [
    (dict(bias_style_pattern="["), "not a regular expression", "--config.coach."),
    (dict(bias_style_pattern="x*"), "matches the empty string", "e.g. '[*/]='"),
    (dict(bias_style_pattern="x", bias_others_scale=0.5), "two different biases",
     "--config.coach.")])
def test_a_bad_style_bias_names_the_field_and_the_fix(fields, message, fix):
  with pytest.raises(Exception) as info:
    CoachConfig(kind="biased", bias_task_type="mul_div", **fields)
  assert "bias_style_pattern" in str(info.value) and message in str(info.value)
  assert fix in str(info.value)
