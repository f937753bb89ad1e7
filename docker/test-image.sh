#!/usr/bin/env bash
# Build the container images with the engine this machine has, and check them.
#
# Usage: bash docker/test-image.sh [--clean] [VARIANT ...]      VARIANT: cpu (default), cuda, bf16
#
# Engine: docker when a daemon answers, else podman, else buildah (ENGINE=... to choose). Base
# image: the official python:3.11-slim when a registry answers, else a Debian stand-in made here
# by docker/make-base.sh (BASE_IMAGE=... to give one). With podman or buildah, the host's pip
# configuration (indexes, certificate bundle, constraints: what `pip config list` shows) is mounted
# read-only into the build's RUN steps, never saved in the image.
#
# Checks of each image: it starts as a non-root user, `cellflow-rt info` works, torch and pip are
# absent, and the bundled example segments with no numba compilation, with a read-only root file
# system, as another uid, into a mounted folder, with the masks of the development install (the
# masks check needs DEV_PYTHON, default .venv/bin/python). CUDA image: `info` lists the CUDA
# provider, and `--use_gpu` without a GPU falls back to the CPU with a one-line warning. The CPU
# image must stay under CPU_IMAGE_MAX_MB (600) MB.
#
# The images are tagged cellflow-rt:latest, :cuda, :bf16 (IMAGE_NAME to change); the intermediate
# images of the builds are removed (podman/buildah: those the images are not built on; they carry a
# label cellflow-rt.test-image=<run>); --clean also removes the images made here (and the
# stand-in base) at the end.
# LOG_DIR=DIR keeps the build logs (each line timed) and the checks' outputs there.
# The last line of the output is `image size: N MB` (the CPU image; MB = 10^6 bytes).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE_NAME=${IMAGE_NAME:-cellflow-rt}
OFFICIAL_BASE=${OFFICIAL_BASE:-docker.io/library/python:3.11-slim}
LOCAL_BASE=localhost/cellflow-rt-base:bookworm
CPU_IMAGE_MAX_MB=${CPU_IMAGE_MAX_MB:-600}
DEV_PYTHON=${DEV_PYTHON:-.venv/bin/python}

clean=0
variants=()
for arg in "$@"; do
    case $arg in
        --clean) clean=1 ;;
        cpu|cuda|bf16) variants+=("$arg") ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-image.sh: unknown argument '$arg' (variants: cpu, cuda, bf16; --clean)" >&2; exit 2 ;;
    esac
done
[ ${#variants[@]} -gt 0 ] || variants=(cpu)
# the CPU image last: its size is the last line
ordered=()
for v in cuda bf16 cpu; do
    for w in "${variants[@]}"; do [ "$v" = "$w" ] && { ordered+=("$v"); break; }; done
done

work=$(mktemp -d)
run_label="cellflow-rt.test-image=$(date +%s)-$$"
made_images=()
failures=0
started=$SECONDS

log() { printf '[%4ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
ok() { log "ok: $*"; }

# ------------------------------------------------------------------------------------------------
# engine

if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    elif command -v buildah >/dev/null; then ENGINE=buildah
    else
        echo "test-image.sh: no container engine: a docker daemon, podman or buildah is needed" >&2
        echo "  (Debian/Ubuntu: apt-get install podman runc mmdebstrap)" >&2
        exit 2
    fi
fi
# ulimits no higher than this machine's: the engines' defaults (nofile 1048576) fail where they are lower
limits=(--ulimit "nofile=$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))" \
        --ulimit "nproc=$(( $(ulimit -Hu) < 4096 ? $(ulimit -Hu) : 4096 ))")

# the host's effective pip configuration as one file, and the local paths it names, for podman/buildah -v
build_mounts=()
pip_mounts() {
    local pip
    pip=$( { command -v pip3 || command -v pip || echo "$DEV_PYTHON"; } 2>/dev/null )
    [ -x "$pip" ] || return 0
    [[ $pip == *python* ]] && pip="$pip -m pip"
    $pip config list 2>/dev/null | python3 -c '
import os, re, sys
sections, paths = {}, set()
for line in sys.stdin:
    m = re.match(r"(.*?)\.([\w-]+)=(.*)$", line.strip())
    if not m:
        continue
    section, key, value = m.group(1), m.group(2), m.group(3).strip("\x27\"")
    sections.setdefault("global" if section == ":env:" else section, {})[key] = value
    for word in value.split():
        path = word[len("file://"):] if word.startswith("file://") else word
        if key.endswith("index-url") and os.path.basename(path.rstrip("/")) == "simple":
            path = os.path.dirname(path.rstrip("/"))  # a local index: its pages link to ../files
        if path.startswith("/") and os.path.exists(path):
            paths.add(f"{os.path.realpath(path)}:{path}")
with open(sys.argv[1], "w") as f:
    for section, items in sections.items():
        f.write(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()))
print("\n".join(sorted(paths)))
' "$work/pip.conf" > "$work/pip-paths"
    [ -s "$work/pip.conf" ] || return 0
    build_mounts=(-v "$work/pip.conf:/etc/pip.conf:ro")
    while read -r mount; do
        [ -n "$mount" ] && build_mounts+=(-v "$mount:ro")
    done < "$work/pip-paths"
    return 0
}

engine_build() {  # TAG TARGET [build args...]
    local tag=$1 target=$2
    shift 2
    case $ENGINE in
        docker) docker build --target "$target" -t "$tag" "${limits[@]}" "$@" . ;;
        podman|buildah)
            # --format docker keeps SHELL (bash -o pipefail); the host's network: no bridge or NAT to
            # set up for the RUN steps; the label marks this run's intermediate images (the stages
            # the images share are built once), removed at the end
            "$ENGINE" build --layers --label "$run_label" --format docker --network host --target "$target" \
                -t "$tag" "${limits[@]}" "${build_mounts[@]}" "$@" . ;;
    esac
}

