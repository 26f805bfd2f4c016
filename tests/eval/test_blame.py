"""Blame analysis on hand-made trajectories, and the blame benchmark end to end (MathChat)."""
import importlib.util
import pathlib

import pytest

from mappa_jax.coach.types import CoachResult
from mappa_jax.eval import blame
from mappa_jax.workflows.records import Action, Trajectory

AGENTS = ("a", "b", "c")


def traj(scores, fault=None, task="t"):
  actions = []
  for agent, values in scores.items():
    for turn, s in enumerate(values):
      coach = CoachResult(status="scored", score=s) if s is not None else CoachResult(
          status="invalid")
      actions.append(Action(agent=agent, turn=turn, prompt_ids=[1], response_ids=[2],
                            rollout_logprobs=[0.0], finish_reason="stop", coach=coach))
  meta = {} if fault is None else {"fault": {"agent": fault, "kind": "k", "faulty": True,
                                             "applied": True}}
  return Trajectory(task, 0, actions=actions, metadata=meta)


def test_agent_scores_and_blame_are_relative_to_each_agents_own_level():
  t = traj({"a": [10.0], "b": [3.0, None, 5.0], "c": [None]})
  assert blame.agent_scores(t) == {"a": 10.0, "b": 4.0}
  base = {"a": 10.0, "b": 8.0, "c": 5.0}
  # b has the lowest raw score but kept half; a kept 40 %: a is blamed.
  assert blame.blamed_agent({"a": 4.0, "b": 4.0, "c": 5.0}, base) == "a"
  assert blame.blamed_agent({"a": 5.0, "b": 4.0, "c": 5.0}, base) == blame.TIE  # 0.5 each
  assert blame.blamed_agent({"a": 10.0, "b": 8.0}, base) == blame.TIE
  assert blame.blamed_agent({"a": 1.0}, {"a": 0.0}) == blame.TIE  # nothing to compare with


def test_analyse_counts_blame_and_what_innocents_kept():
  baseline = [traj({"a": [10.0], "b": [6.0, 8.0], "c": [10.0]}),
              traj({"a": [10.0], "b": [7.0], "c": [8.0]})]
  assert blame.fault_free_means(baseline) == {"a": 10.0, "b": 7.0, "c": 9.0}
  faulty = [traj({"a": [10.0], "b": [3.5], "c": [9.0]}, fault="b"),
            traj({"a": [10.0], "b": [7.0], "c": [4.5]}, fault="b"),
            traj({"a": [10.0], "b": [7.0], "c": [9.0]}, fault="b")]
  faulty.append(traj({"a": [1.0], "b": [1.0], "c": [1.0]}))
  faulty[-1].metadata["fault"] = {"agent": "b", "kind": "k", "faulty": True, "applied": False}
  row = blame.analyse("wf", AGENTS, baseline, faulty)
  assert (row.n_runs, row.n_faulty) == (4, 3)  # the fault that was not applied is not counted
  assert row.blamed == {"a": 0, "b": 1, "c": 1, blame.TIE: 1}
  assert row.blame_rate == pytest.approx(1 / 3)
  assert row.relative == pytest.approx({"a": 1.0, "b": (0.5 + 1 + 1) / 3, "c": (1 + 0.5 + 1) / 3})
  assert row.min_kept == pytest.approx({"a": 1.0, "c": 0.5})
  assert row.innocents == ("a", "c") and row.downstream == ("c",)
  assert not row.innocents_kept(0.9) and row.innocents_kept(0.8)
  assert blame.overall_rate([row, row]) == (pytest.approx(1 / 3), 6)
  table = blame.format_table([row], {"wf": blame.fault_free_means(baseline)})
  assert "b k" in table and "33.3% BELOW GOAL" in table and "NOT KEPT" in table
  with pytest.raises(ValueError, match="metadata"):
    blame.analyse("wf", AGENTS, baseline, [traj({"a": [1.0]})])


def test_blame_benchmark_runs_the_real_workflow(capsys):
  path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "blame.py"
  spec = importlib.util.spec_from_file_location("blame_bench", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  assert bench.main(["--n=4", "--workflows=mathchat", "--coach.kind=rule"]) == 0
  out = capsys.readouterr().out.strip().split("\n")
  assert "problem_solver wrong_answer" in "\n".join(out)
  assert out[-1] == ("blame: 100.0% of faulty trajectories blame the faulty agent "
                     "(8 trajectories, coach rule)")
  with pytest.raises(SystemExit):
    bench.main(["--coach-kind=rule"])
