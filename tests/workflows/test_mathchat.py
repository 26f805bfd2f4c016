"""MathChat with a scripted policy, the real tiny tokenizer, a real bwrap sandbox."""
import asyncio
import time

import pytest

from mappa_jax.data.loaders import Task
from mappa_jax.rollout.types import SamplingParams
from mappa_jax.workflows.base import LoopOptions
from mappa_jax.workflows.mathchat import MathChatConfig, MathChatWorkflow
from mappa_jax.workflows.scripted import ScriptedEngine
from tests.workflows.conftest import RecordingCoach

TASK = Task("p1", "What is 6 times 7? Put the answer in \\boxed{}.", "42", "add_sub")
PS = "Six sevens.\n</think>\n\nThe product is \\boxed{42}."
CE_CODE = "Let me compute.\n</think>\n\n```python\nprint(6 * 7)\n```"
CE_DONE = "The code printed 42.\n</think>\n\nConfirmed: \\boxed{42}"
VER = "Both agree.\n</think>\n\n**\\boxed{42}**"
SCRIPT = {"problem_solver": [PS], "code_executor": [CE_CODE, CE_DONE], "verifier": [VER]}


def make(tokenizer, sandbox, script=SCRIPT, coach=None, config=MathChatConfig(),
         options=LoopOptions(), delay_s=0.0, agents=None):
  engine = ScriptedEngine(tokenizer, script, delay_s=delay_s)
  coach = coach or RecordingCoach()
  wf = MathChatWorkflow(engine=engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
                        sampling=SamplingParams(max_new_tokens=512), config=config,
                        options=options, agents=agents)
  return wf, engine, coach


def test_full_trajectory(tokenizer, sandbox):
  wf, engine, coach = make(tokenizer, sandbox)
  traj = asyncio.run(wf.run(TASK))
  assert not traj.error
  assert [(a.agent, a.turn) for a in traj.actions] == [
      ("problem_solver", 0), ("code_executor", 0), ("code_executor", 1), ("verifier", 0)]
  ps, ce0, ce1, ver = traj.actions
  assert ce0.tool_observation == "42" and ce0.tool_calls[0].exit_code == 0
  assert ce1.tool_calls == [] and ver.tool_calls == []
  # Token ids end to end: turn 2's prompt = turn 1's prompt + sampled ids + template suffix.
  n = len(ce0.prompt_ids) + len(ce0.response_ids)
  assert ce1.prompt_ids[:n] == ce0.prompt_ids + ce0.response_ids
  suffix = tokenizer.decode(ce1.prompt_ids[n:])
  assert suffix.startswith("\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>")
  assert suffix.endswith("<|im_start|>assistant\n<think>\n")
  assert ce0.response_ids[-1] in tokenizer.eos_token_ids
  # Hand-offs: the upstream text arrives, special-token text never does.
  ce_prompt = tokenizer.decode(ce0.prompt_ids)
  assert "The product is \\boxed{42}." in ce_prompt and "Six sevens." in ce_prompt
  assert ce_prompt.count("<|im_end|>") == 1  # only the template's own end of the user turn
  ver_prompt = tokenizer.decode(ver.prompt_ids)
  assert "Confirmed: \\boxed{42}" in ver_prompt and "<tool_response>\n42\n" in ver_prompt
  assert "Six sevens" not in ver_prompt  # reference default: no Problem Solver input
  assert ver_prompt.count("<|im_end|>") == 1
  # Coach: one request per action, label only for the Verifier, all results attached.
  assert [r.role for r in coach.requests] == ["Problem Solver", "Code Executor",
                                              "Code Executor", "Verifier"]
  assert [r.ground_truth for r in coach.requests] == [None, None, None, "42"]
  assert coach.requests[1].signals["code_blocks"] == 1
  assert coach.requests[1].tool_observation == "42"
  assert coach.requests[3].signals["answer"] == "42"
  assert all(a.coach is not None and a.coach.is_scored for a in traj.actions)
  assert traj.final_answer == "42" and traj.outcome["rule_correct"] == 1.0
  assert traj.outcome["executor_code_ok"] == 1.0 and traj.outcome["verifier_agrees_tool"] == 1.0
  assert all(a.rollout_logprobs == [-1.0] * len(a.response_ids) for a in traj.actions)


