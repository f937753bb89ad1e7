"""Reading Cellpose's size model (``*_size.npy``) into plain JSON numbers.

The file is ``np.save`` of a Python dict (a pickled 0-d object array) with ``A`` (ridge weights),
``smean`` (mean style), ``diam_mean`` and ``ymean`` (notes 1.6). This is the only place in
cellflow-rt that unpickles anything, and it does so with the ``_seg.npy`` reader's unpickler
(:class:`cellflow_rt.io.seg_file.SegUnpickler`), which builds only plain data and numpy arrays, so a
crafted file can neither run code nor make the reader allocate more than its declared arrays' worth
(lengths checked against the file, arrays against :func:`cellflow_rt.io.limits.max_values`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cellflow_rt.io.limits import ImageTooLargeError
from cellflow_rt.io.seg_file import SegUnpickler, _check_lengths

SIZE_MODEL_KEYS = ("A", "smean", "diam_mean", "ymean")


class SizeModelError(ValueError):
    """The file is not a Cellpose size model."""


def read_size_model(path, nstyle: int = 256) -> dict:
    """Read a Cellpose size model and return its parameters as JSON-ready Python values.

    Parameters
    ----------
    path : str or Path
        A ``size_<model>.npy`` or ``<model>_size.npy`` file.
    nstyle : int
        Length of the network's style vector; ``A`` and ``smean`` must have it.

    Returns
    -------
    dict
        ``{"A": [nstyle floats], "smean": [nstyle floats], "diam_mean": float, "ymean": float}``.
        Every value is the stored number widened to float64 exactly, so ``json.dumps`` (which
        writes floats with ``repr``) loses nothing.

    Raises
    ------
    SizeModelError
        When the file is not such a dict or its values have the wrong shape or are not finite.
    """
    path = Path(path)
    params = _load_pickled_dict(path)
    missing = [k for k in SIZE_MODEL_KEYS if k not in params]
    if missing:
        raise SizeModelError(f"size model {path} lacks {missing} (has {sorted(params)})")
    values = {}
    for key in ("A", "smean"):
        array = np.asarray(params[key])
        if array.shape != (nstyle,) or array.dtype.kind != "f":
            raise SizeModelError(
                f"size model {path}: '{key}' should be {nstyle} floats, got shape {array.shape} dtype {array.dtype}"
            )
        values[key] = [float(v) for v in array.astype(np.float64)]
    for key in ("diam_mean", "ymean"):
        array = np.asarray(params[key])
        if array.size != 1 or array.dtype.kind not in "fiu":
            raise SizeModelError(f"size model {path}: '{key}' should be one number, got {params[key]!r}")
        values[key] = float(array.astype(np.float64).reshape(-1)[0])
    if not all(np.isfinite(values["A"])) or not all(np.isfinite(values["smean"])):
        raise SizeModelError(f"size model {path} has non-finite weights")
    if not (np.isfinite(values["ymean"]) and np.isfinite(values["diam_mean"]) and values["diam_mean"] > 0):
        raise SizeModelError(f"size model {path}: diam_mean must be positive and ymean finite")
    return values


def _load_pickled_dict(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise SizeModelError(f"size model {path}: unsupported .npy format version {version}")
            shape, _, dtype = read_header[version](f)
            if dtype != np.dtype(object) or shape != ():
                raise SizeModelError(f"size model {path} holds a {dtype} array of shape {shape}, not a pickled dict")
            payload = f.read()
        # found by fuzzing: the C unpickler grew its memo to a LONG_BINPUT's index and let a pickle call
        # numpy.ndarray((2**28,)): gigabytes from a 100-byte file; SegUnpickler refuses both
        _check_lengths(payload)
        array = SegUnpickler(io.BytesIO(payload)).load()
    except SizeModelError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"size model: no such file: {path}") from None
    except ImageTooLargeError as err:
        raise SizeModelError(f"size model {path} declares an array too large for a size model ({err})") from None
    except Exception as err:
        raise SizeModelError(f"size model {path} could not be read: {type(err).__name__}: {err}") from None
    # np.save of a dict is a 0-d object array; any other array is not a size model (found by fuzzing:
    # .item() on a larger one raised ValueError outside the documented SizeModelError)
    params = array.item() if isinstance(array, np.ndarray) and array.dtype == object and array.shape == () else array
    if not isinstance(params, dict):
        raise SizeModelError(f"size model {path} holds a {type(params).__name__}, not a dict")
    return params
