"""Fault injection: the rewrites, the per-trajectory draws, and faults running through the real
MathChat and DSBench workflows (real sandbox, rule coach) with the record on the trajectory."""
import ast
import asyncio
import pickle

import numpy as np
import pandas as pd
import pytest

from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.data import synthetic
from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.schema import from_configdict, to_configdict
from mappa_jax.sft import demos
from mappa_jax.tools import arith
from mappa_jax.workflows import faults
from mappa_jax.workflows.dsbench import DSBenchConfig, DSBenchWorkflow
from mappa_jax.workflows.mathchat import MathChatWorkflow
from mappa_jax.workflows.scripted import ScriptedEngine
from mappa_jax.workflows.scripted_teams import MathChatTeam


def rng(seed=0):
  return np.random.default_rng(seed)


def test_fault_config_is_validated():
  assert not faults.FaultsConfig().enabled
  assert faults.FaultsConfig(agent="code_executor", rate=0.5).enabled
  with pytest.raises(ValueError, match="kind"):
    faults.FaultsConfig(agent="a", kind="typo")
  with pytest.raises(ValueError, match="rate"):
    faults.FaultsConfig(agent="a", rate=1.5)
  with pytest.raises(ValueError, match="unknown field"):
    from_configdict(faults.FaultsConfig, {**to_configdict(faults.FaultsConfig()), "rat": 0.5})
  cfg = faults.FaultsConfig(agent="a", kind="missing_file", rate=1.0)
  assert cfg.file == "X_test.pkl" and cfg.enabled


def test_misread_operand_changes_what_a_straight_line_program_prints():
  # Every synthetic level, including the floor divisions where a nearby divisor can print the
  # same value: the chosen literal and offset always change the printed result.
  for task in synthetic.generate(40, seed=5):
    code = demos.program(task.metadata["start"], task.metadata["steps"])
    text = f"</think>\n\n```python\n{code}\n```"
    avoid = arith.numbers_in(task.prompt)
    new, detail = faults.misread_operand(text, avoid, rng(1))
    new_code = new.split("```python\n")[1].split("```")[0]
    before, after = arith.straight_line(code), arith.straight_line(new_code)
    assert after.printed != before.printed and detail["straight_line"]
    assert [arith.format_number(v) for v in after.printed] == detail["new_printed"]
    assert int(detail["new"]) >= 2 and arith.foreign_operands(new_code, task.prompt) == [
        int(detail["new"])]
    assert new.replace(detail["new_line"], detail["line"], 1) == text  # one literal changed
  # Deterministic for a given generator seed; other programs get their last literal changed.
  assert faults.misread_operand(text, avoid, rng(1)) == faults.misread_operand(text, avoid, rng(1))
  loop = "```python\nfor i in range(3):\n    print(i * 10)\n```"
  new, detail = faults.misread_operand(loop, set(), rng(0))
  assert not detail["straight_line"] and detail["old"] == "10" and "10" not in new
  assert faults.misread_operand("no code here", set(), rng(0)) == ("no code here", None)


def test_corrupt_answer_changes_the_box_and_the_result_it_ends_only():
  text = "<think>maybe \\boxed{14}</think>\n\n12 + 5 - 3 = 14 (14 apples)\n\n\\boxed{14}"
  new, detail = faults.corrupt_answer(text, rng(3))
  wrong = detail["new"]
  assert detail["old"] == "14" and wrong != "14" and int(wrong) >= 0
  assert new == (f"<think>maybe \\boxed{{14}}</think>\n\n12 + 5 - 3 = {wrong} (14 apples)\n\n"
                 f"\\boxed{{{wrong}}}")
  assert arith.false_equations(new.split("</think>")[1])
  zero, _ = faults.corrupt_answer("\\boxed{0}", rng(0))
  assert int(zero[len("\\boxed{"):-1]) > 0  # never negative when it was not
  assert faults.corrupt_answer("\\boxed{x+1}", rng(0)) == ("\\boxed{x+1}", None)


