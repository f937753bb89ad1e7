"""Segment many image files: read, segment, write outputs; one bad file never stops the others.

Used by ``cellflow-rt run``. Each input is handled in isolation: an exception is recorded as a
failure for that file (with a one-line reason) and the batch moves on.

Two schedules. On the CPU (or with the dynamics on the CPU) the network of file i+1 runs in a
worker thread while file i's dynamics and outputs run in the caller's thread. On the GPU path
(network and dynamics both on the device, :func:`~cellflow_rt.pipeline.device_resident`) the device
does all the computing, so the host's share is taken off its way: a reader thread reads and
normalises the next files, the caller's thread runs the network and dynamics of one file after
another, and a writer thread writes each result while the next one computes (streaming).
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from .io import image_stem
from .io.paths import MASKS_SUFFIX, OutputLayout
from .loaded_model import LoadedModel
from .family import family_of
from .pipeline import device_resident, finish, predict, predict_prepared, prepare_image
from .results import Prediction, Segmentation
from .restore import Restoration, RestoreStep
from .settings import EvalSettings


@dataclass(frozen=True)
class OutputOptions:
    """Which files to write and where (Cellpose's flags; see :class:`~cellflow_rt.io.paths.OutputLayout`
    for ``savedir``, ``dir_above``, ``in_folders`` and ``suffix``, Cellpose's ``--output_name``).

    ``exclude_on_edges`` drops the masks touching the border before anything is written.
    """

    savedir: Optional[Path] = None
    save_npy: bool = True
    save_png: bool = False
    save_tif: bool = False
    save_txt: bool = False
    save_rois: bool = False
    save_geojson: bool = False
    save_flows: bool = False
    save_ome: bool = False
    save_outlines: bool = False
    save_mpl: bool = False
    exclude_on_edges: bool = False
    dir_above: bool = False
    in_folders: bool = False
    suffix: str = MASKS_SUFFIX
    save_restored: bool = False

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.savedir, self.dir_above, self.in_folders, self.suffix)

    @property
    def pictures(self) -> bool:
        """Whether the outputs need a picture of the image (outline picture, summary figure)."""
        return self.save_outlines or self.save_mpl


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
    timings: dict = field(default_factory=dict)


def expected_outputs(path: Path, options: OutputOptions) -> List[Path]:
    """Files a run with ``options`` writes for a 2D ``path`` (used by ``--skip_existing``).

    Names and folders follow :func:`write_outputs`: the seg file and ROI zip next to the image (as in
    Cellpose), everything else in the folders of ``options.layout``.
    """
    layout, suffix = options.layout, options.suffix
    wanted = [(options.save_png, "masks", f"{suffix}.png"), (options.save_tif, "masks", f"{suffix}.tif"),
              (options.save_ome, "masks", f"{suffix}.ome.tif"), (options.save_txt, "txt", "_cp_outlines.txt"),
              (options.save_geojson, "txt", ".geojson"), (options.save_flows, "flows", f"_flows{suffix}.tif"),
              (options.save_outlines, "outlines", f"_outlines{suffix}.png"),
              (options.save_mpl, "figure", f"_cp_output{suffix}.png"),
              (options.save_restored, "masks", "_restored.tif")]
    stem = image_stem(path)
    files = [layout.folder(path, kind) / f"{stem}{ending}" for on, kind, ending in wanted if on]
    if options.save_npy:
        files.append(path.parent / f"{stem}_seg.npy")
    if options.save_rois:
        files.append(path.parent / f"{stem}_rois.zip")
    return files


def picture_of(image: np.ndarray, model: LoadedModel, settings: EvalSettings) -> Optional[np.ndarray]:
    """uint8 RGB picture of a 2D image's segmented channels (for the outline picture and figure)."""
    from .io.pictures import image_to_rgb
    from .preprocess import convert_image

    if settings.do_3D or settings.stitch_threshold > 0:
        return None
    planes = convert_image(image, settings.channels, channel_axis=settings.channel_axis, z_axis=settings.z_axis,
                           nchan=model.nchan)
    return image_to_rgb(planes, settings.channels) if planes.ndim == 3 else None


def _at_mask_size(picture: np.ndarray, shape) -> np.ndarray:
    from .resize import resize_nearest

    return picture if picture.shape[:2] == tuple(shape) else resize_nearest(picture, *shape)


def write_outputs(path: Path, seg: Segmentation, settings: EvalSettings, options: OutputOptions,
                  picture: Optional[np.ndarray] = None, *, restoration: Optional[Restoration] = None,
                  restore_name: Optional[str] = None) -> List[Path]:
    """Write the requested output files for one segmented image; returns their paths.

    With image restoration, ``restoration`` (and the restore type's name) go into ``_seg.npy`` and,
    with ``save_restored``, ``<stem>_restored.tif``.

    ``picture`` (:func:`picture_of`) is needed for ``save_outlines`` / ``save_mpl``; 3D masks get
    no pictures, ImageJ outlines, ROIs or GeoJSON (2D formats), as in Cellpose.
    """
    from . import io

    masks, layout, suffix = seg.masks, options.layout, options.suffix
    flows = [None, seg.dP, seg.cellprob]
    rule = family_of(seg).flow_picture_rule  # flow pictures are drawn as the model's Cellpose version draws them
    planar = masks.ndim == 2
    written: List[Path] = []
    if options.save_png or options.save_tif:
        written += io.save_masks(masks, path, png=options.save_png and planar, tif=options.save_tif or not planar,
                                 savedir=layout.folder(path, "masks"), suffix=suffix)
    if options.save_npy:
        restored = {} if restoration is None else dict(img_restore=restoration.image, restore_type=restore_name)
        # ratio stays 1.0: Cellpose's command line writes 1.0 whatever the upsampling
        written.append(io.save_seg_npy(masks, flows, path, diameter=seg.diameter,
                                       channels=settings.channels or (0, 0), rule=rule, **restored))
    if options.save_txt and planar:
        written.append(io.save_outlines_txt(masks, path, savedir=layout.folder(path, "txt")))
    if options.save_rois and planar:
        written.append(io.save_rois_zip(masks, path))
    if options.save_geojson and planar:
        written.append(io.save_geojson(masks, path, savedir=layout.folder(path, "txt")))
    if options.save_flows:
        written += io.save_flows(flows, path, savedir=layout.folder(path, "flows"), suffix=suffix, rule=rule)
    if options.save_ome:
        written.append(io.save_masks_ome_tif(masks, path, savedir=layout.folder(path, "masks"), suffix=suffix))
    if options.pictures and planar and picture is not None:
        from .io.pictures import save_outlines_png, save_summary_png

        picture = _at_mask_size(picture, masks.shape)
        if options.save_outlines:
            written.append(save_outlines_png(picture, masks, path, layout.folder(path, "outlines"), suffix))
        if options.save_mpl:
            flow_rgb = _at_mask_size(io.flow_to_rgb(seg.dP, rule=rule), masks.shape)
            cellprob = _at_mask_size(seg.cellprob, masks.shape)
            written.append(save_summary_png(picture, masks, flow_rgb, cellprob, path, layout.folder(path, "figure"),
                                            suffix))
    if options.save_restored and restoration is not None:
        written.append(io.save_restored(restoration.image, path, savedir=layout.folder(path, "masks")))
    return [Path(p) for p in written if p]


@dataclass
class _Predicted:
    """What the network half of one file hands to the dynamics half."""

    prediction: Prediction
    picture: Optional[np.ndarray]
    timings: dict
    restoration: Optional[Restoration] = None


def _read_and_predict(path: Path, model: LoadedModel, settings: EvalSettings, estimate: bool,
                      options: Optional[OutputOptions] = None, restore: Optional[RestoreStep] = None) -> _Predicted:
    """Network half of one file: read it, restore it or estimate its diameter if asked, run the network."""
    from .diameter import estimate_diameter
    from .io import imread

    tic = time.perf_counter()
    image = imread(path)
    timings = {"read": time.perf_counter() - tic}
    picture = picture_of(image, model, settings) if options is not None and options.pictures else None
    restoration = None
    if restore is not None:
        tic = time.perf_counter()
        restoration = restore.restore(image, settings)
        image, settings = restoration.image, restore.segmentation_settings(settings, restoration)
        timings["restore"] = time.perf_counter() - tic
    elif estimate and not settings.do_3D and model.size_model is not None and np.asarray(image).ndim < 4:
        tic = time.perf_counter()
        diameter, _ = estimate_diameter(image, model, settings)
        settings = settings.with_(diameter=diameter)
        timings["diameter"] = time.perf_counter() - tic
    return _Predicted(predict(image, model, settings), picture, timings, restoration)


def _finish_and_write(path: Path, predicted: _Predicted, settings: EvalSettings, options: OutputOptions,
                      started: float, restore: Optional[RestoreStep] = None) -> FileResult:
    """Dynamics half of one file: masks from the flows, then the output files.

    ``settings`` are the user's: with restoration the prediction's channels are the restored image's.
    """
    return _write(path, finish(predicted.prediction), settings, options, started, predicted.picture,
                  predicted.timings, predicted.restoration, restore.name if restore is not None else None)


def segment_file(path: Path, model: LoadedModel, settings: EvalSettings, options: OutputOptions,
                 estimate: bool, restore: Optional[RestoreStep] = None) -> FileResult:
    """Read, segment (estimating the diameter or restoring the image first, if asked) and write one file."""
    started = time.perf_counter()
    return _finish_and_write(path, _read_and_predict(path, model, settings, estimate, options, restore), settings,
                             options, started, restore)


def _read_and_prepare(path: Path, model: LoadedModel, settings: EvalSettings, options: OutputOptions):
    """Streaming reader: the image, its normalised planes (the host's share of the network half) and
    its picture when the outputs need one."""
    from .io import imread

    tic = time.perf_counter()
    image = imread(path)
    timings = {"read": time.perf_counter() - tic}
    tic = time.perf_counter()
    x = prepare_image(image, settings, model.nchan, family=family_of(model))
    timings["preprocess"] = time.perf_counter() - tic
    picture = picture_of(image, model, settings) if options.pictures else None
    return image, x, picture, timings


def _compute(image, x, timings: dict, model: LoadedModel, settings: EvalSettings, estimate: bool) -> Segmentation:
    """Streaming compute: diameter estimate if asked, network and dynamics (on the device)."""
    if estimate and not settings.do_3D and model.size_model is not None and np.asarray(image).ndim < 4:
        from .diameter import estimate_diameter
        diameter, _ = estimate_diameter(image, model, settings)
        settings = settings.with_(diameter=diameter)
    return finish(predict_prepared(x, model, settings, {"preprocess": timings["preprocess"]}))


def _write(path: Path, seg: Segmentation, settings: EvalSettings, options: OutputOptions, started: float,
           picture: Optional[np.ndarray] = None, timings: Optional[dict] = None,
           restoration: Optional[Restoration] = None, restore_name: Optional[str] = None) -> FileResult:
    """The output files of one result (``exclude_on_edges`` applied first); its FileResult."""
    if options.exclude_on_edges:
        from .postprocess import remove_edge_masks
        seg.masks = remove_edge_masks(seg.masks)
    tic = time.perf_counter()
    files = write_outputs(path, seg, settings, options, picture, restoration=restoration, restore_name=restore_name)
    timings = dict(timings or {}, **seg.timings, write=time.perf_counter() - tic)
    n_masks = int(np.count_nonzero(np.unique(seg.masks))) if seg.masks.size else 0
    return FileResult(path, True, n_masks=n_masks, diameter=seg.diameter, seconds=time.perf_counter() - started,
                      outputs=files, timings=timings)


def _failure(path: Path, exc: BaseException) -> FileResult:
    if isinstance(exc, MemoryError):
        return FileResult(path, False, error="out of memory")
    return FileResult(path, False, error=f"{type(exc).__name__}: {exc}")


def run_batch(paths: Sequence[Path], model: LoadedModel, settings: EvalSettings, options: OutputOptions,
              estimate: bool = False, skip_existing: bool = False,
              on_result: Optional[Callable[[int, FileResult], None]] = None,
              streaming: Optional[bool] = None, restore: Optional[RestoreStep] = None) -> List[FileResult]:
    """Segment every file; failures are recorded, never raised.

    The network of file i+1 runs in a worker thread while file i's dynamics and outputs run here
    (ONNX Runtime and the numba kernels release the GIL); on the GPU path the files stream through
    a reader thread, the device and a writer thread instead (see the module docstring).

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
        Called with (index, FileResult) after each file, in input order (progress reporting).
    streaming : bool, optional
        Force (True) or forbid (False) the streaming schedule; default: streaming on the GPU path
        (never with ``restore``; models whose family has no GPU path run the streaming schedule on the host).
    restore : RestoreStep, optional
        Image restoration before segmentation (``--restore_type``); no diameter estimate then.
    """
    paths = [Path(p) for p in paths]
    todo = [not (skip_existing and all(p.exists() for p in expected_outputs(path, options))) for path in paths]
    if streaming is None:
        streaming = restore is None and device_resident(model, settings)
    if streaming:
        return _run_streaming(paths, todo, model, settings, options, estimate, on_result)

    def start(i):
        if i >= len(paths) or not todo[i]:
            return None
        return time.perf_counter(), pool.submit(_read_and_predict, paths[i], model, settings, estimate, options,
                                                restore)

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


#: Files read and normalised ahead of the one computing (each holds an image and its float32 planes).
READ_AHEAD = 2


def _run_streaming(paths: List[Path], todo: List[bool], model: LoadedModel, settings: EvalSettings,
                   options: OutputOptions, estimate: bool,
                   on_result: Optional[Callable[[int, FileResult], None]]) -> List[FileResult]:
    """Read (thread) -> network and dynamics (here, on the device) -> write (thread), in input order.

    At most :data:`READ_AHEAD` files are read ahead and one result waits to be written, so memory
    stays bounded; a failure at any stage is that file's alone.
    """
    results: List[Optional[FileResult]] = [None if wanted else FileResult(path, True, skipped=True)
                                           for path, wanted in zip(paths, todo)]
    reported = 0

    def report_ready():
        nonlocal reported
        while reported < len(paths) and results[reported] is not None:
            if on_result is not None:
                on_result(reported, results[reported])
            reported += 1

    queue = deque(i for i, wanted in enumerate(todo) if wanted)
    with ThreadPoolExecutor(1, thread_name_prefix="cellflow-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="cellflow-write") as writer:
        reads = deque()

        def read_next():
            if queue:
                i = queue.popleft()
                reads.append((i, time.perf_counter(), reader.submit(_read_and_prepare, paths[i], model, settings,
                                                                    options)))

        for _ in range(READ_AHEAD):
            read_next()
        writing = None
        while reads:
            i, started, future = reads.popleft()
            read_next()
            seg = picture = timings = None
            try:
                image, x, picture, timings = future.result()
                seg = _compute(image, x, timings, model, settings, estimate)
            except Exception as exc:  # one bad file must not lose the others' results
                results[i] = _failure(paths[i], exc)
            del future
            if writing is not None:
                results[writing[0]] = _collect(*writing)
            writing = (i, paths[i], writer.submit(_write, paths[i], seg, settings, options, started, picture, timings)) \
                if seg is not None else None
            del seg, picture
            report_ready()
        if writing is not None:
            results[writing[0]] = _collect(*writing)
        report_ready()
    return results


def _collect(i: int, path: Path, future) -> FileResult:
    """The written file's result, or its failure."""
    try:
        return future.result()
    except Exception as exc:
        return _failure(path, exc)
