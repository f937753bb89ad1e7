"""What bench.py, reference_worker.py and startup.py share: the cases, their images, stage names.

This file must import in both environments (the project's and the reference's): numpy and the
standard library only at import time; scipy/scikit-image (needed by ``shared/tools/synth.py``) only
when an image has to be generated.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFLOW_RT_SHARED", ROOT.parent / "shared"))
DATA_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cellflow-rt" / "bench"

#: Stages timed on both sides, in table order. ``*_sub`` stages are parts of the stage above them.
STAGES = [
    ("read", "read image"),
    ("preprocess", "preprocess (channels, normalise)"),
    ("network", "network (resize, tiles, net, blend, resize back)"),
    ("forward", "  net forward only"),
    ("masks", "masks (all of the dynamics below + resize)"),
    ("euler", "  Euler integration"),
    ("clustering", "  clustering (seeds, growth, labels)"),
    ("flow_qc", "  flow QC (flow_threshold)"),
    ("fill", "  fill holes + min_size"),
    ("stitch", "  stitch across Z"),
    ("outputs", "outputs (_seg.npy + _cp_masks.tif)"),
    ("total", "end to end (read .. outputs)"),
]


@dataclass(frozen=True)
class Case:
    """One benchmark case: an image, a model, Cellpose eval keyword arguments."""

    name: str
    kind: str          # nuclei | cyto | volume
    shape: tuple       # image shape as stored (channels first for cyto)
    model: str         # bundled cellflow-rt model name
    weights: str       # checkpoint file name under shared/weights
    synth_diameter: float
    eval: dict = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return int(np.prod([s for s, ax in zip(self.shape, self.axes) if ax in "ZYX"]))

    @property
    def axes(self) -> str:
        return {"nuclei": "YX", "cyto": "CYX", "volume": "ZYX"}[self.kind]

    @property
    def size_label(self) -> str:
        return "x".join(str(s) for s, ax in zip(self.shape, self.axes) if ax != "C")


def _cases() -> Dict[str, Case]:
    out = {}
    for n in (512, 1024, 2048):
        out[f"nuclei_{n}"] = Case(f"nuclei_{n}", "nuclei", (n, n), "nuclei_demo", "cellflow_nuclei_demo", 20.0,
                                  dict(channels=[0, 0], diameter=20.0))
        out[f"cyto_{n}"] = Case(f"cyto_{n}", "cyto", (2, n, n), "cyto_demo", "cellflow_cyto_demo", 30.0,
                                dict(channels=[1, 2], channel_axis=0, diameter=30.0))
    for suffix, vol in (("", (32, 256, 256)), ("_small", (16, 128, 128))):
        out[f"vol_do3D{suffix}"] = Case(f"vol_do3D{suffix}", "volume", vol, "nuclei_demo", "cellflow_nuclei_demo",
                                        17.0, dict(channels=[0, 0], z_axis=0, diameter=17.0, do_3D=True))
        out[f"vol_stitch{suffix}"] = Case(f"vol_stitch{suffix}", "volume", vol, "nuclei_demo", "cellflow_nuclei_demo",
                                          17.0, dict(channels=[0, 0], z_axis=0, diameter=17.0, stitch_threshold=0.5))
    return out


CASES = _cases()


def case_from_dict(d: dict) -> Case:
    d = dict(d)
    d["shape"] = tuple(d["shape"])
    return Case(**d)


def case_to_dict(case: Case) -> dict:
    return asdict(case)


# ---------------------------------------------------------------------------------------------
# images: shared/tools/synth.py, assembled from tiles (its generators cost O(n^4); a 2048^2 image
# in one piece takes many minutes) and cached on disk.
def _synth():
    tools = str(SHARED / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import synth  # noqa: E402  (shared/tools/synth.py)
    return synth


def _u16(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, 65535).astype(np.uint16)


def _mosaic(make_tile: Callable[[np.random.Generator], np.ndarray], ny: int, nx: int, seed: int) -> np.ndarray:
    rows = []
    for i in range(ny):
        rows.append(np.concatenate([make_tile(np.random.default_rng([seed, i, j])) for j in range(nx)], axis=-1))
    return np.concatenate(rows, axis=-2)


TILE = {"nuclei": 256, "cyto": 256, "volume": 128}


def generate_image(case: Case, seed: int = 6) -> np.ndarray:
    """The synthetic image of a case (deterministic for a seed)."""
    synth = _synth()
    t = TILE[case.kind]
    d = case.synth_diameter
    ny, nx = -(-case.shape[-2] // t), -(-case.shape[-1] // t)
    if case.kind == "nuclei":
        img = _mosaic(lambda r: synth.nuclei_image(r, n=t, diam=d)[0], ny, nx, seed)
    elif case.kind == "cyto":
        img = _mosaic(lambda r: synth.cyto_image(r, n=t, diam=d)[0], ny, nx, seed)
    else:
        nz = case.shape[0]
        img = _mosaic(lambda r: synth.nuclei_volume(r, nz=nz, n=t, diam=d)[0], ny, nx, seed)
    return _u16(img[..., :case.shape[-2], :case.shape[-1]])


def image_path(case: Case, data_dir: Path = DATA_DIR, seed: int = 6) -> Path:
    """Path of the case's cached image (uint16 TIFF), generated on first use."""
    data_dir = Path(data_dir)
    path = data_dir / f"{case.kind}_{'x'.join(map(str, case.shape))}_d{case.synth_diameter:g}_s{seed}.tif"
    if not path.is_file():
        import tifffile
        data_dir.mkdir(parents=True, exist_ok=True)
        tic = time.perf_counter()
        img = generate_image(case, seed)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tifffile.imwrite(tmp, img)
        os.replace(tmp, path)
        print(f"generated {path.name} in {time.perf_counter() - tic:.1f} s", file=sys.stderr, flush=True)
    return path


