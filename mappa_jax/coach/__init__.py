"""The coach: per-action process rewards (LLM endpoints, panels, cache/replay, rule coach).

The contracts are in `types`; the `coach` config section and `build_coach` in `config`.
"""
from mappa_jax.coach.types import Coach, CoachRequest, CoachResult

__all__ = ["Coach", "CoachRequest", "CoachResult"]
