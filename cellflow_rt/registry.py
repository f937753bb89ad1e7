"""Where models come from: bundled and user models, their JSON manifests, and checksums.

A model is an ONNX file ``NAME.onnx`` with a manifest ``NAME.json`` beside it (written by
``cellflow-rt export``; format ``cellflow-rt-model/1``). The manifest says which model family the
network belongs to (``architecture``, or for older manifests ``cellpose_generation``: 3 for CPnet
models, the default; 4 for Cellpose-SAM); :attr:`ModelInfo.family` (:mod:`cellflow_rt.family`) is
what the rest of the package asks. Models are looked up by name, first in
the user folder (``$CELLFLOW_RT_MODELS`` or ``~/.cellflow/models``; a user model shadows a
bundled one of the same name), then among the bundled models, then in the cache of Cellpose's
published models converted to ONNX (:mod:`cellflow_rt.published`; a published name that is not there
yet is fetched and converted), or given by path to either file.
The ONNX file's sha256 must match its manifest; it is checked once per process per file.
"""
from __future__ import annotations

import importlib.resources
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from .checksum import sha256_file
from .family import DEFAULT_FAMILY, ModelFamily, UnknownFamilyError, family_for_manifest
from .size import SizeModelParams

MANIFEST_FORMAT = "cellflow-rt-model/1"
USER_MODELS_ENV = "CELLFLOW_RT_MODELS"
BUILTIN_NAMES = ("cyto", "cyto2", "cyto3", "nuclei")
FP16_SUFFIX = "_fp16"
#: What a model does: segment (flows + cell probability) or restore images (Cellpose 3's denoise.py nets).
MODEL_KINDS = ("segmentation", "restoration")
#: Cellpose 3's restoration types; only ``upsample`` changes how a net is run.
RESTORE_TYPES = ("denoise", "deblur", "upsample", "oneclick")
# key -> accepted JSON types; the runtime relies on these, the rest is informative.
_REQUIRED_KEYS = {
    "format": (str,),
    "name": (str,),
    "onnx_file": (str,),
    "onnx_sha256": (str,),
    "nchan": (int,),
    "nout": (int,),
    "diam_mean": (int, float),
    "diam_labels": (int, float),
}
# ... and each family's own (ModelFamily.manifest_keys): a Cellpose-SAM model has no nbase, default channels
# or size model.


class ModelNotFoundError(ValueError, FileNotFoundError):
    """No model of that name, or no file at that path."""


class ModelFileError(ValueError):
    """A model's files are unusable: missing or corrupt manifest, wrong format, checksum mismatch."""


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model: where its ONNX file is and what its manifest says.

    Attributes
    ----------
    name : str
        The manifest's name.
    onnx_path : Path
        The ONNX file (checksum verified).
    manifest : dict
        The full manifest (treat as read-only).
    diam_mean, diam_labels : float
        The checkpoint's stored float32 values. For Cellpose built-ins (``builtin_name`` set)
        Cellpose uses 30 (17 for nuclei) as diam_mean instead of the stored value.
    nchan, nout : int
        Input and output channels of the network.
    default_channels : tuple of int or None
        The channels the model was trained for (``(0, 0)`` grayscale, ``(1, 2)`` cyto ...); None for
        Cellpose 4 models, which take the image's first 3 channels.
    builtin_name : str or None
        ``cyto``/``cyto2``/``cyto3``/``nuclei`` for Cellpose's own models, else None.
    size_model : SizeModelParams or None
        The size model's parameters when one was exported with the network.
    source : str
        ``"bundled"``, ``"user"``, ``"cache"`` (a converted published model) or ``"path"`` (not compared: the same files are the same model).
    precision : str
        ``"fp32"``, or ``"fp16"`` when the half-precision variant was given by path.
    kind : str
        ``"segmentation"`` or ``"restoration"`` (manifests without the key are segmentation models).
    restore_type : str or None
        A restoration model's type (:data:`RESTORE_TYPES`); None for segmentation models.
    family : ModelFamily
        What kind of network this is and how Cellpose runs it (:mod:`cellflow_rt.family`).
    """

    name: str
    onnx_path: Path
    manifest: dict = field(compare=False, repr=False)
    diam_mean: float
    diam_labels: float
    nchan: int
    nout: int
    default_channels: Optional[Tuple[int, int]]
    builtin_name: Optional[str]
    size_model: Optional[SizeModelParams] = field(compare=False, repr=False)
    source: str = field(default="path", compare=False)
    precision: str = "fp32"
    kind: str = "segmentation"
    restore_type: Optional[str] = None
    family: ModelFamily = DEFAULT_FAMILY

    @property
    def is_restoration(self) -> bool:
        return self.kind == "restoration"

    @property
    def generation(self) -> int:
        """The manifest's ``cellpose_generation`` (information; stages ask :attr:`family`)."""
        return self.family.cellpose_generation

    @property
    def fixed_tile(self) -> Optional[int]:
        """The tile side of a graph with fixed spatial axes (Cellpose-SAM: 256); None for graphs that
        take any tile size (CPnet)."""
        return self.family.fixed_tile

    @property
    def description(self) -> str:
        return str(self.manifest.get("description", ""))


