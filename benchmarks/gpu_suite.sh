#!/usr/bin/env bash
# The GPU numbers of issue 15 in one run (~8 minutes on a bare H200 image with JAX 0.11):
#   1. attention implementations at Qwen3-1.7B shapes (bf16): error against einsum, fwd and
#      fwd+bwd time, scratch memory; decode steps over a 2048-slot cache (checks the GPU
#      defaults of ModelConfig.attention_impl='auto': cuDNN for training, 'grouped' for decode)
#   2. update-step MFU at Qwen3-1.7B (bf16, remat, batch 8 x 2048): the real jitted update step
#      (old + reference log-probs, advantages, PPO, AdamW), benchmarks/update_bench.py
#   3. fwd+bwd MFU and decode tokens/s at batch 64 against the HBM roofline (model loop and the
#      Sampler), benchmarks/model_bench.py
#   4. token log-prob memory and time at vocab 151,936: naive vs chunked XLA vs Pallas (fwd and
#      fwd+bwd), and the rewards kernel Pallas vs XLA, benchmarks/kernel_bench.py
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run    # tiny shapes, any backend (CPU: ~2 minutes)
#   bash benchmarks/gpu_suite.sh --plan       # print the commands only
#
# Every section runs under its own timeout and a failing one does not stop the others. Output
# goes to stdout and to $OUT/gpu_suite.log when OUT is set (the device tool's result folder).
# Python: $PYTHON, else .venv/bin/python, else python3. The GPU image lacks ml-collections (and
# has no network): put its wheel in .whl/ (see /work/.library/device/README.md; ml-collections
# is pure Python, its dependencies absl-py and PyYAML are in the image) and it is installed into
# a private folder first. mappa_jax itself is used from this checkout without pip: a copy of
# mappa_jax/ with kernels/ as mappa_jax/kernels goes on PYTHONPATH when the package is not
# installed.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --plan) MODE=plan ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_suite.sh [--dry-run|--plan]" >&2; exit 2 ;;
esac

if [[ -n "${PYTHON:-}" ]]; then :
elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
else PYTHON=python3
fi
export PYTHONUNBUFFERED=1
LOG=/dev/null
if [[ -n "${OUT:-}" ]]; then LOG="$OUT/gpu_suite.log"; : >"$LOG"; fi

# name | timeout (s) | GPU arguments | dry-run arguments
SECTIONS=(
  "attention|150|benchmarks/attention_bench.py --batch=8 --seq=2048 --heads=16 --kv_heads=8 --head_dim=128 --dtype=bfloat16 --decode_batch=64 --cache=2048 --decode_steps=64 --iters=5|benchmarks/attention_bench.py --batch=2 --seq=128 --heads=4 --kv_heads=2 --head_dim=16 --decode_batch=4 --cache=64 --decode_steps=8 --iters=1"
  "update step|200|benchmarks/update_bench.py --preset=qwen3-1.7b --rows=8 --seq=2048 --samples_per_step=8 --micro=8 --dtype=bfloat16 --remat --iters=3|benchmarks/update_bench.py --preset=tiny-qwen3 --rows=4 --seq=64 --samples_per_step=4 --micro=4 --remat --iters=1"
  "model fwd+bwd and decode|200|benchmarks/model_bench.py --preset=qwen3-1.7b --batch=8 --seq_len=2048 --remat --steps=3 --decode_batch=64 --prompt_len=512 --decode_tokens=256|benchmarks/model_bench.py --preset=tiny-qwen3 --batch=2 --seq_len=64 --steps=1 --decode_batch=4 --prompt_len=16 --decode_tokens=16"
  "token logprobs|120|benchmarks/kernel_bench.py --skip_rewards --tokens=16384 --hidden=2048 --vocab=151936 --dtype=bfloat16 --chunk=1024 --block_v=2048 --iters=5|benchmarks/kernel_bench.py --skip_rewards --tokens=512 --hidden=64 --vocab=1024 --dtype=float32 --chunk=128 --block_v=256 --iters=1"
  "rewards kernel|60|benchmarks/kernel_bench.py --skip_logprobs --tokens=262144 --batch=64 --iters=5|benchmarks/kernel_bench.py --skip_logprobs --tokens=512 --batch=8 --iters=1"
)

say() { echo "$@" | tee -a "$LOG"; }

if [[ "$MODE" == plan ]]; then
  for s in "${SECTIONS[@]}"; do
    IFS='|' read -r name limit gpu dry <<<"$s"
    echo "[$name] timeout ${limit}s: $PYTHON $gpu"
    echo "[$name] --dry-run:      $PYTHON $dry"
  done
  exit 0
fi

# Wheels carried along (the GPU image has no network).
SITE="${TMPDIR:-/tmp}/mappa_gpu_suite_site"
mkdir -p "$SITE"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || say "WARNING: could not install the wheels in .whl/"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import mappa_jax.kernels" >/dev/null 2>&1; then
  rm -rf "$SITE/mappa_jax"
  cp -r mappa_jax "$SITE/mappa_jax" && rm -rf "$SITE/mappa_jax/kernels" \
    && cp -r kernels "$SITE/mappa_jax/kernels"
fi
if ! "$PYTHON" -c "import mappa_jax.kernels, mappa_jax.rl.update" 2>>"$LOG"; then
  say "mappa_jax does not import with $PYTHON (missing ml-collections? see the header)"
  exit 1
fi

say "== gpu_suite ($MODE) $(date -u +%FT%TZ) =="
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
  --format=csv 2>&1 | tee -a "$LOG"
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$LOG"

failed=0
for s in "${SECTIONS[@]}"; do
  IFS='|' read -r name limit gpu dry <<<"$s"
  cmd=$gpu
  [[ "$MODE" == dry ]] && cmd=$dry
  say ""
  say "== $name: $cmd"
  start=$SECONDS
  # shellcheck disable=SC2086  # the arguments are meant to split
  timeout "$limit" "$PYTHON" $cmd 2>&1 | grep -v "^\s*$" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "== $name: exit $rc in $((SECONDS - start)) s"
  [[ $rc -ne 0 ]] && failed=$((failed + 1))
done
say ""
say "== gpu_suite done: $failed section(s) failed"
exit $((failed > 0))
