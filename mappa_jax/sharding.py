"""Device mesh and logical-axis sharding rules.

Three layers, as in MaxText: physical mesh axes (`data`, `fsdp`, `tensor`) <- logical axis
names (`embed`, `vocab`, `heads`, ...) <- per-tensor annotations. Model parameters carry their
logical names as `logical_axes` Variable metadata (see `mappa_jax.models.decoder`);
activations are annotated with `constrain(x, names)`, a no-op unless `activation_sharding`
is active. Everything is explicit data, so tests can compare partition specs to golden files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mappa_jax.schema import Section, field

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, major to minor; None = replicated).
DEFAULT_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}

log = logging.getLogger(__name__)


def _axis_size(v) -> bool:
  return v == -1 or v >= 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig(Section):
  """The `mesh` section: one device mesh shared by all agents (updated one after another).

  -1 = all remaining devices (one axis at most); the product must equal the device count.
  """
  data: int = field(1, "batch parallelism (replicated params)", check=_axis_size,
                    fix="Use -1 (all remaining devices) or a positive size.")
  fsdp: int = field(-1, "params and optimizer state sharded over this axis", check=_axis_size,
                    fix="Use -1 (all remaining devices) or a positive size.")
  tensor: int = field(1, "tensor (model) parallelism inside layers", check=_axis_size,
                      fix="Use -1 (all remaining devices) or a positive size.")

  def problems(self) -> list[tuple[str, str]]:
    if [self.data, self.fsdp, self.tensor].count(-1) > 1:
      return [("", "at most one axis may be -1 (fill); give the others explicit sizes")]
    return []


def mesh_shape(config: MeshConfig | Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves -1 and checks the product equals `num_devices`."""
  sizes = dict(dataclasses.asdict(config) if isinstance(config, MeshConfig) else config)
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh axes {sorted(unknown)} are not among {MESH_AXES}")
  dims = [int(sizes.get(a, 1)) for a in MESH_AXES]
  fill = [i for i, d in enumerate(dims) if d == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: at most one axis may be -1")
  known = math.prod(d for d in dims if d != -1)
  if any(d == 0 or d < -1 for d in dims):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: sizes must be positive or -1")
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: {num_devices} devices are not "
                       f"divisible by {known}")
    dims[fill[0]] = num_devices // known
  if math.prod(dims) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} devices, "
                     f"have {num_devices}")
  return tuple(dims)


def make_mesh(config: MeshConfig | Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (sharding propagated by XLA)."""
  devices = list(jax.devices() if devices is None else devices)
  dims = mesh_shape(config or MeshConfig(), len(devices))
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    # Topology-aware device order where the platform provides one.
    device_array = mesh_utils.create_device_mesh(dims, devices)
  else:
    device_array = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(device_array, MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: Mapping[str, Any] | None = None
                    ) -> PartitionSpec:
  """Maps logical names to a PartitionSpec.

  With `shape` and `mesh`, mesh axes of size 1 are dropped and an axis that does not divide
  its dimension is dropped (that dimension is then replicated, and a warning is logged:
  the golden-file test catches such silent replication for the shipped presets). A mesh axis
  is used at most once per spec (first dimension wins).
  """
  rules = DEFAULT_RULES if rules is None else rules
  used: set[str] = set()
  out = []
  for dim, name in enumerate(logical_axes):
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    target = rules[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = []
    size = 1
    for axis in axes:
      if axis in used:
        continue
      if mesh is not None:
        if axis not in mesh.shape:
          raise KeyError(f"rule {name!r} -> {axis!r}: not a mesh axis of {tuple(mesh.shape)}")
        n = mesh.shape[axis]
        if n == 1:
          continue
        if shape is not None and shape[dim] % (size * n):
          _warn_once(f"dimension {dim} ({name}, size {shape[dim]}) not divisible by mesh axis "
                     f"{axis!r} ({n}): not sharded over it")
          continue
        size *= n
      kept.append(axis)
    used.update(kept)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  while out and out[-1] is None:
    out.pop()
  return PartitionSpec(*out)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _WARNED:
    _WARNED.add(message)
    log.warning(message)


def _path_str(path) -> str:
  parts = []
  for p in path:
    key = getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))
    parts.append(str(key))
  return ".".join(parts)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _var_axes(var: nnx.Variable) -> tuple | None:
  return var.get_metadata().get("logical_axes")


def param_specs(tree, mesh: Mesh | None = None, rules: Mapping[str, Any] | None = None
                ) -> dict[str, PartitionSpec]:
  """Flat {'layers.0.attn.q_proj.kernel': PartitionSpec, ...} for a model or its nnx.State."""
  state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)[0]:
    if not _is_var(var):
      continue
    axes = _var_axes(var)
    if axes is None:
      raise ValueError(f"{_path_str(path)} has no logical_axes metadata")
    out[_path_str(path)] = logical_to_spec(axes, var.shape, mesh, rules)
  return out


def state_shardings(state, mesh: Mesh, rules: Mapping[str, Any] | None = None):
  """Same structure as `state` (nnx.State, abstract or concrete), leaves -> NamedSharding."""
  def one(var):
    return NamedSharding(mesh, logical_to_spec(_var_axes(var) or (), var.shape, mesh, rules))
  return jax.tree_util.tree_map(one, state, is_leaf=_is_var)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Any] | None = None
                ) -> nnx.Module:
  """Moves an existing model's parameters onto `mesh` (in place; returns the model)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  values = jax.tree_util.tree_map(lambda v: v[...], state, is_leaf=_is_var)
  placed = jax.device_put(values, shardings)
  nnx.update(model, placed)
  return model


def data_sharding(mesh: Mesh, rules: Mapping[str, Any] | None = None, ndim: int = 2
                  ) -> NamedSharding:
  """Sharding of a [B, T, ...] batch: batch over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), None, mesh,
                                             rules))


def unsharded_large_params(tree, mesh: Mesh, min_size: int = 4096,
                           rules: Mapping[str, Any] | None = None) -> list[str]:
  """Paths of parameters with >= min_size elements that would be fully replicated."""
  state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree
  bad = []
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)[0]:
    if _is_var(var) and math.prod(var.shape) >= min_size:
      spec = logical_to_spec(_var_axes(var) or (), var.shape, mesh, rules)
      if all(s is None for s in spec):
        bad.append(_path_str(path))
  return bad


# ---------------------------------------------------------------- activations
_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Mapping[str, Any] | None = None
                        ) -> Iterator[None]:
  """While active (at trace time), `constrain` pins activations to the mesh."""
  previous = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = None if mesh is None else (mesh, DEFAULT_RULES if rules is None else rules)
  try:
    yield
  finally:
    _ACTIVE.value = previous


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; identity outside `activation_sharding`."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
