"""REINFORCE++ objectives: KL, token rewards, returns, whitening, PPO-clip loss, baselines.

Pure jnp. Token arrays are [B, T]; `action_ids[b, t]` is the index (into per-action arrays of
length A) of the action that response token t of row b belongs to, -1 for prompt and padding
tokens. The padded layout has one action per row (A = B); the packed layout puts several actions
in a row. An action's tokens are contiguous within its row.

Reference behaviour (mappa-reference.md §3) and where each choice is configured: see
`mappa_jax.rl.config` (the `rl` and `train` sections).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mappa_jax.kernels.reference import kl_estimate_reference
from mappa_jax.kernels.reference import kl_rewards_returns_reference
from mappa_jax.kernels.rewards_kernel import kl_rewards_returns_pallas
from mappa_jax.rl.config import Baseline, Impl, LossAggregation, WhitenWeighting, choices

Array = jax.Array

__all__ = [
    "kl_estimate", "kl_rewards_returns", "is_last_token", "end_rewards", "action_lengths",
    "token_positions_in_action", "continue_returns", "whitening_weights", "whitening_stats",
    "merge_stats", "whiten", "ppo_clip_loss", "loss_token_weights", "group_baseline",
    "VAR_FLOOR",
]

VAR_FLOOR = 1e-8
WHITEN_WEIGHTINGS = choices(WhitenWeighting)
LOSS_AGGREGATIONS = choices(LossAggregation)
BASELINES = choices(Baseline)
IMPLS = choices(Impl)


# ------------------------------------------------------------- KL, token rewards, returns
# One pass over [B, T]: per-token KL, KL-penalised token rewards, return-to-go and the per-row
# partial sums of the (global) advantage whitening. An action's tokens are contiguous within a
# row (both layouts); returns never flow between different ids. impl='xla' (default): jnp with
# a segmented associative_scan for the discounted reverse cumsum; 'pallas': the kernel in
# kernels/rewards_kernel.py; 'reference': the serial loop in kernels/reference.py. The caller
# combines rows (and devices) with the parallel-variance formula (combine_row_sums), so no
# kernel needs a cross-device reduction.

def kl_estimate(logp: Array, ref_logp: Array, estimator: str = "k1") -> Array:
  """k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r with log r = logp - ref_logp;
  clamped to [-10, 10] (OpenRLHF compute_approx_kl). Shapes: any, float32 out."""
  return kl_estimate_reference(logp, ref_logp, estimator)


def _same_next(action_ids: Array) -> Array:
  """bool [B, T]: token t+1 belongs to the same action as token t."""
  nxt = jnp.concatenate([action_ids[:, 1:], jnp.full_like(action_ids[:, :1], -1)], axis=1)
  return (nxt == action_ids) & (action_ids >= 0)


def discounted_returns(rewards: Array, links: Array) -> Array:
  """G_t = r_t + links_t * G_{t+1} along the last axis (links_t = gamma or 0).

  rewards, links: [B, T] float32. Segmented linear recurrence via associative_scan.
  """
  def combine(later, earlier):
    a_l, b_l = later
    a_e, b_e = earlier
    return a_e * a_l, b_e + a_e * b_l

  # associative_scan(reverse=True) folds from the end: fn(accumulated suffix, element).
  _, g = jax.lax.associative_scan(combine,
                                  (links, rewards), reverse=True, axis=1)
  return g


def _row_sums(returns: Array, weights: Array) -> Array:
  n = jnp.sum(weights, axis=1)
  s = jnp.sum(weights * returns, axis=1)
  mean = s / jnp.maximum(n, 1e-30)
  m2 = jnp.sum(weights * (returns - mean[:, None]) ** 2, axis=1)
  return jnp.stack([n, s, m2], axis=1)


def _xla(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator):
  mask = (action_ids >= 0).astype(jnp.float32)
  kl = kl_estimate(logp, ref_logp, estimator) * mask
  reward = (end_reward.astype(jnp.float32) - beta * kl) * mask
  links = gamma * _same_next(action_ids).astype(jnp.float32)
  returns = discounted_returns(reward, links) * mask
  return kl, reward, returns, _row_sums(returns, weights.astype(jnp.float32))


def kl_rewards_returns(logp: Array, ref_logp: Array, action_ids: Array, end_reward: Array,
                       weights: Array, *, beta: float, gamma: float = 1.0,
                       estimator: str = "k1", impl: str = "xla", block_b: int = 8,
                       block_t: int = 128, interpret: bool | None = None):
  """Per-token KL, token rewards r_t = R*[t last] - beta*kl_t, returns and whitening sums.

  Args:
    logp, ref_logp: [B, T] logprobs of each token under the policy and the reference.
    action_ids: int32 [B, T]; action of each response token, -1 for prompt/padding.
    end_reward: [B, T]; each action's reward on its last token, 0 elsewhere.
    weights: [B, T]; whitening weight per token (0 = excluded from the statistics).
    beta: KL coefficient (0 when the KL is a loss term instead). gamma: discount within an action.
    estimator: 'k1' | 'k2' | 'k3'.
    impl: 'xla' | 'pallas' | 'reference'.
  Returns:
    kl [B, T], token_rewards [B, T], returns [B, T] (float32, 0 outside responses),
    row_sums [B, 3] = (sum w, sum w*G, sum w*(G - row_mean)^2).
  """
  if impl not in IMPLS:
    raise ValueError(f"kl_rewards_returns impl must be one of {IMPLS}, got {impl!r}")
  if estimator not in ("k1", "k2", "k3"):
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
  if impl == "reference":
    return kl_rewards_returns_reference(logp, ref_logp, action_ids, end_reward, weights,
                                        beta=beta, gamma=gamma, estimator=estimator)
  if impl == "pallas":
    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    return kl_rewards_returns_pallas(logp, ref_logp, action_ids, end_reward, weights, beta,
                                     gamma, estimator, block_b, block_t, interpret)
  return _xla(logp, ref_logp, action_ids, end_reward, weights, beta, gamma, estimator)


def combine_row_sums(row_sums: Array, group: Array | None = None, num_groups: int = 1):
  """Parallel-variance merge of per-row (n, sum, M2) into per-group (n, mean, var).

  row_sums: [R, 3]; group: int32 [R] in [0, num_groups) (None: one group).
  Returns n [G], mean [G], population var [G].
  """
  if group is None:
    group = jnp.zeros(row_sums.shape[0], jnp.int32)
  n_r, s_r, m2_r = row_sums[:, 0], row_sums[:, 1], row_sums[:, 2]
  n = jax.ops.segment_sum(n_r, group, num_groups)
  mean = jax.ops.segment_sum(s_r, group, num_groups) / jnp.maximum(n, 1e-30)
  row_mean = s_r / jnp.maximum(n_r, 1e-30)
  m2 = jax.ops.segment_sum(m2_r + n_r * (row_mean - mean[group]) ** 2, group, num_groups)
  return n, mean, m2 / jnp.maximum(n, 1e-30)


def _gather(per_action: Array, action_ids: Array, fill=0):
  """per_action [A] -> [B, T] (fill where action_ids < 0)."""
  return jnp.where(action_ids >= 0, per_action[jnp.maximum(action_ids, 0)], fill)


def is_last_token(action_ids: Array) -> Array:
  """bool [B, T]: the last response token of its action."""
  nxt = jnp.concatenate([action_ids[:, 1:], jnp.full_like(action_ids[:, :1], -1)], axis=1)
  return (action_ids >= 0) & (nxt != action_ids)


def end_rewards(action_ids: Array, action_rewards: Array) -> Array:
  """[B, T] float32: action_rewards[a] on the last token of action a, 0 elsewhere."""
  r = _gather(action_rewards.astype(jnp.float32), action_ids, 0.0)
  return jnp.where(is_last_token(action_ids), r, 0.0)


def action_lengths(action_ids: Array, num_actions: int) -> Array:
  """int32 [A]: response tokens of each action."""
  ones = (action_ids >= 0).astype(jnp.int32).reshape(-1)
  return jax.ops.segment_sum(ones, jnp.maximum(action_ids, 0).reshape(-1), num_actions)


def token_positions_in_action(action_ids: Array, num_actions: int) -> Array:
  """int32 [B, T]: 0-based position of each response token within its action (0 elsewhere)."""
  t_idx = jnp.broadcast_to(jnp.arange(action_ids.shape[1], dtype=jnp.int32), action_ids.shape)
  big = jnp.iinfo(jnp.int32).max
  first = jax.ops.segment_min(jnp.where(action_ids >= 0, t_idx, big).reshape(-1),
                              jnp.maximum(action_ids, 0).reshape(-1), num_actions)
  return jnp.where(action_ids >= 0, t_idx - _gather(first, action_ids, 0), 0)


def continue_returns(returns: Array, action_ids: Array, next_action: Array, gamma: float
                     ) -> Array:
  """Continue returns across an agent's consecutive actions in one trajectory.

  G_t of action k additionally receives gamma^(L_k - p_t) * X_{next(k)}, where X_j is the full
  return at the first token of action j (its own continuation included), L_k the length of k
  and p_t the position of t in k. `next_action[k]` is the index of the agent's next action in
  the same trajectory (-1 for none) and must be > k.

  returns: [B, T] within-action returns. next_action: int32 [A]. Returns [B, T].
  """
  num_actions = next_action.shape[0]
  pos = token_positions_in_action(action_ids, num_actions)
  first = (action_ids >= 0) & (pos == 0)
  first_return = jax.ops.segment_sum(jnp.where(first, returns, 0.0).reshape(-1),
                                     jnp.maximum(action_ids, 0).reshape(-1), num_actions)
  lengths = action_lengths(action_ids, num_actions).astype(jnp.float32)
  g_len = jnp.power(jnp.float32(gamma), lengths)

  def body(x, k):
    nxt = next_action[k]
    tail = jnp.where(nxt >= 0, x[jnp.maximum(nxt, 0)], 0.0)
    return x.at[k].set(first_return[k] + g_len[k] * tail), None

  full, _ = jax.lax.scan(body, jnp.zeros(num_actions, jnp.float32),
                         jnp.arange(num_actions - 1, -1, -1))
  cont = jnp.where(next_action >= 0, full[jnp.maximum(next_action, 0)], 0.0)
  lengths_t = _gather(lengths, action_ids, 0.0)
  decay = jnp.power(jnp.float32(gamma), lengths_t - pos.astype(jnp.float32))
  return returns + jnp.where(action_ids >= 0, decay * _gather(cont, action_ids, 0.0), 0.0)


def whitening_weights(action_ids: Array, include: Array, weighting: str = "token") -> Array:
  """[B, T] float32 weight of each token in the whitening statistics.

  include: bool [A], actions that count. weighting: 'token' (reference: every token weighs 1,
  long outputs dominate) or 'action' (every action weighs 1 in total: 1/length per token).
  """
  if weighting not in WHITEN_WEIGHTINGS:
    raise ValueError(f"whitening weighting must be one of {WHITEN_WEIGHTINGS}, got {weighting!r}")
  w = _gather(include.astype(jnp.float32), action_ids, 0.0)
  if weighting == "action":
    lengths = action_lengths(action_ids, include.shape[0]).astype(jnp.float32)
    w = w / jnp.maximum(_gather(lengths, action_ids, 1.0), 1.0)
  return w


def whitening_stats(values: Array, weights: Array, groups: Array | None = None,
                    num_groups: int = 1):
  """Weighted (n, mean, M2) per group, two-pass (numerically stable).

  values, weights: [B, T]; groups: int32 [B, T] in [0, num_groups) or None (one group).
  Returns (n [G], mean [G], m2 [G]) with m2 = sum w (x - mean)^2; population var = m2 / n.
  """
  if groups is None:
    groups = jnp.zeros(values.shape, jnp.int32)
  g, v, w = groups.reshape(-1), values.reshape(-1), weights.reshape(-1).astype(jnp.float32)
  n = jax.ops.segment_sum(w, g, num_groups)
  mean = jax.ops.segment_sum(w * v, g, num_groups) / jnp.maximum(n, 1e-30)
  m2 = jax.ops.segment_sum(w * (v - mean[g]) ** 2, g, num_groups)
  return n, mean, m2


def merge_stats(*stats):
  """Merge (n, mean, m2) tuples (e.g. of several agents for scope='pooled')."""
  n = sum(s[0] for s in stats)
  mean = sum(s[0] * s[1] for s in stats) / jnp.maximum(n, 1e-30)
  m2 = sum(s[2] + s[0] * (s[1] - mean) ** 2 for s in stats)
  return n, mean, m2


def stats_from_row_sums(row_sums: Array):
  """(n, mean, m2) of one group from the rewards kernel's per-row partial sums [B, 3]."""
  n, mean, var = combine_row_sums(row_sums)
  return n, mean, var * jnp.maximum(n, 1e-30)


