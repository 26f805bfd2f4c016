"""Workflows register themselves: `@register` on a `Workflow` subclass makes its `name` a valid
`workflow` config value, and the class declares everything the config and the trainer need
(agents, data section, task loader, outcome keys, evaluation kind: see `base.Workflow`).

The built-in workflows are imported by name on first use (big_vision style), so importing a
light module of this package (e.g. `records`) does not load every workflow. Any other module
registers its workflow when imported, e.g. by the experiment file that uses it.
"""
from __future__ import annotations

import importlib

WORKFLOWS: dict[str, type] = {}
_BUILTIN = {"mathchat": "mappa_jax.workflows.mathchat", "dsbench": "mappa_jax.workflows.dsbench"}


def register(cls: type) -> type:
  """Class decorator: makes `cls.name` a workflow (a second class of that name is an error)."""
  other = WORKFLOWS.get(cls.name)
  if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
    raise ValueError(f"workflow {cls.name!r} is already registered by {other.__module__}."
                     f"{other.__qualname__}")
  WORKFLOWS[cls.name] = cls
  return cls


def names() -> tuple[str, ...]:
  """Every known workflow name (registered or built in)."""
  return tuple(sorted(set(WORKFLOWS) | set(_BUILTIN)))


def get(name: str) -> type:
  """The workflow class registered as `name`.

  Raises:
    KeyError: no such workflow (the message lists the known ones).
  """
  if name not in WORKFLOWS and name in _BUILTIN:
    importlib.import_module(_BUILTIN[name])
  if name not in WORKFLOWS:
    raise KeyError(f"unknown workflow {name!r}; known: {', '.join(names())} (a workflow "
                   "registers itself with mappa_jax.workflows.register when its module is "
                   "imported)")
  return WORKFLOWS[name]
