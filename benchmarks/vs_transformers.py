"""mappa_jax against Hugging Face transformers (PyTorch), same checkpoint, same machine.

  python benchmarks/vs_transformers.py                 # the 5.6 M-param Qwen3 of issue 15
  python benchmarks/vs_transformers.py --repeats=5 --threads=2

Builds a random Qwen3 checkpoint with transformers (6 layers, hidden 256, 8 query / 2 KV heads,
head_dim 32, SwiGLU 768, vocab 4096, tied embeddings), saves it with `save_pretrained` to a
temporary directory and loads it with `mappa_jax.models.hf_io.load_hf`. Each library runs in
its own process (sharing one with the other slowed torch's decode by a third: XLA's idle
workers spin on the cores torch's threads wait for), `--rounds` times, alternating
transformers / mappa_jax so that load from other jobs hits both; each process times each row
`--repeats` times after a warm-up (JAX compiles there). Reported: the best over all of them.

  decode   greedy generation, batch 16, prompt 32, 64 new tokens, EOS suppressed (every row
           generates the full budget), prefill included. transformers: `model.generate`
           (do_sample=False, min_new_tokens=64, its default dynamic KV cache); mappa_jax:
           `mappa_jax.rollout.sampler.Sampler.generate` (temperature 0, min_new_tokens=64),
           the sampler the trainer's rollouts use.
  fwd+bwd  causal-LM loss and its gradient w.r.t. every parameter, batch 16 x 256.
           transformers: `model(ids, labels=ids).loss.backward()`; mappa_jax: `jax.grad` of
           `mappa_jax.rl.update.sequence_logprobs` (the trunk + chunked token log-probs of the
           update step's loss), mean negative log-likelihood.

Both use float32; torch gets `--threads` threads (torch.set_num_threads), XLA:CPU its own pool.
Prints one table with both libraries side by side, the load average and the cores the process
may use. Other jobs on the machine hurt torch's threads far more than XLA's (a barrier waits for
the descheduled thread); on a busy machine a one-core comparison is the fairer one:

  taskset -c 1 python benchmarks/vs_transformers.py --threads=1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MODEL = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
             num_attention_heads=8, num_key_value_heads=2, head_dim=32,
             tie_word_embeddings=True, max_position_embeddings=1024, rope_theta=1_000_000.0,
             rms_norm_eps=1e-6)


def _best_times(thunks: dict, repeats: int) -> dict:
  """{name: fn} -> {name: seconds of its fastest call}: one warm-up call each (JAX compiles
  there), then `repeats` rounds calling every fn once per round."""
  for fn in thunks.values():
    fn()
  best = {name: float("inf") for name in thunks}
  for _ in range(repeats):
    for name, fn in thunks.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def _inputs(args) -> tuple[np.ndarray, np.ndarray]:
  """(prompts [batch, prompt_len], training ids [train_batch, seq_len]), the same in every
  process."""
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, MODEL["vocab_size"] - 1, (args.batch, args.prompt_len))
  train_ids = rng.integers(1, MODEL["vocab_size"] - 1, (args.train_batch, args.seq_len))
  return prompts, train_ids


def _child(args) -> int:
  """One library's timings in this process, printed as one JSON line."""
  bench = {"hf": bench_transformers, "mj": bench_mappa}[args.child]
  thunks, info = bench(args.ckpt, args, *_inputs(args))
  print(json.dumps({"info": info, **_best_times(thunks, args.repeats)}))
  return 0


def _run_child(lib: str, ckpt: str, argv: list[str]) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={lib}", f"--ckpt={ckpt}", *argv]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f"{lib} benchmark failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def build_checkpoint(out_dir: str, seed: int = 0) -> None:
  import torch
  import transformers
  torch.manual_seed(seed)
  config = transformers.Qwen3Config(**MODEL, eos_token_id=MODEL["vocab_size"] - 1,
                                    bos_token_id=None, pad_token_id=0)
  transformers.Qwen3ForCausalLM(config).save_pretrained(out_dir)


def bench_transformers(ckpt: str, args, prompts: np.ndarray, train_ids: np.ndarray
                       ) -> tuple[dict, str]:
  import torch
  import transformers
  torch.set_num_threads(args.threads)
  model = transformers.Qwen3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
  ids = torch.from_numpy(prompts).long()
  mask = torch.ones_like(ids)
  tids = torch.from_numpy(train_ids).long()

  def decode():
    model.eval()
    with torch.inference_mode():
      return model.generate(ids, attention_mask=mask, do_sample=False,
                            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                            pad_token_id=0)

  def fwd_bwd():
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(tids, labels=tids).loss
    loss.backward()
    return loss.item()
  info = (f"transformers {transformers.__version__}, torch {torch.__version__} "
          f"(attn {model.config._attn_implementation})")
  return {"decode": decode, "train": fwd_bwd}, info