DE_CODE = """Save.
</think>

```python
import pickle
pickle.dump([1], open('X_train.pkl', 'wb')); pickle.dump([0], open('y_train.pkl', 'wb'))
pickle.dump([2], open('X_test.pkl', 'wb'))
with open("X_test.pkl", "wb") as f:
    pickle.dump([2], f)
    print('saved')
if True:
    pickle.dump([2], open('X_test.pkl', 'wb'))
X_test = pickle.load(open('X_test.pkl', 'rb')) if False else None
print('---PREPROCESSING_SUMMARY--- done ---END_SUMMARY---')
```"""


def test_drop_file_writes_removes_every_write_and_keeps_the_program_valid(tmp_path):
  new, detail = faults.drop_file_writes(DE_CODE, "X_test.pkl")
  code = new.split("```python\n")[1].split("```")[0]
  ast.parse(code)  # still a valid program
  assert len(detail["removed"]) == 5 and detail["file"] == "X_test.pkl"
  assert "open('X_test.pkl', 'rb')" in code  # a read is not a write
  assert "pickle.dump([0], open('y_train.pkl', 'wb'))" in code
  namespace = {}
  import os
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    exec(code, namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["X_train.pkl", "y_train.pkl"]
  assert faults.drop_file_writes("```python\nprint(1)\n```", "X_test.pkl")[1] is None


def test_faulty_trajectories_are_drawn_per_task_and_sample():
  inj = faults.FaultInjector(faults.FaultsConfig(agent="a", rate=0.3, seed=7), tokenizer=_FakeTok())
  draws = [inj.is_faulty(f"t{i}", s) for i in range(200) for s in range(2)]
  assert draws == [inj.is_faulty(f"t{i}", s) for i in range(200) for s in range(2)]
  assert 90 <= sum(draws) <= 150  # 400 draws at 0.3 (a fixed hash: this count never changes)
  assert draws != [inj.is_faulty(f"t{i}", 1 - s) for i in range(200) for s in range(2)]
  none = faults.FaultInjector(faults.FaultsConfig(agent="a", rate=0.0), _FakeTok())
  every = faults.FaultInjector(faults.FaultsConfig(agent="a", rate=1.0), _FakeTok())
  assert not any(none.is_faulty(f"t{i}", 0) for i in range(50))
  assert all(every.is_faulty(f"t{i}", 0) for i in range(50))


class _FakeTok:
  eos_token_ids = (0,)


def _mathchat(tokenizer, sandbox, tmp_path, tasks, fault=None):
  team = MathChatTeam(tasks)
  engine = ScriptedEngine(tokenizer, team.script())
  wf = MathChatWorkflow(engine=engine, tokenizer=tokenizer, coach=RuleCoach(check_arithmetic=True), sandbox=sandbox,
                        sampling=SamplingParams(max_new_tokens=1024),
                        workspace_root=str(tmp_path))
  if fault is not None:
    faults.install(wf, fault, tokenizer)

  async def run_all():
    return await asyncio.gather(*[wf.run(t) for t in tasks])
  return asyncio.run(run_all()), engine


def _scores(traj):
  return [(a.agent, a.turn, a.coach.score) for a in traj.actions]


def test_code_executor_fault_runs_in_the_sandbox_and_is_recorded(tokenizer, sandbox, tmp_path):
  tasks = synthetic.generate(4, seed=11)
  clean, _ = _mathchat(tokenizer, sandbox, tmp_path, tasks)
  fault = faults.FaultsConfig(agent="code_executor", kind="wrong_operand", rate=1.0, seed=3)
  faulty, engine = _mathchat(tokenizer, sandbox, tmp_path, tasks, fault)
  for c, f, task in zip(clean, faulty, tasks):
    assert "fault" not in c.metadata and c.outcome["rule_correct"] == 1.0
    assert _scores(c) == [("problem_solver", 0, 10.0), ("code_executor", 0, 7.0),
                          ("code_executor", 1, 7.0), ("verifier", 0, 10.0)]
    assert f.metadata["fault"] == {"agent": "code_executor", "kind": "wrong_operand",
                                   "faulty": True, "applied": True}
    (rec,) = f.metadata["faults"]
    assert (rec["action_index"], rec["turn"]) == (1, 0)
    ce0 = f.actions[1]
    # The misread program really ran: its output is the new value, not the answer.
    assert ce0.tool_observation.strip() == rec["detail"]["new_printed"][-1] != task.answer
    before, after = c.actions[1].text.split("\n"), ce0.text.split("\n")
    changed = [(x, y) for x, y in zip(before, after) if x != y]
    assert len(before) == len(after) and changed == [(rec["detail"]["line"],
                                                      rec["detail"]["new_line"])]
    # Unchanged token prefix keeps the sampler's logprobs; the rewritten tail has 0.0.
    orig = c.actions[1].response_ids
    same = next(i for i, (x, y) in enumerate(zip(orig, ce0.response_ids)) if x != y)
    assert ce0.rollout_logprobs == [-1.0] * same + [0.0] * (len(ce0.response_ids) - same)
    # The rule coach blames the Code Executor; the others keep their fault-free scores (the
    # careful Verifier re-derives the answer instead of trusting the tool).
    assert _scores(f) == [("problem_solver", 0, 10.0), ("code_executor", 0, 3.0),
                          ("code_executor", 1, 3.0), ("verifier", 0, 10.0)]
    assert "does not match my own check" in f.actions[3].text
  assert engine.calls  # the inner engine answered every generation


def test_problem_solver_fault_and_a_rate_below_one(tokenizer, sandbox, tmp_path):
  tasks = synthetic.generate(12, seed=2)
  fault = faults.FaultsConfig(agent="problem_solver", kind="wrong_answer", rate=0.5, seed=1)
  trajs, _ = _mathchat(tokenizer, sandbox, tmp_path, tasks, fault)
  drawn = [t.metadata["fault"]["faulty"] for t in trajs]
  inj = faults.FaultInjector(fault, tokenizer)
  assert drawn == [inj.is_faulty(t.task_id, 0) for t in tasks] and 0 < sum(drawn) < 12
  for t in trajs:
    if t.metadata["fault"]["faulty"]:
      (rec,) = t.metadata["faults"]
      assert rec["action_index"] == 0 and f"\\boxed{{{rec['detail']['new']}}}" in t.actions[0].text
      assert _scores(t)[0] == ("problem_solver", 0, 4.0)  # its stated calculation is false
    else:
      assert t.metadata["faults"] == [] and _scores(t)[0] == ("problem_solver", 0, 10.0)
    assert [s for _, _, s in _scores(t)[1:]] == [7.0, 7.0, 10.0]


_DE = """Save features.
</think>

```python
import pickle
pickle.dump([[1.0], [2.0]], open('X_train.pkl', 'wb'))
pickle.dump([0, 1], open('y_train.pkl', 'wb'))
pickle.dump([[3.0]], open('X_test.pkl', 'wb'))
print('---PREPROCESSING_SUMMARY--- 2 rows ---END_SUMMARY---')
```"""
_MOD = """Fit.
</think>

```python
import pickle
X, y = pickle.load(open('X_train.pkl', 'rb')), pickle.load(open('y_train.pkl', 'rb'))
pickle.dump({'threshold': 1.5}, open('model.pkl', 'wb'))
print('---MODEL_SUMMARY--- threshold ---END_SUMMARY---')
```"""
_AN = """Predict.
</think>

```python
import pickle
model = pickle.load(open('model.pkl', 'rb'))
X_test = pickle.load(open('X_test.pkl', 'rb'))
with open('submission.csv', 'w') as f:
    f.write('id,target\\n' + ''.join(f'r{i},{int(x[0] > 1.5)}\\n' for i, x in enumerate(X_test)))
print(open('submission.csv').read())
```"""


@pytest.fixture
def ds_task(tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  pd.DataFrame({"id": ["a", "b"], "f": [1.0, 2.0], "target": [0, 1]}).to_csv(
      d / "train.csv", index=False)
  pd.DataFrame({"id": ["r0"], "f": [3.0]}).to_csv(d / "test.csv", index=False)
  pd.DataFrame({"id": ["r0"], "target": [1]}).to_csv(d / "answer.csv", index=False)
  meta = {"train_file": str(d / "train.csv"), "test_file": str(d / "test.csv"),
          "answer_file": str(d / "answer.csv"), "metric": "accuracy", "id_column": "id",
          "target_columns": ["target"], "higher_is_better": True, "cleaned_prompt": None}
  return Task("toy", "Predict target. Metric: accuracy.", None, "classification", meta)


def _dsbench(tokenizer, sandbox, tmp_path, task, fault=None):
  engine = ScriptedEngine(tokenizer, {
      "data_engineer": [_DE, "Done.\n</think>\n\nSaved X_train.pkl, y_train.pkl, X_test.pkl."],
      "modeler": [_MOD, "Done.\n</think>\n\nSaved model.pkl."],
      "analyst": [_AN, "Done.\n</think>\n\nsubmission.csv written."]})
  wf = DSBenchWorkflow(engine=engine, tokenizer=tokenizer, coach=RuleCoach(check_arithmetic=True), sandbox=sandbox,
                       sampling=SamplingParams(max_new_tokens=1024),
                       config=DSBenchConfig(tool_timeout_s=20), workspace_root=str(tmp_path))
  if fault is not None:
    faults.install(wf, fault, tokenizer)
  return asyncio.run(wf.run(task))


def test_data_engineer_never_saves_x_test(tokenizer, sandbox, tmp_path, ds_task):
  clean = _dsbench(tokenizer, sandbox, tmp_path, ds_task)
  assert clean.outcome["valid"] and not clean.error
  assert _scores(clean) == [("data_engineer", 0, 10.0), ("data_engineer", 1, 2.0),
                            ("modeler", 0, 10.0), ("modeler", 1, 2.0), ("analyst", 0, 9.0),
                            ("analyst", 1, 2.0)]
  fault = faults.FaultsConfig(agent="data_engineer", kind="missing_file", rate=1.0,
                              file="X_test.pkl")
  traj = _dsbench(tokenizer, sandbox, tmp_path, ds_task, fault)
  (rec,) = traj.metadata["faults"]  # turn 2 has no code: nothing to remove there
  assert rec["action_index"] == 0 and rec["detail"]["removed"] == [
      "pickle.dump([[3.0]], open('X_test.pkl', 'wb'))"]
  assert "X_test.pkl" not in traj.metadata["saved_by"]["data_engineer"]
  an0 = traj.actions_of("analyst")[0]
  assert "FileNotFoundError" in an0.tool_observation and "X_test.pkl" in an0.tool_observation
  # Upstream blame: the Data Engineer loses, the Modeler and the Analyst that correctly tried to
  # load X_test.pkl keep their scores (the blocked Analyst is capped at 7.5: stopping at the
  # missing file must pay less than a working recovery, see rule_coach.py). The Data Engineer's
  # code ran and saved 2 of 3 files (9 on the sheet), capped at 5 for the broken hand-off.
  assert _scores(traj) == [("data_engineer", 0, 5.0), ("data_engineer", 1, 0.0),
                           ("modeler", 0, 10.0), ("modeler", 1, 2.0), ("analyst", 0, 7.5),
                           ("analyst", 1, 2.0)]
  assert "blocked" in an0.coach.rationale and "data_engineer" in an0.coach.rationale
  assert pickle.loads(pickle.dumps(traj.metadata["fault"]))["applied"]
