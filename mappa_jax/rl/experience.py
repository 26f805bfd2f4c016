"""Actions -> one fixed-shape TrainBatch per agent.

Each action becomes one RL sample: its full context (`prompt_ids`) followed by its sampled
`response_ids`. Shapes are bucketed (T from `train.token_budget_buckets`, B a multiple of
`train.samples_per_optimizer_step`, optionally from `train.row_buckets`) so the jitted update compiles a handful of shapes. Nothing is
dropped to make shapes fit: sequences longer than the largest bucket are left-truncated (the
prompt's head goes first, the generation end is kept) and counted in the stats.

Token arrays are aligned with the *targets*: position t holds what is needed to score
`targets[b, t] = tokens[b, t + 1]` from the hidden state at t. `action_ids[b, t] = a` marks the
targets that are response tokens of action a (-1 elsewhere); see rl/objectives.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.struct
import jax
import numpy as np

from mappa_jax.rl.config import UpdateConfig
from mappa_jax.workflows.records import Action
from mappa_jax.workflows.records import Trajectory


@flax.struct.dataclass
class TrainBatch:
  """One agent's experience for one update (a pytree of arrays).

  Token arrays [B, T]:
    tokens: int32 input ids; targets: int32 next ids (tokens shifted left, 0 at the end).
    positions: int32 rotary positions (reset per sample when packed).
    attention_mask: bool, real (non-pad) tokens.
    segment_ids: int32, 1.. per sample within a row, 0 for padding (for packed layouts).
    action_ids: int32, action index of each response target, -1 elsewhere.
    rollout_logprobs: float32, the sampler's logprob of each response target (0 elsewhere).
  Per-action arrays [A] (A = number of action slots; A = B in the padded layout):
    rewards: float32 action reward (already scaled; 0 for invalid/padding).
    truncated: bool, finished by length/abort (masked in the loss by default).
    invalid: bool, the coach result is invalid or missing (masked everywhere).
    valid: bool, the slot holds a real action (False for padding slots).
    strata: int32 task-type id (see stats['strata']).
    groups: int32 prompt group (task id, turn) for group baselines.
    next_action: int32 index of the agent's next action in the same trajectory, -1 if none.
  """
  tokens: jax.Array
  targets: jax.Array
  positions: jax.Array
  attention_mask: jax.Array
  segment_ids: jax.Array
  action_ids: jax.Array
  rollout_logprobs: jax.Array
  rewards: jax.Array
  truncated: jax.Array
  invalid: jax.Array
  valid: jax.Array
  strata: jax.Array
  groups: jax.Array
  next_action: jax.Array

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.tokens.shape)

  @property
  def num_actions(self) -> int:
    return int(self.rewards.shape[0])


def _pick_rows(n: int, cfg: UpdateConfig) -> int:
  m = cfg.samples_per_optimizer_step
  for b in cfg.row_buckets:
    if b >= n and b % m == 0:
      return b
  return max(m, -(-n // m) * m)


def _pick_len(n: int, cfg: UpdateConfig) -> int:
  for t in cfg.token_budget_buckets:
    if t >= n:
      return t
  return cfg.token_budget_buckets[-1]


def _action_reward(action: Action, traj: Trajectory, cfg: UpdateConfig,
                   neutral_score: float | None):
  """(reward, invalid): the coach score (or the trajectory's outcome, advantage_estimator=
  'outcome'), scaled and clipped. An action the coach could not score is invalid, or gets
  `neutral_score` when one is given (coach.invalid_policy='neutral')."""
  if cfg.advantage_estimator == "outcome":
    if cfg.outcome_key not in traj.outcome:
      return 0.0, True
    value = float(traj.outcome[cfg.outcome_key]) * cfg.outcome_scale
  elif action.coach is None or not action.coach.is_scored or action.coach.score is None:
    if neutral_score is None:
      return 0.0, True
    value = float(neutral_score)
  else:
    value = float(action.coach.score)
  lo, hi = cfg.reward_clip
  return float(np.clip(value * cfg.reward_scale, lo, hi)), False


def build_train_batch(trajectories: Sequence[Trajectory], agent: str,
                      cfg: UpdateConfig = UpdateConfig(), *,
                      neutral_score: float | None = None) -> tuple[TrainBatch, dict[str, Any]]:
  """All of `agent`'s actions in `trajectories` -> (TrainBatch, stats).

  Layout from cfg.token_budget_buckets, samples_per_optimizer_step, row_buckets and
  pack_sequences; rewards from cfg.reward_scale, reward_clip, advantage_estimator ('outcome':
  cfg.outcome_key times outcome_scale) and `neutral_score` (see _action_reward).

  Actions keep trajectory order (then turn order), which `next_action` relies on.
  stats: counts of actions, invalid, truncated, left-truncated sequences and dropped prompt /
  response tokens, padding fraction, T, B, and the stratum names.
  """
  items = []  # (action, traj_index, traj)
  for ti, traj in enumerate(trajectories):
    for action in traj.actions_of(agent):
      if len(action.response_ids) == 0:
        raise ValueError(f"action of agent {agent!r} in task {traj.task_id!r} (turn "
                         f"{action.turn}) has no response tokens")
      if len(action.rollout_logprobs) not in (0, len(action.response_ids)):
        raise ValueError(f"action of agent {agent!r} in task {traj.task_id!r}: "
                         f"rollout_logprobs has {len(action.rollout_logprobs)} entries for "
                         f"{len(action.response_ids)} response ids")
      items.append((action, ti, traj))
  n = len(items)
  budget = cfg.token_budget_buckets[-1]
  lengths = [len(a.prompt_ids) + len(a.response_ids) for a, _, _ in items]
  stats: dict[str, Any] = dict(actions=n, invalid=0, truncated=0, left_truncated=0,
                               prompt_tokens_dropped=0, response_tokens_dropped=0)

  strata_names = sorted({traj.task_type for _, _, traj in items})
  if len(strata_names) > cfg.max_strata:
    raise ValueError(f"{len(strata_names)} task types {strata_names} exceed "
                     f"rl.max_strata={cfg.max_strata}; raise it")
  stratum_of = {s: i for i, s in enumerate(strata_names)}

  # Row assignment: padded = one action per row; packed = first-fit by decreasing length.
  seq_len = _pick_len(max(lengths, default=1), cfg)
  if cfg.pack_sequences:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(n), key=lambda i: -min(lengths[i], seq_len)):
      need = min(lengths[i], seq_len)
      for r in range(len(rows)):
        if room[r] >= need:
          rows[r].append(i)
          room[r] -= need
          break
      else:
        rows.append([i])
        room.append(seq_len - need)
  else:
    rows = [[i] for i in range(n)]
  b = _pick_rows(len(rows), cfg)
  a_slots = b if not cfg.pack_sequences else _pick_rows(n, cfg)

  tokens = np.zeros((b, seq_len), np.int32)
  targets = np.zeros((b, seq_len), np.int32)
  positions = np.zeros((b, seq_len), np.int32)
  attention = np.zeros((b, seq_len), bool)
  segments = np.zeros((b, seq_len), np.int32)
  action_ids = np.full((b, seq_len), -1, np.int32)
  rollout_lp = np.zeros((b, seq_len), np.float32)
  rewards = np.zeros(a_slots, np.float32)
  truncated = np.zeros(a_slots, bool)
  invalid = np.zeros(a_slots, bool)
  valid = np.zeros(a_slots, bool)
  strata = np.zeros(a_slots, np.int32)
  groups = np.zeros(a_slots, np.int32)
  next_action = np.full(a_slots, -1, np.int32)

  # Action slot index = position in `items` (trajectory order), whatever the row layout.
  group_of: dict[tuple, int] = {}
  last_of_traj: dict[int, int] = {}
  for slot, (action, ti, traj) in enumerate(items):
    reward, bad = _action_reward(action, traj, cfg, neutral_score)
    rewards[slot], invalid[slot], valid[slot] = reward, bad, True
    truncated[slot] = action.truncated
    strata[slot] = stratum_of[traj.task_type]
    groups[slot] = group_of.setdefault((traj.task_id, action.turn), len(group_of))
    if ti in last_of_traj:
      next_action[last_of_traj[ti]] = slot
    last_of_traj[ti] = slot
    stats["invalid"] += int(bad)
    stats["truncated"] += int(action.truncated)

  for r, members in enumerate(rows):
    col = 0
    for seg, slot in enumerate(members, start=1):
      action = items[slot][0]
      prompt, resp = list(action.prompt_ids), list(action.response_ids)
      lps = list(action.rollout_logprobs) or [0.0] * len(resp)
      overflow = len(prompt) + len(resp) - seq_len
      if overflow > 0:  # left-truncate: prompt head first, then the response head.
        stats["left_truncated"] += 1
        cut_p = min(overflow, len(prompt))
        cut_r = overflow - cut_p
        stats["prompt_tokens_dropped"] += cut_p
        stats["response_tokens_dropped"] += cut_r
        prompt, resp, lps = prompt[cut_p:], resp[cut_r:], lps[cut_r:]
      seq = prompt + resp
      L = len(seq)
      sl = slice(col, col + L)
      tokens[r, sl] = seq
      targets[r, col:col + L - 1] = seq[1:]
      positions[r, sl] = np.arange(L)
      attention[r, sl] = True
      segments[r, sl] = seg
      # Response token k sits at col + len(prompt) + k; it is the target of the previous index.
      first = col + len(prompt) - 1
      lo = max(first, col)  # a fully cut prompt leaves the first response token unscored
      action_ids[r, lo:col + L - 1] = slot
      rollout_lp[r, lo:col + L - 1] = lps[lo - first:]
      if first < col:
        stats["response_tokens_dropped"] += 1
      col += L

  real = int(attention.sum())
  stats.update(rows=b, seq_len=seq_len, real_tokens=real,
               padding_fraction=1.0 - real / float(b * seq_len), padded_rows=b - len(rows),
               strata=strata_names, token_budget=budget)
  batch = TrainBatch(
      tokens=tokens, targets=targets, positions=positions, attention_mask=attention,
      segment_ids=segments, action_ids=action_ids, rollout_logprobs=rollout_lp,
      rewards=rewards, truncated=truncated, invalid=invalid, valid=valid, strata=strata,
      groups=groups, next_action=next_action)
  return jax.tree.map(np.asarray, batch), dict(stats)
