"""Hugging Face safetensors <-> NNX `Decoder` parameters.

One mapping table (`_MAPPING`) drives both directions. Loading builds the model abstractly
(`nnx.eval_shape`), then reads one tensor at a time from the (possibly sharded) safetensors
files and places it straight onto its target sharding with `jax.make_array_from_callback`:
peak host memory is one checkpoint tensor in its file dtype, never a host copy of the model.
Exporting gathers one tensor at a time and writes shards + index + config.json (+ tokenizer
files) into a temporary directory that is renamed into place (readers never see a partial
checkpoint, which matters for SGLang `update_weights_from_disk`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mappa_jax import sharding as shd
from mappa_jax.models.config import ConfigError, ModelConfig
from mappa_jax.models.decoder import Decoder

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "generation_config.json")
# Keys some checkpoints carry that hold no learned state.
_IGNORED_HF_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


# (nnx path regex, HF key template, transform). Transforms:
#   'linear': HF weight [prod(out), prod(in)] <-> kernel [*in, *out]  (n_in = leading dims)
#   'reshape': same elements, HF keeps them flat (biases [N*D] <-> [N, D]) or identical.
_MAPPING: tuple[tuple[str, str, str, int], ...] = (
    (r"embed\.embedding", "model.embed_tokens.weight", "reshape", 0),
    (r"final_norm\.scale", "model.norm.weight", "reshape", 0),
    (r"lm_head\.kernel", "lm_head.weight", "linear", 1),
    (r"layers\.(\d+)\.input_norm\.scale", "model.layers.{0}.input_layernorm.weight", "reshape", 0),
    (r"layers\.(\d+)\.post_attn_norm\.scale", "model.layers.{0}.post_attention_layernorm.weight",
     "reshape", 0),
    (r"layers\.(\d+)\.attn\.(q|k|v)_proj\.kernel", "model.layers.{0}.self_attn.{1}_proj.weight",
     "linear", 1),
    (r"layers\.(\d+)\.attn\.(q|k|v)_proj\.bias", "model.layers.{0}.self_attn.{1}_proj.bias",
     "reshape", 0),
    (r"layers\.(\d+)\.attn\.o_proj\.kernel", "model.layers.{0}.self_attn.o_proj.weight",
     "linear", 2),
    (r"layers\.(\d+)\.attn\.(q|k)_norm\.scale", "model.layers.{0}.self_attn.{1}_norm.weight",
     "reshape", 0),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.kernel", "model.layers.{0}.mlp.{1}_proj.weight",
     "linear", 1),
)


class CheckpointError(ValueError):
  """A checkpoint on disk does not match its config (or is incomplete)."""


@contextlib.contextmanager
def _open_safetensors(path: Path):
  """safe_open(path) whose format errors (a truncated or corrupt file) name the file and the fix
  instead of surfacing as a bare SafetensorError."""
  try:
    with safe_open(os.fspath(path), framework="numpy") as f:
      yield f
  except SafetensorError as e:
    raise CheckpointError(
        f"{path}: not a readable safetensors file ({e}); it is probably truncated (an "
        "interrupted download or copy) or corrupt: download or export the checkpoint again"
        ) from e


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """How one NNX parameter is stored in HF format."""
  nnx_path: str
  hf_key: str
  transform: str
  n_in: int
  shape: tuple[int, ...]  # NNX shape

  @property
  def hf_shape(self) -> tuple[int, ...]:
    if self.transform == "linear":
      return (math.prod(self.shape[self.n_in:]), math.prod(self.shape[:self.n_in]))
    if len(self.shape) > 1 and self.nnx_path.endswith(".bias"):
      return (math.prod(self.shape),)
    return self.shape

  def to_nnx(self, hf_array: np.ndarray) -> np.ndarray:
    """A view (no copy for the layouts used here) in the NNX layout."""
    if self.transform == "linear":
      return np.reshape(hf_array.T, self.shape)
    return np.reshape(hf_array, self.shape)

  def to_hf(self, array: np.ndarray) -> np.ndarray:
    if self.transform == "linear":
      in_size = math.prod(self.shape[:self.n_in])
      return np.ascontiguousarray(np.reshape(array, (in_size, -1)).T)
    return np.ascontiguousarray(np.reshape(array, self.hf_shape))


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _flat_vars(state) -> list[tuple[str, nnx.Variable]]:
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)[0]
  return [(shd._path_str(path), var) for path, var in flat if _is_var(var)]


def tensor_maps(state) -> list[TensorMap]:
  """The HF name/layout of every parameter of a Decoder state (abstract or concrete)."""
  out = []
  for path, var in _flat_vars(state):
    for pattern, template, transform, n_in in _MAPPING:
      m = re.fullmatch(pattern, path)
      if m:
        out.append(TensorMap(path, template.format(*m.groups()), transform, n_in,
                             tuple(var.shape)))
        break
    else:
      raise KeyError(f"parameter {path} has no HF mapping (update hf_io._MAPPING)")
  return out


# ------------------------------------------------------------------------------------ config
def load_hf_config(model_dir: str | os.PathLike, **overrides) -> ModelConfig:
  """ModelConfig from `model_dir/config.json`; EOS ids merged with generation_config.json."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    raise FileNotFoundError(f"{model_dir}: model directory does not exist")
  cfg = ModelConfig.from_hf(model_dir / "config.json", **overrides)
  gen_path = model_dir / "generation_config.json"
  if "eos_token_ids" not in overrides and gen_path.is_file():
    gen = json.loads(gen_path.read_text())
    eos = gen.get("eos_token_id")
    extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    merged = tuple(dict.fromkeys(list(cfg.eos_token_ids) + [int(i) for i in extra]))
    cfg = cfg.replace(eos_token_ids=merged)
  return cfg


