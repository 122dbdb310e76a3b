#!/usr/bin/env bash
# The device check of the GPU path: one run that answers every open GPU question, in at most
# 6 minutes, every stage under `timeout`, each stage's failure recorded and not fatal to the
# rest. Results: $OUT/gpu_check.json (every stage's status, seconds, result and output
# tail) and $OUT/gpu_check.log (everything printed).
#
#   here (a machine with pip access), once, from the repository root:
#       bash bench/gpu_check.sh fetch
#     puts into .whl/ (git-ignored): difflogic's sdist, and wheels for the GPU image's
#     interpreter (CPython 3.12, manylinux x86-64) of what the trainer imports and that
#     image lacks (its package list: the device README's KINDS.md): pydantic, pydantic-core,
#     annotated-types, typing-inspection, typing-extensions, structlog, entmax, at the
#     versions of our own environment. numpy, scikit-learn and torch are in the image.
#
#   there (the GPU machine, which reaches no registry), from the repository root, carrying .whl:
#       bash bench/gpu_check.sh run
#     (this workplace's device tool: command "bash bench/gpu_check.sh run", carry [".whl"],
#     timeout_s 420: the stages keep within 345 s, the wheels' install and the merge beside)
#
#   here, without a GPU: bash bench/gpu_check.sh dry-run
#     runs the same stages on the CPU at toy sizes, with tests/trainer's CPU stand-in for
#     difflogic_cuda and without the build: it checks this script, not the GPU.
#
# Stages of `run`:
#   env       GPU, driver, torch and its CUDA, nvcc, the bare CUDA context's size
#   wheels    the wheels into /tmp/site, then `import trainer.cli` (and the loop), first
#   build     difflogic_cuda from the sdist, patched by deploy/patch_difflogic.py (as the
#             Dockerfile does), CUDA_HOME from `command -v nvcc`, the arch from
#             torch.cuda.get_device_capability(); in the background, while:
#   train     the seed's example on digits, torch path: 3 epochs with a checkpoint after each,
#             SIGKILLed after the checkpoint of epoch 2, resumed from it to epoch 3, in a
#             worker slot's environment; nvidia-smi's peak for the process
#   parity    difflogic against torch on the GPU, nine parametrizations x float32/64, values
#             and gradients; a bitwise repeat of two steps per backend; a captured step
#             (trainer/cuda_step.py) against the eager one
#   steps     step times at 256->3340x4 and 784->32000x4, batch 128, per backend: today's
#             eager foreach Adam, fused Adam, fused Adam in a CUDA graph; max_memory_allocated
#   memory    trainer.memory's estimate of the seed's example against the measured peak
set -uo pipefail
cd "$(dirname "$0")/.."

# What the trainer imports that the GPU image lacks, as pip names them.
WHEELS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions structlog entmax)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
BUDGET_S=${GPU_CHECK_BUDGET_S:-345}

fetch() {
  set -e
  local py=${PYTHON:-.venv/bin/python} fake_cuda pins=() name version
  mkdir -p .whl
  # pip runs the sdist's setup.py even to download it; it imports torch and wants a
  # CUDA_HOME: an empty folder does.
  fake_cuda=$(mktemp -d)
  CUDA_HOME=$fake_cuda "$py" -m pip download --no-deps --no-build-isolation \
    --no-binary :all: -d .whl difflogic==0.1.0
  rm -rf "$fake_cuda"
  for name in "${WHEELS[@]}"; do
    version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
  done
  local platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_args[@]}" -d .whl "${pins[@]}"
  ls -l .whl
}

# -- run ----------------------------------------------------------------------------------

W=/tmp/gpu_check
T0=$SECONDS

meta() {  # name status rc seconds limit
  local name=$1
  shift
  printf '{"status": "%s", "rc": %s, "seconds": %s, "limit_s": %s}\n' "$@" >"$W/$name.meta.json"
}