image_bytes() {
    case $ENGINE in
        docker|podman) "$ENGINE" image inspect --format '{{.Size}}' "$1" ;;
        buildah)  # the sum of the layers' sizes, as podman counts them (buildah prints it rounded)
            buildah inspect --type image "$1" | python3 -c '
import json, sys
diff_ids = json.load(sys.stdin)["OCIv1"]["rootfs"]["diff_ids"]
layers = json.load(open(f"{sys.argv[1]}/overlay-layers/layers.json"))
sizes = {layer.get("diff-digest"): layer.get("diff-size", 0) for layer in layers}
print(sum(sizes[d] for d in diff_ids))' \
                "$(buildah info --format '{{.store.GraphRoot}}')" ;;
    esac
}

remove_image() { "$ENGINE" rmi "$1" >/dev/null 2>&1 || true; }

remove_intermediate_images() {  # those of this run that no image made here is built on
    [ "$ENGINE" != docker ] || return 0
    "$ENGINE" images -a -q --filter "label=$run_label" --filter dangling=true \
        | xargs -r "$ENGINE" rmi >/dev/null 2>&1 || true
}

# engine_run [--read-only] [--user U] [--mount HOST:CONTAINER] [--env K=V]... [--entrypoint E] -- IMAGE ARGS...
engine_run() {
    local opts=() entrypoint=""
    while [ "$1" != "--" ]; do
        case $1 in
            --read-only) opts+=(--read-only --tmpfs /tmp); shift ;;
            --user) opts+=(--user "$2"); shift 2 ;;
            --mount) opts+=(-v "$2"); shift 2 ;;
            --env) opts+=(-e "$2"); shift 2 ;;
            --entrypoint) entrypoint=$2; shift 2 ;;
        esac
    done
    shift
    [ -n "$entrypoint" ] && opts+=(--entrypoint "$entrypoint")
    case $ENGINE in
        docker|podman) "$ENGINE" run --rm --network none "${limits[@]}" "${opts[@]}" "$@" ;;
        buildah) bash docker/run-oci.sh "${opts[@]}" "$@" ;;
    esac
}

# ------------------------------------------------------------------------------------------------
# base image

base_args=()
choose_base() {
    if [ -n "${BASE_IMAGE:-}" ]; then
        log "base image: $BASE_IMAGE (given)"
    elif timeout 120 "$ENGINE" pull "$OFFICIAL_BASE" >"$work/pull.log" 2>&1; then
        BASE_IMAGE=$OFFICIAL_BASE
        log "base image: $BASE_IMAGE (pulled)"
    else
        log "no registry answers ($(tail -n 1 "$work/pull.log" | cut -c1-120))"
        log "making a Debian stand-in for python:3.11-slim (docker/make-base.sh) ..."
        sh docker/make-base.sh "$work/base.tar" >"$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
        case $ENGINE in
            docker|podman) "$ENGINE" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
                               "$work/base.tar" "$LOCAL_BASE" >"$work/import.log" 2>&1 ;;
            buildah)
                local ctr
                ctr=$(buildah from scratch)
                buildah add "$ctr" "$work/base.tar" / >/dev/null
                buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
                buildah commit -q "$ctr" "$LOCAL_BASE" >/dev/null
                buildah rm "$ctr" >/dev/null ;;
        esac
        rm -f "$work/base.tar"
        BASE_IMAGE=$LOCAL_BASE
        made_images+=("$LOCAL_BASE")
        bytes=$(image_bytes "$LOCAL_BASE")
        log "base image: $BASE_IMAGE, $((bytes / 1000000)) MB"
    fi
    base_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
}