def bench_mappa(ckpt: str, args, prompts: np.ndarray, train_ids: np.ndarray
                ) -> tuple[dict, str]:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from mappa_jax.models.attention import resolve_impl
  from mappa_jax.models.hf_io import load_hf
  from mappa_jax.rl.config import UpdateConfig
  from mappa_jax.rl.update import sequence_logprobs
  from mappa_jax.rollout.sampler import Sampler
  from mappa_jax.rollout.types import SamplingParams

  model = load_hf(ckpt)
  cfg = model.config
  b, p = prompts.shape
  sampler = Sampler(model, eos_token_ids=(cfg.vocab_size - 1,), prompt_buckets=(p,),
                    max_new_buckets=(args.new_tokens,), batch_buckets=(b,))
  params = SamplingParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          temperature=0.0)
  rows = [r.tolist() for r in prompts]

  graphdef, state = nnx.split(model, nnx.Param)
  update_cfg = UpdateConfig()
  tokens = jnp.asarray(train_ids, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
  weights = jnp.ones(tokens.shape, jnp.float32).at[:, -1].set(0.0)  # last target wraps around
  attention = jnp.ones(tokens.shape, bool)  # the update step always passes its padding mask

  def loss(state):
    logp, _ = sequence_logprobs(graphdef, state, tokens, positions, attention, targets,
                                update_cfg)
    return -jnp.sum(weights * logp) / jnp.sum(weights)

  grad = jax.jit(jax.value_and_grad(loss))
  impl = lambda cached: resolve_impl(cfg.attention_impl, dtype=cfg.jnp_dtype, query_len=2,
                                    cached=cached)
  info = (f"jax {jax.__version__} ({jax.default_backend()}), attention {impl(False)} "
          f"(train) / {impl(True)} (decode)")
  return {"decode": lambda: sampler.generate(rows, params, seeds=list(range(b))),
          "train": lambda: jax.block_until_ready(grad(state))}, info


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--train_batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2,
                 help="processes per library, alternating transformers / mappa_jax")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--child", choices=("hf", "mj"), help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return _child(args)

  passed = [a for a in (sys.argv[1:] if argv is None else argv)
            if not a.startswith(("--rounds", "--child", "--ckpt"))]
  best: dict[tuple[str, str], float] = {}
  info = {}
  with tempfile.TemporaryDirectory() as ckpt:
    build_checkpoint(ckpt)
    for _ in range(args.rounds):
      for lib in ("hf", "mj"):
        result = _run_child(lib, ckpt, passed)
        info[lib] = result.pop("info")
        for row, seconds in result.items():
          best[lib, row] = min(best.get((lib, row), float("inf")), seconds)
  hf_info, mj_info = info["hf"], info["mj"]

  dec_tokens = args.batch * args.new_tokens
  train_tokens = args.train_batch * args.seq_len
  rows = [
      (f"decode b{args.batch} p{args.prompt_len} +{args.new_tokens} (tok/s)",
       dec_tokens / best["hf", "decode"], dec_tokens / best["mj", "decode"]),
      (f"fwd+bwd {args.train_batch}x{args.seq_len} (tok/s)",
       train_tokens / best["hf", "train"], train_tokens / best["mj", "train"]),
  ]
  load = os.getloadavg()
  print(f"checkpoint: Qwen3 {MODEL['num_hidden_layers']} layers, hidden {MODEL['hidden_size']}, "
        f"{MODEL['num_attention_heads']}/{MODEL['num_key_value_heads']} heads, vocab "
        f"{MODEL['vocab_size']}, float32; best of {args.rounds} x {args.repeats}; torch "
        f"threads {args.threads}; cores {sorted(os.sched_getaffinity(0))} of {os.cpu_count()}; "
        f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  print(f"{hf_info}; mappa_jax: {mj_info}")
  width = max(len(r[0]) for r in rows)
  print(f"{'':<{width}}  {'transformers':>12}  {'mappa_jax':>10}  {'ratio':>6}")
  for name, a, b in rows:
    print(f"{name:<{width}}  {a:>12,.0f}  {b:>10,.0f}  {b / a:>5.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
