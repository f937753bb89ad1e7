"""Reader: a Cellpose ``_seg.npy`` opens as its image plus a Labels layer of its masks.

The file is loaded by :func:`cellflow_rt.io.seg_file.load_seg_npy` (a restricted unpickler: a crafted
file cannot run code). The image is found as Cellpose's GUI finds it: the file named in the
``filename`` entry, else a file of that name beside the ``_seg.npy``, else the ``img`` entry; else,
the image of the same stem beside it (``cells_seg.npy`` -> ``cells.tif``...). Without any, only the
masks open, with a warning.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..io import IMAGE_EXTENSIONS, ImageReadError, imread
from ..io.limits import ImageTooLargeError
from ..io.seg_file import load_seg_npy

SEG_SUFFIX = "_seg.npy"


def get_reader(path):
    """napari's reader hook: :func:`read_seg_npy` for one ``*_seg.npy`` path, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_seg_npy if os.fspath(path).endswith(SEG_SUFFIX) else None


def _image_candidates(seg_path: Path, seg: dict) -> List[Path]:
    candidates = []
    filename = seg.get("filename")
    if isinstance(filename, str) and filename:
        candidates += [Path(filename), seg_path.parent / Path(filename).name]
    stem = seg_path.name[: -len(SEG_SUFFIX)]
    candidates += [seg_path.parent / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS if ext != ".npy"]
    return candidates


def find_image(seg_path: Path, seg: dict):
    """The image of a ``_seg.npy`` (see the module docstring) and where it came from, or (None, None)."""
    for candidate in _image_candidates(seg_path, seg):
        if candidate.is_file() and candidate.resolve() != seg_path.resolve():
            try:
                return imread(candidate), candidate
            except ImageTooLargeError:
                raise  # the image is there but too large: say so rather than open the masks alone
            except ImageReadError:
                continue
    image = seg.get("img")
    if isinstance(image, np.ndarray) and image.dtype.kind in "biuf":
        return image, None
    return None, None


def _flows_metadata(seg: dict, masks: np.ndarray) -> dict:
    """``dP`` and ``cellprob`` from ``flows[4]`` ([dP..., cellprob] in float32), when they fit the masks."""
    flows = seg.get("flows")
    if not isinstance(flows, (list, tuple)) or len(flows) < 5:
        return {}
    stacked = flows[4]
    if not isinstance(stacked, np.ndarray) or stacked.ndim != masks.ndim + 1 or stacked.shape[1:] != masks.shape:
        return {}
    return {"dP": stacked[:-1], "cellprob": stacked[-1]}


def read_seg_npy(path) -> list:
    """Layers of a ``_seg.npy``: the image (when found) and the masks as a Labels layer.

    The Labels layer's ``metadata["cellflow_rt"]`` keeps the file's diameter, channels, image path
    and flows, so that saving it again (``_writer.write_seg_npy``) writes the same information.

    Raises
    ------
    cellflow_rt.io.seg_file.SegFileError
        The file is not a readable ``_seg.npy`` (or its pickle asks for more than plain data).
    cellflow_rt.io.limits.ImageTooLargeError
        The file's image (or its masks) declares more values than
        :func:`~cellflow_rt.io.limits.max_values` allows; refused before decoding.
    """
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    seg = load_seg_npy(path)
    masks = seg["masks"]
    stem = path.name[: -len(SEG_SUFFIX)] if path.name.endswith(SEG_SUFFIX) else path.stem
    image, image_path = find_image(path, seg)
    info = {"seg_file": str(path), "image_path": None if image_path is None else str(image_path),
            "diameter": _number(seg.get("diameter")), "channels": _channels(seg.get("chan_choose")),
            **_flows_metadata(seg, masks)}
    layers = []
    if image is not None:
        layers.append((image, {"name": stem}, "image"))
    else:
        from napari.utils.notifications import show_warning
        show_warning(f"cellflow-rt: the image of {path.name} was not found (looked for {seg.get('filename')!r} "
                     f"and {stem}.* beside the file); opening the masks only")
    layers.append((masks, {"name": f"{stem} masks", "metadata": {"cellflow_rt": info}}, "labels"))
    return layers


def _number(value) -> Optional[float]:
    try:
        return float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _channels(value) -> List[int]:
    try:
        chans = [int(c) for c in np.asarray(value).reshape(-1)]
    except (TypeError, ValueError):
        return [0, 0]
    return chans if len(chans) == 2 else [0, 0]
