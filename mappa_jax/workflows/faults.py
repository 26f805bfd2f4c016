"""Fault injection: one named agent makes a documented, realistic mistake at a given rate.

A fault is injected by rewriting what the faulty agent generated, before the workflow sees it,
so the real workflow runs on (sandbox, hand-offs, coach): the downstream agents and the coach
meet the fault exactly as they would meet a model's own mistake. Nothing in the workflow
modules changes; `FaultInjector.install(workflow)` wraps the workflow's engine and its `run`.

Kinds (FAULT_KINDS):
  wrong_operand  The agent's first program computes a different expression: one numeric
                 literal (its arithmetic's operand) is misread as a nearby number (off by 1 to
                 `max_delta`) that its prompt does not contain. For straight-line arithmetic
                 programs (mappa_jax.tools.arith) the literal and offset are chosen so that what
                 the program prints really changes. MathChat: the Code Executor.
  wrong_answer   The agent's final answer is corrupted: its last \\boxed{} value, and the
                 result of every stated equation ending in that value, become a nearby wrong
                 number (off by 1 to `max_delta`, never negative when it was not). MathChat:
                 the Problem Solver.
  missing_file   The agent never saves `file`: every statement of its programs that writes
                 that file is replaced by `pass` (a `with open(file, 'wb')` block as a whole),
                 in every turn. DSBench: the Data Engineer and X_test.pkl.

Which trajectories are faulty is decided per trajectory from (seed, task id, sample index), so
it does not depend on concurrency or arrival order: a trajectory is faulty with probability
`rate`. The rewrite's own choices (which literal, which offset) come from the same key.

What is recorded, on every trajectory `install`ed runs:
  traj.metadata['fault'] = {'agent', 'kind', 'faulty' (drawn), 'applied' (a rewrite happened)}
  traj.metadata['faults'] = [{'agent', 'turn', 'action_index', 'kind', 'detail'}, ...]
    one entry per rewritten action; `detail` says what changed (old -> new literal, answer or
    removed lines). An action's `rollout_logprobs` keep the sampler's values on the unchanged
    prefix of its tokens and are 0.0 on the rewritten tail (those tokens were not sampled).
"""
from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import logging
import re
from fractions import Fraction
from typing import Any, Literal, Sequence

import numpy as np

from mappa_jax.rollout.types import Completion, SamplingParams
from mappa_jax.schema import Section, field
from mappa_jax.tools import arith

log = logging.getLogger(__name__)

FAULT_KINDS = {
    "wrong_operand": "the agent's first program computes a different expression (a misread "
                     "operand)",
    "wrong_answer": "the agent's final answer is corrupted (a nearby wrong number)",
    "missing_file": "the agent never saves `file` (its write statements are removed)",
}


