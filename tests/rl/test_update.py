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


def test_packed_batch_updates_like_the_padded_layout(single_device_run):
  """The same 8 actions one per row (8 x 8) or packed two per row (4 real rows of 16, padded to
  8 rows): one jitted step (a single optimizer step over the whole batch, 2-row micro-batches,
  shuffled) gives the same params (1e-5 at lr 1e-2) and metrics. The packed variant is picked
  from segment_ids; without its segment mask the packed rows' logprobs would differ."""
  trajs = []
  for i in range(8):
    tok = GOOD if i % 2 == 0 else BAD
    action = Action(agent="a", turn=0, prompt_ids=PROMPT + [4] * (i % 3),
                    response_ids=[tok, 5, 6][:2 + i % 2], rollout_logprobs=[],
                    finish_reason="length" if i == 7 else "stop",
                    coach=CoachResult(status="scored", score=float(i)))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "x", actions=[action]))
  # Adam's first step is lr * g / (|g| + eps): with eps = 1e-8 a gradient entry near zero turns
  # fp32 rounding noise into an O(lr) difference (the padded layout at T = 8 vs T = 16 already
  # differs by 3e-5). eps = 1e-4 bounds that by (lr / eps) * noise while most entries still
  # move by ~lr, so 1e-5 checks the gradients to ~1e-7.
  cfg = dataclasses.replace(CFG, samples_per_optimizer_step=8, micro_batch_size=2, shuffle=True,
                            adam_eps=1e-4)
  results = {}
  for pack, bucket in ((False, 8), (True, 16)):
    batch, stats = build_train_batch(trajs, "a", ExperienceConfig(
        token_buckets=(bucket,), rows_multiple=8, reward_scale=0.1, pack=pack))
    batch = jax.tree.map(jnp.asarray, batch)
    assert upd._is_packed(batch) == pack
    graphdef, state, ref = _fresh(cfg)
    state, metrics = make_update_step(graphdef, cfg)(state, ref, batch, jax.random.key(1))
    results[pack] = (batch, stats, state, {k: float(v) for k, v in metrics.items()})
  (padded, _, s_pad, m_pad), (packed, st_packed, s_packed, m_packed) = results[False], results[True]
  assert st_packed["padded_rows"] == 4 and int(np.max(packed.segment_ids)) == 2
  assert m_packed["optimizer_steps"] == 1.0 and m_packed["num_samples"] == 8.0
  for k in m_pad:
    assert m_packed[k] == pytest.approx(m_pad[k], rel=1e-4, abs=1e-6), k
  moved = 0.0
  for a, b, p0 in zip(jax.tree.leaves(s_packed.params), jax.tree.leaves(s_pad.params),
                      jax.tree.leaves(single_device_run["ref"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    moved = max(moved, float(np.max(np.abs(np.asarray(b) - np.asarray(p0)))))
  assert moved > 5e-3  # an Adam step of ~lr really happened

  # Negative control: the second sample of a packed row scored without the segment mask.
  graphdef, ref = single_device_run["graphdef"], single_device_run["ref"]
  args = (packed.tokens[:1], packed.positions[:1], packed.attention_mask[:1], packed.targets[:1])
  seg_lp, _ = upd._sequence_logprobs(graphdef, ref, *args, CFG,
                                     segment_ids=packed.segment_ids[:1])
  leak_lp, _ = upd._sequence_logprobs(graphdef, ref, *args, CFG)
  second = np.asarray((packed.segment_ids[0] == 2) & (packed.action_ids[0] >= 0))
  assert second.any()
  assert np.abs(np.asarray(seg_lp - leak_lp)[0][second]).max() > 1e-3


def test_bf16_params_train_through_an_fp32_master_copy():
  """Paper preset: bf16 weights, lr 1e-6. An Adam step (~lr per weight) is below half a bf16
  ulp, so updating bf16 params in place changes nothing. The float32 master copy in the
  optimizer state must move exactly like a float32 run, and the params are its rounding."""
  lr = 1e-6
  cfg = dataclasses.replace(CFG, learning_rate=lr)
  mc = ModelConfig.preset("tiny-qwen3", vocab_size=32, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16, param_dtype="bfloat16")
  low = Decoder(mc, rngs=nnx.Rngs(0))
  high = _model()
  nnx.update(high, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(low, nnx.Param)))
  batch = _batch()
  start = jax.tree.map(lambda x: np.asarray(x, np.float32), nnx.state(high, nnx.Param))

  graphdef, state, ref = _fresh(cfg, model=low)
  assert isinstance(state.opt_state, upd.MasterWeightsState)
  state, _ = make_update_step(graphdef, cfg)(state, ref, batch, jax.random.key(0))
  g32, s32, r32 = _fresh(cfg, model=high)
  assert not isinstance(s32.opt_state, upd.MasterWeightsState)  # float32: no extra copy
  s32, _ = make_update_step(g32, cfg)(s32, r32, batch, jax.random.key(0))

  moved = 0
  for m, p, want, p0 in zip(jax.tree.leaves(state.opt_state.master),
                            jax.tree.leaves(state.params), jax.tree.leaves(s32.params),
                            jax.tree.leaves(start)):
    assert m.dtype == jnp.float32 and p.dtype == jnp.bfloat16
    # Equal up to the bf16 rounding of the gradients (which can zero or flip a tiny one).
    diff = np.abs(np.asarray(m) - np.asarray(want))
    assert np.mean(diff <= 0.1 * lr) > 0.99 and diff.max() <= 2.1 * lr, diff.max()
    np.testing.assert_array_equal(np.asarray(p), np.asarray(m.astype(jnp.bfloat16)))
    moved += int(np.sum(np.abs(np.asarray(m) - p0) > 0.5 * lr))
  assert moved > 100


def test_max_grad_norm_zero_means_no_clipping_and_temperature_must_be_positive():
  params = {"w": jnp.ones(3)}
  tx = upd.make_optimizer(UpdateConfig(max_grad_norm=0.0, warmup_ratio=0.0, learning_rate=0.1))
  updates, _ = tx.update({"w": jnp.full(3, 5.0)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-4)  # Adam's first step: -lr * sign
  with pytest.raises(ValueError, match="temperature"):
    UpdateConfig(temperature=0.0)


def test_padding_rows_change_nothing():
  """The same 4 actions in 4 rows or in 8 rows (4 padding rows, so a second, empty optimizer
  step): identical params and metrics, the empty step is skipped (no Adam/schedule tick)."""
  trajs = []
  for i in range(4):
    action = Action(agent="a", turn=0, prompt_ids=PROMPT + [4] * (i % 3),
                    response_ids=[GOOD if i % 2 == 0 else BAD, 5], rollout_logprobs=[],
                    finish_reason="length" if i == 3 else "stop",
                    coach=CoachResult(status="scored", score=float(3 * i)))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "x", actions=[action]))
  cfg = dataclasses.replace(CFG, shuffle=True)
  results = []
  for buckets in ((), (8,)):
    batch, _ = build_train_batch(trajs, "a", ExperienceConfig(
        token_buckets=(8,), rows_multiple=4, batch_buckets=buckets, reward_scale=0.1))
    graphdef, state, ref = _fresh(cfg)
    state, metrics = make_update_step(graphdef, cfg)(state, ref, jax.tree.map(jnp.asarray, batch),
                                                     jax.random.key(5))
    results.append((batch.tokens.shape[0], state, {k: float(v) for k, v in metrics.items()}))
  (rows4, s4, m4), (rows8, s8, m8) = results
  assert (rows4, rows8) == (4, 8) and m8["optimizer_steps"] == 1.0 and int(s8.step) == 1
  for k in m4:
    assert m8[k] == pytest.approx(m4[k], rel=1e-5, abs=1e-7), k
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
