import os

import pytest

from mappa_jax.tools.sandbox import Sandbox, SandboxLimits
from mappa_jax.tools.workspace import Workspace, changed_files


def test_snapshot_diff_and_listing(tmp_path):
  ws = Workspace(tmp_path / "w")
  ws.add_files({"a.csv": b"1,2\n", "sub/b.txt": b"x"})
  before = ws.snapshot()
  (ws.path / "c.pkl").write_bytes(b"abc")
  assert changed_files(before, ws.snapshot()) == ("c.pkl",)
  assert ws.list_files() == [("a.csv", 4), ("c.pkl", 3), ("sub/b.txt", 1)]
  with pytest.raises(ValueError, match="inside the workspace"):
    ws.add_file("../escape.txt", b"x")


def test_planted_symlink_is_never_followed_by_the_host(tmp_path):
  ws = Workspace(tmp_path / "w")
  secret = tmp_path / "host_secret.txt"
  secret.write_text("top secret")
  sb = Sandbox("bwrap", SandboxLimits(timeout_s=10))
  r = sb.run_sync(f"import os\nos.symlink({str(secret)!r}, 'submission.csv')\nprint('planted')",
                  ws)
  assert "planted" in r.stdout and os.path.islink(ws.path / "submission.csv")
  assert not ws.exists("submission.csv") and "submission.csv" not in dict(ws.list_files())
  with pytest.raises(OSError):
    ws.read_bytes("submission.csv")
  assert secret.read_text() == "top secret"
  sb.close()


def test_owned_workspace_is_removed(tmp_path):
  ws = Workspace.create(tmp_path, prefix="t_")
  ws.add_file("x", b"1")
  assert ws.read_bytes("x") == b"1"
  ws.cleanup()
  assert not ws.path.exists()
