"""Logit parity check: mappa_jax vs transformers (torch, CPU, float32) on one HF checkpoint.

  python launch/check_logits.py --hf_dir=DIR [--seq_len=32] [--batch=3] [--atol=1e-4]

Runs both models on the same left-padded batch (sentences encoded with DIR's tokenizer.json,
or random token ids when DIR has none), compares logits on real (non-pad) tokens, prints the
max |delta logit| and the max per-token KL(hf || mappa_jax), and exits 0 only when the max
|delta logit| is within --atol (and the KL within --max_kl).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Solve for x: 2x + 3 = 11. Show your work step by step.",
    "def add(a, b):\n    return a + b\nprint(add(2, 3))",
    "In 1905 Einstein published four papers.",
    "Multi-agent systems coordinate several language models.",
)


def _batch(hf_dir: Path, batch: int, seq_len: int, vocab_size: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, str]:
  """Left-padded ids [B, T], bool mask [B, T] and a description of the source."""
  rows: list[list[int]] = []
  tok_path = hf_dir / "tokenizer.json"
  if tok_path.is_file():
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    tok = Tokenizer.from_file(str(tok_path))
    for i in range(batch):
      ids = tok.encode(SENTENCES[i % len(SENTENCES)], add_special_tokens=False).ids
      rows.append(ids[:seq_len] or [0])
    source = f"{batch} sentences encoded with {tok_path.name}"
  else:
    rng = np.random.default_rng(seed)
    for i in range(batch):
      n = seq_len if i == 0 else int(rng.integers(max(1, seq_len // 2), seq_len + 1))
      rows.append(rng.integers(0, vocab_size, size=n).tolist())
    source = f"random token ids (no tokenizer.json in {hf_dir})"
  width = max(len(r) for r in rows)
  ids = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = r
    mask[i, width - len(r):] = True
  return ids, mask, source


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(hf_dir: str | os.PathLike, *, batch: int = 3, seq_len: int = 32, seed: int = 0
            ) -> dict[str, float]:
  """Returns {'max_abs_logit_diff', 'max_kl', 'tokens'} over the real tokens of the batch."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from mappa_jax.models.hf_io import load_hf  # pylint: disable=import-outside-toplevel

  hf_dir = Path(hf_dir)
  model = load_hf(hf_dir, param_dtype="float32")
  ids, mask, source = _batch(hf_dir, batch, seq_len, model.config.vocab_size, seed)
  positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)

  @nnx.jit
  def forward(model, ids, positions, mask):
    hidden, _ = model(ids, positions, attention_mask=mask)
    return model.logits(hidden)

  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)))

  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(hf_dir), dtype=torch.float32, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = ref_model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    position_ids=torch.from_numpy(positions.astype(np.int64))).logits.numpy()

  ours, ref = ours[mask], ref[mask]  # [n_real, V]
  lp_ours, lp_ref = _log_softmax(ours), _log_softmax(ref)
  kl = (np.exp(lp_ref) * (lp_ref - lp_ours)).sum(-1)
  return {"max_abs_logit_diff": float(np.abs(ours - ref).max()), "max_kl": float(kl.max()),
          "tokens": int(mask.sum()), "source": source}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf_dir", required=True, help="HF checkpoint directory")
  parser.add_argument("--seq_len", type=int, default=32)
  parser.add_argument("--batch", type=int, default=3)
  parser.add_argument("--atol", type=float, default=1e-4, help="max allowed |delta logit|")
  parser.add_argument("--max_kl", type=float, default=1e-6, help="max allowed per-token KL")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  hf_dir = Path(args.hf_dir)
  if not (hf_dir / "config.json").is_file():
    print(f"error: {hf_dir / 'config.json'} not found (--hf_dir must be an HF model dir)",
          file=sys.stderr)
    return 2
  result = compare(hf_dir, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
  ok = result["max_abs_logit_diff"] <= args.atol and result["max_kl"] <= args.max_kl
  print(f"checkpoint          {hf_dir}")
  print(f"inputs              {result['source']}, {result['tokens']} real tokens")
  print(f"max |delta logit|   {result['max_abs_logit_diff']:.3e}  (atol {args.atol:g})")
  print(f"max per-token KL    {result['max_kl']:.3e}  (max {args.max_kl:g})")
  print("PASS" if ok else "FAIL")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
