"""Pallas kernels with their jnp references (installed as mappa_jax.kernels).

- logprobs_kernel: the forward pass of the per-token logprobs as an online softmax over vocab
  tiles (mappa_jax.rl.logprobs.token_logprobs(impl='pallas') uses it).
- rewards_kernel: one pass over [B, T] for KL, KL-penalised token rewards, return-to-go and the
  partial sums of the global advantage whitening (mappa_jax.rl.objectives.kl_rewards_returns(
  impl='pallas')).
- reference: the naive jnp versions, the test oracles.
The default (impl='xla') implementations and the impl switches are in mappa_jax/rl/.
"""

