"""The jitted update step end to end on a tiny Decoder (compiled steps shared per module).

- micro-batch gradient accumulation == one micro-batch of the whole optimizer step;
- 8 fake devices (data=4 x fsdp=2) == single device;
- learning: rewarding a target token raises its probability; KL to the reference grows from 0.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mappa_jax import sharding as shd
from mappa_jax.coach.types import CoachResult
from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.rl.experience import ExperienceConfig
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl.update import UpdateConfig
from mappa_jax.rl.update import init_train_state
from mappa_jax.rl.update import make_update_step
from mappa_jax.rl import update as upd
from mappa_jax.workflows.records import Action
from mappa_jax.workflows.records import Trajectory

pytestmark = pytest.mark.slow

GOOD, BAD = 7, 9
PROMPT = [1, 2, 3]
CFG = UpdateConfig(learning_rate=1e-2, warmup_ratio=0.0, max_steps=100,
                   samples_per_optimizer_step=4, micro_batch_size=1, logprob_chunk=16,
                   shuffle=False)


def _model():
  mc = ModelConfig.preset("tiny-qwen3", vocab_size=32, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16)
  return Decoder(mc, rngs=nnx.Rngs(0))


def _batch():
  """8 one-token actions: GOOD gets reward 1, BAD 0; one BAD action truncated."""
  trajs = []
  for i in range(8):
    tok = GOOD if i % 2 == 0 else BAD
    action = Action(agent="a", turn=0, prompt_ids=PROMPT + [4] * (i % 3),
                    response_ids=[tok, 5], rollout_logprobs=[-1.0, -1.0],
                    finish_reason="length" if i == 7 else "stop",
                    coach=CoachResult(status="scored", score=10.0 if tok == GOOD else 0.0))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "x", actions=[action]))
  batch, _ = build_train_batch(trajs, "a", ExperienceConfig(token_buckets=(8,),
                                                            rows_multiple=4, reward_scale=0.1))
  return jax.tree.map(jnp.asarray, batch)


def _fresh(cfg, model=None, mesh=None):
  model = model or _model()
  graphdef, state = init_train_state(model, cfg, mesh=mesh)
  state = jax.tree.map(jnp.copy, state)  # the model keeps its own arrays (state is donated)
  ref = jax.tree.map(jnp.copy, nnx.split(model, nnx.Param)[1])
  return graphdef, state, ref


@pytest.fixture(scope="module")
def single_device_run():
  graphdef, state, ref = _fresh(CFG)
  step = make_update_step(graphdef, CFG)
  batch = _batch()
  history = []
  for i in range(4):
    state, metrics = step(state, ref, batch, jax.random.key(i))
    history.append({k: float(v) for k, v in metrics.items()})
    if i == 0:
      first = jax.tree.map(np.asarray, state.params)
  return dict(graphdef=graphdef, ref=ref, batch=batch, first=first, history=history,
              state=state)


def _good_logprob(graphdef, params, batch):
  lp, _ = upd._sequence_logprobs(graphdef, params, batch.tokens[:1], batch.positions[:1],
                                 batch.attention_mask[:1], batch.targets[:1], CFG)
  return float(lp[0, len(PROMPT) - 1])


def test_learning_raises_rewarded_token_and_kl_grows(single_device_run):
  run = single_device_run
  h = run["history"]
  assert h[0]["kl"] == 0.0 and h[0]["kl_ref_k1"] == 0.0  # old policy == reference at first
  # k3 >= 0 on any token; the sampled-token k1 can be negative on these fixed responses.
  assert h[0]["kl_ref_k3"] == 0.0
  assert 0.0 < h[1]["kl_ref_k3"] < h[2]["kl_ref_k3"] < h[3]["kl_ref_k3"]
  assert all(m["optimizer_steps"] == 2.0 for m in h)
  assert h[0]["num_samples"] == 8.0 and h[0]["reward_mean"] == pytest.approx(0.5)
  before = _good_logprob(run["graphdef"], run["ref"], run["batch"])
  after = _good_logprob(run["graphdef"], run["state"].params, run["batch"])
  assert after > before + 0.1, (before, after)


def test_gradient_accumulation_equals_one_big_micro_batch(single_device_run):
  cfg = dataclasses.replace(CFG, micro_batch_size=4)
  graphdef, state, ref = _fresh(cfg)
  step = make_update_step(graphdef, cfg)
  state, _ = step(state, ref, single_device_run["batch"], jax.random.key(0))
  # Adam turns every gradient into a ~lr-sized step, so compare at 0.1% of lr (1e-2).
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_device_run["first"])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_eight_fake_devices_equal_single_device(single_device_run):
  assert jax.device_count() == 8
  mesh = shd.make_mesh(shd.MeshConfig(data=4, fsdp=2, tensor=1))
  model = shd.shard_model(_model(), mesh)
  graphdef, state, ref = _fresh(CFG, model=model, mesh=mesh)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state.params))
  step = make_update_step(graphdef, CFG, mesh=mesh)
  state, metrics = step(state, ref, single_device_run["batch"], jax.random.key(0))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_device_run["first"])):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)
  assert float(metrics["loss"]) == pytest.approx(single_device_run["history"][0]["loss"],
                                                 rel=1e-4, abs=1e-6)


def test_lr_schedule_warmup_cosine_floor_and_clamp():
  cfg = UpdateConfig(learning_rate=1e-6, max_steps=512)
  lr = upd.lr_schedule(cfg)
  assert float(lr(0)) == 0.0
  assert float(lr(16)) == pytest.approx(1e-6)       # warm-up = ceil(0.03 * 512) = 16 steps
  assert float(lr(512)) == pytest.approx(1e-7)
  assert float(lr(2000)) == pytest.approx(1e-7)     # clamped past the horizon (BUG fixed)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="rl.whiten_scope"):
    UpdateConfig(whiten_scope="global")
  with pytest.raises(ValueError, match="micro_batch_size"):
    UpdateConfig(samples_per_optimizer_step=16, micro_batch_size=3)


def test_every_option_path_compiles_and_trains(single_device_run):
  """Non-default choices together (KL as a k3 loss term, per-stratum action-weighted whitening,
  group baseline, continued returns, token-mean loss, dual clip, Pallas kernels): finite metrics,
  params move, and the first step's PPO ratio is exactly 1 (old logprobs = current params)."""
  cfg = dataclasses.replace(
      CFG, kl_placement="loss", kl_estimator="k3", whiten_scope="per_agent_per_stratum",
      whiten_weighting="action", baseline="reinforce_baseline", continue_returns=True,
      loss_aggregation="token_mean", dual_clip=3.0, advantage_impl="pallas",
      logprob_impl="pallas", samples_per_optimizer_step=8, micro_batch_size=2, shuffle=True)
  graphdef, state, ref = _fresh(cfg)
  before = jax.tree.map(np.asarray, state.params)
  step = make_update_step(graphdef, cfg)
  state, metrics = step(state, ref, single_device_run["batch"], jax.random.key(3))
  metrics = {k: float(v) for k, v in metrics.items()}
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics["optimizer_steps"] == 1.0 and metrics["ratio_mean"] == pytest.approx(1.0)
  assert metrics["kl"] == 0.0 and metrics["grad_norm"] > 0
  moved = max(float(np.max(np.abs(np.asarray(a) - b)))
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)))
  assert moved > 1e-4


def test_packed_batches_are_refused_until_attention_is_segment_aware(single_device_run):
  batch = single_device_run["batch"]
  packed = batch.replace(segment_ids=batch.segment_ids.at[0, 3].set(2))
  step = make_update_step(single_device_run["graphdef"], CFG)
  with pytest.raises(ValueError, match="pack=False"):
    step(None, None, packed, jax.random.key(0))
