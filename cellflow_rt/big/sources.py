"""Images read lazily, block by block: numpy, dask and zarr arrays, OME-Zarr images and big TIFFs.

:func:`open_source` turns what the user gives into an :class:`ImageSource` whose crops have the
canonical axes ``(Y, X, C)`` or ``(Z, Y, X, C)`` (C >= 1). Nothing is read until a block task asks
for its crop; what travels to a worker is a small picklable reader (a zarr array, a TIFF path) or,
for dask inputs, the dask slice itself. The output side lives here too: the labels zarr array and,
for OME-Zarr inputs, a multiscale label image in the image's ``labels/`` group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .blocks import Region

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif")


class TiffArray:
    """A TIFF series read through tifffile's zarr interface, opened lazily in each process.

    ``tifffile.imread(path, aszarr=True)`` holds a file handle and cannot be pickled to a
    dask.distributed worker; this wrapper keeps only the path and reopens the store where it runs.
    """

    def __init__(self, path, series: int = 0, level: int = 0):
        import tifffile

        self.path = str(path)
        self.series, self.level = int(series), int(level)
        with tifffile.TiffFile(self.path) as tif:
            page = tif.series[self.series].levels[self.level]
            self.shape, self.dtype, self.axes = tuple(page.shape), np.dtype(page.dtype), page.axes
            first = page.keyframe if hasattr(page, "keyframe") else page.pages[0]
            #: one strip or tile: the zarr interface reads it whole, compressed or not (a single-strip
            #: page is one chunk of the page's size)
            self.page_chunks = tuple(getattr(first, "chunks", ()) or ())
        self._array = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _open(self):
        if self._array is None:
            import tifffile
            import zarr

            store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
            self._array = zarr.open(store, mode="r")
        return self._array

    def __getitem__(self, index):
        return self._open()[index]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state


@dataclass(frozen=True)
class AxisLayout:
    """Where the canonical axes live in the source array.

    ``spatial`` lists the source axes of (Z,) Y, X; ``channel`` the source axis of channels (None:
    a channel axis of length 1 is added); ``fixed`` source axes read at one index (a singleton T).
    """

    spatial: Tuple[int, ...]
    channel: Optional[int]
    fixed: Tuple[Tuple[int, int], ...] = ()

    def source_index(self, region: Region, ndim: int) -> tuple:
        index: List = [slice(None)] * ndim
        for axis, s in zip(self.spatial, region):
            index[axis] = s
        for axis, i in self.fixed:
            index[axis] = i
        return tuple(index)

    def to_canonical(self, data, ndim: int):
        """Transpose an array indexed with :meth:`source_index` to (spatial..., C)."""
        kept = [a for a in range(ndim) if a not in dict(self.fixed)]
        order = [kept.index(a) for a in self.spatial + ((self.channel,) if self.channel is not None else ())]
        data = data.transpose(order)
        return data[..., None] if self.channel is None else data


@dataclass(frozen=True)
class Crop:
    """A crop to read inside the task that needs it (keeps the read off the driver)."""

    reader: object
    layout: AxisLayout
    region: Region

    def read(self) -> np.ndarray:
        ndim = len(self.reader.shape)
        data = np.asarray(self.reader[self.layout.source_index(self.region, ndim)])
        return self.layout.to_canonical(data, ndim)


def materialise(crop) -> np.ndarray:
    """The crop's pixels: a :class:`Crop` is read, a dask array arrives already computed."""
    return crop.read() if isinstance(crop, Crop) else np.asarray(crop)


@dataclass
class OmeImage:
    """An OME-Zarr image group: where it is, its axes and its level-0 scale and pyramid factors."""

    path: str
    version: str
    zarr_format: int
    axes: List[dict]
    scale: List[float]
    level_factors: List[List[int]] = field(default_factory=list)


