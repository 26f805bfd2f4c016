"""factory.build: every part of a run is built from the sections it names, as they are."""
import math

from mappa_jax import config as mconfig
from mappa_jax import factory
from mappa_jax import sharding
from mappa_jax.coach.rule_coach import RuleCoach
from mappa_jax.tools.sandbox import SandboxLimits
from mappa_jax.workflows.mathchat import MathChatWorkflow
from tests.tiny_run import TINY_RUN


def test_each_part_is_built_from_its_section(tmp_path):
  config = mconfig.load_config("experiments/mathchat.py:smoke", TINY_RUN + (
      "--config.rollout.max_concurrent_workflows=3", "--config.rollout.batch_buckets=(2,)",
      "--config.rollout.temperature=0.0", "--config.rollout.eval_temperature=0.3",
      "--config.coach.rule_correct_weight=5.0", "--config.coach.invalid_policy=neutral",
      "--config.coach.neutral_score=3.0", "--config.sandbox.timeout_s=7.0",
      "--config.sandbox.memory_mb=256", "--config.sandbox.output_cap_chars=1000",
      "--config.rl.advantage_estimator=outcome", "--config.agents.code_executor.max_turns=3"))
  exp = mconfig.experiment(config)
  parts = factory.build(exp, str(tmp_path), sharding.make_mesh(exp.mesh))
  try:
    assert len(parts.train_tasks) == 4 and list(parts.eval_sets) == ["synthetic"]
    assert parts.sandbox.limits == SandboxLimits(timeout_s=7.0, memory_bytes=256 << 20,
                                                 output_keep_bytes=1000)
    assert parts.sandbox.max_concurrency == exp.sandbox.max_concurrency
    engine = parts.engine.config
    assert (engine.max_batch_size, engine.batch_buckets, engine.seed) == (3, (2,), exp.seed)
    assert isinstance(parts.coach.inner, RuleCoach) and parts.coach.inner.correct_weight == 5.0
    # The workflows: the config's agents in execution order, with the sandbox's time limit.
    for wf, temperature in ((parts.workflow, 0.0), (parts.eval_workflow, 0.3)):
      assert isinstance(wf, MathChatWorkflow) and list(wf.agents) == list(exp.agent_names)
      assert wf.agents["code_executor"].max_turns == 3
      assert wf.agents["code_executor"].tool_timeout_s == 7.0
      assert {s.temperature for s in wf.sampling.values()} == {temperature}
      assert wf.config.token_budget == "12"  # the budget the prompts announce
    # The team: rl + train sections as they are, plus what an agent's update derives.
    team = parts.team
    for agent in exp.agent_names:
      cfg = team.configs[agent]
      assert cfg.learning_rate == exp.train.learning_rate and cfg.kl_coef == exp.rl.kl_coef
      per_step = 2 * 1 * exp.agents[agent].max_turns  # tasks x samples x turns
      assert cfg.max_steps == math.ceil(per_step / 2) * exp.train.num_steps
      assert cfg.temperature == 1.0  # greedy rollouts are scored at T=1
      assert cfg.outcome_key == "rule_correct"  # the workflow's outcome for 'outcome'
    assert team.neutral_score == 3.0
    assert set(team.models()) == set(exp.agent_names)
  finally:
    parts.sandbox.close()
