"""Generation seeds derived from what identifies a generation (mappa_jax.rollout.seeds)."""
import subprocess
import sys

from mappa_jax.rollout.seeds import SEED_BITS, derive_seed


def test_stable_across_processes_and_hash_seeds():
  parts = (17, "train", 3, "task-9", 1, "code_executor", 0)
  here = derive_seed(*parts)
  code = ("from mappa_jax.rollout.seeds import derive_seed; "
          f"print(derive_seed(*{parts!r}))")
  for hash_seed in ("1", "2"):  # Python's salted hash() would differ between these
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": hash_seed, "PATH": ""})
    assert int(out.stdout) == here


def test_range_and_distinct_parts():
  seeds = {derive_seed(0, "train", step, task, sample, agent, turn)
           for step in range(3) for task in ("a", "b") for sample in range(3)
           for agent in ("problem_solver", "verifier") for turn in range(2)}
  assert len(seeds) == 3 * 2 * 3 * 2 * 2  # every generation its own seed
  assert all(0 <= s < 2 ** SEED_BITS for s in seeds)
  assert derive_seed(1, "2") != derive_seed("1", 2)  # types are part of the encoding
  assert derive_seed("ab", "c") != derive_seed("a", "bc")  # no concatenation collisions
  assert derive_seed(True) != derive_seed(1)
