"""Orbax checkpoints of several agents: exact round trip, resume, retention, sharding."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mappa_jax.checkpoint import CheckpointManager


def _agent_state(seed: int, dtype=jnp.bfloat16) -> dict:
  """An NNX model's params and an AdamW state after one real update (non-trivial moments)."""
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(seed), param_dtype=dtype)
  params = nnx.state(model, nnx.Param)
  tx = optax.adamw(1e-3, b1=0.9, b2=0.95)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (seed + 1)), params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return {"params": optax.apply_updates(params, updates), "opt_state": opt_state}


def _team(offset: int = 0) -> dict:
  return {name: _agent_state(i + offset) for i, name in
          enumerate(("problem_solver", "code_executor", "verifier"))}


def _assert_exact(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_save_restore_is_exact_for_every_agent(tmp_path):
  team = _team()
  rng = jax.random.fold_in(jax.random.key(3), 17)
  cursor = {"epoch": 2, "position": 13, "order_seed": 44}
  with CheckpointManager(str(tmp_path / "ckpt"), keep_last=2) as manager:
    assert manager.restore() is None  # nothing saved yet
    assert manager.save(5, team, rng=rng, data_state=cursor, metrics={"eval/reward": 0.5})
    manager.wait()
    restored = manager.restore(agents_target=_team(offset=10))  # different values, same shapes
  assert restored.step == 5 and restored.data_state == cursor
  assert restored.metrics == {"eval/reward": 0.5}
  _assert_exact(restored.agents, team)
  assert jax.random.key_impl(restored.rng) == jax.random.key_impl(rng)
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(rng))
  # The restored key continues the same random stream.
  np.testing.assert_array_equal(jax.random.uniform(restored.rng, (3,)),
                                jax.random.uniform(rng, (3,)))


def test_raw_uint32_key_and_no_target(tmp_path):
  team = {"a": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
                "count": jnp.asarray(7, jnp.int32)}}
  raw = jax.random.PRNGKey(9)
  with CheckpointManager(str(tmp_path), async_save=False) as manager:
    manager.save(1, team, rng=raw)
    restored = manager.restore(1)
  np.testing.assert_array_equal(restored.rng, raw)
  np.testing.assert_array_equal(restored.agents["a"]["w"], team["a"]["w"])
  assert int(restored.agents["a"]["count"]) == 7


def test_resume_picks_latest_in_a_new_manager(tmp_path):
  directory = str(tmp_path / "ckpt")
  with CheckpointManager(directory, keep_last=3) as manager:
    for step in (1, 2, 3):
      manager.save(step, _team(offset=step), data_state={"position": step})
  # A crashed save leaves only a temporary directory; it must never be resumed from.
  os.makedirs(os.path.join(directory, "4.orbax-checkpoint-tmp-1234567"))
  with CheckpointManager(directory, keep_last=3) as manager:
    assert manager.latest_step() == 3
    restored = manager.restore(agents_target=_team())
  assert restored.step == 3 and restored.data_state == {"position": 3}
  _assert_exact(restored.agents, _team(offset=3))


@pytest.mark.parametrize("mode,scores,best", [
    ("max", [0.1, 0.9, 0.2, 0.3, 0.4, 0.35], 2),
    ("min", [0.5, 0.6, 0.05, 0.7, 0.8, 0.9], 3),
])
def test_keeps_last_n_plus_best_by_metric(tmp_path, mode, scores, best):
  team = {"a": {"w": jnp.zeros((2,), jnp.float32)}}
  with CheckpointManager(str(tmp_path), keep_last=2, keep_best_metric="eval/acc",
                         best_mode=mode) as manager:
    for step, score in enumerate(scores, start=1):
      metrics = {"eval/acc": score} if step != 5 else {"train/loss": 1.0}  # no eval at 5
      manager.save(step, {"a": {"w": jnp.full((2,), float(step))}}, metrics=metrics)
    manager.wait()
    assert manager.all_steps() == sorted({best, 5, 6})
    assert manager.best_step() == best
    restored = manager.restore(manager.best_step(), agents_target=team)
  np.testing.assert_array_equal(restored.agents["a"]["w"], np.full((2,), float(best)))


def test_every_steps_gates_saves_unless_forced(tmp_path):
  team = {"a": {"w": jnp.ones((1,))}}
  with CheckpointManager(str(tmp_path), every_steps=4) as manager:
    assert [manager.save(s, team) for s in range(1, 9)] == [False, False, False, True] * 2
    assert manager.save(9, team, force=True)
    manager.wait()
    assert manager.all_steps() == [4, 8, 9]


def test_restore_target_with_other_agents_is_an_error(tmp_path):
  with CheckpointManager(str(tmp_path)) as manager:
    manager.save(1, {"a": {"w": jnp.ones((1,))}})
    with pytest.raises(ValueError, match="holds agents"):
      manager.restore(agents_target={"b": {"w": jnp.ones((1,))}})


def test_restore_onto_a_sharded_target(tmp_path):
  """Saved from one device, restored straight into an 8-device fsdp sharding."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  w = jnp.arange(64, dtype=jnp.float32).reshape(16, 4)
  with CheckpointManager(str(tmp_path)) as manager:
    manager.save(1, {"a": {"w": w}})
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None))
    target = {"a": {"w": jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=sharding)}}
    restored = manager.restore(agents_target=target)
  got = restored.agents["a"]["w"]
  assert got.sharding == sharding and len(got.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(got), np.asarray(w))
