"""The coach: per-action process rewards (LLM endpoints, panels, cache/replay, rule coach).

Kept import-light: `openai` is only imported when an OpenAI-compatible coach is built, so the
rule coach and the contracts work where the `openai` package is absent.

`build_coach(section)` makes a coach from a config section (an ml_collections ConfigDict or a
dict); see `CONFIG_FIELDS` for every field, its default and meaning.
"""
from __future__ import annotations

from typing import Any

from mappa_jax.coach.types import Coach, CoachRequest, CoachResult

# name -> (default, doc). Names follow experiments/common.py `coach_section`; fields marked
# (extra) are optional refinements the standard section may leave out.
CONFIG_FIELDS: dict[str, tuple[Any, str]] = {
    "kind": ("rule", "'rule' | 'openai' | 'panel' | 'replay' (cache only; a miss is an error)"),
    "model": ("", "model name sent to the endpoint (part of the cache key: it identifies the "
                  "coach)"),
    "base_url": ("", "OpenAI-compatible endpoint, e.g. http://127.0.0.1:30000/v1 (not part of "
                     "the cache key: the same model served elsewhere is the same coach)"),
    "api_key_env": ("COACH_API_KEY", "environment variable holding the API key ('' = none)"),
    "temperature": (0.0, "coach sampling temperature"),
    "max_output_tokens": (None, "reply token limit (None: endpoint default)"),
    "max_concurrency": (32, "most requests in flight at once"),
    "rpm_limit": (0, "most request starts per minute (0: unlimited)"),
    "timeout_s": (300.0, "per-attempt HTTP timeout"),
    "max_retries": (6, "retries of one call on 429/5xx/timeouts/connection errors"),
    "format_retry": (True, "one re-ask (full prompt + format reminder) for an unreadable reply"),
    "circuit_breaker_failures": (20, "consecutive failed attempts that stop training"),
    "cache_path": (None, "SQLite verdict cache; None: <workdir>/coach_cache.sqlite when a "
                         "workdir is given, else no cache; required for kind 'replay'"),
    "invalid_policy": ("mask", "trainer: 'mask' invalid actions or give them neutral_score"),
    "neutral_score": (5.0, "trainer: score used for invalid actions under 'neutral'"),
    "tool_observation_head_chars": (1000, "tool observation: leading characters kept"),
    "tool_observation_tail_chars": (1000, "tool observation: trailing characters kept"),
    "panel_models": ((), "kind 'panel': member model names, all served at base_url"),
    "panel_aggregate": ("mean", "kind 'panel': 'mean' or 'median'"),
    "prices": (None, "statistics: prices.input_per_mtok / prices.output_per_mtok in USD"),
    # (extra) refinements
    "name": ("", "(extra) display name of the coach (default: model@host)"),
    "top_p": (None, "(extra) nucleus sampling (None: endpoint default)"),
    "seed": (None, "(extra) sampling seed sent to the endpoint"),
    "extra_body": (None, "(extra) extra JSON fields for the endpoint (e.g. reasoning_effort)"),
    "circuit_breaker_min_s": (60.0, "(extra) the failure streak must also last this long"),
    "rpm_burst": (1, "(extra) requests that may start back to back under rpm_limit"),
    "backoff_base_s": (1.0, "(extra) first backoff; doubles per retry, with jitter"),
    "backoff_max_s": (60.0, "(extra) largest backoff"),
    "retry_after_max_s": (120.0, "(extra) largest Retry-After honoured"),
    "ground_truth_roles": (None, "(extra) roles whose prompt may show ground truth; None: "
                                 "trust the workflow (agents.*.sees_ground_truth_in_coach)"),
    "input_head_chars": (0, "(extra) agent input: leading characters kept (0 and 0: all)"),
    "input_tail_chars": (0, "(extra) agent input: trailing characters kept"),
    "output_head_chars": (0, "(extra) agent output: leading characters kept (0 and 0: all)"),
    "output_tail_chars": (0, "(extra) agent output: trailing characters kept"),
    "panel_members": ((), "(extra) kind 'panel': member sections (same fields), for members "
                          "on different endpoints; used instead of panel_models"),
    "panel_min_valid": (1, "(extra) kind 'panel': fewest valid members for a score"),
    "rule_correct_weight": (6.0, "(extra) rule coach: points for a correct answer"),
}


def _section_get(section, name: str):
  default = CONFIG_FIELDS[name][0]
  value = section.get(name, default) if hasattr(section, "get") else default
  return default if value is None else value


def _check_fields(section) -> None:
  keys = set(section.keys()) if hasattr(section, "keys") else set()
  unknown = keys - set(CONFIG_FIELDS)
  if unknown:
    raise ValueError(f"coach config: unknown field(s) {sorted(unknown)}; known fields: "
                     f"{sorted(CONFIG_FIELDS)}")


