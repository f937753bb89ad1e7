"""What travels to the GPU machine, cut to the tool's 64 MiB per call: ``pack`` here, ``unpack`` there.

Standard library only (it runs under any python3, here and on the GPU machine).

``pack`` (run by ``prepare.sh``) builds ``.gpu/``:

- ``call1/``: what the first call needs at once (part A's dynamics check: the recorded dynamics
  calls of ``../shared/reference`` in the same layout, with their ``params.json``), the small wheels
  (Cellpose 3.1.1.1 and the packages it needs that the machine lacks), ``manifest.json`` and the
  first slice of the payload;
- ``call2/`` .. ``callN/``: one slice each;
- the payload is two xz-compressed tars, one after the other: ``data`` (the shared reference
  images, parameters and masks of the 2D cases, ``shared/tools/synth.py``, the bundled ONNX models
  with their manifests next to the Cellpose checkpoints they were exported from: adjacent, so that
  xz stores their common weights once, about 106 MB -> 57 MB) and ``ort`` (the unpacked
  onnxruntime-gpu wheel, through xz's x86 filter: its libraries come out far smaller than in the
  wheel's zip, 244 -> about 195 MiB);
- ``CALLS.md``: the exact sequence of ``run`` calls for this preparation.

A call may carry 64 MiB in all, the checkout included; ``pack`` measures the checkout as it will
travel (tracked files present on disk and untracked files git does not ignore, so run ``prepare.sh
stash`` first or not: the ONNX files are left out of the count either way because they must be
stashed) and sizes the slices to fit, with a margin.

``unpack`` (run by ``device.sh`` on the GPU machine) checks that every slice arrived and that the
joined payload has the recorded sha256, then extracts it.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

LIMIT = 64 * 2**20
#: Left free in every call (``$GPU_CALL_MARGIN_MIB``, default 0.5): the checkout may change a little
#: between ``pack`` and the calls.
MARGIN = int(float(os.environ.get("GPU_CALL_MARGIN_MIB", "0.5")) * 2**20)
PAYLOAD = "payload.bin"
#: The payload's archives, in order, and their xz filters (x86 branch conversion for machine code).
ARCHIVES = ("data", "ort")
_LZMA2 = {"id": lzma.FILTER_LZMA2, "preset": 9}
FILTERS = {"data": [_LZMA2], "ort": [{"id": lzma.FILTER_X86}, _LZMA2]}


def checkout_bytes(repo: Path) -> int:
    """Bytes of the checkout as a call sends it, without the bundled ONNX models (they are stashed)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    total = 0
    for name in {n.decode() for n in listed if n}:
        path = repo / name
        if path.is_file() and not (name.startswith("models/") and name.endswith(".onnx")):
            total += path.stat().st_size
    return total


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_call1(shared: Path, wheels: Path, call1: Path) -> None:
    """Part A's data (dynamics calls, both 2d and 3d, as laid out in ../shared/reference) and the small wheels."""
    if call1.exists():
        shutil.rmtree(call1)
    for dim in ("2d", "3d"):
        for case in sorted((shared / "reference" / dim).iterdir()):
            target = call1 / "data" / "reference" / dim / case.name
            target.mkdir(parents=True)
            for f in sorted(case.glob("dynamics_*")) + [case / "params.json"]:
                shutil.copyfile(f, target / f.name)
    (call1 / "wheels").mkdir()
    for wheel in sorted(wheels.glob("*.whl")):
        if not wheel.name.startswith("onnxruntime"):
            shutil.copyfile(wheel, call1 / "wheels" / wheel.name)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_archive(name: str, repo: Path, shared: Path, ort_wheel: Path, target: Path) -> None:
    """One of the payload's xz-compressed tars (see the module docstring)."""
    tmp = target.with_suffix(".partial")
    with lzma.open(tmp, "wb", format=lzma.FORMAT_XZ, filters=FILTERS[name]) as xz, \
            tarfile.open(fileobj=xz, mode="w") as tar:
        if name == "ort":
            with zipfile.ZipFile(ort_wheel) as wheel:
                for member in wheel.infolist():
                    if not member.is_dir():
                        _add_bytes(tar, f"site/{member.filename}", wheel.read(member))
        else:
            tar.add(shared / "tools" / "synth.py", "shared/tools/synth.py")
            for case in sorted((shared / "reference" / "2d").iterdir()):
                for file in ("image.tif", "params.json"):
                    tar.add(case / file, f"ref2d/{case.name}/{file}")
                with zipfile.ZipFile(case / "outputs.npz") as npz:  # the masks alone, as .npy
                    _add_bytes(tar, f"ref2d/{case.name}/masks.npy", npz.read("masks.npy"))
            for model, checkpoint in (("nuclei_demo", "cellflow_nuclei_demo"), ("cyto_demo", "cellflow_cyto_demo")):
                tar.add(repo / "models" / f"{model}.json", f"models/{model}.json")
                onnx = repo / "models" / f"{model}.onnx"
                tar.add(onnx if onnx.is_file() else repo / ".gpu" / "stash" / onnx.name, f"models/{model}.onnx")
                tar.add(shared / "weights" / checkpoint, f"weights/{checkpoint}")
    tmp.replace(target)


