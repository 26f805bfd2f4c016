"""kernels/ is mappa_jax.kernels; as a plain `kernels` it never shadows another package.

transformers>=5.25 requires Hugging Face's `kernels` and imports it at start-up; the repository
root is on sys.path under pytest and the experiments/ configs, so a shadowing kernels/ broke every
transformers import there. Each case runs in a fresh interpreter with the sys.path it names.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = os.path.join(REPO, "kernels", "__init__.py")


def _run(path: list[str], code: str, *python_flags: str) -> subprocess.CompletedProcess:
  """`code` after `sys.path[:0] = path`; -S in python_flags leaves site-packages out."""
  return subprocess.run([sys.executable, *python_flags, "-c",
                         f"import sys; sys.path[:0] = {path!r}\n{code}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _fake_kernels(root) -> str:
  (root / "kernels").mkdir(parents=True)
  (root / "kernels" / "__init__.py").write_text("WHO = 'the other kernels'\n")
  return str(root)


def test_plain_kernels_resolves_to_the_package_behind_the_repository(tmp_path):
  out = _run([REPO, _fake_kernels(tmp_path)], "import kernels; print(kernels.WHO)", "-S")
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "the other kernels", out.stdout


def test_two_checkouts_step_over_each_other(tmp_path):
  # A second checkout (a worktree, a copy) must not hand back to the first: endless recursion.
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(REPO, "kernels"), copy / "kernels")
  link = tmp_path / "link"
  link.symlink_to(REPO)
  checkouts = [REPO, str(copy), str(link)]
  out = _run([*checkouts, _fake_kernels(tmp_path / "other")], "import kernels; print(kernels.WHO)",
             "-S")
  assert out.returncode == 0 and out.stdout.strip() == "the other kernels", out.stderr[-2000:]
  # With no other package, the first checkout's copy is imported (no RecursionError).
  out = _run(checkouts, "import kernels; print(kernels.__file__)", "-S")
  assert out.returncode == 0 and out.stdout.strip() == OURS, out.stderr[-2000:]


def test_mappa_jax_kernels_is_this_directory():
  import mappa_jax.kernels
  from mappa_jax.kernels import rewards_kernel
  assert mappa_jax.kernels.__file__ == OURS
  assert rewards_kernel.__name__ == "mappa_jax.kernels.rewards_kernel"


def test_transformers_imports_with_the_repository_first_on_sys_path():
  out = _run([REPO], "import transformers; transformers.Qwen3ForCausalLM; print('ok')")
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_transformers_imports_without_hugging_face_kernels_installed(tmp_path):
  # transformers finds the repository's kernels/, sees no package metadata and imports it to read
  # a version: that import must work. site-packages without `kernels` is a farm of symlinks.
  site = sysconfig.get_paths()["purelib"]
  farm = tmp_path / "site"
  farm.mkdir()
  for name in os.listdir(site):
    if not name.startswith("kernels"):
      (farm / name).symlink_to(os.path.join(site, name))
  out = _run([REPO, str(farm)], "import transformers; transformers.Qwen3ForCausalLM; print('ok')",
             "-S")
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
