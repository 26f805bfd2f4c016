"""The `data` config section (a workflow may extend it) and the steps every task loader shares.

A workflow's task loader (`Workflow.load_tasks`) reads its tasks from the section, then calls
`split(train, evals, data, eval_sets)`: the reference's seeded subsample of the training pool,
the held-out check of every eval set, and the `eval.sets` selection.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Sequence

from mappa_jax.data import loaders
from mappa_jax.data.loaders import Task
from mappa_jax.schema import Section, field, non_negative, positive


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig(Section):
  """`data.synthetic`: the generated task family of data.source='synthetic'."""
  seed: int = field(0, "task generator seed", check=non_negative, fix="Use >= 0.")
  n_train: int = field(64, "training tasks", check=non_negative, fix="Use >= 0.")
  n_eval: int = field(4, "held-out eval tasks", check=non_negative, fix="Use >= 0.")
  difficulty: int = field(1, "1 = the easiest tasks; higher adds operations, columns or noise",
                          check=positive, fix="Use >= 1.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
  """The `data` section: where training and eval tasks come from."""
  source: Literal["synthetic", "files"] = field(
      "synthetic", "'synthetic' (generated, offline) | 'files' (task records; the paper's)")
  train_files: tuple[str, ...] = field((), "JSON/JSONL task records for training "
                                       "(mappa-reference.md §6)")
  eval_files: tuple[str, ...] = field((), "JSON/JSONL eval sets, one per file (named by stem)")
  max_train_samples: int = field(0, "REF seeded subsample of the training pool (0 = all)",
                                 check=non_negative, fix="Use >= 0 (0 = all).")
  subsample_seed: int = field(42, "REF seed of the subsample and of the per-epoch shuffle",
                              check=non_negative, fix="Use >= 0.")
  prompt_suffix: str = field(
      "Please reason step by step, and put your final answer within \\boxed{}.",
      "REF appended to every file prompt after a blank line ('' = none)")
  allow_eval_overlap: bool = field(False, "FIX §10.11: eval tasks that are also training "
                                   "tasks are an error unless allowed")
  stratify_key: str = field("", "REF DSBench: batches hold a fixed share of each value of "
                            "task.metadata[key] ('' = plain shuffled batches)")
  synthetic: SyntheticConfig = field(SyntheticConfig(), "data.source='synthetic' settings")

  def problems(self) -> list[tuple[str, str]]:
    if self.source == "files" and not self.train_files:
      return [("train_files", "is empty but data.source='files'; set --config.data."
               "train_files='(\"path/train.json\",)' or data.source='synthetic'")]
    if self.source == "synthetic" and self.synthetic.n_train == 0:
      return [("synthetic.n_train", "is 0 but data.source='synthetic'; use >= 1")]
    return []

  def eval_set_names(self, synthetic_name: str) -> tuple[str, ...]:
    """The eval sets this section provides (`synthetic_name` for the synthetic source)."""
    if self.source == "synthetic":
      return (synthetic_name,)
    return tuple(Path(f).stem for f in self.eval_files)


def load_files(paths: Sequence[str], data: DataConfig) -> list[Task]:
  """{prompt, answer} records with the section's prompt suffix (REF: after a blank line)."""
  suffix = data.prompt_suffix
  tasks: list[Task] = []
  for path in paths:
    tasks += loaders.load_tasks(path, add_prompt_suffix=bool(suffix),
                                prompt_suffix="\n\n" + suffix if suffix else "")
  return tasks


def split(train: list[Task], evals: dict[str, list[Task]], data: DataConfig,
          eval_sets: Sequence[str]) -> tuple[list[Task], dict[str, list[Task]]]:
  """Files: the seeded subsample of the training pool and the held-out check of every eval
  set; then the eval sets named in `eval_sets` (() = all)."""
  if data.source == "files":
    if data.max_train_samples:
      train = loaders.subsample(train, data.max_train_samples, seed=data.subsample_seed)
    for tasks in evals.values():
      loaders.check_heldout(train, tasks, allow_overlap=data.allow_eval_overlap)
  if eval_sets:
    evals = {k: v for k, v in evals.items() if k in eval_sets}
  return train, evals
