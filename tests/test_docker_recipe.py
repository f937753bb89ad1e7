"""The Dockerfile's recipe, replayed without Docker (no engine runs here).

The ``builder`` stage is read from the Dockerfile and its instructions are run in order in a temporary
folder: ``COPY`` copies from the repository (honouring .dockerignore), ``ENV`` sets the environment,
``RUN`` runs with the stage's shell, with the image's absolute paths (/opt/venv, /src,
/opt/cellflow-rt ...) mapped into the folder. Steps that change the system (apt-get, useradd, the
base image's own pip) are skipped, and pip keeps its download cache (``PIP_NO_CACHE_DIR`` only keeps
the image layer small). Then the ``cpu`` stage's environment and its build-time check are replayed:
a run on the bundled example must compile nothing. The installed venv is then inspected: no torch,
no pip, no test suites, stripped libraries, masks equal to the development install's, and its size.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
#: Site-packages budget of the CPU install after slimming (measured 454 MB with both demo models,
#: numpy 2.4, scipy 1.17, numba 0.68, onnxruntime 1.32): the image stays under ~600 MB with the base.
SITE_BUDGET_MB = 480


# --------------------------------------------------------------------------------------------------
# reading the Dockerfile


def dockerfile_stages(text: str) -> dict:
    """Stage name -> list of (instruction, arguments), continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
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
            match = re.search(r"\bAS\s+(\S+)\s*$", args, re.I)
            name = match.group(1) if match else args
            stages[name] = []
        elif name is not None:
            stages[name].append((instruction, args.strip()))
    return stages


def _env_pairs(args: str):
    return re.findall(r'(\w+)=("[^"]*"|\S+)', args)


