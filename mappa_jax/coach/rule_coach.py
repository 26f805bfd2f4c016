"""An offline, deterministic coach that scores actions from verifiable signals.

It is the coach of the embedded CPU default and of most tests, so it must give a tiny model on
synthetic arithmetic a graded learning signal, not just 0/1. Every point it gives is explained
in the rationale ("+2.00/2 code ran: 2 of 2 blocks without error").

MathChat rubric (0-10). The visible answer is the text after the last `</think>`; its final
answer is signals['answer'] or else the last `\\boxed{...}` of that text.
  - Problem Solver (and any unknown role):
      answer present 4 | answer well-formed 2 (a plain number: 2, other short text: 1) |
      consistent 2 (every boxed answer in the output agrees) | finished 2 (not truncated).
  - Code Executor (one action is either a program or a report; the sum is capped at 10):
      code written 2 (>= 1 python block) | code ran 2 (x share of blocks without error or
      timeout) | printed a result 1 (its tool output is non-empty and not a failure) |
      answer present 2 | answer well-formed 1 | grounded 2 (the answer equals the last number
      of the latest tool output the agent has seen: its own, else the last <tool_response> of
      its input; no tool output seen: 0) | finished 2.
  - Verifier: the Problem Solver rubric.
  Verifiable caps (credit assignment without the label: each catches the agent that made the
  mistake, not the ones that relayed it):
      a false stated calculation in the visible text (`12 + 5 - 3 = 16`, `3/4 = 70%`;
      mappa_jax.tools.arith; a quotient with a remainder, a mixed number or a compound
      quantity after the result is another notation and not judged) caps the rubric at 4;
      Code Executor: a straight-line arithmetic program (assignments and prints only) that
      computes with a number the problem neither states (digits, `1,000`, `25%` as .25 and
      .75, number words: `three`, `dozen`, `twice`) nor implies by its units (60 for hours, 7
      for weeks, 100 for percent or cents, ...; 0 and 1 allowed) caps it at 3: the program
      transcribes a different calculation. When the role may see the label and the program
      prints it, there is no cap (a correct result is not a misread operand). The program
      checked is the action's own, else (a report) the one that produced the last tool output
      it has seen.
  When the role may see the label (default: Verifier), correctness dominates:
      score = 0.4 * rubric + 6 * correct, correct = is_equivalent(answer, label), and
      answer_correct is reported.

DSBench rubric (0-10):
  - Data Engineer / Modeler (and unknown roles):
      code written 2 | code ran 3 (x share of blocks without error or timeout) |
      artifacts 3 (x share of signals['required_files'] not in signals['missing_files']; with
      no required files, x the code-ran share) | finished 2.
  - Analyst: code written 2 | code ran 2 | artifacts 2 | submission valid 2 | finished 2.
  - No python code at all caps the score at 2 (text without code is a critical failure); a
    hand-off without code while the agent's own required files are missing scores 0.
  - An agent that wrote code but did not save all of its own required files (e.g. the Data
    Engineer without X_test.pkl) is capped at 5: the hand-off is broken, the next agent cannot
    finish, whatever else went right (unless it was itself blocked, below).
  - Upstream blame (a missing required file is the fault of the agent whose role was to write
    it): a missing file owned by an upstream role (workflows.dsbench.REQUIRED_FILES, or
    signals['owned_files'] for this agent) that its owner never saved (request.upstream_files)
    is excused: it is left out of the artifacts share, and a run that failed on it
    (FileNotFoundError / No such file naming it) counts as ran. An agent whose own run (this
    action's tool output or an earlier turn's, never an error quoted by an upstream hand-off)
    failed on such a file and that did not deliver (own outputs missing; the Analyst: no
    valid submission) is blocked: its own missing outputs are excused, an invalid submission
    still earns no point, and its score is capped at 7.5. One that delivered anyway
    recovered: the Analyst's quality cap below is raised by 2 (at most 9), so a fair recovery
    (AUC >= .65: 8) earns more than stopping, and stopping more than a poor or junk
    submission (AUC < .65: 5-6).
    A file its owner saved and that is gone now is not excused (someone deleted it).
  - When the Analyst may see the outcome and signals carry metric_value, the reference's caps
    apply (unless it is blocked): a higher-is-better metric in [0, 1] (AUC, accuracy, F1):
    >= .85 -> 9, >= .75 -> 8, >= .65 -> 6, >= .55 -> 4, else 3; otherwise, with
    baseline_value, the ratio to the baseline (error / baseline error, or baseline / score
    when higher is better): < .5 -> 9, < .75 -> 8, < .9 -> 6, < 1 -> 4, else 3.
"""
from __future__ import annotations

