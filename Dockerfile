# syntax=docker/dockerfile:1
# hadolint global ignore=DL3008
# (DL3008, apt package versions unpinned: the base image's Debian release fixes them, and pinned
# versions disappear from the mirrors at the next point release)
#
# cellflow-rt: Cellpose (3.x CPnet) segmentation without PyTorch, as a container.
#
#   CPU image (default target):  docker build -t cellflow-rt .
#   CUDA image:                  docker build --target cuda -t cellflow-rt:cuda .
#   CPU image with bf16:         docker build --build-arg EXTRAS="[openvino]" -t cellflow-rt:bf16 .
#   with Cellpose's models:      docker build --build-arg CELLFLOW_RT_PULL="cyto3 nuclei" -t cellflow-rt:cyto3 .
#
#   docker run --rm -v "$PWD:/data" cellflow-rt run --dir /data --model nuclei_demo --diameter 17 --save_tif
#   docker run --rm --gpus all -v "$PWD:/data" cellflow-rt:cuda run --dir /data --use_gpu --save_tif
#   docker run --rm cellflow-rt run --example --savedir /tmp/out      # the bundled example
#
# docker/test-image.sh builds and checks the images (docker, podman or buildah; without a reachable
# registry it first makes a Debian stand-in for python:3.11-slim: docker/make-base.sh, BASE_IMAGE).
#
# Each image: a builder stage pip-installs the package into /opt/venv, slims it (docker/slim-venv.sh:
# no pip/setuptools/wheel, no test suites, shared objects stripped) and pre-compiles every numba
# kernel into /opt/cellflow-rt/numba-cache (docker/warm-cache.py); the final stage is the bare
# Python runtime plus those two folders, a non-root user, no compilers and no package installer.
#
# numba only uses a cache folder it can write to (it probes with a temporary file), so the cache
# is world-writable: a run as another uid (docker run --user) still finds it. With
# `docker run --read-only`, add `--tmpfs /tmp` (cellflow-rt copies the cache there once).
# NUMBA_CPU_NAME=generic makes the cache valid on any x86-64 CPU (numba keys cache entries on the
# CPU; the masks are the same).

ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim
# The CUDA image takes CUDA and cuDNN from the package index as wheels (no nvidia/cuda base):
# onnxruntime-gpu is built for one CUDA major version (1.31: CUDA 13 + cuDNN 9; its `cuda` and
# `cudnn` extras name the matching nvidia-* wheels), and numba-cuda's `cu13` extra brings what the
# GPU dynamics compile and link with (NVVM, NVRTC, nvJitLink, the CUDA runtime).
ARG ORT_GPU_VERSION=1.31.1
ARG NUMBA_CUDA_VERSION=0.30.4

# ------------------------------------------------------------------------------------------------
# what both builders start from: the base image, binutils (strip), the sources
FROM ${BASE_IMAGE} AS build-base
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
COPY docker/slim-venv.sh docker/warm-cache.py /src/docker/

# CPU builder
FROM build-base AS builder
# --build-arg EXTRAS="[openvino]" adds OpenVINO for --precision bf16 (about 180 MB more, slimmed)
ARG EXTRAS=""
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "/src${EXTRAS}"
RUN sh /src/docker/slim-venv.sh /opt/venv
RUN /opt/venv/bin/python /src/docker/warm-cache.py --prune-bytecode \
 && chmod -R a+rwX /opt/cellflow-rt
# --build-arg CELLFLOW_RT_PULL="cyto3 nuclei" pre-pulls Cellpose's published models into the image's
# model cache (downloaded and converted at build time: both images then run them offline);
# --build-arg CELLFLOW_RT_MODELS_URL=https://mirror.example/cellpose fetches them from a mirror.
ARG CELLFLOW_RT_PULL=""
ARG CELLFLOW_RT_MODELS_URL=""
RUN mkdir -p /opt/cellflow-rt/models \
 && if [ -n "${CELLFLOW_RT_PULL}" ]; then \
      PYTHONDONTWRITEBYTECODE=1 CELLFLOW_RT_MODELS_DIR=/opt/cellflow-rt/models \
      CELLFLOW_RT_MODELS_URL="${CELLFLOW_RT_MODELS_URL}" /opt/venv/bin/cellflow-rt models pull --quiet ${CELLFLOW_RT_PULL}; \
    fi \
 && chmod -R a+rwX /opt/cellflow-rt/models