def test_verifier_can_see_problem_solver(tokenizer, sandbox):
  wf, _, _ = make(tokenizer, sandbox, agents=MathChatWorkflow.team(
      verifier={"sees": ("code_executor", "problem_solver")}))
  traj = asyncio.run(wf.run(TASK))
  ver_prompt = tokenizer.decode(traj.actions_of("verifier")[0].prompt_ids)
  assert "## Input from Problem Solver" in ver_prompt and "Six sevens" in ver_prompt


def test_strip_thinking_handoff(tokenizer, sandbox):
  wf, _, _ = make(tokenizer, sandbox, options=LoopOptions(strip_thinking_handoff=True))
  traj = asyncio.run(wf.run(TASK))
  ce_prompt = tokenizer.decode(traj.actions_of("code_executor")[0].prompt_ids)
  assert "The product is" in ce_prompt and "Six sevens" not in ce_prompt


def test_reference_context_bug_flag(tokenizer, sandbox):
  wf, _, _ = make(tokenizer, sandbox, options=LoopOptions(reference_context_bug=True))
  traj = asyncio.run(wf.run(TASK))
  ce0, ce1 = traj.actions_of("code_executor")
  assert ce1.prompt_ids == ce0.response_ids  # reference: action 2 conditioned on action 1 only


def test_max_turn_stop_and_crash_surfaced(tokenizer, sandbox):
  crash = "Try.\n</think>\n```python\nprint('before')\n1 / 0\n```"
  script = dict(SCRIPT, code_executor=[crash])  # always writes code
  wf, engine, coach = make(tokenizer, sandbox, script=script)
  traj = asyncio.run(wf.run(TASK))
  ce = traj.actions_of("code_executor")
  assert len(ce) == 2 and sum(a == "code_executor" for a, _ in engine.calls) == 2
  assert all(a.tool_calls for a in ce)  # the last turn's code still runs
  obs = ce[0].tool_observation
  assert obs.startswith("before\n[stderr]: Traceback") and "ZeroDivisionError" in obs
  assert ce[0].tool_calls[0].exit_code == 1
  assert "ZeroDivisionError" in tokenizer.decode(ce[1].prompt_ids)  # the agent saw the crash
  assert coach.of("Code Executor")[0].signals["tool_errors"] == 1
  # The crashed blocks fail executor_code_ok; the last output printed no number ('before').
  assert traj.outcome["executor_code_ok"] == 0.0
  assert "verifier_agrees_tool" not in traj.outcome


def test_verifier_disagreeing_with_the_tool_and_no_code(tokenizer, sandbox):
  code = "Compute.\n</think>\n```python\nprint('total:', 1000 - 959)\n```"
  script = dict(SCRIPT, code_executor=[code, CE_DONE])
  traj = asyncio.run(make(tokenizer, sandbox, script=script)[0].run(TASK))
  assert traj.actions_of("code_executor")[0].tool_calls[0].stdout.strip() == "total: 41"
  assert traj.outcome["executor_code_ok"] == 1.0
  assert traj.outcome["verifier_agrees_tool"] == 0.0  # boxed 42, the tool printed 41
  # No code at all: the executor did not run code (0.0) and there is nothing to agree with.
  traj = asyncio.run(make(tokenizer, sandbox, script=dict(SCRIPT, code_executor=[CE_DONE]))[0]
                     .run(TASK))
  assert traj.outcome["executor_code_ok"] == 0.0
  assert "verifier_agrees_tool" not in traj.outcome


def test_downstream_agents_do_not_wait_for_the_coach(tokenizer, sandbox):
  async def go():
    hold = asyncio.Event()
    wf, engine, coach = make(tokenizer, sandbox, coach=RecordingCoach(hold=hold))
    run = asyncio.create_task(wf.run(TASK))
    while not any(a == "verifier" for a, _ in engine.calls):
      await asyncio.sleep(0.05)
      assert not run.done()
    assert len(coach.requests) >= 3 and not run.done()  # coach still held, verifier ran
    hold.set()
    return await run
  traj = asyncio.run(go())
  assert all(a.coach.is_scored for a in traj.actions)


