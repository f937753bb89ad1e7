"""``cellflow-rt run --blocksize``: segment one big TIFF, zarr array or OME-Zarr image blockwise.

:func:`run_large` is what ``cellflow-rt run`` calls for each input when it is given ``--blocksize``
(with ``--overlap`` and ``--scheduler``); the other flags are ``run``'s.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import click


def parse_sizes(text: Optional[str], name: str):
    """``"N"`` -> N, ``"Z,Y,X"`` -> (Z, Y, X) for ``--blocksize`` / ``--overlap``."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"expected N or N,N[,N], got {text!r}", param_hint=name) from None
    if any(v < 0 for v in values):
        raise click.BadParameter(f"must be >= 0, got {text!r}", param_hint=name)
    return values[0] if len(values) == 1 else values


def default_output(path: Path) -> Path:
    """``<stem>_cp_masks.zarr`` beside the input (``big.ome.zarr`` -> ``big_cp_masks.zarr``)."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}_cp_masks.zarr")


def run_large(path, model, settings, blocksize=None, overlap=None, scheduler: str = "threads",
              output: Optional[Path] = None, workers: Optional[int] = None, ome_labels: Optional[str] = None,
              skip_threshold: Optional[float] = 0.1, temp_dir=None, estimate_diameter: bool = False,
              echo=click.echo, progress=None, save_tif: bool = False, save_png: bool = False,
              suffix: str = "_cp_masks"):
    """Segment ``path`` blockwise, report progress, write ``output``; return the result.

    ``progress`` receives each :class:`~cellflow_rt.big.Progress` report (default: a line per tenth of
    each stage, :class:`~cellflow_rt.progress.StageProgress`). With ``save_tif`` / ``save_png`` the
    labels are then streamed from the zarr into ``<stem><suffix>.tif`` / ``.png`` beside ``output``
    (:func:`cellflow_rt.io.large_masks.save_large_masks`).
    """
    from . import segment_large

    path = Path(path)
    output = Path(output) if output is not None else default_output(path)
    if progress is None:
        from ..progress import Reporter, StageProgress
        progress = StageProgress(Reporter(interactive=False))

    tic = time.perf_counter()
    result = segment_large(path, model, settings, blocksize=blocksize, overlap=overlap, output=output,
                           scheduler=scheduler, num_workers=workers, progress=progress, skip_threshold=skip_threshold,
                           estimate_diameter=estimate_diameter, ome_labels=ome_labels, temp_dir=temp_dir)
    echo(f"{path.name}: {result.n_objects} cells, diameter {result.diameter:.1f} px, blocks {result.n_blocks} "
         f"({result.n_skipped} empty), {time.perf_counter() - tic:.1f} s -> {result.output}")
    if save_tif or save_png:
        import zarr

        from ..io.large_masks import save_large_masks

        tic = time.perf_counter()
        files = save_large_masks(zarr.open_array(str(output), mode="r"), path, savedir=output.parent, tif=save_tif,
                                 png=save_png, suffix=suffix, n_labels=result.n_objects)
        echo(f"{path.name}: wrote {', '.join(p.name for p in files)} from the zarr "
             f"({time.perf_counter() - tic:.1f} s)")
    return result
