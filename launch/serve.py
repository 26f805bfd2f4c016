"""Serve one model over SGLang's HTTP protocol (our JAX server; hot-swaps from Orbax/HF dirs).

  python launch/serve.py --model=DIR --port=30000 [--host=127.0.0.1] [--max_batch_size=64]

DIR is an HF model dir (config.json + *.safetensors; tokenizer files optional: without them
the server answers input_ids requests only). Example:

  curl -s http://127.0.0.1:30000/generate -H 'Content-Type: application/json' \
    -d '{"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 8, "sampling_seed": 0},
         "return_logprob": true}'

Routes and reply shapes: mappa_jax/rollout/server.py and docs/sglang.md.
"""
from __future__ import annotations

import argparse
import logging


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, help="HF model dir (config.json + *.safetensors)")
  p.add_argument("--port", type=int, default=30000)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--max_batch_size", type=int, default=64)
  p.add_argument("--batch_window_ms", type=float, default=5.0)
  p.add_argument("--seed", type=int, default=0, help="seeds requests without sampling_seed")
  p.add_argument("--eos_token_ids", default="",
                 help="comma-separated end ids (default: tokenizer's, else config.json's)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  # Imported after argument parsing so --help is instant (JAX import takes seconds).
  from mappa_jax.rollout.engine import InProcessEngineConfig
  from mappa_jax.rollout.server import run_server
  run_server(args.model, host=args.host, port=args.port, config=InProcessEngineConfig(
      max_batch_size=args.max_batch_size, batch_window_s=args.batch_window_ms / 1000.0,
      seed=args.seed), eos_token_ids=tuple(
          int(t) for t in args.eos_token_ids.split(",") if t.strip()) or None)


if __name__ == "__main__":
  main()