# ------------------------------------------------------------------------------------------------
# checks

dev_masks() {  # the example's masks from the development install, once
    if [ ! -f "$work/dev/example_nuclei_cp_masks.tif" ] && [ -x "$DEV_PYTHON" ]; then
        mkdir -p "$work/dev"
        "$DEV_PYTHON" -m cellflow_rt.cli run --example --savedir "$work/dev" --save_tif --no_npy \
            >"$work/dev.log" 2>&1 || { cat "$work/dev.log"; return 1; }
    fi
    [ -f "$work/dev/example_nuclei_cp_masks.tif" ]
}

check_image() {  # TAG VARIANT
    local tag=$1 variant=$2 out uid
    # not root, and nothing of torch or pip, in the venv or in the base image's Python
    uid=$(engine_run --entrypoint id -- "$tag" -u)
    if [ "$uid" != 0 ]; then ok "runs as uid $uid"; else fail "the image runs as root"; fi
    # shellcheck disable=SC2016  # this script runs in the image
    if engine_run --entrypoint sh -- "$tag" -c '
        found=""
        for py in /opt/venv/bin/python /usr/local/bin/python3 /usr/bin/python3; do
            [ -x "$py" ] || continue
            for module in torch pip; do
                "$py" -c "import $module" 2>/dev/null && found="$found $module($py)"
            done
        done
        for tool in pip pip3; do command -v "$tool" >/dev/null && found="$found $tool"; done
        tests=$(find /opt/venv -type d \( -name tests -o -name test \) | head -n 3)
        [ -z "$tests" ] || found="$found test-suites($tests)"
        [ -z "$found" ] || { echo "present:$found"; exit 1; }'; then
        ok "no torch, no pip, no test suites"
    else
        fail "torch, pip or test suites in the image"
    fi
    # cellflow-rt info
    if engine_run -- "$tag" info >"$work/info.txt" 2>&1 && grep -q "execution providers:.*CPUExecutionProvider" "$work/info.txt"; then
        ok "cellflow-rt info: $(grep 'execution providers' "$work/info.txt")"
        [ "$variant" != bf16 ] || log "  $(grep '^bf16' "$work/info.txt")"
    else
        cat "$work/info.txt"; fail "cellflow-rt info"
    fi
    # the example, first run of a fresh container: read-only root, another uid, a mounted folder
    out="$work/out-$variant"
    mkdir -p "$out" && chmod 777 "$out"
    if engine_run --read-only --user 54321:54321 --mount "$out:/out" --env NUMBA_DEBUG_CACHE=1 -- "$tag" \
            run --example --savedir /out --save_tif --no_npy >"$work/run.txt" 2>&1; then
        ok "read-only root, uid 54321: $(grep -E 'cells' "$work/run.txt")"
    else
        cat "$work/run.txt"; fail "run --example with --read-only and --user 54321:54321"
    fi
    local saved loaded
    saved=$(grep -c '\[cache\] data saved' "$work/run.txt" || true)
    loaded=$(grep -c '\[cache\] data loaded' "$work/run.txt" || true)
    if [ "$saved" = 0 ] && [ "$loaded" -gt 0 ]; then
        ok "nothing compiled on the first run ($loaded kernels loaded from the image's numba cache)"
    else
        fail "numba compiled $saved kernel(s) on the first run (loaded $loaded)"
    fi
    if [ -f "$out/example_nuclei_cp_masks.tif" ] && [ "$(stat -c %u "$out/example_nuclei_cp_masks.tif")" = 54321 ]; then
        ok "the mounted folder got the outputs: $(cd "$out" && echo *)"
    else
        fail "no masks written into the mounted folder"
    fi
    if ! dev_masks; then
        log "SKIPPED: masks not compared: no development install at DEV_PYTHON=$DEV_PYTHON"
    elif "$DEV_PYTHON" -c '
import sys, numpy, tifffile
image, dev = (tifffile.imread(p) for p in sys.argv[1:])
assert image.shape == dev.shape and numpy.array_equal(image, dev), f"{image.max()} vs {dev.max()} masks, differ"
print(f"{dev.max()} masks")' "$out/example_nuclei_cp_masks.tif" "$work/dev/example_nuclei_cp_masks.tif" >"$work/cmp.txt" 2>&1; then
        ok "masks equal to the development install's ($(cat "$work/cmp.txt"))"
    else
        cat "$work/cmp.txt"; fail "masks differ from the development install's"
    fi
    if [ "$variant" = cuda ]; then
        check_cuda_fallback "$tag"
    fi
}