# CUDA builder: the CPU builder's venv with onnxruntime swapped for onnxruntime-gpu and the `gpu`
# extra added (cellflow-rt itself is not reinstalled, so its numba cache stays valid: same sources,
# same numba; no second compilation). onnxruntime and onnxruntime-gpu ship the same `onnxruntime`
# module: removing the CPU package deletes files the GPU package shares, so the GPU package is
# installed again afterwards, from the wheel downloaded once.
FROM builder AS cuda-builder
ARG ORT_GPU_VERSION
ARG NUMBA_CUDA_VERSION
RUN /opt/venv/bin/python -m ensurepip >/dev/null \
 && /opt/venv/bin/python -m pip download -q --no-deps -d /tmp/ort "onnxruntime-gpu==${ORT_GPU_VERSION}" \
 && ort_wheel=$(echo /tmp/ort/onnxruntime_gpu-*.whl) \
 && /opt/venv/bin/python -m pip install "cellflow-rt[gpu]" "${ort_wheel}[cuda,cudnn]" "numba-cuda[cu13]==${NUMBA_CUDA_VERSION}" \
 && /opt/venv/bin/python -m pip uninstall -y onnxruntime \
 && /opt/venv/bin/python -m pip install --no-deps --force-reinstall "${ort_wheel}" \
 && rm -rf /tmp/ort
RUN sh /src/docker/slim-venv.sh /opt/venv
# compiles nothing now (the runs load the kernels); it keeps the bytecode of what a run imports
RUN /opt/venv/bin/python /src/docker/warm-cache.py --prune-bytecode \
 && chmod -R a+rwX /opt/cellflow-rt

# ------------------------------------------------------------------------------------------------
# what both runtime images start from: the base image, libgomp1, no installer, the user
FROM ${BASE_IMAGE} AS runtime-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# the base image's own installer goes too (python:*-slim has one): nothing is installed at run time
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && if python -m pip --version >/dev/null 2>&1; then python -m pip uninstall -q -y pip setuptools wheel; fi \
 && useradd --system --uid 10001 --gid 0 --create-home --home-dir /home/cellflow --shell /usr/sbin/nologin cellflow
ENV PATH=/opt/venv/bin:$PATH \
    CELLFLOW_RT_MODELS_DIR=/opt/cellflow-rt/models \
    NUMBA_CACHE_DIR=/opt/cellflow-rt/numba-cache \
    NUMBA_CPU_NAME=generic \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cellflow
WORKDIR /data

# ------------------------------------------------------------------------------------------------
# CUDA runtime. The NVIDIA container toolkit (`docker run --gpus all`) mounts the host driver's
# libcuda; the CUDA and cuDNN libraries of the wheels are found through ld.so.conf.
FROM runtime-base AS cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=cuda-builder /opt/venv /opt/venv
COPY --from=cuda-builder /opt/cellflow-rt /opt/cellflow-rt
RUN site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && printf '%s\n' "$site/nvidia/cu13/lib" "$site/nvidia/cudnn/lib" > /etc/ld.so.conf.d/cellflow-rt-cuda.conf \
 && ldconfig
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
# the build fails if a first run would still compile anything
RUN n=$(find "$NUMBA_CACHE_DIR" -type f | wc -l) \
 && cellflow-rt run --example --savedir /tmp/check --save_png \
 && test "$(find "$NUMBA_CACHE_DIR" -type f | wc -l)" -eq "$n" \
 && rm -rf /tmp/check "$HOME/.cache"
ENTRYPOINT ["cellflow-rt"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------------
# CPU runtime: the last stage, what a plain `docker build` produces
FROM runtime-base AS cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/cellflow-rt /opt/cellflow-rt
USER 10001
# the build fails if a first run would still compile anything
RUN n=$(find "$NUMBA_CACHE_DIR" -type f | wc -l) \
 && cellflow-rt run --example --savedir /tmp/check --save_png \
 && test "$(find "$NUMBA_CACHE_DIR" -type f | wc -l)" -eq "$n" \
 && rm -rf /tmp/check "$HOME/.cache"
ENTRYPOINT ["cellflow-rt"]
CMD ["--help"]
