"""Generation seeds derived from what identifies a generation, never from arrival order.

A request without a seed used to take the next number of the engine's shared generator, in
the order requests arrived, and that order depends on sandbox and coach latency: the same run
replayed gave other samples. `derive_seed(run_seed, 'train', step, task_id, sample_index,
agent, turn)` is stable across processes and Python versions (sha256 of a canonical JSON,
never Python's salted hash()).
"""
from __future__ import annotations

import hashlib
import json

# The sampler folds seeds to uint32 and SGLang takes a signed int: 31 bits fit both.
SEED_BITS = 31


def derive_seed(*parts: object) -> int:
  """A seed in [0, 2**31) from `parts` (ints and strings; other objects by str()).

  Equal parts give equal seeds in every process; (1, '2') and ('1', 2) differ (types are
  part of the encoding), as do ('ab', 'c') and ('a', 'bc').
  """
  canon = [p if isinstance(p, (int, str)) and not isinstance(p, bool) else str(p)
           for p in parts]
  payload = json.dumps(canon, ensure_ascii=False, separators=(",", ":"))
  digest = hashlib.sha256(payload.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
