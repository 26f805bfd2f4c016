"""Pallas kernels with their jnp references (installed as mappa_jax.kernels).

- logprobs_kernel: the forward pass of the per-token logprobs as an online softmax over vocab
  tiles (mappa_jax.rl.logprobs.token_logprobs(impl='pallas') uses it).
- rewards_kernel: one pass over [B, T] for KL, KL-penalised token rewards, return-to-go and the
  partial sums of the global advantage whitening (mappa_jax.rl.objectives.kl_rewards_returns(
  impl='pallas')).
- reference: the naive jnp versions, the test oracles.
The default (impl='xla') implementations and the impl switches are in mappa_jax/rl/.
"""

# The repository root is on sys.path whenever a script runs from it (`python -m pytest`, the
# experiments/ configs, benchmarks/), and there this directory would shadow Hugging Face's
# `kernels` distribution, which transformers>=5.25 requires and imports at start-up (every
# HF-parity test then failed with "cannot import name 'CUDAProperties' from 'kernels'"). This
# directory is meant as mappa_jax.kernels; imported as plain `kernels`, it hands the import over
# to the first `kernels` in import order that is not a copy of this file (another checkout on
# sys.path must not hand back to this one: endless recursion). With none, it stays importable
# under that name as before: transformers' availability check imports a `kernels` that has no
# package metadata and expects that to work.
import importlib.machinery
import importlib.util
import sys

# Every copy of this file carries this line, so the search below recognises a copy by its text.
_MARKER = "mappa_jax kernels/: importable as mappa_jax.kernels"


def _other_kernels_spec():
  """The spec of the first `kernels` in import order that is no copy of this file, or None."""

  def is_a_copy_of_this(spec) -> bool:
    try:
      with open(spec.origin, encoding="utf-8", errors="replace") as f:
        return _MARKER in f.read()
    except (OSError, TypeError):
      return False

  for finder in sys.meta_path:
    if finder is importlib.machinery.PathFinder:
      # One sys.path entry at a time, so a copy of this file can be stepped over.
      specs = (importlib.machinery.PathFinder.find_spec("kernels", [entry])
               for entry in sys.path if isinstance(entry, str))
    elif hasattr(finder, "find_spec"):
      specs = (finder.find_spec("kernels", None),)
    else:
      continue
    for spec in specs:
      if spec is not None and spec.loader is not None and not is_a_copy_of_this(spec):
        return spec
  return None


if __name__ == "kernels":
  _spec = _other_kernels_spec()
  if _spec is not None:
    _module = importlib.util.module_from_spec(_spec)
    # importlib returns whatever sys.modules holds once this file has run: the other package.
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
