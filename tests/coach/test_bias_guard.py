"""The bias guard: the bootstrap against a loop reference, hand-computed gaps, and the warning
on synthetic runs (biased coach: fires; unbiased, real outcome difference, constant gap: not)."""
import json
import math

import numpy as np
import pytest

from mappa_jax.coach import bias_guard as bg
from mappa_jax.coach.types import CoachResult
from mappa_jax.workflows.records import Action, Trajectory


def reference_bootstrap(x, y, n_boot, level, seed):
  """The documented procedure written out with loops."""
  x, y = sorted(x), sorted(y)
  rng = np.random.default_rng(seed)
  ix = rng.integers(0, len(x), size=(n_boot, len(x)))
  iy = rng.integers(0, len(y), size=(n_boot, len(y)))
  diffs = sorted(sum(x[i] for i in ix[b]) / len(x) - sum(y[j] for j in iy[b]) / len(y)
                 for b in range(n_boot))

  def quantile(p):  # numpy's default: linear interpolation at (n - 1) * p
    h = (n_boot - 1) * p
    k = math.floor(h)
    return diffs[k] + (h - k) * (diffs[min(k + 1, n_boot - 1)] - diffs[k])
  tail = (1 - level) / 2
  return sum(x) / len(x) - sum(y) / len(y), quantile(tail), quantile(1 - tail)


def test_bootstrap_matches_the_reference_and_hand_computed_cases():
  rng = np.random.default_rng(3)
  x, y = list(rng.normal(7, 1, 23)), list(rng.normal(6, 2, 17))
  got = bg.bootstrap_mean_diff(x, y, n_boot=500, level=0.9, seed=11)
  assert got == pytest.approx(reference_bootstrap(x, y, 500, 0.9, 11), abs=1e-12)
  # Order never matters (values are sorted first); another seed gives another CI.
  assert bg.bootstrap_mean_diff(x[::-1], y[::-1], n_boot=500, level=0.9, seed=11) == got
  assert bg.bootstrap_mean_diff(x, y, n_boot=500, level=0.9, seed=12) != got
  # Constant samples: every resample has the same difference.
  assert bg.bootstrap_mean_diff([2, 2, 2], [1, 1], seed=0) == (1.0, 1.0, 1.0)
  # x* in {0, .5, 1} with probabilities 1/4, 1/2, 1/4: the 95 % CI is [0, 1].
  assert bg.bootstrap_mean_diff([0, 1], [0], n_boot=2000, seed=0) == (0.5, 0.0, 1.0)
  with pytest.raises(ValueError, match="non-empty"):
    bg.bootstrap_mean_diff([], [1.0])


def test_scalars_are_hand_computed_gaps_over_the_window():
  guard = bg.BiasGuard(bg.BiasGuardConfig(window_steps=2, min_count=4, n_boot=200))
  scores = [bg.ScoreRecord("solver", "a", s) for s in (8, 9, 10, 9)]
  scores += [bg.ScoreRecord("solver", "b", s) for s in (5, 6, 7, 6)]
  scores += [bg.ScoreRecord("solver", "c", 1.0)] * 3  # below min_count: left out
  outcomes = [bg.OutcomeRecord("a", v) for v in (1, 1, 0, 1)]
  outcomes += [bg.OutcomeRecord("b", v) for v in (1, 0, 0, 0)]
  out = guard.update(1, scores, outcomes)
  assert out["coach_bias/solver/a_minus_b"] == 3.0
  assert out["coach_bias/solver/mean/a"] == 9.0 and out["coach_bias/solver/mean/b"] == 6.0
  assert out["coach_bias/outcome/a_minus_b"] == 0.5
  assert "coach_bias/solver/a_minus_c" not in out and "coach_bias/solver/mean/c" not in out
  lo, hi = out["coach_bias/solver/a_minus_b/ci_low"], out["coach_bias/solver/a_minus_b/ci_high"]
  assert 1.5 <= lo <= 3.0 <= hi <= 4.5 and out["coach_bias/solver/a_minus_b/warn"] == 0.0
  # Step 2 pools with step 1 (window 2); step 3 drops step 1.
  out = guard.update(2, [bg.ScoreRecord("solver", "a", 5.0)] * 4
                     + [bg.ScoreRecord("solver", "b", 5.0)] * 4)
  assert out["coach_bias/solver/a_minus_b"] == pytest.approx((36 + 20) / 8 - (24 + 20) / 8)
  assert out["coach_bias/outcome/a_minus_b"] == 0.5
  out = guard.update(3, [])
  assert out["coach_bias/solver/a_minus_b"] == 0.0 and "coach_bias/outcome/a_minus_b" not in out
  assert guard.stratum_means("solver") == {"a": 5.0, "b": 5.0}
  with pytest.raises(ValueError, match="outcome"):
    guard.update(4, [bg.ScoreRecord("outcome", "a", 1.0)])


