"""Attention implementations against the einsum reference; the Linear layer's hand-written VJP.

Fully masked queries (padding) are excluded from the comparisons: every implementation gives
them some finite average, not necessarily the same one (they are never read by valid rows).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mappa_jax.models import attention as attn
from mappa_jax.models.config import ConfigError, ModelConfig
from mappa_jax.models.decoder import Decoder, _contract, linear

IMPLS = ("xla", "blocked", "grouped")


@pytest.fixture
def small_tiles(monkeypatch):
  """Row chunks of 1-2 rows and 16-query blocks: the lax.map and block paths run at test size."""
  monkeypatch.setattr(attn, "_TILE_BYTES", 6 * 16 * 40 * 4 * 2)
  monkeypatch.setattr(attn, "_QUERY_BLOCK", 16)


def _inputs(rng, b, t, s, n, k, d, dtype=jnp.float32):
  q = jnp.asarray(rng.normal(size=(b, t, n, d)), dtype)
  kk = jnp.asarray(rng.normal(size=(b, s, k, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, s, k, d)), dtype)
  return q, kk, v


def _visible(mask):
  return np.asarray(mask).any(-1)  # [B or 1, T]


@pytest.mark.parametrize("heads", [(6, 2), (3, 1)])
@pytest.mark.parametrize("masks", ["causal", "key_mask", "segments"])
def test_training_impls_match_einsum_with_grads(heads, masks, small_tiles):
  rng = np.random.default_rng(0)
  b, t, d = 4, 40, 8  # 40 = 16 + 16 + 8: query blocks with a ragged last one
  n, k = heads
  q, kk, v = _inputs(rng, b, t, t, n, k, d)
  key_mask = seg = None
  if masks in ("key_mask", "segments"):
    key_mask = jnp.asarray(rng.random((b, t)) > 0.15)
  if masks == "segments":
    seg = jnp.asarray(np.sort(rng.integers(0, 4, (b, t)), axis=1), jnp.int32)
  visible = jnp.asarray(_visible(attn.allowed_mask(t, t, 0, key_mask, seg)))
  weight = jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32) * visible[..., None, None]

  def loss(fn):
    return lambda q, kk, v: jnp.sum(weight * fn(q, kk, v))

  ref_fn = lambda q, kk, v: attn.einsum_attention(q, kk, v, 0, key_mask, seg)
  ref = ref_fn(q, kk, v)
  ref_grads = jax.grad(loss(ref_fn), (0, 1, 2))(q, kk, v)
  for impl in IMPLS:
    fn = lambda q, kk, v, impl=impl: attn.attention(q, kk, v, impl=impl, key_mask=key_mask,
                                                    segment_ids=seg)
    out = jax.jit(fn)(q, kk, v)
    assert np.isfinite(np.asarray(out)).all(), impl
    vis = np.broadcast_to(np.asarray(visible), (b, t))
    np.testing.assert_allclose(np.asarray(out)[vis], np.asarray(ref)[vis], atol=2e-6,
                               err_msg=impl)
    grads = jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, kk, v)
    for name, g, r in zip("qkv", grads, ref_grads):
      np.testing.assert_allclose(g, r, atol=2e-5, err_msg=f"{impl} d{name}")


@pytest.mark.parametrize("impl", ("einsum",) + IMPLS)
def test_cache_layout_and_dynamic_start_match_reference(impl, small_tiles):
  """Prefill/decode over a 'bksd' cache: T queries at slot `start` (a traced scalar)."""
  rng = np.random.default_rng(1)
  b, s, n, k, d = 3, 24, 6, 2, 8
  for t, start in ((5, 0), (1, 13), (4, 20)):
    q, kk, v = _inputs(rng, b, t, s, n, k, d)
    key_mask = jnp.asarray(np.arange(s)[None, :] >= np.array([[0], [3], [7]]))  # left padding
    ref = attn.einsum_attention(q, kk, v, jnp.int32(start), key_mask)
    run = jax.jit(lambda q, kc, vc, start: attn.attention(
        q, kc, vc, impl=impl, query_start=start, key_mask=key_mask, kv_layout="bksd"))
    out = run(q, jnp.swapaxes(kk, 1, 2), jnp.swapaxes(v, 1, 2), jnp.int32(start))
    vis = np.broadcast_to(_visible(attn.allowed_mask(t, s, start, key_mask, None)), (b, t))
    np.testing.assert_allclose(np.asarray(out)[vis], np.asarray(ref)[vis], atol=2e-6,
                               err_msg=f"{impl} t={t} start={start}")


def test_bf16_impls_close_to_reference():
  rng = np.random.default_rng(2)
  q, kk, v = _inputs(rng, 2, 32, 32, 4, 2, 16, jnp.bfloat16)
  ref = np.asarray(attn.einsum_attention(q, kk, v), np.float32)
  for impl in IMPLS:
    out = attn.attention(q, kk, v, impl=impl)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, err_msg=impl)


def test_resolve_impl_per_backend():
  r = attn.resolve_impl
  assert r("auto", dtype=jnp.float32, query_len=256, cached=False, backend="cpu") == "blocked"
  assert r("auto", dtype=jnp.float32, query_len=1, cached=True, backend="cpu") == "grouped"
  assert r("auto", dtype=jnp.bfloat16, query_len=2048, cached=False, backend="gpu") == "cudnn"
  assert r("auto", dtype=jnp.float32, query_len=2048, cached=False, backend="gpu") == "xla"
  assert r("auto", dtype=jnp.bfloat16, query_len=1, cached=True, backend="gpu") == "grouped"
  assert r("auto", dtype=jnp.bfloat16, query_len=512, cached=True, backend="gpu") == "cudnn"
  assert r("auto", dtype=jnp.bfloat16, query_len=512, cached=False, backend="tpu") == "xla"
  assert r("einsum", dtype=jnp.float32, query_len=8, cached=True) == "einsum"
  with pytest.raises(ValueError, match="attention_impl"):
    r("flash", dtype=jnp.float32, query_len=8, cached=False)
  with pytest.raises(ConfigError, match="attention_impl"):
    ModelConfig.preset("tiny-qwen3", attention_impl="flash")


def test_blocked_keeps_rows_whole_when_activations_are_batch_sharded(small_tiles):
  """Under activation_sharding with a data/fsdp axis > 1 a lax.map over rows would cut across
  devices: 'blocked' then keeps every row in one chunk (and still matches the reference)."""
  from mappa_jax import sharding as shd
  assert attn._rows_per_chunk(4, 6, 16, 40) < 4
  rng = np.random.default_rng(6)
  q, kk, v = _inputs(rng, 4, 40, 40, 6, 2, 8)
  for sizes, whole in (({"data": 2, "fsdp": 2, "tensor": 2}, True),
                       ({"data": 1, "fsdp": 1, "tensor": 8}, False)):
    mesh = shd.make_mesh(sizes)
    with shd.activation_sharding(mesh):
      assert (attn._rows_per_chunk(4, 6, 16, 40) == 4) == whole
      out = jax.jit(lambda q, kk, v: attn.attention(q, kk, v, impl="blocked"))(q, kk, v)
    np.testing.assert_allclose(out, attn.einsum_attention(q, kk, v), atol=2e-6)


def test_cudnn_off_gpu_falls_back_to_xla():
  if jax.default_backend() == "gpu":
    pytest.skip("cuDNN is available here; its numerics are checked by benchmarks/gpu_suite.sh")
  rng = np.random.default_rng(3)
  q, kk, v = _inputs(rng, 2, 16, 16, 4, 2, 8)
  np.testing.assert_allclose(attn.attention(q, kk, v, impl="cudnn"),
                             attn.einsum_attention(q, kk, v), atol=2e-6)


def test_decoder_impls_agree_on_logits_grads_and_decode(small_tiles):
  """Whole model: 'auto' ('blocked' training, 'grouped' decode on CPU) and 'xla' give the
  reference's packed-row hidden states and gradients, and their cached decode reproduces
  their own full forward."""
  base = ModelConfig.preset("tiny-qwen3", vocab_size=61, hidden_size=32, intermediate_size=48,
                            num_attention_heads=6, num_key_value_heads=2, head_dim=8)
  rng = np.random.default_rng(4)
  b, t = 2, 40
  ids = jnp.asarray(rng.integers(0, 61, (b, t)), jnp.int32)
  seg = jnp.asarray(np.repeat([[1] * 25 + [2] * 12 + [0] * 3], b, 0), jnp.int32)
  pos = jnp.asarray(np.concatenate([np.arange(25), np.arange(12), np.zeros(3)])[None]
                    .repeat(b, 0), jnp.int32)
  weight = jnp.asarray(seg > 0, jnp.float32)[..., None]

  def run(impl):
    model = Decoder(base.replace(attention_impl=impl), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state):
      m = nnx.merge(graphdef, state)
      hidden, _ = m(ids, pos, attention_mask=seg > 0, segment_ids=seg)
      return jnp.sum(weight * m.logits(hidden)), hidden

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return model, hidden, grads

  _, ref_hidden, ref_grads = run("einsum")
  for impl in ("auto", "xla"):
    model, hidden, grads = run(impl)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(hidden)[real], np.asarray(ref_hidden)[real],
                               atol=1e-5, err_msg=impl)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree_util.tree_leaves(ref_grads)):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4, err_msg=f"{impl} {path}")

    # Cached decode (prefill 10, then 3 single steps) equals this impl's full forward.
    full, _ = nnx.jit(lambda m, x, p: m(x, p))(model, ids[:, :13], pos[:, :13])
    cache = model.init_cache(b, 16)
    step = nnx.jit(lambda m, x, p, c, i: m(x, p, attention_mask=jnp.ones((b, 16), bool),
                                             cache=c, cache_index=i))
    hidden, cache = step(model, ids[:, :10], pos[:, :10], cache, jnp.int32(0))
    np.testing.assert_allclose(hidden, full[:, :10], atol=1e-5, err_msg=impl)
    for i in range(10, 13):
      hidden, cache = step(model, ids[:, i:i + 1], pos[:, i:i + 1], cache, jnp.int32(i))
      np.testing.assert_allclose(hidden[:, 0], full[:, i], atol=1e-5, err_msg=f"{impl} {i}")


@pytest.mark.parametrize("shapes", [((5, 7), (3,), (4,)), ((2, 3, 4), (4, 5), (6,)),
                                    ((6, 6), (3, 2), (2, 3))])
def test_linear_vjp_equals_autodiff(shapes):
  lead, ins, outs = shapes
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=lead + ins), jnp.float32)
  w = jnp.asarray(rng.normal(size=ins + outs), jnp.float32)
  g = jnp.asarray(rng.normal(size=lead + outs), jnp.float32)
  n_in = len(ins)
  ours = jax.vjp(lambda x, w: linear(x, w, n_in), x, w)
  auto = jax.vjp(lambda x, w: _contract(x, w, n_in), x, w)
  np.testing.assert_array_equal(ours[0], auto[0])
  for a, b in zip(ours[1](g), auto[1](g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  xb, wb, gb = (a.astype(jnp.bfloat16) for a in (x, w, g))
  dx, dw = jax.vjp(lambda x, w: linear(x, w, n_in), xb, wb)[1](gb)
  assert dx.dtype == dw.dtype == jnp.bfloat16


def test_attention_bench_and_gpu_suite_plan(capsys):
  """benchmarks/attention_bench.py at tiny shapes; benchmarks/gpu_suite.sh parses and lists
  its sections (the suite itself is run on a GPU machine, or with --dry-run by hand)."""
  import importlib.util
  import pathlib
  import subprocess
  root = pathlib.Path(__file__).resolve().parents[2]
  spec = importlib.util.spec_from_file_location("attention_bench",
                                                root / "benchmarks" / "attention_bench.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  assert bench.main(["--batch=2", "--seq=16", "--heads=4", "--kv_heads=2", "--head_dim=8",
                     "--impls=einsum,blocked,auto", "--decode_impls=einsum,grouped",
                     "--decode_batch=2", "--cache=8", "--decode_steps=2", "--iters=1"]) == 0
  out = capsys.readouterr().out
  assert "fwd+bwd ms" in out and "ms/step" in out and "FAILED" not in out
  plan = subprocess.run(["bash", str(root / "benchmarks" / "gpu_suite.sh"), "--plan"],
                        capture_output=True, text=True, check=True).stdout
  for section in ("attention", "update step", "model fwd+bwd and decode", "token logprobs",
                  "rewards kernel"):
    assert f"[{section}]" in plan
  assert "--preset=qwen3-1.7b --rows=8 --seq=2048" in plan and "--vocab=151936" in plan
