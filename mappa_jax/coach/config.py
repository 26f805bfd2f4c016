"""The `coach` config section, and the coach it builds (`build_coach`, one builder per kind).

A new kind is one entry in `KINDS` (a function `(config, workdir, caches) -> Coach`) plus, if it
needs settings of its own, its fields in `CoachConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Literal

from mappa_jax.coach import requests as rq
from mappa_jax.coach.biased import BiasedCoach, style_bias_problem
from mappa_jax.coach.cache import CoachCache
from mappa_jax.coach.panel import PanelCoach
from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.coach.stats import CoachStats
from mappa_jax.coach.types import Coach
from mappa_jax.schema import Section, field, non_negative, positive


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoachPrices(Section):
  """Token prices, for the cost statistics (coach/<role>/cost_usd)."""
  input_per_mtok: float = field(0.0, "USD per million input tokens (0 = unknown)",
                                check=non_negative, fix="Use >= 0 (USD).")
  output_per_mtok: float = field(0.0, "USD per million output tokens", check=non_negative,
                                 fix="Use >= 0 (USD).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoachConfig(Section):
  """The `coach` section: which coach scores every action, and how it is called."""
  kind: str = field("rule", "'rule' (deterministic rubric over verifiable signals, no LLM) | "
                    "'openai' (any OpenAI-compatible endpoint) | 'panel' (several models, "
                    "aggregated) | 'replay' (answers from cache_path only) | 'biased' "
                    "(bias_inner's coach +bias_delta on one task type: the bias experiment)",
                    check=lambda v: v in KINDS, fix="Allowed: 'rule', 'openai', 'panel', "
                    "'replay', 'biased' (mappa_jax.coach.config.KINDS).")
  model: str = field("", "REF model name sent to the endpoint (part of the cache key: it "
                     "identifies the coach)")
  base_url: str | None = field(None, "OpenAI-compatible endpoint, e.g. https://host/v1 (not "
                               "part of the cache key)", check=lambda v: v.startswith(
                                   ("http://", "https://")),
                               fix="It must start with http:// or https://.")
  api_key_env: str = field("COACH_API_KEY", "environment variable holding the API key "
                           "('' = none; may be unset)")
  name: str = field("", "display name of the coach ('' = model@host)")
  temperature: float = field(0.0, "REF coach sampling temperature", check=non_negative,
                             fix="Use >= 0.")
  max_output_tokens: int | None = field(None, "reply token limit; None = the endpoint's (REF)",
                                        check=positive, fix="Use >= 1 or None.")
  top_p: float | None = field(None, "nucleus sampling; None = the endpoint's default")
  seed: int | None = field(None, "sampling seed sent to the endpoint")
  extra_body: str = field("", "extra JSON fields for the endpoint, e.g. "
                          "'{\"reasoning_effort\": \"low\"}' ('' = none)",
                          check=lambda v: not v or isinstance(json.loads(v), dict),
                          fix="Use a JSON object.")
  sample_index: int = field(0, "coach sample index in the cache key when a request names none",
                            check=non_negative, fix="Use >= 0.")
  max_concurrency: int = field(32, "requests in flight at once", check=positive,
                               fix="Use >= 1.")
  rpm_limit: int = field(0, "request starts per minute (0 = unlimited)", check=non_negative,
                         fix="Use >= 0 (0 = unlimited).")
  rpm_burst: int = field(1, "requests that may start back to back under rpm_limit",
                         check=positive, fix="Use >= 1.")
  timeout_s: float = field(300.0, "per-attempt HTTP timeout", check=positive, fix="Use > 0.")
  max_retries: int = field(6, "retries of one call on 429/5xx/timeouts/dropped connections "
                           "(REF: 300, i.e. about a day)", check=non_negative, fix="Use >= 0.")
  backoff_base_s: float = field(1.0, "first retry backoff; doubles per retry, with jitter",
                                check=non_negative, fix="Use >= 0.")
  backoff_max_s: float = field(60.0, "largest retry backoff", check=non_negative,
                               fix="Use >= 0.")
  retry_after_max_s: float = field(120.0, "largest Retry-After honoured", check=non_negative,
                                   fix="Use >= 0.")
  format_retry: bool = field(True, "REF one re-ask (prompt + format reminder) for an "
                             "unreadable reply")
  circuit_breaker_failures: int = field(20, "consecutive failed attempts that stop the run",
                                        check=positive, fix="Use >= 1.")
  circuit_breaker_min_s: float = field(60.0, "the failure streak must also last this long",
                                       check=non_negative, fix="Use >= 0.")
  cache_path: str | None = field(None, "SQLite verdict cache; None = "
                                 "<workdir>/coach_cache.sqlite; kind='replay' reads it")
  invalid_policy: Literal["mask", "neutral"] = field(
      "mask", "an action the coach could not score: 'mask' (left out of the loss, FIX) | "
      "'neutral' (scored neutral_score)")
  neutral_score: float = field(5.0, "REF fallback score, used only with invalid_policy="
                               "'neutral'", check=lambda v: 0 <= v <= 10,
                               fix="Use a score in [0, 10].")
  ground_truth_roles: tuple[str, ...] | None = field(
      None, "roles whose prompt may show the ground truth; None = trust the workflow "
      "(agents.*.sees_ground_truth_in_coach)")
  tool_observation_head_chars: int = field(1000, "tool output: leading characters shown (FIX "
                                           "§10.7; REF: the first 2000)", check=non_negative,
                                           fix="Use >= 0.")
  tool_observation_tail_chars: int = field(1000, "tool output: trailing characters shown",
                                           check=non_negative, fix="Use >= 0.")
  input_head_chars: int = field(0, "agent input: leading characters shown (0 and 0: all)",
                                check=non_negative, fix="Use >= 0.")
  input_tail_chars: int = field(0, "agent input: trailing characters shown", check=non_negative,
                                fix="Use >= 0.")
  output_head_chars: int = field(0, "agent output: leading characters shown (0 and 0: all)",
                                 check=non_negative, fix="Use >= 0.")
  output_tail_chars: int = field(0, "agent output: trailing characters shown",
                                 check=non_negative, fix="Use >= 0.")
  panel_models: tuple[str, ...] = field((), "kind='panel': member model names, all at base_url")
  panel_aggregate: Literal["mean", "median"] = field("mean", "kind='panel': how member scores "
                                                     "combine")
  panel_min_valid: int = field(1, "kind='panel': fewest valid members for a score",
                               check=positive, fix="Use >= 1.")
  rule_correct_weight: float = field(6.0, "kind='rule': points for a correct answer",
                                     check=non_negative, fix="Use >= 0.")
  rule_check_arithmetic: bool = field(False, "kind='rule': MathChat caps for a false stated "
                                      "calculation and a program using numbers the problem "
                                      "lacks (blame; off: measured to reward-hack in training)")
  bias_task_type: str = field("", "kind='biased': the favoured task type (a task's task_type, "
                              "e.g. 'add_sub', 'regression'); required for 'biased'")
  bias_delta: float = field(0.0, "kind='biased': coach points added on bias_task_type "
                            "(negative disfavours; the score stays in [0, 10])")
  bias_others_scale: float = field(
      1.0, "kind='biased': every other task type's score is multiplied by this (< 1: a coach "
      "that is stingier and less discriminating off its favoured type, a bias that depends on "
      "behaviour; 1 = off)", check=lambda v: 0.0 <= v <= 1.0, fix="Use a value in [0, 1].")
  bias_style_pattern: str = field(
      "", "kind='biased': a regular expression; when set, bias_delta goes to every action whose "
      "output matches it, on every task type (a coach that likes bias_task_type's kind of work "
      "wherever it appears), instead of to every action of bias_task_type; '' = off")
  bias_roles: tuple[str, ...] | None = field(None, "kind='biased': only these roles are biased; "
                                             "None or () = every role")
  bias_inner: Literal["rule", "openai", "panel", "replay"] = field(
      "rule", "kind='biased': the coach whose verdicts are biased (its own fields apply)")
  prices: CoachPrices = field(CoachPrices(), "token prices for cost statistics")

  @property
  def scoring_kind(self) -> str:
    """The kind that calls a model or a rubric: bias_inner for 'biased', else kind."""
    return self.bias_inner if self.kind == "biased" else self.kind

  def problems(self) -> list[tuple[str, str]]:
    found = []
    kind = self.scoring_kind
    named = f"coach.kind={self.kind!r}" + (f" (bias_inner={kind!r})" if kind != self.kind else "")
    if self.kind == "biased" and not self.bias_task_type:
      found.append(("bias_task_type", "is required for coach.kind='biased': set "
                    "--config.coach.bias_task_type=<task type> (e.g. 'add_sub')"))
    if self.kind != "biased":
      # A bias field is read only by the 'biased' wrapper: set on another kind it would be
      # dropped without a word, and a user would believe a bias experiment ran.
      inner = self.bias_inner if self.bias_inner != BIAS_DEFAULTS["bias_inner"] else self.kind
      for name, default in BIAS_DEFAULTS.items():
        value = getattr(self, name)
        empty = isinstance(value, (list, tuple)) and not value  # bias_roles: () / [] = every role
        if value != default and not empty:
          found.append((name, f"is set but {named} never reads it: bias fields apply to "
                        "coach.kind='biased' only; set --config.coach.kind=biased "
                        f"--config.coach.bias_inner={inner!r} (with bias_task_type), or leave "
                        f"coach.{name} at its default {default!r}"))
    if self.kind == "biased" and self.bias_style_pattern:
      problem = style_bias_problem(self.bias_style_pattern, self.bias_others_scale)
      if problem:
        found.append(("bias_style_pattern", problem))
    if kind in ("openai", "panel") and self.base_url is None:
      found.append(("base_url", f"is required for {named}: set "
                    "--config.coach.base_url=https://host/v1 (an OpenAI-compatible endpoint), "
                    "or use coach.kind='rule' / 'replay'"))
    if kind == "openai" and not self.model:
      found.append(("model", f"is empty; {named} needs the model name to request"))
    if kind == "replay" and self.cache_path is None:
      found.append(("cache_path", f"is required for {named} (the cache to answer "
                    "from); set --config.coach.cache_path=/path/to/coach_cache.sqlite"))
    if kind == "panel" and not self.panel_models:
      found.append(("panel_models", "is empty but coach.kind='panel'; list the member models, "
                    "e.g. --config.coach.panel_models='(\"model-a\", \"model-b\")'"))
    return found

  def decoding(self) -> dict:
    """The sampling settings sent with every request (and part of the cache key)."""
    d = {"temperature": self.temperature}
    if self.max_output_tokens is not None:
      d["max_tokens"] = self.max_output_tokens
    if self.top_p is not None:
      d["top_p"] = self.top_p
    if self.seed is not None:
      d["seed"] = self.seed
    if self.extra_body:
      d["extra_body"] = json.loads(self.extra_body)
    return d

  @property
  def render_limits(self) -> rq.RenderLimits:
    return rq.RenderLimits(self.tool_observation_head_chars, self.tool_observation_tail_chars,
                           self.input_head_chars, self.input_tail_chars,
                           self.output_head_chars, self.output_tail_chars)


# The fields only coach.kind='biased' reads, with their defaults (= no bias).
BIAS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CoachConfig)
                 if f.name.startswith("bias_")}


# ------------------------------------------------------------------------------- builders

Caches = dict[str, CoachCache]


def _rule(cfg: CoachConfig, workdir: str | None, caches: Caches) -> Coach:
  del workdir, caches
  return RuleCoach(ground_truth_roles=cfg.ground_truth_roles,
                   correct_weight=float(cfg.rule_correct_weight),
                   check_arithmetic=bool(cfg.rule_check_arithmetic))


def _cache(cfg: CoachConfig, workdir: str | None, caches: Caches) -> CoachCache | None:
  path = cfg.cache_path or (os.path.join(workdir, "coach_cache.sqlite") if workdir else None)
  if not path:
    return None
  return caches.get(path) or caches.setdefault(path, CoachCache(path))


def _openai(cfg: CoachConfig, workdir: str | None, caches: Caches) -> Coach:
  # openai is imported only when such a coach is built: the contracts and the rule coach work
  # where the package is absent.
  from mappa_jax.coach.openai_coach import OpenAICoach  # pylint: disable=g-import-not-at-top
  replay = cfg.kind == "replay"
  if not replay and not cfg.base_url:
    raise ValueError("coach config: kind 'openai' needs coach.base_url (an OpenAI-compatible "
                     "endpoint such as https://host/v1)")
  if not cfg.model:
    raise ValueError(f"coach config: kind {cfg.kind!r} needs coach.model (the model name; it "
                     "is part of the cache key)")
  cache = _cache(cfg, workdir, caches)
  if replay and cache is None:
    raise ValueError("coach config: kind 'replay' needs coach.cache_path (the cache to "
                     "answer from)")
  return OpenAICoach(cfg, cache=cache, replay=replay)


def _panel(cfg: CoachConfig, workdir: str | None, caches: Caches) -> Coach:
  if not cfg.panel_models:
    raise ValueError("coach config: kind 'panel' needs coach.panel_models (model names at "
                     "coach.base_url)")
  member_kind = "replay" if cfg.kind == "replay" else "openai"
  members = [_openai(dataclasses.replace(cfg, kind=member_kind, model=m, panel_models=(),
                                         name=""), workdir, caches) for m in cfg.panel_models]
  return PanelCoach(members, aggregate=cfg.panel_aggregate, name=cfg.name,
                    min_valid=cfg.panel_min_valid)


def _replay(cfg: CoachConfig, workdir: str | None, caches: Caches) -> Coach:
  """A replayed panel when panel_models are set, else one replayed endpoint."""
  return (_panel if cfg.panel_models else _openai)(cfg, workdir, caches)


def _biased(cfg: CoachConfig, workdir: str | None, caches: Caches) -> Coach:
  """bias_inner's coach (built from the same section), +bias_delta on bias_task_type."""
  # The inner coach is unbiased: its section keeps every field but the bias ones.
  inner = KINDS[cfg.bias_inner](dataclasses.replace(cfg, **BIAS_DEFAULTS, kind=cfg.bias_inner),
                                workdir, caches)
  return BiasedCoach(inner, cfg.bias_task_type, cfg.bias_delta,
                     others_scale=cfg.bias_others_scale, roles=cfg.bias_roles or None,
                     style_pattern=cfg.bias_style_pattern,
                     name=cfg.name)


KINDS: dict[str, Callable[[CoachConfig, str | None, Caches], Coach]] = {
    "rule": _rule, "openai": _openai, "panel": _panel, "replay": _replay, "biased": _biased}


def build_coach(cfg: CoachConfig, workdir: str | None = None) -> Coach:
  """The coach `cfg` describes; with cache_path None, the cache is <workdir>/coach_cache.sqlite
  (no cache without a workdir)."""
  return KINDS[cfg.kind](cfg, workdir, {})


def build_stats(cfg: CoachConfig) -> CoachStats:
  """Per-role coach statistics priced with coach.prices."""
  return CoachStats(price_in_per_m=cfg.prices.input_per_mtok,
                    price_out_per_m=cfg.prices.output_per_mtok)
