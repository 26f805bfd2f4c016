"""The jitted per-agent REINFORCE++ update step.

One call = one agent's global step (mappa-reference.md §3): old and reference logprobs (chunked,
no [B, T, V] logits), KL, token rewards, return-to-go, whitening over the WHOLE agent batch, then
`B / samples_per_optimizer_step` optimizer steps (outer lax.scan), each accumulating gradients
over micro-batches of `micro_batch_size` rows (inner lax.scan) with a normaliser fixed for the
whole optimizer step, so accumulation is exact.

  state, metrics = step_fn(state, ref_params, batch, rng)

`state` (TrainState) is donated. With a mesh, rows are sharded over (data, fsdp) and params keep
the shardings they were placed with (mappa_jax.sharding), so the whitening statistics are global
because they are computed inside the jitted step over the global batch. With bf16 params the
optimizer state holds a float32 master copy (MasterWeightsState, train.fp32_master_weights):
an Adam step of ~lr = 1e-6 is below bf16 precision and would be lost.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.struct
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from mappa_jax.rl.logprobs import token_logprobs
from mappa_jax.rl import objectives as obj
from mappa_jax.rl.config import UpdateConfig
from mappa_jax.rl.experience import TrainBatch

Array = jax.Array


def lr_schedule(cfg: UpdateConfig) -> optax.Schedule:
  """Linear warm-up over ceil(warmup_ratio * max_steps) steps, cosine to min_lr_ratio * lr at
  max_steps, then held there (the reference's transformers schedule climbs back up past the
  horizon: BUG §10.10, not reproduced)."""
  warmup = math.ceil(cfg.warmup_ratio * cfg.max_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(cfg.max_steps, warmup + 1), end_value=cfg.min_lr_ratio * cfg.learning_rate)


def make_optimizer(cfg: UpdateConfig) -> optax.GradientTransformation:
  # max_grad_norm = 0 means no clipping (optax would scale every gradient to norm 0).
  clip = (optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0
          else optax.identity())
  return optax.chain(
      clip,
      optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay))


class MasterWeightsState(NamedTuple):
  """Optimizer state for low-precision params: a float32 master copy of the params and the
  inner optimizer's state (built on the master). The params in TrainState are the master
  rounded to their own dtype after every step (what the forward pass and publishing use)."""
  master: Any
  inner: Any


def _uses_master(params, cfg: UpdateConfig) -> bool:
  return cfg.fp32_master_weights and any(
      jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float32
      for x in jax.tree.leaves(params))


def _to_f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def _apply_optimizer(tx, grads, opt_state, params):
  """-> (new params, new opt_state); float32 master update when opt_state carries one."""
  if isinstance(opt_state, MasterWeightsState):
    updates, inner = tx.update(_to_f32(grads), opt_state.inner, opt_state.master)
    master = optax.apply_updates(opt_state.master, updates)
    new_params = jax.tree.map(lambda m, p: m.astype(p.dtype), master, params)
    return new_params, MasterWeightsState(master=master, inner=inner)
  updates, new_opt = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), new_opt


@flax.struct.dataclass
class TrainState:
  """One agent's trainable state. params: nnx.State of nnx.Param; step: optimizer steps taken."""
  params: Any
  opt_state: Any
  step: Array


def init_train_state(model: nnx.Module, cfg: UpdateConfig, mesh=None):
  """-> (graphdef, TrainState). With a mesh the params must already be placed on it
  (mappa_jax.sharding.shard_model); optimizer moments inherit their shardings."""
  graphdef, params = nnx.split(model, nnx.Param)
  tx = make_optimizer(cfg)
  step = jnp.zeros((), jnp.int32)
  master = _uses_master(params, cfg)

  def init(p):
    if master:
      return MasterWeightsState(master=_to_f32(p), inner=tx.init(_to_f32(p)))
    return tx.init(p)

  if mesh is None:
    opt_state = jax.jit(init)(params)
  else:
    # Moments (and the master copy) take their parameter's sharding; counters are replicated.
    rep = NamedSharding(mesh, P())
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, jax.eval_shape(_to_f32, params)),
        param_sh, transform_non_params=lambda _: rep)
    if master:
      opt_sh = MasterWeightsState(master=param_sh, inner=opt_sh)
    opt_state = jax.jit(init, out_shardings=opt_sh)(params)
    step = jax.device_put(step, rep)
  return graphdef, TrainState(params=params, opt_state=opt_state, step=step)


