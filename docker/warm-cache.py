"""Pre-warm numba's cache for an image (the Dockerfile's builder stages).

Runs ``cellflow-rt run`` in this process on the bundled example (2D with the diameter estimated and
every output format, without resampling, with nearest-pixel flows) and on a small Z-stack made from
it (``--do_3D`` and ``--stitch_threshold``), so that every numba kernel a user's run needs is
compiled into ``$NUMBA_CACHE_DIR`` at build time. Set ``NUMBA_CPU_NAME=generic`` for a cache that
any x86-64 machine can use (numba keys cache entries on the CPU name and features).

With ``--prune-bytecode``, removes the ``.pyc`` files of every module of the environment that these
runs did not import (most of scipy, numba and numpy): Python compiles those from source on the rare
run that needs them, while the imports of every run keep their bytecode (without it each start costs
about 1.5 s more).

Usage: python warm-cache.py [--prune-bytecode]
"""
from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

RUNS = [
    ["--diameter", "0", "--save_png", "--save_tif", "--save_txt", "--save_rois", "--save_geojson",
     "--save_flows", "--save_ome"],
    ["--no_resample", "--no_npy", "--save_tif"],
    ["--no_interp", "--flow_threshold", "0", "--no_npy", "--save_tif"],
]
STACK_RUNS = [
    ["--do_3D", "--z_axis", "0", "--no_npy", "--save_tif"],
    ["--stitch_threshold", "0.5", "--z_axis", "0", "--no_npy", "--save_tif"],
]


def _cli(args) -> None:
    from cellflow_rt.cli import main

    try:
        main(args, prog_name="cellflow-rt", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f"warm-up run failed: cellflow-rt {' '.join(args)}") from None


def warm(workdir: Path) -> None:
    import numpy as np
    import tifffile

    from cellflow_rt.examples import EXAMPLE_DIAMETER, EXAMPLE_MODEL, example_image_path

    for i, extra in enumerate(RUNS):
        _cli(["run", "--example", "--savedir", str(workdir / f"run{i}"), *extra])
    image = tifffile.imread(example_image_path())
    stack = np.stack([image[k:k + 96, k:k + 96] for k in range(0, 24, 3)])  # 8 planes, drifting
    tifffile.imwrite(workdir / "stack.tif", stack)
    for extra in STACK_RUNS:
        _cli(["run", str(workdir / "stack.tif"), "--model", EXAMPLE_MODEL, "--diameter", str(EXAMPLE_DIAMETER),
              *extra])


def prune_bytecode() -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    used = {Path(m.__cached__).resolve() for m in list(sys.modules.values())
            if isinstance(getattr(m, "__cached__", None), str)}
    kept = removed = 0
    for pyc in site.rglob("*.pyc"):
        size = pyc.stat().st_size
        if pyc in used or "cellflow_rt" in pyc.parts:
            kept += size
        else:
            pyc.unlink()
            removed += size
    print(f"bytecode: kept {kept / 1e6:.1f} MB (imported by the runs), removed {removed / 1e6:.1f} MB")


def main(argv) -> None:
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache:
        raise SystemExit("set NUMBA_CACHE_DIR to the image's cache folder")
    before = {p: p.stat().st_mtime_ns for p in Path(cache).rglob("*") if p.is_file()}
    with tempfile.TemporaryDirectory() as tmp:
        warm(Path(tmp))
    after = {p: p.stat() for p in Path(cache).rglob("*") if p.is_file()}
    written = sum(before.get(p) != st.st_mtime_ns for p, st in after.items())
    size = sum(st.st_size for st in after.values())
    print(f"numba cache: {cache}, {len(after)} files ({written} written by these runs), {size / 1e6:.1f} MB "
          f"(cpu {os.environ.get('NUMBA_CPU_NAME') or 'host'})")
    if "--prune-bytecode" in argv:
        prune_bytecode()


if __name__ == "__main__":
    main(sys.argv[1:])
