"""Network backends and precisions: one tile per CPU call, bf16 on OpenVINO, fp16 on TensorRT only.

bf16 is approximate by design: its masks are held to issue 6's bar (AP@0.5 >= 0.99 against
Cellpose's) on reference cases, not to fp32's tolerances (bfloat16 keeps 8 bits of mantissa: flows
move by more than 1e-3, enough to move mask boundaries; the fp32 path is asserted exact in
test_parity_2d.py).
"""
import importlib.util
import json
import sys
import textwrap
import subprocess

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, crop, run_cli
from conftest import REFERENCE_2D, require_shared

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino (the openvino extra) is not installed")


def _onnx(name="nuclei_demo"):
    from cellflow_rt.registry import resolve_model
    return resolve_model(name).onnx_path


def test_cpu_network_runs_one_tile_per_call_with_the_batched_outputs():
    from cellflow_rt.network import Network

    net = Network(_onnx("cyto_demo"), providers="cpu", num_threads=1)
    assert net.cpu_tiles_per_run == 1 and net.precision == "fp32"
    tiles = np.random.default_rng(1).random((5, 2, 96, 112), dtype=np.float32)
    flows, styles = net.run(tiles, batch_size=8)
    batched_flows, batched_styles = net.session.run(["flows", "style"], {"image": tiles})
    np.testing.assert_array_equal(flows, batched_flows)
    np.testing.assert_array_equal(styles, batched_styles)


def test_unknown_precision_is_refused():
    from cellflow_rt.network import open_network
    with pytest.raises(ValueError, match="precision must be one of"):
        open_network(_onnx(), precision="int4")


def test_fp16_without_tensorrt_warns_and_runs_fp32():
    from cellflow_rt.network import Network
    with pytest.warns(UserWarning, match="fp16 applies to the TensorRT provider only"):
        net = Network(_onnx(), providers="cpu", precision="fp16")
    assert net.precision == "fp32"


def test_bf16_is_refused_on_gpu_providers():
    from cellflow_rt.network import open_network
    with pytest.raises(ValueError, match="bf16 runs on the CPU"):
        open_network(_onnx(), providers=["cuda"], precision="bf16")


def test_bf16_without_openvino_says_how_to_install(monkeypatch):
    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.network_openvino import OpenVINOUnavailableError
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(OpenVINOUnavailableError, match=r"pip install 'cellflow-rt\[openvino\]'"):
        LoadedModel.load("nuclei_demo", precision="bf16")


@needs_openvino
@pytest.mark.parametrize("case", ["nuclei_256", "cyto_300_2ch"])
def test_bf16_masks_match_cellpose_within_the_ap_bar(case):
    from cellflow_rt import models
    from cellflow_rt.metrics import matching_summary
    from cellflow_rt.network_openvino import cpu_supports_bf16

    require_shared()
    d = REFERENCE_2D / case
    params = json.loads((d / "params.json").read_text())
    image, ref = tifffile.imread(d / "image.tif"), np.load(d / "outputs.npz")
    name = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}[params["model"]]
    model = models.CellposeModel(pretrained_model=name, precision="bf16")
    assert model.model.net.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    masks, flows, styles = model.eval(image, **dict(params["eval"], diameter=params["diameter_used"]))
    flow_error = np.abs(flows[1] - ref["dP"]).max()
    if model.model.net.precision == "bf16":
        assert 1e-3 < flow_error < 0.5  # really bf16, and not far off
    else:
        assert flow_error < 1e-3
    s = matching_summary(ref["masks"], masks)
    assert s["ap_0.5"] >= 0.99 and abs(s["n_pred"] - s["n_true"]) <= max(1, 0.01 * s["n_true"])


@needs_openvino
def test_bf16_network_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor
    from cellflow_rt.network import open_network

    net = open_network(_onnx(), num_threads=1, precision="bf16")
    tiles = np.random.default_rng(2).random((4, 2, 64, 64), dtype=np.float32)
    expected = net.run(tiles)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: net.run(tiles)[0], range(8)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


@needs_openvino
def test_blockwise_workers_reload_the_bf16_network():
    from cellflow_rt.big import tasks
    from cellflow_rt.loaded_model import LoadedModel

    model = LoadedModel.load("nuclei_demo", precision="bf16", num_threads=1)
    spec = tasks.ModelSpec.of(model, num_threads=1)
    assert spec.precision == "bf16" and spec.providers == ()
    reloaded = tasks.worker_model(spec)  # a fresh load: this spec was never shared
    assert reloaded is not model and type(reloaded.net) is type(model.net)


@needs_openvino
def test_cli_precision_bf16_segments_and_says_so(tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", crop(96))
    result = run_cli(["run", "cells.tif", *FAST, "--precision", "bf16", "--save_tif"], cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert "OpenVINO-CPU" in result.stderr
    masks = tifffile.imread(tmp_path / "cells_cp_masks.tif")
    assert masks.max() > 0


def test_cli_bf16_with_a_gpu_provider_fails_clearly(tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", crop(64))
    result = run_cli(["run", "cells.tif", *FAST, "--precision", "bf16", "--provider", "cuda"], cwd=tmp_path)
    assert result.returncode != 0
    assert "bf16 runs on the CPU" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "cells_seg.npy").exists()


@needs_openvino
def test_bf16_path_imports_no_torch():
    script = textwrap.dedent("""
        import sys, numpy as np
        from cellflow_rt import models
        m = models.CellposeModel(pretrained_model='nuclei_demo', precision='bf16')
        m.eval(np.random.default_rng(0).random((64, 64), dtype=np.float32), channels=[0, 0], diameter=17.0)
        assert 'torch' not in sys.modules, 'the bf16 path imported torch'
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


@pytest.mark.torch
def test_auto_precision_is_bf16_only_for_cellpose4_models_on_bf16_cpus(cpsam_tiny):
    from cellflow_rt.family import CPNET, CPSAM
    from cellflow_rt.loaded_model import LoadedModel, automatic_precision
    from cellflow_rt.network_openvino import cpu_supports_bf16

    expected = "bf16" if cpu_supports_bf16() else "fp32"
    assert automatic_precision(CPSAM) == expected and automatic_precision(CPNET) == "fp32"
    assert automatic_precision(CPSAM, providers="cuda") == "fp32"
    assert LoadedModel.load(str(cpsam_tiny.with_suffix(".onnx")), precision="auto", num_threads=1).net.precision == expected
    assert LoadedModel.load("nuclei_demo", precision="auto", num_threads=1).net.precision == "fp32"
