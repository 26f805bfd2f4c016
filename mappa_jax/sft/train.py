"""Supervised fine-tuning of the project's decoder on demonstration actions (the tiny base team).

  checkpoint = pretrain(config, out_dir)   # demonstrations -> packed rows -> AdamW -> HF export

Everything runs through the project's own parts: the synthetic task family, the real MathChat
workflow with the sandbox (demos.py / data.py), the Flax NNX decoder, optax and the HF exporter.
Seeded end to end: the same config gives the same checkpoint on the same machine.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mappa_jax.data import dsbench as dsbench_data
from mappa_jax.data import dsbench_suite
from mappa_jax.data import synthetic
from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.models.hf_io import export_hf
from mappa_jax.models import tokenizer as tokenizer_lib
from mappa_jax.models.tokenizer import Tokenizer
from mappa_jax.sft import data as sft_data
from mappa_jax.sft import dsbench_demos
from mappa_jax.sft.demos import DemoMixture
from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.workflows.mathchat import MathChatConfig, MathChatWorkflow, budget_text

log = logging.getLogger(__name__)


def masked_cross_entropy(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy over masked positions.

  Args:
    logits: [B, T, V]; position t predicts tokens[:, t + 1].
    tokens: int32 [B, T].
    loss_mask: float32 [B, T], 1 where position t's target (token t + 1) is trained.
  Returns:
    (mean loss, number of trained tokens).
  """
  targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)  # last column is masked
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  n = jnp.maximum(loss_mask.sum(), 1.0)
  return (ce * loss_mask).sum() / n, n


def make_train_step(graphdef, optimizer: optax.GradientTransformation):
  """(params, opt_state, batch) -> (params, opt_state, metrics): one jitted AdamW step.

  metrics: 'loss' (mean over response tokens) and 'number_loss' (over the response tokens
  that are numbers: what the team must copy right; the template is learned long before).
  """

  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(batch["tokens"], batch["positions"], segment_ids=batch["segment_ids"])
    logits = model.logits(hidden)
    loss, _ = masked_cross_entropy(logits, batch["tokens"], batch["loss_mask"])
    number_loss, _ = masked_cross_entropy(logits, batch["tokens"], batch["number_mask"])
    return loss, number_loss

  @jax.jit
  def step(params, opt_state, batch):
    (loss, number_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            {"loss": loss, "number_loss": number_loss})

  return step


def _tasks(cfg: ml_collections.ConfigDict):
  arith = synthetic.ArithmeticConfig(levels=tuple(cfg.data.levels),
                                     eval_permille=int(cfg.data.eval_permille))
  return synthetic.generate(int(cfg.data.n_tasks), split="train", seed=int(cfg.data.seed),
                            config=arith)


def _sandbox(cfg: ml_collections.ConfigDict) -> Sandbox:
  return Sandbox(cfg.sandbox.backend, SandboxLimits(timeout_s=10.0),
                 max_concurrency=int(cfg.sandbox.max_concurrency),
                 allow_unisolated=bool(cfg.sandbox.allow_unisolated))


def _workflow_config(cfg: ml_collections.ConfigDict) -> MathChatConfig:
  # The prompts must read exactly as the local presets render them (the budget line too).
  return MathChatConfig(token_budget=budget_text(int(cfg.workflow.max_new_tokens)))


def _agents(cfg: ml_collections.ConfigDict):
  return MathChatWorkflow.team(
      code_executor={"max_turns": int(cfg.workflow.executor_max_turns)})


def train_tokenizer(cfg: ml_collections.ConfigDict, out_dir: str | os.PathLike,
                    dsbench_tasks: list | None = None) -> Path:
  """A byte-level BPE fitted to the team's own transcripts (cfg.tokenizer).

  The first cfg.tokenizer.train_tasks tasks' demonstrations are rendered with the shipped
  tiny tokenizer (byte-level: the text round-trips exactly), and the BPE learns its merges
  from that text, so the fixed role prompts take about half as many tokens. With a `dsbench`
  section, the DSBench demonstrations of cfg.dsbench.tokenizer_seeds join the corpus.
  """
  if int(cfg.tokenizer.number_tokens) > 10 ** int(cfg.tokenizer.max_digits):
    raise ValueError(f"tokenizer.number_tokens={cfg.tokenizer.number_tokens} needs numbers of "
                     f"more than tokenizer.max_digits={cfg.tokenizer.max_digits} digits")
  bootstrap = Tokenizer.from_dir(cfg.tokenizer.bootstrap_dir)
  tasks = _tasks(cfg)[:int(cfg.tokenizer.train_tasks)]
  trajs = []
  sandbox = _sandbox(cfg)
  try:
    if tasks:
      trajs, _ = sft_data.collect_demonstrations(
          tasks, bootstrap, sandbox, mixture=DemoMixture(**cfg.mixture.to_dict()),
          seed=int(cfg.data.seed), config=_workflow_config(cfg),
          agents=_agents(cfg))
    if dsbench_tasks:
      trajs += _dsbench_demos(cfg, dsbench_tasks, bootstrap, sandbox,
                              cfg.dsbench.tokenizer_seeds)[0]
  finally:
    sandbox.close()
  corpus = []
  for traj in trajs:
    for action in traj.actions:
      text = bootstrap.decode(action.prompt_ids + action.response_ids)
      for added, _ in tokenizer_lib.TINY_ADDED_TOKENS:  # added tokens are not merged
        text = text.replace(added, "\n")
      corpus.append(text)
  # Every number below cfg.tokenizer.number_tokens, twice (the BPE merges pairs seen twice):
  # each becomes one token, so an agent copies a number in one step, whatever its value.
  corpus.append(" ".join(f"{i} {i}" for i in range(int(cfg.tokenizer.number_tokens))))
  return tokenizer_lib.build_tiny_tokenizer(out_dir, corpus=corpus,
                                            vocab_size=int(cfg.tokenizer.vocab_size),
                                            max_digits=int(cfg.tokenizer.max_digits))


