"""The Dockerfile's structure (fast; no engine needed).

The images themselves are built and checked by ``docker/test-image.sh`` (run by ``.ci/run``):
the example's masks against this install's, no compilation on the first run, read-only root and
another uid, no torch and no pip, the CPU image's size, the CUDA image's fallback without a GPU.
These tests only read the Dockerfile: what each stage may contain, and in which order.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def dockerfile_stages(text: str) -> dict:
    """Stage name -> (parent, list of (instruction, arguments)); continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages, name = {}, None
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?\s*$", args, re.I)
            name = match.group(2) or match.group(1)
            stages[name] = (match.group(1), [])
        elif name is not None:
            stages[name][1].append((instruction, args.strip()))
    return stages


def chain(stages: dict, name: str) -> list:
    """The instructions of a stage preceded by those of the stages it is built FROM."""
    parent, instructions = stages[name]
    return (chain(stages, parent) if parent in stages else []) + instructions


STAGES = dockerfile_stages(DOCKERFILE.read_text())


def test_a_plain_build_makes_the_cpu_image_on_the_python_slim_base():
    assert list(STAGES)[-1] == "cpu", "a plain `docker build` must produce the CPU image"
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    bases = {parent for parent, _ in STAGES.values() if parent not in STAGES}
    assert bases == {"${BASE_IMAGE}"}, f"every stage starts from the one slim Python base: {bases}"
    assert "nvidia/cuda" not in re.sub(r"#.*", "", text)


def test_runtime_images_hold_only_the_venv_and_the_cache_and_run_as_a_user():
    for name, builder in (("cpu", "builder"), ("cuda", "cuda-builder")):
        instructions = chain(STAGES, name)
        kinds = [i for i, _ in instructions]
        assert ("ENTRYPOINT", '["cellflow-rt"]') in instructions
        assert ("USER", "10001") in instructions and kinds.index("USER") < kinds.index("ENTRYPOINT")
        copies = [a for i, a in instructions if i == "COPY"]
        assert copies == [f"--from={builder} /opt/venv /opt/venv",
                          f"--from={builder} /opt/cellflow-rt /opt/cellflow-rt"], copies
        runs = " ".join(a for i, a in instructions if i == "RUN")
        assert "pip install" not in runs and "build-essential" not in runs and "gcc" not in runs
        assert "pip uninstall" in runs, "the base image's own pip goes"
        # the last RUN is the build-time check: the example runs and compiles nothing
        last_run = [a for i, a in instructions if i == "RUN"][-1]
        assert "cellflow-rt run --example" in last_run and "NUMBA_CACHE_DIR" in last_run


def test_builders_install_then_slim_then_warm_the_cache():
    for name in ("builder", "cuda-builder"):
        runs = [a for i, a in STAGES[name][1] if i == "RUN"]
        order = [next(k for k, a in enumerate(runs) if key in a)
                 for key in ("pip install", "slim-venv.sh", "warm-cache.py")]
        assert order == sorted(order), f"{name}: install, then slim, then warm the numba cache"
    assert ("ARG", 'EXTRAS=""') in STAGES["builder"][1], "a plain build installs no extras (no OpenVINO)"
    assert any('pip install "/src${EXTRAS}"' in a for i, a in STAGES["builder"][1] if i == "RUN")


def test_the_cuda_image_takes_cuda_and_cudnn_from_wheels():
    # on the CPU builder's venv, whose numba cache stays valid as long as cellflow-rt is not reinstalled
    assert STAGES["cuda-builder"][0] == "builder"
    install = next(a for i, a in STAGES["cuda-builder"][1] if i == "RUN" and "pip install" in a)
    assert '"cellflow-rt[gpu]"' in install and "/src" not in install
    assert "[cuda,cudnn]" in install, "onnxruntime-gpu's extras bring the CUDA and cuDNN runtime wheels"
    assert '"numba-cuda[cu13]' in install, "numba-cuda's CUDA 13 wheels (NVVM, NVRTC) for the GPU dynamics"
    # both packages ship the `onnxruntime` module: the CPU one goes, the GPU one is put back after it
    assert install.index("uninstall -y onnxruntime") < install.rindex("--force-reinstall")
    runs = " ".join(a for i, a in STAGES["cuda"][1] if i == "RUN")
    assert "nvidia/cu13/lib" in runs and "nvidia/cudnn/lib" in runs and "ldconfig" in runs


def test_the_build_context_is_only_what_the_dockerfile_copies():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for _, instructions in STAGES.values():
        for instruction, args in instructions:
            if instruction == "COPY" and not args.startswith("--from="):
                copied.update(args.split()[:-1])
    assert "*" in lines and copied == included, (copied, included)


def test_published_models_can_be_pulled_into_both_images_at_build_time():
    builder = STAGES["builder"][1]
    assert ("ARG", 'CELLFLOW_RT_PULL=""') in builder, "a plain build pulls nothing (no network needed)"
    pull = next(a for i, a in builder if i == "RUN" and "models pull" in a)
    assert "CELLFLOW_RT_MODELS_DIR=/opt/cellflow-rt/models" in pull and 'if [ -n "${CELLFLOW_RT_PULL}" ]' in pull
    assert STAGES["cuda-builder"][0] == "builder", "the CUDA image inherits the pulled models"
    runtime_env = " ".join(a for i, a in STAGES["runtime-base"][1] if i == "ENV")
    assert "CELLFLOW_RT_MODELS_DIR=/opt/cellflow-rt/models" in runtime_env