import dataclasses
import logging
import re

from mappa_jax.coach import requests as rq
from mappa_jax.coach import rubrics
from mappa_jax.coach.types import CoachRequest, CoachResult
from mappa_jax.tools import arith
from mappa_jax.tools import code_blocks

log = logging.getLogger(__name__)

RULE_RUBRIC_HASH = rubrics.template_hash(__doc__)

# DSBench, an agent stopped by a missing upstream file (module docstring). Below a good
# fault-free run (8-9) and above a junk submission (3-4); a recovery's quality cap gets
# RECOVERY_BONUS, so delivering a fair result (AUC >= .65: 6 + 2) beats stopping. Not lower:
# stopping correctly must keep an innocent agent >= 90 % of its fault-free mean. The scripted
# analyst of benchmarks/blame.py scores (quality cap, report 2) fault-free: mean quality cap
# ~8.1 on the first 8 suite tasks, ~7.4 on all 16; it keeps (7.5 + 2) / (8.1 + 2) = 94 % and
# 101 %. A cap of 6.5 would keep 84 % and 91 %, a cap of 6: 79 % and 85 %.
BLOCKED_CAP = 7.5
RECOVERY_BONUS = 2.0
# DSBench, an agent that wrote code but left one of its own required files unsaved (the paper's
# Data Engineer that never saved X_test.pkl). Without the cap the artifacts share alone costs
# it one point of ten (3 x 1/3), less than a failed block or a cut-off answer: a weak signal for
# the omission. (That the cap makes training lower the omission rate is not shown yet: issue 12,
# where most omissions seen were programs that crashed before saving anything.) 5 sits
# below BLOCKED_CAP, so the agent that broke the hand-off scores below the innocent it blocked,
# and above the 0-2 of a hand-off without any code.
OWN_FILE_MISSING_CAP = 5.0


def _grading():
  from mappa_jax.data import grading  # lazy: keeps the coach importable on its own
  return grading


@dataclasses.dataclass
class _Sheet:
  """Accumulates points with their explanations."""
  lines: list[str] = dataclasses.field(default_factory=list)
  total: float = 0.0

  def add(self, got: float, out_of: float, what: str) -> None:
    self.total += got
    self.lines.append(f"{got:+.2f}/{out_of:g} {what}")


def visible_text(output: str) -> str:
  """The part of an action after its reasoning (after the last `</think>`)."""
  close = output.rfind("</think>")
  return output[close + len("</think>"):] if close >= 0 else output


def boxed_answers(text: str) -> list[str]:
  """Every `\\boxed{}` content in order."""
  grading = _grading()
  starts = [m.start() for m in re.finditer(r"\\boxed|\\fbox", text)]
  found = []
  for i, s in enumerate(starts):
    end = starts[i + 1] if i + 1 < len(starts) else len(text)
    ans = grading.extract_boxed_answer(text[s:end])
    if ans is not None:
      found.append(ans)
  return found


def _ran_share(signals: dict) -> tuple[float, str]:
  blocks = int(signals.get("code_blocks", 0))
  if blocks <= 0:
    return 0.0, "no code ran"
  bad = int(signals.get("tool_errors", 0)) + int(signals.get("tool_timeouts", 0))
  ok = max(0, blocks - bad)
  return ok / blocks, f"{ok} of {blocks} blocks without error or timeout"


