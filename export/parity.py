"""The parity gate: the ONNX graph must compute what the torch network computes.

Both run on the same inputs (random noise and smooth blob images, like normalised micrographs); the
largest absolute differences are measured per case. CPnet: batch 1 and 8 at several tile sizes,
square and not. Cellpose-SAM (fixed 256 x 256 tiles, a network that takes seconds per tile on a
CPU): a few tiles, run by ONNX Runtime as one batch of a size the graph was not traced at.
:func:`check_parity` refuses a graph whose error exceeds the tolerances.
"""
from __future__ import annotations

import numpy as np

FLOWS_TOLERANCE = 1e-4
STYLE_TOLERANCE = 1e-5
# Multiples of 16, as Cellpose's tiles are; 224 is the standard tile, the others are the shapes
# small or non-square images and 3D ortho views produce.
PARITY_SIZES = ((224, 224), (128, 160), (240, 176))
PARITY_BATCH = 8


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch network within tolerance."""


def parity_images(
    nchan: int, height: int, width: int, batch: int = PARITY_BATCH, seed: int = 0, grayscale: bool = False
) -> np.ndarray:
    """Return float32 ``[batch, nchan, height, width]`` test inputs.

    The first half are standard-normal noise; the second half are blob images scaled to roughly
    [0, 1] as Cellpose's normalisation leaves them, the last with its second channel zero (a
    grayscale image under ``channels=[0, 0]``).

    With ``grayscale`` every image has its extra channels zero, which is what a grayscale model
    (default channels ``[0, 0]``) always receives. Why it matters: fed a second channel it never
    saw, a nuclei model answers with logits in the hundreds, and float32 rounding alone (torch
    float32 against float64) then exceeds the 1e-4 tolerance, whatever runs the graph.
    """
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, nchan, height, width)).astype(np.float32)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    for b in range(batch // 2, batch):
        for c in range(nchan):
            canvas = np.zeros((height, width), np.float32)
            for _ in range(12):
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
                radius = rng.uniform(4, 16)
                canvas += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
            canvas += 0.02 * rng.standard_normal((height, width)).astype(np.float32)
            images[b, c] = canvas / max(float(canvas.max()), 1e-6)
        if nchan > 1 and b == batch - 1:
            images[b, 1:] = 0.0
    if grayscale:
        images[:, 1:] = 0.0
    return images


def torch_outputs(net, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the torch CPnet on ``images`` and return ``(flows, style)`` as numpy float32."""
    import torch

    with torch.no_grad():
        flows, style = net(torch.from_numpy(np.ascontiguousarray(images)))
    return flows.numpy(), style.numpy()