check_cuda_fallback() {  # the CUDA image on a machine without a GPU
    local tag=$1 warnings
    if grep -q "execution providers:.*CUDAExecutionProvider" "$work/info.txt"; then
        ok "the CUDA provider is listed"
    else
        fail "cellflow-rt info does not list CUDAExecutionProvider"
    fi
    if engine_run -- "$tag" run --example --savedir /tmp/out --use_gpu >"$work/gpu.out" 2>"$work/gpu.err"; then
        warnings=$(grep -c -i 'warn\|error\|fail' "$work/gpu.err" || true)
        if grep -q "CPUExecutionProvider" "$work/gpu.err" && [ "$warnings" = 1 ] \
                && [ "$(grep -c -v '^cellflow-rt ' "$work/gpu.err")" = 1 ]; then
            ok "--use_gpu without a GPU: $(grep -i warn "$work/gpu.err")"
        else
            cat "$work/gpu.err"; fail "--use_gpu without a GPU: expected one warning line and the CPU provider"
        fi
    else
        cat "$work/gpu.out" "$work/gpu.err"; fail "--use_gpu without a GPU failed"
    fi
}

# ------------------------------------------------------------------------------------------------

cleanup() {
    if [ -n "${LOG_DIR:-}" ]; then
        mkdir -p "$LOG_DIR"
        cp "$work"/*.log "$work"/*.txt "$LOG_DIR"/ 2>/dev/null || true
    fi
    remove_intermediate_images
    if [ $clean = 1 ]; then  # the images before the base they are built on
        for ((i = ${#made_images[@]} - 1; i >= 0; i--)); do remove_image "${made_images[i]}"; done
        remove_intermediate_images
    fi
    rm -rf "$work"
}
trap cleanup EXIT

log "engine: $ENGINE ($("$ENGINE" --version 2>/dev/null | head -n 1))"
[ "$ENGINE" = docker ] || pip_mounts
[ ${#build_mounts[@]} = 0 ] || log "pip configuration mounted into the build: ${build_mounts[*]}"
choose_base

declare -A sizes
for variant in "${ordered[@]}"; do
    case $variant in
        cpu) tag=$IMAGE_NAME:latest; target=cpu; args=() ;;
        cuda) tag=$IMAGE_NAME:cuda; target=cuda; args=() ;;
        bf16) tag=$IMAGE_NAME:bf16; target=cpu; args=(--build-arg 'EXTRAS=[openvino]') ;;
    esac
    log "building $tag (target $target) ..."
    t0=$SECONDS
    # the build log, each line with its time (which step is slow)
    if ! engine_build "$tag" "$target" "${base_args[@]}" "${args[@]}" 2>&1 \
            | while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done >"$work/build-$variant.log"; then
        tail -n 40 "$work/build-$variant.log"
        fail "build of $tag"
        continue
    fi
    made_images+=("$tag")
    bytes=$(image_bytes "$tag")
    sizes[$variant]=$((bytes / 1000000))
    log "built $tag in $((SECONDS - t0)) s: ${sizes[$variant]} MB"
    check_image "$tag" "$variant"
done

if [ -n "${sizes[cpu]:-}" ] && [ "${sizes[cpu]}" -gt "$CPU_IMAGE_MAX_MB" ]; then
    fail "the CPU image is ${sizes[cpu]} MB, more than $CPU_IMAGE_MAX_MB MB"
fi
log "base $BASE_IMAGE; $( for v in "${ordered[@]}"; do printf '%s %s MB; ' "$v" "${sizes[$v]:-?}"; done)$failures failure(s)"
[ $failures = 0 ] || exit 1
for v in cuda bf16; do
    [ -n "${sizes[$v]:-}" ] && echo "$v image size: ${sizes[$v]} MB"
done
[ -z "${sizes[cpu]:-}" ] || echo "image size: ${sizes[cpu]} MB"
