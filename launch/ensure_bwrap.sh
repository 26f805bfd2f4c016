#!/usr/bin/env bash
# `make run` setup: install bubblewrap (the code sandbox's isolation) when it is missing and
# this user can (root, or passwordless sudo), as .ci/run does. When it cannot, print how and
# continue: the trainer then refuses to start (it never runs model-written code unisolated
# unless told to with --config.sandbox.backend=process --config.sandbox.allow_unisolated=true).
set -uo pipefail

if command -v bwrap >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    sudo="none"
  fi
fi
if [[ "$sudo" != none ]] && command -v apt-get >/dev/null 2>&1; then
  echo "bubblewrap (bwrap) is missing: installing it for the code sandbox (apt-get install bubblewrap)"
  if $sudo apt-get update -q && \
     DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends bubblewrap \
     && command -v bwrap >/dev/null 2>&1; then
    echo "bubblewrap installed: $(bwrap --version)"
    exit 0
  fi
  echo "installing bubblewrap failed (see above)."
fi
cat <<'MSG'
bubblewrap (bwrap) is missing and could not be installed here (needs root or passwordless sudo
and apt-get). Install it with:   sudo apt-get install bubblewrap
Without it the trainer refuses to start. To run model-written code WITHOUT isolation anyway:
  make run ARGS="--config.sandbox.backend=process --config.sandbox.allow_unisolated=true"
MSG
exit 0
