"""Image restoration (Cellpose 3's denoise.py): the exporter on a restoration net, every reference
case of CellposeDenoiseModel against Cellpose 3.1.1.1, DenoiseModel, the CLI and the bad inputs.

The restoration net is not bundled: the demo checkpoint is exported once per test session (torch,
the export extra). The upsample case runs the same weights as an ``upsample`` model, as the
reference did (3.1.1.1 keys that behaviour on the checkpoint's path; the manifest says it here).
"""
import contextlib
import json
import shutil
import sys

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, run_cli
from conftest import REFERENCE as REFERENCE_ROOT, SHARED, require_shared
from label_helpers import assert_same_labels

REFERENCE = REFERENCE_ROOT / "restore"
CASES = sorted(p.name for p in REFERENCE.iterdir()) if REFERENCE.is_dir() else []
CHECKPOINT = SHARED / "weights" / "cellflow_denoise_nuclei_demo"
BUNDLED = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}
# small tiles keep the one export quick; the gate itself is test_export's business
QUICK_SIZES = ((128, 160), (64, 96))


@pytest.fixture(scope="session")
def restore_models(tmp_path_factory):
    """Folder with ``denoise_demo`` (the demo exported) and ``upsample_demo`` (the same ONNX file
    registered as an upsample net)."""
    pytest.importorskip("torch")
    require_shared()
    from cellflow_rt.export import export_checkpoint

    folder = tmp_path_factory.mktemp("restore_models")
    manifest_path = export_checkpoint(CHECKPOINT, name="denoise_demo", out_dir=folder, restore_type="denoise",
                                      parity_sizes=QUICK_SIZES, echo=None)
    manifest = json.loads(manifest_path.read_text())
    shutil.copyfile(folder / "denoise_demo.onnx", folder / "upsample_demo.onnx")
    manifest.update(name="upsample_demo", onnx_file="upsample_demo.onnx", restore_type="upsample")
    (folder / "upsample_demo.json").write_text(json.dumps(manifest))
    return folder


def _case(case):
    d = REFERENCE / case
    return json.loads((d / "params.json").read_text()), tifffile.imread(d / "image.tif"), np.load(d / "outputs.npz")


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_restore_case_matches_cellpose(case, restore_models):
    """Restored image within 1e-4 of its range, the same ratio, masks at AP 1.0 (0.5, 0.75, 0.9)."""
    from cellflow_rt import models
    from cellflow_rt.metrics import matching_summary

    params, image, ref = _case(case)
    restore = restore_models / ("upsample_demo.onnx" if params["restore_type"] == "upsample" else "denoise_demo.onnx")
    with pytest.warns(UserWarning, match="chan2") if params["chan2_restore"] else contextlib.nullcontext():
        model = models.CellposeDenoiseModel(pretrained_model=BUNDLED[params["seg_model"]], restore_type=str(restore),
                                            chan2_restore=params["chan2_restore"])
    masks, flows, styles, img_restore = model.eval(image, **params["eval"])
    span = float(ref["img_restore"].max() - ref["img_restore"].min())
    error = float(np.abs(img_restore - ref["img_restore"]).max())
    s = matching_summary(ref["masks"], masks)
    print(f"{case}: restored max abs error {error:.3g} ({error / span:.3g} of range), ratio {model.dn.ratio}; "
          f"masks {s['n_true']}/{s['n_pred']} AP {s['ap_0.5']:.4f} {s['ap_0.75']:.4f} {s['ap_0.9']:.4f}",
          file=sys.stderr)
    assert img_restore.shape == ref["img_restore"].shape and img_restore.dtype == np.float32
    assert error <= 1e-4 * span
    assert model.dn.ratio == params["ratio"]
    assert masks.shape == ref["masks"].shape and s["n_true"] == params["n_masks"]
    assert (s["ap_0.5"], s["ap_0.75"], s["ap_0.9"]) == (1.0, 1.0, 1.0)
    assert_same_labels(masks, ref["masks"], same_ids=True, what=case)  # exact, not only AP 1.0 at IoU 0.9
    np.testing.assert_allclose(flows[1], ref["dP"], atol=1e-4)