def _check_tokenizer_vocab(model_dir: Path, cfg: ModelConfig) -> None:
  tok_path = model_dir / "tokenizer.json"
  if not tok_path.is_file():
    return
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  n = Tokenizer.from_file(str(tok_path)).get_vocab_size(with_added_tokens=True)
  if n > cfg.vocab_size:
    raise CheckpointError(
        f"{tok_path}: tokenizer has {n} tokens but {model_dir / 'config.json'} field "
        f"vocab_size={cfg.vocab_size}: token ids would index past the embedding; use the "
        "tokenizer that belongs to this checkpoint")


# ------------------------------------------------------------------------------------ import
def _weight_files(model_dir: Path) -> dict[str, Path]:
  """HF key -> safetensors file holding it."""
  index_path = model_dir / INDEX_FILE
  single = model_dir / SINGLE_FILE
  if index_path.is_file():
    try:
      weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index_path}: not a safetensors index ({e!r})") from e
    files = {}
    for key, name in weight_map.items():
      path = model_dir / name
      if not path.is_file():
        raise FileNotFoundError(f"{index_path} lists {name} (for {key}) but {path} is missing")
      files[key] = path
    return files
  if single.is_file():
    with _open_safetensors(single) as f:
      return {key: single for key in f.keys()}
  raise FileNotFoundError(
      f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are "
      "supported; convert .bin files with transformers' save_pretrained)")


def abstract_model(cfg: ModelConfig) -> Decoder:
  """A Decoder whose parameters are ShapeDtypeStructs (no memory, no compute)."""
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def load_hf(model_dir: str | os.PathLike, *, mesh: Mesh | None = None, param_dtype=None,
            dtype=None, rules: Mapping[str, Any] | None = None, **config_overrides) -> Decoder:
  """Loads an HF Qwen2/Qwen3 safetensors checkpoint into a Decoder.

  Args:
    model_dir: directory with config.json and model.safetensors or a sharded index.
    mesh: parameters are placed with `mappa_jax.sharding` rules on this mesh (else on the
      first device).
    param_dtype: 'float32'/'bfloat16' storage (default: the checkpoint's dtype).
    dtype: compute dtype (default: param_dtype).
    rules: logical-axis rules (default `sharding.DEFAULT_RULES`).
    **config_overrides: other ModelConfig fields (e.g. remat=True).
  """
  model_dir = Path(model_dir)
  overrides = dict(config_overrides)
  param_dtype = param_dtype or None  # '' (an unset config field) means "the checkpoint's"
  dtype = dtype or None
  if param_dtype is not None:
    overrides["param_dtype"] = str(np.dtype(param_dtype)) if not isinstance(param_dtype, str) \
        else param_dtype
  if dtype is not None or param_dtype is not None:
    overrides["dtype"] = (dtype if isinstance(dtype, str) else str(np.dtype(dtype))) \
        if dtype is not None else overrides["param_dtype"]
  cfg = load_hf_config(model_dir, **overrides)
  _check_tokenizer_vocab(model_dir, cfg)
  files = _weight_files(model_dir)

  graphdef, abs_state = nnx.split(abstract_model(cfg))
  maps = tensor_maps(abs_state)
  expected = {m.hf_key for m in maps}
  extra = sorted(k for k in files if k not in expected and not _IGNORED_HF_KEYS.match(k)
                 and not (cfg.tie_word_embeddings and k == "lm_head.weight"))
  if extra:
    raise CheckpointError(
        f"{model_dir}: {len(extra)} tensors are not part of a {cfg.architecture} model with this "
        f"config.json (first: {extra[:5]}); check model_type / num_hidden_layers / "
        "tie_word_embeddings / attention_bias")
  missing = sorted(expected - set(files))
  if missing:
    raise CheckpointError(f"{model_dir}: checkpoint lacks {len(missing)} tensors required by "
                          f"config.json (first: {missing[:5]})")

  shardings = {}
  if mesh is not None:
    shardings = {path: NamedSharding(mesh, spec)
                 for path, spec in shd.param_specs(abs_state, mesh, rules).items()}
  default_sharding = SingleDeviceSharding(jax.devices()[0])

  values: dict[str, jax.Array] = {}
  by_file: dict[Path, list[TensorMap]] = {}
  for m in maps:
    by_file.setdefault(files[m.hf_key], []).append(m)
  for path, group in by_file.items():
    with _open_safetensors(path) as f:
      for m in group:
        host = f.get_tensor(m.hf_key)
        if tuple(host.shape) != m.hf_shape:
          raise CheckpointError(_shape_message(path, m, host.shape, cfg))
        target_dtype = cfg.jnp_param_dtype
        src = m.to_nnx(host)
        sharding = shardings.get(m.nnx_path, default_sharding)
        values[m.nnx_path] = jax.make_array_from_callback(
            m.shape, sharding,
            lambda idx, src=src: np.asarray(src[idx], dtype=target_dtype))
        del host, src

  def fill(path, var):
    return var.replace(value=values[shd._path_str(path)])
  state = jax.tree_util.tree_map_with_path(fill, abs_state, is_leaf=_is_var)
  return nnx.merge(graphdef, state)