# ---------------------------------------------------------------------------------------------

def sequence_logprobs(graphdef, params, tokens, positions, attention, targets, cfg,
                      with_entropy=False, segment_ids=None):
  """The update step's model pass: [b, T] inputs -> (logp [b, T], entropy [b, T] | None).

  Trunk + chunked token log-probabilities (no [b, T, V] logits); what the loss is built on.
  attention bool [b, T] or None; segment_ids [b, T] (packed rows) or None (one sample per row):
  see Decoder.__call__.
  """
  model = nnx.merge(graphdef, params)
  hidden, _ = model(tokens, positions, attention_mask=attention, segment_ids=segment_ids)
  b, t, h = hidden.shape
  logp, ent = token_logprobs(hidden.reshape(b * t, h), model.lm_head_kernel(),
                             targets.reshape(-1), temperature=cfg.temperature,
                             impl=cfg.logprob_impl, with_entropy=with_entropy,
                             chunk_size=cfg.logprob_chunk)
  return logp.reshape(b, t), (None if ent is None else ent.reshape(b, t))


_sequence_logprobs = sequence_logprobs  # the name the tests use


def _batched_logprobs(graphdef, params, batch: TrainBatch, cfg, with_entropy, packed=False):
  """Old/reference logprobs without gradients, `logprob_batch_rows` rows at a time."""
  rows = cfg.logprob_batch_rows or cfg.micro_batch_size
  b, t = batch.tokens.shape
  rows = math.gcd(rows, b)
  fields = (batch.tokens, batch.positions, batch.attention_mask, batch.targets)
  if packed:
    fields += (batch.segment_ids,)
  xs = tuple(x.reshape(b // rows, rows, t) for x in fields)

  def one(x):
    segments = x[4] if packed else None
    lp, ent = sequence_logprobs(graphdef, params, *x[:4], cfg, with_entropy, segments)
    return lp, (ent if ent is not None else jnp.zeros_like(lp))

  lp, ent = jax.lax.map(one, xs)
  return (jax.lax.stop_gradient(lp.reshape(b, t)),
          jax.lax.stop_gradient(ent.reshape(b, t)))


def advantages(old_lp: Array, ref_lp: Array, batch: TrainBatch, cfg: UpdateConfig,
               pooled_stats=None):
  """Token advantages and their ingredients from old/reference logprobs (all [B, T]).

  Returns dict(kl, token_rewards, returns, advantages, whiten_weights, stats).
  """
  a = batch.num_actions
  ids = batch.action_ids
  counted = batch.valid & ~batch.invalid
  shaped = obj.group_baseline(batch.rewards, batch.groups, counted, a, cfg.baseline)
  beta = cfg.kl_reward_coef
  include = counted & (cfg.whiten_truncated | ~batch.truncated)
  weights = obj.whitening_weights(ids, include, cfg.whiten_weighting)
  kl, rewards, returns, row_sums = obj.kl_rewards_returns(
      old_lp, ref_lp, ids, obj.end_rewards(ids, shaped), weights, beta=beta, gamma=cfg.gamma,
      estimator=cfg.kl_estimator, impl=cfg.advantage_impl)
  if cfg.return_across_actions:
    returns = obj.continue_returns(returns, ids, batch.next_action, cfg.gamma)
  groups, num_groups = None, 1
  scope = cfg.whitening
  if scope == "per_agent_per_stratum":
    groups = jnp.where(ids >= 0, batch.strata[jnp.maximum(ids, 0)], 0)
    num_groups = cfg.max_strata
  if scope == "none":
    stats = obj.whitening_stats(returns, weights, groups, num_groups)
    adv = returns
  else:
    if scope == "pooled":
      if pooled_stats is None:
        raise ValueError("rl.whiten_scope='pooled' needs pooled_stats: merge every agent's "
                         "advantage_stats(...) with objectives.merge_stats and pass it")
      stats = pooled_stats
    elif groups is None and not cfg.return_across_actions and cfg.advantage_impl != "reference":
      stats = obj.stats_from_row_sums(row_sums)       # the kernel's partial sums
    else:
      stats = obj.whitening_stats(returns, weights, groups, num_groups)
    adv = obj.whiten(returns, stats, groups, use_std=cfg.whiten_use_std,
                     var_floor=cfg.var_floor)
  adv = jnp.where(ids >= 0, adv, 0.0)
  return dict(kl=kl, token_rewards=rewards, returns=returns, advantages=adv,
              whiten_weights=weights, stats=stats)


def _tree_norm(tree) -> Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _update_body(graphdef, tx, cfg: UpdateConfig, state: TrainState, ref_params,
                 batch: TrainBatch, rng: Array, pooled_stats, packed: bool = False):
  b, t = batch.tokens.shape
  a = batch.num_actions
  s_rows, m_rows = cfg.samples_per_optimizer_step, cfg.micro_batch_size
  if b % s_rows:
    raise ValueError(f"batch has {b} rows, not a multiple of train.samples_per_optimizer_step="
                     f"{s_rows} (build it with build_train_batch and the same UpdateConfig)")
  ids = batch.action_ids
  resp = ids >= 0

  old_lp, old_ent = _batched_logprobs(graphdef, state.params, batch, cfg, with_entropy=True,
                                      packed=packed)
  if cfg.old_logprobs == "rollout":
    old_lp = batch.rollout_logprobs.astype(jnp.float32)
  ref_lp, _ = _batched_logprobs(graphdef, ref_params, batch, cfg, with_entropy=False,
                                packed=packed)
  adv_out = advantages(old_lp, ref_lp, batch, cfg, pooled_stats)
  adv = adv_out["advantages"]

  counted = batch.valid & ~batch.invalid
  lossable = counted & ~(cfg.mask_truncated & batch.truncated)
  loss_mask = resp & jnp.where(resp, lossable[jnp.maximum(ids, 0)], False)
  weights = obj.loss_token_weights(loss_mask, ids, a, cfg.loss_agg)
  first = resp & (obj.token_positions_in_action(ids, a) == 0)
  row_samples = jnp.sum(first & counted[jnp.maximum(ids, 0)], axis=1).astype(jnp.float32)
  row_tokens = jnp.sum(loss_mask, axis=1).astype(jnp.float32)

  # One shuffled pass; rows without samples stay at the end so optimizer steps stay full.
  if cfg.shuffle:
    key = jnp.where(row_samples > 0, jax.random.uniform(rng, (b,)), 2.0)
    perm = jnp.argsort(key)
  else:
    perm = jnp.arange(b)
  n_opt, k = b // s_rows, s_rows // m_rows

  def rows(x):
    return x[perm].reshape((n_opt, k, m_rows) + x.shape[1:])

  xs = dict(tokens=rows(batch.tokens), positions=rows(batch.positions),
            attention=rows(batch.attention_mask), targets=rows(batch.targets),
            old_lp=rows(old_lp), ref_lp=rows(ref_lp), adv=rows(adv), w=rows(weights),
            mask=rows(loss_mask.astype(jnp.float32)), samples=rows(row_samples),
            tokens_n=rows(row_tokens))
  if packed:
    xs["segments"] = rows(batch.segment_ids)
  kl_loss = cfg.kl_placement == "loss"

  def micro_loss(params, mb, norm):
    logp, _ = sequence_logprobs(graphdef, params, mb["tokens"], mb["positions"],
                                mb["attention"], mb["targets"], cfg,
                                segment_ids=mb.get("segments"))
    loss_t, clipped, ratio = obj.ppo_clip_loss(
        logp, mb["old_lp"], mb["adv"], eps_low=cfg.eps_clip_low, eps_high=cfg.eps_clip_high,
        dual_clip=cfg.dual_clip)
    total = loss_t
    if kl_loss:
      total = total + cfg.kl_coef * obj.kl_estimate(logp, mb["ref_lp"], cfg.kl_estimator)
    loss = jnp.sum(mb["w"] * total) / norm
    log_ratio = logp - mb["old_lp"]
    sums = dict(clipped=jnp.sum(mb["mask"] * clipped),
                approx_kl=jnp.sum(mb["mask"] * (jnp.exp(-log_ratio) - 1.0 + log_ratio)),
                ratio=jnp.sum(mb["mask"] * ratio))
    return loss, sums

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  zero_sums = dict(clipped=0.0, approx_kl=0.0, ratio=0.0)

  def opt_step(carry, step_xs):
    params, opt_state = carry
    samples = jnp.sum(step_xs["samples"])
    ntok = jnp.sum(step_xs["tokens_n"])
    norm = ntok if cfg.loss_agg == "token_mean" else samples
    norm = jnp.maximum(norm, 1.0)

    def micro(acc, mb):
      grads, loss, sums = acc
      (l, s), g = grad_fn(params, mb, norm)
      # Accumulate in float32 whatever the param dtype (bf16 sums lose the small terms).
      grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
      return (grads, loss + l, jax.tree.map(jnp.add, sums, s)), None

    zeros = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params)
    (grads, loss, sums), _ = jax.lax.scan(
        micro, (zeros, jnp.zeros(()), jax.tree.map(jnp.float32, zero_sums)), step_xs)
    if not isinstance(opt_state, MasterWeightsState):
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    new_params, new_opt = _apply_optimizer(tx, grads, opt_state, params)
    has_data = samples > 0
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(has_data, n, o), new, old)
    out = dict(loss=loss, grad_norm=_tree_norm(grads), has_data=has_data, tokens=ntok,
               **sums)
    return (keep(new_params, params), keep(new_opt, opt_state)), out

  (params, opt_state), per_step = jax.lax.scan(opt_step, (state.params, state.opt_state), xs)
  n_steps = jnp.sum(per_step["has_data"]).astype(jnp.int32)
  new_state = TrainState(params=params, opt_state=opt_state, step=state.step + n_steps)

  real = jnp.maximum(n_steps, 1)
  ntok = jnp.maximum(jnp.sum(per_step["tokens"]), 1.0)
  counted_f = counted.astype(jnp.float32)
  resp_f = resp.astype(jnp.float32) * jnp.where(resp, counted_f[jnp.maximum(ids, 0)], 0.0)
  nresp = jnp.maximum(jnp.sum(resp_f), 1.0)
  lengths = obj.action_lengths(ids, a).astype(jnp.float32)
  adv_mean = jnp.sum(resp_f * adv) / nresp
  metrics = dict(
      loss=jnp.sum(per_step["loss"]) / real,
      grad_norm=jnp.sum(per_step["grad_norm"] * per_step["has_data"]) / real,
      clip_fraction=jnp.sum(per_step["clipped"]) / ntok,
      approx_kl=jnp.sum(per_step["approx_kl"]) / ntok,
      ratio_mean=jnp.sum(per_step["ratio"]) / ntok,
      entropy=jnp.sum(resp_f * old_ent) / nresp,
      kl=jnp.sum(resp_f * adv_out["kl"]) / nresp,
      kl_ref_k1=jnp.sum(resp_f * (old_lp - ref_lp)) / nresp,
      kl_ref_k3=jnp.sum(resp_f * obj.kl_estimate(old_lp, ref_lp, "k3")) / nresp,
      advantage_mean=adv_mean,
      advantage_std=jnp.sqrt(jnp.sum(resp_f * (adv - adv_mean) ** 2) / nresp),
      return_mean=jnp.sum(resp_f * adv_out["returns"]) / nresp,
      reward_mean=jnp.sum(counted_f * batch.rewards) / jnp.maximum(jnp.sum(counted_f), 1.0),
      response_length=jnp.sum(counted_f * lengths) / jnp.maximum(jnp.sum(counted_f), 1.0),
      rollout_logprob_abs_diff=jnp.sum(resp_f * jnp.abs(batch.rollout_logprobs - old_lp))
      / nresp,
      num_samples=jnp.sum(counted_f),
      optimizer_steps=n_steps.astype(jnp.float32),
      learning_rate=lr_schedule(cfg)(jnp.maximum(new_state.step - 1, 0)),
  )
  return new_state, metrics