def test_slow_tool_never_blocks_other_trajectories(tokenizer, sandbox):
  slow = ("Slow.\n</think>\n```python\nimport time\nprint('start', time.time())\n"
          "time.sleep(3)\nprint('end', time.time())\n```")
  ce = lambda prompt: slow if "SLOW" in prompt else CE_DONE  # noqa: E731
  script = dict(SCRIPT, code_executor=[ce, CE_DONE])
  fast_tasks = [Task(f"f{i}", f"fast {i}: 6*7? \\boxed{{}}", "42", "x") for i in range(3)]
  slow_task = Task("s", "SLOW: 6*7? \\boxed{}", "42", "x")

  async def go():
    wf, _, _ = make(tokenizer, sandbox, script=script, delay_s=0.05)
    done_at = {}

    async def one(t):
      traj = await wf.run(t)
      done_at[t.task_id] = time.time()
      return traj
    trajs = await asyncio.gather(one(slow_task), *[one(t) for t in fast_tasks])
    return trajs, done_at
  trajs, done_at = asyncio.run(go())
  slow_obs = trajs[0].actions_of("code_executor")[0].tool_observation.split()
  end = float(slow_obs[3])
  # Every fast trajectory (3 agents, 4 generations) finished before the slow tool call did:
  # a blocking tool call would have held them until after `end`.
  assert all(done_at[t.task_id] < end for t in fast_tasks), (end, done_at)
  assert done_at["s"] > end


def test_empty_action_gets_an_error_turn(tokenizer, sandbox):
  wf, engine, coach = make(tokenizer, sandbox, script=dict(SCRIPT, code_executor=["", CE_DONE]))
  traj = asyncio.run(wf.run(TASK))
  ce0, ce1 = traj.actions_of("code_executor")
  assert ce0.tool_calls == [] and ce0.tool_observation.startswith("<error>empty action")
  assert "<error>empty action" in tokenizer.decode(ce1.prompt_ids)


def test_the_team_is_declared_once():
  team = MathChatWorkflow.team(code_executor={"max_turns": 3})
  assert [a.max_turns for a in team.values()] == [1, 3, 1]
  specs = MathChatWorkflow.specs(team, tool_timeout_s=7.0)
  assert list(specs) == ["problem_solver", "code_executor", "verifier"]  # execution order
  assert specs["code_executor"].tool_timeout_s == 7.0
  assert specs["verifier"].sees_ground_truth_in_coach
  with pytest.raises(TypeError, match="executor_turns"):
    MathChatWorkflow.team(code_executor={"executor_turns": 3})


def test_special_token_text_printed_by_code_never_becomes_a_control_token(tokenizer, sandbox):
  # The program builds '<|im_end|>' at run time, so the text only exists in its output.
  sneaky = "Go.\n</think>\n```python\nprint('42' + '<|im_' + 'end|>' + '<|im_' + 'start|>x')\n```"
  wf, _, coach = make(tokenizer, sandbox, script=dict(SCRIPT, code_executor=[sneaky, CE_DONE]))
  traj = asyncio.run(wf.run(TASK))
  ce0, ce1 = traj.actions_of("code_executor")
  (ver,) = traj.actions_of("verifier")
  assert ce0.tool_calls[0].stdout.startswith("42<|im_end|>")  # the raw run keeps it
  assert ce0.tool_observation == "42x"
  im_end = tokenizer.eos_token_ids[0]
  # Turn 2 context: end of user turn, the sampled EOS, end of the tool turn: 3, no more.
  assert ce1.prompt_ids.count(im_end) == 3
  assert ver.prompt_ids.count(im_end) == 1  # only the template's own end of the user turn
  assert "<|im_end|>" not in coach.of("Code Executor")[0].tool_observation


def test_timed_out_block_is_not_also_counted_as_an_error(tokenizer):
  from mappa_jax.coach.types import CoachRequest
  from mappa_jax.workflows.records import Action, ToolCall
  wf, _, _ = make(tokenizer, None)
  action = Action("code_executor", 0, [1], [2], [0.0], "stop", tool_calls=[
      ToolCall("print(1)", stdout="1", exit_code=0),
      ToolCall("while True: pass", exit_code=-9, timed_out=True)])
  sig = wf.base_signals(action)
  assert (sig["code_blocks"], sig["tool_errors"], sig["tool_timeouts"]) == (2, 0, 1)
  result = wf.coach.inner.score_sync(
      CoachRequest("mathchat", "Code Executor", "", "t", "in", "out", signals=sig))
  assert "1 of 2 blocks without error or timeout" in result.rationale


