"""Per-stratum mitigations against a biased coach: a golden test of
rl.whiten_scope='per_agent_per_stratum' and per-stratum score re-centring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mappa_jax.coach.types import CoachResult
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl.stratum import recentre_batch, recentre_per_stratum
from mappa_jax.rl.update import UpdateConfig, advantages
from mappa_jax.workflows.records import Action, Trajectory

try:  # the batch layout before the typed config sections (issue 16) ...
  from mappa_jax.rl.experience import ExperienceConfig

  def layout():
    return ExperienceConfig(token_buckets=(8,), rows_multiple=8)
except ImportError:  # ... and after, where UpdateConfig holds it
  def layout():
    return UpdateConfig(token_budget_buckets=(8,), samples_per_optimizer_step=8)

# (task type, coach score, response length): 7 actions of one agent over 3 strata.
ACTIONS = [("add_sub", 6.0, 3), ("add_sub", 9.0, 1), ("add_sub", 3.0, 2), ("mixed", 2.0, 4),
           ("mixed", 8.0, 2), ("mul_div", 5.0, 2), ("mul_div", 7.0, 3)]


def batch_of(actions, bias=None):
  trajs = []
  for i, (stratum, score, n) in enumerate(actions):
    score = score + (bias or {}).get(stratum, 0.0)
    trajs.append(Trajectory(f"t{i}", 0, stratum, actions=[Action(
        agent="a", turn=0, prompt_ids=[1, 2], response_ids=list(range(3, 3 + n)),
        rollout_logprobs=[-1.0] * n, finish_reason="stop",
        coach=CoachResult(status="scored", score=score))]))
  batch, stats = build_train_batch(trajs, "a", layout())
  return batch, stats


def adv(batch, **cfg):
  # Old = reference logprobs: zero KL, so every token's return is its action's reward.
  lp = jnp.zeros(batch.tokens.shape, jnp.float32)
  jb = jax.tree.map(jnp.asarray, batch)
  out = advantages(lp, lp, jb, UpdateConfig(**cfg))
  return np.asarray(out["advantages"]), np.asarray(jb.action_ids)


def per_action(advantage, ids, n_actions):
  """Each action's (constant) token advantage."""
  out = []
  for a in range(n_actions):
    values = advantage[ids == a]
    assert np.allclose(values, values[0], atol=1e-6)
    out.append(float(values[0]))
  return np.array(out)


def golden(scores, strata, lengths):
  """Token-weighted whitening per stratum, by hand: (r - mean_s) / std_s (population std)."""
  scores, lengths = np.array(scores), np.array(lengths, float)
  out = np.zeros(len(scores))
  for s in set(strata):
    m = np.array([x == s for x in strata])
    mean = np.sum(lengths[m] * scores[m]) / lengths[m].sum()
    var = np.sum(lengths[m] * (scores[m] - mean) ** 2) / lengths[m].sum()
    out[m] = (scores[m] - mean) / np.sqrt(max(var, 1e-8))
  return out


def test_per_agent_per_stratum_whitening_is_token_weighted_per_stratum():
  batch, stats = batch_of(ACTIONS)
  assert stats["strata"] == ["add_sub", "mixed", "mul_div"]
  strata, scores, lengths = zip(*ACTIONS)
  # (The xla, pallas and reference implementations agree: tests/rl/test_advantages.py.)
  got = per_action(*adv(batch, whiten_scope="per_agent_per_stratum"), len(ACTIONS))
  np.testing.assert_allclose(got, golden(scores, strata, lengths), atol=1e-5)
  # By hand: add_sub has rewards 6, 9, 3 over 3, 1, 2 tokens: mean 33 / 6 = 5.5, population
  # variance (3 * 0.25 + 12.25 + 2 * 6.25) / 6 = 4.25.
  assert got[0] == pytest.approx((6 - 5.5) / np.sqrt(4.25), abs=1e-5)
  # per_agent whitens the same rewards over the whole batch: a different answer.
  whole = per_action(*adv(batch, whiten_scope="per_agent"), len(ACTIONS))
  np.testing.assert_allclose(whole, golden(scores, ["all"] * len(ACTIONS), lengths), atol=1e-5)
  assert not np.allclose(whole, got, atol=1e-2)


def test_a_biased_stratum_changes_per_agent_advantages_but_not_per_stratum_ones():
  clean, _ = batch_of(ACTIONS)
  biased, _ = batch_of(ACTIONS, bias={"mixed": 1.5})
  n = len(ACTIONS)
  for scope, invariant in (("per_agent_per_stratum", True), ("per_agent", False)):
    a = per_action(*adv(clean, whiten_scope=scope), n)
    b = per_action(*adv(biased, whiten_scope=scope), n)
    assert np.allclose(a, b, atol=1e-5) == invariant, scope
  # Re-centring per stratum (batch means) then whitening per agent: invariant too.
  a = per_action(*adv(recentre_batch(clean), whiten_scope="per_agent"), n)
  b = per_action(*adv(recentre_batch(biased), whiten_scope="per_agent"), n)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_recentre_per_stratum_by_hand():
  rewards = [6.0, 9.0, 3.0, 2.0, 8.0, 0.0]
  strata = ["x", "x", "x", "y", "y", "y"]
  counted = [True, True, True, True, True, False]
  got = recentre_per_stratum(rewards, strata, counted)
  # x mean 6, y mean (counted) 5, overall counted mean 28 / 5 = 5.6; uncounted unchanged.
  np.testing.assert_allclose(got, [5.6, 8.6, 2.6, 2.6, 8.6, 0.0], atol=1e-6)
  assert got.dtype == np.float32
  given = recentre_per_stratum(rewards, strata, counted, means={"x": 4.0}, target=0.0)
  np.testing.assert_allclose(given, [2.0, 5.0, -1.0, -3.0, 3.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(recentre_per_stratum(rewards, strata, [False] * 6), rewards)
  with pytest.raises(ValueError, match="one entry per action"):
    recentre_per_stratum(rewards, strata[:2], counted)


def test_recentre_batch_keeps_padding_and_takes_named_means():
  batch, stats = batch_of(ACTIONS)
  out = recentre_batch(batch, strata_names=stats["strata"], means={"mixed": 0.0}, target=1.0)
  r = np.asarray(out.rewards)
  assert np.all(r[len(ACTIONS):] == 0.0)  # padding slots untouched
  np.testing.assert_allclose(r[3:5], [3.0, 9.0])  # mixed: 2, 8 - 0 + 1
  np.testing.assert_allclose(r[:3], [1.0 + 0.0, 4.0, -2.0])  # add_sub: batch mean 6
  assert out.tokens is batch.tokens
  with pytest.raises(ValueError, match="strata_names"):
    recentre_batch(batch, means={"mixed": 0.0})
