"""Shared test fixtures: paths to ../shared and the bundled models."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The GPU kernels (cellflow_rt.gpu) run on the CPU in numba's CUDA simulator: it must be chosen
# before numba.cuda is first imported, hence here. CPU code never imports numba.cuda (it only asks
# for a device when the network runs on a GPU provider), so the rest of the suite is unaffected.
# On a machine with an NVIDIA GPU, NUMBA_ENABLE_CUDASIM=0 runs the same tests on the device.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if "numba" in sys.modules:  # a pytest plugin (napari's) imported numba before this file: reread its config
    from numba.core import config as _numba_config
    _numba_config.reload_config()

# The suite neither reads nor fills the user's cache of Cellpose's published models (cellflow_rt.published);
# the tests that fetch models serve the demo checkpoints on 127.0.0.1 (tests/published_server.py).
_PUBLISHED_CACHE = tempfile.mkdtemp(prefix="cellflow-rt-test-models-")
os.environ["CELLFLOW_RT_MODELS_DIR"] = _PUBLISHED_CACHE
atexit.register(shutil.rmtree, _PUBLISHED_CACHE, True)
# nor OpenVINO's cache of rewritten and compiled graphs (cellflow_rt.network_openvino)
_OPENVINO_CACHE = tempfile.mkdtemp(prefix="cellflow-rt-test-openvino-")
os.environ["CELLFLOW_RT_OPENVINO_CACHE"] = _OPENVINO_CACHE
atexit.register(shutil.rmtree, _OPENVINO_CACHE, True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE_2D = SHARED / "reference" / "2d"
REFERENCE_3D = SHARED / "reference" / "3d"
DATA = Path(__file__).resolve().parent / "data"


def require_shared():
    """Skip when the shared reference folder is absent (it is always present in CI)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED}")


def reference_cases(dim: str = "2d"):
    """Names of the reference cases (empty when ../shared is absent)."""
    root = REFERENCE_2D if dim == "2d" else REFERENCE_3D
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


REFERENCE_CPSAM = SHARED / "reference" / "cpsam"
CPSAM_TINY = SHARED / "weights" / "cellflow_cpsam_tiny_demo"


def cpsam_cases():
    """Names of the Cellpose 4 (Cellpose-SAM) reference cases (empty when ../shared is absent)."""
    return sorted(p.name for p in REFERENCE_CPSAM.iterdir() if p.is_dir()) if REFERENCE_CPSAM.is_dir() else []


@pytest.fixture(scope="session")
def cpsam_tiny(tmp_path_factory):
    """Manifest of the Cellpose-SAM demo, exported once per test session (with its fp16 variant)."""
    pytest.importorskip("torch")
    require_shared()
    from cellflow_rt.export import export_checkpoint

    lines = []
    manifest = export_checkpoint(CPSAM_TINY, name="cpsam_tiny", out_dir=tmp_path_factory.mktemp("cpsam"), fp16=True,
                                 echo=lines.append)
    manifest.with_name("export.log").write_text("\n".join(lines))
    return manifest
