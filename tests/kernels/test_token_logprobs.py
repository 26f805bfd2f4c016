"""token_logprobs: chunked XLA and Pallas (interpret mode) against a numpy oracle, values and grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mappa_jax.rl.logprobs import token_logprobs

N, H, V = 37, 16, 101  # N not a multiple of the chunk, V not a multiple of the vocab tile


def _numpy_logprobs(h, w, t, temperature):
  z = (h.astype(np.float64) @ w.astype(np.float64)) / temperature
  z = z - z.max(axis=1, keepdims=True)
  logz = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  p = np.exp(logz)
  return logz[np.arange(len(t)), t], -(p * logz).sum(axis=1)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(N, H)).astype(np.float32)
  w = (rng.normal(size=(H, V)) * 0.3).astype(np.float32)
  t = rng.integers(0, V, N).astype(np.int32)
  return h, w, t, rng.normal(size=N).astype(np.float32), rng.normal(size=N).astype(np.float32)


@pytest.mark.parametrize("impl", ["reference", "xla", "pallas"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_match_numpy(inputs, impl, temperature):
  h, w, t, _, _ = inputs
  want_lp, want_ent = _numpy_logprobs(h, w, t, temperature)
  lp, ent = token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t), impl=impl,
                           temperature=temperature, with_entropy=True, chunk_size=8, block_v=32)
  np.testing.assert_allclose(lp, want_lp, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(ent, want_ent, atol=2e-5, rtol=1e-5)
  lp2, none = token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t), impl=impl,
                             temperature=temperature, chunk_size=8, block_v=32)
  assert none is None
  np.testing.assert_allclose(lp2, want_lp, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_gradients_match_reference(inputs, impl):
  """d/d(hidden, lm_head) of sum(a*logp + b*entropy) equals autodiff through full logits."""
  h, w, t, ga, gb = inputs

  def loss(impl_):
    def f(h_, w_):
      lp, ent = token_logprobs(h_, w_, jnp.asarray(t), impl=impl_, temperature=0.8,
                               with_entropy=True, chunk_size=8, block_v=32)
      return jnp.sum(lp * ga) + jnp.sum(ent * gb)
    return jax.grad(f, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))

  with jax.default_matmul_precision("highest"):
    want = loss("reference")
    got = loss(impl)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def test_bf16_hidden_and_jit(inputs):
  h, w, t, _, _ = inputs
  f = jax.jit(lambda h_, w_: token_logprobs(h_, w_, jnp.asarray(t), chunk_size=16)[0])
  lp = f(jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
  want, _ = _numpy_logprobs(np.asarray(jnp.asarray(h, jnp.bfloat16), np.float32),
                            np.asarray(jnp.asarray(w, jnp.bfloat16), np.float32), t, 1.0)
  assert lp.dtype == jnp.float32
  np.testing.assert_allclose(lp, want, atol=1e-4)


def test_bad_input_names_the_problem(inputs):
  h, w, t, _, _ = inputs
  with pytest.raises(ValueError, match="impl"):
    token_logprobs(h, w, t, impl="triton")
  with pytest.raises(ValueError, match="shape mismatch"):
    token_logprobs(h, w[:5], t)


def test_decoder_hidden_and_head_match_full_logits():
  """Issue 3 item 7: chunked logprobs from Decoder hidden states == log_softmax(model.logits)."""
  from flax import nnx
  from mappa_jax.models.config import ModelConfig
  from mappa_jax.models.decoder import Decoder
  mc = ModelConfig.preset("tiny-qwen2", vocab_size=96, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16)
  model = Decoder(mc, rngs=nnx.Rngs(1))
  tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 96)
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  hidden, _ = model(tokens, positions)
  want = jnp.take_along_axis(jax.nn.log_softmax(model.logits(hidden[:, :-1])),
                             tokens[:, 1:, None], -1)[..., 0]
  got, _ = token_logprobs(hidden[:, :-1].reshape(-1, 32), model.lm_head_kernel(),
                          tokens[:, 1:].reshape(-1), chunk_size=5)
  np.testing.assert_allclose(got.reshape(2, 8), want, atol=1e-5)