def _quality_cap(signals: dict) -> tuple[float | None, str]:
  value = signals.get("metric_value")
  if value is None:
    return None, ""
  value = float(value)
  name = signals.get("metric_name", "metric")
  higher = bool(signals.get("higher_is_better", True))
  if higher and 0.0 <= value <= 1.0:
    for bound, cap in ((0.85, 9.0), (0.75, 8.0), (0.65, 6.0), (0.55, 4.0)):
      if value >= bound:
        return cap, f"{name}={value:.4g} >= {bound}"
    return 3.0, f"{name}={value:.4g} < 0.55"
  baseline = signals.get("baseline_value")
  if baseline is None:
    return None, ""
  baseline = float(baseline)
  if higher:
    ratio = baseline / value if value > 0 else float("inf")
  else:
    ratio = value / baseline if baseline > 0 else float("inf")
  for bound, cap in ((0.5, 9.0), (0.75, 8.0), (0.9, 6.0), (1.0, 4.0)):
    if ratio < bound:
      return cap, f"{name}={value:.4g} vs baseline {baseline:.4g} (ratio {ratio:.3g} < {bound})"
  return 3.0, f"{name}={value:.4g} no better than baseline {baseline:.4g}"


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_TOOL_RESPONSE = re.compile(r"<tool_response>(.*?)</tool_response>", re.S)


def _printed_result(observation: str) -> bool:
  return bool(code_blocks.printed_part(observation or ""))


def _last_tool_output(request: CoachRequest) -> str:
  """What the latest tool output the agent has seen printed: its own action's, else its
  input's last <tool_response> ('' when that run failed or printed nothing)."""
  own = code_blocks.printed_part(request.tool_observation or "")
  if own:
    return own
  found = _TOOL_RESPONSE.findall(request.agent_input or "")
  return code_blocks.printed_part(found[-1]) if found else ""


def _last_number(text: str) -> str | None:
  found = _NUMBER.findall(text)
  return found[-1] if found else None


_PY_BLOCK = re.compile(r"```python[ \t]*\r?\n(.*?)```", re.S)


def _prose(text: str) -> str:
  """Visible text without its code blocks (code is not a stated calculation)."""
  return _PY_BLOCK.sub("\n", text)


def _checked_programs(request: CoachRequest) -> tuple[list[str], str]:
  """The programs a Code Executor verdict answers for: the action's own, else (a report) the
  program that produced the last tool output in its input; with where they come from."""
  own = list(code_blocks.parse_action(request.agent_output).codes)
  if own:
    return own, "its program"
  text = request.agent_input or ""
  end = text.rfind("<tool_response>")
  found = _PY_BLOCK.findall(text[:end]) if end >= 0 else []
  return found[-1:], "the program whose output it reports"


def _owned_files(role: str, signals: dict) -> tuple[str, ...]:
  if "owned_files" in signals:
    return tuple(signals["owned_files"])
  from mappa_jax.workflows import dsbench  # lazy: the workflow imports the coach
  return tuple(dsbench.REQUIRED_FILES.get(role, ()))


def _owner_of(name: str) -> str | None:
  from mappa_jax.workflows import dsbench  # pylint: disable=g-import-not-at-top
  return next((r for r, files in dsbench.REQUIRED_FILES.items() if name in files), None)


_WORKSPACE_NOTE = "[Workspace check after this action]"


def _not_found(text: str, name: str) -> bool:
  """True when `text` shows a failed attempt to open `name`."""
  return re.search(r"(?:FileNotFoundError|No such file or directory)[^\n]*"
                   + re.escape(name), text or "") is not None


_OWN_TURNS = "<|im_start|>assistant"


def _own_tool_outputs(request: CoachRequest) -> str:
  """The tool output this agent itself got: this action's, and its earlier turns' (the
  <tool_response>s after its first own turn in its input). Upstream hand-offs are in the
  first user message, before any own turn, and special tokens are stripped from them, so an
  error an upstream agent quotes is not mistaken for this agent's own. Under a chat template
  without ChatML markers only this action's output counts (it never excuses more)."""
  own = [(request.tool_observation or "").split(_WORKSPACE_NOTE)[0]]
  text = request.agent_input or ""
  first = text.find(_OWN_TURNS)
  if first >= 0:
    own += [r.split(_WORKSPACE_NOTE)[0] for r in _TOOL_RESPONSE.findall(text[first:])]
  return "\n".join(own)


