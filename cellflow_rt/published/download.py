"""Downloading one file safely: streamed to a temporary file beside its destination, checked
(length against Content-Length, sha256 when known) and only then renamed into place.

Uses only urllib, so ``http(s)://`` and ``file://`` locations work alike.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .. import __version__

#: Replaces Cellpose's download locations (a mirror or a local folder of Cellpose's files).
MODELS_URL_ENV = "CELLFLOW_RT_MODELS_URL"
#: Attempts after the first, and the first wait (doubled each time): 0.5 s, 1 s, 2 s.
RETRIES = 3
BACKOFF_SECONDS = 0.5
_CHUNK = 1 << 20
_TIMEOUT = 60.0


class DownloadError(ValueError):
    """A file could not be downloaded (network, server or incomplete transfer).

    Attributes
    ----------
    url : str
        What was tried.
    reason : str
        Why it failed, with the number of attempts when there were several.
    """

    def __init__(self, message: str, url: str = "", reason: str = ""):
        super().__init__(message)
        self.url, self.reason = url, reason


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the expected one."""


def source_url(file_name: str, default_base: str) -> str:
    """Return where to fetch ``file_name``: ``$CELLFLOW_RT_MODELS_URL/file_name`` when that is set
    (an ``http(s)://`` or ``file://`` URL, or a local folder), else ``default_base/file_name``."""
    base = os.environ.get(MODELS_URL_ENV, "").strip()
    if not base:
        return f"{default_base.rstrip('/')}/{file_name}"
    if "://" in base:
        return f"{base.rstrip('/')}/{file_name}"
    return (Path(base).expanduser().resolve() / file_name).as_uri()


def download(url: str, destination, *, sha256: Optional[str] = None, progress: bool = True,
             retries: Optional[int] = None, backoff: Optional[float] = None, hint: str = "") -> str:
    """Download ``url`` to ``destination`` all at once or not at all.

    Parameters
    ----------
    url : str
        ``http://``, ``https://`` or ``file://`` URL.
    destination : str or Path
        The final path; its folder is created. The data go to a temporary file in that folder,
        renamed onto ``destination`` only when complete and checked.
    sha256 : str, optional
        Expected hex digest; a mismatch is refused (no retry).
    progress : bool
        Show a tqdm progress bar on stderr (only when stderr is a terminal).
    retries : int, optional
        Attempts after the first for network errors, server errors (5xx) and short transfers, waiting
        ``backoff * 2**i`` seconds before attempt ``i + 1`` (defaults: :data:`RETRIES`,
        :data:`BACKOFF_SECONDS`).
    hint : str
        Appended to the error message (e.g. where to put the file by hand).

    Returns
    -------
    str
        The sha256 of the downloaded file.

    Raises
    ------
    DownloadError
        Unreachable, refused (HTTP 4xx) or incomplete after every attempt; names the URL and the path.
    ChecksumError
        The file's sha256 is not ``sha256``.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            digest = _fetch_once(url, destination, progress)
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code != 429:
                break  # the server's answer will not change on retry
        except (urllib.error.URLError, OSError, _ShortTransfer) as err:
            cause = getattr(err, "reason", None) or err
            last = str(cause)
            if isinstance(cause, FileNotFoundError):
                last = f"no such file {cause.filename}"
                break  # a local mirror without the file
        else:
            if sha256 is not None and digest != sha256.lower():
                destination.unlink(missing_ok=True)
                raise ChecksumError(f"{url}: sha256 {digest} is not the expected {sha256}; the file was "
                                    f"refused (nothing written at {destination})")
            return digest
    if attempt:
        last = f"{last} ({attempt + 1} attempts)"
    raise DownloadError(f"cannot download {url} to {destination}: {last}" + (f". {hint}" if hint else ""),
                        url=url, reason=last)


class _ShortTransfer(Exception):
    pass


def _fetch_once(url: str, destination: Path, progress: bool) -> str:
    """One attempt: stream into a temporary file, check its length, rename it; return its sha256."""
    request = urllib.request.Request(url, headers={"User-Agent": f"cellflow-rt/{__version__}"})
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            received = 0
            with _progress_bar(expected, destination.name, progress) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected is not None and received != expected:
                raise _ShortTransfer(f"the connection closed after {received} of {expected} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _progress_bar(total, label: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
