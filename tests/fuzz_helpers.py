"""What every fuzz target checks: a correct result or a documented error, within bounded memory.

``within_contract(call, errors)`` runs ``call()`` under tracemalloc (numpy reports its array buffers
to it) and returns ``(result, error)``: one of them None. Any exception not in ``errors`` propagates
and fails the case; Hypothesis's deadline bounds its time.
"""
from __future__ import annotations

import tracemalloc
from typing import Callable, Tuple, Type

#: Peak traced memory a refused input may cost, and what an accepted one may cost beyond its result.
MEMORY_SLACK = 64 << 20


def within_contract(call: Callable, errors: Tuple[Type[BaseException], ...], result_bytes=lambda r: 0):
    """``(result, None)`` or ``(None, error)``; asserts the traced peak stays near what the result needs."""
    tracemalloc.start()
    try:
        try:
            result, error = call(), None
        except errors as exc:
            result, error = None, exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    allowed = MEMORY_SLACK + 8 * (result_bytes(result) if result is not None else 0)
    assert peak <= allowed, f"peak traced memory {peak >> 20} MiB for a result of {result_bytes(result)} bytes"
    if error is not None:
        assert str(error).strip(), f"{type(error).__name__} without a message"
    return result, error


def overwrite(data: bytes, edits) -> bytes:
    """``data`` with ``(position, byte)`` edits (positions taken modulo its length)."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)
