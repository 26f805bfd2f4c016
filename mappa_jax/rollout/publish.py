"""Publishing policy weights for rollout servers, and loading them back.

A published version is one directory, written atomically (temp dir, then rename):

  <root>/<agent>/v00000012/
    publish.json   manifest: agent, version, what is inside
    params/        Orbax checkpoint of the Decoder's nnx.Param state (our server loads this:
                   exact dtypes, restored straight onto the server's shardings)
    hf/            HF safetensors export (config.json, *.safetensors, tokenizer files):
                   what a real SGLang server loads through /update_weights_from_disk

Readers therefore never see a half-written version. Old versions beyond `keep_last` are
deleted after a newer one is complete.

`load_params(path, like=...)` accepts any of: a published version dir, an Orbax checkpoint dir,
or an HF model dir, and returns an nnx.State shaped, typed and placed like `like`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
from flax import nnx

from mappa_jax.models import hf_io

MANIFEST = "publish.json"
ORBAX_SUBDIR = "params"
HF_SUBDIR = "hf"
_VERSION_DIR = re.compile(r"^v(\d{8,})$")
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def version_dirname(version: int) -> str:
  return f"v{int(version):08d}"


@dataclasses.dataclass(frozen=True)
class PublishedVersion:
  """Where one published version lives.

  Attributes:
    agent: agent name.
    version: integer weight version.
    path: the version directory.
    orbax_dir: Orbax checkpoint of the params (None when not written).
    hf_dir: HF safetensors export (None when not written).
  """
  agent: str
  version: int
  path: Path
  orbax_dir: Path | None
  hf_dir: Path | None

  def path_for(self, fmt: str) -> Path:
    """The directory a server should load: fmt 'hf' or 'orbax'."""
    d = {"hf": self.hf_dir, "orbax": self.orbax_dir}.get(fmt, "bad")
    if d == "bad":
      raise ValueError(f"format {fmt!r}: use 'hf' or 'orbax'")
    if d is None:
      raise ValueError(f"version {self.version} of agent {self.agent!r} has no {fmt} copy; "
                       f"enable write_{fmt} on the WeightPublisher")
    return d


def params_state(params: Any) -> nnx.State:
  """A Decoder (or any nnx.Module) -> its nnx.Param state; an nnx.State is returned as is."""
  if isinstance(params, nnx.Module):
    return nnx.state(params, nnx.Param)
  if isinstance(params, nnx.State):
    return params
  raise TypeError(f"params must be an nnx.Module or nnx.State, got {type(params).__name__}")


def check_compatible(new: nnx.State, like: nnx.State, what: str = "params", *,
                     check_dtype: bool = True) -> None:
  """Raises ValueError naming the first leaf whose path, shape (or dtype) differs."""
  new_leaves = dict(jax.tree_util.tree_flatten_with_path(new)[0])
  like_leaves = dict(jax.tree_util.tree_flatten_with_path(like)[0])
  if new_leaves.keys() != like_leaves.keys():
    missing = [jax.tree_util.keystr(k) for k in like_leaves.keys() - new_leaves.keys()]
    extra = [jax.tree_util.keystr(k) for k in new_leaves.keys() - like_leaves.keys()]
    raise ValueError(f"{what}: parameter tree differs from the served model "
                     f"(missing {missing[:3]}, unexpected {extra[:3]}): wrong architecture?")
  for k, a in new_leaves.items():
    b = like_leaves[k]
    if a.shape != b.shape:
      raise ValueError(f"{what}{jax.tree_util.keystr(k)}: shape {a.shape} != served "
                       f"{b.shape}: wrong model size?")
    if check_dtype and a.dtype != b.dtype:
      raise ValueError(f"{what}{jax.tree_util.keystr(k)}: dtype {a.dtype} != served "
                       f"{b.dtype}: cast before publishing")


def as_model(params: Any, template: nnx.Module | None):
  """A Decoder with `params` as its weights (HF export needs a module, not a State)."""
  if isinstance(params, nnx.Module):
    return params
  if template is None:
    raise ValueError("exporting an nnx.State to HF needs a template model of the same "
                     "architecture: pass templates={agent: decoder} to WeightPublisher")
  graphdef, _, rest = nnx.split(template, nnx.Param, ...)
  return nnx.merge(graphdef, params, rest)


def save_params(state: nnx.State, out_dir: str | os.PathLike) -> Path:
  """Blocking Orbax save of a params State into `out_dir` (which must not exist)."""
  import orbax.checkpoint as ocp
  out_dir = Path(out_dir).absolute()
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(out_dir, state)
  ckptr.wait_until_finished()
  return out_dir


def _abstract(like: nnx.State):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)


def is_orbax_dir(path: Path) -> bool:
  return path.is_dir() and any((path / m).exists() for m in _ORBAX_MARKERS)


def is_hf_dir(path: Path) -> bool:
  return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def detect_format(path: str | os.PathLike) -> str:
  """'published' | 'orbax' | 'hf' for a weights directory; ValueError otherwise."""
  path = Path(path)
  if not path.is_dir():
    raise ValueError(f"model_path {str(path)!r} is not a directory")
  if (path / MANIFEST).is_file():
    return "published"
  if is_orbax_dir(path):
    return "orbax"
  if is_hf_dir(path):
    return "hf"
  raise ValueError(
      f"model_path {str(path)!r} is neither a published version (publish.json), an Orbax "
      f"checkpoint ({' / '.join(_ORBAX_MARKERS)}) nor an HF model dir (config.json + "
      "*.safetensors)")


def load_params(path: str | os.PathLike, *, like: nnx.State,
                prefer: str = "orbax") -> tuple[nnx.State, str]:
  """Reads weights from disk as an nnx.State shaped, typed and sharded like `like`.

  Args:
    path: published version dir, Orbax checkpoint dir, or HF model dir.
    like: the params currently served (only shapes, dtypes and shardings are used).
    prefer: for a published version holding both copies, which one to read.
  Returns:
    (state, format actually read: 'orbax' or 'hf').
  """
  path = Path(path)
  fmt = detect_format(path)
  if fmt == "published":
    orbax_dir, hf_dir = path / ORBAX_SUBDIR, path / HF_SUBDIR
    order = [orbax_dir, hf_dir] if prefer == "orbax" else [hf_dir, orbax_dir]
    for d in order:
      if d.is_dir():
        return load_params(d, like=like)
    raise ValueError(f"{path}: published version holds neither {ORBAX_SUBDIR}/ nor "
                     f"{HF_SUBDIR}/")
  if fmt == "orbax":
    import orbax.checkpoint as ocp
    ckptr = ocp.StandardCheckpointer()
    try:
      state = ckptr.restore(path.absolute(), _abstract(like))
    except (ValueError, KeyError) as e:
      raise ValueError(f"Orbax checkpoint {path} does not match the served model: {e}") from e
    check_compatible(state, like, what=f"{path}")
    return state, "orbax"
  model = hf_io.load_hf(path)
  state = params_state(model)
  check_compatible(state, like, what=f"{path}", check_dtype=False)
  # HF safetensors may be stored in another dtype than the served params: cast, then place.
  state = jax.tree.map(lambda x, l: x.astype(l.dtype), state, like)
  state = jax.tree.map(lambda x, l: jax.device_put(x, l.sharding), state, like)
  return state, "hf"


class WeightPublisher:
  """Writes each agent's weights, one atomic directory per version.

  Args:
    root: directory for all agents (a tmpfs like /dev/shm speeds up big models).
    templates: agent -> Decoder of that agent's architecture; needed to HF-export an
      nnx.State (a Decoder passed to write() needs none). A single Decoder serves all agents.
    tokenizer_dirs: agent -> tokenizer dir copied into every HF export (SGLang needs it next
      to the weights); a single path serves all agents.
    write_orbax: write the Orbax params checkpoint (what our server loads).
    write_hf: write the HF safetensors export (what SGLang loads).
    keep_last: complete versions kept per agent; older ones are deleted (>= 1).
  """

  def __init__(self, root: str | os.PathLike, *,
               templates: Mapping[str, nnx.Module] | nnx.Module | None = None,
               tokenizer_dirs: Mapping[str, str | os.PathLike] | str | os.PathLike | None = None,
               write_orbax: bool = True, write_hf: bool = True, keep_last: int = 2):
    if not (write_orbax or write_hf):
      raise ValueError("WeightPublisher: enable write_orbax or write_hf (or both)")
    if keep_last < 1:
      raise ValueError(f"keep_last={keep_last}: keep at least the newest version")
    self.root = Path(root).absolute()
    self.templates = templates
    self.tokenizer_dirs = tokenizer_dirs
    self.write_orbax = write_orbax
    self.write_hf = write_hf
    self.keep_last = keep_last

  def _per_agent(self, value, agent):
    if value is None or isinstance(value, (str, os.PathLike, nnx.Module)):
      return value
    return value.get(agent)

  def agent_dir(self, agent: str) -> Path:
    if not agent or "/" in agent or agent.startswith("."):
      raise ValueError(f"agent name {agent!r} cannot be used as a directory name")
    return self.root / agent

  def write(self, agent: str, params: Any, version: int) -> PublishedVersion:
    """Writes version `version` of `agent` (Decoder or nnx.State) and returns where it is."""
    version = int(version)
    if version < 0:
      raise ValueError(f"version={version}: versions are non-negative integers")
    state = params_state(params)
    agent_dir = self.agent_dir(agent)
    agent_dir.mkdir(parents=True, exist_ok=True)
    final = agent_dir / version_dirname(version)
    tmp = agent_dir / f".tmp-{version_dirname(version)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
      t0 = time.perf_counter()
      if self.write_orbax:
        save_params(state, tmp / ORBAX_SUBDIR)
      t1 = time.perf_counter()
      if self.write_hf:
        model = as_model(params, self._per_agent(self.templates, agent))
        tok = self._per_agent(self.tokenizer_dirs, agent)
        hf_io.export_hf(model, tmp / HF_SUBDIR, tokenizer_dir=tok)
      t2 = time.perf_counter()
      manifest = {
          "agent": agent, "version": version, "created_unix": time.time(),
          "orbax": ORBAX_SUBDIR if self.write_orbax else None,
          "hf": HF_SUBDIR if self.write_hf else None,
          "seconds": {"orbax": round(t1 - t0, 4), "hf": round(t2 - t1, 4)},
      }
      (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
      if final.exists():  # republishing a version (e.g. after a restart): replace it
        trash = agent_dir / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
      else:
        os.replace(tmp, final)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    self._prune(agent)
    return self._describe(agent, version, final)

  def _describe(self, agent: str, version: int, path: Path) -> PublishedVersion:
    return PublishedVersion(
        agent=agent, version=version, path=path,
        orbax_dir=path / ORBAX_SUBDIR if (path / ORBAX_SUBDIR).is_dir() else None,
        hf_dir=path / HF_SUBDIR if (path / HF_SUBDIR).is_dir() else None)

  def versions(self, agent: str) -> list[PublishedVersion]:
    """Complete versions of `agent`, oldest first."""
    agent_dir = self.agent_dir(agent)
    if not agent_dir.is_dir():
      return []
    found = []
    for p in agent_dir.iterdir():
      m = _VERSION_DIR.match(p.name)
      if m and (p / MANIFEST).is_file():
        found.append(self._describe(agent, int(m.group(1)), p))
    return sorted(found, key=lambda v: v.version)

  def latest(self, agent: str) -> PublishedVersion | None:
    vs = self.versions(agent)
    return vs[-1] if vs else None

  def _prune(self, agent: str) -> None:
    for old in self.versions(agent)[:-self.keep_last]:
      shutil.rmtree(old.path, ignore_errors=True)
