"""Config sections as typed, documented frozen dataclasses (the one schema of every config).

A section is a frozen dataclass deriving from `Section` whose fields are declared with
`field(default, doc)`: the field's name is the config key, its default is the config default and
`doc` is its one-line documentation. Everything else is generated from that declaration:

  to_configdict(section)        -> the ml_collections.ConfigDict experiment files and
                                   `--config.<section>.<field>=...` overrides edit;
  from_configdict(cls, node)    -> the typed section again; unknown, missing, mistyped or
                                   out-of-range fields are all reported at once, each as
                                   `path: problem. fix` (a ConfigError);
  docs(cls)                     -> {field: doc}, for printing a config with its documentation.

Construction is validation: `__post_init__` checks every field against its annotation (bool,
int, float, str, Literal choices, optional values, tuples, nested sections) and its `check`,
then the section's own `problems()` rules. So a section built in code (`RLConfig(gamma=2.0)`)
fails exactly like the same value set on the command line.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Callable, Literal, Mapping

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """An invalid experiment config; the message names each bad field and its fix."""

  def __init__(self, problems: list[tuple[str, str]] | str, what: str = "config"):
    self.problems = [("", problems)] if isinstance(problems, str) else list(problems)
    if isinstance(problems, str):
      super().__init__(problems)
      return
    lines = "\n".join(f"  - {p}: {m}" if p else f"  - {m}" for p, m in self.problems)
    n = len(self.problems)
    super().__init__(f"invalid {what} ({n} problem{'s' if n > 1 else ''}):\n{lines}")


def field(default: Any, doc: str, *, check: Callable[[Any], bool] | None = None,
          fix: str = "") -> Any:
  """A section field: its default, its one-line doc and an optional value check.

  Args:
    default: the config default (a dict or list default is copied per instance).
    doc: one line saying what the field does (printed by `python -m mappa_jax.config`).
    check: predicate on a non-None value of the right type; False is a problem.
    fix: what to do when `check` fails ('Use >= 0.').
  """
  metadata = {"doc": doc, "check": check, "fix": fix}
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def positive(v) -> bool:
  return v > 0


def non_negative(v) -> bool:
  return v >= 0


def increasing(v) -> bool:
  """Strictly increasing positive sizes (bucket tuples)."""
  return all(b > 0 for b in v) and all(a < b for a, b in zip(v, v[1:]))


@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
  """The resolved field annotations of a section class."""
  return typing.get_type_hints(cls)


def docs(cls: type) -> dict[str, str]:
  """{field name: one-line doc} of a section class, in declaration order."""
  return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _optional(tp) -> tuple[bool, Any]:
  """(allows None, the type without None)."""
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != len(typing.get_args(tp)):
      return True, args[0] if len(args) == 1 else typing.Union[tuple(args)]
  return False, tp


def _kind(tp) -> str:
  """How a type is named in messages ('int', 'number', 'str tuple', ...)."""
  origin = typing.get_origin(tp)
  if origin is Literal:
    return "str"
  if origin is tuple:
    args = typing.get_args(tp)
    return f"{_kind(args[0])} tuple" if args else "tuple"
  if origin is dict:
    return "mapping"
  return {bool: "bool", int: "int", float: "number", str: "str"}.get(
      tp, getattr(tp, "__name__", str(tp)))


def _type_problem(value: Any, tp) -> str | None:
  """Why `value` is not a `tp` (None when it is)."""
  allows_none, tp = _optional(tp)
  if value is None:
    return None if allows_none else f"is None; expected {_kind(tp)}."
  origin = typing.get_origin(tp)
  if origin is Literal:
    allowed = typing.get_args(tp)
    if value not in allowed:
      return f"{value!r} is invalid. Allowed: {', '.join(repr(a) for a in allowed)}."
    return None
  if origin is tuple:
    args = typing.get_args(tp)
    if not isinstance(value, (tuple, list)):
      return f"{value!r} has type {type(value).__name__}; expected {_kind(tp)}"
    element = args[0] if args else Any
    for v in value:
      problem = _type_problem(v, element)
      if problem:
        return f"{tuple(value)!r}: element {problem}"
    return None
  if origin is dict:
    if not isinstance(value, Mapping):
      return f"{value!r} has type {type(value).__name__}; expected a mapping"
    element = typing.get_args(tp)[1]
    for k, v in value.items():
      problem = _type_problem(v, element)
      if problem:
        return f"[{k!r}] {problem}"
    return None
  ok = {bool: lambda: isinstance(value, bool),
        int: lambda: isinstance(value, int) and not isinstance(value, bool),
        float: lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: lambda: isinstance(value, str)}.get(tp, lambda: tp is Any or isinstance(value, tp))
  if not ok():
    return f"{value!r} has type {type(value).__name__}; expected {_kind(tp)}"
  return None


class SectionError(ConfigError):
  """Problems found while constructing one section (paths relative to it)."""


class Section:
  """Base of config sections: frozen dataclasses checked field by field when constructed.

  Subclasses add their intra-section rules in `problems()`, returning (field, message) pairs.
  """

  def __post_init__(self):
    found: list[tuple[str, str]] = []
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      problem = _type_problem(value, hints(type(self))[f.name])
      check = f.metadata.get("check")
      if problem is None and value is not None and check is not None and not check(value):
        problem = f"{value!r} is invalid. {f.metadata.get('fix', '')}".strip()
      if problem:
        found.append((f.name, problem))
    if not found:
      found = list(self.problems())
    if found:
      raise SectionError(found, type(self).__name__)

  def problems(self) -> list[tuple[str, str]]:
    """Rules between this section's fields: (field, 'problem. fix') pairs."""
    return []

  @classmethod
  def field_types(cls, node: Mapping[str, Any]) -> dict[str, Any]:
    """Field types used to read a ConfigDict `node` (a subclass may pick some by content)."""
    del node
    return dict(hints(cls))


