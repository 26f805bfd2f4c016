"""rl.score_recentre on the Team path (rl/team.py: Team.experience), one process.

'batch' re-centres every agent's rewards per task type onto the agent's overall mean of this
step's counted actions; 'rolling' takes the bias guard's window means (x reward_scale) where it
has them and this step's means elsewhere; 'none' leaves the rewards as the coach gave them.
The per-stratum arithmetic itself has a golden test in tests/rl/test_stratum.py.
"""
import numpy as np
import pytest

from mappa_jax import config as mconfig
from mappa_jax import sharding
from mappa_jax.coach.types import CoachResult
from mappa_jax.rl import team as team_lib
from mappa_jax.workflows.records import Action, Trajectory

# (task type, [score of each agent's action]): 6 trajectories over 2 task types, one action of
# every agent; add_sub is scored 3 points above mul_div on average by construction.
ROWS = [("add_sub", 9.0), ("add_sub", 7.0), ("add_sub", 8.0),
        ("mul_div", 4.0), ("mul_div", 6.0), ("mul_div", 5.0)]
REWARD_SCALE = 0.1


def trajectories(agents):
  out = []
  for i, (task_type, score) in enumerate(ROWS):
    actions = [Action(agent=a, turn=t, prompt_ids=[5, 6, 7], response_ids=[8, 9, 10 + i],
                      rollout_logprobs=[-1.0] * 3, finish_reason="stop",
                      coach=CoachResult(status="scored", score=score + t))
               for t, a in enumerate(agents)]
    out.append(Trajectory(f"t{i}", 0, task_type, actions=actions))
  return out


@pytest.fixture(scope="module")
def teams(tmp_path_factory):
  """One Team per score_recentre mode, on the smoke preset's random tiny model."""
  out = {}
  for mode in ("none", "batch", "rolling"):
    config = mconfig.validate(mconfig.load_config("experiments/mathchat.py:smoke", overrides=(
        f"--config.rl.score_recentre={mode}", f"--config.rl.reward_scale={REWARD_SCALE}")))
    exp = mconfig.experiment(config)
    workdir = str(tmp_path_factory.mktemp(mode))
    model_dir = team_lib.model_dir(exp.model, workdir, config.seed)
    out[mode] = team_lib.Team(exp, model_dir, sharding.make_mesh(exp.mesh), exp.agent_names,
                              outcome_key="correct")
  return out


def rewards_by_type(batch):
  """{task type index: [reward of each counted action]} of one TrainBatch."""
  rewards = np.asarray(batch.rewards, np.float64)
  counted = np.asarray(batch.valid) & ~np.asarray(batch.invalid)
  strata = np.asarray(batch.strata)
  out = {}
  for r, s in zip(rewards[counted], strata[counted]):
    out.setdefault(int(s), []).append(float(r))
  return out


def test_batch_recentres_each_type_onto_the_agents_overall_mean(teams):
  agents = teams["none"].agents
  trajs = trajectories(agents)
  plain, _ = teams["none"].experience(trajs)
  recentred, _ = teams["batch"].experience(trajs)
  for t, agent in enumerate(agents):
    raw = rewards_by_type(plain[agent])
    got = rewards_by_type(recentred[agent])
    assert len(raw) == 2 and sorted(len(v) for v in raw.values()) == [3, 3]
    # The coach's rewards: the given scores (+ the agent's turn) x reward_scale, 0.3 apart.
    means = {s: np.mean(v) for s, v in raw.items()}
    assert abs(abs(means[0] - means[1]) - 3 * REWARD_SCALE) < 1e-6
    level = np.mean([r for v in raw.values() for r in v])
    np.testing.assert_allclose(level, (6.5 + t) * REWARD_SCALE, atol=1e-6)
    for s, values in got.items():
      # Each type moved onto the overall mean; the spread within a type is untouched.
      np.testing.assert_allclose(np.mean(values), level, atol=1e-6, err_msg=(agent, s))
      np.testing.assert_allclose(np.asarray(values) - np.mean(values),
                                 np.asarray(raw[s]) - means[s], atol=1e-6, err_msg=(agent, s))


def test_rolling_uses_the_guards_window_means_where_it_has_them(teams):
  agents = teams["none"].agents
  trajs = trajectories(agents)
  plain, _ = teams["none"].experience(trajs)
  # The guard's window: add_sub's mean score is 1 point lower than this step's; mul_div unknown.
  window = {"add_sub": 7.0}
  got, _ = teams["rolling"].experience(trajs, stratum_means=lambda agent: window)
  batch, _ = teams["batch"].experience(trajs)
  agent = agents[0]  # turn 0: the scores as given
  raw, rolled, batched = (rewards_by_type(b[agent]) for b in (plain, got, batch))
  add_sub = next(s for s, v in raw.items() if np.isclose(np.mean(v), 0.8))
  mul_div = 1 - add_sub
  level = np.mean([r for v in raw.values() for r in v])
  # add_sub: r - 0.7 + level (the window mean x reward_scale), 0.1 above 'batch'.
  np.testing.assert_allclose(rolled[add_sub], np.asarray(raw[add_sub]) - 0.7 + level, atol=1e-6)
  np.testing.assert_allclose(np.asarray(rolled[add_sub]) - batched[add_sub], 0.1, atol=1e-6)
  # mul_div: no window mean, so this step's, as 'batch' does.
  np.testing.assert_allclose(rolled[mul_div], batched[mul_div], atol=1e-6)
