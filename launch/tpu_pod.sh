#!/bin/bash
# Multi-host training on a Cloud TPU VM pod slice: launch/run.py on every worker at once.
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh \
#     --config=experiments/mathchat.py:paper --workdir=gs://bucket/runs/mc1
#
# Runs `gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --command=...` from your
# workstation. Every worker must already hold the repository at REPO_DIR (with its venv) and
# see the workdir (a GCS bucket or a shared filesystem). No coordinator is passed: on a pod JAX
# reads TPU_WORKER_HOSTNAMES itself, and mappa_jax/distributed.py calls
# jax.distributed.initialize() with no arguments when there are several workers.
#
# Environment:
#   TPU_NAME, ZONE  the TPU VM (required); PROJECT  gcloud project (optional).
#   REPO_DIR        repository path on the workers (default: ~/mappa_jax).
#   PYTHON          interpreter on the workers (default: .venv/bin/python).
#   SETUP           optional shell command run first on every worker (e.g. "git pull").
#   DRY_RUN=1       print the gcloud command instead of running it (used by the tests).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (the TPU VM zone)}"
REPO_DIR="${REPO_DIR:-~/mappa_jax}"
PYTHON="${PYTHON:-.venv/bin/python}"

# The remote shell command: arguments quoted once here, so the worker's shell sees them intact.
# REPO_DIR is left unquoted on purpose so a leading ~ expands on the worker.
REMOTE="cd ${REPO_DIR} && "
if [[ -n "${SETUP:-}" ]]; then
  REMOTE+="${SETUP} && "
fi
REMOTE+="$(printf '%q ' "${PYTHON}" launch/run.py "$@")"

CMD=(gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "--zone=${ZONE}" --worker=all
     "--command=${REMOTE}")
if [[ -n "${PROJECT:-}" ]]; then
  CMD+=("--project=${PROJECT}")
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
