"""Rollout throughput and weight-publish latency.

  python benchmarks/rollout_bench.py [--batch_sizes=1,4,16] [--max_new_tokens=32]
      [--prompt_len=16] [--preset=tiny-qwen3] [--publish_sizes=64x2,256x4,512x8] [--repeats=3]

Prints two tables:
1. tokens/s of the InProcessEngine (concurrent `generate` calls gathered by the dispatcher)
   and of the same engine behind our SGLang-protocol server, driven by SGLangEngine over
   HTTP on 127.0.0.1, at several batch sizes (compile time excluded and shown separately;
   EOS is suppressed with min_new_tokens so every row generates exactly max_new_tokens).
2. publish latency vs model size: WeightPublisher.write (Orbax params + HF safetensors export)
   and the server reload through /update_weights_from_disk from each copy.
Runs on whatever JAX platform is active (CPU by default here; GPU when available).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import jax
from flax import nnx

from mappa_jax.models.config import ModelConfig
from mappa_jax.models.decoder import Decoder
from mappa_jax.rollout.engine import InProcessEngine, InProcessEngineConfig
from mappa_jax.rollout.publish import WeightPublisher
from mappa_jax.rollout.server import BackgroundServer, RolloutServer
from mappa_jax.rollout.sglang_engine import SGLangEngine, SGLangEngineConfig
from mappa_jax.rollout.types import SamplingParams


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
  return [[(7 * i + 3 * j + 1) % vocab for j in range(length)] for i in range(n)]


async def _round(engine, agent: str, prompts, max_new: int, seed0: int) -> tuple[float, int]:
  sp = SamplingParams(max_new_tokens=max_new, min_new_tokens=max_new, temperature=1.0)
  t0 = time.perf_counter()
  outs = await asyncio.gather(*(engine.generate(agent, p, SamplingParams(
      **{**sp.__dict__, "seed": seed0 + i})) for i, p in enumerate(prompts)))
  return time.perf_counter() - t0, sum(len(o.token_ids) for o in outs)


def throughput(args) -> None:
  cfg = ModelConfig.preset(args.preset)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  sizes = [int(b) for b in args.batch_sizes.split(",")]
  prompt_bucket = max(16, 1 << (args.prompt_len - 1).bit_length())
  econf = InProcessEngineConfig(max_batch_size=max(sizes), batch_window_s=0.005,
                                prompt_buckets=(prompt_bucket,),
                                max_new_buckets=(args.max_new_tokens,),
                                batch_buckets=tuple(sorted(set(sizes))))
  eos = cfg.eos_token_ids or (0,)
  print(f"\n## Throughput: preset {args.preset} ({cfg.num_params() / 1e6:.2f} M params), "
        f"prompt {args.prompt_len} tokens, {args.max_new_tokens} new tokens per request, "
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind})")
  print("| path | batch | compile+first (s) | steady (s/round) | tokens/s |")
  print("|---|---|---|---|---|")
  engine = InProcessEngine({"a": model}, eos_token_ids=eos, config=econf)
  server_engine = InProcessEngine({"default": model}, eos_token_ids=eos, config=econf)
  bg = BackgroundServer(RolloutServer(server_engine, model_path="<in-memory>"))
  url = bg.start()
  client = SGLangEngine({"a": [url]}, config=SGLangEngineConfig(request_timeout_s=3600))
  try:
    for path, eng in (("in-process", engine), ("HTTP server", client)):
      for b in sizes:
        prompts = _prompts(b, args.prompt_len, cfg.vocab_size)

        async def measure():
          first, _ = await _round(eng, "a", prompts, args.max_new_tokens, 0)
          times, toks = [], 0
          for r in range(args.repeats):
            dt, n = await _round(eng, "a", prompts, args.max_new_tokens, 1000 * (r + 1))
            times.append(dt)
            toks = n
          if isinstance(eng, SGLangEngine):
            await eng.aclose()
          return first, statistics.median(times), toks

        first, steady, toks = asyncio.run(measure())
        print(f"| {path} | {b} | {first:.2f} | {steady:.3f} | {toks / steady:.0f} |")
  finally:
    bg.stop()
    asyncio.run(engine.aclose())


def publish_latency(args) -> None:
  print("\n## Publish latency vs model size (write = Orbax params + HF export; reload = "
        "server /update_weights_from_disk)")
  print("| model | params (M) | MB | write orbax (s) | write hf (s) | reload orbax (s) | "
        "reload hf (s) |")
  print("|---|---|---|---|---|---|---|")
  for spec in args.publish_sizes.split(","):
    hidden, layers = (int(x) for x in spec.split("x"))
    cfg = ModelConfig.preset(args.preset).replace(
        hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(4, hidden // 64), num_key_value_heads=max(2, hidden // 128),
        head_dim=min(64, hidden // 4), vocab_size=max(512, 8 * hidden))
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    new = Decoder(cfg, rngs=nnx.Rngs(1))
    mbytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param))) / 2**20
    engine = InProcessEngine({"default": model}, eos_token_ids=(0,), config=InProcessEngineConfig())
    bg = BackgroundServer(RolloutServer(engine, model_path="<in-memory>"))
    url = bg.start()
    with tempfile.TemporaryDirectory() as tmp:
      writes, reloads = {"orbax": [], "hf": []}, {"orbax": [], "hf": []}
      pub = WeightPublisher(Path(tmp), templates=model, keep_last=1)
      for r in range(args.repeats):
        t0 = time.perf_counter()
        published = pub.write("default", new, r + 1)
        total = time.perf_counter() - t0
        import json
        secs = json.loads((published.path / "publish.json").read_text())["seconds"]
        writes["orbax"].append(secs["orbax"])
        writes["hf"].append(secs["hf"])
        for fmt in ("orbax", "hf"):
          client = SGLangEngine({"default": [url]}, config=SGLangEngineConfig(push_format=fmt))

          async def push():
            t = time.perf_counter()
            await client.push("default", published.path_for(fmt), 10 * (r + 1))
            await client.aclose()
            return time.perf_counter() - t

          reloads[fmt].append(asyncio.run(push()))
    bg.stop()
    med = statistics.median
    print(f"| {hidden}x{layers} | {cfg.num_params() / 1e6:.2f} | {mbytes:.1f} | "
          f"{med(writes['orbax']):.3f} | {med(writes['hf']):.3f} | {med(reloads['orbax']):.3f} | "
          f"{med(reloads['hf']):.3f} |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch_sizes", default="1,4,16")
  p.add_argument("--max_new_tokens", type=int, default=32)
  p.add_argument("--prompt_len", type=int, default=16)
  p.add_argument("--preset", default="tiny-qwen3")
  p.add_argument("--publish_sizes", default="64x2,256x4,512x8",
                 help="hidden x layers of the models whose publish latency is measured")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip_throughput", action="store_true")
  p.add_argument("--skip_publish", action="store_true")
  args = p.parse_args()
  if not args.skip_throughput:
    throughput(args)
  if not args.skip_publish:
    publish_latency(args)


if __name__ == "__main__":
  main()
