"""HF safetensors import/export: bit-identical round trips, sharded files, bad input."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mappa_jax import sharding as shd
from mappa_jax.models import hf_io
from mappa_jax.models.config import ConfigError
from mappa_jax.models.hf_io import CheckpointError, export_hf, load_hf, read_hf_tensors
from mappa_jax.models.tiny import TINY_TOKENIZER_DIR, write_tiny_model


def assert_same_tensors(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    assert a[key].shape == b[key].shape, key
    # Bit-identical: compare the raw bytes, not values.
    assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.parametrize("variant", ["qwen3_tied_gqa", "qwen3_untied_mha", "qwen2_untied_gqa",
                                     "qwen2_tied_mqa"])
def test_round_trip_hf_nnx_hf_is_bit_identical(hf_dirs, variant, tmp_path):
  model = load_hf(hf_dirs[variant])
  out = export_hf(model, tmp_path / "export")
  assert_same_tensors(read_hf_tensors(hf_dirs[variant]), read_hf_tensors(out))
  assert hf_io.load_hf_config(out) == model.config


def test_round_trip_bf16(hf_bf16_dir, tmp_path):
  model = load_hf(hf_bf16_dir)
  assert model.config.param_dtype == "bfloat16"
  assert model.layers[0].attn.q_proj.kernel.dtype == jnp.bfloat16
  original = read_hf_tensors(hf_bf16_dir)
  assert original["model.embed_tokens.weight"].dtype.name == "bfloat16"
  assert_same_tensors(original, read_hf_tensors(export_hf(model, tmp_path / "e")))


def test_sharded_checkpoint_loads_like_single_file(hf_dirs, hf_sharded_dir, tmp_path):
  assert (hf_sharded_dir / hf_io.INDEX_FILE).is_file()
  single = nnx.state(load_hf(hf_dirs["qwen2_untied_gqa"]))
  sharded_model = load_hf(hf_sharded_dir)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(nnx.state(sharded_model))):
    np.testing.assert_array_equal(a, b)
  # Export with small shards: index + several files, and it loads back identically.
  out = export_hf(sharded_model, tmp_path / "multi", max_shard_bytes=30_000)
  index = json.loads((out / hf_io.INDEX_FILE).read_text())
  files = set(index["weight_map"].values())
  assert len(files) > 1 and all((out / f).is_file() for f in files)
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in read_hf_tensors(out).values())
  assert_same_tensors(read_hf_tensors(hf_sharded_dir), read_hf_tensors(out))


def test_load_with_mesh_places_params_with_their_shardings(hf_dirs):
  mesh = shd.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  model = load_hf(hf_dirs["qwen3_tied_gqa"], mesh=mesh)
  specs = shd.param_specs(model, mesh)
  flat = hf_io._flat_vars(nnx.state(model))
  assert len(flat) == len(specs)
  for name, var in flat:
    assert var[...].sharding == jax.sharding.NamedSharding(mesh, specs[name]), name
  # 60 / 2 (fsdp) and 3 kv heads (not divisible by tensor=2 -> replicated on that axis).
  assert specs["layers.0.attn.q_proj.kernel"] == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert specs["layers.0.attn.k_proj.kernel"] == jax.sharding.PartitionSpec("fsdp")


def test_export_is_atomic_replace_and_copies_tokenizer(tiny_qwen3_dir, tmp_path):
  model = load_hf(tiny_qwen3_dir)
  target = tmp_path / "ckpt"
  target.mkdir()
  (target / "stale.bin").write_text("old checkpoint")
  out = export_hf(model, target, tokenizer_dir=TINY_TOKENIZER_DIR)
  names = sorted(p.name for p in out.iterdir())
  assert "stale.bin" not in names
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    export_hf(model, tmp_path / "x", tokenizer_dir=tmp_path / "ckpt" / "nowhere")
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_write_tiny_model_is_deterministic(tiny_qwen3_dir, tmp_path):
  again = write_tiny_model(tmp_path / "again", architecture="qwen3", seed=0)
  assert_same_tensors(read_hf_tensors(tiny_qwen3_dir), read_hf_tensors(again))
  config = json.loads((again / "config.json").read_text())
  assert config["model_type"] == "qwen3" and config["tie_word_embeddings"]
  other = write_tiny_model(tmp_path / "q2", architecture="qwen2", seed=1, with_tokenizer=False,
                           num_hidden_layers=1)
  assert not (other / "tokenizer.json").exists()
  tensors = read_hf_tensors(other)
  assert "model.layers.0.self_attn.q_proj.bias" in tensors and "lm_head.weight" in tensors
  assert "model.layers.1.mlp.up_proj.weight" not in tensors


# ------------------------------------------------------------------ bad input
def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_missing_directory_and_weights(tmp_path, hf_dirs):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf(tmp_path / "nope")
  d = _copy(hf_dirs["qwen3_tied_gqa"], tmp_path / "m")
  (d / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    load_hf(d)


def test_truncated_safetensors_names_the_file_and_the_fix(tmp_path, hf_dirs):
  d = _copy(hf_dirs["qwen3_tied_gqa"], tmp_path / "m")
  weights = d / "model.safetensors"
  data = weights.read_bytes()
  for size in (len(data) // 2, 5):  # data cut short; header cut short
    weights.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable .*truncated"
                       r".*download or export the checkpoint again"):
      load_hf(d)
  assert weights.stat().st_size == 5  # read-only: the bad file is left for inspection


def test_index_pointing_to_missing_shard(tmp_path, hf_sharded_dir):
  d = _copy(hf_sharded_dir, tmp_path / "m")
  shard = sorted(d.glob("model-*.safetensors"))[0]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    load_hf(d)


def test_shapes_that_do_not_fit_the_config(tmp_path, hf_dirs):
  d = _copy(hf_dirs["qwen2_untied_gqa"], tmp_path / "m")
  config = json.loads((d / "config.json").read_text())
  config["intermediate_size"] = 80
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"model\.safetensors.*mlp\.\w+_proj\.weight"):
    load_hf(d)
  config["intermediate_size"], config["vocab_size"] = 72, 320
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="vocab_size=320"):
    load_hf(d)


def test_tensor_set_that_does_not_fit_the_config(tmp_path, hf_dirs):
  d = _copy(hf_dirs["qwen2_untied_gqa"], tmp_path / "m")
  config = json.loads((d / "config.json").read_text())
  config["num_hidden_layers"] = 1
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="model.layers.1"):
    load_hf(d)
  config["num_hidden_layers"] = 3
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="lacks"):
    load_hf(d)


def test_unsupported_architecture(tmp_path, hf_dirs):
  d = _copy(hf_dirs["qwen3_tied_gqa"], tmp_path / "m")
  config = json.loads((d / "config.json").read_text())
  config["model_type"], config["architectures"] = "mistral", ["MistralForCausalLM"]
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=r"config\.json.*model_type"):
    load_hf(d)


def test_tokenizer_larger_than_model_vocab(tmp_path, hf_dirs):
  d = _copy(hf_dirs["qwen3_tied_gqa"], tmp_path / "m")  # vocab 300 < tiny tokenizer's 509
  shutil.copy(TINY_TOKENIZER_DIR / "tokenizer.json", d / "tokenizer.json")
  with pytest.raises(CheckpointError, match=r"tokenizer\.json.*vocab_size=300"):
    load_hf(d)