@dataclass
class ImageSource:
    """A lazily read image with canonical axes (spatial..., C)."""

    shape: Tuple[int, ...]
    n_channels: int
    dtype: np.dtype
    layout: AxisLayout
    reader: object = None
    dask_array: object = None
    ome: Optional[OmeImage] = None
    name: str = "image"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def crop(self, region: Region):
        """What a task receives for ``region``: a :class:`Crop`, or a dask slice computed by dask."""
        if self.dask_array is not None:
            return self.dask_array[region]
        return Crop(self.reader, self.layout, region)

    def read(self, region: Region) -> np.ndarray:
        """Read ``region`` here (driver side), canonical axes."""
        crop = self.crop(region)
        return crop.read() if isinstance(crop, Crop) else np.asarray(crop.compute())


def _guess_layout(shape: Sequence[int], volume: bool, channel_axis: Optional[int], z_axis: Optional[int],
                  axes_hint: str = "") -> AxisLayout:
    """Axes of a plain array: from the settings, else from tifffile's axes letters, else guessed."""
    ndim = len(shape)
    if ndim < 2 or ndim > 4:
        raise ValueError(f"source: expected a 2-D to 4-D image (Y, X [, C] or Z, Y, X [, C]), got shape {tuple(shape)}")
    for name, axis in (("channel_axis", channel_axis), ("z_axis", z_axis)):
        if axis is not None and not -ndim <= axis < ndim:
            raise ValueError(f"{name}={axis} is out of range for a source of shape {tuple(shape)}")
    channel_axis = None if channel_axis is None else channel_axis % ndim
    z_axis = None if z_axis is None else z_axis % ndim
    hint = axes_hint.upper() if len(axes_hint) == ndim else ""
    if channel_axis is None and hint:
        channel_axis = next((i for i, a in enumerate(hint) if a in "CS"), None)
    if z_axis is None and hint and "Z" in hint:
        z_axis = hint.index("Z")
    n_spatial = ndim - (channel_axis is not None)
    if channel_axis is None and ndim == 4:
        rest = [i for i in range(ndim) if i != (z_axis if z_axis is not None else 0)]
        channel_axis = min(rest, key=lambda i: shape[i])
        n_spatial = 3
    if channel_axis is None and ndim == 3 and not volume and z_axis is None:
        smallest = int(np.argmin(shape))
        if shape[smallest] >= 10:
            raise ValueError(f"source of shape {tuple(shape)}: cannot tell channels from Z; pass channel_axis "
                             "(2D image with channels) or z_axis with do_3D/stitch_threshold (volume)")
        channel_axis, n_spatial = smallest, 2
    if n_spatial == 3:
        if not volume:
            raise ValueError(f"source of shape {tuple(shape)} is a volume: set do_3D=True or stitch_threshold > 0 "
                             "(stacks of independent planes are not supported blockwise)")
        if z_axis is None:
            z_axis = next(i for i in range(ndim) if i != channel_axis)
    elif volume:
        raise ValueError(f"do_3D / stitch_threshold need a volume (Z, Y, X [, C]), got a 2D source of shape "
                         f"{tuple(shape)}")
    spatial = tuple(i for i in range(ndim) if i != channel_axis)
    if n_spatial == 3 and spatial[0] != z_axis:
        spatial = (z_axis,) + tuple(i for i in spatial if i != z_axis)
    return AxisLayout(spatial=spatial, channel=channel_axis)


def _ome_multiscales(attrs: dict) -> Tuple[Optional[dict], str]:
    if "ome" in attrs and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"][0], str(attrs["ome"].get("version", "0.5"))
    if "multiscales" in attrs:
        ms = attrs["multiscales"][0]
        return ms, str(ms.get("version", "0.4"))
    return None, ""


def _scale_of(dataset: dict, ndim: int) -> List[float]:
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return [1.0] * ndim


