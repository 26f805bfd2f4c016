"""Task records and loaders for JSON arrays / JSON Lines (mappa-bench and HF-style records).

Formats (mappa-reference.md §2.1, §6):
  * JSON array of objects (`AIME_1983_2024.json`, `amc.json`, ...);
  * JSON Lines, one object per line (`dsbench_modeling_*.json` are JSONL despite the name).
The format is detected from the first non-blank character ('[' = array, else JSON Lines).

Every prompt gets the reference suffix `PROMPT_SUFFIX` appended (configurable); the raw prompt is
kept in `metadata['raw_prompt']`. Labels become strings like the reference (AMC 18.0 -> "18.0").

Malformed input (bad JSON, a record that is not an object, a missing/empty prompt, a missing
label) raises `DataFormatError` naming the file and line, or, with `on_error='skip'`, is skipped
and counted in the returned `LoadReport`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import unicodedata
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

# mappa-reference.md §2.1: a blank line plus this sentence, appended to every prompt.
PROMPT_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class Task:
  """One task (a problem or a DSBench competition).

  Attributes:
    task_id: stable id ('1983-1', 'amc-17', 'iris-species', ...).
    prompt: the text given to the agents (suffix included when configured).
    answer: the label as a string (None for DSBench: graded from files).
    task_type: stratum for batching and statistics ('aime', 'amc', 'add_sub',
      'classification', 'regression', ...).
    metadata: the other record fields (e.g. year, source, DSBench paths/metric), plus
      'raw_prompt' (the prompt without suffix), 'source_file' and 'line'.
  """
  task_id: str
  prompt: str
  answer: str | None
  task_type: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)

  @property
  def raw_prompt(self) -> str:
    return self.metadata.get("raw_prompt", self.prompt)


class DataFormatError(ValueError):
  """A malformed data file or record; the message names the file and line."""


@dataclasses.dataclass
class LoadReport:
  """What a loader read: kept records, and skipped ones with their reasons ('file:line: why')."""
  path: str
  n_records: int = 0
  n_kept: int = 0
  skipped: list[str] = dataclasses.field(default_factory=list)

  @property
  def n_skipped(self) -> int:
    return len(self.skipped)


OnError = Literal["raise", "skip"]


def _line_of(text: str, pos: int) -> int:
  return text.count("\n", 0, pos) + 1


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
  """Yields (line, value, error) for each record of a JSON array or JSON Lines file.

  `error` is set (and `value` None) for a line that is not valid JSON (JSON Lines only; a broken
  JSON array cannot be resynchronised and raises DataFormatError).
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError as e:
    raise DataFormatError(f"{path}: file not found") from e
  except UnicodeDecodeError as e:
    raise DataFormatError(f"{path}: not UTF-8 text ({e})") from e
  stripped = text.lstrip()
  if not stripped:
    return
  if stripped[0] == "[":
    yield from _iter_json_array(path, text)
    return
  for lineno, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      yield lineno, json.loads(line), None
    except json.JSONDecodeError as e:
      if lineno == 1 and stripped[0] == "{" and _is_single_json_object(text):
        raise DataFormatError(
            f"{path}: a single JSON object, not a list of records (JSON array or JSON Lines)"
        ) from e
      yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"


def _is_single_json_object(text: str) -> bool:
  try:
    return isinstance(json.loads(text), dict)
  except json.JSONDecodeError:
    return False


def _iter_json_array(path: str, text: str) -> Iterator[tuple[int, Any, None]]:
  decoder = json.JSONDecoder()
  ws = re.compile(r"\s*")
  pos = ws.match(text, text.index("[") + 1).end()
  if pos < len(text) and text[pos] == "]":
    return
  while True:
    try:
      value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{e.lineno}: invalid JSON array element ({e.msg}, column "
                            f"{e.colno})") from e
    yield _line_of(text, pos), value, None
    pos = ws.match(text, end).end()
    if pos < len(text) and text[pos] == ",":
      pos = ws.match(text, pos + 1).end()
      continue
    if pos < len(text) and text[pos] == "]":
      return
    raise DataFormatError(f"{path}:{_line_of(text, pos)}: expected ',' or ']' in JSON array")


