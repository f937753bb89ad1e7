"""Getting a published model into the cache: find or download Cellpose's files, convert them to
ONNX (:func:`cellflow_rt.convert.convert_checkpoint`, no torch) and install the result atomically.

Order of sources for each file: Cellpose's own cache (a user who has run Cellpose downloads
nothing), else ``$CELLFLOW_RT_MODELS_URL`` or Cellpose's download location.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .cache import DOWNLOADS, cache_dir, cellpose_cache_dir, manifest_path, model_lock
from .catalog import CATALOG, PublishedFile, PublishedModel, lookup
from .download import MODELS_URL_ENV, DownloadError, download, source_url


def is_cached(name: str) -> bool:
    """Return True when the converted model ``name`` is in the cache."""
    return manifest_path(name).is_file()


def fetch_model(name: str, *, progress: bool = True, force: bool = False,
                echo: Optional[Callable[[str], None]] = None) -> Path:
    """Return the cached manifest of the published model ``name``, fetching and converting it first
    if needed.

    Parameters
    ----------
    name : str
        A published name (:data:`~.catalog.CATALOG`): ``cyto3``, ``nuclei``, ``denoise_cyto3``, ``cpsam`` ...
    progress : bool
        Progress bars and one line per step on stderr (bars only on a terminal).
    force : bool
        Fetch and convert again even when cached.
    echo : callable, optional
        Receives the step lines instead of stderr.

    Returns
    -------
    Path
        ``NAME.json`` in :func:`~.cache.cache_dir` (``NAME.onnx`` beside it).

    Raises
    ------
    UnknownModelError, UnsupportedModelError
        See :func:`~.catalog.lookup`.
    DownloadError, ChecksumError
        A file could not be fetched; the message names the file, the URL and where to put it by hand.
    ValueError
        The checkpoint could not be converted (the converter's message).
    """
    model = lookup(name)
    target = manifest_path(name)
    if target.is_file() and not force:
        return target
    say = echo or ((lambda line: print(line, file=sys.stderr)) if progress else (lambda line: None))
    with model_lock(name):
        if target.is_file() and not force:
            return target  # another process fetched it while this one waited
        started = time.perf_counter()
        _remove_leftovers(name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_downloads_dir()))
        try:
            sources = [_obtain(file, staging, name, progress, say) for file in model.files]
            say(f"converting {name} to ONNX...")
            try:
                _convert_and_install(model, [path for path, _ in sources], [record for _, record in sources])
            except ValueError as err:
                local = [str(path) for path, _ in sources if not path.is_relative_to(staging)]
                if not local:
                    raise
                raise ValueError(f"{err} (from Cellpose's cache: {', '.join(local)}; delete a damaged file "
                                 "there to have cellflow-rt download it again)") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # only when empty: another fetch may be downloading
        say(f"{name}: ready in {time.perf_counter() - started:.1f} s ({target})")
    return target


def remove_model(name: str) -> list:
    """Delete the cached model ``name`` (manifest first, so no reader sees a manifest without its
    network); return the files removed (none for a name that is not a published model). The lock
    file stays: deleting it could let two later fetches each lock a different file."""
    removed = []
    if name not in CATALOG:
        return removed
    folder = cache_dir()
    with model_lock(name):
        for path in (folder / f"{name}.json", folder / f"{name}.onnx", folder / f"{name}_fp16.onnx"):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def _remove_leftovers(name: str) -> None:
    """Delete the working folders of an earlier fetch of ``name`` that was killed (the caller holds
    the lock, so no live fetch owns them)."""
    folder = cache_dir()
    for leftover in [*(folder / DOWNLOADS).glob(f".{name}.*"), *folder.glob(f".{name}.convert.*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _downloads_dir() -> Path:
    folder = cache_dir() / DOWNLOADS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _obtain(file: PublishedFile, staging: Path, name: str, progress: bool, say) -> tuple:
    """Return (path, provenance record) for one of Cellpose's files: from Cellpose's cache or downloaded."""
    from ..checksum import sha256_file

    local = cellpose_cache_dir() / file.name
    if local.is_file():
        say(f"{name}: using {local} (Cellpose's cache)")
        return local, _record(file, sha256_file(local), local.stat().st_size, origin=str(local))
    url = source_url(file.name, file.base_url)
    say(f"{name}: downloading {url}")
    destination = staging / file.name
    hint = (f"Without internet: download {file.url} elsewhere and put it in {cellpose_cache_dir()} (Cellpose's "
            f"cache), or set {MODELS_URL_ENV} to a mirror URL or folder that holds the file {file.name}")
    try:
        digest = download(url, destination, sha256=file.sha256, progress=progress)
    except DownloadError as err:
        raise DownloadError(f"cannot fetch model {name!r}: Cellpose's file {file.name} could not be downloaded "
                            f"from {url}: {err.reason}. {hint}", url=url, reason=err.reason) from None
    return destination, _record(file, digest, destination.stat().st_size, origin=url)


def _record(file: PublishedFile, digest: str, size: int, origin: str) -> dict:
    return {"file": file.name, "url": file.url, "origin": origin, "bytes": size, "sha256": digest,
            "verified_at_source": file.sha256 is not None}


def _convert_and_install(model: PublishedModel, paths: list, records: list) -> None:
    """Convert into a private folder of the cache, then rename the network and then its manifest
    into place (a manifest is only ever seen with its network beside it)."""
    from ..convert import convert_checkpoint

    folder = cache_dir()
    work = Path(tempfile.mkdtemp(prefix=f".{model.name}.convert.", dir=folder))
    try:
        written = Path(convert_checkpoint(
            paths[0], paths[1] if len(paths) > 1 else None, name=model.name, out_dir=work,
            description=f"Cellpose's published model '{model.name}' ({model.checkpoint.name}), "
                        "converted by cellflow-rt",
            restore_type=model.restore_type, echo=lambda line: None))
        manifest = json.loads(written.read_text(encoding="utf-8"))
        if model.diam_mean is not None and manifest["diam_mean"] != model.diam_mean:
            # Cellpose uses its built-in value for this name, not the checkpoint's (catalog.PublishedModel)
            manifest["stored_diam_mean"], manifest["diam_mean"] = manifest["diam_mean"], model.diam_mean
        manifest["published"] = {"name": model.name, "files": records,
                                 "note": "Cellpose publishes no checksums: sha256 is that of the file used"}
        tmp_manifest = work / f".{model.name}.json.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        with open(tmp_manifest, "rb+") as f:
            os.fsync(f.fileno())
        for extra in sorted(work.glob("*.onnx")):
            os.replace(extra, folder / extra.name)
        os.replace(tmp_manifest, folder / f"{model.name}.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
