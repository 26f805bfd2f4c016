"""Plain jnp reference implementations of the kernels (test oracles; they materialise everything).

Written for clarity, not speed: the token-logprob reference builds the full [N, V] logits and the
return reference runs a serial reverse loop over T.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

KL_CLAMP = 10.0


def token_logprobs_reference(hidden: Array, lm_head: Array, targets: Array, *,
                             temperature: float = 1.0, with_entropy: bool = False):
  """log softmax(hidden @ lm_head / temperature)[targets].

  Args:
    hidden: [N, H]. lm_head: [H, V]. targets: int32 [N].
  Returns:
    (logp [N] float32, entropy [N] float32 or None).
  """
  logits = jnp.dot(hidden.astype(jnp.float32), lm_head.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) / temperature
  logz = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logz, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.exp(logz) * logz, axis=-1) if with_entropy else None
  return logp, entropy


def kl_estimate_reference(logp: Array, ref_logp: Array, estimator: str) -> Array:
  """k1 / k2 / k3 estimators of KL(pi || pi_ref) per token, clamped to [-10, 10]."""
  log_ratio = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
  if estimator == "k1":
    kl = log_ratio
  elif estimator == "k2":
    kl = 0.5 * log_ratio ** 2
  elif estimator == "k3":
    kl = jnp.exp(-log_ratio) - 1.0 + log_ratio
  else:
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
  return jnp.clip(kl, -KL_CLAMP, KL_CLAMP)


def kl_rewards_returns_reference(logp, ref_logp, action_ids, end_reward, weights, *,
                                 beta: float, gamma: float, estimator: str = "k1"):
  """Per-token KL, token rewards, return-to-go and per-row whitening partial sums.

  Args:
    logp, ref_logp: [B, T] float; policy and reference logprobs of each token.
    action_ids: int32 [B, T]; the action a response token belongs to, -1 elsewhere. Returns
      flow from t+1 to t only while both tokens carry the same id.
    end_reward: [B, T]; the action's reward on its last token, 0 elsewhere.
    weights: [B, T]; whitening weight of each token (0 = not counted).
    beta: KL coefficient in the reward. gamma: discount.
  Returns:
    kl [B, T], token_reward [B, T], returns [B, T] (all 0 outside responses), and
    row_sums [B, 3] = (sum w, sum w*G, sum w*(G - row_mean)^2).
  """
  mask = (action_ids >= 0).astype(jnp.float32)
  kl = kl_estimate_reference(logp, ref_logp, estimator) * mask
  reward = (-beta * kl + end_reward) * mask
  same_next = jnp.concatenate(
      [(action_ids[:, 1:] == action_ids[:, :-1]) & (action_ids[:, 1:] >= 0),
       jnp.zeros_like(action_ids[:, :1], dtype=bool)], axis=1)

  def body(g_next, xs):
    r_t, link_t = xs
    g = r_t + gamma * link_t * g_next
    return g, g

  _, g_rev = jax.lax.scan(body, jnp.zeros(reward.shape[0], jnp.float32),
                          (reward.T[::-1], same_next.T[::-1].astype(jnp.float32)))
  returns = g_rev[::-1].T * mask
  w = weights.astype(jnp.float32)
  n = jnp.sum(w, axis=1)
  s = jnp.sum(w * returns, axis=1)
  row_mean = s / jnp.maximum(n, 1e-30)
  m2 = jnp.sum(w * (returns - row_mean[:, None]) ** 2, axis=1)
  return kl, reward, returns, jnp.stack([n, s, m2], axis=1)