def whiten(values: Array, stats, groups: Array | None = None, *, use_std: bool = True,
           var_floor: float = VAR_FLOOR) -> Array:
  """(x - mean_g) / sqrt(max(var_g, floor)) with population variance; [B, T] -> [B, T].

  stats: (n, mean, m2) per group; use_std=False only centres (OpenRLHF no_std_norm).
  """
  n, mean, m2 = stats
  var = m2 / jnp.maximum(n, 1e-30)
  if groups is None:
    groups = jnp.zeros(values.shape, jnp.int32)
  out = values - mean[groups]
  if use_std:
    out = out * jax.lax.rsqrt(jnp.maximum(var, var_floor))[groups]
  return out


def ppo_clip_loss(logp: Array, old_logp: Array, advantages: Array, *, eps_low: float = 0.2,
                  eps_high: float = 0.2, dual_clip: float | None = None):
  """Per-token PPO clipped surrogate loss.

  ratio = exp(clamp(logp - old, -20, 20)); l = -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A);
  with dual_clip c > 1, tokens with A < 0 are capped at -c A.
  Shapes: any (same for all three). Returns (loss, clipped (bool: the clipped branch is active),
  ratio).
  """
  ratio = jnp.exp(jnp.clip(logp - old_logp, -20.0, 20.0))
  surr1 = ratio * advantages
  surr2 = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
  loss = -jnp.minimum(surr1, surr2)
  clipped = surr2 < surr1
  if dual_clip is not None:
    if dual_clip <= 1.0:
      raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    capped = jnp.minimum(loss, -dual_clip * advantages)
    clipped = clipped | ((advantages < 0) & (capped < loss))
    loss = jnp.where(advantages < 0, capped, loss)
  return loss, clipped, ratio