def _sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def split_payload(payload: Path, gpu_dir: Path, checkout: int, archive_sizes=None) -> int:
    """Cut the payload into the calls' slices; write manifest.json and CALLS.md. Returns the number of calls.

    ``archive_sizes`` lists (name, bytes) of the archives joined in ``payload``, in order.
    """
    archive_sizes = [list(a) for a in (archive_sizes or [("data", payload.stat().st_size)])]
    for old in gpu_dir.glob("call*/stream.part*"):
        old.unlink()
    for old in gpu_dir.glob("call[0-9]*"):
        if old.name != "call1":
            shutil.rmtree(old)
    call1 = gpu_dir / "call1"
    capacity = LIMIT - checkout - MARGIN
    first = capacity - _tree_bytes(call1) - 16 * 1024  # room for manifest.json
    if first <= 0:
        raise SystemExit(f"call 1's data ({_tree_bytes(call1)} bytes) and the checkout ({checkout}) leave no room")
    size = payload.stat().st_size
    slices, start, k = [], 0, 1
    while start < size:
        length = first if k == 1 else capacity
        slices.append((k, start, min(size, start + length)))
        start += length
        k += 1
    with open(payload, "rb") as src:
        for k, a, b in slices:
            folder = gpu_dir / f"call{k}"
            folder.mkdir(exist_ok=True)
            src.seek(a)
            (folder / f"stream.part{k:02d}").write_bytes(src.read(b - a))
    manifest = {"slices": len(slices), "payload_bytes": size, "payload_sha256": _sha256([payload]),
                "archives": archive_sizes,
                "checkout_bytes": checkout, "call_bytes": {f"call{k}": _tree_bytes(gpu_dir / f"call{k}")
                                                           for k, _, _ in slices}}
    (call1 / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (gpu_dir / "CALLS.md").write_text(calls_markdown(manifest))
    return len(slices)


def calls_markdown(manifest: dict) -> str:
    """The sequence of ``run`` calls for a manifest (also printed by ``prepare.sh``)."""
    n = manifest["slices"]
    lines = [f"# The GPU check in {n} calls (made by bench/gpu/prepare.sh; see bench/gpu/README.md)", "",
             f"Checkout {manifest['checkout_bytes'] / 2**20:.1f} MiB without the ONNX models; payload "
             f"{manifest['payload_bytes'] / 2**20:.1f} MiB in {n} slices. Run `bench/gpu/prepare.sh stash` first "
             "and `bench/gpu/prepare.sh restore` after the last call. Issue each call as soon as the one before "
             "returns: the machine goes back 30 s after a call.", "",
             "| call | carry | command | timeout_s | MiB carried |", "|---|---|---|---|---|"]
    for k in range(1, n + 1):
        step = "first" if k == 1 else "last" if k == n else "part"
        timeout = {"first": 300, "part": 60, "last": 480}[step]
        carried = manifest["call_bytes"].get(f"call{k}", 0) / 2**20
        lines.append(f"| {k} | `[\".gpu/call{k}\"]` | `bash bench/gpu/device.sh {step}` | {timeout} | "
                     f"{carried:.1f} (+ checkout {manifest['checkout_bytes'] / 2**20:.1f}) |")
    return "\n".join(lines) + "\n"


def unpack(state: Path) -> None:
    """Join the slices kept in ``state/parts``, check them against the manifest, extract to ``state/payload``."""
    manifest = json.loads((state / "manifest.json").read_text())
    parts = sorted((state / "parts").glob("stream.part*"))
    if len(parts) != manifest["slices"]:
        raise SystemExit(f"{len(parts)} of {manifest['slices']} slices on this machine: a call was missed or the "
                         "machine was replaced; start again at call 1")
    digest = _sha256(parts)
    if digest != manifest["payload_sha256"]:
        raise SystemExit(f"payload sha256 {digest} != {manifest['payload_sha256']}: a slice is damaged")
    joined = state / PAYLOAD
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
            part.unlink()
    target = state / "payload"
    offset = 0
    with open(joined, "rb") as f:
        for name, size in manifest["archives"]:
            f.seek(offset)
            with tarfile.open(fileobj=lzma.LZMAFile(io.BytesIO(f.read(size))), mode="r:") as tar:
                tar.extractall(target, filter="data") if sys.version_info >= (3, 12) else tar.extractall(target)
            offset += size
    joined.unlink()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    p.add_argument("--shared", type=Path, default=None)
    p.add_argument("--wheels", type=Path, required=True, help="folder of the downloaded wheels")
    p.add_argument("--gpu-dir", type=Path, default=None)
    u = sub.add_parser("unpack")
    u.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "unpack":
        unpack(args.state)
        return
    repo = args.repo.resolve()
    shared = (args.shared or repo.parent / "shared").resolve()
    gpu_dir = (args.gpu_dir or repo / ".gpu").resolve()
    ort_wheel = next(args.wheels.glob("onnxruntime_gpu-*.whl"))
    build_call1(shared, args.wheels, gpu_dir / "call1")
    build = gpu_dir / "build"
    build.mkdir(parents=True, exist_ok=True)
    stamp = build / "inputs.json"
    inputs = json.dumps([ort_wheel.name, ort_wheel.stat().st_size, checkout_inputs(repo, shared),
                         {k: str(v) for k, v in FILTERS.items()}])
    archives = [build / f"{name}.tar.xz" for name in ARCHIVES]
    if not all(a.is_file() for a in archives) or not stamp.is_file() or stamp.read_text() != inputs:
        print(f"compressing the payload (xz -9, minutes) into {build}", file=sys.stderr, flush=True)
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(len(ARCHIVES)) as pool:
            for done in [pool.submit(build_archive, name, repo, shared, ort_wheel, archive)
                         for name, archive in zip(ARCHIVES, archives)]:
                done.result()
        stamp.write_text(inputs)
    payload = build / PAYLOAD
    with open(payload, "wb") as out:
        for archive in archives:
            with open(archive, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    sizes = [(name, archive.stat().st_size) for name, archive in zip(ARCHIVES, archives)]
    n = split_payload(payload, gpu_dir, checkout_bytes(repo), sizes)
    payload.unlink()
    print((gpu_dir / "CALLS.md").read_text())
    print(f"{n} calls prepared in {gpu_dir}", file=sys.stderr)


def checkout_inputs(repo: Path, shared: Path) -> list:
    """Sizes of the payload's inputs from the checkout and ../shared (a changed input rebuilds the payload)."""
    files = [repo / "models" / f"{m}.json" for m in ("nuclei_demo", "cyto_demo")]
    files += [shared / "weights" / w for w in ("cellflow_nuclei_demo", "cellflow_cyto_demo")]
    files += sorted((shared / "reference" / "2d").glob("*/image.tif"))
    return [[f.name, f.stat().st_size] for f in files]


if __name__ == "__main__":
    main()