# ---------------------------------------------------------------------------------------------
# measurement helpers (used inside the workers)
def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageClock:
    """Accumulates seconds per stage; ``wrap`` times a module attribute without changing its result.

    Wall time in ``seconds``; CPU time of the whole process (all threads: ORT, torch, numba) during
    the stage in ``cpu_seconds`` under the same key. The stages run one after the other in the
    main thread, so each one's CPU time is its own; on a shared machine it is steadier than wall time.
    """

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self.cpu_seconds: Dict[str, float] = {}
        self._originals: List[tuple] = []

    def reset(self) -> None:
        self.seconds = {}
        self.cpu_seconds = {}

    def add(self, key: str, seconds: float, cpu_seconds: Optional[float] = None) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        if cpu_seconds is not None:
            self.cpu_seconds[key] = self.cpu_seconds.get(key, 0.0) + cpu_seconds

    def record(self) -> dict:
        """This run's numbers: wall seconds by stage, and CPU seconds as ``cpu:<stage>``."""
        return {**self.seconds, **{f"cpu:{k}": v for k, v in self.cpu_seconds.items()}}

    @contextmanager
    def time(self, key: str):
        tic, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - tic, time.process_time() - cpu)

    def wrap(self, owner, name: str, key: str) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            tic, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                clock.add(key, time.perf_counter() - tic, time.process_time() - cpu)

        timed.__wrapped__ = original
        timed.__name__ = getattr(original, "__name__", name)
        setattr(owner, name, timed)
        self._originals.append((owner, name, original))


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=_plain))


def _plain(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def thread_env(threads: int, base: Optional[dict] = None) -> dict:
    """Environment for a worker limited to ``threads`` threads (numba, OpenMP, BLAS, ORT)."""
    env = dict(os.environ if base is None else base)
    if threads > 0:
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "CELLFLOW_RT_THREADS"):
            env[var] = str(threads)
    return env
