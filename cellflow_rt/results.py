"""What the pipeline returns: :class:`Prediction` (after the network) and :class:`Segmentation` (masks).

A leaf module (numpy and the settings only), so that the pipeline, its GPU path and the front ends
can all name these types without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Sequence

import numpy as np

from .settings import EvalSettings


@dataclass
class Segmentation:
    """What :func:`cellflow_rt.pipeline.segment` returns for one image.

    Attributes
    ----------
    masks : ndarray
        Labels (uint16, or uint32 above 65535 masks) at the input's size; 0 = background.
    dP : ndarray
        Flows, (2, Y, X) in 2D (or (2, Z, Y, X) for stacks), (3, Z, Y, X) for do_3D.
    cellprob : ndarray
        Cell probability logits, same spatial shape as ``dP[0]``.
    styles : ndarray
        (256,) style vector (per plane for stacks; zeros for families without a style head).
    diameter : float
        Diameter the image was run at (pixels).
    timings : dict
        Seconds per stage: preprocess, network, dynamics.
    family : ModelFamily or None
        The model's family (:mod:`cellflow_rt.family`): how its flow pictures are drawn; None: the
        default family's rules.
    """

    masks: np.ndarray
    dP: np.ndarray
    cellprob: np.ndarray
    styles: np.ndarray
    diameter: float
    timings: Dict[str, float] = field(default_factory=dict)
    family: Any = None


@dataclass
class Prediction:
    """The network stage's result for one image, before dynamics (see :func:`cellflow_rt.pipeline.predict`).

    ``dP`` is (2, N, Y, X) for N planes, or (3, Z, Y, X) with ``do_3D``; ``shape`` is the spatial
    shape the masks must have; ``providers`` are the network's execution providers (they decide
    where ``dynamics="auto"`` runs the dynamics); ``family`` the model family whose rules
    :func:`cellflow_rt.pipeline.finish` follows (None: the default family's).
    """

    dP: np.ndarray
    cellprob: np.ndarray
    styles: np.ndarray
    shape: tuple
    rescale: object
    diameter: float
    settings: EvalSettings
    timings: Dict[str, float] = field(default_factory=dict)
    providers: Sequence[str] = ()
    family: Any = None