def synthetic_run(guard, steps, *, bias, p_a, p_b=0.5, n=16, seed=0):
  """Per step: n scores per stratum (A = 5 + bias(t) + noise, B = 5 + noise) for one agent and
  n outcomes per stratum with exactly round(n p) successes; returns (scalars, warnings) per step."""
  rng = np.random.default_rng(seed)
  results = []
  for t in range(1, steps + 1):
    noise = rng.uniform(-1.0, 1.0, size=(2, n))
    scores = [bg.ScoreRecord("executor", "A", 5.0 + bias(t) + e) for e in noise[0]]
    scores += [bg.ScoreRecord("executor", "B", 5.0 + e) for e in noise[1]]
    outcomes = []
    for stratum, p in (("A", p_a(t)), ("B", p_b)):
      k = round(n * p)
      outcomes += [bg.OutcomeRecord(stratum, 1.0)] * k + [bg.OutcomeRecord(stratum, 0.0)] * (n - k)
    results.append((guard.update(t, scores, outcomes), list(guard.warnings)))
  return results


TREND_ONLY = bg.BiasGuardConfig(require_widening=True)


def test_warns_on_a_widening_gap_the_outcome_does_not_follow():
  guard = bg.BiasGuard(TREND_ONLY)
  run = synthetic_run(guard, 8, bias=lambda t: 0.3 * t, p_a=lambda t: 0.5)
  warn = [out["coach_bias/executor/A_minus_B/warn"] for out, _ in run]
  assert warn[:3] == [0.0, 0.0, 0.0]  # fewer than trend_updates estimates: no trend yet
  assert warn[3:] == [1.0] * 5 and run[4][0]["coach_bias/warnings"] == 1.0
  messages = [m for _, ms in run for m in ms]
  assert len(messages) == 1  # the onset (repeat_every=10 updates)
  assert messages[0].startswith("coach bias? step 4: executor scores A +")
  assert "the outcome gap moved +0 (x10 = +0 points)" in messages[0]
  assert "per_agent_per_stratum" in messages[0]
  assert run[-1][0]["coach_bias/outcome/A_minus_B"] == 0.0


def test_no_warning_when_unbiased_or_the_outcome_follows_or_the_gap_is_constant():
  for config, bias, p_a in (
      (bg.BiasGuardConfig(), lambda t: 0.0, lambda t: 0.5),               # unbiased coach
      (bg.BiasGuardConfig(), lambda t: 1.0, lambda t: 0.6),               # explained level
      (bg.BiasGuardConfig(), lambda t: 0.3 * t, lambda t: 0.5 + 0.05 * t),  # a real difference
      (TREND_ONLY, lambda t: 0.3 * t, lambda t: 0.5 + 0.05 * t),
      (TREND_ONLY, lambda t: 1.0, lambda t: 0.5)):          # constant: the trend test is silent
    run = synthetic_run(bg.BiasGuard(config), 8, bias=bias, p_a=p_a)
    assert all(out["coach_bias/executor/A_minus_B/warn"] == 0.0 for out, _ in run)
    assert not any(ms for _, ms in run)


def test_the_default_level_test_flags_a_constant_gap_and_the_trend_test_a_widening_one():
  # A coach biased from the first step: significant from step 1, never widening.
  run = synthetic_run(bg.BiasGuard(), 4, bias=lambda t: 1.0, p_a=lambda t: 0.5)
  assert [out["coach_bias/executor/A_minus_B/warn"] for out, _ in run] == [1.0] * 4
  assert "the outcome gap is +0" in run[0][1][0]
  # A widening gap: under the default the level test warns first, the trend test takes over
  # its explanation once trend_updates estimates exist.
  run = synthetic_run(bg.BiasGuard(), 8, bias=lambda t: 0.3 * t, p_a=lambda t: 0.5)
  warn = [out["coach_bias/executor/A_minus_B/warn"] for out, _ in run]
  assert warn[3:] == [1.0] * 5 and sum(warn[:3]) >= 1.0
  trend = [m for _, ms in synthetic_run(bg.BiasGuard(bg.BiasGuardConfig(repeat_every=1)), 8,
                                        bias=lambda t: 0.3 * t, p_a=lambda t: 0.5)
           for m in ms]
  assert any("widened by" in m for m in trend) and any("outcome gap is" in m for m in trend)