class Replay:
    """Runs Dockerfile instructions with the image's paths mapped under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = {"/opt/cellflow-rt": root / "opt-cellflow-rt", "/opt/venv": root / "venv",
                      "/src": root / "src", "/data": root / "data", "/home/cellflow": root / "home",
                      "/tmp/check": root / "check"}
        shim = root / "shim"
        shim.mkdir()
        # `python` in the recipe is the base image's interpreter: here, the one behind this venv
        (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
        self.base_env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}")
        for key in ("NUMBA_CACHE_DIR", "NUMBA_CPU_NAME", "VIRTUAL_ENV", "PYTHONPATH"):
            self.base_env.pop(key, None)
        self.env = dict(self.base_env)
        self.log = []

    def map(self, text: str) -> str:
        for image_path, local in self.paths.items():
            text = re.sub(rf"(?<![\w/.-]){re.escape(image_path)}(?=[/\s\"':\[$]|$)", str(local), text)
        return text

    def expand(self, value: str) -> str:
        value = value.strip('"')
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), ""), value)

    def new_stage(self):
        self.env = dict(self.base_env)

    def run(self, instruction: str, args: str, skip_system: bool = True) -> None:
        if instruction == "ENV":
            for key, value in _env_pairs(args):
                if key != "PIP_NO_CACHE_DIR":
                    self.env[key] = self.expand(self.map(value))
        elif instruction == "COPY":
            if args.startswith("--from="):
                self.log.append(f"skipped (same folders here): COPY {args}")
                return
            *sources, dest_text = args.split()
            dest_text = self.map(dest_text)
            into_folder = dest_text.endswith("/") or len(sources) > 1
            dest = Path(dest_text)
            for source in sources:  # Docker: a folder's contents go to dest; files into dest/ or as dest
                src = REPO / source
                copy_context(src, dest if src.is_dir() or not into_folder else dest / src.name)
        elif instruction == "RUN":
            if skip_system and re.search(r"\bapt-get\b|\buseradd\b|^python -m pip uninstall", args):
                self.log.append(f"skipped (system): RUN {args[:60]}...")
                return
            command = self.map(args)
            for path in self.paths.values():
                if path.name in ("data", "home"):
                    path.mkdir(exist_ok=True)
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.root, env=self.env,
                                  capture_output=True, text=True, timeout=900)
            self.log.append(f"RUN {command}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            assert proc.returncode == 0, f"RUN failed ({proc.returncode}): {command}\n{proc.stdout}\n{proc.stderr}"
        elif instruction in ("SHELL", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "ARG", "LABEL"):
            pass  # bash -o pipefail is used for every RUN; users and the workdir are the image's
        else:
            raise AssertionError(f"the replay does not know the instruction {instruction}")


def _ignored_patterns():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    return [ln.removeprefix("**/") for ln in lines if ln and not ln.startswith(("#", "!")) and ln != "*"]


def copy_context(source: Path, dest: Path) -> None:
    """Copy a file or folder of the build context, leaving out what .dockerignore excludes."""
    patterns = _ignored_patterns()

    def ignored(path: Path) -> bool:
        rel = path.relative_to(REPO).as_posix()
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(path.name, p) for p in patterns)

    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        return
    for path in sorted(source.rglob("*")):
        if any(ignored(p) for p in [path, *path.parents] if p != REPO and REPO in p.parents):
            continue
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


# --------------------------------------------------------------------------------------------------
# the replay


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if shutil.which("strip") is None:
        pytest.skip("strip (binutils) is needed by docker/slim-venv.sh")
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert {"builder", "cpu", "cuda-builder", "cuda"} <= set(stages), list(stages)
    root = tmp_path_factory.mktemp("image")
    replay = Replay(root)
    for instruction, args in stages["builder"]:
        replay.run(instruction, args)
    replay.new_stage()
    for instruction, args in stages["cpu"]:
        replay.run(instruction, args)  # ends with the build-time check: the example compiles nothing
    return replay


def _venv_python(replay) -> str:
    return str(replay.paths["/opt/venv"] / "bin" / "python")


def _site(replay) -> Path:
    out = subprocess.run([_venv_python(replay), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_dockerfile_orders_its_layers():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert list(stages)[-1] == "cpu", "a plain `docker build` must produce the CPU image"
    for name, builder in (("cpu", "builder"), ("cuda", "cuda-builder")):
        instructions = stages[name]
        kinds = [i for i, _ in instructions]
        assert ("ENTRYPOINT", '["cellflow-rt"]') in instructions
        assert ("USER", "10001") in instructions and kinds.index("USER") < kinds.index("ENTRYPOINT")
        copies = [a for i, a in instructions if i == "COPY"]
        assert copies == [f"--from={builder} /opt/venv /opt/venv",
                          f"--from={builder} /opt/cellflow-rt /opt/cellflow-rt"], copies
        assert not any("pip install" in a or "build-essential" in a or "gcc" in a for _, a in instructions)
    builder_runs = [a for i, a in stages["builder"] if i == "RUN"]
    order = [next(k for k, a in enumerate(builder_runs) if key in a)
             for key in ("pip install \"/src${EXTRAS}\"", "slim-venv.sh", "warm-cache.py")]
    assert order == sorted(order), "install, then slim, then warm the numba cache"
    assert ("ARG", 'EXTRAS=""') in stages["builder"], "a plain build installs no extras (no OpenVINO)"
    cuda_install = next(a for i, a in stages["cuda-builder"] if i == "RUN" and "pip install" in a)
    assert '"/src[gpu]"' in cuda_install and "uninstall -y onnxruntime" in cuda_install


def test_the_recipe_builds_and_warms_the_cache(image):
    cache = image.paths["/opt/cellflow-rt"] / "numba-cache"
    entries = list(cache.rglob("*.nbc"))
    assert len(entries) >= 20, f"expected the warm-up to cache every kernel, found {len(entries)}"
    assert all(os.stat(p).st_mode & 0o006 == 0o006 for p in [cache, *cache.rglob("*")]), \
        "the cache must be readable and writable by any uid"


def test_the_image_segments_the_example_like_the_development_install(image, tmp_path):
    env = dict(image.env)
    out = tmp_path / "image"
    proc = subprocess.run(["cellflow-rt", "run", "--example", "--savedir", str(out), "--save_tif", "--no_npy"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"example_nuclei\.tif: (\d+) cells", proc.stdout)
    import tifffile
    masks = tifffile.imread(out / "example_nuclei_cp_masks.tif")
    assert masks.max() >= 20
    dev = tmp_path / "dev"
    here = Path(sys.executable).parent / "cellflow-rt"
    proc = subprocess.run([str(here), "run", "--example", "--savedir", str(dev), "--save_tif", "--no_npy"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # generic-CPU kernels from the image's cache give the same masks as this machine's own
    np.testing.assert_array_equal(masks, tifffile.imread(dev / "example_nuclei_cp_masks.tif"))


def test_no_torch_no_pip_in_the_image(image):
    python = _venv_python(image)
    proc = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    proc = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named pip" in proc.stderr
    venv = image.paths["/opt/venv"]
    assert not list((venv / "bin").glob("pip*"))
    site = _site(image)
    for name in ("pip", "setuptools", "wheel"):
        assert not (site / name).exists(), name
    proc = subprocess.run([str(venv / "bin" / "cellflow-rt"), "export", "--help"], capture_output=True, text=True,
                          env=image.env)
    assert proc.returncode == 0 and "CHECKPOINT" in proc.stdout, proc.stderr


def test_no_test_suites_and_stripped_libraries(image):
    site = _site(image)
    assert [p for p in site.rglob("tests") if p.is_dir()] == []
    llvmlite = next(site.glob("llvmlite/binding/libllvmlite*.so*"))
    assert ".symtab" not in elf_section_names(llvmlite), "libllvmlite is not stripped"


def test_installed_size(image, tmp_path):
    site = _site(image)
    sizes = {}
    for entry in site.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    total = sum(sizes.values())
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:15]
    report = "\n".join(f"  {name:32s} {size / 1e6:8.1f} MB" for name, size in top)
    report += f"\n  {'total site-packages':32s} {total / 1e6:8.1f} MB"
    cache = sum(p.stat().st_size for p in (image.paths["/opt/cellflow-rt"]).rglob("*") if p.is_file())
    report += f"\n  {'numba cache':32s} {cache / 1e6:8.1f} MB"
    print("\ninstalled size of the image's venv:\n" + report)
    (image.root / "size.json").write_text(json.dumps({"site_packages": sizes, "numba_cache": cache}, indent=1))
    assert total / 1e6 <= SITE_BUDGET_MB, f"the CPU install grew past {SITE_BUDGET_MB} MB:\n{report}"


# --------------------------------------------------------------------------------------------------


def elf_section_names(path: Path) -> set:
    """Section names of a 64-bit little-endian ELF file (enough to tell a stripped library)."""
    with open(path, "rb") as f:
        header = f.read(64)
        assert header[:4] == b"\x7fELF" and header[4] == 2 and header[5] == 1, f"{path}: not ELF64-LE"
        shoff, = struct.unpack_from("<Q", header, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_offset, str_size = sections[shstrndx]
        f.seek(str_offset)
        strings = f.read(str_size)
    return {strings[name:strings.index(b"\0", name)].decode() for name, *_ in sections}
