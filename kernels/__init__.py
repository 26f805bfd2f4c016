"""Kernels with their jnp references (installed as mappa_jax.kernels).

- token_logprobs: hidden states x LM head -> per-token logprob (+ entropy) without [N, V] logits.
- rewards_kernel: one pass over [B, T] for KL, KL-penalised token rewards, return-to-go and the
  partial sums of the global advantage whitening.
"""
from mappa_jax.kernels.rewards_kernel import kl_rewards_returns
from mappa_jax.kernels.token_logprobs import token_logprobs

__all__ = ["kl_rewards_returns", "token_logprobs"]