def _open_ome(group, path: str, volume: bool):
    """Level 0 of an OME-Zarr image group, its axis layout and its metadata."""
    multiscales, version = _ome_multiscales(dict(group.attrs))
    datasets = multiscales["datasets"]
    array = group[datasets[0]["path"]]
    axes = multiscales.get("axes") or [{"name": n} for n in "tczyx"[-array.ndim:]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    names = [a["name"].lower() for a in axes]
    fixed = []
    for i, n in enumerate(names):
        if n == "t":
            if array.shape[i] != 1:
                raise ValueError(f"{path}: a time series (t = {array.shape[i]}); segment one time point at a time")
            fixed.append((i, 0))
    channel = names.index("c") if "c" in names else None
    spatial = tuple(i for i, n in enumerate(names) if n in ("z", "y", "x"))
    if "z" in names and array.shape[names.index("z")] == 1 and not volume:
        fixed.append((names.index("z"), 0))
        spatial = tuple(i for i in spatial if names[i] != "z")
    if len(spatial) == 3 and not volume:
        raise ValueError(f"{path} is a volume: set do_3D=True or stitch_threshold > 0")
    if len(spatial) == 2 and volume:
        raise ValueError(f"{path} is 2D: do_3D / stitch_threshold need a volume")
    layout = AxisLayout(spatial=spatial, channel=channel, fixed=tuple(fixed))
    scale0 = _scale_of(datasets[0], array.ndim)
    factors = []
    for d in datasets:
        s = _scale_of(d, array.ndim)
        factors.append([max(1, int(round(s[i] / scale0[i]))) for i in spatial])
    ome = OmeImage(path=path, version=version, zarr_format=group.metadata.zarr_format,
                   axes=[axes[i] for i in spatial], scale=[scale0[i] for i in spatial], level_factors=factors)
    return array, layout, ome


def open_source(source, volume: bool = False, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                distributed: bool = False) -> ImageSource:
    """Wrap an image for blockwise reading.

    Parameters
    ----------
    source : ndarray, dask array, zarr array or group, or path
        A ``.tif``/``.tiff`` path (read through tifffile's zarr interface), a zarr path (an array, or
        an OME-Zarr image group, whose level 0 is read), or an array.
    volume : bool
        The image is a volume (do_3D or stitch_threshold).
    channel_axis, z_axis : int or None
        Axes of the source holding channels and Z (guessed when None, as described in the docs of
        :func:`~cellflow_rt.big.segment_large`).
    distributed : bool
        Tasks run in other processes: in-memory numpy arrays then travel as dask chunks.

    Returns
    -------
    ImageSource
    """
    import zarr

    ome = None
    name = "image"
    axes_hint = ""
    array = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        if not path.exists():
            raise FileNotFoundError(f"source: {path} does not exist")
        if path.name.lower().endswith(_TIFF_SUFFIXES):
            array = TiffArray(path)
            axes_hint = array.axes
        else:
            try:
                array = zarr.open(str(path), mode="r")
            except Exception as exc:  # zarr raises several types for "not a zarr store"
                raise ValueError(f"source: {path} is neither a TIFF nor a zarr array or group ({exc})") from exc
    if isinstance(array, zarr.Group):
        if _ome_multiscales(dict(array.attrs))[0] is None:
            raise ValueError(f"source: zarr group {name} has no OME 'multiscales' metadata; pass the array inside it")
        array, layout, ome = _open_ome(array, str(source), volume)
    else:
        if not all(hasattr(array, a) for a in ("shape", "dtype", "__getitem__")):
            array = np.asarray(array)
        layout = _guess_layout(array.shape, volume, channel_axis, z_axis, axes_hint)
    _check_chunks(array, name)
    dtype = np.dtype(array.dtype)
    if dtype == bool or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"source: dtype {dtype} is not a real numeric type")
    shape = tuple(int(array.shape[a]) for a in layout.spatial)
    n_channels = 1 if layout.channel is None else int(array.shape[layout.channel])
    if min(shape) < 1:
        raise ValueError(f"source: empty image (spatial shape {shape})")
    dask_array = None
    if _is_dask(array) or (distributed and isinstance(array, np.ndarray)):
        import dask.array as da

        darr = array if _is_dask(array) else da.from_array(array, chunks="auto")
        index = layout.source_index(tuple(slice(None) for _ in shape), darr.ndim)
        dask_array = layout.to_canonical(darr[index], darr.ndim)
    return ImageSource(shape=shape, n_channels=n_channels, dtype=dtype, layout=layout,
                       reader=None if dask_array is not None else array, dask_array=dask_array, ome=ome, name=name)


