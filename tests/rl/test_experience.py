"""Actions -> TrainBatch: alignment, bucketing, truncation accounting, flags, packing."""
import numpy as np
import pytest

from mappa_jax.coach.types import CoachResult
from mappa_jax.rl.config import UpdateConfig
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.workflows.records import Action
from mappa_jax.workflows.records import Trajectory
from tests.rl.random_trajectories import batch_config


def _action(agent, turn, p, r, finish="stop", score=5.0, status="scored"):
  return Action(agent=agent, turn=turn, prompt_ids=list(p), response_ids=list(r),
                rollout_logprobs=[-0.1 * (i + 1) for i in range(len(r))], finish_reason=finish,
                coach=CoachResult(status=status, score=score if status == "scored" else None))


def _trajs():
  return [
      Trajectory("t0", 0, "aime", actions=[
          _action("solver", 0, [1, 2, 3], [4, 5], score=8.0),
          _action("coder", 0, [9], [7, 7, 7]),
          _action("solver", 1, [1, 2, 3, 4, 5, 6], [8, 9, 10], finish="length", score=2.0)]),
      Trajectory("t0", 1, "aime", actions=[
          _action("solver", 0, [1, 2, 3], [11], status="invalid")]),
      Trajectory("t1", 0, "amc", outcome={"correct": 1.0}, actions=[
          _action("solver", 0, list(range(20, 30)), [31, 32, 33, 34], score=10.0)]),
  ]


def test_padded_batch_alignment_and_flags():
  batch, stats = build_train_batch(_trajs(), "solver",
                                   batch_config((8, 16), 3, reward_scale=0.1))
  assert batch.tokens.shape == (6, 16) and batch.num_actions == 6
  # Row 0: prompt [1,2,3] + response [4,5]; targets are tokens shifted left.
  np.testing.assert_array_equal(batch.tokens[0, :5], [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(batch.targets[0, :4], [2, 3, 4, 5])
  np.testing.assert_array_equal(batch.action_ids[0, :6], [-1, -1, 0, 0, -1, -1])
  np.testing.assert_allclose(batch.rollout_logprobs[0, 2:4], [-0.1, -0.2])
  # Every response target is scored exactly once and matches the response ids.
  for slot, resp in enumerate([[4, 5], [8, 9, 10], [11], [31, 32, 33, 34]]):
    np.testing.assert_array_equal(batch.targets[batch.action_ids == slot], resp)
  np.testing.assert_allclose(batch.rewards, [0.8, 0.2, 0.0, 1.0, 0, 0], rtol=1e-6)
  np.testing.assert_array_equal(batch.truncated[:4], [False, True, False, False])
  np.testing.assert_array_equal(batch.invalid[:4], [False, False, True, False])
  np.testing.assert_array_equal(batch.valid, [True] * 4 + [False] * 2)
  np.testing.assert_array_equal(batch.next_action, [1, -1, -1, -1, -1, -1])
  assert stats["strata"] == ["aime", "amc"]
  np.testing.assert_array_equal(batch.strata[:4], [0, 0, 0, 1])
  assert batch.groups[0] == batch.groups[2] != batch.groups[1]  # (task, turn) groups
  assert stats["invalid"] == 1 and stats["truncated"] == 1 and stats["left_truncated"] == 0
  assert stats["padded_rows"] == 2 and not batch.attention_mask[4:].any()
  np.testing.assert_array_equal(batch.positions[3], np.arange(16) * (batch.attention_mask[3]))


def test_left_truncation_keeps_the_generation_end_and_counts():
  trajs = [Trajectory("t", 0, "x", actions=[_action("a", 0, list(range(100, 120)), [1, 2, 3])])]
  batch, stats = build_train_batch(trajs, "a", batch_config((8,), 1))
  np.testing.assert_array_equal(batch.tokens[0], [115, 116, 117, 118, 119, 1, 2, 3])
  np.testing.assert_array_equal(batch.targets[batch.action_ids == 0], [1, 2, 3])
  assert stats["left_truncated"] == 1 and stats["prompt_tokens_dropped"] == 15
  assert stats["actions"] == 1


def test_packing_keeps_every_action():
  batch, stats = build_train_batch(_trajs(), "solver",
                                   batch_config((16,), 2, pack_sequences=True))
  assert batch.tokens.shape[0] == 4 and stats["padded_rows"] == 1  # 3 rows of 16 hold 32 tokens
  for slot, resp in enumerate([[4, 5], [8, 9, 10], [11], [31, 32, 33, 34]]):
    np.testing.assert_array_equal(batch.targets[batch.action_ids == slot], resp)
  # positions restart for every packed sample
  for r in range(2):
    for seg in set(batch.segment_ids[r]) - {0}:
      np.testing.assert_array_equal(batch.positions[r][batch.segment_ids[r] == seg],
                                    np.arange((batch.segment_ids[r] == seg).sum()))


def test_outcome_rewards_and_bad_input():
  batch, _ = build_train_batch(_trajs(), "solver", batch_config(
      (16,), 4, advantage_estimator="outcome", outcome_scale=1.0))
  np.testing.assert_array_equal(batch.invalid[:4], [True, True, True, False])
  assert batch.rewards[3] == 1.0
  # On the coach's scale (what the trainer uses), then reward_scale, like a coach score.
  scaled, _ = build_train_batch(_trajs(), "solver", batch_config(
      (16,), 4, advantage_estimator="outcome", outcome_scale=10.0, reward_scale=0.1))
  assert scaled.rewards[3] == pytest.approx(1.0 * 10.0 * 0.1)
  with pytest.raises(ValueError, match="advantage_estimator"):
    UpdateConfig(advantage_estimator="both")
  bad = [Trajectory("t", 0, "x", actions=[_action("a", 0, [1], [])])]
  with pytest.raises(ValueError, match="no response tokens"):
    build_train_batch(bad, "a")
