"""Sample data (``File > Open Sample > cellflow-rt``): the bundled example image."""
from __future__ import annotations

from ..examples import example_image_path
from ..io import imread


def example_image():
    """The 256 x 256 DSB2018 nuclei crop shipped with the package (for ``nuclei_demo``, diameter 17)."""
    return [(imread(example_image_path()), {"name": "example_nuclei"}, "image")]
