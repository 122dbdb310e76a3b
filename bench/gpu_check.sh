#!/usr/bin/env bash
# GPU check of the trainer: build difflogic's CUDA extension from its PyPI sdist, then time
# both layer backends (difflogic's kernel and ours) on the GPU, and our CPU kernel beside.
#
# Two steps, because the GPU machine reaches no package registry:
#
#   here (a machine with pip access), once, from the repository root:
#       bash bench/gpu_check.sh fetch
#     puts into .whl/ (git-ignored): difflogic's sdist, and wheels of the pure-Python
#     packages the GPU image lacks (entmax, structlog). pip runs the sdist's setup.py even to
#     download it, and that setup.py imports torch and needs a CUDA_HOME: a dummy one does.
#
#   there (the GPU machine), from the repository root, carrying .whl:
#       bash bench/gpu_check.sh run
#     installs the wheels into /tmp/site, builds difflogic_cuda for the local GPU, then
#     1. trains the seed's example hyperparameters on digits for 2 epochs with each backend
#        (EPOCH lines carry step_ms),
#     2. times one Adam step of the seed's network size and of the 32000 x 4 benchmark size
#        with each CUDA backend and, for CUDA vs CPU, our CPU kernel.
#     Everything is also written to $OUT/gpu_check.log when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."

fetch() {
  local py=${PYTHON:-.venv/bin/python}
  local fake_cuda
  fake_cuda=$(mktemp -d)
  mkdir -p .whl
  CUDA_HOME=$fake_cuda "$py" -m pip download --no-deps --no-build-isolation \
    --no-binary :all: -d .whl difflogic==0.1.0
  "$py" -m pip download --no-deps --only-binary=:all: -d .whl entmax==1.3 structlog
  rm -rf "$fake_cuda"
  ls -l .whl
}

run() {
  local log=${OUT:-/tmp}/gpu_check.log
  exec > >(tee "$log") 2>&1
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .whl/entmax-*.whl .whl/structlog-*.whl
  export PYTHONPATH=/tmp/site:$PWD

  # Build difflogic_cuda from the sdist, patched as the Dockerfile patches it.
  local src=/tmp/difflogic-src
  rm -rf "$src" && mkdir -p "$src"
  tar xzf .whl/difflogic-*.tar.gz -C "$src" --strip-components=1
  python3 deploy/patch_difflogic.py "$src"
  local t0=$SECONDS
  (cd "$src" && CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=$(nproc) \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .) \
    || echo "difflogic build FAILED: continuing with our backend only"
  echo "difflogic build took $((SECONDS - t0)) s"
  python3 -c "import torch, difflogic_cuda; print('difflogic_cuda imports; torch', torch.__version__)" \
    || echo "difflogic_cuda does not import"

  local seed=(--gate-optimizer sparsemax_noise --gates 3332 --network-layers 4 --grouping 10
              --group-sum-tau 100 --residual-layers 4 --noise-temp 0.2 --epochs 2
              --dataset digits --device cuda)
  for backend in difflogic torch; do
    echo "== digits, seed example, 2 epochs, backend $backend"
    python3 -m trainer "${seed[@]}" --backend "$backend" --output-dir "/tmp/run-$backend" \
      || echo "backend $backend FAILED"
  done

  echo "== one Adam step, seed network size (256 digits inputs, 3340 x 4), batch 128"
  python3 bench/trainer_step.py --device cuda --backends difflogic,torch --no-reference \
    --in-dim 256 --gates 3340 --rounds 20 --warmup 5
  python3 bench/trainer_step.py --device cpu --backends cpp --no-reference \
    --in-dim 256 --gates 3340 --rounds 20 --warmup 3
  echo "== one Adam step, 784 inputs, 32000 x 4, batch 128"
  python3 bench/trainer_step.py --device cuda --backends difflogic,torch --no-reference \
    --rounds 20 --warmup 5
  python3 bench/trainer_step.py --device cpu --backends cpp,torch --rounds 5 --warmup 2
}

case "${1:-}" in
  fetch) fetch ;;
  run) run ;;
  *) echo "usage: bash bench/gpu_check.sh fetch|run" >&2; exit 2 ;;
esac