@pytest.mark.torch
def test_denoise_model_restores_like_cellpose(restore_models):
    from cellflow_rt import models

    params, image, ref = _case("denoise_300x420_diam25")
    dn = models.DenoiseModel(pretrained_model=str(restore_models / "denoise_demo.onnx"))
    assert (dn.diam_mean, dn.restore_type, dn.ratio) == (17.0, "denoise", 1.0)
    restored = dn.eval([image], channels=[0, 0], diameter=25.0)[0]
    span = float(ref["img_restore"].max() - ref["img_restore"].min())
    assert np.abs(restored - ref["img_restore"]).max() <= 1e-4 * span


@pytest.mark.torch
def test_exported_manifest_says_restoration(restore_models):
    onnx = pytest.importorskip("onnx")
    from cellflow_rt.export.manifest import read_onnx_metadata
    from cellflow_rt.registry import resolve_model

    manifest = json.loads((restore_models / "denoise_demo.json").read_text())
    assert (manifest["kind"], manifest["restore_type"], manifest["diam_mean"]) == ("restoration", "denoise", 17.0)
    assert (manifest["nchan"], manifest["nout"], manifest["nbase"]) == (1, 1, [1, 32, 64, 128, 256])
    assert manifest["size_model"] is None
    assert manifest["parity"]["max_abs_error_flows"] <= 1e-4 and manifest["parity"]["max_abs_error_style"] <= 1e-5
    metadata = read_onnx_metadata(onnx.load(str(restore_models / "denoise_demo.onnx")))
    assert (metadata["kind"], metadata["restore_type"]) == ("restoration", "denoise")
    info = resolve_model(restore_models / "upsample_demo.json")
    assert info.is_restoration and info.restore_type == "upsample"


def test_restore_type_comes_from_cellpose_names():
    from cellflow_rt.export.sources import builtin_restoration_of

    assert builtin_restoration_of("/m/denoise_cyto3") == ("denoise", 30.0)
    assert builtin_restoration_of("upsample_nuclei") == ("upsample", 17.0)
    assert builtin_restoration_of("deblur_seg_cyto2") == ("deblur", 30.0)
    assert builtin_restoration_of("oneclick_nuclei") == ("oneclick", 17.0)
    assert builtin_restoration_of("cellflow_denoise_nuclei_demo") is None
    assert builtin_restoration_of("cyto3") is None


@pytest.mark.torch
def test_export_refuses_a_mismatched_restore_type(tmp_path):
    pytest.importorskip("torch")
    require_shared()
    from click.testing import CliRunner

    from cellflow_rt.export.command import export_command

    runner = CliRunner()
    untyped = runner.invoke(export_command, [str(CHECKPOINT), "--out", str(tmp_path)])
    assert untyped.exit_code != 0 and "--restore-type" in untyped.output
    segmentation = runner.invoke(export_command, [str(SHARED / "weights" / "cellflow_nuclei_demo"), "--out",
                                                  str(tmp_path), "--restore-type", "denoise"])
    assert segmentation.exit_code != 0 and "restore_type" in segmentation.output
    assert "segmentation CPnet" in segmentation.output
    assert not list(tmp_path.iterdir())


def test_split_normalization_follows_cellpose():
    from cellflow_rt.normalize import NormalizeOptions
    from cellflow_rt.restore import split_normalization

    # a dict reaches the restoration only, with eval's invert
    restore, seg = split_normalization({"tile_norm_blocksize": 64, "percentile": [2, 98]}, invert=True)
    assert (restore.tile_norm_blocksize, restore.percentile, restore.invert) == (64, (2.0, 98.0), True)
    assert seg == NormalizeOptions()
    # a bool (and invert) reach both (3.1.1.1 writes them into its default dict)
    restore, seg = split_normalization(True, invert=True)
    assert restore.invert and seg.invert


