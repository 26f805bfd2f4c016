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
from mappa_jax.rl.experience import build_train_batch
from mappa_jax.rl.update import UpdateConfig
from mappa_jax.rl.update import init_train_state
from mappa_jax.rl.update import make_update_step
from mappa_jax.rl import update as upd
from mappa_jax.workflows.records import Action
from mappa_jax.workflows.records import Trajectory
from tests.rl.random_trajectories import batch_config

pytestmark = pytest.mark.slow

GOOD, BAD = 7, 9
PROMPT = [1, 2, 3]
CFG = UpdateConfig(learning_rate=1e-2, warmup_ratio=0.0, max_steps=100,
                   samples_per_optimizer_step=4, micro_batch_size=1, logprob_chunk=16,
                   shuffle=False)
# Layout comparisons (sharded, accumulated, packed, padded) sum the same terms in another order,
# so their gradients agree only to fp32 rounding. Adam's step is lr * m / (sqrt(v) + eps): with
# the default eps = 1e-8 an entry whose gradient is ~0 flips between about +lr and -lr on that
# rounding noise, so params can differ by up to 2 * lr (the 1.03e-5 > 1e-5 flake at lr 1e-2).
# With eps = 1 the step is a smooth function of the gradient (|d step / d g| <= lr): params then
# differ by about lr times the gradients' rounding error, and comparing the update (params -
# start) compares the gradient direction itself. lr = 1 makes updates O(0.1), far above the
# fp32 resolution of the params (~1e-7), so a relative tolerance of 1e-3 of the largest update
# has >= 100x margin over rounding while a real bug (a missing psum, a dropped micro-batch, a
# leaking mask) changes the update by tens of percent.
LINEAR = dataclasses.replace(CFG, learning_rate=1.0, eps=1.0)
UPDATE_RTOL = 1e-3


def _host(tree):
  """A host copy (not a view: the device buffers may be donated to the next step)."""
  return jax.tree.map(lambda x: np.array(x, dtype=np.float64), tree)


def update_error(got, want, start) -> float:
  """max |(got - start) - (want - start)| over all params / max |want - start|."""
  got, want, start = _host(got), _host(want), _host(start)
  scale = max(float(np.max(np.abs(w - s))) for w, s in
              zip(jax.tree.leaves(want), jax.tree.leaves(start)))
  assert scale > 1e-3, f"no real update to compare (largest param change {scale})"
  err = max(float(np.max(np.abs((g - s) - (w - s)))) for g, w, s in
            zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(start)))
  return err / scale


def assert_same_update(got, want, start, rtol: float = UPDATE_RTOL) -> None:
  err = update_error(got, want, start)
  assert err < rtol, f"updates differ by {err:.2e} of the largest update (tolerance {rtol})"


def assert_same_metrics(got: dict, want: dict, keys=("loss", "grad_norm")) -> None:
  """Loss and pre-clipping gradient norm: computed before the optimizer, fp32-rounding close."""
  for k in keys:
    assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-4, abs=1e-6), k


def _model():
  mc = ModelConfig.preset("tiny-qwen3", vocab_size=32, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16)
  return Decoder(mc, rngs=nnx.Rngs(0))


def _batch(scored: int = 8):
  """8 one-token actions: GOOD gets reward 1, BAD 0; one BAD action truncated. Only the first
  `scored` actions get their score (the rest 0): a negative control with the same shapes."""
  trajs = []
  for i in range(8):
    tok = GOOD if i % 2 == 0 else BAD
    score = 10.0 if tok == GOOD and i < scored else 0.0
    action = Action(agent="a", turn=0, prompt_ids=PROMPT + [4] * (i % 3),
                    response_ids=[tok, 5], rollout_logprobs=[-1.0, -1.0],
                    finish_reason="length" if i == 7 else "stop",
                    coach=CoachResult(status="scored", score=score))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "x", actions=[action]))
  batch, _ = build_train_batch(trajs, "a", batch_config((8,), 4, reward_scale=0.1))
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


@pytest.fixture(scope="module")
def linear_run():
  """One single-device step (micro-batch 1) with the smooth-Adam LINEAR config."""
  graphdef, state, ref = _fresh(LINEAR)
  start = _host(state.params)
  step = make_update_step(graphdef, LINEAR)
  new_state, metrics = step(state, ref, _batch(), jax.random.key(0))
  return dict(start=start, params=_host(new_state.params), step=step, ref=ref,
              metrics={k: float(v) for k, v in metrics.items()})


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


def test_gradient_accumulation_equals_one_big_micro_batch(linear_run):
  cfg = dataclasses.replace(LINEAR, micro_batch_size=4)
  graphdef, state, ref = _fresh(cfg)
  state, metrics = make_update_step(graphdef, cfg)(state, ref, _batch(), jax.random.key(0))
  assert_same_update(state.params, linear_run["params"], linear_run["start"])
  assert_same_metrics(metrics, linear_run["metrics"])


def test_update_comparison_catches_a_partial_gradient(linear_run):
  """Negative control: losing part of the batch's signal (what a missing psum over the data
  axis does: each shard sees only its rows) moves the update far beyond UPDATE_RTOL."""
  _, state, _ = _fresh(LINEAR)
  state, _ = linear_run["step"](state, linear_run["ref"], _batch(scored=4), jax.random.key(0))
  assert update_error(state.params, linear_run["params"], linear_run["start"]) > 30 * UPDATE_RTOL


