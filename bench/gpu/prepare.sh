#!/usr/bin/env bash
# Prepare the GPU check here (package registries reachable, no GPU needed); see bench/gpu/README.md.
#
#   bench/gpu/prepare.sh           download the wheels, build .gpu/ (call1 .. callN) and print the calls
#   bench/gpu/prepare.sh stash     move models/*.onnx to .gpu/stash/ (they must not travel with the checkout)
#   bench/gpu/prepare.sh restore   put them back (do this after the last call, before any commit)
set -euo pipefail
cd "$(dirname "$0")/../.."
GPU_DIR=.gpu
WHEELS=$GPU_DIR/wheels

case "${1:-build}" in
stash)
    mkdir -p "$GPU_DIR/stash"
    for f in models/*.onnx; do [ -e "$f" ] && mv "$f" "$GPU_DIR/stash/"; done
    echo "models/*.onnx moved to $GPU_DIR/stash/ (git shows them deleted until: bench/gpu/prepare.sh restore)"
    ;;
restore)
    for f in "$GPU_DIR"/stash/*.onnx; do [ -e "$f" ] && mv "$f" models/; done
    git status --short models/
    ;;
build)
    mkdir -p "$WHEELS"
    # cp312 manylinux x86_64 wheels for the GPU machine (Python 3.12); --no-deps: it has the rest
    # (numpy, protobuf, flatbuffers, sympy, torch, opencv, scipy, numba, tqdm, tifffile; see README.md)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" onnxruntime-gpu==1.31.1 cellpose==3.1.1.1 fastremap==1.21.0 natsort==8.4.0 roifile==2026.11.6
    python3 bench/gpu/payload.py pack --wheels "$WHEELS" --gpu-dir "$GPU_DIR"
    ;;
*)
    echo "usage: $0 [build|stash|restore]" >&2
    exit 2
    ;;
esac
