"""Regenerate docs/napari-panel.png: the cellflow-rt panel with masks on the example image.

Needs the napari extra and a display; headless, under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/napari_screenshot.py

It opens a napari window, loads the sample image through the plugin, docks the panel (as
``Plugins > cellflow-rt`` does), presses Run with the panel's defaults (``nuclei_demo``, diameter 17),
waits for the Labels layer and saves a screenshot of the whole window.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "napari-panel.png"


def main() -> int:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("no display: run under xvfb-run (see the docstring)", file=sys.stderr)
        return 2
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    from cellflow_rt.io.png import encode_png

    viewer = napari.Viewer(title="napari + cellflow-rt", show=True)
    viewer.window.resize(1400, 820)
    viewer.open_sample("cellflow-rt", "example_nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("cellflow-rt", "cellflow-rt")
    widget.run()
    app = QApplication.instance()
    while widget.busy:
        app.processEvents()
        time.sleep(0.02)
    viewer.layers.selection.active = widget.labels_layer
    for _ in range(20):  # let the canvas and the dock settle
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    OUT.write_bytes(encode_png(np.ascontiguousarray(shot[..., :3]), level=9))
    print(f"{OUT} ({shot.shape[1]} x {shot.shape[0]}): {widget.status_label.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