FaultKind = Literal["wrong_operand", "wrong_answer", "missing_file"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultsConfig(Section):
  """The `faults` section: which agent is faulty, how, and how often (see the module docstring).

  Which agent names are valid depends on the workflow: Experiment.problems checks `agent`.
  """
  agent: str = field("", "the faulty agent, e.g. 'code_executor', 'data_engineer' ('' = no "
                     "injection)")
  kind: FaultKind = field("wrong_operand", "'wrong_operand' (its first program computes a "
                          "different expression) | 'wrong_answer' (its final answer is a "
                          "nearby wrong number) | 'missing_file' (it never saves `file`)")
  rate: float = field(0.0, "probability that a trajectory is faulty (drawn per task and sample)",
                      check=lambda v: 0.0 <= v <= 1.0, fix="Use 0 <= rate <= 1.")
  seed: int = field(0, "seed of the per-trajectory draws and of each rewrite's choices")
  file: str = field("X_test.pkl", "kind='missing_file': the file the agent fails to save")
  max_delta: int = field(3, "wrong_operand / wrong_answer: the wrong number is off by "
                         "1..max_delta", check=lambda v: v >= 1, fix="Use >= 1.")
  in_eval: bool = field(False, "inject into evaluations too (default: training rollouts only)")

  def problems(self) -> list[tuple[str, str]]:
    if self.kind == "missing_file" and not self.file:
      return [("file", "is empty; kind='missing_file' needs the file the agent fails to save")]
    return []

  @property
  def enabled(self) -> bool:
    return bool(self.agent) and self.rate > 0.0


def _key_rng(*parts: Any) -> np.random.Generator:
  digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _uniform(*parts: Any) -> float:
  digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2.0 ** 64


def _deltas(rng: np.random.Generator, max_delta: int) -> list[int]:
  """Every offset +-1..max_delta, in a seeded order."""
  out = [d for k in range(1, max_delta + 1) for d in (k, -k)]
  return [out[i] for i in rng.permutation(len(out))]


# ------------------------------------------------------------------------------- rewrites

_PY_BLOCK = re.compile(r"(```python[ \t]*\r?\n)(.*?)(```)", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_THINK_END = "</think>"


def misread_operand(text: str, avoid: set[Fraction], rng: np.random.Generator, *,
                    max_delta: int = 3) -> tuple[str, dict | None]:
  """wrong_operand on one action's text: returns (new text, detail) or (text, None).

  The first ```python block is rewritten. Literals are tried from the last to the first, with
  offsets in a seeded order; a new value must be >= 2 (no new division by 0 or 1, no 0/1
  idioms) and not in `avoid` (the numbers of the prompt). For a straight-line program the
  first choice that changes what it prints wins; for other programs, the first allowed one.
  """
  m = _PY_BLOCK.search(text)
  if m is None:
    return text, None
  code = m.group(2)
  program = arith.straight_line(code)
  literals = (list(program.literals) if program is not None
              else _any_literals(code))
  lines = code.split("\n")
  order = _deltas(rng, max_delta)
  for lit in sorted(literals, key=lambda x: (x.line, x.col), reverse=True):
    if lit.value.denominator != 1:
      continue
    for delta in order:
      new = lit.value + delta
      if new < 2 or new in avoid:
        continue
      line = lines[lit.line - 1]
      new_line = line[:lit.col] + str(new.numerator) + line[lit.end_col:]
      new_code = "\n".join(lines[:lit.line - 1] + [new_line] + lines[lit.line:])
      if program is not None:
        changed = arith.straight_line(new_code)
        if changed is None or changed.printed == program.printed:
          continue
      detail = {"line": line.strip(), "new_line": new_line.strip(),
                "old": arith.format_number(lit.value), "new": str(new.numerator),
                "straight_line": program is not None}
      if program is not None:
        detail["printed"] = [arith.format_number(v) for v in program.printed]
        detail["new_printed"] = [arith.format_number(v) for v in changed.printed]
      return text[:m.start(2)] + new_code + text[m.end(2):], detail
  return text, None


def _any_literals(code: str) -> list[arith.Literal]:
  """Integer literals of any parseable program (for programs that are not straight-line)."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return []
  return [arith.Literal(Fraction(n.value), n.lineno, n.col_offset, n.end_col_offset)
          for n in ast.walk(tree)
          if isinstance(n, ast.Constant) and type(n.value) is int and n.lineno == n.end_lineno]


def corrupt_answer(text: str, rng: np.random.Generator, *, max_delta: int = 3
                   ) -> tuple[str, dict | None]:
  """wrong_answer on one action's text: returns (new text, detail) or (text, None).

  Only the visible part (after the last </think>) changes: every \\boxed{old} and every
  `= old` that ends a stated equation become the wrong value. A non-numeric answer is left
  alone (None).
  """
  cut = text.rfind(_THINK_END)
  head, visible = (text[:cut + len(_THINK_END)], text[cut + len(_THINK_END):]) if cut >= 0 \
      else ("", text)
  boxes = _BOXED.findall(visible)
  if not boxes:
    return text, None
  old = boxes[-1].strip()
  try:
    value = Fraction(old)
  except (ValueError, ZeroDivisionError):
    return text, None
  for delta in _deltas(rng, max_delta):
    if value + delta >= 0 or value < 0:
      new = value + delta
      break
  new_text = arith.format_number(new)
  pattern = re.escape(old)
  visible = re.sub(r"\\boxed\{\s*" + pattern + r"\s*\}", lambda _: f"\\boxed{{{new_text}}}",
                   visible)
  visible = re.sub(r"(=\s*)" + pattern + r"(?![\d.]*\d)", lambda g: g.group(1) + new_text,
                   visible)
  return head + visible, {"old": old, "new": new_text}


_WRITE_HINTS = ("dump", "to_pickle", "to_csv", "save", "write", "'wb'", '"wb"', "'w'", '"w"')


def drop_file_writes(text: str, file: str) -> tuple[str, dict | None]:
  """missing_file on one action's text: returns (new text, detail) or (text, None).

  In every ```python block, a statement that names `file` and writes (dump, to_pickle,
  to_csv, save, write or an 'w'/'wb' open) becomes `pass` at the same indentation, so the
  program stays valid; a block opener (`with open(file, 'wb') as f:`) takes its indented
  body with it. `;`-separated statements on one line are handled one by one.
  """
  removed: list[str] = []

  def rewrite(m: re.Match) -> str:
    lines = m.group(2).split("\n")
    out: list[str] = []
    skip_indent: int | None = None
    for line in lines:
      indent = len(line) - len(line.lstrip())
      if skip_indent is not None:
        if line.strip() and indent > skip_indent:
          removed.append(line.strip())
          continue
        skip_indent = None
      parts = line.strip().split(";")
      kept = [p for p in parts if not _writes(p, file)]
      if len(kept) == len(parts):
        out.append(line)
        continue
      removed.extend(p.strip() for p in parts if _writes(p, file))
      if line.rstrip().endswith(":") and len(parts) == 1:
        skip_indent = indent
      body = "; ".join(p.strip() for p in kept if p.strip()) or "pass"
      out.append(" " * indent + body)
    return m.group(1) + "\n".join(out) + m.group(3)

  new = _PY_BLOCK.sub(rewrite, text)
  if not removed:
    return text, None
  return new, {"file": file, "removed": removed}


def _writes(statement: str, file: str) -> bool:
  return (f"'{file}'" in statement or f'"{file}"' in statement) and any(
      h in statement for h in _WRITE_HINTS)


# ------------------------------------------------------------------------------ injection


@dataclasses.dataclass
class _Plan:
  """The fault plan of one trajectory (lives in a ContextVar while the workflow runs)."""
  key: tuple[str, int]
  faulty: bool
  calls: int = 0
  records: list[dict] = dataclasses.field(default_factory=list)


_PLAN: contextvars.ContextVar[_Plan | None] = contextvars.ContextVar("mappa_fault_plan",
                                                                     default=None)


class FaultyEngine:
  """A RolloutEngine that rewrites the faulty agent's generations of faulty trajectories.

  Outside an installed workflow's run (no plan in the context) it is the inner engine.
  """

  def __init__(self, inner, injector: "FaultInjector"):
    self.inner = inner
    self.injector = injector

  def __getattr__(self, name):  # calls, version, ... of the wrapped engine
    return getattr(self.inner, name)

  async def generate(self, agent: str, prompt_ids: Sequence[int],
                     sampling: SamplingParams) -> Completion:
    comp = await self.inner.generate(agent, prompt_ids, sampling)
    plan = _PLAN.get()
    cfg = self.injector.config
    if plan is None or not plan.faulty or agent != cfg.agent:
      return comp
    one_shot = cfg.kind in ("wrong_operand", "wrong_answer")
    if one_shot and plan.records:
      return comp  # one mistake per trajectory: later turns are the agent's own
    plan.calls += 1
    return self.injector.rewrite(comp, prompt_ids, sampling, plan)

  async def publish(self, agent: str, params, version: int) -> None:
    await self.inner.publish(agent, params, version)

  async def pause(self) -> None:
    await self.inner.pause()

  async def resume(self) -> None:
    await self.inner.resume()

  async def health(self) -> dict:
    return {**(await self.inner.health()), "faults": dataclasses.asdict(self.injector.config)}


class FaultInjector:
  """Injects `config`'s fault into the workflows it is installed on.

  Args:
    config: the fault.
    tokenizer: the agents' tokenizer (rewritten text is encoded with it).
  """

  def __init__(self, config: FaultsConfig, tokenizer):
    self.config = config
    self.tokenizer = tokenizer
    self._eos = set(tokenizer.eos_token_ids)

  def is_faulty(self, task_id: str, sample_index: int) -> bool:
    """The per-trajectory draw: faulty with probability `rate`."""
    if not self.config.enabled:
      return False
    return _uniform(self.config.seed, "faulty", task_id, sample_index) < self.config.rate

  def wrap_engine(self, engine) -> FaultyEngine:
    return engine if isinstance(engine, FaultyEngine) else FaultyEngine(engine, self)

  def install(self, workflow):
    """Makes `workflow` faulty: wraps its engine and its `run` (which then records the plan
    and the rewrites on every trajectory). Returns the workflow."""
    workflow.engine = self.wrap_engine(workflow.engine)
    inner_run = workflow.run

    async def run(task, sample_index: int = 0):
      key = (str(task.task_id), int(sample_index))
      plan = _Plan(key=key, faulty=self.is_faulty(*key))
      token = _PLAN.set(plan)
      try:
        traj = await inner_run(task, sample_index)
      finally:
        _PLAN.reset(token)
      self.annotate(traj, plan)
      return traj

    workflow.run = run
    return workflow

  # -- internals ------------------------------------------------------------------------------

  def rewrite(self, comp: Completion, prompt_ids: Sequence[int], sampling: SamplingParams,
              plan: _Plan) -> Completion:
    cfg, tok = self.config, self.tokenizer
    ids = list(comp.token_ids)
    closed = bool(ids) and ids[-1] in self._eos
    body = ids[:-1] if closed else ids
    text = tok.decode(body)
    rng = _key_rng(cfg.seed, "rewrite", *plan.key, plan.calls)
    if cfg.kind == "wrong_operand":
      avoid = arith.numbers_in(tok.decode(list(prompt_ids)))
      new_text, detail = misread_operand(text, avoid, rng, max_delta=cfg.max_delta)
    elif cfg.kind == "wrong_answer":
      new_text, detail = corrupt_answer(text, rng, max_delta=cfg.max_delta)
    else:
      new_text, detail = drop_file_writes(text, cfg.file)
    if detail is None:
      return comp
    new_ids = list(tok.encode(new_text)) + ([ids[-1]] if closed else [])
    finish = comp.finish_reason
    if len(new_ids) > sampling.max_new_tokens:
      new_ids, finish = new_ids[:sampling.max_new_tokens], "length"
    same = 0
    while same < min(len(ids), len(new_ids)) and ids[same] == new_ids[same]:
      same += 1
    logprobs = list(comp.logprobs[:same]) + [0.0] * (len(new_ids) - same)
    plan.records.append({"agent": cfg.agent, "kind": cfg.kind, "detail": detail,
                         "response_ids": tuple(new_ids)})
    log.debug("fault %s on %s (%s): %s", cfg.kind, cfg.agent, plan.key, detail)
    return Completion(token_ids=tuple(new_ids), logprobs=tuple(logprobs), finish_reason=finish,
                      weight_version=comp.weight_version)

  def annotate(self, traj, plan: _Plan) -> None:
    """Writes the plan and the rewrites (matched to their actions) into traj.metadata."""
    faults = []
    for rec in plan.records:
      index = next((i for i, a in enumerate(traj.actions)
                    if a.agent == rec["agent"] and tuple(a.response_ids) == rec["response_ids"]),
                   None)
      faults.append({"agent": rec["agent"], "kind": rec["kind"], "detail": rec["detail"],
                     "action_index": index,
                     "turn": None if index is None else traj.actions[index].turn})
    traj.metadata["fault"] = {"agent": self.config.agent, "kind": self.config.kind,
                              "faulty": plan.faulty, "applied": bool(faults)}
    traj.metadata["faults"] = faults


def install(workflow, config: FaultsConfig, tokenizer):
  """`FaultInjector(config, tokenizer).install(workflow)` when the fault is enabled, else the
  workflow unchanged (so a disabled `faults` section costs nothing)."""
  if not config.enabled:
    return workflow
  return FaultInjector(config, tokenizer).install(workflow)
