"""Segment many image files: read, segment, write outputs; one bad file never stops the others.

Used by ``cellflow-rt run``. Each input is handled in isolation: an exception is recorded as a
failure for that file (with a one-line reason) and the batch moves on.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from .io import image_stem
from .loaded_model import LoadedModel
from .pipeline import Segmentation, finish, predict
from .restore import Restoration, RestoreStep
from .settings import EvalSettings


@dataclass(frozen=True)
class OutputOptions:
    """Which files to write and where (Cellpose's flags)."""

    savedir: Optional[Path] = None
    save_npy: bool = True
    save_png: bool = False
    save_tif: bool = False
    save_txt: bool = False
    save_rois: bool = False
    save_geojson: bool = False
    save_flows: bool = False
    save_ome: bool = False
    save_restored: bool = False


@dataclass
class FileResult:
    """Outcome of one input file."""

    path: Path
    ok: bool
    n_masks: int = 0
    diameter: float = float("nan")
    seconds: float = 0.0
    outputs: List[Path] = field(default_factory=list)
    error: str = ""
    skipped: bool = False


def expected_outputs(path: Path, options: OutputOptions) -> List[Path]:
    """Files a run with ``options`` writes for ``path`` (used by ``--skip_existing``).

    Names follow :mod:`cellflow_rt.outputs`: the seg file and ROI zip go next to the image (as in
    Cellpose), everything else to ``savedir`` when given.
    """
    folder = Path(options.savedir) if options.savedir else path.parent
    suffixes = [(options.save_png, "_cp_masks.png"), (options.save_tif, "_cp_masks.tif"),
                (options.save_txt, "_cp_outlines.txt"), (options.save_geojson, ".geojson"),
                (options.save_flows, "_flows_cp_masks.tif"), (options.save_ome, "_cp_masks.ome.tif"),
                (options.save_restored, "_restored.tif")]
    stem = image_stem(path)
    files = [folder / f"{stem}{suffix}" for wanted, suffix in suffixes if wanted]
    if options.save_npy:
        files.append(path.parent / f"{stem}_seg.npy")
    if options.save_rois:
        files.append(path.parent / f"{stem}_rois.zip")
    return files


def write_outputs(path: Path, seg: Segmentation, settings: EvalSettings, options: OutputOptions,
                  restoration: Optional[Restoration] = None, restore_name: Optional[str] = None) -> List[Path]:
    """Write the requested output files for one segmented image; returns their paths.

    With image restoration, ``restoration`` (and the restore type's name) go into ``_seg.npy`` and,
    with ``save_restored``, ``<stem>_restored.tif``.
    """
    from . import outputs

    masks, savedir = seg.masks, options.savedir
    flows = [None, seg.dP, seg.cellprob]
    planar = masks.ndim == 2
    written: List[Path] = []
    if options.save_png or options.save_tif:
        written += outputs.save_masks(masks, path, png=options.save_png and planar,
                                      tif=options.save_tif or not planar, savedir=savedir)
    if options.save_npy:
        restored = {} if restoration is None else dict(img_restore=restoration.image, restore_type=restore_name)
        # ratio stays 1.0: Cellpose's command line writes 1.0 whatever the upsampling
        written.append(outputs.save_seg_npy(masks, flows, path, diameter=seg.diameter,
                                            channels=settings.channels or (0, 0), **restored))
    if options.save_txt and planar:
        written.append(outputs.save_outlines_txt(masks, path, savedir=savedir))
    if options.save_rois and planar:
        written.append(outputs.save_rois_zip(masks, path))
    if options.save_geojson and planar:
        written.append(outputs.save_geojson(masks, path, savedir=savedir))
    if options.save_flows:
        written += outputs.save_flows(flows, path, savedir=savedir)
    if options.save_ome:
        written.append(outputs.save_masks_ome_tif(masks, path, savedir=savedir))
    if options.save_restored and restoration is not None:
        written.append(outputs.save_restored(restoration.image, path, savedir=savedir))
    return [Path(p) for p in written if p]


def _read_and_predict(path: Path, model: LoadedModel, settings: EvalSettings, estimate: bool,
                      restore: Optional[RestoreStep] = None):
    """Network half of one file: read it, estimate its diameter if asked (or restore it), run the
    network; returns the prediction and the restoration (None without)."""
    from .diameter import estimate_diameter
    from .io import imread

    image = imread(path)
    restoration = None
    if restore is not None:
        restoration = restore.restore(image, settings)
        image, settings = restoration.image, restore.segmentation_settings(settings, restoration)
    elif estimate and not settings.do_3D and model.size_model is not None and np.asarray(image).ndim < 4:
        diameter, _ = estimate_diameter(image, model, settings)
        settings = settings.with_(diameter=diameter)
    return predict(image, model, settings), restoration


def _finish_and_write(path: Path, pending, settings: EvalSettings, options: OutputOptions, started: float,
                      restore: Optional[RestoreStep] = None) -> FileResult:
    """Dynamics half of one file: masks from the flows, then the output files."""
    prediction, restoration = pending
    seg = finish(prediction)
    # the user's settings: with restoration the prediction's channels are the restored image's
    files = write_outputs(path, seg, settings, options, restoration=restoration,
                          restore_name=restore.name if restore is not None else None)
    n_masks = int(np.count_nonzero(np.unique(seg.masks))) if seg.masks.size else 0
    return FileResult(path, True, n_masks=n_masks, diameter=seg.diameter, seconds=time.perf_counter() - started,
                      outputs=files)


def segment_file(path: Path, model: LoadedModel, settings: EvalSettings, options: OutputOptions,
                 estimate: bool, restore: Optional[RestoreStep] = None) -> FileResult:
    """Read, segment (estimating the diameter or restoring the image first, if asked) and write one file."""
    started = time.perf_counter()
    return _finish_and_write(path, _read_and_predict(path, model, settings, estimate, restore), settings, options,
                             started, restore)


def _failure(path: Path, exc: BaseException) -> FileResult:
    if isinstance(exc, MemoryError):
        return FileResult(path, False, error="out of memory")
    return FileResult(path, False, error=f"{type(exc).__name__}: {exc}")


def run_batch(paths: Sequence[Path], model: LoadedModel, settings: EvalSettings, options: OutputOptions,
              estimate: bool = False, skip_existing: bool = False,
              on_result: Optional[Callable[[int, FileResult], None]] = None,
              restore: Optional[RestoreStep] = None) -> List[FileResult]:
    """Segment every file; failures are recorded, never raised.

    The network of file i+1 runs in a worker thread while file i's dynamics and outputs run here
    (ONNX Runtime and the numba kernels release the GIL), so a GPU is kept busy in batch runs.

    Parameters
    ----------
    paths : sequence of Path
        Input images.
    model : LoadedModel
        The network.
    settings : EvalSettings
        Evaluation options (``diameter`` None/0 with ``estimate`` uses the size model).
    options : OutputOptions
        Files to write.
    estimate : bool
        Estimate each image's diameter with the model's size model.
    skip_existing : bool
        Skip inputs whose outputs all exist already.
    on_result : callable, optional
        Called with (index, FileResult) after each file (progress reporting).
    restore : RestoreStep, optional
        Image restoration before segmentation (``--restore_type``); no diameter estimate then.
    """
    paths = [Path(p) for p in paths]
    todo = [not (skip_existing and all(p.exists() for p in expected_outputs(path, options))) for path in paths]

    def start(i):
        if i >= len(paths) or not todo[i]:
            return None
        return time.perf_counter(), pool.submit(_read_and_predict, paths[i], model, settings, estimate, restore)

    results = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = start(0)
        for i, path in enumerate(paths):
            current = pending  # None: a skipped file (every file to do was started one step earlier)
            if current is None:
                pending = start(i + 1)
                result = FileResult(path, True, skipped=True)
            else:
                started, future = current
                try:
                    prediction = future.result()
                except Exception as exc:  # one bad file must not lose the others' results
                    prediction, result = None, _failure(path, exc)
                pending = start(i + 1)  # next file's network runs while this one's dynamics do
                if prediction is not None:
                    try:
                        result = _finish_and_write(path, prediction, settings, options, started, restore)
                    except Exception as exc:
                        result = _failure(path, exc)
                    del prediction
            results.append(result)
            if on_result is not None:
                on_result(i, result)
    return results
