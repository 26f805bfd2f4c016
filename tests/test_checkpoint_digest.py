"""`python -m mappa_jax.checkpoint digest W [--step=N]` on real Orbax checkpoints."""
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mappa_jax import checkpoint as ckpt
from mappa_jax.checkpoint import CheckpointManager

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("problem_solver", "code_executor", "verifier")


def _agent_state(seed: int) -> dict:
  """Trainer-shaped agent state: NNX params (bf16 and fp32 leaves), AdamW state, a step."""
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(seed), param_dtype=jnp.bfloat16)
  params = nnx.state(model, nnx.Param)
  opt_state = optax.adamw(1e-3).init(params)
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed, jnp.int32)}


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mappa_jax.checkpoint", "digest", *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO)


def _parse(stdout: str) -> dict:
  return dict(line.split(" ") for line in stdout.strip().splitlines())


def test_digest_cli_latest_and_given_step(tmp_path):
  workdir = tmp_path / "run"
  team1 = {a: _agent_state(i) for i, a in enumerate(AGENTS)}
  team2 = {a: _agent_state(10 + i) for i, a in enumerate(AGENTS)}
  team2["verifier"] = team1["verifier"]  # an agent that did not change between the steps
  with CheckpointManager(str(workdir / "checkpoints"), keep_last=3, async_save=False) as m:
    m.save(1, team1, force=True)
    m.save(2, team2, force=True)

  latest = _cli(str(workdir))
  assert latest.returncode == 0, latest.stderr
  got = _parse(latest.stdout)
  assert list(got) == sorted(AGENTS)  # one line per agent, stable order
  # The CLI's digest of the restored checkpoint == the digest of the live params saved.
  assert got == {a: ckpt.params_digest(team2[a]["params"]) for a in AGENTS}
  assert all(len(d) == 64 for d in got.values())

  first = _parse(_cli(str(workdir), "--step=1").stdout)
  assert first == {a: ckpt.params_digest(team1[a]["params"]) for a in AGENTS}
  assert first["verifier"] == got["verifier"]
  assert first["problem_solver"] != got["problem_solver"]

  missing = _cli(str(workdir), "--step=7")
  assert missing.returncode != 0 and "steps: [1, 2]" in missing.stderr
  none = _cli(str(tmp_path / "nowhere"))
  assert none.returncode != 0 and "does not exist" in none.stderr
  assert not (tmp_path / "nowhere").exists()  # reading never creates a checkpoint directory


def test_params_digest_sees_one_flipped_bit_dtype_and_name():
  tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(3, np.int32)}
  base = ckpt.params_digest(tree)
  assert base == ckpt.params_digest({"b": tree["b"], "a": dict(tree["a"])})  # order-free
  flipped = tree["a"]["w"].copy()
  flipped.view(np.uint32)[0, 0] ^= 1  # one ulp
  assert ckpt.params_digest({"a": {"w": flipped}, "b": tree["b"]}) != base
  assert ckpt.params_digest({"a": {"w": tree["a"]["w"].astype(np.float64)}, "b": tree["b"]}) \
      != base
  assert ckpt.params_digest({"a": {"v": tree["a"]["w"]}, "b": tree["b"]}) != base
  assert ckpt.params_digest({"a": {"w": tree["a"]["w"].reshape(3, 2)}, "b": tree["b"]}) != base
  assert ckpt.params_digest(jax.tree.map(jnp.asarray, tree)) == base
