"""The skip rules of the tests that open a real napari viewer (one place for every such module)."""
import os
import sys

import pytest


def require_napari_viewer():
    """Skip the calling test module unless napari, pytest-qt and a display with OpenGL are there.

    Returns
    -------
    module
        The ``napari`` module.
    """
    napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[napari]')")
    pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        pytest.skip("Qt's offscreen platform has no OpenGL for napari's canvas", allow_module_level=True)
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no display: install Xvfb (Debian: xvfb) and pytest-xvfb starts one", allow_module_level=True)
    return napari
