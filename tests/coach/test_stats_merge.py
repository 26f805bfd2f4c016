"""CoachStats.state()/merge(): the records of several accumulators (e.g. one per process, sent
as JSON) merge into the statistics of one accumulator that saw every verdict."""
import json

import numpy as np

from mappa_jax.coach.stats import CoachStats
from mappa_jax import distributed
from tests.multiprocess_worker import fixed_verdicts


def test_merged_halves_equal_one_accumulator():
  verdicts = fixed_verdicts()
  whole = CoachStats(price_in_per_m=2.0, price_out_per_m=8.0)
  halves = [CoachStats(price_in_per_m=2.0, price_out_per_m=8.0) for _ in range(2)]
  for i, (request, result) in enumerate(verdicts):
    whole.record(request, result)
    halves[i % 2].record(request, result)
  merged = CoachStats()
  for half in halves:
    merged.merge(json.loads(json.dumps(half.state())))  # as allgather_json carries it
  want, got = whole.to_scalars(), merged.to_scalars()
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-12, err_msg=k)
  # Negative control: one half alone is not the whole.
  assert halves[0].to_scalars()["coach/all/n"] != want["coach/all/n"]
  assert want["coach/all/cost_usd"] > 0 and "coach/verifier/latency_p95_s" in want


def test_state_is_a_copy_and_allgather_json_in_one_process():
  stats = CoachStats()
  request, result = fixed_verdicts()[1]
  stats.record(request, result)
  state = stats.state()
  state["problem_solver"]["scores"].append(99.0)
  assert stats.to_scalars()["coach/problem_solver/n"] == 1
  assert stats.to_scalars()["coach/problem_solver/score_mean"] == result.score
  assert distributed.allgather_json(stats.state()) == [stats.state()]