def loss_token_weights(loss_mask: Array, action_ids: Array, num_actions: int,
                       aggregation: str) -> Array:
  """[B, T] weights w such that the loss of an optimizer step is sum(w * l) / normaliser.

  seq_mean_token_mean: w = mask / len(action), normaliser = number of samples;
  token_mean: w = mask, normaliser = number of loss tokens;
  seq_mean_token_sum: w = mask, normaliser = number of samples.
  The normaliser covers the whole optimizer step (all its micro-batches), so gradient
  accumulation over micro-batches is exact. len(action) counts all response tokens.
  """
  if aggregation not in LOSS_AGGREGATIONS:
    raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")
  w = loss_mask.astype(jnp.float32)
  if aggregation == "seq_mean_token_mean":
    lengths = action_lengths(action_ids, num_actions).astype(jnp.float32)
    w = w / jnp.maximum(_gather(lengths, action_ids, 1.0), 1.0)
  return w


def group_baseline(rewards: Array, groups: Array, valid: Array, num_groups: int,
                   kind: str, eps: float = 1e-9) -> Array:
  """Action-level reward shaping with a per-prompt group baseline; [A] -> [A].

  'none': unchanged. 'reinforce_baseline': r - mean of the group (then whiten globally).
  'grpo': (r - mean) / (std + eps) with the sample (n - 1) std of the group, as OpenRLHF
  group_norm (torch `std`) and verl compute it; a group of one gets 0.
  Invalid actions neither contribute to nor receive a baseline (returned as 0).
  """
  if kind not in BASELINES:
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
  r = rewards.astype(jnp.float32)
  if kind == "none":
    return r
  v = valid.astype(jnp.float32)
  n = jax.ops.segment_sum(v, groups, num_groups)
  mean = jax.ops.segment_sum(v * r, groups, num_groups) / jnp.maximum(n, 1.0)
  out = r - mean[groups]
  if kind == "grpo":
    var = jax.ops.segment_sum(v * out ** 2, groups, num_groups) / jnp.maximum(n - 1.0, 1.0)
    out = out / (jnp.sqrt(var)[groups] + eps)
  return jnp.where(valid, out, 0.0)
