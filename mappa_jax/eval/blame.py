"""Blame analysis: does the coach blame the agent that caused a failure?

Inputs are trajectories of the same tasks run twice by the same (scripted) team: fault-free,
and with one agent faulty (workflows/faults.py records the fault on each trajectory).

Definitions:
  agent score      the mean coach score of an agent's scored actions in one trajectory.
  fault-free mean  an agent's mean agent score over the fault-free trajectories.
  relative score   agent score / fault-free mean. Raw scores are not comparable across roles
                   (the rule coach's Code Executor rubric tops out at 7 for a program), so
                   "the agent with the lowest score" is taken relative to each agent's own
                   fault-free level.
  blamed           the agent with the unique lowest relative score in a faulty trajectory
                   ('tie' when the lowest is shared, e.g. nobody lost anything).
  blame rate       the share of faulty trajectories (a fault was applied) whose blamed agent is
                   the faulty one.
  kept             for an innocent agent: its mean agent score over the faulty trajectories /
                   its fault-free mean (goal: >= 0.9 for agents that handled the fault right).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mappa_jax.workflows.records import Trajectory

TIE = "tie"


def agent_scores(traj: Trajectory) -> dict[str, float]:
  """{agent: mean score of its scored actions} (agents with no scored action left out)."""
  by_agent: dict[str, list[float]] = {}
  for a in traj.actions:
    if a.coach is not None and a.coach.is_scored and a.coach.score is not None:
      by_agent.setdefault(a.agent, []).append(float(a.coach.score))
  return {k: float(np.mean(v)) for k, v in by_agent.items()}


def fault_free_means(trajs: Sequence[Trajectory]) -> dict[str, float]:
  """{agent: mean agent score} over fault-free trajectories."""
  pooled: dict[str, list[float]] = {}
  for t in trajs:
    for agent, s in agent_scores(t).items():
      pooled.setdefault(agent, []).append(s)
  return {k: float(np.mean(v)) for k, v in pooled.items()}


def blamed_agent(scores: dict[str, float], baseline: dict[str, float], *,
                 tol: float = 1e-9) -> str:
  """The agent with the unique lowest relative score, or TIE."""
  rel = {a: s / baseline[a] for a, s in scores.items() if baseline.get(a, 0.0) > 0.0}
  if not rel:
    return TIE
  ordered = sorted(rel.items(), key=lambda kv: (kv[1], kv[0]))
  if len(ordered) > 1 and ordered[1][1] - ordered[0][1] <= tol:
    return TIE
  return ordered[0][0]


@dataclasses.dataclass(frozen=True)
class BlameRow:
  """One injected fault's results.

  Attributes:
    workflow, agent, kind: the fault.
    agents: the workflow's agents in order.
    n_runs: trajectories run with the fault; n_faulty: those where it was applied.
    blamed: {agent or 'tie': count} over the faulty trajectories.
    relative: {agent: mean agent score over faulty trajectories / fault-free mean}.
    min_kept: {innocent agent: lowest single-trajectory relative score}.
  """
  workflow: str
  agent: str
  kind: str
  agents: tuple[str, ...]
  n_runs: int
  n_faulty: int
  blamed: dict[str, int]
  relative: dict[str, float]
  min_kept: dict[str, float]

  @property
  def blame_rate(self) -> float:
    return self.blamed.get(self.agent, 0) / self.n_faulty if self.n_faulty else 0.0

  @property
  def innocents(self) -> tuple[str, ...]:
    return tuple(a for a in self.agents if a != self.agent)

  @property
  def downstream(self) -> tuple[str, ...]:
    i = self.agents.index(self.agent) if self.agent in self.agents else -1
    return self.agents[i + 1:]

  def innocents_kept(self, threshold: float = 0.9) -> bool:
    return all(self.relative.get(a, 0.0) >= threshold for a in self.innocents
               if a in self.relative)


def analyse(workflow: str, agents: Sequence[str], baseline: Sequence[Trajectory],
            faulty: Sequence[Trajectory]) -> BlameRow:
  """One BlameRow from the fault-free and the faulty runs of the same tasks."""
  means = fault_free_means(baseline)
  applied = [t for t in faulty if t.metadata.get("fault", {}).get("applied")]
  if not faulty or "fault" not in faulty[0].metadata:
    raise ValueError("analyse: the faulty trajectories carry no metadata['fault'] (run them "
                     "through workflows.faults.FaultInjector.install)")
  fault = faulty[0].metadata["fault"]
  blamed: dict[str, int] = {a: 0 for a in agents}
  blamed[TIE] = 0
  per_agent: dict[str, list[float]] = {a: [] for a in agents}
  for t in applied:
    scores = agent_scores(t)
    who = blamed_agent(scores, means)
    blamed[who] = blamed.get(who, 0) + 1
    for a, s in scores.items():
      if means.get(a, 0.0) > 0.0:
        per_agent.setdefault(a, []).append(s / means[a])
  relative = {a: float(np.mean(v)) for a, v in per_agent.items() if v}
  min_kept = {a: float(np.min(v)) for a, v in per_agent.items() if v and a != fault["agent"]}
  return BlameRow(workflow=workflow, agent=fault["agent"], kind=fault["kind"],
                  agents=tuple(agents), n_runs=len(faulty), n_faulty=len(applied),
                  blamed=blamed, relative=relative, min_kept=min_kept)


def overall_rate(rows: Sequence[BlameRow]) -> tuple[float, int]:
  """(share of all faulty trajectories that blame the faulty agent, their number)."""
  n = sum(r.n_faulty for r in rows)
  hit = sum(r.blamed.get(r.agent, 0) for r in rows)
  return (hit / n if n else 0.0), n


def format_table(rows: Sequence[BlameRow], means: dict[str, dict[str, float]], *,
                 blame_goal: float = 0.95, keep_goal: float = 0.9) -> str:
  """The confusion table (rows: injected faults; columns: which agent got the lowest relative
  score) and each agent's score relative to its fault-free mean, per workflow."""
  lines = []
  for workflow in dict.fromkeys(r.workflow for r in rows):
    group = [r for r in rows if r.workflow == workflow]
    agents = group[0].agents
    base = means.get(workflow, {})
    lines.append(f"{workflow}: fault-free mean score per agent: "
                 + ", ".join(f"{a} {base.get(a, float('nan')):.2f}" for a in agents))
    width = max(len(f"{r.agent} {r.kind}") for r in group) + 2
    cols = [*agents, TIE]
    head = f"{'injected fault':<{width}}{'faulty':>8}  " + "".join(f"{c:>16}" for c in cols)
    lines += ["  lowest relative score (count of faulty trajectories; * = the faulty agent)",
              "  " + head + f"{'blamed':>9}"]
    for r in group:
      cells = "".join(f"{str(r.blamed.get(c, 0)) + ('*' if c == r.agent else ''):>16}"
                      for c in cols)
      ok = "ok" if r.blame_rate >= blame_goal else "BELOW GOAL"
      lines.append(f"  {r.agent + ' ' + r.kind:<{width}}{f'{r.n_faulty}/{r.n_runs}':>8}  "
                   f"{cells}{100 * r.blame_rate:>8.1f}% {ok}")
    lines += ["  score relative to the agent's fault-free mean (innocents should keep "
              f">= {keep_goal:.0%}; min = worst single trajectory)",
              "  " + f"{'injected fault':<{width}}{'':>8}  " + "".join(f"{a:>20}" for a in agents)
              + f"{'innocents':>11}"]
    for r in group:
      cells = ""
      for a in agents:
        v = r.relative.get(a)
        text = "-" if v is None else (f"{v:.3f}*" if a == r.agent else
                                      f"{v:.3f} (min {r.min_kept.get(a, v):.2f})")
        cells += f"{text:>20}"
      kept = "kept" if r.innocents_kept(keep_goal) else "NOT KEPT"
      lines.append(f"  {r.agent + ' ' + r.kind:<{width}}{'':>8}  {cells}{kept:>11}")
    lines.append("")
  return "\n".join(lines)
