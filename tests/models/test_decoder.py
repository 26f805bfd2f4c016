"""Decoder numerics without torch: KV cache == full forward, padding, remat, dtypes, presets."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mappa_jax.models.config import ConfigError, ModelConfig, PRESETS
from mappa_jax.models.decoder import Decoder
from mappa_jax.models.hf_io import abstract_model

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=6,
             num_key_value_heads=2, head_dim=8)


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-qwen2"])
def model(request):
  return Decoder(ModelConfig.preset(request.param, **SMALL), rngs=nnx.Rngs(3))


# Jitted entry points: one compile per shape instead of op-by-op dispatch (much faster on CPU).
@nnx.jit
def _forward(model, ids, pos, mask):
  return model(ids, pos, attention_mask=mask)[0]


@nnx.jit
def _cached(model, ids, pos, mask, cache, index):
  return model(ids, pos, attention_mask=mask, cache=cache, cache_index=index)


def _left_pad(rows, width):
  ids = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = True
  pos = np.clip(np.cumsum(mask, 1) - 1, 0, None).astype(np.int32)
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)


def test_prefill_and_decode_with_cache_equal_full_forward(model):
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 97, 5).tolist(), rng.integers(0, 97, 3).tolist()]
  new = rng.integers(0, 97, (2, 3))
  full_rows = [p + new[i].tolist() for i, p in enumerate(prompts)]
  ids, mask, pos = _left_pad(full_rows, 8)
  full_hidden = _forward(model, ids, pos, mask)
  assert full_hidden.shape == (2, 8, 32)

  # Prefill 5 slots, then decode 3 tokens one at a time into an 8-slot cache.
  cache = model.init_cache(2, 8)
  assert len(cache.k) == len(cache.v) == 2                        # L layers
  assert cache.k[0].shape == cache.v[1].shape == (2, 2, 8, 8)     # [B, K, S, D]
  slot_mask = mask  # same left padding: the cache slots line up with the full sequence
  hidden, cache = _cached(model, ids[:, :5], pos[:, :5], slot_mask, cache, jnp.int32(0))
  real = np.asarray(mask[:, :5])
  np.testing.assert_allclose(np.asarray(hidden)[real], np.asarray(full_hidden[:, :5])[real],
                             atol=1e-5)
  for t in range(3):
    step = 5 + t
    hidden, cache = _cached(model, ids[:, step:step + 1], pos[:, step:step + 1], slot_mask,
                            cache, jnp.int32(step))
    np.testing.assert_allclose(hidden[:, 0], full_hidden[:, step], atol=1e-5)
  logits = model.logits(hidden)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 1, 97)


def test_left_padding_does_not_change_real_tokens(model):
  rng = np.random.default_rng(1)
  row = rng.integers(0, 97, 4).tolist()
  ids, mask, pos = _left_pad([rng.integers(0, 97, 7).tolist(), row], 7)
  batched = _forward(model, ids, pos, mask)
  alone = _forward(model, jnp.asarray([row], jnp.int32), jnp.arange(4, dtype=jnp.int32)[None],
                   jnp.ones((1, 4), bool))
  np.testing.assert_allclose(batched[1, 3:], alone[0], atol=1e-5)
  assert np.isfinite(np.asarray(batched)).all()  # fully masked pad queries stay finite


@nnx.jit
def _packed_forward(model, ids, pos, mask, segments):
  return model(ids, pos, attention_mask=mask, segment_ids=segments)[0]


def test_packed_rows_equal_each_sequence_alone(model):
  """Two rows packing 2 sequences each (+ padding): every real token's logits equal those of its
  sequence run alone (fp32, 1e-5); attention_mask still applies on top of the segments."""
  rng = np.random.default_rng(4)
  seqs = [rng.integers(0, 97, n).tolist() for n in (5, 4, 3)]
  layout = [[0, 1], [2, 0]]  # row -> sequences, left to right
  width = 11
  ids = np.zeros((2, width), np.int32)
  pos = np.zeros((2, width), np.int32)
  seg = np.zeros((2, width), np.int32)
  where = []  # (row, start, sequence)
  for r, members in enumerate(layout):
    col = 0
    for k, i in enumerate(members, start=1):
      n = len(seqs[i])
      ids[r, col:col + n], pos[r, col:col + n], seg[r, col:col + n] = seqs[i], np.arange(n), k
      where.append((r, col, i))
      col += n
  ids[seg == 0] = 13  # padding tokens are real ids: the segment mask must hide them
  mask = seg > 0
  packed = np.asarray(model.logits(_packed_forward(model, ids, pos, mask, seg)))
  # Alone: one sequence per row, right-padded (causal attention never sees the padding).
  a_ids = np.zeros((3, 5), np.int32)
  a_mask = np.zeros((3, 5), bool)
  for i, s in enumerate(seqs):
    a_ids[i, :len(s)], a_mask[i, :len(s)] = s, True
  a_pos = np.broadcast_to(np.arange(5, dtype=np.int32), (3, 5))
  alone = np.asarray(model.logits(_forward(model, a_ids, a_pos, a_mask)))
  for r, col, i in where:
    n = len(seqs[i])
    np.testing.assert_allclose(packed[r, col:col + n], alone[i, :n], atol=1e-5, rtol=0)
  assert np.isfinite(packed).all()  # padding queries see no key and stay finite
  # Without the segment mask the second sequence of a row would see the first one.
  leaky = np.asarray(model.logits(_forward(model, ids, pos, mask)))
  assert np.abs(leaky[0, 5:9] - alone[1, :4]).max() > 1e-3

  # attention_mask combines with the segments: hiding the first token of row 0's second
  # sequence changes that sequence's later tokens and nothing in the first one.
  hidden_key = mask.copy()
  hidden_key[0, 5] = False
  masked = np.asarray(model.logits(_packed_forward(model, ids, pos, hidden_key, seg)))
  np.testing.assert_allclose(masked[0, :5], packed[0, :5], atol=1e-6, rtol=0)
  assert np.abs(masked[0, 6:9] - packed[0, 6:9]).max() > 1e-3


def test_segment_ids_are_refused_with_a_cache_or_a_wrong_shape(model):
  tokens = jnp.zeros((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="segment_ids.*without a cache"):
    model(tokens, tokens, cache=model.init_cache(1, 2), cache_index=0, segment_ids=tokens)
  with pytest.raises(ValueError, match=r"segment_ids must be int32 \[B, T\]"):
    model(tokens, tokens, segment_ids=jnp.zeros((1, 3), jnp.int32))


def test_cache_needs_index(model):
  with pytest.raises(ValueError, match="cache_index"):
    model(jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), cache=model.init_cache(1, 2))


def test_remat_gives_same_loss_and_grads():
  cfg = ModelConfig.preset("tiny-qwen3", **dict(SMALL, num_hidden_layers=1))
  plain = Decoder(cfg, rngs=nnx.Rngs(0))
  remat = Decoder(cfg.replace(remat=True), rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 6)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))

  def loss(m):
    logits = m.logits(m(ids, pos)[0])
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grad_fn = nnx.jit(nnx.value_and_grad(loss))
  l1, g1 = grad_fn(plain)
  l2, g2 = grad_fn(remat)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)

  # The update step's patterns: params closed over by a lax.map (old/reference log-probs) or
  # a lax.scan (micro-batch gradients) and merged inside it; nnx.remat raised
  # TraceContextError in the first.
  graphdef, state = nnx.split(remat)

  def loss_row(state, row):
    m = nnx.merge(graphdef, state)
    return loss_of(m, row)

  def loss_of(m, row):
    logits = m.logits(m(row, pos[:1])[0])
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  @jax.jit
  def mapped(state):
    return jax.lax.map(lambda row: loss_row(state, row), ids[:, None])

  @jax.jit
  def scanned(state):
    def body(carry, row):
      return carry + jax.grad(loss_row)(state, row)["embed"]["embedding"], None
    return jax.lax.scan(body, jnp.zeros((97, 32)), ids[:, None])[0]

  rows = [ids[i:i + 1] for i in range(2)]
  np.testing.assert_allclose(mapped(state), [loss_of(plain, r) for r in rows], rtol=1e-6)
  expected = sum(nnx.grad(loss_of)(plain, r)["embed"]["embedding"][...] for r in rows)
  np.testing.assert_allclose(scanned(state), expected, atol=1e-6)


def test_bf16_params_and_compute_close_to_fp32():
  cfg = ModelConfig.preset("tiny-qwen2", **SMALL)
  f32 = Decoder(cfg, rngs=nnx.Rngs(0))
  bf16 = Decoder(cfg.replace(param_dtype="bfloat16", dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert bf16.layers[0].attn.q_proj.kernel.dtype == jnp.bfloat16
  ids = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 6)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
  mask = jnp.ones((2, 6), bool)
  h32, h16 = _forward(f32, ids, pos, mask), _forward(bf16, ids, pos, mask)
  assert h16.dtype == jnp.bfloat16 and h32.dtype == jnp.float32
  l32, l16 = f32.logits(h32), bf16.logits(h16)
  assert l16.dtype == jnp.float32
  # bf16 keeps ~3 significant digits; logits here are O(0.1).
  np.testing.assert_allclose(l16, l32, atol=2e-2)
  assert bf16.init_cache(1, 4).k[0].dtype == jnp.bfloat16


# Public parameter counts (incl. embeddings) of the checkpoints the presets mirror, in billions.
KNOWN_SIZES = {"qwen3-0.6b": 0.596, "qwen3-1.7b": 1.72, "qwen3-4b": 4.02, "qwen3-8b": 8.19,
               "r1-distill-qwen-1.5b": 1.78, "r1-distill-qwen-7b": 7.62}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_match_public_checkpoints(name):
  cfg = ModelConfig.preset(name)
  if name in KNOWN_SIZES:
    assert abs(cfg.num_params() / 1e9 - KNOWN_SIZES[name]) < 0.02, cfg.num_params()
  else:
    assert name.startswith("tiny-") and cfg.num_params() < 200_000


# Abstract init traces every layer: check one tied Qwen3 and one untied Qwen2 preset.
@pytest.mark.parametrize("name", ["qwen3-1.7b", "r1-distill-qwen-1.5b"])
def test_presets_build_abstractly(name):
  cfg = ModelConfig.preset(name)
  abstract = abstract_model(cfg)  # no memory: ShapeDtypeStructs only
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(int(np.prod(x.shape)) for x in leaves) == cfg.num_params()
  assert all(x.dtype == cfg.jnp_param_dtype for x in leaves)


def test_unknown_preset():
  with pytest.raises(ConfigError, match="qwen3-1.7b"):
    ModelConfig.preset("qwen-17b")


# ------------------------------------------------------------------ config.json parsing
BASE_HF = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 300,
           "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "tie_word_embeddings": True, "eos_token_id": [5, 6], "dtype": "bfloat16"}


def test_from_hf_rope_theta_and_rope_parameters_agree():
  legacy = ModelConfig.from_hf(dict(BASE_HF, rope_theta=5e5))
  tf5 = ModelConfig.from_hf(dict(BASE_HF, rope_parameters={"rope_type": "default",
                                                          "rope_theta": 5e5}))
  assert legacy == tf5 and legacy.rope_theta == 5e5
  assert legacy.eos_token_ids == (5, 6) and legacy.param_dtype == "bfloat16"
  assert legacy.qk_norm and not legacy.attention_bias


def test_from_hf_qwen2_defaults(tmp_path):
  raw = dict(BASE_HF, model_type="qwen2", architectures=["Qwen2ForCausalLM"], eos_token_id=7,
             torch_dtype="float32")
  del raw["head_dim"], raw["dtype"], raw["tie_word_embeddings"]
  (tmp_path / "config.json").write_text(json.dumps(raw))
  cfg = ModelConfig.from_hf(tmp_path)
  assert cfg.head_dim == 16 and cfg.attention_bias and not cfg.qk_norm
  assert cfg.eos_token_ids == (7,) and cfg.rope_theta == 10000.0 and not cfg.tie_word_embeddings
  assert ModelConfig.from_hf(cfg.to_hf_dict()) == cfg


@pytest.mark.parametrize("change, field", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
     "rope_parameters"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_parameters"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "model_type"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"dtype": "int8"}, "dtype"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_from_hf_rejects_unsupported(change, field):
  with pytest.raises(ConfigError, match=field):
    ModelConfig.from_hf(dict(BASE_HF, **change))


def test_from_hf_missing_field_and_file(tmp_path):
  raw = dict(BASE_HF)
  del raw["hidden_size"]
  with pytest.raises(ConfigError, match="hidden_size"):
    ModelConfig.from_hf(raw)
  with pytest.raises(FileNotFoundError, match="config.json"):
    ModelConfig.from_hf(tmp_path)


def test_model_bench_prints_its_table(capsys):
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "model_bench.py"
  spec = importlib.util.spec_from_file_location("model_bench", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  assert bench.main(["--preset=tiny-qwen2", "--batch=2", "--seq_len=16", "--steps=1",
                     "--prompt_len=4", "--decode_tokens=4", "--skip=sampler",
                     "--num_devices=1"]) == 0
  out = capsys.readouterr().out
  for row in ("train tokens/s", "train MFU", "decode tokens/s (model)"):
    assert row in out
  assert "n/a" in out  # CPU: no peak FLOP/s entry