def test_eight_fake_devices_equal_single_device(linear_run):
  assert jax.device_count() == 8
  mesh = shd.make_mesh(shd.MeshConfig(data=4, fsdp=2, tensor=1))
  model = shd.shard_model(_model(), mesh)
  graphdef, state, ref = _fresh(LINEAR, model=model, mesh=mesh)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state.params))
  step = make_update_step(graphdef, LINEAR, mesh=mesh)
  state, metrics = step(state, ref, _batch(), jax.random.key(0))
  assert_same_update(state.params, linear_run["params"], linear_run["start"])
  assert_same_metrics(metrics, linear_run["metrics"])


def test_lr_schedule_warmup_cosine_floor_and_clamp():
  cfg = UpdateConfig(learning_rate=1e-6, max_steps=512)
  lr = upd.lr_schedule(cfg)
  assert float(lr(0)) == 0.0
  assert float(lr(16)) == pytest.approx(1e-6)       # warm-up = ceil(0.03 * 512) = 16 steps
  assert float(lr(512)) == pytest.approx(1e-7)
  assert float(lr(2000)) == pytest.approx(1e-7)     # clamped past the horizon (BUG fixed)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="(?s)UpdateConfig.*whiten_scope"):
    UpdateConfig(whiten_scope="global")
  with pytest.raises(ValueError, match="micro_batch_size"):
    UpdateConfig(samples_per_optimizer_step=16, micro_batch_size=3)


def test_every_option_path_compiles_and_trains(single_device_run):
  """Non-default choices together (KL as a k3 loss term, per-stratum action-weighted whitening,
  group baseline, continued returns, token-mean loss, dual clip, Pallas kernels): finite metrics,
  params move, and the first step's PPO ratio is exactly 1 (old logprobs = current params)."""
  cfg = dataclasses.replace(
      CFG, kl_placement="loss", kl_estimator="k3", whiten_scope="per_agent_per_stratum",
      whiten_weighting="action", advantage_estimator="reinforce_pp_baseline", return_across_actions=True,
      loss_agg="token_mean", dual_clip=3.0, advantage_impl="pallas",
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
  shuffled) gives the same update (UPDATE_RTOL of its size) and metrics. The packed variant is picked
  from segment_ids; without its segment mask the packed rows' logprobs would differ."""
  trajs = []
  for i in range(8):
    tok = GOOD if i % 2 == 0 else BAD
    action = Action(agent="a", turn=0, prompt_ids=PROMPT + [4] * (i % 3),
                    response_ids=[tok, 5, 6][:2 + i % 2], rollout_logprobs=[],
                    finish_reason="length" if i == 7 else "stop",
                    coach=CoachResult(status="scored", score=float(i)))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "x", actions=[action]))
  # The smooth-Adam LINEAR config (see its comment): the comparison checks the gradients.
  cfg = dataclasses.replace(LINEAR, samples_per_optimizer_step=8, micro_batch_size=2,
                            shuffle=True)
  results = {}
  for pack, bucket in ((False, 8), (True, 16)):
    batch, stats = build_train_batch(trajs, "a", batch_config(
        (bucket,), 8, reward_scale=0.1, pack_sequences=pack))
    batch = jax.tree.map(jnp.asarray, batch)
    assert upd._is_packed(batch) == pack
    graphdef, state, ref = _fresh(cfg)
    start = _host(state.params)
    state, metrics = make_update_step(graphdef, cfg)(state, ref, batch, jax.random.key(1))
    results[pack] = (batch, stats, state, {k: float(v) for k, v in metrics.items()})
  (padded, _, s_pad, m_pad), (packed, st_packed, s_packed, m_packed) = results[False], results[True]
  assert st_packed["padded_rows"] == 4 and int(np.max(packed.segment_ids)) == 2
  assert m_packed["optimizer_steps"] == 1.0 and m_packed["num_samples"] == 8.0
  for k in m_pad:
    assert m_packed[k] == pytest.approx(m_pad[k], rel=1e-4, abs=1e-6), k
  # Both runs start from the same seed-0 init (`start`); update_error also asserts a real step.
  assert_same_update(s_packed.params, s_pad.params, start)

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
  # LINEAR: a rounding difference cannot flip an Adam step (see its comment), while an Adam
  # tick on the empty step (momentum applied again) would still change the update by O(1).
  cfg = dataclasses.replace(LINEAR, shuffle=True)
  results = []
  for buckets in ((), (8,)):
    batch, _ = build_train_batch(trajs, "a", batch_config(
        (8,), 4, row_buckets=buckets, reward_scale=0.1))
    graphdef, state, ref = _fresh(cfg)
    start = _host(state.params)
    state, metrics = make_update_step(graphdef, cfg)(state, ref, jax.tree.map(jnp.asarray, batch),
                                                     jax.random.key(5))
    results.append((batch.tokens.shape[0], state, {k: float(v) for k, v in metrics.items()}))
  (rows4, s4, m4), (rows8, s8, m8) = results
  assert (rows4, rows8) == (4, 8) and m8["optimizer_steps"] == 1.0 and int(s8.step) == 1
  for k in m4:
    assert m8[k] == pytest.approx(m4[k], rel=1e-5, abs=1e-7), k
  assert_same_update(s8.params, s4.params, start)
