"""build_coach from config sections, and the probe CLI as a real subprocess."""
import asyncio
import os
import subprocess
import sys

import dataclasses

import pytest

from mappa_jax import config as mconfig
from mappa_jax.coach.config import KINDS, CoachConfig, CoachPrices, build_coach, build_stats
from mappa_jax.coach.types import Coach
from mappa_jax.coach.openai_coach import OpenAICoach
from mappa_jax.coach.panel import PanelCoach
from mappa_jax.coach.rule_coach import RuleCoach
from tests.coach.conftest import make_request
from mappa_jax.schema import ConfigError, docs, from_configdict, to_configdict
from tests.coach.openai_test_server import answer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATHCHAT = os.path.join(ROOT, "experiments", "mathchat.py")


def project_section(**overrides) -> CoachConfig:
  """The coach section of the local MathChat preset, with some fields changed."""
  section = mconfig.experiment(mconfig.load_config(MATHCHAT)).coach
  return dataclasses.replace(section, **overrides)


def test_build_from_project_sections(tmp_path):
  assert isinstance(build_coach(project_section()), RuleCoach)
  section = project_section(kind="openai", model="judge", base_url="http://127.0.0.1:1/v1",
                            rpm_limit=120, max_output_tokens=256)
  coach = build_coach(section, workdir=str(tmp_path))
  assert isinstance(coach, OpenAICoach) and coach.config is section  # the section, as it is
  assert coach.config.render_limits.obs_head_chars == section.tool_observation_head_chars
  assert coach.config.decoding() == {"temperature": 0.0, "max_tokens": 256}
  assert coach.cache.path == str(tmp_path / "coach_cache.sqlite")
  panel = build_coach(project_section(kind="panel", base_url="http://127.0.0.1:1/v1",
                                      panel_models=("a", "b")))
  assert isinstance(panel, PanelCoach) and [m.config.model for m in panel.members] == ["a", "b"]
  assert all(isinstance(c, Coach) for c in (coach, panel, build_coach(project_section())))
  stats = build_stats(project_section(prices=CoachPrices(input_per_mtok=1.5,
                                                         output_per_mtok=6.0)))
  assert stats.default_price == (1.5, 6.0)


def test_coach_section_errors_name_the_field():
  for changes, field in (({"kind": "openai", "model": "m"}, "base_url"),
                         ({"kind": "replay", "model": "m"}, "cache_path"),
                         ({"kind": "oracle"}, "kind"), ({"max_retries": -1}, "max_retries")):
    with pytest.raises(ConfigError, match=f"{field}: "):
      CoachConfig(**changes)
  with pytest.raises(ConfigError, match="unknown field.*'coach.max_retries'"):
    from_configdict(CoachConfig, {**to_configdict(CoachConfig()).to_dict(), "max_retry": 3},
                    "coach")
  with pytest.raises(ValueError, match="coach.model"):  # the builder names what is missing too
    build_coach(dataclasses.replace(CoachConfig(), kind="replay", cache_path="/tmp/x.sqlite"))
  assert all(doc for doc in docs(CoachConfig).values())
  assert set(KINDS) == {"rule", "openai", "panel", "replay", "biased"}


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
