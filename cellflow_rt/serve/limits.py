"""What one request may cost the server: body size, pixels, time, and the work its settings imply.

A worker thread cannot be interrupted once the pipeline runs, so settings that would make a small
image expensive (a tiny ``diameter`` upsamples the image; a huge ``niter`` runs Euler steps for
hours) are refused before the work starts, with the option named.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..family import family_of
from ..settings import EvalSettings
from .decode import ImageTooLargeError

#: Euler steps a request may ask for: 50 x Cellpose's default of 200 (which grows as 200 x diameter
#: / diam_mean with resampling, so it also bounds very large diameters).
MAX_EULER_STEPS = 10_000


@dataclass(frozen=True)
class Limits:
    """The server's per-request limits (``cellflow-rt serve`` flags)."""

    #: largest request body (bytes)
    max_body_bytes: int
    #: largest image, in array elements (pixels x planes x channels), also after resizing to the
    #: model's scale
    max_values: int
    #: seconds from the request's arrival to its answer (upload, queue and work together)
    timeout: float


def check_work(shape: Tuple[int, ...], model, settings: EvalSettings, limits: Limits) -> None:
    """Refuse settings that would make the work on an image of ``shape`` unbounded.

    Raises
    ------
    ImageTooLargeError
        The image resized to the model's scale (the family's rule, e.g. ``diam_mean / diameter``; Z
        also by ``anisotropy`` with do_3D) exceeds the pixel limit, or the Euler steps (the family's
        rule) exceed :data:`MAX_EULER_STEPS`.
    """
    family = family_of(model)
    rescale = float(family.rescale_for(model, settings))
    values = float(np.prod(shape, dtype=np.float64)) * rescale ** 2
    if settings.do_3D:
        values *= rescale * (settings.anisotropy or 1.0)
    if values > limits.max_values:
        raise ImageTooLargeError(
            f"at diameter {family.diameter_at(model, rescale):.3g} the image is resized by {rescale:.3g} to "
            f"{values / 1e6:.1f} million values, over this server's limit of {limits.max_values / 1e6:g} million")
    steps = float(family.euler_iterations(settings, rescale))
    if steps > MAX_EULER_STEPS:
        raise ImageTooLargeError(f"these settings need {steps:.0f} Euler steps (niter, or 200 / the resize factor); "
                                 f"this server allows at most {MAX_EULER_STEPS}")
