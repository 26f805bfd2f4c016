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
# directory is only ever meant as mappa_jax.kernels; imported as plain `kernels`, it hands the
# import over to whichever `kernels` the rest of sys.path holds, or says there is none.
if __name__ == "kernels":
  import importlib.machinery as _machinery
  import importlib.util as _util
  import os as _os
  import sys as _sys

  # realpath: a symlinked checkout on sys.path must not find this file again (endless recursion).
  _this = _os.path.realpath(__file__)
  _repo_root = _os.path.dirname(_os.path.dirname(_this))
  _elsewhere = [p for p in _sys.path
                if isinstance(p, str) and _os.path.realpath(p or _os.curdir) != _repo_root]
  _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
  if (_spec is None or _spec.loader is None
      or (_spec.origin and _os.path.realpath(_spec.origin) == _this)):
    raise ModuleNotFoundError(
        "No module named 'kernels' outside the mappa_jax repository: the repository's kernels/ "
        "directory is importable only as mappa_jax.kernels (pip install -e . installs it so).",
        name="kernels")
  _module = _util.module_from_spec(_spec)
  # importlib returns whatever sys.modules holds once this file has run: the other package.
  _sys.modules["kernels"] = _module
  _spec.loader.exec_module(_module)
