"""Panel aggregation over two real endpoints, statistics, and their TensorBoard round trip through mappa_jax.metrics."""
import asyncio

import pytest

from mappa_jax.coach.config import CoachConfig
from mappa_jax.coach.openai_coach import OpenAICoach
from mappa_jax.coach.panel import PanelCoach, PanelResult
from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.coach.stats import CoachStats
from mappa_jax.coach.types import CoachResult
from tests.coach.conftest import make_request
from tests.coach.openai_test_server import OpenAITestServer, answer, status


class Fixed:
  """A member with a fixed verdict (for aggregation arithmetic only)."""

  def __init__(self, name, result):
    self.name, self.result = name, result

  async def score(self, request):
    return self.result


def s(x, correct=None):
  return CoachResult(status="scored", score=x, answer_correct=correct, template_hash="h")


def run_panel(panel, req=None):
  return asyncio.run(panel.score(req or make_request()))


def test_aggregation_and_disagreement():
  members = [Fixed("a", s(2.0, True)), Fixed("b", s(6.0, True)), Fixed("c", s(10.0, False)),
             Fixed("d", CoachResult(status="invalid", reason="parse_error: x"))]
  mean = run_panel(PanelCoach(members, "mean"))
  median = run_panel(PanelCoach(members[:2] + [Fixed("c", s(9.0))], "median"))
  assert isinstance(mean, PanelResult) and mean.is_scored
  assert mean.score == pytest.approx(6.0)
  assert mean.disagreement_std == pytest.approx((32 / 3) ** 0.5)
  assert mean.disagreement_range == 8.0
  assert mean.answer_correct is True  # 2 of 3 votes
  assert "[d] invalid: parse_error: x" in mean.rationale
  assert median.score == 6.0
  dead = run_panel(PanelCoach([members[3], members[3]]))
  assert dead.status == "invalid" and "0 of 2 members valid" in dead.reason
  strict = run_panel(PanelCoach(members, min_valid=4))
  assert strict.status == "invalid"
  with pytest.raises(ValueError, match="mean' or 'median"):
    PanelCoach(members, "mode")


def test_panel_over_two_endpoints_and_stats(monkeypatch, tmp_path):
  monkeypatch.setenv("K", "secret")
  # The three requests run concurrently, so which one reaches a server first is up to the
  # scheduler: the scripted faults are keyed on the request's content, never on arrival order.
  def prompt_of(body):
    return "\n".join(str(m["content"]) for m in body["messages"])

  def judge_a(body):  # the \boxed{42} action gets HTTP 400 (not retried: dropped from the panel)
    if "\\boxed{42}" in prompt_of(body):
      return status(400)
    return answer("PROCESS_SCORE: 8\nANSWER_CORRECT: 1")

  seen_41 = []

  def judge_b(body):  # the first reply about \boxed{41} is unreadable: one re-ask
    if "\\boxed{41}" in prompt_of(body) and not seen_41:
      seen_41.append(body)
      return answer("garbage")
    return answer("PROCESS_SCORE: 4\nANSWER_CORRECT: 1")

  with OpenAITestServer(responder=judge_a) as s1, OpenAITestServer(responder=judge_b) as s2:
    c1 = OpenAICoach(CoachConfig(kind="openai", base_url=s1.base_url, model="judge-a",
                                 api_key_env="K", backoff_base_s=0.01))
    c2 = OpenAICoach(CoachConfig(kind="openai", base_url=s2.base_url, model="judge-b",
                                 api_key_env="K", backoff_base_s=0.01))
    panel = PanelCoach([c1, c2, RuleCoach()], aggregate="mean")
    stats = CoachStats(price_in_per_m=1.0, price_out_per_m=4.0)
    reqs = [make_request(output="\\boxed{42}", task_type="mul_div"),
            make_request(output="\\boxed{41}", task_type="add_sub"),
            make_request(role="Problem Solver", output="\\boxed{7}", task_type="add_sub")]

    async def run():
      try:
        return await asyncio.gather(*(panel.score(r) for r in reqs))
      finally:
        await c1.aclose()
        await c2.aclose()

    results = asyncio.run(run())
    for r, q in zip(results, reqs):
      stats.record(q, r)
  # First request: endpoint 1 gets 400 (invalid, dropped) -> mean(4, rule 10) = 7.
  assert results[0].score == pytest.approx(7.0)
  assert results[0].disagreement_range == pytest.approx(6.0)
  # Second: 8, 4, rule(wrong answer: 4) -> mean 16/3.
  assert results[1].score == pytest.approx(16 / 3)
  assert results[1].answer_correct is True  # two LLM judges say 1, the rule coach says 0
  sc = stats.to_scalars()
  assert sc["coach/verifier/n"] == 2 and sc["coach/problem_solver/n"] == 1
  assert sc["coach/verifier/score_mean"] == pytest.approx((7 + 16 / 3) / 2)
  assert sc["coach/verifier/score_mean/mul_div"] == pytest.approx(7.0)
  assert sc["coach/verifier/score_mean/add_sub"] == pytest.approx(16 / 3)
  assert sc["coach/verifier/n/add_sub"] == 1
  assert sc["coach/all/parse_failures"] == 1  # one member reply needed a re-ask
  assert sc["coach/all/invalid"] == 0  # the panel verdicts themselves were all valid
  assert sc["coach/verifier/disagreement_std_mean"] > 0
  leaves = [m for r in results for m in r.member_results if m.coach_name != "rule"]
  t_in = sum(m.tokens_in for m in leaves)
  t_out = sum(m.tokens_out for m in leaves)
  assert t_in > 0 and sc["coach/all/tokens_in"] == t_in and sc["coach/all/tokens_out"] == t_out
  assert sc["coach/all/cost_usd"] == pytest.approx((t_in * 1.0 + t_out * 4.0) / 1e6)
  assert sc["coach/all/latency_p95_s"] >= sc["coach/all/latency_p50_s"] > 0
  assert sc["coach/all/cache_hit_rate"] == 0.0


