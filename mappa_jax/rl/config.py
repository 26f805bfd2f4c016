"""The `rl` and `train` config sections, and one agent's update settings built from them.

  RLConfig      the `rl` section: the objective (KL, rewards, returns, whitening, PPO loss).
  TrainConfig   the `train` section: optimizer, schedule, batching and run length.
  UpdateConfig  rl + train fields together, plus what one agent's update learns elsewhere
                (schedule horizon, sampling temperature, outcome key); what
                `rl.experience.build_train_batch` and `rl.update.make_update_step` read.

Reference values (mappa-reference.md §3.1) are the defaults ("REF"); "FIX" marks a deliberate
departure that fixes a reference bug. The allowed values of every choice are declared once, as
the Literal types below.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from mappa_jax.schema import Section, field, non_negative, positive

KlEstimator = Literal["k1", "k2", "k3"]
KlPlacement = Literal["reward", "loss", "none"]
WhitenScope = Literal["per_agent", "pooled", "per_agent_per_stratum", "none"]
WhitenWeighting = Literal["token", "action"]
LossAggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum"]
AdvantageEstimator = Literal["reinforce_pp", "reinforce_pp_baseline", "grpo", "outcome"]
Baseline = Literal["none", "grpo", "reinforce_baseline"]
Impl = Literal["xla", "pallas", "reference"]
ScoreRecentre = Literal["none", "batch", "rolling"]

# rl.advantage_estimator -> the per-prompt group baseline applied to action rewards.
_BASELINE_OF: dict[str, Baseline] = {"reinforce_pp": "none", "reinforce_pp_baseline":
                                     "reinforce_baseline", "grpo": "grpo", "outcome": "none"}


def choices(literal) -> tuple[str, ...]:
  """The allowed values of a Literal type, e.g. choices(WhitenScope)."""
  return typing.get_args(literal)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig(Section):
  """The `rl` section: how each agent's actions become a REINFORCE++ loss."""
  kl_coef: float = field(0.01, "REF beta, the KL penalty coefficient (0 disables it)",
                         check=non_negative, fix="Use >= 0 (0 disables the KL penalty).")
  kl_estimator: KlEstimator = field(
      "k1", "REF KL estimator; per-token values clamped to [-10, 10] (REF)")
  kl_placement: KlPlacement = field(
      "reward", "REF 'reward' (token reward) | 'loss' (separate loss term) | 'none' (no KL)")
  gamma: float = field(1.0, "REF discount within an action", check=lambda v: 0 <= v <= 1,
                       fix="Use 0 <= gamma <= 1.")
  return_across_actions: bool = field(
      False, "returns flow on into the agent's next action of the trajectory (REF: they stop "
      "at the action boundary)")
  reward_scale: float = field(
      1.0, "coach score (0-10) multiplier; REF 0.1 MathChat, 1.0 DSBench (BUG §10.2: that "
      "makes the KL term 10x weaker on DSBench): set it per experiment", check=positive,
      fix="Use > 0 (0.1 maps scores to [0, 1]).")
  reward_clip: tuple[float, float] = field(
      (-10.0, 10.0), "scaled rewards are clipped to this range (REF; never binds)")
  outcome_scale: float = field(
      10.0, "advantage_estimator='outcome': the workflow's outcome (in [0, 1]) times this is "
      "the action score, on the coach's 0-10 scale (the same range against the KL penalty)",
      check=positive, fix="Use > 0.")
  whiten_scope: WhitenScope = field(
      "per_agent", "REF advantage whitening over each agent's tokens | all agents' tokens "
      "('pooled') | per task-type stratum | 'none'")
  whiten_weighting: WhitenWeighting = field(
      "token", "REF 'token' (long outputs weigh more) | 'action' (every action weighs 1)")
  whiten_truncated: bool = field(True, "REF truncated samples count in the whitening statistics")
  whiten_use_std: bool = field(True, "divide by the std (False: only centre the returns)")
  var_floor: float = field(1e-8, "smallest variance the whitening divides by", check=positive,
                           fix="Use > 0.")
  max_strata: int = field(8, "most task-type strata a batch may hold (per-stratum whitening)",
                          check=positive, fix="Use >= 1.")
  score_recentre: ScoreRecentre = field(
      "none", "re-centre rewards per task type before the update (a biased-coach mitigation, "
      "rl/stratum.py): 'none' | 'batch' (this step's per-type means, global across processes) "
      "| 'rolling' (the bias guard's window means x reward_scale; needs coach_bias.enabled)")
  eps_clip_low: float = field(0.2, "REF PPO ratio lower clip: 1 - eps",
                              check=lambda v: 0 < v < 1, fix="Use 0 < eps_clip_low < 1.")
  eps_clip_high: float = field(0.2, "REF PPO ratio upper clip: 1 + eps", check=positive,
                               fix="Use eps_clip_high > 0.")
  dual_clip: float | None = field(None, "dual-clip c > 1 for negative advantages; None = off "
                                  "(REF)", check=lambda v: v > 1, fix="Use c > 1, or None (off).")
  loss_agg: LossAggregation = field(
      "seq_mean_token_mean", "REF mean over tokens then samples | 'token_mean' | "
      "'seq_mean_token_sum'")
  mask_truncated: bool = field(True, "REF truncated samples get zero loss but still count")
  advantage_estimator: AdvantageEstimator = field(
      "reinforce_pp", "REF 'reinforce_pp' | 'reinforce_pp_baseline' (group mean subtracted) | "
      "'grpo' (per-prompt group normalisation; no global whitening) | 'outcome' (every action "
      "gets its trajectory's outcome instead of its coach score)")
  old_logprobs: Literal["recompute", "rollout"] = field(
      "recompute", "REF old-policy logprobs recomputed by the trainer, or the sampler's")
  reference_context_bug: bool = field(
      False, "True reproduces BUG §4.1 (turn k >= 2 trained on the wrong context). FIX: False")
  logprob_impl: Impl = field("xla", "token log-prob implementation (kernels/ for 'pallas')")
  advantage_impl: Impl = field("xla", "KL/reward/return implementation (kernels/ for 'pallas')")
  logprob_chunk: int = field(1024, "tokens per chunk of the log-prob pass (no [N, V] logits)",
                             check=positive, fix="Use >= 1.")
  logprob_batch_rows: int = field(0, "rows per old/reference forward (0 = micro_batch_size)",
                                  check=non_negative, fix="Use >= 0.")

  def problems(self) -> list[tuple[str, str]]:
    found = []
    if self.kl_placement == "loss" and self.kl_estimator == "k1":
      found.append(("kl_estimator", "'k1' as a loss term has zero expected gradient of the KL; "
                    "with rl.kl_placement='loss' use 'k3' (or 'k2'), or keep "
                    "kl_placement='reward'"))
    if self.score_recentre == "rolling" and self.advantage_estimator == "outcome":
      found.append(("score_recentre", "'rolling' subtracts the guard's mean coach scores, but "
                    "advantage_estimator='outcome' rewards outcomes; use 'batch' (or 'none')"))
    return found

  @property
  def baseline(self) -> Baseline:
    """The per-prompt group baseline of `advantage_estimator`."""
    return _BASELINE_OF[self.advantage_estimator]

  @property
  def whitening(self) -> WhitenScope:
    """The whitening that runs: GRPO advantages are already normalised per prompt group, so the
    global whitening belongs to REINFORCE++ and its baseline variant only (OpenRLHF)."""
    return "none" if self.advantage_estimator == "grpo" else self.whiten_scope

  @property
  def kl_reward_coef(self) -> float:
    """beta of the KL term in the token rewards (0 unless kl_placement='reward')."""
    return self.kl_coef if self.kl_placement == "reward" else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
  """The `train` section: AdamW, its schedule, the update's batch layout and the run length."""
  learning_rate: float = field(1e-6, "REF peak AdamW learning rate", check=positive,
                               fix="Use > 0.")
  warmup_ratio: float = field(0.03, "REF linear warm-up, fraction of the schedule horizon",
                              check=lambda v: 0 <= v < 1, fix="Use 0 <= warmup_ratio < 1.")
  min_lr_ratio: float = field(0.1, "REF cosine decays to this fraction of the peak",
                              check=lambda v: 0 <= v <= 1, fix="Use 0 <= min_lr_ratio <= 1.")
  lr_decay_steps: int | None = field(
      None, "schedule horizon in optimizer steps; None = derived from num_steps and each "
      "agent's most actions per step (FIX §10.10: the reference's horizon overruns for "
      "multi-turn agents)", check=positive, fix="Use >= 1 or None (derived).")
  b1: float = field(0.9, "REF AdamW beta1", check=lambda v: 0 <= v < 1, fix="Use 0 <= b1 < 1.")
  b2: float = field(0.95, "REF AdamW beta2", check=lambda v: 0 <= v < 1, fix="Use 0 <= b2 < 1.")
  eps: float = field(1e-8, "AdamW epsilon", check=positive, fix="Use > 0.")
  weight_decay: float = field(0.0, "REF AdamW weight decay", check=non_negative,
                              fix="Use >= 0.")
  max_grad_norm: float = field(1.0, "REF global-norm gradient clip (0 = no clipping)",
                               check=non_negative, fix="Use >= 0 (0 = no clipping).")
  fp32_master_weights: bool = field(
      True, "bf16 params: AdamW updates a float32 copy in the optimizer state (an lr=1e-6 step "
      "is below bf16 resolution); no effect for float32 params")
  samples_per_optimizer_step: int = field(16, "REF samples averaged per optimizer step",
                                          check=positive, fix="Use >= 1.")
  micro_batch_size: int = field(4, "samples per forward/backward (gradients accumulated)",
                                check=positive, fix="Use >= 1.")
  num_steps: int = field(128, "REF global (rollout + update) steps of the run", check=positive,
                         fix="Use >= 1.")
  token_budget_buckets: tuple[int, ...] = field(
      (512, 1024, 2048, 4096, 8192, 16384, 32768),
      "padded row lengths (prompt + response tokens): a batch uses the smallest that fits; "
      "nothing is cut to fit: the largest must hold prompt_max_len + max_new_tokens",
      check=lambda v: len(v) > 0 and all(b > 0 for b in v) and all(
          a < b for a, b in zip(v, v[1:])),
      fix="Use a non-empty, strictly increasing tuple of positive lengths.")
  row_buckets: tuple[int, ...] = field(
      (), "allowed batch row counts (multiples of samples_per_optimizer_step); () = the next "
      "multiple", check=lambda v: all(b > 0 for b in v), fix="Use positive sizes.")
  pack_sequences: bool = field(
      False, "pack several actions into one row (segment-masked attention): less padding "
      "when action lengths vary a lot; the same loss")
  shuffle: bool = field(True, "shuffle the rows once per update (rows without samples last)")

  def problems(self) -> list[tuple[str, str]]:
    if self.samples_per_optimizer_step % self.micro_batch_size:
      return [("micro_batch_size", f"= {self.micro_batch_size} must divide "
               f"train.samples_per_optimizer_step ({self.samples_per_optimizer_step})")]
    return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateConfig(RLConfig, TrainConfig):
  """One agent's update: every `rl` and `train` field, plus three values from elsewhere."""
  max_steps: int = field(512, "schedule horizon in optimizer steps (train.lr_decay_steps, or "
                         "derived from the run's length)", check=positive, fix="Use >= 1.")
  temperature: float = field(1.0, "sampling temperature the logprobs are scored at "
                             "(rollout.temperature; greedy rollouts are scored at 1)")
  outcome_key: str = field("correct", "trajectory.outcome key the 'outcome' estimator rewards "
                           "(the workflow's)")

  def problems(self) -> list[tuple[str, str]]:
    found = RLConfig.problems(self) + TrainConfig.problems(self)
    if not self.temperature > 0:
      found.append(("temperature", f"the sampling temperature (rollout.temperature) must be > 0: "
                    f"logits are divided by it; got {self.temperature}. For greedy rollouts "
                    "score with temperature 1.0"))
    return found

  @classmethod
  def of(cls, rl: RLConfig, train: TrainConfig, **derived) -> "UpdateConfig":
    """The sections' fields as they are, plus `derived` (max_steps, temperature, outcome_key)."""
    values = {f.name: getattr(rl, f.name) for f in dataclasses.fields(RLConfig)}
    values.update({f.name: getattr(train, f.name) for f in dataclasses.fields(TrainConfig)})
    return cls(**values, **derived)