def _dsbench_demos(cfg: ml_collections.ConfigDict, tasks: list, tokenizer, sandbox: Sandbox,
                   seeds) -> tuple[list, dict]:
  """DSBench demonstration trajectories of `tasks` for every seed (cfg.dsbench)."""
  return dsbench_demos.collect(
      tasks, tokenizer, sandbox, seeds=[int(s) for s in seeds],
      mixture=dsbench_demos.DSDemoMixture(**cfg.dsbench.mixture.to_dict()),
      columns_from=str(cfg.dsbench.columns_from),
      tool_timeout_s=float(cfg.dsbench.tool_timeout_s),
      max_concurrency=int(cfg.sandbox.max_concurrency))


def dsbench_train_tasks(root: str, only: tuple[str, ...] = ()) -> list:
  """The offline DSBench suite's training tasks (those in `only`, if given), built under
  `root`; eval tasks are left out, so pretraining never sees a task the DSBench presets
  evaluate on."""
  info = dsbench_suite.build(root, list(only) or None)
  eval_ids = set(info.get("eval_task_ids", ()))
  return [t for t in dsbench_data.load_dsbench_tasks(root, info["tasks_file"])
          if t.task_id not in eval_ids]


def build_examples(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                   dsbench_tasks: list | None = None
                   ) -> tuple[list[sft_data.Example], dict[str, Any]]:
  """Demonstration actions for cfg.data.n_tasks training-split tasks (and, with a `dsbench`
  section, for every DSBench training task and seed of cfg.dsbench.seeds), and what was drawn."""
  mix = DemoMixture(**cfg.mixture.to_dict())
  tasks = _tasks(cfg)
  trajs, counts, ds_trajs, ds_counts = [], {}, [], {}
  sandbox = _sandbox(cfg)
  try:
    if tasks:
      trajs, counts = sft_data.collect_demonstrations(tasks, tokenizer, sandbox, mixture=mix,
                                                      seed=int(cfg.data.seed),
                                                      config=_workflow_config(cfg),
                                                      agents=_agents(cfg))
    if dsbench_tasks:
      ds_trajs, ds_counts = _dsbench_demos(cfg, dsbench_tasks, tokenizer, sandbox,
                                           cfg.dsbench.seeds)
  finally:
    sandbox.close()
  accuracy = (float(np.mean([t.outcome.get("rule_correct", 0.0) for t in trajs]))
              if trajs else None)
  info = {"trajectories": len(trajs), "demonstration_accuracy": accuracy,
          "expected_accuracy": mix.expected_accuracy() if trajs else None,
          "behaviours": {a: dict(sorted(c.items())) for a, c in sorted(counts.items())}}
  if dsbench_tasks:
    info["dsbench"] = {
        "trajectories": len(ds_trajs), "tasks": sorted(t.task_id for t in dsbench_tasks),
        "x_test_omission_rate": dsbench_demos.omission_rate(ds_trajs),
        "submission_validity": dsbench_demos.validity_rate(ds_trajs),
        "behaviours": {a: dict(sorted(c.items())) for a, c in sorted(ds_counts.items())},
        "longest_action_tokens": max(len(a.prompt_ids) + len(a.response_ids)
                                     for t in ds_trajs for a in t.actions),
        "longest_response_tokens": max(len(a.response_ids) for t in ds_trajs
                                       for a in t.actions)}
  return sft_data.examples_from(trajs) + sft_data.examples_from(ds_trajs), info