def onnx_session(model_bytes: bytes):
    """Return an ONNX Runtime CPU session with default optimisations, as the runtime builds it."""
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def onnx_outputs(session, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an ONNX Runtime session and return ``(flows, style)``."""
    flows, style = session.run(["flows", "style"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
    return flows, style


def measure_parity(
    net, model_bytes: bytes, sizes=PARITY_SIZES, batch: int = PARITY_BATCH, grayscale: bool = False
) -> dict:
    """Measure the largest ONNX-vs-torch differences.

    Parameters
    ----------
    net : CPnet
        The torch network the graph was exported from.
    model_bytes : bytes
        The serialised ONNX model.
    sizes : sequence of (int, int)
        Tile sizes (height, width) to test; multiples of 16.
    batch : int
        The larger batch size; batch 1 is always tested too, on one noise and one blob image.
    grayscale : bool
        Feed zeros in the channels after the first, as for a model used with channels ``[0, 0]``
        (see :func:`parity_images`).

    Returns
    -------
    dict
        ``max_abs_error_flows``, ``max_abs_error_style`` over all cases, and ``cases``: one entry
        per (batch, height, width) with its own two errors.
    """
    session = onnx_session(model_bytes)
    cases = []
    for seed, (height, width) in enumerate(sizes):
        images = parity_images(net.spec.nchan, height, width, batch, seed=seed, grayscale=grayscale)
        runs = [(batch, images)] + [(1, images[i : i + 1]) for i in (0, batch - 1)]
        for n, x in runs:
            flows_t, style_t = torch_outputs(net, x)
            flows_o, style_o = onnx_outputs(session, x)
            cases.append(
                {
                    "batch": n,
                    "height": height,
                    "width": width,
                    "max_abs_error_flows": float(np.max(np.abs(flows_o - flows_t))),
                    "max_abs_error_style": float(np.max(np.abs(style_o - style_t))),
                }
            )
    return {
        "inputs": "grayscale" if grayscale else "all channels",
        # np.max, unlike max(), lets a NaN through to the gate
        "max_abs_error_flows": float(np.max([c["max_abs_error_flows"] for c in cases])),
        "max_abs_error_style": float(np.max([c["max_abs_error_style"] for c in cases])),
        "cases": cases,
    }


def check_parity(
    report: dict, flows_tolerance: float = FLOWS_TOLERANCE, style_tolerance: float = STYLE_TOLERANCE
) -> None:
    """Raise :class:`ParityError` when a measured error exceeds its tolerance (NaN fails too)."""
    flows, style = report["max_abs_error_flows"], report["max_abs_error_style"]
    if not (flows <= flows_tolerance and style <= style_tolerance):
        raise ParityError(
            f"ONNX output differs from torch: max |flows error| {flows:.3g} (limit {flows_tolerance:g}), "
            f"max |style error| {style:.3g} (limit {style_tolerance:g}); nothing was written"
        )


def runtime_versions() -> dict:
    """The torch and ONNX Runtime versions the gate ran with (recorded in the manifest)."""
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def format_report(report: dict, label: str = "fp32") -> str:
    """Return the measured errors as a few human-readable lines."""
    lines = [
        f"{label}: max abs error flows {report['max_abs_error_flows']:.3g}, style {report['max_abs_error_style']:.3g}"
    ]
    for case in report["cases"]:
        tile = f" tile {case['tile']}" if "tile" in case else ""
        lines.append(
            f"  batch {case['batch']:>2}{tile} {case['height']}x{case['width']}: "
            f"flows {case['max_abs_error_flows']:.3g}, style {case['max_abs_error_style']:.3g}"
        )
    return "\n".join(lines)


#: Tiles the Cellpose-SAM gate runs through torch by default (one noise tile, one blob tile).
CPSAM_PARITY_TILES = 2


def cpsam_parity_images(tiles: int = CPSAM_PARITY_TILES) -> np.ndarray:
    """float32 ``[tiles, 3, 256, 256]`` inputs for the Cellpose-SAM gate (see :func:`parity_images`)."""
    from .cpsam import NCHAN, TILE

    return parity_images(NCHAN, TILE, TILE, batch=tiles, seed=0)


def measure_cpsam_parity(torch_flows: np.ndarray, onnx_path, images: np.ndarray) -> dict:
    """ONNX Runtime against torch on the Cellpose-SAM gate's tiles.

    The graph runs the tiles plus a repeat of the first as one batch (a batch size the graph was
    not traced at, and each tile next to others); every tile's flows are compared with torch's and
    the (all-zero) style with zeros.

    Parameters
    ----------
    torch_flows : ndarray
        The torch network's flows on ``images`` (computed before the export, so that the torch
        network need not be in memory with the ONNX Runtime session).
    onnx_path : path
        The exported graph.
    images : ndarray
        The gate's tiles, ``[n, 3, 256, 256]``.

    Returns
    -------
    dict
        As :func:`measure_parity`.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = np.concatenate([images, images[:1]])
    flows, style = onnx_outputs(session, batch)
    del session
    expected = np.concatenate([torch_flows, torch_flows[:1]])
    height, width = images.shape[2:]
    cases = [{"batch": int(batch.shape[0]), "tile": i, "height": int(height), "width": int(width),
              "max_abs_error_flows": float(np.max(np.abs(flows[i] - expected[i]))),
              "max_abs_error_style": float(np.max(np.abs(style[i])))} for i in range(batch.shape[0])]
    return {
        "inputs": "all channels",
        "max_abs_error_flows": float(np.max([c["max_abs_error_flows"] for c in cases])),
        "max_abs_error_style": float(np.max([c["max_abs_error_style"] for c in cases])),
        "cases": cases,
    }