# stage NAME LIMIT_S COMMAND...: run it under timeout (never past the budget), its output
# in $W/NAME.out, its record in $W/NAME.meta.json; returns its exit status.
stage() {
  local name=$1 limit=$2 left start rc status
  shift 2
  left=$((BUDGET_S - (SECONDS - T0)))
  if ((left < 10)); then
    echo "== $name: skipped, the 6-minute budget is spent"
    meta "$name" skipped null 0 0
    return 125
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at $((SECONDS - T0)) s, limit $limit s)"
  start=$SECONDS
  timeout -k 5 "$limit" "$@" >"$W/$name.out" 2>&1
  rc=$?
  status=ok
  if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
  meta "$name" "$status" "$rc" $((SECONDS - start)) "$limit"
  echo "== $name: $status (rc $rc, $((SECONDS - start)) s)"
  tail -n 4 "$W/$name.out" | cut -c1-400
  return $rc
}

install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return
  python3 -c "import trainer.cli, trainer.loop, trainer.memory, service.worker.gpus
import pydantic, structlog, entmax, torch
print('trainer.cli imports; pydantic', pydantic.VERSION, '; torch', torch.__version__)"
}

build_difflogic() {
  local src=/tmp/difflogic-src nvcc arch
  rm -rf "$src" /tmp/dl-site && mkdir -p "$src"
  tar xzf .whl/difflogic-*.tar.gz -C "$src" --strip-components=1 || return
  python3 deploy/patch_difflogic.py "$src" || return
  nvcc=$(command -v nvcc) || { echo "no nvcc on PATH"; return 3; }
  arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return
  echo "CUDA_HOME=$(dirname "$(dirname "$nvcc")") TORCH_CUDA_ARCH_LIST=$arch"
  (cd "$src" && CUDA_HOME=$(dirname "$(dirname "$nvcc")") TORCH_CUDA_ARCH_LIST=$arch \
    MAX_JOBS=$(nproc) python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --target /tmp/dl-site .) || return
  PYTHONPATH=/tmp/dl-site:$PYTHONPATH python3 -c "import difflogic_cuda; print('difflogic_cuda imports')"
}
export -f install_wheels build_difflogic

run() {
  local dry=${1:-} out=${OUT:-/tmp/gpu_check_out} build_pid="" peak=""
  rm -rf "$W" && mkdir -p "$W" "$out"
  exec > >(tee "$out/gpu_check.log") 2>&1
  export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD W
  local stages=(python3 bench/gpu_stages.py)
  if [[ $dry == dry ]]; then
    stages=(${PYTHON:-.venv/bin/python} bench/gpu_stages.py --dry-run)
    export PYTHONPATH=$PWD
  fi

  stage env 30 "${stages[@]}" env "$W/env.json"
  if [[ $dry == dry ]]; then
    stage wheels 60 "${stages[0]}" -c "import trainer.cli, trainer.loop; print('trainer.cli imports')"
  else
    stage wheels 60 bash -c install_wheels
    stage build 240 bash -c build_difflogic &
    build_pid=$!
  fi
  stage train 150 "${stages[@]}" train "$W/train.json"
  if [[ -n $build_pid ]]; then
    echo "== waiting for the difflogic build"
    wait "$build_pid"
  fi
  if compgen -G "/tmp/dl-site/difflogic_cuda*" >/dev/null; then
    export PYTHONPATH=/tmp/dl-site:$PYTHONPATH
  fi
  stage parity 90 "${stages[@]}" parity "$W/parity.json"
  stage steps 150 "${stages[@]}" steps "$W/steps.json"
  peak=$("${stages[0]}" -c "import json, sys; print(json.load(open(sys.argv[1])).get('nvidia_smi_peak_mib') or '')" \
    "$W/train.json" 2>/dev/null)
  stage memory 60 "${stages[@]}" memory "$W/memory.json" ${peak:+--smi-peak-mib "$peak"}
  "${stages[0]}" bench/gpu_stages.py merge "$W" "$out/gpu_check.json"
  echo "== done in $((SECONDS - T0)) s: $out/gpu_check.json"
  "${stages[0]}" -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['summary']))" \
    "$out/gpu_check.json"
}

case "${1:-}" in
  fetch) fetch ;;
  run) run ;;
  dry-run) run dry ;;
  *) echo "usage: bash bench/gpu_check.sh fetch|run|dry-run" >&2; exit 2 ;;
esac
