"""The converter's gate: run a written graph once in ONNX Runtime and refuse a broken one.

Without torch there is no reference to compare with, so the gate checks what can go wrong in a
conversion that the graph checker cannot see: outputs of the wrong shape, NaN or infinity. (That
the graphs compute what the torch exporter's do is what the parity tests establish.)
"""
from __future__ import annotations

import numpy as np

from .errors import ConversionCheckError


def self_check(path, input_shape: tuple, expected: dict, seed: int = 0) -> dict:
    """Run the graph at ``path`` on a fixed random image and check its outputs.

    Parameters
    ----------
    path : str or Path
        The ONNX file (``image`` in, ``flows`` and ``style`` out).
    input_shape : tuple of int
        The image's shape.
    expected : dict
        Output name -> expected shape.
    seed : int
        Seed of the test image (uniform in [0, 1), as a normalised image is).

    Returns
    -------
    dict
        What was checked, for the manifest: input shape, output shapes, ``finite`` True, and the
        ONNX Runtime version.

    Raises
    ------
    ConversionCheckError
        When the graph does not load or run, an output has the wrong shape, or is not finite.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        image = np.random.default_rng(seed).random(input_shape, dtype=np.float32)
        names = list(expected)
        outputs = dict(zip(names, session.run(names, {"image": image})))
    except Exception as err:  # the checker and ORT raise their own types
        raise ConversionCheckError(f"converted graph {path} failed to load or run: {type(err).__name__}: "
                                   f"{str(err)[:300]}") from None
    for name, shape in expected.items():
        got = outputs[name]
        if got.shape != tuple(shape) or got.dtype != np.float32:
            raise ConversionCheckError(f"converted graph: '{name}' is {got.dtype} {got.shape}, expected float32 "
                                       f"{tuple(shape)}")
        if not np.isfinite(got).all():
            raise ConversionCheckError(f"converted graph: '{name}' has NaN or infinite values on a test image")
    return {"checked": "outputs finite and of the right shapes on a random image (no torch reference)",
            "input_shape": list(input_shape), "output_shapes": {k: list(v) for k, v in expected.items()},
            "finite": True, "onnxruntime": ort.__version__}