def user_model_dir() -> Path:
    """Return the user model folder: ``$CELLFLOW_RT_MODELS`` or ``~/.cellflow/models`` (may not exist)."""
    env = os.environ.get(USER_MODELS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cellflow" / "models"


def bundled_model_dir() -> Path:
    """Return the folder of the models shipped with the package (``cellflow_rt.bundled``)."""
    return Path(str(importlib.resources.files("cellflow_rt.bundled")))


def list_models() -> list[ModelInfo]:
    """Return every available model, user models first, sorted by name within each source.

    A manifest that cannot be used is skipped with a warning saying why.
    """
    models = []
    for name, (manifest_path, source) in _catalogue().items():
        try:
            models.append(_load(manifest_path, None, source))
        except (ModelFileError, ModelNotFoundError) as err:
            warnings.warn(f"skipping model {name!r}: {err}", stacklevel=2)
    return models


def resolve_model(name_or_path) -> ModelInfo:
    """Find a model by name or path.

    Parameters
    ----------
    name_or_path : str, Path or ModelInfo
        A bundled or user model name; a path to ``NAME.onnx`` (its manifest is ``NAME.json``
        beside it; ``NAME_fp16.onnx`` uses ``NAME.json``'s fp16 entry); or a path to ``NAME.json``.

    Returns
    -------
    ModelInfo

    Raises
    ------
    ModelNotFoundError
        Unknown name (the message lists the available ones) or missing file.
    cellflow_rt.published.UnsupportedModelError, cellflow_rt.published.DownloadError
        A published name whose network cellflow-rt does not run, or whose files cannot be fetched
        (both ValueErrors).
    ModelFileError
        Missing or corrupt manifest, unknown format, or an ONNX file whose sha256 differs from the
        manifest's.
    """
    if isinstance(name_or_path, ModelInfo):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a model name or a path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    is_path = (isinstance(name_or_path, os.PathLike) or path.suffix.lower() in (".onnx", ".json")
               or "/" in text or os.sep in text)
    if not is_path:
        catalogue = _catalogue()
        if text in catalogue:
            manifest_path, source = catalogue[text]
            return _load(manifest_path, None, source)
        return _load(_fetch_published(text, catalogue), None, "cache")
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _load(path, None, "path")
    if suffix != ".onnx":
        raise ModelFileError(f"{path}: expected a .onnx model or its .json manifest")
    manifest_path = path.with_suffix(".json")
    if not manifest_path.is_file() and path.stem.endswith(FP16_SUFFIX):
        manifest_path = path.with_name(path.stem[: -len(FP16_SUFFIX)] + ".json")
    if not manifest_path.is_file():
        raise ModelFileError(
            f"{path} has no manifest ({path.with_suffix('.json').name} beside it); "
            "export models with `cellflow-rt export`, which writes both"
        )
    return _load(manifest_path, path, "path")


def installed_model(name: str) -> Optional[ModelInfo]:
    """Return the user, bundled or cached model called ``name``, or None; never downloads.

    Raises
    ------
    ModelFileError
        The model is there but unusable (manifest or checksum).
    """
    entry = _catalogue().get(name)
    return None if entry is None else _load(entry[0], None, entry[1])


def read_manifest(path) -> dict:
    """Read and validate a manifest; raise :class:`ModelFileError` saying what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"manifest {path} is not readable JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise ModelFileError(f"manifest {path} is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(
            f"manifest {path} has format {manifest.get('format')!r}; this cellflow-rt reads {MANIFEST_FORMAT!r}"
        )
    try:
        family = family_for_manifest(manifest)
    except UnknownFamilyError as err:
        raise ModelFileError(f"manifest {path}: {err}") from None
    for key, types in {**_REQUIRED_KEYS, **family.manifest_keys}.items():
        value = manifest.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ModelFileError(f"manifest {path}: '{key}' is missing or not a {types[0].__name__} ({value!r})")
    for key in ("diam_mean", "diam_labels"):
        if not (math.isfinite(manifest[key]) and manifest[key] > 0):
            raise ModelFileError(f"manifest {path}: '{key}' must be a finite number > 0, got {manifest[key]!r}")
    for key in ("nchan", "nout"):
        if manifest[key] < 1:
            raise ModelFileError(f"manifest {path}: '{key}' must be >= 1, got {manifest[key]!r}")
    onnx_file = manifest["onnx_file"]
    if Path(onnx_file).name != onnx_file or not onnx_file.endswith(".onnx"):
        raise ModelFileError(f"manifest {path}: onnx_file must be a file name beside it, got {onnx_file!r}")
    problem = family.check_manifest(manifest)
    if problem:
        raise ModelFileError(f"manifest {path}: {problem}")
    kind = manifest.get("kind", "segmentation")
    if kind not in MODEL_KINDS:
        raise ModelFileError(f"manifest {path}: kind must be one of {MODEL_KINDS}, got {kind!r}")
    restore_type = manifest.get("restore_type")
    if kind == "restoration" and restore_type not in RESTORE_TYPES:
        raise ModelFileError(f"manifest {path}: a restoration model needs restore_type in {RESTORE_TYPES}, "
                             f"got {restore_type!r}")
    if kind == "segmentation" and restore_type is not None:
        raise ModelFileError(f"manifest {path}: restore_type {restore_type!r} on a segmentation model")
    builtin = manifest.get("builtin_name")
    if builtin is not None and builtin not in BUILTIN_NAMES:
        raise ModelFileError(f"manifest {path}: builtin_name must be null or one of {BUILTIN_NAMES}, got {builtin!r}")
    return manifest


# (resolved path, size, mtime_ns) -> sha256: each file is hashed once per process unless it changes.
_SHA256_CACHE: dict = {}


def cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(path)
    return _SHA256_CACHE[key]


def _load(manifest_path: Path, onnx_path: Optional[Path], source: str) -> ModelInfo:
    """Build a ModelInfo from a manifest; ``onnx_path`` None means the file the manifest names."""
    manifest = read_manifest(manifest_path)
    if onnx_path is None:
        onnx_path = manifest_path.parent / manifest["onnx_file"]
    expected, precision = manifest["onnx_sha256"], "fp32"
    fp16 = manifest.get("fp16")
    if isinstance(fp16, dict) and onnx_path.name == fp16.get("onnx_file") and onnx_path.name != manifest["onnx_file"]:
        expected, precision = fp16.get("onnx_sha256"), "fp16"
    if not onnx_path.is_file():
        raise ModelFileError(f"manifest {manifest_path} names {onnx_path.name}, which is missing")
    actual = cached_sha256(onnx_path)
    if actual != expected:
        raise ModelFileError(
            f"{onnx_path}: sha256 {actual} does not match its manifest {manifest_path.name} ({expected}); "
            "the file was changed or belongs to another export: export it again"
        )
    size_model = manifest.get("size_model")
    if size_model is not None:
        try:
            size_model = SizeModelParams.from_json(size_model)
        except ValueError as err:
            raise ModelFileError(f"manifest {manifest_path}: {err}") from None
    return ModelInfo(
        name=manifest["name"],
        onnx_path=onnx_path,
        manifest=manifest,
        diam_mean=float(manifest["diam_mean"]),
        diam_labels=float(manifest["diam_labels"]),
        nchan=manifest["nchan"],
        nout=manifest["nout"],
        default_channels=tuple(manifest["default_channels"]) if "default_channels" in manifest else None,
        builtin_name=manifest.get("builtin_name"),
        size_model=size_model,
        source=source,
        precision=precision,
        kind=manifest.get("kind", "segmentation"),
        restore_type=manifest.get("restore_type"),
        family=family_for_manifest(manifest),
    )


def _fetch_published(name: str, catalogue: dict) -> Path:
    """The manifest of Cellpose's published model ``name``, fetched and converted if needed."""
    from .published import UnknownModelError, fetch_model

    try:
        return fetch_model(name)
    except UnknownModelError:
        raise ModelNotFoundError(f"model {name!r} not found; {_available(catalogue)}; or one of Cellpose's "
                                 "published models (`cellflow-rt models list`)") from None


def _catalogue() -> dict:
    """Name -> (manifest path, source) for every NAME.json in the user and bundled folders and the
    cache of converted published models."""
    from .published.cache import cache_dir

    catalogue = {}
    for folder, source in ((user_model_dir(), "user"), (bundled_model_dir(), "bundled"), (cache_dir(), "cache")):
        if folder.is_dir():
            for manifest_path in sorted(folder.glob("*.json")):
                catalogue.setdefault(manifest_path.stem, (manifest_path, source))
    return catalogue


def _available(catalogue: dict) -> str:
    if not catalogue:
        return f"no models are installed (user models go in {user_model_dir()}, or set ${USER_MODELS_ENV})"
    names = ", ".join(f"{name} ({source})" for name, (_, source) in catalogue.items())
    return f"available: {names}"


def add_model(path) -> ModelInfo:
    """Copy an exported model into the user model folder (``cellflow-rt run --add_model``).

    Parameters
    ----------
    path : str or path-like
        ``NAME.onnx`` (its manifest ``NAME.json`` beside it) or the manifest itself; the model is
        checked (manifest, checksum) before anything is copied. Its half-precision variant is copied
        too when the manifest lists it and the file is there.

    Returns
    -------
    ModelInfo
        The model as found in the user folder (use its ``name`` with ``--pretrained_model``).

    Raises
    ------
    ModelNotFoundError, ModelFileError
        As :func:`resolve_model`; also for a file that is not an exported model (a Cellpose checkpoint
        must first go through ``cellflow-rt export``, which installs it).
    """
    import shutil

    from .io.atomic import atomic_write

    source = Path(path).expanduser()
    if source.is_file() and source.suffix.lower() not in (".onnx", ".json"):
        raise ModelFileError(f"{source} is not an exported model (.onnx with its .json manifest); convert a "
                             f"Cellpose checkpoint with `cellflow-rt export {source} --name NAME`, which also "
                             "installs it in the user model folder")
    info = resolve_model(source)
    if source.suffix.lower() == ".json":
        manifest_path = source
    else:  # NAME.onnx or NAME_fp16.onnx: the manifest is NAME.json (see resolve_model)
        manifest_path = info.onnx_path.with_name(Path(info.manifest["onnx_file"]).stem + ".json")
    files = [info.onnx_path.with_name(info.manifest["onnx_file"]), manifest_path]
    fp16 = info.manifest.get("fp16")
    if isinstance(fp16, dict) and (info.onnx_path.parent / str(fp16.get("onnx_file"))).is_file():
        files.append(info.onnx_path.parent / fp16["onnx_file"])
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = folder / file.name
        if target.exists() and os.path.samefile(target, file):
            continue
        with atomic_write(target) as tmp:
            shutil.copyfile(file, tmp)
    return _load(folder / manifest_path.name, None, "user")
