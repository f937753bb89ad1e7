"""The example image shipped with the package, for a first run and for tests.

``example_nuclei.tif`` is a 256 x 256 uint8 crop (rows 192-447, columns 352-607) of the DSB2018
fluorescence image ``193ffaa5272d...`` (BBBC038 stage1_train, CC0), with about 40 nuclei of
about 17 pixels: it suits the bundled ``nuclei_demo`` model at ``--diameter 17`` (or 0 to estimate).
It is installed with the bundled models (``cellflow_rt.bundled``).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["example_image_path", "EXAMPLE_MODEL", "EXAMPLE_DIAMETER"]

#: The bundled model the example image is meant for, and the diameter to run it at.
EXAMPLE_MODEL = "nuclei_demo"
EXAMPLE_DIAMETER = 17.0

_EXAMPLE_FILE = "example_nuclei.tif"


def example_image_path() -> Path:
    """Path of the bundled example image (a TIFF inside the installed package).

    Returns
    -------
    Path
        An existing file; read it with :func:`cellflow_rt.io.imread` or give it to ``cellflow-rt run``
        (outputs are written next to it unless ``--savedir`` is given, so pass ``--savedir`` when
        the package folder is read-only).

    Raises
    ------
    FileNotFoundError
        The package was installed without its data files.

    Examples
    --------
    >>> from cellflow_rt.examples import example_image_path
    >>> example_image_path().name
    'example_nuclei.tif'
    """
    path = Path(str(importlib.resources.files("cellflow_rt.bundled") / _EXAMPLE_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"the example image {path} is missing: reinstall cellflow-rt with its "
                                f"package data (cellflow_rt.bundled/*.tif)")
    return path
