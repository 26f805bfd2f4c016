"""Mesh construction, logical-axis rules (golden partition specs), sharded == unsharded forward.

Runs on the 8 fake CPU devices set up by tests/conftest.py. To regenerate the golden files
after an intended rule change: MAPPA_UPDATE_GOLDEN=1 pytest tests/models/test_sharding.py
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mappa_jax import sharding as shd
from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.models.hf_io import abstract_model

GOLDEN = pathlib.Path(__file__).parent / "golden"
MESH_2x2x2 = {"data": 2, "fsdp": 2, "tensor": 2}


def _spec_json(spec: P) -> list:
  return [list(s) if isinstance(s, tuple) else s for s in spec]


def test_mesh_shape_resolution():
  assert shd.mesh_shape(shd.MeshConfig(), 8) == (1, 8, 1)
  assert shd.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert shd.mesh_shape({"tensor": -1}, 4) == (1, 1, 4)
  for bad, match in [({"data": 3, "fsdp": -1}, "not divisible"),
                     ({"data": -1, "fsdp": -1}, "at most one"),
                     ({"data": 2, "fsdp": 2, "tensor": 1}, "needs 4 devices"),
                     ({"pipeline": 2}, "pipeline")]:
    with pytest.raises(ValueError, match=match):
      shd.mesh_shape(bad, 8)


def test_make_mesh_uses_auto_axes():
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 fake CPU devices"
  mesh = shd.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == MESH_2x2x2 and mesh.axis_names == shd.MESH_AXES
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  sub = shd.make_mesh({"fsdp": 2}, jax.devices()[:2])
  assert dict(sub.shape) == {"data": 1, "fsdp": 2, "tensor": 1}


def test_logical_to_spec_rules():
  mesh = shd.make_mesh(MESH_2x2x2)
  assert shd.logical_to_spec(("act_batch", "act_seq", "act_embed"), (4, 8, 64), mesh) == \
      P(("data", "fsdp"))
  # 2 rows cannot be split 4 ways: keep the axis that divides.
  assert shd.logical_to_spec(("act_batch", None), (2, 8), mesh) == P("data")
  # A mesh axis is used once per spec.
  assert shd.logical_to_spec(("embed", "embed"), (64, 64), mesh) == P("fsdp")
  with pytest.raises(KeyError, match="no sharding rule"):
    shd.logical_to_spec(("nonsense",))


@pytest.mark.parametrize("preset, mesh_axes", [
    ("tiny-qwen2", MESH_2x2x2),
    ("tiny-qwen3", MESH_2x2x2),
    ("qwen3-1.7b", {"data": 1, "fsdp": 4, "tensor": 2}),
])
def test_partition_specs_match_golden_and_shard_every_large_param(preset, mesh_axes):
  mesh = shd.make_mesh(mesh_axes)
  abstract = abstract_model(ModelConfig.preset(preset))
  if preset.startswith("qwen3-"):
    # 28 identical layers: the golden file keeps layer 0 and the shared tensors.
    abstract.layers = nnx.List(list(abstract.layers)[:1])
  specs = {k: _spec_json(v) for k, v in sorted(shd.param_specs(abstract, mesh).items())}
  name = f"{preset}_" + "_".join(f"{a}{n}" for a, n in mesh_axes.items()) + ".json"
  path = GOLDEN / name
  if os.environ.get("MAPPA_UPDATE_GOLDEN"):
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(specs, indent=1, sort_keys=True) + "\n")
  assert specs == json.loads(path.read_text()), f"partition specs changed; see {path}"
  # Silent replication guard: every tensor with >= 4096 elements is split over some axis.
  assert shd.unsharded_large_params(abstract, mesh, min_size=4096) == []


def test_replication_guard_catches_replicated_params():
  mesh = shd.make_mesh(MESH_2x2x2)
  abstract = abstract_model(ModelConfig.preset("tiny-qwen3"))
  rules = dict(shd.DEFAULT_RULES, vocab=None, embed=None)
  assert shd.unsharded_large_params(abstract, mesh, rules=rules) == ["embed.embedding"]


def test_sharded_forward_equals_unsharded():
  cfg = ModelConfig.preset("tiny-qwen2")  # has q/k/v biases; untied head
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (4, 8)), jnp.int32)
  mask = jnp.asarray(np.arange(8)[None, :] >= np.array([[0], [3], [1], [5]]))
  pos = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)

  def forward(m, ids, pos, mask):
    return m.logits(m(ids, pos, attention_mask=mask)[0])

  expected = nnx.jit(forward)(model, ids, pos, mask)

  mesh = shd.make_mesh(MESH_2x2x2)
  shd.shard_model(model, mesh)
  q_kernel = model.layers[0].attn.q_proj.kernel[...]
  assert q_kernel.sharding == NamedSharding(mesh, P("fsdp", "tensor"))
  assert len(q_kernel.addressable_shards) == 8
  assert q_kernel.addressable_shards[0].data.shape == (32, 2, 16)
  batch = shd.data_sharding(mesh)
  ids_s, pos_s, mask_s = (jax.device_put(x, batch) for x in (ids, pos, mask))
  with shd.activation_sharding(mesh):
    got = nnx.jit(forward)(model, ids_s, pos_s, mask_s)
  assert got.sharding.mesh == mesh
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
