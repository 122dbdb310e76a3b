# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target api    -t gatequeue-api .     # aiohttp API, no torch (~200 MB)
#   docker build --target worker -t gatequeue-worker .  # CUDA runtime, torch, difflogic's CUDA kernels
#
# Both run as the unprivileged user 10001 and have no ENTRYPOINT, so
# `docker run IMAGE gatequeue submit ...` and `docker run -it IMAGE bash` work as expected.
# docs/deploy.md explains the build arguments; tests/test_deploy_manifests.py checks this file.

ARG PYTHON_VERSION=3.12
# The worker's CUDA toolkit must match the CUDA build of the torch wheel (TORCH_INDEX_URL):
# difflogic's extension is compiled by this nvcc against that torch.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=ubuntu24.04
ARG TORCH_VERSION=2.8.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DIFFLOGIC_VERSION=0.1.0
# Compute capabilities the difflogic kernels are compiled for: V100, T4, A100, A10/RTX 30xx,
# L4/L40/RTX 40xx, H100/H200, B200, RTX 50xx; +PTX lets newer GPUs JIT-compile the last one.
# A GPU outside the list fails difflogic's first launch ("no kernel image is available"),
# as a RuntimeError since the patch below; `--backend auto` uses the torch path on CUDA.
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
ARG APP_UID=10001


# ---------------------------------------------------------------------------------------
# api: build a virtualenv with the service's runtime dependencies and no torch
# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS api-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The API process imports only the `service` package. pyproject.toml lists torch, entmax,
# numpy and scikit-learn for the trainer, so the package is installed with --no-deps and the
# service's own dependencies are spelled out here (numpy: data set uploads are validated and
# encoded by the API, docs/datasets.md). tests/test_deploy_manifests.py fails when
# this list and pyproject.toml drift apart.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install \
        "aiohttp>=3.10" \
        "pymongo>=4.13" \
        "structlog>=24.1" \
        "pydantic>=2.7" \
        "prometheus-client>=0.20" \
        "rich>=13.7" \
        "orjson>=3.9" \
        "optuna>=4.0" \
        "numpy>=1.26"
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY trainer /src/trainer
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps /src


FROM python:${PYTHON_VERSION}-slim-bookworm AS api
ARG APP_UID
RUN groupadd --system --gid ${APP_UID} gatequeue \
 && useradd --system --uid ${APP_UID} --gid ${APP_UID} --create-home \
        --home-dir /home/gatequeue --shell /usr/sbin/nologin gatequeue
COPY --from=api-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEQUEUE_LOG_FORMAT=json
USER ${APP_UID}:${APP_UID}
WORKDIR /home/gatequeue
EXPOSE 8080
# Liveness only: /readyz also needs MongoDB, and an API that cannot reach MongoDB should be
# taken out of the load balancer (Kubernetes readiness), not restarted.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["gatequeue", "serve", "--host", "0.0.0.0", "--port", "8080"]


# ---------------------------------------------------------------------------------------
# worker: compile difflogic's CUDA extension with nvcc, then copy the virtualenv into a
# CUDA runtime image (no compiler, no headers)
# ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU_VERSION} AS worker-build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG DIFFLOGIC_VERSION
ARG TORCH_CUDA_ARCH_LIST
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=4
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip setuptools wheel ninja
# torch first, from the index whose CUDA build matches this image's nvcc.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# difflogic ships only an sdist whose setup.py imports torch, hence --no-build-isolation.
# deploy/patch_difflogic.py (also run by bench/gpu_check.sh) patches its CUDA sources first:
# launch checks instead of a device sync after every kernel, a RuntimeError instead of
# exit() on a CUDA error, launches on torch's current stream, and scalar_type() for the
# Tensor.type() that torch >= 2.7 rejects. It fails the build if any of that is not found.
COPY deploy/patch_difflogic.py /tmp/patch_difflogic.py
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eux; \
    mkdir -p /tmp/difflogic /wheels; \
    pip download --no-deps --no-binary :all: --no-build-isolation \
        -d /tmp/difflogic "difflogic==${DIFFLOGIC_VERSION}"; \
    tar -xzf /tmp/difflogic/difflogic-*.tar.gz -C /tmp/difflogic; \
    src="$(find /tmp/difflogic -mindepth 1 -maxdepth 1 -type d -name 'difflogic-*')"; \
    python /tmp/patch_difflogic.py "$src"; \
    pip wheel --no-deps --no-build-isolation -w /wheels "$src"; \
    pip install /wheels/difflogic-*.whl; \
    python -c "import torch, difflogic_cuda; print('difflogic_cuda built for', torch.__version__)"
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY trainer /src/trainer
# torch is already satisfied, so this adds only the lighter dependencies and the package.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install /src \
 && pip uninstall -y ninja


FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU_VERSION} AS worker
ARG APP_UID
ENV DEBIAN_FRONTEND=noninteractive
# g++: the trainer compiles its CPU kernel (trainer/kernels/logic_cpu.cpp, -march=native) on
# first use into ~/.cache; without a compiler a CPU slot falls back to the slower torch path.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates g++ \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid ${APP_UID} gatequeue \
 && useradd --system --uid ${APP_UID} --gid ${APP_UID} --create-home \
        --home-dir /home/gatequeue --shell /usr/sbin/nologin gatequeue \
 && mkdir -p /var/lib/gatequeue/data \
 && chown -R ${APP_UID}:${APP_UID} /var/lib/gatequeue
COPY --from=worker-build /opt/venv /opt/venv
# GATEQUEUE_HEARTBEAT_FILE: the worker touches this file every few seconds from its event
# loop; the HEALTHCHECK below and the Kubernetes probes fail when it is older than 60 s
# (contract in docs/deploy.md, "Worker heartbeat").
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEQUEUE_LOG_FORMAT=json \
    GATEQUEUE_DATA_DIR=/var/lib/gatequeue/data \
    GATEQUEUE_HEARTBEAT_FILE=/tmp/gatequeue-worker-heartbeat
VOLUME ["/var/lib/gatequeue/data"]
USER ${APP_UID}:${APP_UID}
WORKDIR /home/gatequeue
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, time; sys.exit(time.time() - os.stat(os.environ['GATEQUEUE_HEARTBEAT_FILE']).st_mtime >= 60)"]
# The CUDA base image's entrypoint prints a banner into what should be JSON logs.
ENTRYPOINT []
CMD ["gatequeue", "worker"]
