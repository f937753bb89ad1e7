# syntax=docker/dockerfile:1
# hadolint global ignore=DL3008
# (DL3008, apt package versions unpinned: the base images' Debian/Ubuntu release fixes them, and
# pinned versions disappear from the mirrors at the next point release)
#
# cellflow-rt: Cellpose (3.x CPnet) segmentation without PyTorch, as a container.
#
#   CPU image (default target):  docker build -t cellflow-rt .
#   CUDA image:                  docker build --target cuda -t cellflow-rt:cuda .
#   CPU image with bf16:         docker build --build-arg EXTRAS="[openvino]" -t cellflow-rt:bf16 .
#
#   docker run --rm -v "$PWD:/data" cellflow-rt run --dir /data --model nuclei_demo --diameter 17 --save_tif
#   docker run --rm --gpus all -v "$PWD:/data" cellflow-rt:cuda run --dir /data --use_gpu --save_tif
#   docker run --rm cellflow-rt run --example --savedir /tmp/out      # the bundled example
#
# Each image: a builder stage pip-installs the package into /opt/venv, slims it (docker/slim-venv.sh:
# no pip/setuptools/wheel, no test suites, shared objects stripped) and pre-compiles every numba
# kernel into /opt/cellflow-rt/numba-cache (docker/warm-cache.py); the final stage is the bare
# Python runtime plus those two folders, a non-root user, no compilers and no package installer.
# tests/test_docker_recipe.py replays the `builder` stage in a fresh virtual environment.
#
# numba only uses a cache folder it can write to (it probes with a temporary file), so the cache
# is world-writable: a run as another uid (docker run --user) still finds it. With
# `docker run --read-only`, add `--tmpfs /tmp -e NUMBA_CACHE_DIR=/tmp/numba` (kernels are then
# compiled on the first run, about 20-60 s). NUMBA_CPU_NAME=generic makes the cache valid on any
# x86-64 CPU (numba keys cache entries on the CPU; the masks are the same).

ARG PYTHON_VERSION=3.11
# onnxruntime-gpu from PyPI is built for one CUDA major version (1.31: CUDA 13 + cuDNN 9, see
# `readelf -d onnxruntime/capi/libonnxruntime_providers_cuda.so`): the base image must match it.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1

# ------------------------------------------------------------------------------------------------
# CPU builder
FROM python:${PYTHON_VERSION}-slim AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NUMBA_CACHE_DIR=/opt/cellflow-rt/numba-cache \
    NUMBA_CPU_NAME=generic
# binutils for strip; libgomp1 so that numba's parallel kernels are warmed on the OpenMP layer they use
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY cellflow_rt /src/cellflow_rt
COPY export /src/export
COPY models /src/models
COPY docker /src/docker
# --build-arg EXTRAS="[openvino]" adds OpenVINO for --precision bf16 (about 180 MB more, slimmed)
ARG EXTRAS=""
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "/src${EXTRAS}"
RUN sh /src/docker/slim-venv.sh /opt/venv
RUN /opt/venv/bin/python /src/docker/warm-cache.py --prune-bytecode \
 && chmod -R a+rwX /opt/cellflow-rt

# ------------------------------------------------------------------------------------------------
# CUDA: the same on an NVIDIA runtime base (CUDA + cuDNN) with onnxruntime-gpu
FROM ${CUDA_IMAGE} AS cuda-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NUMBA_CACHE_DIR=/opt/cellflow-rt/numba-cache \
    NUMBA_CPU_NAME=generic
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY cellflow_rt /src/cellflow_rt
COPY export /src/export
COPY models /src/models
COPY docker /src/docker
# onnxruntime and onnxruntime-gpu ship the same `onnxruntime` module: removing the CPU package
# deletes files the GPU package shares, so the GPU package is reinstalled after it
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install "/src[gpu]" "onnxruntime-gpu==${ORT_GPU_VERSION}" \
 && /opt/venv/bin/pip uninstall -y onnxruntime \
 && /opt/venv/bin/pip install --no-deps --force-reinstall "onnxruntime-gpu==${ORT_GPU_VERSION}"
RUN sh /src/docker/slim-venv.sh /opt/venv
RUN /opt/venv/bin/python /src/docker/warm-cache.py --prune-bytecode \
 && chmod -R a+rwX /opt/cellflow-rt

FROM cuda-base AS cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN useradd --system --uid 10001 --gid 0 --create-home --home-dir /home/cellflow --shell /usr/sbin/nologin cellflow
COPY --from=cuda-builder /opt/venv /opt/venv
COPY --from=cuda-builder /opt/cellflow-rt /opt/cellflow-rt
ENV PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/opt/cellflow-rt/numba-cache \
    NUMBA_CPU_NAME=generic \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cellflow
USER 10001
WORKDIR /data
RUN n=$(find "$NUMBA_CACHE_DIR" -type f | wc -l) \
 && cellflow-rt run --example --savedir /tmp/check --save_png \
 && test "$(find "$NUMBA_CACHE_DIR" -type f | wc -l)" -eq "$n" \
 && rm -rf /tmp/check "$HOME/.cache"
ENTRYPOINT ["cellflow-rt"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# CPU runtime: the last stage, what a plain `docker build` produces
FROM python:${PYTHON_VERSION}-slim AS cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# the base image's own installer goes too: nothing is installed at run time
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && python -m pip uninstall -q -y pip setuptools wheel \
 && useradd --system --uid 10001 --gid 0 --create-home --home-dir /home/cellflow --shell /usr/sbin/nologin cellflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/cellflow-rt /opt/cellflow-rt
ENV PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/opt/cellflow-rt/numba-cache \
    NUMBA_CPU_NAME=generic \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cellflow
USER 10001
WORKDIR /data
# the build fails if a first run would still compile anything
RUN n=$(find "$NUMBA_CACHE_DIR" -type f | wc -l) \
 && cellflow-rt run --example --savedir /tmp/check --save_png \
 && test "$(find "$NUMBA_CACHE_DIR" -type f | wc -l)" -eq "$n" \
 && rm -rf /tmp/check "$HOME/.cache"
ENTRYPOINT ["cellflow-rt"]
CMD ["--help"]
