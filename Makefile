# Quick start (README): `make run` trains the embedded CPU default, `make test` runs the tests.
# Both create the virtualenv on first use (and re-install when setup.cfg/pyproject.toml change).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= experiments/mathchat.py
# The workdir follows the config, so `make run CONFIG=experiments/dsbench.py` or
# `CONFIG=experiments/mathchat.py:local_outcome` never resumes another run's workdir:
# experiments/NAME.py -> workdir/NAME-local (the embedded default), NAME.py:PRESET -> workdir/NAME-PRESET.
CONFIG_NAME = $(subst .py,,$(subst :,-,$(notdir $(CONFIG))))$(if $(findstring :,$(CONFIG)),,-local)
WORKDIR ?= workdir/$(CONFIG_NAME)
ARGS ?=
# --durations: CI's log shows the slowest tests, so the 30-min budget can be kept.
PYTEST_ARGS ?= -q --durations=25
TESTS ?= tests

STAMP := $(VENV)/.mappa_jax-installed

.PHONY: run test venv clean-venv

# ensure_bwrap.sh installs bubblewrap (the code sandbox) when missing and possible, else says how.
run: $(STAMP)
	@bash launch/ensure_bwrap.sh
	$(VENV)/bin/python launch/run.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

# pytest exits 5 when it collects no tests: make treats that as the failure it is.
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(TESTS) $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "mappa_jax needs Python >= 3.11 (set PYTHON=python3.11 or newer)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || \
	  { echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(VENV)/bin/python -m pip install -e '.[test,dsbench]'
	@touch $@

clean-venv:
	rm -rf $(VENV)
