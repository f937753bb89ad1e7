"""PNG/JPEG bytes for tests, made and read by Pillow: an encoder and decoder independent of ours."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a uint8 (gray, gray+alpha, RGB, RGBA) or uint16 gray array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG of a uint8 gray or RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode(data_or_path) -> np.ndarray:
    """Pixels of PNG/JPEG bytes or a file, as Pillow gives them."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
    with Image.open(source) as im:
        return np.asarray(im)