def _is_packed(batch: TrainBatch) -> bool:
  """Whether rows hold several samples (segment_ids > 1: ExperienceConfig(pack=True)), so the
  Decoder must mask attention per segment. A batch this process cannot read whole (multi-host)
  counts as packed: segment masking is exact for one-sample rows too, only a little dearer."""
  seg = batch.segment_ids
  if not getattr(seg, "is_fully_addressable", True):
    return True
  return int(np.max(np.asarray(seg), initial=0)) > 1


def make_update_step(graphdef, cfg: UpdateConfig, *, mesh=None) -> Callable:
  """-> step(state, ref_params, batch, rng, pooled_stats=None) -> (state, metrics).

  Jitted with the TrainState donated. With a mesh: batch rows sharded over (data, fsdp) when
  divisible, per-action arrays replicated, params/optimizer state keep their placement.
  Packed batches (ExperienceConfig(pack=True), detected from segment_ids) run a second compiled
  variant whose attention is masked per segment.
  """
  tx = make_optimizer(cfg)

  def body(state, ref_params, batch, rng, pooled_stats, packed):
    return _update_body(graphdef, tx, cfg, state, ref_params, batch, rng, pooled_stats, packed)

  if mesh is None:
    jitted = jax.jit(body, donate_argnums=(0,), static_argnums=(5,))

    def step(state, ref_params, batch, rng, pooled_stats=None):
      return jitted(state, ref_params, batch, rng, pooled_stats, _is_packed(batch))

    return step
  cache: dict = {}

  def step(state, ref_params, batch, rng, pooled_stats=None):
    packed = _is_packed(batch)
    key = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (batch, pooled_stats))
    key = str((key, packed))
    if key not in cache:
      n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
      rows_sh = NamedSharding(mesh, P(("data", "fsdp")))
      rep = NamedSharding(mesh, P())
      b = batch.tokens.shape[0]
      token_fields = ("tokens", "targets", "positions", "attention_mask", "segment_ids",
                      "action_ids", "rollout_logprobs")
      batch_sh = TrainBatch(**{
          f.name: (rows_sh if f.name in token_fields and b % n_batch == 0 else rep)
          for f in dataclasses.fields(TrainBatch)})
      shard_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
      state_sh = shard_of(state)
      in_sh = (state_sh, shard_of(ref_params), batch_sh, rep,
               None if pooled_stats is None else jax.tree.map(lambda _: rep, pooled_stats))
      cache[key] = jax.jit(functools.partial(body, packed=packed), in_shardings=in_sh,
                           out_shardings=(state_sh, rep), donate_argnums=(0,))
    return cache[key](state, ref_params, batch, rng, pooled_stats)

  return step


def advantage_stats_fn(graphdef, cfg: UpdateConfig) -> Callable:
  """-> jitted f(params, ref_params, batch) -> (n, mean, m2) whitening statistics of one agent
  (for whiten_scope='pooled': merge all agents' with objectives.merge_stats, pass to step)."""
  def f(params, ref_params, batch, packed):
    old_lp, _ = _batched_logprobs(graphdef, params, batch, cfg, with_entropy=False,
                                  packed=packed)
    if cfg.old_logprobs == "rollout":
      old_lp = batch.rollout_logprobs.astype(jnp.float32)
    ref_lp, _ = _batched_logprobs(graphdef, ref_params, batch, cfg, with_entropy=False,
                                  packed=packed)
    local = dataclasses.replace(cfg, whiten_scope="none")
    return advantages(old_lp, ref_lp, batch, local)["stats"]

  jitted = jax.jit(f, static_argnums=(3,))

  def stats(params, ref_params, batch):
    return jitted(params, ref_params, batch, _is_packed(batch))

  return stats