def test_stats_counts_invalid_cached_and_writes_tensorboard(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from mappa_jax.metrics import MetricWriter
  from mappa_jax.coach.openai_coach import LLMResult
  stats = CoachStats()
  req = make_request(role="Code Executor", task_type="mixed")
  stats.record(req, LLMResult(status="scored", score=3.0, cached=True, coach_name="x"))
  stats.record(req, LLMResult(status="scored", score=5.0, latency_s=0.2, attempts=1,
                              tokens_in=100, tokens_out=10, coach_name="x"))
  stats.record(req, LLMResult(status="invalid", reason="parse_error: y", reasked=True,
                              latency_s=0.4, attempts=2, coach_name="x"))
  sc = stats.to_scalars()
  assert sc["coach/code_executor/score_mean"] == 4.0
  assert "coach/code_executor/score_length_corr" not in sc  # equal lengths: undefined
  assert sc["coach/code_executor/score_std"] == 1.0
  assert sc["coach/code_executor/invalid"] == 1 and sc["coach/code_executor/parse_failures"] == 1
  assert sc["coach/code_executor/invalid_rate"] == pytest.approx(1 / 3)
  assert sc["coach/code_executor/cache_hit_rate"] == pytest.approx(1 / 3)
  assert sc["coach/code_executor/latency_p50_s"] == pytest.approx(0.3)
  assert sc["coach/code_executor/tokens_in"] == 100
  long_req = make_request(role="Code Executor", output="x" * 500)
  stats.record(long_req, LLMResult(status="scored", score=9.0, cached=True))
  assert stats.to_scalars()["coach/code_executor/score_length_corr"] > 0.9

  with MetricWriter(str(tmp_path)) as writer:  # the trainer's metrics writer
    sc = stats.to_scalars()
    writer.scalars(3, sc)
  acc = EventAccumulator(str(tmp_path))
  acc.Reload()
  tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  assert set(sc) <= tags
  ev = acc.Tensors("coach/code_executor/score_mean")[0]
  import numpy as np
  from tensorboard.util import tensor_util
  assert ev.step == 3
  assert float(np.asarray(tensor_util.make_ndarray(ev.tensor_proto))) == pytest.approx(
      sc["coach/code_executor/score_mean"])
  stats.reset()
  assert stats.to_scalars() == {}


def test_stats_do_not_depend_on_arrival_order():
  """Verdicts complete in latency order; the same verdicts must give bit-identical scalars
  (float sums depend on order, so the statistics sort first)."""
  import random
  verdicts = [(make_request(role="Verifier", output="y" * (7 * i % 23 + 1), task_type="t"),
               s(round(10 * ((0.37 * i) % 1.0), 3), correct=bool(i % 2))) for i in range(40)]
  out = []
  for seed in range(4):
    shuffled = list(verdicts)
    random.Random(seed).shuffle(shuffled)
    stats = CoachStats()
    for req, res in shuffled:
      stats.record(req, res)
    out.append(stats.to_scalars())
  assert all(o == out[0] for o in out), [
      {k: o[k] for k in o if o[k] != out[0][k]} for o in out]
