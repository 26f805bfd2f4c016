"""Small random trajectories of one agent 'a' shared by the RL and global-batch tests:
7 trajectories over 4 tasks, 1-2 actions each, one truncated and one with an invalid verdict;
and the batch layout settings those tests build batches with."""
import numpy as np

from mappa_jax.coach.types import CoachResult
from mappa_jax.rl.config import UpdateConfig
from mappa_jax.workflows.records import Action, Trajectory


def batch_config(token_budget_buckets: tuple[int, ...], samples_per_optimizer_step: int,
                 **fields) -> UpdateConfig:
  """Settings for build_train_batch: row lengths, the row multiple, other fields as given."""
  return UpdateConfig(token_budget_buckets=token_budget_buckets, micro_batch_size=1,
                      samples_per_optimizer_step=samples_per_optimizer_step, **fields)


def random_trajectories(seed: int = 0) -> list[Trajectory]:
  rng = np.random.default_rng(seed)
  trajs = []
  for i in range(7):
    acts = []
    for turn in range(1 + i % 2):
      n = int(rng.integers(1, 6))
      acts.append(Action(
          agent="a", turn=turn, prompt_ids=list(rng.integers(0, 50, int(rng.integers(1, 5)))),
          response_ids=list(rng.integers(0, 50, n)), rollout_logprobs=[-1.0] * n,
          finish_reason="length" if i == 3 else "stop",
          coach=CoachResult(status="invalid") if i == 5 else
          CoachResult(status="scored", score=float(rng.integers(0, 11)))))
    trajs.append(Trajectory(f"t{i // 2}", i % 2, "aime" if i < 4 else "amc", actions=acts))
  return trajs