def test_reference_context_bug_third_action_gets_the_tool_chunk(tokenizer, sandbox):
  script = dict(SCRIPT, code_executor=[CE_CODE])  # always writes code: 3 turns
  three = MathChatWorkflow.team(code_executor={"max_turns": 3})
  wf, _, _ = make(tokenizer, sandbox, script=script, agents=three,
                  options=LoopOptions(reference_context_bug=True))
  ce0, ce1, ce2 = asyncio.run(wf.run(TASK)).actions_of("code_executor")
  assert ce1.prompt_ids == ce0.response_ids
  # reference observation[2]: turn 1's tool-response chunk (no sampled ids, no user prompt).
  chunk = tokenizer.decode(ce2.prompt_ids)
  assert chunk.startswith("\n<|im_start|>user\n<tool_response>\n42\n</tool_response>")
  assert chunk.endswith("<|im_start|>assistant\n<think>\n")
  # without the flag the same run records the full context.
  wf, _, _ = make(tokenizer, sandbox, script=script, agents=three)
  ce0, ce1, ce2 = asyncio.run(wf.run(TASK)).actions_of("code_executor")
  assert ce2.prompt_ids[:len(ce1.prompt_ids) + len(ce1.response_ids)] == (
      ce1.prompt_ids + ce1.response_ids)


def test_stripped_handoff_of_an_action_cut_off_inside_its_reasoning(tokenizer, sandbox):
  # The template pre-fills <think>; a Problem Solver cut off before </think> has no visible part,
  # so a stripped hand-off must not forward its reasoning.
  cut = "I keep reasoning about sevens and never close the block"
  script = dict(SCRIPT, problem_solver=[cut])
  wf, _, _ = make(tokenizer, sandbox, script=script,
                  options=LoopOptions(strip_thinking_handoff=True))
  traj = asyncio.run(wf.run(TASK))
  ce_prompt = tokenizer.decode(traj.actions_of("code_executor")[0].prompt_ids)
  assert "never close the block" not in ce_prompt
  wf, _, _ = make(tokenizer, sandbox, script=script)  # reference default: forwarded raw
  traj = asyncio.run(wf.run(TASK))
  assert "never close the block" in tokenizer.decode(
      traj.actions_of("code_executor")[0].prompt_ids)


def test_unbraced_boxed_answer_does_not_swallow_the_end_of_turn_text(tokenizer, sandbox):
  script = dict(SCRIPT, verifier=["Sure.\n</think>\n\\boxed 42"])
  wf, _, coach = make(tokenizer, sandbox, script=script)
  traj = asyncio.run(wf.run(TASK))
  assert traj.actions_of("verifier")[0].text.endswith("<|im_end|>")
  assert coach.of("Verifier")[0].signals["answer"] == "42"
  assert traj.final_answer == "42"
  assert "answer is a plain number" in traj.actions_of("verifier")[0].coach.rationale


def test_agents_declared_in_config_are_honoured(tokenizer, sandbox):
  agents = MathChatWorkflow.team(
      code_executor={"role_description": "Runs Python.", "max_turns": 1, "tools": ("python",)},
      verifier={"sees": ("code_executor", "problem_solver"), "sees_ground_truth_in_coach": False})
  wf, _, coach = make(tokenizer, sandbox)
  wf = MathChatWorkflow(engine=wf.engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
                        sampling=SamplingParams(max_new_tokens=512), agents=agents)
  script = dict(SCRIPT, code_executor=[CE_CODE])  # always code: the turn limit decides
  wf.engine.script = script
  traj = asyncio.run(wf.run(TASK))
  assert len(traj.actions_of("code_executor")) == 1
  assert coach.of("Code Executor")[0].role_description == "Runs Python."
  assert coach.of("Verifier")[0].ground_truth is None
  assert "Six sevens" in tokenizer.decode(traj.actions_of("verifier")[0].prompt_ids)
  with pytest.raises(ValueError, match="agents must be exactly"):
    MathChatWorkflow(engine=wf.engine, tokenizer=tokenizer, coach=coach, sandbox=sandbox,
                     sampling=SamplingParams(max_new_tokens=8),
                     agents={k: v for k, v in agents.items() if k != "verifier"})