def load_tasks_with_report(
    path: str | os.PathLike,
    *,
    input_key: str = "prompt",
    label_key: str = "answer",
    id_key: str = "id",
    task_type: str | None = None,
    task_type_key: str | None = None,
    add_prompt_suffix: bool = True,
    prompt_suffix: str = PROMPT_SUFFIX,
    allow_null_answer: bool = False,
    on_error: OnError = "raise",
) -> tuple[list[Task], LoadReport]:
  """Loads Task records from a JSON array or JSON Lines file.

  Args:
    path: the file.
    input_key, label_key: record fields holding the prompt and the label (HF-style records:
      e.g. input_key='problem', label_key='solution').
    id_key: field with the record id; missing -> '<file stem>-<index>'. DSBench records use
      metadata.task_id.
    task_type: stratum for every record; if None, taken from `task_type_key` (a record or
      metadata field), then metadata 'data_type' (DSBench), then 'source', then the file stem.
    add_prompt_suffix, prompt_suffix: the reference's answer-format instruction.
    allow_null_answer: accept records whose label is null/missing (DSBench).
    on_error: 'raise' a DataFormatError at the first malformed record, or 'skip' and count it.

  Returns:
    (tasks, report).
  """
  path = os.fspath(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  report = LoadReport(path=path)
  tasks: list[Task] = []
  seen_ids: set[str] = set()

  def bad(lineno: int, why: str) -> None:
    msg = f"{path}:{lineno}: {why}"
    if on_error == "raise":
      raise DataFormatError(msg)
    report.skipped.append(msg)

  for index, (lineno, record, error) in enumerate(iter_json_records(path)):
    report.n_records += 1
    if error is not None:
      bad(lineno, error)
      continue
    if not isinstance(record, dict):
      bad(lineno, f"record is a {type(record).__name__}, expected a JSON object")
      continue
    prompt = record.get(input_key)
    if not isinstance(prompt, str) or not prompt.strip():
      bad(lineno, f"field '{input_key}' missing or empty (set input_key to the prompt field; "
          f"fields present: {sorted(record)})")
      continue
    if label_key not in record and not allow_null_answer:
      bad(lineno, f"field '{label_key}' missing (set label_key, or allow_null_answer=True)")
      continue
    label = record.get(label_key)
    if label is None and not allow_null_answer:
      bad(lineno, f"field '{label_key}' is null (set allow_null_answer=True for DSBench-style "
          "records)")
      continue
    if isinstance(label, (dict, list)):
      bad(lineno, f"field '{label_key}' must be a string or number, got {type(label).__name__}")
      continue
    meta = record.get("metadata")
    if isinstance(meta, str):  # the reference serialises metadata as a JSON string
      try:
        meta = json.loads(meta) if meta.strip() else {}
      except json.JSONDecodeError:
        bad(lineno, "field 'metadata' is a string but not JSON")
        continue
    if meta is not None and not isinstance(meta, dict):
      bad(lineno, "field 'metadata' must be an object")
      continue
    meta = dict(meta or {})
    rid = record.get(id_key, meta.get("task_id"))
    task_id = str(rid) if rid is not None else f"{stem}-{index}"
    if task_id in seen_ids:
      bad(lineno, f"duplicate task id '{task_id}'")
      continue
    seen_ids.add(task_id)
    extras = {k: v for k, v in record.items() if k not in (input_key, label_key, "metadata")}
    meta = {**extras, **meta, "raw_prompt": prompt, "source_file": path, "line": lineno}
    ttype = task_type
    if ttype is None and task_type_key:
      ttype = record.get(task_type_key, meta.get(task_type_key))
    if ttype is None:
      ttype = meta.get("data_type") or record.get("source") or stem
    text = prompt + prompt_suffix if add_prompt_suffix else prompt
    answer = None if label is None else str(label)
    tasks.append(Task(task_id=task_id, prompt=text, answer=answer, task_type=str(ttype),
                      metadata=meta))
  report.n_kept = len(tasks)
  return tasks, report


def load_tasks(path: str | os.PathLike, **kwargs) -> list[Task]:
  """`load_tasks_with_report` without the report (see there for the arguments)."""
  return load_tasks_with_report(path, **kwargs)[0]


def from_records(records: Iterable[dict[str, Any]], *, source: str = "records",
                 input_key: str = "prompt", label_key: str = "answer", id_key: str = "id",
                 task_type: str = "default", add_prompt_suffix: bool = True,
                 prompt_suffix: str = PROMPT_SUFFIX) -> list[Task]:
  """Tasks from in-memory HF-style dict records (e.g. rows of a `datasets.Dataset`)."""
  tasks = []
  for i, r in enumerate(records):
    if input_key not in r:
      raise DataFormatError(f"{source}[{i}]: field '{input_key}' missing; fields: {sorted(r)}")
    label = r.get(label_key)
    rid = r.get(id_key)
    meta = {k: v for k, v in r.items() if k not in (input_key, label_key)}
    meta["raw_prompt"] = r[input_key]
    tasks.append(Task(
        task_id=str(rid) if rid is not None else f"{source}-{i}",
        prompt=r[input_key] + (prompt_suffix if add_prompt_suffix else ""),
        answer=None if label is None else str(label), task_type=task_type, metadata=meta))
  return tasks


# ---------------------------------------------------------------------------------------------
# Subsampling and splits


def subsample_indices(n: int, k: int, seed: int = 42) -> np.ndarray:
  """Sorted indices of k of n items, as the reference selects its 512 of 933 AIME problems.

  Equals `np.random.seed(seed); np.sort(np.random.choice(n, k, replace=False))` without touching
  numpy's global random state. k >= n returns all indices.
  """
  if k >= n:
    return np.arange(n)
  rng = np.random.RandomState(seed)  # the legacy global generator's algorithm
  return np.sort(rng.choice(n, k, replace=False))


def subsample(tasks: Sequence[Task], k: int | None, seed: int = 42) -> list[Task]:
  """`k` tasks chosen by `subsample_indices`, in file order; None/<=0 keeps all."""
  if not k or k <= 0:
    return list(tasks)
  return [tasks[i] for i in subsample_indices(len(tasks), k, seed)]


def reference_default_eval_split(tasks: Sequence[Task]) -> list[Task]:
  """The reference's "eval split": the first max(1, int(0.03 N)) records of the TRAIN file.

  Not held out (for AIME: 16 of these 27 are in the 512 training sample); reproduce it only for
  parity plots and log it as non-held-out.
  """
  return list(tasks[:max(1, int(0.03 * len(tasks)))])


# ---------------------------------------------------------------------------------------------
# Held-out check


class HeldOutOverlapError(ValueError):
  """The eval set shares problems with the train set."""


def normalize_prompt(text: str, suffix: str = PROMPT_SUFFIX) -> str:
  """Prompt text for overlap checks: suffix removed, NFKC, lowercase, no whitespace or '$'."""
  if suffix and text.endswith(suffix):
    text = text[:-len(suffix)]
  text = unicodedata.normalize("NFKC", text).lower().replace("$", "")
  return re.sub(r"\s+", "", text)


_AIME_ID = re.compile(r"^(\d{4})-(?:(I{1,2})-)?(\d{1,2})$")
_AOPS_URL = re.compile(r"(\d{4})_AIME(?:_(I{1,2}))?_Problems/Problem_(\d+)")


def competition_id(task: Task) -> str | None:
  """A canonical competition problem id ('aime:2022-II-8'), or None when not recognisable.

  Read from an AIME-style task id ('2022-II-8', '1983-1'), the record's year/part/
  problem_number fields, or an AoPS wiki url ('.../2022_AIME_II_Problems/Problem_8'). The same
  problem is often worded differently in two files, so text matching alone misses overlaps.
  """
  m = _AIME_ID.match(task.task_id)
  if m is None:
    m = _AOPS_URL.search(str(task.metadata.get("url") or ""))
  if m is not None:
    year, part, number = m.groups()
  else:
    meta = task.metadata
    if not (isinstance(meta.get("year"), int) and isinstance(meta.get("problem_number"), int)):
      return None
    year, part, number = meta["year"], meta.get("part"), meta["problem_number"]
  return f"aime:{year}-{part}-{int(number)}" if part else f"aime:{year}-{int(number)}"


@dataclasses.dataclass(frozen=True)
class OverlapReport:
  """Eval tasks also present in the train set."""
  n_eval: int
  n_train: int
  overlapping_ids: tuple[str, ...]

  @property
  def n_overlap(self) -> int:
    return len(self.overlapping_ids)


def find_overlap(train: Sequence[Task], eval_tasks: Sequence[Task], *,
                 by: Sequence[str] = ("prompt", "competition_id")) -> OverlapReport:
  """Eval tasks that match a train task by any of the chosen keys.

  Args:
    by: any of 'prompt' (normalised raw prompt), 'competition_id' (see `competition_id`) and
      'id' (task_id). Raw ids are only comparable when both sets share an id scheme, so the
      default uses the prompt text and the canonical competition id.
  """
  unknown = set(by) - {"prompt", "id", "competition_id"}
  if unknown:
    raise ValueError(f"find_overlap: unknown key(s) {sorted(unknown)}; use 'prompt', "
                     "'competition_id' and/or 'id'")

  def keys(t: Task) -> set[tuple[str, str]]:
    out = set()
    if "prompt" in by:
      out.add(("prompt", normalize_prompt(t.raw_prompt)))
    if "id" in by:
      out.add(("id", t.task_id))
    if "competition_id" in by:
      cid = competition_id(t)
      if cid is not None:
        out.add(("competition_id", cid))
    return out

  train_keys = set().union(*(keys(t) for t in train)) if train else set()
  hits = tuple(t.task_id for t in eval_tasks if keys(t) & train_keys)
  return OverlapReport(n_eval=len(eval_tasks), n_train=len(train), overlapping_ids=hits)


def check_heldout(train: Sequence[Task], eval_tasks: Sequence[Task], *,
                  allow_overlap: bool = False,
                  by: Sequence[str] = ("prompt", "competition_id"),
                  name: str = "eval") -> OverlapReport:
  """Refuses (HeldOutOverlapError) an eval set that overlaps the train set unless allowed."""
  report = find_overlap(train, eval_tasks, by=by)
  if report.n_overlap and not allow_overlap:
    shown = ", ".join(report.overlapping_ids[:8])
    raise HeldOutOverlapError(
        f"eval set '{name}': {report.n_overlap}/{report.n_eval} tasks also in the train set "
        f"({shown}{', ...' if report.n_overlap > 8 else ''}); use a held-out set, or pass "
        "allow_overlap=True to evaluate on it anyway (results are then not held-out)")
  return report


# ---------------------------------------------------------------------------------------------
# Config entry point


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """One dataset (train or eval set) as the configs describe it.

  Attributes:
    path: JSON array / JSON Lines file.
    input_key, label_key, id_key: record fields (mappa-bench: prompt / answer / id).
    task_type: stratum for every record ('' = from the records, see load_tasks_with_report).
    add_prompt_suffix: append PROMPT_SUFFIX (the reference always does).
    max_samples: seeded subsample size (reference MathChat: 512); 0 = all.
    seed: subsampling seed (reference: 42).
    allow_null_answer: DSBench-style records without labels.
    on_error: 'raise' or 'skip' malformed records.
  """
  path: str
  input_key: str = "prompt"
  label_key: str = "answer"
  id_key: str = "id"
  task_type: str = ""
  add_prompt_suffix: bool = True
  max_samples: int = 0
  seed: int = 42
  allow_null_answer: bool = False
  on_error: str = "raise"

  @classmethod
  def from_config(cls, section: Any) -> "DatasetConfig":
    """From an ml_collections ConfigDict (or any mapping) with the fields above."""
    get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
    fields = {f.name: get(f.name, None) for f in dataclasses.fields(cls)}
    if not fields["path"]:
      raise ValueError("dataset config: 'path' is required")
    return cls(**{k: v for k, v in fields.items() if v is not None})


def load_dataset(cfg: DatasetConfig) -> tuple[list[Task], LoadReport]:
  """Loads, then subsamples (max_samples, seed) like the reference."""
  if cfg.on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {cfg.on_error!r}")
  tasks, report = load_tasks_with_report(
      cfg.path, input_key=cfg.input_key, label_key=cfg.label_key, id_key=cfg.id_key,
      task_type=cfg.task_type or None, add_prompt_suffix=cfg.add_prompt_suffix,
      allow_null_answer=cfg.allow_null_answer, on_error=cfg.on_error)  # type: ignore[arg-type]
  return subsample(tasks, cfg.max_samples, cfg.seed), report
