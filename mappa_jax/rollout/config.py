"""The `rollout` config section and the engine it builds (in-process sampler or SGLang)."""
from __future__ import annotations

import dataclasses
import os
from typing import Literal, Mapping

from flax import nnx

from mappa_jax.rollout.engine import InProcessEngine, InProcessEngineConfig
from mappa_jax.rollout.multiprocess import SharedSGLangEngine
from mappa_jax.rollout.publish import WeightPublisher
from mappa_jax.rollout.sglang_engine import SGLangEngine
from mappa_jax.rollout.types import RolloutEngine, SamplingParams
from mappa_jax.schema import Section, field, increasing, non_negative, positive


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig(Section):
  """The `rollout` section: how trajectories are sampled, and how many per step."""
  engine: Literal["inprocess", "sglang"] = field(
      "inprocess", "'inprocess' (JAX sampler in this process) | 'sglang' (servers over HTTP)")
  sglang_urls: dict[str, tuple[str, ...]] = field(
      {}, "engine='sglang': agent -> server URLs, e.g. --config.rollout.sglang_urls."
      "problem_solver='(\"http://10.0.0.2:30000\",)'")
  temperature: float = field(1.0, "REF training sampling temperature (0 = greedy)",
                             check=non_negative, fix="Use >= 0 (0 = greedy).")
  eval_temperature: float = field(0.6, "REF evaluation temperature", check=non_negative,
                                  fix="Use >= 0 (0 = greedy).")
  top_p: float = field(1.0, "REF nucleus mass (1.0 = off)", check=lambda v: 0 < v <= 1,
                       fix="Use 0 < top_p <= 1 (1 = off).")
  top_k: int = field(0, "REF top-k (0 = off; the reference's -1)", check=non_negative,
                     fix="Use >= 0 (0 = off).")
  max_new_tokens: int = field(4096, "REF generation budget per action", check=positive,
                              fix="Use >= 1.")
  min_new_tokens: int = field(16, "REF EOS suppressed before this many tokens",
                              check=non_negative, fix="Use >= 0.")
  n_samples_per_prompt: int = field(2, "REF trajectories per task (adjacent copies)",
                                    check=positive, fix="Use >= 1.")
  rollout_batch_size: int = field(32, "REF tasks per step", check=positive, fix="Use >= 1.")
  max_concurrent_workflows: int = field(16, "REF workflows in flight per process",
                                        check=positive, fix="Use >= 1.")
  prompt_max_len: int = field(24576, "REF longest prompt (tokens) before an action",
                              check=positive, fix="Use >= 1.")
  prompt_buckets: tuple[int, ...] = field(
      (), "in-process sampler: prompts are left-padded to the smallest bucket that fits "
      "(() = powers of two)", check=increasing,
      fix="Use () for the sampler's defaults or a strictly increasing tuple of sizes.")
  batch_buckets: tuple[int, ...] = field(
      (), "in-process sampler: every batch is padded to min(max_concurrent_workflows, "
      "batch_buckets[-1]) rows, larger ones run in chunks (() = no cap)", check=increasing,
      fix="Use () for the sampler's defaults or a strictly increasing tuple of sizes.")

  def problems(self) -> list[tuple[str, str]]:
    found = []
    if self.min_new_tokens >= self.max_new_tokens:
      found.append(("min_new_tokens", f"= {self.min_new_tokens} must be < "
                    f"rollout.max_new_tokens ({self.max_new_tokens}); lower it or raise "
                    "max_new_tokens"))
    if self.prompt_buckets and self.prompt_buckets[-1] < self.prompt_max_len:
      found.append(("prompt_buckets", f"the largest bucket ({self.prompt_buckets[-1]}) cannot "
                    f"hold rollout.prompt_max_len ({self.prompt_max_len}); add a bucket >= "
                    f"{self.prompt_max_len}"))
    found += [(f"sglang_urls.{agent}", f"{urls!r}: URLs must start with http:// or https://.")
              for agent, urls in self.sglang_urls.items()
              if not all(u.startswith(("http://", "https://")) for u in urls)]
    if self.engine == "sglang":
      found += [(f"sglang_urls.{agent}", "is empty but rollout.engine='sglang'; set "
                 f"--config.rollout.sglang_urls.{agent}='(\"http://host:30000\",)'")
                for agent, urls in self.sglang_urls.items() if not urls]
    return found

  def sampling(self, agents, *, evaluation: bool = False) -> dict[str, SamplingParams]:
    """Every agent's SamplingParams for training (or evaluation) rollouts."""
    return {name: SamplingParams(
        max_new_tokens=self.max_new_tokens,
        temperature=self.eval_temperature if evaluation else self.temperature,
        top_p=self.top_p, top_k=self.top_k, min_new_tokens=self.min_new_tokens)
            for name in agents}


def build_engine(cfg: RolloutConfig, models: Mapping[str, nnx.Module], *, eos_token_ids,
                 seed: int, workdir: str, model_dir: str, process_index: int = 0,
                 process_count: int = 1) -> RolloutEngine:
  """The engine `cfg` names, sampling with `models` ({agent: Decoder}).

  In-process: batch-invariant sampling. A row's logits (so its logprobs, hence the update)
  are bit-identical only between batches of the same padded shapes (XLA picks kernels by
  shape), and which requests batch together depends on timing. An agent never has more
  requests in flight than there are workflows: that is the one batch size;
  rollout.batch_buckets[-1], when set, caps it (larger batches run in chunks: on CPU a batch of
  8 decodes about as fast as 1, and 4 chunks of 8 as fast as one of 32). Each process seeds
  its engine `seed + 1000 * process_index`.

  SGLang across processes: one copy of the weights per server, so process 0 alone exports
  and reloads while every process generates (rollout/multiprocess.py); only the HF export
  (what the servers load), since an Orbax save is collective across processes.
  """
  if cfg.engine == "sglang":
    multihost = process_count > 1
    publisher = WeightPublisher(os.path.join(workdir, "published"),
                                templates=next(iter(models.values())),
                                tokenizer_dirs=model_dir, write_orbax=not multihost
                                ) if process_index == 0 else None
    engine = SGLangEngine({a: tuple(cfg.sglang_urls[a]) for a in models}, publisher=publisher)
    return SharedSGLangEngine(engine, process_index=process_index) if multihost else engine
  size = cfg.max_concurrent_workflows
  if cfg.batch_buckets:
    size = min(size, cfg.batch_buckets[-1])
  return InProcessEngine(models, eos_token_ids=eos_token_ids, config=InProcessEngineConfig(
      seed=seed + 1000 * process_index, max_batch_size=cfg.max_concurrent_workflows,
      batch_buckets=(size,), batch_invariant=True, prompt_buckets=cfg.prompt_buckets or None))