def _shape_message(path: Path, m: TensorMap, got, cfg: ModelConfig) -> str:
  hint = ("hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size")
  if m.hf_key in ("model.embed_tokens.weight", "lm_head.weight"):
    hint = f"vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size}"
  return (f"{path}: tensor {m.hf_key} has shape {tuple(got)} but config.json implies "
          f"{m.hf_shape} (check {hint})")


# ------------------------------------------------------------------------------------ export
def _host_array(value: jax.Array) -> np.ndarray:
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    # Multi-host: gather the global array (every process gets a copy of this one tensor).
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    value = multihost_utils.process_allgather(value, tiled=True)
  return np.asarray(jax.device_get(value))


def _plan_shards(maps: list[TensorMap], nbytes: dict[str, int], max_shard_bytes: int
                 ) -> list[list[TensorMap]]:
  shards: list[list[TensorMap]] = [[]]
  size = 0
  for m in maps:
    if shards[-1] and size + nbytes[m.hf_key] > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(m)
    size += nbytes[m.hf_key]
  return shards


def export_hf(model: Decoder, out_dir: str | os.PathLike, *,
              tokenizer_dir: str | os.PathLike | None = None,
              max_shard_bytes: int = 4 * 1024**3) -> Path:
  """Writes `model` as an HF checkpoint (transformers / SGLang loadable) into `out_dir`.

  Tensors keep the parameter dtype. Files: config.json, model.safetensors (or
  model-0000i-of-0000n.safetensors + model.safetensors.index.json when larger than
  `max_shard_bytes`), and the tokenizer files found in `tokenizer_dir`. The directory appears
  atomically: everything is written to a sibling temp dir first, then renamed.
  """
  out_dir = Path(out_dir).absolute()
  cfg: ModelConfig = model.config
  state = nnx.state(model, nnx.Param)
  maps = tensor_maps(state)
  values = dict(_flat_vars(state))
  nbytes = {m.hf_key: math.prod(m.shape) * np.dtype(values[m.nnx_path].dtype).itemsize
            for m in maps}
  shards = _plan_shards(maps, nbytes, max_shard_bytes)

  if jax.process_index() != 0:
    # Multi-host: every process joins the per-tensor gathers; process 0 writes.
    for m in maps:
      _host_array(values[m.nnx_path][...])
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    weight_map = {}
    for i, group in enumerate(shards):
      name = SINGLE_FILE if len(shards) == 1 else \
          f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      tensors = {m.hf_key: m.to_hf(_host_array(values[m.nnx_path][...])) for m in group}
      save_file(tensors, str(tmp / name), metadata={"format": "pt"})
      del tensors
      weight_map.update({m.hf_key: name for m in group})
    if len(shards) > 1:
      index = {"metadata": {"total_size": sum(nbytes.values())},
               "weight_map": dict(sorted(weight_map.items()))}
      (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    if tokenizer_dir is not None:
      tokenizer_dir = Path(tokenizer_dir)
      copied = [n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
      if "tokenizer.json" not in copied:
        raise FileNotFoundError(f"{tokenizer_dir}: tokenizer_dir has no tokenizer.json")
      for n in copied:
        shutil.copy2(tokenizer_dir / n, tmp / n)
    _atomic_replace_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _atomic_replace_dir(src: Path, dst: Path) -> None:
  """Renames src to dst; an existing dst is swapped out first (rename cannot replace a
  non-empty directory), so dst is at every instant either the old or the new checkpoint
  except for the window between the two renames."""
  if dst.exists():
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(src, dst)


def read_hf_tensors(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of an HF safetensors checkpoint (small models / tests only)."""
  model_dir = Path(model_dir)
  out = {}
  files = _weight_files(model_dir)
  for path in sorted(set(files.values())):
    with _open_safetensors(path) as f:
      for key in f.keys():
        out[key] = f.get_tensor(key)
  return out


__all__ = ["load_hf", "load_hf_config", "export_hf", "abstract_model", "tensor_maps",
           "read_hf_tensors", "CheckpointError", "ConfigError", "TensorMap"]
