#!/usr/bin/env bash
# The GPU machine's side of the GPU check: one step per `run` call, in the order CALLS.md gives
# (see bench/gpu/README.md). What the calls keep lives in $STATE, which lasts while the machine
# stays warm (it goes back 30 s after a call: issue the next call at once).
#
#   first   call 1: keep the manifest, the data and the first slice; install the small wheels;
#           step 1 of the check: part A's GPU dynamics against the CPU's (no onnxruntime-gpu needed)
#   part    calls 2 .. N-1: keep the next slice
#   last    call N: keep the last slice, unpack (checksum), then step 2: bench/gpu/chain_check.py
set -uo pipefail
STATE=/tmp/cellflow-gpu
OUT=${OUT:-$STATE/out}
mkdir -p "$OUT"

keep_slices() {
    cp .gpu/call*/stream.part* "$STATE/parts/" || exit 3
    echo "slices kept: $(ls "$STATE/parts" | wc -l) of $(python3 -c "import json; print(json.load(open('$STATE/manifest.json'))['slices'])")"
}

use_state() {
    if [ ! -f "$STATE/manifest.json" ]; then
        echo "FRESH MACHINE: what the earlier calls kept is gone (the machine went back); start again at call 1"
        exit 3
    fi
    export PYTHONPATH="$STATE/site:$PWD" NUMBA_CACHE_DIR="$STATE/numba" PYTHONUNBUFFERED=1
}

case "${1:-}" in
first)
    rm -rf "$STATE"
    mkdir -p "$STATE/parts" "$STATE/site" "$STATE/numba"
    cp .gpu/call1/manifest.json "$STATE/" && cp -r .gpu/call1/data "$STATE/data" || exit 3
    keep_slices
    use_state
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$STATE/site" .gpu/call1/wheels/*.whl
    { nvidia-smi; python3 -c "import numba, numba_cuda, numpy; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
    echo "== step 1: GPU dynamics (bench/gpu/dynamics_check.py, part A) =="
    timeout 180 python3 bench/gpu/dynamics_check.py --data "$STATE/data/reference" 2>&1 | tee "$OUT/dynamics_check.txt"
    echo "dynamics_check exit status: ${PIPESTATUS[0]}"
    ;;
part)
    use_state
    keep_slices
    ;;
last)
    use_state
    keep_slices
    python3 bench/gpu/payload.py unpack --state "$STATE" || exit 3
    cp -r "$STATE/payload/site/." "$STATE/site/"
    echo "== step 2: the whole chain (bench/gpu/chain_check.py) =="
    CELLFLOW_RT_SHARED="$STATE/payload/shared" python3 bench/gpu/chain_check.py --payload "$STATE/payload" \
        --out "$OUT" --budget 330 2>&1 | tee "$OUT/chain_check.txt"
    echo "chain_check exit status: ${PIPESTATUS[0]}"
    ;;
*)
    echo "usage: $0 first|part|last" >&2
    exit 2
    ;;
esac