def _failed_runs_on(observation: str, names: list[str]) -> int:
  """Runs of this action's tool output that failed opening one of `names` (a run with output
  and a traceback is formatted without an '[Execution ...]' header: the traceback counts)."""
  observation = (observation or "").split(_WORKSPACE_NOTE)[0]
  return sum(1 for run in observation.split("\n------\n")
             if any(_not_found(run, n) for n in names))


class RuleCoach:
  """Deterministic rubric coach (see the module docstring for the rubric)."""

  name = "rule"

  def __init__(self, ground_truth_roles: tuple[str, ...] | None = rq.DEFAULT_GROUND_TRUTH_ROLES,
               correct_weight: float = 6.0, check_arithmetic: bool = False):
    """check_arithmetic: MathChat's caps for a false stated calculation (4) and a Code Executor
    program computing with numbers the problem does not contain (3). They are what lets the
    rule coach blame the faulty agent (benchmarks/blame.py), but training the tiny team with
    them on was measured to reward-hack (README, "Credit assignment and coach bias"), so they
    are opt-in (coach.rule_check_arithmetic)."""
    self.ground_truth_roles = ground_truth_roles
    self.correct_weight = correct_weight
    self.check_arithmetic = check_arithmetic

  def describe(self) -> dict:
    return {"kind": "rule", "name": self.name, "rubric_hash": RULE_RUBRIC_HASH,
            "correct_weight": self.correct_weight, "check_arithmetic": self.check_arithmetic}

  async def score(self, request: CoachRequest) -> CoachResult:
    return self.score_sync(request)

  def score_sync(self, request: CoachRequest) -> CoachResult:
    if request.workflow == "mathchat":
      score, answer_correct, sheet = self._mathchat(request)
    elif request.workflow == "dsbench":
      score, answer_correct, sheet = self._dsbench(request)
    else:
      return CoachResult(status="invalid", reason=f"rule coach: unknown workflow "
                         f"{request.workflow!r} (known: mathchat, dsbench)",
                         template_hash=RULE_RUBRIC_HASH, coach_name=self.name)
    score = round(min(10.0, max(0.0, score)), 4)
    rationale = "\n".join(sheet.lines + [f"= {score:g}/10"])
    return CoachResult(status="scored", score=score, answer_correct=answer_correct,
                       rationale=rationale, template_hash=RULE_RUBRIC_HASH,
                       coach_name=self.name)

  # -- MathChat --------------------------------------------------------------------------------
  def _mathchat(self, request: CoachRequest) -> tuple[float, bool | None, _Sheet]:
    grading = _grading()
    role = rq.normalize_role(request.role)
    sig = request.signals
    text = visible_text(request.agent_output)
    boxes = boxed_answers(text)
    answer = sig.get("answer") or (boxes[-1] if boxes else None)
    answer = answer.strip() if isinstance(answer, str) and answer.strip() else None
    truncated = bool(sig.get("truncated", False))
    sheet = _Sheet()
    is_executor = role == "code_executor"
    w_present, w_form = (2.0, 1.0) if is_executor else (4.0, 2.0)
    if is_executor:
      blocks = int(sig.get("code_blocks", 0))
      sheet.add(2.0 if blocks > 0 else 0.0, 2, f"code written: {blocks} python block(s)")
      share, why = _ran_share(sig)
      sheet.add(2.0 * share, 2, f"code ran: {why}")
      printed = _printed_result(request.tool_observation)
      sheet.add(1.0 if printed else 0.0, 1,
                "printed a result" if printed else "no result printed")
    sheet.add(w_present if answer else 0.0, w_present,
              f"final answer present: {answer!r}" if answer else "no final answer")
    if answer is None:
      sheet.add(0.0, w_form, "answer well-formed: nothing to check")
    elif grading.parse_number(answer) is not None:
      sheet.add(w_form, w_form, "answer is a plain number")
    elif len(answer) <= 40:
      sheet.add(w_form / 2, w_form, "answer is short but not a plain number")
    else:
      sheet.add(0.0, w_form, "answer is not a short expression")
    if is_executor:
      seen = _last_tool_output(request)
      number = _last_number(seen) if seen else None
      grounded = (answer is not None and number is not None
                  and bool(grading.is_equivalent(answer, number)))
      sheet.add(2.0 if grounded else 0.0, 2,
                "grounded: the answer is the tool output's result" if grounded else
                "not grounded: no tool output seen" if number is None else
                f"not grounded: the tool output's result is {number!r}")
    if not is_executor:
      distinct = {grading.normalize_answer(b) for b in boxes}
      consistent = answer is not None and len(distinct) <= 1
      sheet.add(2.0 if consistent else 0.0, 2,
                "consistent: one final answer" if consistent
                else f"inconsistent or missing: {len(distinct)} distinct boxed answers")
    sheet.add(0.0 if truncated else 2.0, 2,
              "cut off at the length limit" if truncated else "finished within the length limit")
    caps = []
    wrong = arith.false_equations(_prose(text)) if self.check_arithmetic else []
    if wrong:
      e = wrong[0]
      caps.append((4.0, f"a stated calculation is false: {e.lhs} = {e.rhs} (it is "
                        f"{arith.format_number(e.value)})"))
    if is_executor and self.check_arithmetic:
      programs, where = _checked_programs(request)
      foreign = sorted({v for code in programs
                        for v in (arith.foreign_operands(code, request.task) or ())})
      listed = ", ".join(arith.format_number(v) for v in foreign)
      printed = [v for code in programs if (prog := arith.straight_line(code)) is not None
                 for v in prog.printed]
      # A misread operand changes the result; with the label at hand a program that prints it
      # used a constant of its own (a conversion, a count the story implies), not a misreading.
      if (foreign and printed and rq.ground_truth_visible(request, self.ground_truth_roles)
          and grading.is_equivalent(arith.format_number(printed[-1]), request.ground_truth)):
        sheet.lines.append(f"no cap: {where} uses number(s) the problem does not state "
                           f"({listed}) but prints the labelled answer")
      elif foreign:
        caps.append((3.0, f"{where} computes with number(s) the problem does not contain: "
                          + listed))
    for cap, why in caps:
      if sheet.total > cap:
        sheet.lines.append(f"cap {cap:g}: {why}")
        sheet.total = cap
      else:
        sheet.lines.append(f"cap {cap:g} not binding: {why}")
    if not rq.ground_truth_visible(request, self.ground_truth_roles):
      return sheet.total, None, sheet
    correct = bool(grading.is_equivalent(answer, request.ground_truth))
    base = sheet.total
    scaled = _Sheet(lines=[f"process part x0.4: {base:.2f} -> {0.4 * base:.2f}"] + sheet.lines)
    scaled.total = 0.4 * base
    scaled.add(self.correct_weight if correct else 0.0, self.correct_weight,
               f"answer {'matches' if correct else 'does not match'} the label")
    return scaled.total, correct, scaled

  # -- DSBench ---------------------------------------------------------------------------------
  def _dsbench(self, request: CoachRequest) -> tuple[float, bool | None, _Sheet]:
    role = rq.normalize_role(request.role)
    sig = request.signals
    is_analyst = role == "analyst"
    sheet = _Sheet()
    required = list(sig.get("required_files", []))
    missing = set(sig.get("missing_files", []))
    own = set(_owned_files(role, sig))
    saved_by = {rq.normalize_role(a): set(files) for a, files in request.upstream_files}
    # Upstream blame: a required file another role had to write and never saved.
    excused = sorted(f for f in missing & set(required) if f not in own
                     and (owner := _owner_of(f)) is not None and owner != role
                     and f not in saved_by.get(owner, set()))
    # Did it deliver its own part anyway (own outputs saved; the Analyst: a valid submission)?
    valid = bool(sig.get("submission_valid", False))
    delivered = not (own & missing & set(required)) and (valid or not is_analyst)
    # Blocked: its own run failed on such a file and it stopped without delivering. Only its
    # own tool output counts: an error quoted in an upstream hand-off is not its attempt.
    own_output = _own_tool_outputs(request)
    hit = any(_not_found(own_output, f) for f in excused)
    blocked = hit and not delivered
    recovered = bool(excused) and delivered
    if excused:
      sheet.lines.append(f"upstream: {', '.join(excused)} missing, never saved by its owner "
                         f"({', '.join(sorted({_owner_of(f) for f in excused}))}): not this "
                         "agent's fault" + ("; this agent was blocked by it" if blocked else
                                            "; this agent delivered anyway" if recovered
                                            else ""))
    blocks = int(sig.get("code_blocks", 0))
    sheet.add(2.0 if blocks > 0 else 0.0, 2, f"code written: {blocks} python block(s)")
    share, why = _ran_share(sig)
    failed_upstream = min(_failed_runs_on(request.tool_observation, excused),
                          int(sig.get("tool_errors", 0)))
    if blocks > 0 and failed_upstream:
      bad = int(sig.get("tool_errors", 0)) + int(sig.get("tool_timeouts", 0)) - failed_upstream
      share = max(0, blocks - bad) / blocks
      why += f" ({failed_upstream} failed on a missing upstream file: counted as ran)"
    w_ran, w_files = (2.0, 2.0) if is_analyst else (3.0, 3.0)
    sheet.add(w_ran * share, w_ran, f"code ran: {why}")
    counted = [f for f in required if f not in excused]
    lost = sorted(f for f in counted if f in missing and not (blocked and f in own))
    if counted:
      sheet.add(w_files * (len(counted) - len(lost)) / len(counted), w_files,
                f"artifacts: {len(counted) - len(lost)} of {len(counted)} saved"
                + (f" (missing {lost})" if lost else "")
                + (" (own outputs excused: blocked)" if blocked and own & missing else ""))
    else:
      sheet.add(w_files * share, w_files, "artifacts: none required, credited as code ran")
    if is_analyst:
      sheet.add(2.0 if valid else 0.0, 2, "submission valid" if valid else
                "no valid submission (blocked by upstream)" if blocked else "no valid submission")
    truncated = bool(sig.get("truncated", False))
    sheet.add(0.0 if truncated else 2.0, 2,
              "cut off at the length limit" if truncated else "finished within the length limit")
    score = sheet.total
    own_lost = sorted(f for f in lost if f in own)
    if blocks <= 0 and own_lost:
      sheet.lines.append(f"cap 0: hands over without code while its own required file(s) "
                         f"{own_lost} are missing")
      score = 0.0
    elif blocks <= 0 and score > 2.0:
      sheet.lines.append("cap 2: no executable python code")
      score = 2.0
    elif own_lost and score > OWN_FILE_MISSING_CAP:
      sheet.lines.append(f"cap {OWN_FILE_MISSING_CAP:g}: its own required file(s) {own_lost} "
                         "are missing: the next agent cannot finish")
      score = OWN_FILE_MISSING_CAP
    if blocked:
      if score > BLOCKED_CAP:
        sheet.lines.append(f"cap {BLOCKED_CAP:g}: stopped at a missing upstream file without "
                           "delivering (a recovery with a fair result earns more)")
        score = BLOCKED_CAP
    elif is_analyst and rq.ground_truth_visible(request, self.ground_truth_roles):
      cap, why = _quality_cap(sig)
      if cap is not None and recovered:
        cap, why = min(9.0, cap + RECOVERY_BONUS), why + (
            f" (+{RECOVERY_BONUS:g}: delivered despite the missing upstream file)")
      if cap is not None and score > cap:
        sheet.lines.append(f"cap {cap:g}: {why}")
        score = cap
      elif cap is not None:
        sheet.lines.append(f"quality cap {cap:g} not binding: {why}")
    return score, None, sheet
