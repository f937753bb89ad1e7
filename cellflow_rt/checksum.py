"""File checksums: the sha256 that manifests, downloads and engine caches record (a leaf module)."""
from __future__ import annotations

import hashlib


def sha256_file(path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
