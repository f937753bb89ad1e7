"""cellflow_rt.gpu: the GPU dynamics against the CPU path, in numba's CUDA simulator.

``tests/conftest.py`` sets ``NUMBA_ENABLE_CUDASIM=1`` before numba.cuda is imported, so the kernels
run on the CPU (one Python thread per simulated thread: inputs are crops <= 64^2 and small stacks);
with ``NUMBA_ENABLE_CUDASIM=0`` on a machine with an NVIDIA GPU the same tests run on the device.
The GPU path reproduces the CPU path's arithmetic, so every comparison is for identical masks.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the test extra installs it)")

from numba import cuda  # noqa: E402

from cellflow_rt import dynamics  # noqa: E402
from cellflow_rt.gpu import DynamicsUnavailableError, choose_dynamics  # noqa: E402
from cellflow_rt.gpu import dynamics as gpu_dynamics  # noqa: E402
from cellflow_rt.gpu import _fill  # noqa: E402
from cellflow_rt.pipeline import dynamics_for  # noqa: E402
from cellflow_rt.settings import EvalSettings  # noqa: E402

from conftest import REFERENCE_2D, REFERENCE_3D, require_shared  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "dynamics_fixtures.npz"


def recorded_call(root, case, window):
    """A recorded dynamics call cropped to ``window`` (slices of the spatial axes)."""
    require_shared()
    data = np.load(root / case / "dynamics_0.npz")
    kwargs = json.loads((root / case / "dynamics_0.json").read_text())
    dP = np.ascontiguousarray(data["dP"][(slice(None), *window)])
    cellprob = np.ascontiguousarray(data["cellprob"][window])
    return dP, cellprob, kwargs


def assert_identical(ours, ref):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


# (case, crop, resize): crops with several masks; each exercises a different option set
CASES_2D = [
    ("nuclei_256", (slice(96, 144), slice(96, 152)), None),                 # defaults
    ("cyto_300_2ch", (slice(184, 232), slice(96, 160)), None),              # larger masks
    ("nuclei_200_small_diam8", (slice(0, 48), slice(0, 64)), None),         # niter 94, min_size 5
    ("nuclei_256_augment_noqc", (slice(64, 112), slice(64, 128)), None),    # no flow check, cellprob -1
    ("cyto_480_rgb_flow0.8_cp-2", (slice(432, 480), slice(168, 216)), None),  # flow 0.8, cellprob -2
    ("nuclei_1024_diam25_noresample", (slice(300, 348), slice(300, 348)), (71, 70)),  # resized masks
]


@pytest.mark.parametrize("case,window,resize", CASES_2D, ids=[c[0] for c in CASES_2D])
def test_recorded_2d_calls_give_the_cpu_masks(case, window, resize):
    dP, cellprob, kwargs = recorded_call(REFERENCE_2D, case, window)
    kwargs["resize"] = resize
    ref = dynamics.resize_and_compute_masks(dP, cellprob, **kwargs)
    assert ref.max() >= 2, "crop without masks: choose another window"
    assert_identical(gpu_dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), ref)


def test_device_arrays_are_read_in_place_and_holes_filled_on_the_host():
    # flows and cell probability as strided views of one device array, like a padded network output
    dP, cellprob, kwargs = recorded_call(REFERENCE_2D, "nuclei_256_float_invert", (slice(8, 56), slice(8, 56)))
    padded = np.zeros((3, 48, 56), np.float32)
    padded[:2, :, 4:52], padded[2, :, 4:52] = dP, cellprob
    net_out = cuda.to_device(padded)
    dP_dev, cellprob_dev = net_out[:2, :, 4:52], net_out[2, :, 4:52]
    assert not dP_dev.is_c_contiguous()
    ours = gpu_dynamics.resize_and_compute_masks(dP_dev, cellprob_dev, fill_holes="host", **kwargs)
    assert_identical(ours, dynamics.resize_and_compute_masks(dP, cellprob, **kwargs))
    with pytest.raises(ValueError, match="float32"):
        gpu_dynamics.compute_masks(cuda.to_device(dP.astype(np.float64)), cellprob)


def test_no_interp_and_tied_seeds_match_the_reference_fixture():
    fx = np.load(FIXTURES)
    dP = fx["ties_dP_int8"].astype(np.float32)[:, :48, :48] / 16
    cellprob = fx["ties_cellprob_int8"].astype(np.float32)[:48, :48] / 16
    for interp in (True, False):
        kwargs = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.0, interp=interp)
        assert_identical(gpu_dynamics.resize_and_compute_masks(dP, cellprob, **kwargs),
                         dynamics.resize_and_compute_masks(dP, cellprob, **kwargs))


def test_flow_errors_are_the_cpu_errors_bit_for_bit():
    fx = np.load(FIXTURES)
    masks = fx["flows_masks"][:36, :36]
    rng = np.random.default_rng(0)
    dP = rng.normal(size=(2, *masks.shape)).astype(np.float32)
    ours = gpu_dynamics.flow_errors(masks, dP)
    ref = dynamics.flow_errors(masks, dP)
    assert ours.size == ref.size >= 5
    np.testing.assert_array_equal(ours, ref)  # NaN for absent ids on both sides


@pytest.mark.parametrize("case,window,interp", [
    ("nuclei_vol_do3D", (slice(8, 13), slice(40, 60), slice(40, 60)), True),
    ("nuclei_vol_do3D_aniso2", (slice(2, 7), slice(16, 36), slice(48, 68)), False),
])
def test_3d_calls_give_the_cpu_masks(case, window, interp):
    dP, cellprob, kwargs = recorded_call(REFERENCE_3D, case, window)
    kwargs.update(interp=interp, resize=[7, 26, 25])
    ref = dynamics.resize_and_compute_masks(dP, cellprob, **kwargs)
    assert ref.max() >= 2
    assert_identical(gpu_dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), ref)


def test_device_hole_filling_matches_the_cpu_rule():
    fx = np.load(FIXTURES)
    for key in ("fill_2d_in", "fill_3d_in"):
        masks = fx[key].astype(np.int32)
        labels = masks[None] if masks.ndim == 2 else masks
        for min_size in (-1, 15):
            ref = dynamics.fill_holes_and_remove_small_masks(fx[key], min_size=min_size)
            out, nested = _fill.fill_holes(cuda.to_device(labels), int(masks.max()), min_size, cuda.default_stream())
            if nested.copy_to_host()[0]:  # nested masks: the caller falls back to the CPU rule
                continue
            np.testing.assert_array_equal(out.copy_to_host().reshape(masks.shape), ref)
    # a fixture with a mask inside another's hole must raise the flag
    ring = np.zeros((1, 9, 9), np.int32)
    ring[0, 1:8, 1:8] = 2
    ring[0, 2:7, 2:7] = 0
    ring[0, 4, 4] = 1
    _, nested = _fill.fill_holes(cuda.to_device(ring), 2, -1, cuda.default_stream())
    assert nested.copy_to_host()[0] == 1


def test_big_masks_are_removed_like_on_the_cpu():
    # two disks with ideal flows; max_size_fraction 0.1 of 32 x 32 = 102 px drops the larger (~150 px)
    yy, xx = np.mgrid[:32, :32]
    masks = np.zeros((32, 32), np.int32)
    masks[(yy - 9) ** 2 + (xx - 9) ** 2 <= 16] = 1
    masks[(yy - 20) ** 2 + (xx - 20) ** 2 <= 49] = 2
    dP = (5 * dynamics.masks_to_flows(masks)).astype(np.float32)
    cellprob = np.where(masks > 0, 3.0, -3.0).astype(np.float32)
    kwargs = dict(niter=50, cellprob_threshold=0.0, flow_threshold=0.4, interp=True, max_size_fraction=0.1)
    ref = dynamics.compute_masks(dP, cellprob, **kwargs)
    assert ref.max() == 1 and np.array_equal(ref > 0, masks == 1)
    assert_identical(gpu_dynamics.compute_masks(dP, cellprob, **kwargs), ref)


def test_empty_foreground_and_bad_arguments():
    dP = np.zeros((2, 16, 16), np.float32)
    out = gpu_dynamics.resize_and_compute_masks(dP, np.full((16, 16), -5, np.float32), niter=200,
                                                cellprob_threshold=0.0, flow_threshold=0.4, interp=True,
                                                resize=[20, 24])
    assert out.shape == (20, 24) and out.dtype == np.uint16 and not out.any()
    with pytest.raises(ValueError, match="do_3D"):
        gpu_dynamics.compute_masks(dP, np.zeros((16, 16), np.float32), do_3D=True)
    with pytest.raises(ValueError, match="fill_holes"):
        gpu_dynamics.resize_and_compute_masks(dP, dP[0], niter=1, cellprob_threshold=0, flow_threshold=0,
                                              interp=True, fill_holes="gpu")


def test_dynamics_choice(monkeypatch):
    from cellflow_rt import gpu
    assert choose_dynamics("auto", ["CPUExecutionProvider"]) == "cpu"  # the simulator is no reason
    assert choose_dynamics("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "gpu"
    assert choose_dynamics("cpu", ["TensorrtExecutionProvider"]) == "cpu"
    assert choose_dynamics("gpu", ["CPUExecutionProvider"]) == "gpu"
    assert dynamics_for(EvalSettings(), ["CPUExecutionProvider"]) is dynamics.resize_and_compute_masks
    assert dynamics_for(EvalSettings(dynamics="gpu")) is gpu_dynamics.resize_and_compute_masks
    monkeypatch.setattr(gpu, "cuda_status", lambda: "numba sees no CUDA device")
    assert choose_dynamics("auto", ["CUDAExecutionProvider"]) == "cpu"
    with pytest.raises(DynamicsUnavailableError, match="--dynamics gpu.*no CUDA device"):
        choose_dynamics("gpu")
    with pytest.raises(ValueError, match="dynamics must be one of"):
        EvalSettings(dynamics="tpu")


def _run_cli(args, env_extra=None):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", **(env_extra or {})}
    exe = Path(sys.executable).parent / "cellflow-rt"
    return subprocess.run([str(exe), "run", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_run_with_gpu_dynamics_writes_the_cpu_masks(tmp_path):
    import tifffile
    from cellflow_rt.examples import example_image_path
    image = tmp_path / "small.tif"
    tifffile.imwrite(image, tifffile.imread(example_image_path())[:64, :64])
    masks = {}
    for where in ("gpu", "cpu"):
        out = tmp_path / where
        out.mkdir()
        run = _run_cli([str(image), "--model", "nuclei_demo", "--diameter", "17", "--dynamics", where,
                        "--save_tif", "--no_npy", "--savedir", str(out)])
        assert run.returncode == 0, run.stderr
        assert f"dynamics on the {where.upper()}" in run.stderr
        masks[where] = tifffile.imread(out / "small_cp_masks.tif")
    assert masks["cpu"].max() >= 2
    assert_identical(masks["gpu"], masks["cpu"])


def test_cli_gpu_dynamics_without_a_device_fails_clearly(tmp_path):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "0":
        pytest.skip("this machine may have a GPU")
    import tifffile
    image = tmp_path / "small.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    # the simulator off, and no GPU on a CI machine: a clear error naming the option, no traceback
    run = _run_cli([str(image), "--model", "nuclei_demo", "--dynamics", "gpu"], {"NUMBA_ENABLE_CUDASIM": "0"})
    if run.returncode == 0:
        pytest.skip("numba sees a CUDA device on this machine")
    assert "--dynamics gpu" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_gpu_dynamics_check_script_runs(tmp_path):
    # bench/gpu/dynamics_check.py: --prepare from ../shared, then the check on a small crop and a
    # small synthetic case (in the simulator here; on a GPU machine it is step 1 of the GPU check)
    require_shared()
    script = REPO / "bench" / "gpu" / "dynamics_check.py"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    data, results = tmp_path / "data", tmp_path / "results"
    run = subprocess.run([sys.executable, str(script), "--prepare", str(REFERENCE_2D.parent), "--data", str(data),
                          "--cases", "nuclei_256"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (data / "nuclei_256").iterdir()) == ["dynamics_0.json", "dynamics_0.npz"]
    run = subprocess.run([sys.executable, str(script), "--data", str(data), "--crop", "32", "--size", "40",
                          "--repeats", "1", "--out", str(results)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "synthetic_40" in run.stdout and "nuclei_256" in run.stdout
    (report,) = results.glob("dynamics_check_*.json")
    raw = json.loads(report.read_text())
    assert raw["device"]["simulator"] is True and raw["device"]["numba_cuda"]
    assert [c["case"] for c in raw["cases"]] == ["nuclei_256", "synthetic_40"]
    assert all(c["identical"] and c["masks_cpu"] == c["masks_gpu"] for c in raw["cases"])
    assert raw["cases"][1]["masks_cpu"] >= 2


@pytest.mark.heavy  # over 5 s on 2 cores: out of the fast suite, in CI
def test_kernels_compile_for_the_gpu_without_fused_multiply_adds():
    # bench/gpu/ptx_check.py: numba-cuda's real CUDA target (not the simulator, which checks neither
    # numba's typing nor the rounding) compiles every kernel of cellflow_rt.gpu (dynamics and the
    # device-resident chain: tiles, resize, labels) for sm_90, and the exact kernels' PTX is checked
    # for FMAs. No GPU needed: CUDA 13's NVRTC (nvidia-cuda-nvrtc) is in the test extra and libNVVM comes
    # with the machines' CUDA 13 toolkit, so this fails rather than skips when it cannot compile.
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "ptx_check.py")], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode != 3, "cannot compile to PTX (NVRTC or libNVVM missing)\n" + run.stderr
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("ok")]
    checked = {line.split()[1] for line in lines}
    assert {"euler_2d", "mask_errors", "_accumulate_kernel", "_bilinear_chw_kernel", "_extract_kernel"} <= checked
    assert all(" 0 fma" in line for line in lines if line.endswith("exact"))


@cuda.jit
def _block_sum_through_shared(out):
    values = cuda.shared.array(8, np.int64)
    values[cuda.threadIdx.x] = cuda.threadIdx.x + 1
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        total = 0
        for t in range(cuda.blockDim.x):
            total += values[t]
        out[0] = total


def test_threads_of_a_block_share_their_shared_arrays():
    """The flow check exchanges each mask's centre through shared memory; the simulator must give
    every thread of a block the same array (see ``gpu._device._serialise_simulator_shared_arrays``)."""
    from cellflow_rt.gpu._device import simulator_pace

    totals = []
    with simulator_pace():
        for _ in range(200):
            out = cuda.to_device(np.zeros(1, np.int64))
            _block_sum_through_shared[1, 8](out)
            totals.append(int(out.copy_to_host()[0]))
    assert set(totals) == {36}
