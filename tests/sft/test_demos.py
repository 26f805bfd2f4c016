"""The demonstration policy: rendered by the real workflow, seeded, with the documented mixture."""
import collections

import numpy as np
import pytest

from mappa_jax.data import grading, synthetic
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.models.tiny import TINY_TOKENIZER_DIR
from mappa_jax.sft import data as sft_data
from mappa_jax.sft import demos
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits

ARITH = synthetic.ArithmeticConfig(levels=(1, 2))


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def sandbox():
  sb = Sandbox("auto", SandboxLimits(timeout_s=20.0), max_concurrency=4)
  yield sb
  sb.close()


@pytest.fixture(scope="module")
def collected(tokenizer, sandbox):
  tasks = synthetic.generate(200, split="train", seed=3, config=ARITH)
  return tasks, *sft_data.collect_demonstrations(tasks, tokenizer, sandbox, seed=3)


def test_expression_and_program_compute_the_answer():
  steps = [("+", 6), ("*", 3), ("/", 2), ("-", 4)]
  assert demos.expression(12, steps) == "(12 + 6) * 3 / 2 - 4"
  assert eval(demos.expression(12, steps)) == 23  # pylint: disable=eval-used
  namespace = {}
  exec(demos.program(12, steps).replace("print(n)", "result = n"), namespace)  # pylint: disable=exec-used
  assert namespace["result"] == synthetic.evaluate_steps(12, steps) == 23


def test_mixture_probabilities_are_checked_and_expected_accuracy_is_exact():
  with pytest.raises(ValueError, match="executor_compute"):
    demos.DemoMixture(executor_compute=0.7, executor_restate=0.4)
  with pytest.raises(ValueError, match="solver_correct"):
    demos.DemoMixture(solver_correct=1.5)
  # All compute and report: the team is always right; all restate: as right as the solver.
  assert demos.DemoMixture(executor_compute=1.0, executor_restate=0.0,
                           executor_report_tool=1.0).expected_accuracy() == 1.0
  assert demos.DemoMixture(executor_compute=0.0, executor_restate=1.0,
                           solver_correct=0.3).expected_accuracy() == pytest.approx(0.3)


def test_demonstrations_follow_the_documented_mixture(collected):
  tasks, trajs, counts = collected
  mix = demos.DemoMixture()
  n = len(tasks)
  # 200 draws of each choice: binomial standard deviation <= 0.036, so 0.12 is > 3 sigma.
  assert abs(counts["problem_solver"]["correct"] / n - mix.solver_correct) < 0.12
  ce = counts["code_executor"]
  assert abs(ce["compute"] / n - mix.executor_compute) < 0.12
  assert abs(ce["restate"] / n - mix.executor_restate) < 0.12
  assert ce["no_print"] > 0 and ce["syntax"] > 0
  accuracy = np.mean([t.outcome["rule_correct"] for t in trajs])
  assert abs(accuracy - mix.expected_accuracy()) < 0.12
  # Every behaviour really happened in the sandbox: computing programs print the answer.
  by_id = {t.task_id: t for t in tasks}
  for traj in trajs:
    ce0 = traj.actions_of("code_executor")[0]
    if ce0.tool_calls and "print(n)" in ce0.tool_calls[0].code:
      assert ce0.tool_observation.strip() == by_id[traj.task_id].answer
    if ce0.tool_calls and ce0.tool_calls[0].code.endswith("print(n"):
      assert ce0.tool_calls[0].exit_code != 0 and "SyntaxError" in ce0.tool_observation


def test_verifier_trusting_the_tool_is_right_when_the_program_ran(collected):
  tasks, trajs, _ = collected
  by_id = {t.task_id: t for t in tasks}
  trusted = [t for t in trajs if "The tool output is" in t.actions_of("verifier")[0].text]
  assert trusted
  for traj in trusted:
    assert grading.is_equivalent(traj.final_answer, by_id[traj.task_id].answer)


def test_same_seed_same_demonstrations_whatever_the_concurrency(tokenizer, sandbox):
  tasks = synthetic.generate(12, split="train", seed=5, config=ARITH)
  a, _ = sft_data.collect_demonstrations(tasks, tokenizer, sandbox, seed=1, max_concurrency=1)
  b, _ = sft_data.collect_demonstrations(tasks, tokenizer, sandbox, seed=1, max_concurrency=8)
  c, _ = sft_data.collect_demonstrations(tasks, tokenizer, sandbox, seed=2)
  ids = lambda trajs: [(x.prompt_ids, x.response_ids) for t in trajs for x in t.actions]  # noqa: E731
  assert ids(a) == ids(b)
  assert ids(a) != ids(c)


def test_examples_are_the_workflow_actions_and_batches_mask_responses(collected, tokenizer):
  _, trajs, _ = collected
  examples = sft_data.examples_from(trajs)
  assert collections.Counter(e.agent for e in examples)["problem_solver"] == len(trajs)
  pad = tokenizer.eos_token_ids[-1]
  batches = sft_data.bucketed_batches(examples[:40], 8, pad, multiple=64)
  assert len(batches) == 5
  seen = 0
  for b in batches:
    assert b["tokens"].shape[1] % 64 == 0
    for row in range(8):
      n = int(b["segment_ids"][row].sum())
      targets = b["tokens"][row, 1:n][b["loss_mask"][row, :n - 1] > 0]
      # The trained targets are exactly one example's response ids.
      match = [e for e in examples[:40] if tuple(targets) == e.response_ids
               and n == e.length]
      assert match, row
      assert b["loss_mask"][row, n - 1:].sum() == 0
      seen += 1
  assert seen == 40
  order = sft_data.epoch_order(5, seed=0, epochs=2)
  assert sorted(order) == sorted(list(range(5)) * 2) and order == sft_data.epoch_order(
      5, seed=0, epochs=2)
