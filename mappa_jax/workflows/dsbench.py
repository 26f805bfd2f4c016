"""DSBench: Data Engineer -> Modeler -> Analyst (up to 4 turns each) over one real workspace.

Unlike the reference (which re-uploads files to a stateless sandbox and fetches them back by
glob), every trajectory owns a workspace directory holding train.csv/test.csv: whatever a code
block saves stays there for later blocks, turns and agents. Each prompt lists the files that
exist when the agent starts. After every action the required artifacts are checked
(cumulative: the Analyst is also judged on X_test.pkl and model.pkl being there) and reported to
the coach as signals and as a text note; each Analyst action's submission.csv is scored with
`mappa_jax.data.dsbench.score_submission` (joined on the id column) and the metrics go to the
Analyst's coach request as ground truth (the Analyst is the only role that sees it).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from mappa_jax import workflows
from mappa_jax.coach.types import CoachRequest
from mappa_jax.data import config as data_config
from mappa_jax.data import dsbench as ds
from mappa_jax.data import dsbench_suite
from mappa_jax.data.config import DataConfig
from mappa_jax.data.loaders import Task
from mappa_jax.schema import field
from mappa_jax.tools.workspace import Workspace
from mappa_jax.workflows import prompts
from mappa_jax.workflows.base import AgentConfig, AgentSpec, LoopOptions, Workflow
from mappa_jax.workflows.records import Action, Trajectory

log = logging.getLogger(__name__)

REQUIRED_FILES = {
    "data_engineer": ("X_train.pkl", "y_train.pkl", "X_test.pkl"),
    "modeler": ("model.pkl",),
    "analyst": ("submission.csv",),
}
ORDER = ("data_engineer", "modeler", "analyst")


@dataclasses.dataclass(frozen=True)
class DSBenchConfig:
  """DSBench settings beyond its agents.

  Attributes:
    tool_timeout_s: sandbox limit per code block (reference 60 s; sandbox.timeout_s).
    baseline_from_train: score_submission's baseline is fit on train.csv.
  """
  tool_timeout_s: float = 60.0
  baseline_from_train: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class DSBenchDataConfig(DataConfig):
  """The `data` section of DSBench: the common fields plus the DSBench release's files."""
  dsbench_root: str = field("", "DSBench data root holding data_resplit/<task>/{train,test}.csv "
                            "and answers/<task>/ (the public release; not shipped); '' = the "
                            "directory of the first train file")
  cleaned_prompts_file: str = field("", "REF task_id -> cleaned description, metric, target "
                                    "and id columns ('' = none)")


def required_through(agent: str) -> tuple[str, ...]:
  """Artifacts that must exist once `agent` is done (its own and every upstream agent's)."""
  out: list[str] = []
  for name in ORDER[:ORDER.index(agent) + 1]:
    out += REQUIRED_FILES[name]
  return tuple(out)


def file_listing(ws: Workspace) -> str:
  files = ws.list_files()
  if not files:
    return "(the working directory is empty)"
  return "\n".join(f"- {name} ({size} bytes)" for name, size in files)


def metrics_text(m: dict[str, Any]) -> str:
  """Readable outcome summary for the coach."""
  if not m.get("valid"):
    return f"Submission invalid: {m.get('error') or 'unknown error'}"
  better = "higher" if m.get("higher_is_better") else "lower"
  return (f"Metric {m['metric']} ({better} is better): {m['value']:.6g} on "
          f"{m.get('n_predictions')} predictions (expected {m.get('n_expected')}); "
          f"trivial baseline {m.get('baseline_value', float('nan')):.6g}; "
          f"normalized gain {m.get('normalized_gain', 0.0):.3g}.")