@pytest.mark.torch
def test_models_refuse_each_others_kind(restore_models):
    from cellflow_rt import models

    restoration = str(restore_models / "denoise_demo.onnx")
    with pytest.raises(ValueError, match="pretrained_model: .*restoration model"):
        models.CellposeModel(pretrained_model=restoration)
    with pytest.raises(ValueError, match="restore_type: 'nuclei_demo' is a segmentation model"):
        models.CellposeDenoiseModel(pretrained_model="nuclei_demo", restore_type="nuclei_demo")
    with pytest.raises(ValueError, match="restore_type: model 'denoise_nowhere' not found"):
        models.CellposeDenoiseModel(pretrained_model="nuclei_demo", restore_type="denoise_nowhere")
    with pytest.raises(ValueError, match="model_type"):
        models.DenoiseModel()
    with pytest.raises(ValueError, match="nchan"):
        models.DenoiseModel(pretrained_model=restoration, nchan=2)


@pytest.mark.torch
@pytest.mark.slow
def test_cli_restores_and_writes_the_restored_image(restore_models, tmp_path):
    params, image, ref = _case("denoise_256")
    tifffile.imwrite(tmp_path / "noisy.tif", image)
    env = {"CELLFLOW_RT_MODELS": str(restore_models)}
    result = run_cli(["run", "noisy.tif", *FAST, "--restore_type", "denoise_demo", "--save_restored", "--save_tif"],
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, result.output
    seg = np.load(tmp_path / "noisy_seg.npy", allow_pickle=True).item()
    assert (seg["restore"], seg["ratio"], seg["diameter"]) == ("denoise_demo", 1.0, 17.0)
    np.testing.assert_allclose(seg["img_restore"], ref["img_restore"], atol=1e-4 * float(np.ptp(ref["img_restore"])))
    np.testing.assert_array_equal(seg["masks"], ref["masks"])
    restored = tifffile.imread(tmp_path / "noisy_restored.tif")
    np.testing.assert_array_equal(restored, seg["img_restore"][..., 0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "noisy_cp_masks.tif"), ref["masks"])


@pytest.mark.torch
def test_cli_refuses_models_of_the_wrong_kind(restore_models, tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint16))
    env = {"CELLFLOW_RT_MODELS": str(restore_models)}
    wrong_restore = run_cli(["run", "img.tif", *FAST, "--restore_type", "nuclei_demo"], cwd=tmp_path, env=env)
    assert wrong_restore.returncode != 0 and "--restore_type: 'nuclei_demo' is a segmentation model" in wrong_restore.output
    wrong_model = run_cli(["run", "img.tif", "--pretrained_model", "denoise_demo", "--diameter", "17"], cwd=tmp_path, env=env)
    assert wrong_model.returncode != 0 and "--pretrained_model: 'denoise_demo' is an image restoration model" \
        in wrong_model.output
    unknown = run_cli(["run", "img.tif", *FAST, "--restore_type", "denoise_nowhere"], cwd=tmp_path, env=env)
    assert unknown.returncode != 0 and "--restore_type: model 'denoise_nowhere' not found" in unknown.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif"]


@pytest.mark.torch
def test_stack_is_restored_plane_by_plane(restore_models):
    from cellflow_rt import models

    _, image, _ = _case("denoise_256")
    stack = np.stack([image[:96, :96], image[96:192, 32:128], image[160:, 160:]])
    model = models.CellposeDenoiseModel(pretrained_model="nuclei_demo",
                                        restore_type=str(restore_models / "denoise_demo.onnx"))
    masks, flows, _, restored = model.eval(stack, channels=[0, 0], z_axis=0, stitch_threshold=0.5, diameter=17.0,
                                           normalize={"norm3D": False})
    assert restored.shape == (3, 96, 96, 1) and masks.shape == (3, 96, 96) and flows[1].shape == (2, 3, 96, 96)
    planes = model.dn.eval(list(stack), channels=[0, 0], diameter=17.0)
    for z in range(3):  # per-plane normalisation: each plane restored as the 2D image it is
        np.testing.assert_allclose(restored[z], planes[z], atol=1e-6)