def test_truncated_action_is_closed_with_eos_in_the_next_context_only(tokenizer, sandbox):
  long_tail = CE_CODE + "\nNow let me explain at great length. " * 40
  cut_at = len(tokenizer.encode(CE_CODE)) + 5
  sampling = {"problem_solver": SamplingParams(max_new_tokens=512),
              "code_executor": SamplingParams(max_new_tokens=cut_at),
              "verifier": SamplingParams(max_new_tokens=512)}
  engine = ScriptedEngine(tokenizer, dict(SCRIPT, code_executor=[long_tail, CE_DONE]))
  wf = MathChatWorkflow(engine=engine, tokenizer=tokenizer, coach=RecordingCoach(),
                        sandbox=sandbox, sampling=sampling)
  traj = asyncio.run(wf.run(TASK))
  ce0, ce1 = traj.actions_of("code_executor")
  assert ce0.finish_reason == "length" and ce0.truncated and len(ce0.response_ids) == cut_at
  assert ce0.response_ids[-1] not in tokenizer.eos_token_ids  # never invented in the sample
  assert ce0.tool_observation == "42"  # its complete code block still ran
  n = len(ce0.prompt_ids) + cut_at
  assert ce1.prompt_ids[:n] == ce0.prompt_ids + ce0.response_ids
  assert ce1.prompt_ids[n] == tokenizer.eos_token_ids[0]  # the turn is closed in the context
  assert tokenizer.decode(ce1.prompt_ids[n + 1:]).startswith("\n<|im_start|>user\n<tool_response>")
  assert wf.coach.of("Code Executor")[0].signals["truncated"] is True


class _SeedRecorder(ScriptedEngine):
  """ScriptedEngine that also records each request's (agent, seed)."""

  def __init__(self, *a, **kw):
    super().__init__(*a, **kw)
    self.seeds = []

  async def generate(self, agent, prompt_ids, sampling):
    self.seeds.append((agent, sampling.seed))
    return await super().generate(agent, prompt_ids, sampling)


def test_generation_seeds_come_from_what_identifies_them(tokenizer, sandbox):
  """Each generation's seed is derived from (seed_base, task, sample, agent, turn), so it does
  not depend on the order requests reach a shared engine; without seed_base the engine picks."""
  from mappa_jax.rollout.seeds import derive_seed
  engine = _SeedRecorder(tokenizer, SCRIPT)
  wf = MathChatWorkflow(engine=engine, tokenizer=tokenizer, coach=RecordingCoach(),
                        sandbox=sandbox, sampling=SamplingParams(max_new_tokens=512))
  wf.seed_base = 1234
  traj = asyncio.run(wf.run(TASK, 3))
  assert not traj.error
  assert engine.seeds == [(a.agent, derive_seed(1234, "p1", 3, a.agent, a.turn))
                          for a in traj.actions]
  assert len({s for _, s in engine.seeds}) == 4
  engine2 = _SeedRecorder(tokenizer, SCRIPT)
  wf2 = MathChatWorkflow(engine=engine2, tokenizer=tokenizer, coach=RecordingCoach(),
                         sandbox=sandbox, sampling=SamplingParams(max_new_tokens=512, seed=5))
  wf2.seed_base = 1234
  asyncio.run(wf2.run(TASK))
  assert {s for _, s in engine2.seeds} == {5}  # an explicit seed is kept as configured


class _FailingCoach:
  def __init__(self, error):
    self.error = error

  async def score(self, request):
    raise self.error


def test_fatal_coach_errors_stop_the_run_others_are_masked(tokenizer, sandbox, tmp_path):
  """A circuit breaker that opened (or a replay miss) must stop the run, never be masked; any
  other coach failure leaves the action invalid (masked by the trainer)."""
  from mappa_jax.coach.cache import CoachCacheMissError
  from mappa_jax.coach.openai_coach import CoachUnavailableError
  for fatal in (CoachUnavailableError("circuit breaker open"), CoachCacheMissError("no key")):
    wf, _, _ = make(tokenizer, sandbox, coach=_FailingCoach(fatal))
    wf.workspace_root = str(tmp_path)
    with pytest.raises(type(fatal)):
      asyncio.run(wf.run(TASK))
    assert not list(tmp_path.iterdir())  # the workspace is still cleaned up
  wf, _, _ = make(tokenizer, sandbox, coach=_FailingCoach(RuntimeError("flaky")))
  traj = asyncio.run(wf.run(TASK))
  assert traj.actions and all(not a.coach.is_scored for a in traj.actions)
  assert all("coach error: RuntimeError: flaky" in a.coach.reason for a in traj.actions)