def _check_chunks(array, name: str) -> None:
    """Refuse a zarr array (or TIFF) whose one chunk (or strip/tile) is over the in-memory ceiling:
    each block read decodes whole chunks, so a file declaring huge chunks would allocate them."""
    from ..io.limits import check_declared_shape

    chunks = array.page_chunks if isinstance(array, TiffArray) else None
    if chunks is None and type(array).__module__.startswith("zarr"):
        chunks = getattr(array, "chunks", None)
    if chunks:
        check_declared_shape(chunks, name, "chunk", advice="rewrite it with smaller chunks (or tiles)")


def _is_dask(array) -> bool:
    return type(array).__module__.startswith("dask.")


def create_labels_array(path, shape: Sequence[int], chunks: Sequence[int], zarr_format: int = 3):
    """An empty uint32 zarr array for the labels (missing chunks read as 0)."""
    import zarr

    return zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(chunks), dtype="uint32", fill_value=0,
                             zarr_format=zarr_format, overwrite=True)


def ome_labels_level0(image: OmeImage, name: str, shape: Sequence[int], chunks: Sequence[int]) -> str:
    """Create ``labels/<name>/0`` inside an OME-Zarr image; return the level-0 array's path."""
    import zarr

    root = zarr.open_group(image.path, mode="r+")
    labels = root.require_group("labels")
    group = labels.require_group(name)
    group.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype="uint32", fill_value=0, overwrite=True)
    return str(Path(image.path) / "labels" / name / "0")


def finish_ome_labels(image: OmeImage, name: str, chunks: Sequence[int], compute) -> List[str]:
    """Write the pyramid levels of ``labels/<name>`` (nearest, the image's factors) and the metadata.

    ``compute`` runs a list of dask collections (the caller's scheduler). Returns the level paths.
    """
    import dask.array as da
    import zarr

    root = zarr.open_group(image.path, mode="r+")
    group = root["labels"][name]
    level0 = da.from_zarr(group["0"])
    paths, writes, datasets = ["0"], [], []
    for level, factors in enumerate(image.level_factors):
        scale = [s * f for s, f in zip(image.scale, factors)]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        if level == 0:
            continue
        down = level0[tuple(slice(None, None, f) for f in factors)].rechunk(tuple(chunks))
        arr = group.create_array(str(level), shape=down.shape, chunks=tuple(chunks), dtype="uint32", fill_value=0,
                                 overwrite=True)
        writes.append(da.store(down, arr, lock=False, compute=False))
        paths.append(str(level))
    if writes:
        compute(writes)
    multiscale = {"name": name, "axes": image.axes, "datasets": datasets}
    source = {"image": "../../"}
    if image.version.startswith("0.4") or image.zarr_format == 2:
        group.attrs.update({"multiscales": [dict(multiscale, version=image.version)],
                            "image-label": {"version": image.version, "source": source}})
        names = list(root["labels"].attrs.get("labels", []))
        root["labels"].attrs["labels"] = names + ([name] if name not in names else [])
    else:
        group.attrs.update({"ome": {"version": image.version, "multiscales": [multiscale],
                                    "image-label": {"source": source}}})
        meta: Dict = dict(root["labels"].attrs.get("ome", {"version": image.version}))
        names = list(meta.get("labels", []))
        meta["labels"] = names + ([name] if name not in names else [])
        root["labels"].attrs["ome"] = meta
    return [str(Path(image.path) / "labels" / name / p) for p in paths]