def _is_section(tp) -> bool:
  return isinstance(tp, type) and issubclass(tp, Section)


def _dict_value_type(tp):
  """The value type of dict[str, X], else None."""
  _, tp = _optional(tp)
  return typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None


def _join(path: str, name: str) -> str:
  return f"{path}.{name}" if path and name else (path or name)


def _keys(node: Any) -> list[str]:
  return list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, Mapping)) else []


def from_configdict(cls: type, node: Any, path: str = ""):
  """The typed section `cls` from a ConfigDict (or mapping) `node`.

  Raises:
    ConfigError: every problem of `node` and its sub-sections, with full paths.
  """
  problems: list[tuple[str, str]] = []
  if not isinstance(node, (ml_collections.ConfigDict, Mapping)):
    raise ConfigError([(path, f"{node!r} is not a section; expected the fields "
                              f"{', '.join(docs(cls))}")])
  types_ = cls.field_types(node)
  names = [f.name for f in dataclasses.fields(cls)]
  for key in _keys(node):
    if key not in names:
      close = difflib.get_close_matches(key, names, n=1)
      hint = f" (did you mean {_join(path, close[0])!r}?)" if close else ""
      problems.append((_join(path, key), f"unknown field{hint}; remove it, or add it to "
                                         f"{cls.__module__}.{cls.__name__}"))
  values: dict[str, Any] = {}
  for name in names:
    where = _join(path, name)
    if name not in _keys(node):
      problems.append((where, "missing; start from experiments/<workflow>.py, which sets "
                              "every field"))
      continue
    value, tp = node[name], types_[name]
    try:
      if _is_section(tp):
        value = from_configdict(tp, value, where)
      elif _is_section(_dict_value_type(tp)):
        value = {k: from_configdict(_dict_value_type(tp), value[k], _join(where, k))
                 for k in _keys(value)}
      elif _dict_value_type(tp) is not None:
        value = {k: _plain(value[k]) for k in _keys(value)}
      else:
        value = _plain(value)
    except ConfigError as e:
      problems += e.problems
      continue
    values[name] = value
  if not problems:
    try:
      return cls(**values)
    except SectionError as e:
      problems += [(_join(path, p), m) for p, m in e.problems]
  raise ConfigError(problems)


def _plain(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def to_configdict(section: Section) -> ml_collections.ConfigDict:
  """The (unlocked) ConfigDict of a section: every field, None fields as typed placeholders so
  that they stay overridable from the command line."""
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(section):
    value, tp = getattr(section, f.name), hints(type(section))[f.name]
    allows_none, base = _optional(tp)
    if isinstance(value, Section):
      out[f.name] = to_configdict(value)
    elif isinstance(value, dict):
      out[f.name] = ml_collections.ConfigDict(
          {k: to_configdict(v) if isinstance(v, Section) else v for k, v in value.items()})
    elif value is None and allows_none:
      out[f.name] = config_dict.placeholder(_placeholder_type(base))
    elif base is float and isinstance(value, int) and not isinstance(value, bool):
      out[f.name] = float(value)  # an int here would make the field reject '0.5' overrides
    else:
      out[f.name] = value
  return out


def _placeholder_type(tp) -> type:
  if typing.get_origin(tp) is Literal:
    return str
  if typing.get_origin(tp) is tuple:
    return tuple
  return tp if isinstance(tp, type) else object


def walk_docs(cls: type, node: Any, prefix: str = "") -> dict[str, str]:
  """{'rl.kl_coef': doc, ...} for every leaf of a ConfigDict read as section `cls`."""
  out: dict[str, str] = {}
  types_ = cls.field_types(node) if _is_section(cls) else {}
  field_docs = docs(cls) if _is_section(cls) else {}
  for key in _keys(node):
    path, tp = f"{prefix}{key}", types_.get(key)
    value_type = _dict_value_type(tp) if tp is not None else None
    if _is_section(tp):
      out.update(walk_docs(tp, node[key], path + "."))
    elif value_type is not None:
      for k in _keys(node[key]):
        if _is_section(value_type):
          out.update(walk_docs(value_type, node[key][k], f"{path}.{k}."))
        else:
          out[f"{path}.{k}"] = field_docs.get(key, "")
    else:
      out[path] = field_docs.get(key, "")
  return out
