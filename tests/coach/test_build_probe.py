"""build_coach from config sections, and the probe CLI as a real subprocess."""
import asyncio
import os
import subprocess
import sys

import ml_collections
import pytest

from mappa_jax.coach import CONFIG_FIELDS, build_coach, build_stats
from mappa_jax.coach.openai_coach import OpenAICoach
from mappa_jax.coach.panel import PanelCoach
from mappa_jax.coach.rule_coach import RuleCoach
from tests.coach.conftest import make_request
from tests.coach.openai_test_server import answer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def project_section(**overrides) -> ml_collections.ConfigDict:
  from experiments import common
  section = common.coach_section("local", paper_model="judge")
  section.update(overrides)
  return section


def test_build_from_project_sections(tmp_path):
  assert isinstance(build_coach(project_section()), RuleCoach)
  section = project_section(kind="openai", model="judge", base_url="http://127.0.0.1:1/v1",
                            rpm_limit=120, max_output_tokens=256)
  coach = build_coach(section, workdir=str(tmp_path))
  assert isinstance(coach, OpenAICoach)
  assert coach.config.rpm == 120 and coach.config.max_tokens == 256
  assert coach.config.limits.obs_head_chars == section.tool_observation_head_chars
  assert coach.config.breaker_threshold == section.circuit_breaker_failures
  assert coach.cache.path == str(tmp_path / "coach_cache.sqlite")
  panel = build_coach(project_section(kind="panel", base_url="http://127.0.0.1:1/v1",
                                      panel_models=("a", "b")))
  assert isinstance(panel, PanelCoach) and [m.config.model for m in panel.members] == ["a", "b"]
  from mappa_jax.coach.types import Coach
  assert all(isinstance(c, Coach) for c in (coach, panel, build_coach(project_section())))
  stats = build_stats(project_section(prices={"input_per_mtok": 1.5, "output_per_mtok": 6.0}))
  assert stats.default_price == (1.5, 6.0)


def test_build_errors_name_the_field():
  with pytest.raises(ValueError, match="unknown field.*'max_retry'"):
    build_coach({"kind": "rule", "max_retry": 3})
  with pytest.raises(ValueError, match="coach.base_url"):
    build_coach({"kind": "openai", "model": "m"})
  with pytest.raises(ValueError, match="coach.cache_path"):
    build_coach({"kind": "replay", "model": "m"})
  with pytest.raises(ValueError, match="coach.kind"):
    build_coach({"kind": "oracle"})
  assert all(isinstance(doc, str) and doc for _, doc in CONFIG_FIELDS.values())


def test_built_openai_coach_scores_over_http(server, monkeypatch):
  monkeypatch.setenv("COACH_API_KEY", "k")
  coach = build_coach(project_section(kind="openai", model="judge", base_url=server.base_url))

  async def run():
    try:
      return await coach.score(make_request())
    finally:
      await coach.aclose()

  assert asyncio.run(run()).score == 7.0


def _probe(server, *extra, env_key="probe-secret-key"):
  env = dict(os.environ, PROBE_KEY=env_key, PYTHONPATH=ROOT)
  return subprocess.run(
      [sys.executable, "-m", "mappa_jax.coach.probe", f"--base_url={server.base_url}",
       "--model=judge", "--api_key_env=PROBE_KEY", *extra],
      capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_probe_against_test_server(server):
  server.push(answer("The Verifier checked by hand.\n**PROCESS_SCORE:** 9\nANSWER_CORRECT: 1"))
  proc = _probe(server)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "=== RENDERED PROMPT ===" in out and "What is 17 * 23 - 100?" in out
  assert "=== RAW RESPONSE ===\nThe Verifier checked by hand." in out
  assert "status: scored" in out and "score: 9.0" in out and "answer_correct: True" in out
  assert "probe-secret-key" not in out + proc.stderr
  assert server.requests[0]["headers"]["Authorization"] == "Bearer probe-secret-key"
  server.push(answer("no idea"), answer("still no idea"))
  proc = _probe(server, "--workflow=dsbench")
  assert proc.returncode == 1 and "status: invalid" in proc.stdout
  assert "parse_error" in proc.stdout and "submission.csv" in proc.stdout