def build_coach(section, workdir: str | None = None, _caches: dict | None = None) -> Coach:
  """Makes the coach a config section describes (see CONFIG_FIELDS).

  Args:
    section: the `coach` ConfigDict (or a dict with the same fields).
    workdir: run directory; with cache_path None the cache is <workdir>/coach_cache.sqlite.
  """
  import os
  _check_fields(section)
  caches = {} if _caches is None else _caches
  get = lambda name: _section_get(section, name)  # noqa: E731
  kind = get("kind")
  gt_roles = section.get("ground_truth_roles", None) if hasattr(section, "get") else None
  gt_roles = tuple(gt_roles) if gt_roles is not None else None
  if kind == "rule":
    from mappa_jax.coach.rule_coach import RuleCoach
    return RuleCoach(ground_truth_roles=gt_roles, correct_weight=float(get("rule_correct_weight")))
  panel_members = list(get("panel_members"))
  panel_models = list(get("panel_models"))
  if kind == "panel" or (kind == "replay" and (panel_members or panel_models)):
    from mappa_jax.coach.panel import PanelCoach
    member_kind = "replay" if kind == "replay" else "openai"
    if panel_members:
      members = [build_coach(m, workdir, caches) for m in panel_members]
    elif panel_models:
      base = dict(section.items()) if hasattr(section, "items") else {}
      base.update(kind=member_kind, panel_models=(), panel_members=(), name="")
      members = [build_coach(dict(base, model=m), workdir, caches) for m in panel_models]
    else:
      raise ValueError("coach config: kind 'panel' needs coach.panel_models (model names at "
                       "coach.base_url) or coach.panel_members (member sections)")
    return PanelCoach(members, aggregate=get("panel_aggregate"), name=get("name"),
                      min_valid=int(get("panel_min_valid")))
  if kind in ("openai", "replay"):
    from mappa_jax.coach import requests as rq
    from mappa_jax.coach.cache import CoachCache
    from mappa_jax.coach.openai_coach import OpenAICoach, OpenAICoachConfig
    if kind == "openai" and not get("base_url"):
      raise ValueError("coach config: kind 'openai' needs coach.base_url (an OpenAI-compatible "
                       "endpoint such as https://host/v1)")
    if not get("model"):
      raise ValueError(f"coach config: kind {kind!r} needs coach.model (the model name; it is "
                       "part of the cache key)")
    extra = get("extra_body") or {}
    max_tokens, top_p, seed = get("max_output_tokens"), get("top_p"), get("seed")
    config = OpenAICoachConfig(
        base_url=get("base_url"), model=get("model"), api_key_env=get("api_key_env"),
        name=get("name"), temperature=float(get("temperature")),
        max_tokens=None if max_tokens is None else int(max_tokens),
        top_p=None if top_p is None else float(top_p),
        seed=None if seed is None else int(seed),
        extra_body=tuple(sorted(dict(extra).items())),
        timeout_s=float(get("timeout_s")), max_concurrency=int(get("max_concurrency")),
        rpm=float(get("rpm_limit")), rpm_burst=int(get("rpm_burst")),
        max_retries=int(get("max_retries")), backoff_base_s=float(get("backoff_base_s")),
        backoff_max_s=float(get("backoff_max_s")),
        retry_after_max_s=float(get("retry_after_max_s")),
        breaker_threshold=int(get("circuit_breaker_failures")),
        breaker_min_duration_s=float(get("circuit_breaker_min_s")),
        reask=bool(get("format_retry")), ground_truth_roles=gt_roles,
        limits=rq.RenderLimits(*(int(get(f)) for f in (
            "tool_observation_head_chars", "tool_observation_tail_chars", "input_head_chars",
            "input_tail_chars", "output_head_chars", "output_tail_chars"))))
    path = get("cache_path")
    if not path and workdir:
      path = os.path.join(workdir, "coach_cache.sqlite")
    if kind == "replay" and not path:
      raise ValueError("coach config: kind 'replay' needs coach.cache_path (the cache to "
                       "answer from)")
    cache = None
    if path:
      cache = caches.get(path) or caches.setdefault(path, CoachCache(path))
    return OpenAICoach(config, cache=cache, replay=(kind == "replay"))
  raise ValueError(f"coach.kind must be 'rule', 'openai', 'panel' or 'replay', got {kind!r}")


def build_stats(section):
  """CoachStats with the prices of a config section (coach.prices.*_per_mtok)."""
  from mappa_jax.coach.stats import CoachStats
  prices = _section_get(section, "prices") or {}
  get = prices.get if hasattr(prices, "get") else (lambda k, d: d)
  return CoachStats(price_in_per_m=float(get("input_per_mtok", 0.0) or 0.0),
                    price_out_per_m=float(get("output_per_mtok", 0.0) or 0.0))


__all__ = ["Coach", "CoachRequest", "CoachResult", "CONFIG_FIELDS", "build_coach",
           "build_stats"]
