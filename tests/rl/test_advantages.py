"""update.advantages (the pre-loss part of the step) without a model: impls agree, scopes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mappa_jax.rl import objectives as obj
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl.update import UpdateConfig
from mappa_jax.rl.update import advantages
from tests.rl.random_trajectories import batch_config, random_trajectories


@pytest.fixture(scope="module")
def batch_and_logprobs():
  trajs = random_trajectories(0)
  rng = np.random.default_rng(1)
  batch, _ = build_train_batch(trajs, "a", batch_config((16,), 4))
  batch = jax.tree.map(jnp.asarray, batch)
  lp = jnp.asarray(rng.normal(size=batch.tokens.shape) * 0.2, jnp.float32)
  ref = jnp.asarray(rng.normal(size=batch.tokens.shape) * 0.2, jnp.float32)
  return batch, lp, ref


@pytest.mark.parametrize("overrides", [
    {}, {"whiten_scope": "per_agent_per_stratum"}, {"whiten_weighting": "action"},
    {"return_across_actions": True, "gamma": 0.95}, {"advantage_estimator": "grpo"},
    {"advantage_estimator": "reinforce_pp_baseline"}, {"whiten_truncated": False},
    {"kl_estimator": "k3"}])
def test_impls_agree(batch_and_logprobs, overrides):
  batch, lp, ref = batch_and_logprobs
  outs = {}
  for impl in ("reference", "xla", "pallas"):
    cfg = UpdateConfig(advantage_impl=impl, **overrides)
    outs[impl] = advantages(lp, ref, batch, cfg)["advantages"]
  np.testing.assert_allclose(outs["xla"], outs["reference"], atol=1e-4)
  np.testing.assert_allclose(outs["pallas"], outs["reference"], atol=1e-4)
  resp = np.asarray(batch.action_ids) >= 0
  assert np.all(np.asarray(outs["xla"])[~resp] == 0)


def test_default_whitening_is_token_weighted_over_counted_actions(batch_and_logprobs):
  batch, lp, ref = batch_and_logprobs
  out = advantages(lp, ref, batch, UpdateConfig())
  w = np.asarray(out["whiten_weights"])
  adv = np.asarray(out["advantages"])
  # Counted = valid and not invalid; the truncated action still counts (reference).
  assert w[np.asarray(batch.action_ids) == int(np.argmax(np.asarray(batch.truncated)))].min() == 1
  np.testing.assert_allclose((w * adv).sum() / w.sum(), 0.0, atol=1e-5)
  np.testing.assert_allclose((w * adv ** 2).sum() / w.sum(), 1.0, atol=1e-4)


def test_pooled_scope_uses_the_given_statistics(batch_and_logprobs):
  batch, lp, ref = batch_and_logprobs
  cfg = UpdateConfig()
  own = advantages(lp, ref, batch, cfg)
  pooled = obj.merge_stats(own["stats"], own["stats"])  # two identical agents
  got = advantages(lp, ref, batch, dataclasses.replace(cfg, whiten_scope="pooled"), pooled)
  np.testing.assert_allclose(got["advantages"], own["advantages"], atol=1e-5)
  with pytest.raises(ValueError, match="pooled_stats"):
    advantages(lp, ref, batch, dataclasses.replace(cfg, whiten_scope="pooled"))
