"""Blame benchmark: does the coach blame the agent that caused a failure?

    python benchmarks/blame.py [--n 64] [--dsbench-n 8] [--workflows mathchat,dsbench]
        [--coach.kind=rule | --coach.kind=openai --coach.base_url=URL --coach.model=NAME ...]
        [--trajectories-out DIR]

A scripted team that does every job right (mappa_jax/workflows/scripted_teams.py) runs the
real workflows, with the real bubblewrap sandbox, on N tasks: once fault-free, then once per
injected fault with that fault in every trajectory (mappa_jax/workflows/faults.py):

  mathchat  problem_solver wrong_answer    its final answer is a nearby wrong number
  mathchat  code_executor  wrong_operand   its program computes a different expression
  dsbench   data_engineer  missing_file    it never saves X_test.pkl

MathChat tasks are synthetic arithmetic problems (levels 1-3, seed --seed); DSBench tasks are
the offline suite (mappa_jax/data/dsbench_suite.py, built into a temporary directory). Every
downstream agent handles the fault as a careful agent would (the Verifier re-derives the
answer; the Analyst tries to load X_test.pkl and reports that it is missing), so a good coach
blames the faulty agent and leaves the innocents' scores alone.

The tables (definitions in mappa_jax/eval/blame.py): which agent got the lowest score relative
to its own fault-free mean, per injected fault, and each agent's score relative to its
fault-free mean. Goals: the faulty agent blamed in >= 95 % of faulty trajectories, innocents
keeping >= 90 % of their fault-free mean. The last line reads
`blame: <P>% of faulty trajectories blame the faulty agent (<N> trajectories, coach <kind>)`.

`--coach.<field>=<value>` are the fields of the `coach` config section (mappa_jax.coach
config), built with the coach package's own builder: any OpenAI-compatible endpoint can be
measured before paying for a training run. Values are read as Python literals when they parse
(`--coach.temperature=0.0`), else as strings.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import os
import sys
import tempfile
import time
from typing import Sequence

from mappa_jax.coach.config import CoachConfig, build_coach
from mappa_jax.data import dsbench as ds
from mappa_jax.data import dsbench_suite, synthetic
from mappa_jax.eval import blame
from mappa_jax.models.tokenizer import Tokenizer, tiny_tokenizer_dir
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.workflows import faults
from mappa_jax.workflows.dsbench import ORDER as DSBENCH_AGENTS
from mappa_jax.workflows.dsbench import DSBenchConfig, DSBenchWorkflow
from mappa_jax.workflows.mathchat import MathChatWorkflow
from mappa_jax.workflows.records import write_trajectories
from mappa_jax.workflows.scripted import ScriptedEngine
from mappa_jax.workflows.scripted_teams import DSBenchTeam, MathChatTeam

MATHCHAT_AGENTS = ("problem_solver", "code_executor", "verifier")
FAULTS = {
    "mathchat": (faults.FaultsConfig(agent="problem_solver", kind="wrong_answer", rate=1.0),
                 faults.FaultsConfig(agent="code_executor", kind="wrong_operand", rate=1.0)),
    "dsbench": (faults.FaultsConfig(agent="data_engineer", kind="missing_file", rate=1.0,
                                    file="X_test.pkl"),),
}
# Tasks of the offline suite in the order they are used (classification and regression
# alternate, so a small --dsbench-n covers both strata).
_DSBENCH_ORDER = ("iris-species", "diabetes-progression", "breast-cancer-diagnosis",
                  "linnerud-fitness", "wine-cultivar", "grunfeld-investment",
                  "digits-recognition", "food-expenditure", "affairs-prediction",
                  "doctor-visits", "election-vote-1996", "school-math-performance",
                  "party-identification", "us-macro-investment", "penguin-species",
                  "penguin-body-mass")


def build_coach_from_flags(section: dict):
  """The coach of a `coach` section given as flags: the typed section (every field checked,
  e.g. base_url for kind='openai') and mappa_jax.coach.config's own builder."""
  return build_coach(CoachConfig(**section))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--n", type=int, default=64, help="MathChat tasks (trajectories per fault)")
  ap.add_argument("--dsbench-n", type=int, default=8,
                  help="DSBench tasks (at most the suite's 16; trajectories per fault)")
  ap.add_argument("--workflows", default="mathchat,dsbench")
  ap.add_argument("--seed", type=int, default=0, help="MathChat task seed")
  ap.add_argument("--concurrency", type=int, default=4, help="workflows in flight at once")
  ap.add_argument("--trajectories-out", default="",
                  help="write every trajectory (JSONL per run) into this directory")
  args, rest = ap.parse_known_args(argv)
  coach: dict = {"kind": "rule"}
  for arg in rest:
    if not arg.startswith("--coach.") or "=" not in arg:
      ap.error(f"unrecognized argument {arg!r} (coach fields: --coach.<field>=<value>)")
    key, value = arg[len("--coach."):].split("=", 1)
    try:
      coach[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      coach[key] = value
  unknown = set(args.workflows.split(",")) - set(FAULTS)
  if unknown:
    ap.error(f"--workflows: unknown {sorted(unknown)} (known: {sorted(FAULTS)})")
  if coach.get("kind") == "rule":  # the arithmetic checks are how it blames on MathChat
    coach.setdefault("rule_check_arithmetic", True)
  return args, coach


async def _run_all(workflow, tasks, concurrency: int):
  sem = asyncio.Semaphore(concurrency)

  async def one(task):
    async with sem:
      return await workflow.run(task)
  return list(await asyncio.gather(*[one(t) for t in tasks]))


def run_tasks(workflow_name: str, tasks, fault: faults.FaultsConfig | None, *, tokenizer,
              sandbox, coach, concurrency: int):
  """The scripted team on `tasks`, with `fault` injected (None: fault-free)."""
  with tempfile.TemporaryDirectory(prefix="mappa_blame_") as root:
    common = dict(tokenizer=tokenizer, coach=coach, sandbox=sandbox, workspace_root=root)
    if workflow_name == "mathchat":
      team = MathChatTeam(tasks)
      wf = MathChatWorkflow(engine=ScriptedEngine(tokenizer, team.script()),
                            sampling=SamplingParams(max_new_tokens=2048), **common)
    else:
      team = DSBenchTeam(tasks)
      wf = DSBenchWorkflow(engine=ScriptedEngine(tokenizer, team.script()),
                           sampling=SamplingParams(max_new_tokens=4096),
                           config=DSBenchConfig(tool_timeout_s=120.0), **common)
    if fault is not None:
      faults.FaultInjector(fault, tokenizer).install(wf)
    trajs = asyncio.run(_run_all(wf, tasks, concurrency))
  failed = [t for t in trajs if t.error]
  if failed:
    raise RuntimeError(f"{len(failed)} {workflow_name} trajectories failed, e.g. "
                       f"{failed[0].task_id}: {failed[0].error}")
  return trajs


def dsbench_tasks(root: str, n: int):
  ids = list(_DSBENCH_ORDER[:n])
  dsbench_suite.build(root, only=ids)
  tasks = ds.load_dsbench_tasks(root, "tasks.jsonl",
                                cleaned_prompts=os.path.join(root, "cleaned_prompts.json"))
  order = {t: i for i, t in enumerate(ids)}
  return sorted(tasks, key=lambda t: order.get(t.task_id, len(order)))


def main(argv: Sequence[str] | None = None) -> int:
  args, coach_section = parse_args(argv)
  coach = build_coach_from_flags(coach_section)
  kind = coach_section.get("kind", "rule")
  tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir())
  sandbox = Sandbox("bwrap", SandboxLimits(timeout_s=120.0, memory_bytes=2 << 30),
                    max_concurrency=max(1, args.concurrency))
  rows, means = [], {}
  t0 = time.perf_counter()
  suite_dir = tempfile.TemporaryDirectory(prefix="mappa_blame_suite_")
  try:
    for workflow_name in args.workflows.split(","):
      if workflow_name == "mathchat":
        tasks = synthetic.generate(args.n, split="train", seed=args.seed,
                                   config=synthetic.ArithmeticConfig(levels=(1, 2, 3)))
        agents = MATHCHAT_AGENTS
      else:
        tasks = dsbench_tasks(suite_dir.name, args.dsbench_n)
        agents = DSBENCH_AGENTS
      run = lambda fault: run_tasks(  # noqa: E731
          workflow_name, tasks, fault, tokenizer=tokenizer, sandbox=sandbox, coach=coach,
          concurrency=args.concurrency)
      baseline = run(None)
      means[workflow_name] = blame.fault_free_means(baseline)
      outputs = {"fault_free": baseline}
      for fault in FAULTS[workflow_name]:
        trajs = run(fault)
        rows.append(blame.analyse(workflow_name, agents, baseline, trajs))
        outputs[f"{fault.agent}_{fault.kind}"] = trajs
      if args.trajectories_out:
        for name, trajs in outputs.items():
          write_trajectories(trajs, os.path.join(args.trajectories_out,
                                                 f"{workflow_name}_{name}.jsonl"),
                             decode=tokenizer.decode)
  finally:
    sandbox.close()
    suite_dir.cleanup()
  print(f"Blame benchmark: coach {kind} ({getattr(coach, 'name', kind)}), scripted correct "
        f"teams, real workflows and bwrap sandbox ({time.perf_counter() - t0:.0f} s)\n")
  print(blame.format_table(rows, means))
  rate, n = blame.overall_rate(rows)
  print(f"blame: {100 * rate:.1f}% of faulty trajectories blame the faulty agent "
        f"({n} trajectories, coach {kind})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
