"""Progress: a bar on an interactive terminal, one log line otherwise (CI, pipes)."""
import io
import logging

from mappa_jax import progress


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_bar_on_a_terminal(monkeypatch, caplog):
  monkeypatch.delenv("CI", raising=False)
  stream = _Terminal()
  with caplog.at_level(logging.INFO, logger="mappa_jax"):
    with progress.phase("rollout", total=3, unit="traj", stream=stream) as bar:
      for _ in range(3):
        bar.update(reward=0.5)
  assert "rollout" in stream.getvalue()  # tqdm drew on the terminal
  assert bar.count == 3
  assert any("rollout: 3/3 traj" in r.getMessage() for r in caplog.records)


def test_quiet_under_ci_even_on_a_terminal(monkeypatch, caplog):
  monkeypatch.setenv("CI", "true")
  stream = _Terminal()
  with caplog.at_level(logging.INFO, logger="mappa_jax"):
    with progress.phase("update", total=2, stream=stream) as bar:
      bar.update(2)
  assert stream.getvalue() == ""
  assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["update: 2/2 it"]


def test_quiet_without_a_tty(monkeypatch, caplog):
  monkeypatch.delenv("CI", raising=False)
  stream = io.StringIO()  # a pipe or a file
  assert not progress.interactive(stream)
  with caplog.at_level(logging.INFO, logger="mappa_jax"):
    with progress.phase("eval", stream=stream) as bar:
      bar.update()
  assert stream.getvalue() == ""
  assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("eval: 1 it")


def test_library_info_logs_are_hidden_but_warnings_show():
  logger = logging.getLogger("test_progress_quiet")
  logger.propagate = False
  stream = io.StringIO()
  logger.addHandler(logging.StreamHandler(stream))
  logger.setLevel(logging.INFO)
  progress.quiet_library_logs(logger=logger)

  def emit(level, path, msg):
    logger.handle(logging.LogRecord(logger.name, level, path, 1, msg, None, None))

  emit(logging.INFO, "/site-packages/orbax/checkpoint/checkpoint_manager.py", "orbax info")
  emit(logging.WARNING, "/site-packages/orbax/checkpoint/checkpoint_manager.py", "orbax warn")
  emit(logging.INFO, "/work/main/mappa_jax/train.py", "our info")
  # JAX's "Unable to initialize backend 'tpu'" on every CPU machine is INFO from jax/_src.
  emit(logging.INFO, "/site-packages/jax/_src/xla_bridge.py", "Unable to initialize backend")
  assert stream.getvalue().splitlines() == ["orbax warn", "our info"]


def test_log_end_false_keeps_the_bar_but_not_the_closing_line(monkeypatch, caplog):
  monkeypatch.delenv("CI", raising=False)
  stream = _Terminal()
  with caplog.at_level(logging.INFO, logger="mappa_jax"):
    with progress.phase("rollout", total=2, stream=stream, log_end=False) as bar:
      bar.update(2)
  assert "rollout" in stream.getvalue() and not caplog.records
