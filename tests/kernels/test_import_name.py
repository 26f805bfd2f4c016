"""kernels/ is mappa_jax.kernels; as a plain `kernels` it never shadows another package.

transformers>=5.25 requires Hugging Face's `kernels` and imports it at start-up; the repository
root is on sys.path under pytest and the experiments/ configs, so a shadowing kernels/ broke every
transformers import there.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, *python_flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *python_flags, "-c", code], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_plain_kernels_resolves_to_the_package_behind_the_repository(tmp_path):
  other = tmp_path / "kernels"
  other.mkdir()
  (other / "__init__.py").write_text("WHO = 'the other kernels'\n")
  code = (f"import sys; sys.path[:0] = [{REPO!r}, {str(tmp_path)!r}]\n"
          "import kernels\n"
          "print(kernels.WHO, kernels.__file__)\n")
  out = _run(code)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("the other kernels " + str(other)), out.stdout


def test_a_symlinked_checkout_does_not_find_itself_again(tmp_path):
  link = tmp_path / "checkout"
  link.symlink_to(REPO)
  out = _run(f"import sys; sys.path[:0] = [{str(link)!r}, {REPO!r}]; import kernels", "-S")
  assert "ModuleNotFoundError" in out.stderr and "mappa_jax.kernels" in out.stderr, out.stderr
  assert "RecursionError" not in out.stderr


def test_plain_kernels_with_no_other_package_names_mappa_jax_kernels():
  # -S: no site-packages, so no Hugging Face `kernels` whatever is installed.
  out = _run(f"import sys; sys.path.insert(0, {REPO!r}); import kernels", "-S")
  assert out.returncode != 0
  assert "ModuleNotFoundError" in out.stderr and "mappa_jax.kernels" in out.stderr, out.stderr


def test_mappa_jax_kernels_is_this_directory():
  import mappa_jax.kernels
  from mappa_jax.kernels import rewards_kernel
  assert os.path.dirname(mappa_jax.kernels.__file__) == os.path.join(REPO, "kernels")
  assert rewards_kernel.__name__ == "mappa_jax.kernels.rewards_kernel"


def test_transformers_imports_with_the_repository_first_on_sys_path():
  out = _run(f"import sys; sys.path.insert(0, {REPO!r})\n"
             "import transformers\n"
             "transformers.Qwen3ForCausalLM\n"
             "print('ok')\n")
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
