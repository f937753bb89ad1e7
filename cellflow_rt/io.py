"""Reading images, finding them in folders, and writing files atomically.

Reading follows Cellpose 3.1.1.1's ``io.imread`` (TIFF through tifffile, other images with the colour
order RGB and any alpha channel dropped) without OpenCV: PNG and JPEG are decoded by imagecodecs.
Problems are reported at this boundary as :class:`ImageReadError`, naming the file.

Every file this package writes goes through :func:`atomic_write`, so an interrupted or failed write
never leaves a partial output file behind (the writers themselves are in :mod:`cellflow_rt.outputs`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np

__all__ = ["ImageReadError", "OutputWriteError", "imread", "find_images", "atomic_write", "image_stem",
           "IMAGE_EXTENSIONS"]

PathLike = Union[str, os.PathLike]

TIFF_EXTENSIONS = (".tif", ".tiff", ".flex")
PNG_EXTENSIONS = (".png",)
JPEG_EXTENSIONS = (".jpg", ".jpeg")
#: Extensions :func:`find_images` picks up (any letter case). Cellpose's list plus ``.npy``, minus the
#: formats that need extra readers (.dax, .nd2, .nrrd).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".flex", ".npy")

#: Stem endings of files that are outputs or training targets, never inputs (Cellpose's list plus
#: ``_seg`` for the pickled ``_seg.npy`` files, since we also discover ``.npy`` images).
OUTPUT_STEM_ENDINGS = ("_cp_output", "_flows", "_flows_0", "_flows_1", "_flows_2", "_cellprob", "_masks",
                       "_seg")


class ImageReadError(ValueError):
    """An image file is missing, empty, corrupt, truncated or of an unsupported type."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot read image {os.fspath(path)!r}: {problem}")