def pretrain(cfg: ml_collections.ConfigDict, out_dir: str | os.PathLike) -> dict[str, Any]:
  """Builds demonstrations, trains the decoder on them and exports an HF checkpoint.

  Returns the run summary (also written to <out_dir>/pretrain_info.json).
  """
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="mappa_tokenizer_") as tmp:
    # The DSBench tasks' CSVs must outlive both demonstration passes: built once, under tmp.
    ds_tasks = (dsbench_train_tasks(os.path.join(tmp, "dsbench_suite"), tuple(cfg.dsbench.tasks))
                if "dsbench" in cfg else None)
    tokenizer_dir = train_tokenizer(cfg, os.path.join(tmp, "tokenizer") if ds_tasks else tmp,
                                    ds_tasks)
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    examples, info = build_examples(cfg, tokenizer, ds_tasks)
    info["tokenizer_size"] = tokenizer.vocab_size
    return _train_and_export(cfg, out_dir, tokenizer_dir, tokenizer, examples, info, t_start)


def _train_and_export(cfg: ml_collections.ConfigDict, out_dir: str | os.PathLike,
                      tokenizer_dir: Path, tokenizer: Tokenizer,
                      examples: list[sft_data.Example], info: dict[str, Any],
                      t_start: float) -> dict[str, Any]:
  """Fits the decoder to `examples` and exports it with the tokenizer (see pretrain)."""
  per_agent = collections.Counter(e.agent for e in examples)
  batch_size, epochs = int(cfg.train.batch_size), int(cfg.train.epochs)
  batches = sft_data.bucketed_batches(examples, batch_size, pad_id=tokenizer.eos_token_ids[-1],
                                      multiple=int(cfg.train.length_multiple))
  sft_data.add_number_masks(batches, tokenizer)
  order = sft_data.epoch_order(len(batches), seed=int(cfg.seed), epochs=epochs)
  t_data = time.perf_counter() - t_start
  log.info("%d demonstration actions (%s) in %d batches of %d, lengths %s (%.1f s)",
           len(examples), dict(per_agent), len(batches), batch_size,
           sorted({b["tokens"].shape[1] for b in batches}), t_data)

  # The embedding has a row per token id, rounded up to a multiple of 64.
  vocab = -(-tokenizer.vocab_size // 64) * 64
  model_cfg = ModelConfig(**cfg.model.to_dict(), vocab_size=vocab,
                          eos_token_ids=tuple(tokenizer.eos_token_ids))
  tokenizer.check_vocab(model_cfg.vocab_size)
  model = Decoder(model_cfg, rngs=nnx.Rngs(params=int(cfg.seed)))
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  total = len(order)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, float(cfg.train.learning_rate), max(1, int(cfg.train.warmup_ratio * total)),
      max(total, 2), end_value=float(cfg.train.learning_rate) * float(cfg.train.min_lr_ratio))
  optimizer = optax.chain(optax.clip_by_global_norm(float(cfg.train.max_grad_norm)),
                          optax.adamw(schedule, b1=0.9, b2=0.95,
                                      weight_decay=float(cfg.train.weight_decay)))
  opt_state = optimizer.init(params)
  step_fn = make_train_step(graphdef, optimizer)
  log.info("model: %.2f M parameters; %d steps (%d epochs x %d batches)",
           n_params / 1e6, total, epochs, len(batches))

  losses, window, t_train = [], [], time.perf_counter()
  every = max(1, total // 20)
  for i, index in enumerate(order):
    batch = {k: jnp.asarray(v) for k, v in batches[index].items()}
    params, opt_state, metrics = step_fn(params, opt_state, batch)
    window.append(metrics)
    if (i + 1) % every == 0 or i + 1 == total:
      mean = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
      window = []
      losses.append((i + 1, mean["loss"], mean["number_loss"]))
      log.info("step %d/%d: loss %.4f, number tokens %.4f (%.0f s)", i + 1, total,
               mean["loss"], mean["number_loss"], time.perf_counter() - t_train)
  t_train = time.perf_counter() - t_train

  nnx.update(model, params)
  out = export_hf(model, out_dir, tokenizer_dir=tokenizer_dir)
  info.update({
      "parameters": int(n_params), "actions": len(examples), "actions_per_agent": dict(per_agent),
      "batches": len(batches), "steps": int(total),
      "loss_curve": losses, "final_loss": losses[-1][1] if losses else None,
      "final_number_loss": losses[-1][2] if losses else None,
      "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
      "wall_seconds": round(time.perf_counter() - t_start, 1),
      "jax_version": jax.__version__, "config": cfg.to_dict()})
  write_info(out, info)
  return info


def write_info(out_dir: str | os.PathLike, info: dict[str, Any]) -> None:
  """<out_dir>/pretrain_info.json: what was trained, on what, and how long it took."""
  with open(Path(out_dir) / "pretrain_info.json", "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, sort_keys=True, default=str)
