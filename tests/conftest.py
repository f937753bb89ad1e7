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
#: Cellpose 3.1.1.1's outputs; $CELLFLOW_RT_REFERENCE points the parity tests at another copy (e.g. one
#: with altered masks, tests/tools/alter_reference.py, to show that they fail on a difference)
REFERENCE = Path(os.environ.get("CELLFLOW_RT_REFERENCE", SHARED / "reference"))
REFERENCE_2D = REFERENCE / "2d"
REFERENCE_3D = REFERENCE / "3d"
DATA = Path(__file__).resolve().parent / "data"


#: The oracle: a Python with cellpose==3.1.1.1 and torch (.ci/run builds one, ../shared/README.md's
#: pins). Tests that run Cellpose itself skip only when this is unset; set but broken, they fail.
CELLPOSE_PYTHON_VARIABLE = "CELLFLOW_RT_CELLPOSE_PYTHON"


def cellpose_python() -> str:
    """Path of the Python that runs Cellpose 3.1.1.1 (``$CELLFLOW_RT_CELLPOSE_PYTHON``).

    Returns
    -------
    str
        The interpreter's path. Skips the calling test when the variable is unset; fails it when the
        variable names no file, so that CI, which sets it, never skips for want of Cellpose.
    """
    python = os.environ.get(CELLPOSE_PYTHON_VARIABLE)
    if not python:
        pytest.skip(f"Cellpose 3.1.1.1 is not available: set {CELLPOSE_PYTHON_VARIABLE} to a Python that has "
                    "cellpose==3.1.1.1 and torch (.ci/run builds .venv-cellpose)")
    assert Path(python).is_file(), f"{CELLPOSE_PYTHON_VARIABLE}={python}: no such interpreter"
    return python


def require_shared():
    """Skip when the shared reference folder is absent (it is always present in CI)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED}")


def reference_cases(dim: str = "2d"):
    """Names of the reference cases (empty when ../shared is absent)."""
    root = REFERENCE_2D if dim == "2d" else REFERENCE_3D
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


REFERENCE_CPSAM = REFERENCE / "cpsam"
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


@pytest.fixture(scope="session")
def cpsam_converted(tmp_path_factory):
    """Manifest of the Cellpose-SAM demo converted without torch (``cellflow_rt.convert``), once per session."""
    require_shared()
    from cellflow_rt.convert import convert_checkpoint

    return convert_checkpoint(CPSAM_TINY, name="cpsam_demo", out_dir=tmp_path_factory.mktemp("cpsam-converted"))


@pytest.fixture(autouse=True)
def _one_heavy_test_at_a_time(request, tmp_path_factory):
    """Under pytest-xdist, the ``heavy`` tests take turns (each full-size ViT-L one peaks at about 5 GiB)."""
    if request.node.get_closest_marker("heavy") is None or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    import fcntl

    # the workers' base temporary folders are siblings: their parent belongs to this run alone
    with open(tmp_path_factory.getbasetemp().parent / "heavy-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------------
# fuzzing (tests/test_fuzz_*.py, Hypothesis): a short "ci" profile by default; the long campaign runs
# the same targets with CELLFLOW_RT_FUZZ=campaign (bench/fuzz.py does, and reports the statistics).
try:
    from hypothesis import HealthCheck, settings as _hypothesis_settings
except ImportError:  # the test extra installs it; without it the fuzz tests skip (importorskip)
    pass
else:
    _FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    # each case bounded in time (deadline: generous in CI, whose 2 cores are shared); a few hundred
    # cases per target in CI
    _hypothesis_settings.register_profile("ci", max_examples=300, deadline=10_000, database=None,
                                          suppress_health_check=_FUZZ_HEALTH, derandomize=True)
    from hypothesis.database import DirectoryBasedExampleDatabase
    _hypothesis_settings.register_profile(
        "campaign", max_examples=int(os.environ.get("CELLFLOW_RT_FUZZ_EXAMPLES", 20_000)), deadline=5000,
        suppress_health_check=_FUZZ_HEALTH, database=DirectoryBasedExampleDatabase(str(REPO / "bench" / "out" / "fuzz-db")))
    _hypothesis_settings.load_profile(os.environ.get("CELLFLOW_RT_FUZZ", "ci"))


def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: property-based fuzz targets (Hypothesis; CELLFLOW_RT_FUZZ=campaign "
                                       "for the long run)")
    config.addinivalue_line("markers", "faults: runs killed or starved of disk mid-write")
