"""Show that the parity tests catch a small difference: shrink a few cells of every reference case by
one pixel and run the parity tests against the altered copy; every altered case must fail.

    .venv/bin/python tests/tools/alter_reference.py [--reference ../shared/reference] [--cells 3]

The reference is copied to a temporary folder (``../shared`` is read-only and never touched): in
every 2D and 3D case, ``outputs.npz``'s masks and each recorded dynamics call's masks lose the
outer pixels of their ``--cells`` largest cells (in 3D, in the cell's largest plane), which leaves
AP@0.5 against the original at 1.0 (checked). Then the end-to-end parity tests
(``test_parity_2d.py``, ``test_parity_3d.py``) and the dynamics replays (``test_dynamics.py``,
``test_dynamics_3d.py``) run with ``CELLFLOW_RT_REFERENCE`` pointing at the copy. Prints, per case,
the altered cells, AP@0.5/0.9 of the altered masks against the original, and the tests that failed.
Exit status 0 when every altered case has a failing end-to-end test and a failing dynamics replay;
1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: the tests whose parametrisation names a case (end to end) or a case and call (dynamics)
TESTS = ["tests/parity/test_parity_2d.py::test_end_to_end_matches_cellpose", "tests/parity/test_parity_3d.py",
         "tests/dynamics/test_dynamics.py::test_reference_calls_2d", "tests/dynamics/test_dynamics.py::test_stitch_planes_are_2d_calls",
         "tests/dynamics/test_dynamics_3d.py::test_reference_do_3D", "tests/dynamics/test_dynamics_3d.py::test_stitch_reference_case"]


def shrink_cells(masks: np.ndarray, n_cells: int) -> tuple:
    """Copy of ``masks`` whose ``n_cells`` largest cells lose their outer pixels (one pixel all round).

    Parameters
    ----------
    masks : ndarray of int
        2D or 3D labels.
    n_cells : int
        How many cells to shrink (the largest, so that each keeps IoU > 0.5 with itself).

    Returns
    -------
    altered : ndarray
        The labels with those cells eroded by one pixel (in 3D: in the plane where the cell is largest).
    labels : list of int
        The shrunk cells.
    """
    altered = masks.copy()
    ids, counts = np.unique(masks[masks > 0], return_counts=True)
    chosen = ids[np.argsort(-counts, kind="stable")[:n_cells]].tolist()
    for label in chosen:
        cell = masks == label
        if masks.ndim == 3:  # one plane only: a 3D erosion would take too much of a small nucleus
            z = int(np.argmax(cell.sum(axis=(1, 2))))
            plane = cell[z]
            altered[z][plane & ~ndimage.binary_erosion(plane)] = 0
        else:
            altered[cell & ~ndimage.binary_erosion(cell)] = 0
    return altered, chosen


def _rewrite(npz: Path, n_cells: int):
    data = dict(np.load(npz))
    original = data["masks"]
    data["masks"], chosen = shrink_cells(original, n_cells)
    npz.unlink()  # the copy's file; rewritten, not edited in place
    np.savez(npz, **data)
    return original, data["masks"], chosen


def alter(reference: Path, copy: Path, n_cells: int) -> dict:
    """Copy ``reference`` into ``copy``, shrinking cells in 2d/ and 3d/; returns case -> what was done."""
    from cellflow_rt.metrics import matching_summary

    shutil.copytree(reference, copy)
    for path in copy.rglob("*"):  # the shared copy is read-only; ours must be writable
        path.chmod(0o755 if path.is_dir() else 0o644)
    report = {}
    for kind in ("2d", "3d"):
        for case in sorted(p for p in (copy / kind).iterdir() if p.is_dir()):
            original, altered, chosen = _rewrite(case / "outputs.npz", n_cells)
            s = matching_summary(original, altered)
            calls = sorted(case.glob("dynamics_*.npz"))
            for call in calls:
                _rewrite(call, n_cells)
            report[f"{kind}/{case.name}"] = dict(cells=chosen, ap50=s["ap_0.5"], ap90=s["ap_0.9"],
                                                 pixels=int(np.count_nonzero(original != altered)),
                                                 calls=[int(c.stem.split("_")[1]) for c in calls])
    return report


def failed_tests(copy: Path) -> list:
    """Node ids of the parity tests that fail against the altered copy."""
    env = dict(os.environ, CELLFLOW_RT_REFERENCE=str(copy))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True)
    return re.findall(r"^FAILED (\S+)", run.stdout, flags=re.M)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    parser.add_argument("--cells", type=int, default=3, help="cells shrunk per case and per dynamics call")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "reference"
        report = alter(args.reference, copy, args.cells)
        failed = failed_tests(copy)
    missed = 0
    for case, r in report.items():
        name = case.split("/")[1]
        end_to_end = [f for f in failed if "test_dynamics" not in f and f"[{name}]" in f]
        pattern = re.compile(rf"[\[/]{re.escape(name)}(-\d+)?\]")  # test_reference_calls_2d[2d/CASE-i]
        replays = [f for f in failed if "test_dynamics" in f and (pattern.search(f) or ("stitch" in name and "stitch" in f))]
        ok = bool(end_to_end) and bool(replays)
        missed += not ok
        print(f"{'caught' if ok else 'MISSED'} {case:34s} cells {r['cells']} ({r['pixels']} px), "
              f"AP50 {r['ap50']:.3f} AP90 {r['ap90']:.3f}; failing: {len(end_to_end)} end-to-end, "
              f"{len(replays)} dynamics replay(s) ({len(r['calls'])} calls recorded)")
    print(f"{len(report) - missed} of {len(report)} altered cases caught; {len(failed)} tests failed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