def test_state_round_trip_resumes_identically():
  full = synthetic_run(bg.BiasGuard(), 7, bias=lambda t: 0.3 * t, p_a=lambda t: 0.5)
  first = bg.BiasGuard()
  synthetic_run(first, 3, bias=lambda t: 0.3 * t, p_a=lambda t: 0.5)
  resumed = bg.BiasGuard()
  resumed.load_state(json.loads(json.dumps(first.state())))
  rng = np.random.default_rng(0)
  rng.uniform(-1.0, 1.0, size=(3, 2, 16))  # the draws of steps 1-3
  for t in range(4, 8):
    noise = rng.uniform(-1.0, 1.0, size=(2, 16))
    scores = [bg.ScoreRecord("executor", "A", 5.0 + 0.3 * t + e) for e in noise[0]]
    scores += [bg.ScoreRecord("executor", "B", 5.0 + e) for e in noise[1]]
    outcomes = [bg.OutcomeRecord(s, v) for s in "AB" for v in [1.0] * 8 + [0.0] * 8]
    assert resumed.update(t, scores, outcomes) == full[t - 1][0]
    assert resumed.warnings == full[t - 1][1]


def test_records_from_trajectories():
  def action(agent, coach):
    return Action(agent=agent, turn=0, prompt_ids=[1], response_ids=[2], rollout_logprobs=[0.0],
                  finish_reason="stop", coach=coach)
  trajs = [Trajectory("t1", 0, "add_sub", actions=[
      action("solver", CoachResult(status="scored", score=7.0)),
      action("verifier", CoachResult(status="invalid")), action("verifier", None)],
      outcome={"rule_correct": 1.0}),
      Trajectory("t2", 0, "", actions=[action("solver", CoachResult(status="scored", score=3.0))])]
  scores, outcomes = bg.records_from_trajectories(trajs, "rule_correct")
  assert scores == [bg.ScoreRecord("solver", "add_sub", 7.0), bg.ScoreRecord("solver", "none", 3.0)]
  assert outcomes == [bg.OutcomeRecord("add_sub", 1.0)]


def test_monitor_logs_every_step_and_a_restore_drops_the_lines_after_it(tmp_path):
  from mappa_jax.coach.bias_monitor import BiasMonitor  # pylint: disable=g-import-not-at-top

  def traj(i, task_type, score):
    act = Action(agent="solver", turn=0, prompt_ids=[1], response_ids=[2],
                 rollout_logprobs=[0.0], finish_reason="stop",
                 coach=CoachResult(status="scored", score=score))
    return Trajectory(f"t{i}", 0, task_type, actions=[act], outcome={"rule_correct": 1.0})

  cfg = bg.BiasGuardConfig(min_count=2, n_boot=20)
  monitor = BiasMonitor(cfg, "rule_correct", str(tmp_path))
  batch = [traj(0, "a", 9.0), traj(1, "a", 8.0), traj(2, "b", 4.0), traj(3, "b", 5.0)]
  first = monitor.update(1, batch)
  assert first["coach_bias/solver/a_minus_b"] == 4.0
  state = json.loads(json.dumps(monitor.state()))  # what the checkpoint stores
  second = monitor.update(2, batch)
  resumed = BiasMonitor(cfg, "rule_correct", str(tmp_path))
  resumed.restore(state, 1)
  lines = (tmp_path / "coach_bias.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1]
  assert resumed.update(2, batch) == second  # the same estimates as without the restart
  assert not BiasMonitor(bg.BiasGuardConfig(enabled=False), "rule_correct", None).update(1, batch)


def test_a_gap_that_swings_through_zero_has_not_widened():
  """Widening is growth in magnitude: -1.0 -> +0.3 (significant) moved toward zero."""
  guard = bg.BiasGuard(TREND_ONLY)  # the level test would flag +0.3 (no outcome gap)
  swing = [bg.Estimate(t, g, g - 0.2, g + 0.2, 0.0) for t, g in enumerate((-1.0, -0.6, -0.1, 0.3))]
  assert guard.judge(swing) == (False, "")
  grows = [bg.Estimate(t, g, g - 0.2, g + 0.2, 0.0) for t, g in enumerate((-0.1, 0.2, 0.5, 0.9))]
  warn, why = guard.judge(grows)
  assert warn and why.startswith("widened by +0.8 since step 0")
