"""A config's files: experiment files loaded with command-line overrides (the same parsing as
`launch/run.py`), and the resolved config a run writes into its workdir (config.json, and
config.py, which `--config=<workdir>/config.py` runs again).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pprint
import re
from typing import Any, Iterable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from mappa_jax.schema import ConfigError


# ----------------------------------------------------------------------------- loading


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:preset]` and applies command-line style overrides.

  Uses the same `config_flags` parsing as `launch/run.py`, so what works here works there.

  Args:
    spec: config file path, optionally followed by `:preset`.
    overrides: 'train.learning_rate=2e-6' or '--config.train.learning_rate=2e-6'.

  Returns:
    The locked, overridden (not yet validated) config.

  Raises:
    ConfigError: unknown preset, unknown field, or a value of the wrong type.
  """
  argv = ["load_config", f"--config={spec}"]
  argv += [o if o.startswith("--") else f"--config.{o}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(explain_parse_error(e, argv)) from e
  config = flag_values["config"].value
  ensure_loaded(config)
  return config


def ensure_loaded(config: Any) -> None:
  """config_flags defers file-loading errors to first use: surface them as ConfigError."""
  if isinstance(config, ml_collections.ConfigDict):
    return
  try:
    getattr(config, "name")
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(str(e).strip()) from e
  raise ConfigError(f"a config must be an ml_collections.ConfigDict, got {type(config)}")


def _override_args(argv: Iterable[str]) -> list[tuple[str, str]]:
  """('train.lr', '--config.train.lr=1') for each `--config.<path>[=value]` argument."""
  return [(a[len("--config."):].split("=", 1)[0], a) for a in argv if a.startswith("--config.")]


def unknown_field_message(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why `path` is not a field of `config` (with close matches), or None if it is one."""
  node: Any = config
  walked = []
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      where = ".".join(walked) or "the top level"
      close = difflib.get_close_matches(part, keys, n=3)
      hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
      return (f"unknown config field {path!r}: {part!r} is not a field of {where} "
              f"(fields: {', '.join(sorted(keys)) or 'none'}).{hint} Configs are locked: "
              "fix the name, or add the field to its section's dataclass.")
    walked.append(part)
    node = node[part]
  return None


def explain_parse_error(error: BaseException, argv: Sequence[str]) -> str:
  """A readable message for an exception raised while parsing `--config*` flags."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = _override_args(argv)
  if spec is not None and overrides:
    try:
      base = load_config(spec)
    except ConfigError:
      base = None  # the file/preset itself is bad: the original message says why
    if base is not None:
      for path, arg in overrides:
        message = unknown_field_message(base, path)
        if message:
          return f"{arg}: {message}"
  message = str(error)
  if "Traceback (most recent call last)" in message:
    # config_flags embeds the traceback of get_config(); its last line says what went wrong.
    last = [line for line in message.splitlines() if line.strip()][-1]
    message = f"--config={spec}: {last}" if spec is not None else last
  if isinstance(error, (AttributeError, KeyError)) and overrides:
    message = f"unknown config field in {[a for _, a in overrides]}: {message}"
  return message


# ------------------------------------------------------------------------------ saving


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'train.learning_rate': 1e-06, ...} with tuples as lists and None kept."""
  out: dict[str, Any] = {}
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def to_python(config: ml_collections.ConfigDict, header: str = "") -> str:
  """Source of a config file that rebuilds `config` exactly (usable as --config=...).

  None fields become typed placeholders so they stay overridable.
  """

  def render(node: ml_collections.ConfigDict, indent: str) -> str:
    lines = ["ml_collections.ConfigDict({"]
    for key in node.keys():
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        text = render(value, indent + "    ")
      elif value is None:
        field_type = node.get_type(key)
        type_name = field_type.__name__ if field_type not in (type(None), None) else "object"
        text = f"config_dict.placeholder({type_name})"
      else:
        text = pprint.pformat(value, width=200)
      lines.append(f"{indent}    {key!r}: {text},")
    lines.append(f"{indent}}})")
    return "\n".join(lines)

  doc = header or "Resolved experiment config written by launch/run.py."
  return (f'"""{doc}"""\nimport ml_collections\nfrom ml_collections import config_dict\n\n\n'
          f"def get_config(arg=None):\n  del arg\n  config = {render(config, '  ')}\n"
          "  config.lock()\n  return config\n")


@dataclasses.dataclass(frozen=True)
class SavedConfig:
  json_path: str
  python_path: str


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def previous_configs(workdir: str) -> list[str]:
  """The config.<n>.py files `save` kept in `workdir`, oldest first."""
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  kept = sorted((int(m.group(1)), n) for n in names
                if (m := re.fullmatch(r"config\.(\d+)\.py", n)))
  return [os.path.join(workdir, n) for _, n in kept]


def save(config: ml_collections.ConfigDict, workdir: str, header: str = "") -> SavedConfig:
  """Writes <workdir>/config.json and <workdir>/config.py (atomically, via rename).

  A workdir that already holds a different config (a resume with changed settings) keeps it as
  config.<n>.json / config.<n>.py (n = 1, 2, ...) first: the config that wrote the existing
  checkpoints is never lost, and an incompatible resume can name it.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = SavedConfig(os.path.join(workdir, "config.json"), os.path.join(workdir, "config.py"))
  new_json = to_json(config)
  if os.path.isfile(paths.json_path) and _read(paths.json_path) != new_json:
    kept = previous_configs(workdir)
    n = int(re.fullmatch(r".*config\.(\d+)\.py", kept[-1]).group(1)) + 1 if kept else 1
    for path in (paths.json_path, paths.python_path):
      if os.path.isfile(path):
        stem, ext = os.path.splitext(path)
        os.replace(path, f"{stem}.{n}{ext}")
  for path, text in ((paths.json_path, new_json),
                     (paths.python_path, to_python(config, header))):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  return paths