class OutputWriteError(OSError):
    """An output file could not be written (the message names the file and the reason)."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot write {os.fspath(path)!r}: {problem}")


# --------------------------------------------------------------------------------------------------
# names


def image_stem(path: PathLike) -> str:
    """File name without its extension; ``.ome.tif`` / ``.ome.tiff`` count as one extension.

    Examples
    --------
    >>> image_stem("data/cells_01.tif"), image_stem("x/a.b.ome.tiff")
    ('cells_01', 'a.b')
    """
    name = Path(path).name
    lower = name.lower()
    for ext in (".ome.tif", ".ome.tiff"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _natural_key(path: Path):
    # Cellpose sorts with natsort: digit runs compare as numbers ("img2" before "img10")
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


# --------------------------------------------------------------------------------------------------
# reading


def imread(path: PathLike) -> np.ndarray:
    """Read an image file into an array with its own dtype and axes.

    Parameters
    ----------
    path : str or path-like
        A TIFF (``.tif``, ``.tiff``, ``.flex``; multi-page stacks and OME-TIFF give their first series,
        as Cellpose reads them), a PNG or JPEG (colour as RGB; an alpha channel is dropped), or a
        ``.npy`` array (loaded without pickle support, so Cellpose ``_seg.npy`` files are refused).

    Returns
    -------
    ndarray
        (Ly, Lx), (Ly, Lx, 3) for colour PNG/JPEG, or the TIFF series' shape, e.g. (Lz, Ly, Lx).

    Raises
    ------
    ImageReadError
        The path does not exist or is not a file, the file is empty, corrupt or truncated, or its
        extension is not supported.

    Examples
    --------
    >>> img = imread("cells.tif")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    ext = path.suffix.lower()
    if ext not in TIFF_EXTENSIONS + PNG_EXTENSIONS + JPEG_EXTENSIONS + (".npy",):
        raise ImageReadError(path, f"unsupported extension {path.suffix!r} (supported: "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty (0 bytes)")
        if ext in TIFF_EXTENSIONS:
            img = _read_tiff(path)
        elif ext == ".npy":
            img = _read_npy(path)
        else:
            img = _read_png_jpeg(path, ext)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from exc
    except Exception as exc:  # decoders raise many types; name the file and chain the cause
        raise ImageReadError(path, f"corrupt or truncated file ({type(exc).__name__}: {exc})") from exc
    if img.size == 0:
        raise ImageReadError(path, f"the file holds no pixels (shape {img.shape})")
    return img


class _TiffErrors(logging.Handler):
    """Collects error records tifffile logs from this thread (it logs, and carries on, when a file is
    truncated: pages go missing instead of an exception)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: List[str] = []

    def emit(self, record):
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    errors = _TiffErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(errors)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "the TIFF holds no image series")
            img = tif.asarray()
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        raise ImageReadError(path, f"corrupt or truncated TIFF ({errors.messages[0]})")
    return img


def _read_npy(path: Path) -> np.ndarray:
    try:
        img = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImageReadError(path, "the .npy file holds pickled Python objects (a Cellpose _seg.npy?); "
                                       "only plain numeric arrays are read") from exc
        raise
    if not isinstance(img, np.ndarray) or img.dtype.kind not in "biuf":
        raise ImageReadError(path, f"expected a numeric array, got dtype {getattr(img, 'dtype', type(img))}")
    return img


def _read_png_jpeg(path: Path, ext: str) -> np.ndarray:
    import imagecodecs

    data = path.read_bytes()
    if ext in PNG_EXTENSIONS:
        try:
            img = imagecodecs.png_decode(data)
        except UnicodeDecodeError:  # imagecodecs' error text for some corrupt chunks
            raise ImageReadError(path, "corrupt or truncated PNG") from None
    else:
        _check_jpeg_complete(path, data)
        img = imagecodecs.jpeg8_decode(data)
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        # gray + alpha or RGB + alpha: drop alpha (Cellpose keeps the colour channels of BGRA)
        img = img[..., :-1]
        if img.shape[-1] == 1:
            img = img[..., 0]
    return np.ascontiguousarray(img)


def _check_jpeg_complete(path: Path, data: bytes) -> None:
    # libjpeg fills a truncated scan with gray and only warns, so check for the end-of-image marker
    # after the last start-of-scan marker (an EXIF thumbnail has its own markers earlier on).
    last_scan = data.rfind(b"\xff\xda")
    if data[:2] == b"\xff\xd8" and last_scan >= 0 and data.rfind(b"\xff\xd9") < last_scan:
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker after the image data)")


# --------------------------------------------------------------------------------------------------
# discovery


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def find_images(directory: PathLike, img_filter: Optional[str] = None, look_one_level_down: bool = False,
                mask_filter: str = "_masks") -> List[Path]:
    """Image files of a folder, with Cellpose's rules (``io.get_image_files``).

    Parameters
    ----------
    directory : str or path-like
        Folder to search.
    img_filter : str, optional
        Keep only images whose stem ends with this string (Cellpose's ``--img_filter``).
    look_one_level_down : bool
        Also search the folder's immediate subfolders.
    mask_filter : str
        Stem ending of label files to skip (Cellpose's ``--mask_filter``), in addition to the
        output endings ``_cp_output, _flows, _flows_0, _flows_1, _flows_2, _cellprob, _masks, _seg``
        (so ``_cp_masks`` outputs are never taken for inputs on a rerun).

    Returns
    -------
    list of Path
        Naturally sorted ("img2" before "img10"). Extensions: png, jpg, jpeg, tif, tiff, flex, npy, in
        any letter case; hidden files (leading ".") are skipped; ``.ome.tif`` stems exclude ``.ome``.

    Raises
    ------
    FileNotFoundError
        ``directory`` does not exist or is not a folder.
    ValueError
        No image is left after the rules above (the message says how many files were seen).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {os.fspath(directory)!r} does not exist or is not a folder")
    folders = [directory]
    if look_one_level_down:
        folders += sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=_natural_key)
    endings = OUTPUT_STEM_ENDINGS + ((mask_filter,) if mask_filter else ())
    n_files = n_images = 0
    found = []
    for folder in folders:
        for path in folder.iterdir():
            if not path.is_file():
                continue
            n_files += 1
            if not _is_image_name(path.name):
                continue
            n_images += 1
            stem = image_stem(path)
            if any(stem.endswith(e) for e in endings):
                continue
            if img_filter and not stem.endswith(img_filter):
                continue
            found.append(path)
    if not found:
        filt = f" ending with {img_filter!r}" if img_filter else ""
        raise ValueError(f"no images{filt} in {os.fspath(directory)!r}: {n_files} file(s), {n_images} with "
                         f"an image extension ({', '.join(IMAGE_EXTENSIONS)}), none left after skipping "
                         f"stems ending in {', '.join(endings)}")
    return sorted(found, key=_natural_key)


# --------------------------------------------------------------------------------------------------
# atomic writes


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file all at once or not at all.

    Yields a temporary path in the destination's folder (hidden, same name at the end so that
    extension-driven writers behave the same); when the block finishes the file is flushed to disk
    and renamed onto ``path`` (``os.replace``, atomic on POSIX and Windows). If the block raises, the
    temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        Final destination; its folder must exist.

    Yields
    ------
    Path
        Where to write (an empty file already created, with the usual permissions).

    Raises
    ------
    OutputWriteError
        The folder is missing or not writable, or the block wrote no file.

    Examples
    --------
    >>> with atomic_write("out/masks.tif") as tmp:  # doctest: +SKIP
    ...     tifffile.imwrite(tmp, masks)
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputWriteError(path, f"output folder {os.fspath(directory)!r} does not exist")
    tmp = directory / f".{secrets.token_hex(4)}.tmp.{path.name}"
    try:
        # created here with O_EXCL (no clash with another writer) and mode 0o666 minus the umask,
        # the permissions a plain open() gives, unlike tempfile's 0o600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputWriteError(path, f"cannot create a file in {os.fspath(directory)!r} "
                                     f"({exc.strerror or exc})") from exc
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputWriteError(path, "the writer produced no file")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise OutputWriteError(path, exc.strerror or str(exc)) from exc
        raise
    _fsync_directory(directory)