@workflows.register
class DSBenchWorkflow(Workflow):
  """Runs one DSBench task (data.loaders.Task with DSBench metadata) through the pipeline."""
  name = "dsbench"
  AGENTS = {
      "data_engineer": AgentConfig(
          role="data_engineer", max_turns=4, tools=("python",),  # REF
          role_description=("Loads train.csv/test.csv, explores and preprocesses them, and "
                            "saves X_train.pkl, y_train.pkl and X_test.pkl.")),
      "modeler": AgentConfig(
          role="modeler", max_turns=4, tools=("python",), sees=("data_engineer",),  # REF
          role_description=("Loads the Data Engineer's arrays, selects and cross-validates a "
                            "model, and saves model.pkl.")),
      "analyst": AgentConfig(
          role="analyst", max_turns=4, tools=("python",), sees=("data_engineer", "modeler"),
          sees_ground_truth_in_coach=True,  # REF: the coach gets the outcome metrics
          role_description=("Loads the model and X_test.pkl, predicts, and writes "
                            "submission.csv in the competition format.")),
  }
  PROMPTS = {"data_engineer": prompts.DS_DATA_ENGINEER, "modeler": prompts.DS_MODELER,
             "analyst": prompts.DS_ANALYST}
  DATA = DSBenchDataConfig
  # Submission validity and the metric's gain over the trivial baseline (in [0, 1]).
  OUTCOME_KEYS = ("valid", "normalized_gain")
  REWARD_OUTCOME_KEY = "normalized_gain"
  EVAL_KIND = "dsbench"
  EVAL_HEADLINE = ("success_rate", "tasks")
  SYNTHETIC_SET = "suite"

  def __init__(self, *, config: DSBenchConfig = DSBenchConfig(),
               options: LoopOptions = LoopOptions(strip_thinking_handoff=True), **kw):
    super().__init__(options=options, tool_timeout_s=config.tool_timeout_s, **kw)
    self.config = config

  @classmethod
  def load_tasks(cls, exp, workdir: str) -> tuple[list[Task], dict[str, list[Task]]]:
    """Synthetic: the offline suite, built deterministically under <workdir>/dsbench_suite (once
    per workdir). Files: DSBench records whose CSVs live under data.dsbench_root."""
    data = exp.data
    if data.source == "synthetic":
      root = os.path.join(workdir, "dsbench_suite")
      manifest = os.path.join(root, "manifest.json")
      if os.path.exists(manifest):  # built by an earlier run of this workdir (deterministic)
        with open(manifest, encoding="utf-8") as f:
          info = json.load(f)
      else:
        info = dsbench_suite.build(root)
      tasks = ds.load_dsbench_tasks(root, info["tasks_file"])
      eval_ids = set(info.get("eval_task_ids", ()))
      train = [t for t in tasks if t.task_id not in eval_ids][:data.synthetic.n_train]
      evals = [t for t in tasks if t.task_id in eval_ids][:data.synthetic.n_eval]
      return data_config.split(train, {cls.SYNTHETIC_SET: evals}, data, exp.eval.sets)
    root = data.dsbench_root or os.path.dirname(os.path.abspath(data.train_files[0]))

    def load(path):
      return ds.load_dsbench_tasks(root, path, cleaned_prompts=data.cleaned_prompts_file or None)

    train = [t for path in data.train_files for t in load(path)]
    evals = {Path(p).stem: load(p) for p in data.eval_files}
    return data_config.split(train, evals, data, exp.eval.sets)

  @classmethod
  def settings(cls, exp) -> dict[str, Any]:
    return {"config": DSBenchConfig(tool_timeout_s=exp.sandbox.timeout_s),
            "options": LoopOptions(reference_context_bug=exp.rl.reference_context_bug,
                                   strip_thinking_handoff=True)}

  async def run(self, task, sample_index: int = 0) -> Trajectory:
    meta = task.metadata
    for key in ("train_file", "test_file"):
      if not meta.get(key):
        raise ValueError(f"DSBench task {task.task_id!r}: metadata['{key}'] is missing (load "
                         "tasks with mappa_jax.data.dsbench.load_dsbench_tasks)")
    traj = Trajectory(task_id=str(task.task_id), sample_index=sample_index,
                      task_type=getattr(task, "task_type", ""))
    ws = self._workspace(traj)
    try:
      ws.add_files({"train.csv": meta["train_file"], "test.csv": meta["test_file"]})
    except Exception:
      ws.cleanup()  # a bad task must not leave a workspace directory behind
      raise
    task_text = meta.get("cleaned_prompt") or task.prompt
    saved: dict[str, set[str]] = {n: set() for n in ORDER}
    summaries: dict[str, str] = {}
    try:
      for name in ORDER:
        spec = self.agents[name]
        fmt = {"role_title": prompts.DS_ROLE_TITLES[name], "max_turns": spec.max_turns,
               "task": task_text, "files": file_listing(ws),
               "de_summary": summaries.get("data_engineer", "(none)"),
               "modeler_summary": summaries.get("modeler", "(none)"),
               "warnings": self._warnings(ws)}
        run = await self.run_agent(traj, spec, spec.prompt_template.format(**fmt), workspace=ws,
                                   request_fn=self._request_fn(task, ws, saved, traj))
        summaries[name] = self.handoff(run)
    except Exception as e:  # pylint: disable=broad-except
      log.exception("dsbench failed on task %s", traj.task_id)
      traj.error = f"{type(e).__name__}: {e}"
    traj.metadata["files"] = ws.list_files()
    traj.metadata["saved_by"] = {k: sorted(v) for k, v in saved.items()}
    await self.finish(traj)
    return traj

  @staticmethod
  def _warnings(ws: Workspace) -> str:
    names = [n.lower() for n, _ in ws.list_files()]
    out = ""
    if not any("x_test" in n or "xtest" in n for n in names):
      out += prompts.DS_MISSING_WARNING.format(what="X_test")
    if not any("model" in n for n in names):
      out += prompts.DS_MISSING_WARNING.format(what="model")
    return out

  def _request_fn(self, task, ws: Workspace, saved: dict[str, set[str]], traj: Trajectory):
    async def make(spec: AgentSpec, action: Action, agent_input: str) -> CoachRequest:
      # Awaited right after the action's tools, before the next turn: the workspace is as this
      # action left it.
      for call in action.tool_calls:
        saved[spec.name].update(call.files_changed)
      signals: dict[str, Any] = self.base_signals(action)
      required = required_through(spec.name)
      missing = [f for f in required if not ws.exists(f)]
      signals["required_files"] = list(required)
      signals["missing_files"] = missing
      note = ("[Workspace check after this action] all required files present: "
              + ", ".join(required)) if not missing else (
                  "[Workspace check after this action] MISSING required files: "
                  + ", ".join(missing))
      ground_truth = None
      if spec.name == "analyst":
        m = await asyncio.to_thread(self._score, task, ws)  # pandas work off the loop
        if m is not None:
          signals.update(submission_valid=bool(m.get("valid")), metric_name=m.get("metric"),
                         metric_value=m.get("value"), baseline_value=m.get("baseline_value"),
                         higher_is_better=m.get("higher_is_better"))
          traj.metadata["_metrics"] = dict(m)  # the last scored submission wins
          ground_truth = metrics_text(m) if spec.sees_ground_truth_in_coach else None
      obs = action.tool_observation
      return CoachRequest(
          workflow=self.name, role=spec.role, role_description=spec.role_description,
          task=task.prompt, agent_input=agent_input, agent_output=action.text,
          tool_observation=(obs + "\n\n" if obs else "") + note,
          workspace_files=tuple(f"{n} ({s} bytes)" for n, s in ws.list_files()),
          upstream_files=tuple((n, tuple(sorted(saved[n]))) for n in ORDER
                               if ORDER.index(n) < ORDER.index(spec.name)),
          ground_truth=ground_truth, task_type=getattr(task, "task_type", ""),
          signals=signals,
          metadata={"task_id": str(task.task_id), "agent": spec.name, "turn": action.turn})
    return make

  def _score(self, task, ws: Workspace) -> dict[str, Any] | None:
    """Scores submission.csv when the task declares how; None when it cannot be scored."""
    meta = task.metadata
    if not all(meta.get(k) for k in ("answer_file", "metric", "id_column", "target_columns")):
      return None
    if not ws.exists("submission.csv"):  # regular file only: never follow a planted symlink
      return {"valid": False, "error": "no submission.csv in the workspace",
              "metric": meta["metric"], "value": float("nan"), "baseline_value": float("nan"),
              "higher_is_better": meta.get("higher_is_better")}
    try:
      return ds.score_submission(
          ws.path / "submission.csv", meta["answer_file"], metric=meta["metric"],
          id_column=meta["id_column"], target_columns=meta["target_columns"],
          train_csv=meta.get("train_file") if self.config.baseline_from_train else None)
    except ValueError as e:
      return {"valid": False, "error": str(e), "metric": meta["metric"], "value": float("nan"),
              "baseline_value": float("nan"), "higher_is_better": meta.get("higher_is_better")}

  async def finish(self, traj: Trajectory) -> Trajectory:
    m = traj.metadata.pop("_metrics", None)
    if m is not None:
      traj.outcome.update({k: v for k, v in m.items()
                           if not (isinstance(v, float) and math.isnan(v))})
    return await super().finish(traj)

