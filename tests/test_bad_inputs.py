"""The bad-input corpus of issue 7, driven through ``cellflow-rt run`` as a user would.

Every case checks what the user sees: one progress line per input naming the file and the problem,
the other inputs of the batch segmented and written, exit status 1 with the failures listed at the
end (2 for usage errors), no traceback, and no partial or temporary output file left behind.

Most per-file cases share one batch (one subprocess, one model load): the corpus below plus good
images that must still be written. Run-wide cases (diameter, channels, models, providers, output
folders) get their own invocation on one or two small images.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, crop, leftover_temp_files, outputs_of, run_cli

# --------------------------------------------------------------------------------------------------
# the corpus


def _png(array) -> bytes:
    from pillow_codecs import png_bytes
    return png_bytes(array)


def _write_corpus(folder: Path) -> None:
    """Bad files (each stem unique and no stem a prefix of another) plus images that must succeed."""
    gray = crop(96)
    tifffile.imwrite(folder / "gray.tif", gray)
    (folder / "graypng.png").write_bytes(_png(gray))
    (folder / "rgba.png").write_bytes(_png(np.stack([gray, gray, gray, np.full_like(gray, 255)], -1)))
    tifffile.imwrite(folder / "rgbatif.tif", np.stack([gray, gray, gray, np.full_like(gray, 255)], -1))
    tifffile.imwrite(folder / "constant.tif", np.full((96, 96), 113, np.uint8))

    (folder / "emptytif.tif").write_bytes(b"")
    (folder / "emptypng.png").write_bytes(b"")
    tif_bytes = (folder / "gray.tif").read_bytes()
    (folder / "trunctif.tif").write_bytes(tif_bytes[: len(tif_bytes) // 2])
    png_bytes = (folder / "graypng.png").read_bytes()
    (folder / "truncpng.png").write_bytes(png_bytes[: len(png_bytes) // 2])
    # a TIFF header followed by garbage, and bytes that are no TIFF at all
    (folder / "corrupttif.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    (folder / "garbagetif.tif").write_bytes(b"this is not an image\n" * 50)
    (folder / "corruptpng.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage!" * 50)
    (folder / "bitmap.bmp").write_bytes(b"BM" + bytes(200))
    (folder / "folder.tif").mkdir()
    np.save(folder / "vector.npy", np.arange(100, dtype=np.float32))
    with_nan = gray.astype(np.float32)
    with_nan[10, 20] = np.nan
    tifffile.imwrite(folder / "nanpix.tif", with_nan)
    with_inf = gray.astype(np.float32)
    with_inf[50, 5] = -np.inf
    tifffile.imwrite(folder / "infpix.tif", with_inf)
    five_d = np.broadcast_to(gray, (2, 2, 2) + gray.shape).copy()
    np.save(folder / "fived.npy", five_d)
    tifffile.imwrite(folder / "fivedtif.tif", five_d)


#: input name -> regular expression the one-line problem must match (case-insensitive)
FAILING = {
    "missing.tif": r"no such file",
    "folder.tif": r"not a file",
    "emptytif.tif": r"empty \(0 bytes\)",
    "emptypng.png": r"empty \(0 bytes\)",
    "trunctif.tif": r"corrupt or truncated",
    "truncpng.png": r"corrupt or truncated",
    "corrupttif.tif": r"corrupt|no image series",
    "garbagetif.tif": r"corrupt|not a TIFF",
    "corruptpng.png": r"corrupt",
    "bitmap.bmp": r"unsupported extension '\.bmp'",
    "vector.npy": r"2-D to 4-D image.*shape \(100,\)",
    "nanpix.tif": r"NaN or infinite",
    "infpix.tif": r"NaN or infinite",
    "fived.npy": r"shape",
    "fivedtif.tif": r"shape",
}
#: inputs of the same batch that must succeed
SUCCEEDING = ["gray.tif", "graypng.png", "rgba.png", "rgbatif.tif", "constant.tif"]
ORDER = ["gray.tif", "missing.tif", "folder.tif", "emptytif.tif", "emptypng.png", "trunctif.tif",
         "truncpng.png", "corrupttif.tif", "garbagetif.tif", "corruptpng.png", "graypng.png", "bitmap.bmp",
         "vector.npy", "nanpix.tif", "infpix.tif", "constant.tif", "rgba.png", "rgbatif.tif", "fived.npy",
         "fivedtif.tif"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus run as one batch: ``(folder, CliRun)``."""
    folder = tmp_path_factory.mktemp("corpus")
    _write_corpus(folder)
    result = run_cli(["run", *ORDER, *FAST, "--save_tif", "--save_png"], cwd=folder)
    return folder, result


def _assert_no_traceback(result):
    assert "Traceback" not in result.output, result.output


# --------------------------------------------------------------------------------------------------
# one batch: bad files fail one by one, the good ones are written


def test_batch_exit_status_and_failure_list(corpus):
    folder, result = corpus
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    assert re.search(rf"^{len(FAILING)} of {len(ORDER)} image\(s\) failed:$", result.stderr, re.M), result.stderr
    assert set(result.failure_list()) == set(FAILING), result.stderr


@pytest.mark.parametrize("name", sorted(FAILING))
def test_bad_file_fails_with_one_clear_line(corpus, name):
    folder, result = corpus
    line = result.line_for(name)
    head, _, problem = line.partition(": FAILED: ")
    assert problem, f"{name} should have failed: {line}"
    assert name in head, f"the error line must name the file: {line}"
    assert re.search(FAILING[name], problem, re.I), line
    assert result.failure_list()[name] == problem
    stem = Path(name).stem
    assert outputs_of(folder, stem) == [], \
        f"outputs left behind for a failed input: {outputs_of(folder, stem)}"


@pytest.mark.parametrize("name", SUCCEEDING)
def test_good_files_of_the_batch_are_written(corpus, name):
    folder, result = corpus
    line = result.line_for(name)
    assert re.search(r": \d+ cells, diameter 17\.0 px, [\d.]+ s$", line), line
    stem = Path(name).stem
    for suffix in ("_cp_masks.tif", "_cp_masks.png", "_seg.npy"):
        assert (folder / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing\n{result.output}"
    masks = tifffile.imread(folder / f"{stem}_cp_masks.tif")
    assert masks.shape == (96, 96)


def test_no_temporary_files_left(corpus):
    folder, _ = corpus
    assert leftover_temp_files(folder) == []


def test_constant_image_gives_zero_cells(corpus):
    folder, result = corpus
    assert re.search(r": 0 cells, ", result.line_for("constant.tif"))
    masks = tifffile.imread(folder / "constant_cp_masks.tif")
    assert masks.shape == (96, 96) and not masks.any()


def test_gray_crop_has_cells(corpus):
    # guards the cases below: equal masks must mean equal non-empty masks
    folder, result = corpus
    n = int(re.search(r": (\d+) cells", result.line_for("gray.tif")).group(1))
    assert n >= 2
    assert tifffile.imread(folder / "gray_cp_masks.tif").max() == n


@pytest.mark.parametrize("name", ["graypng.png", "rgba.png"])
def test_png_and_rgba_png_match_the_tiff(corpus, name):
    # PNG alpha is dropped and grayscale averages the three equal colour channels: same input exactly
    folder, _ = corpus
    expected = tifffile.imread(folder / "gray_cp_masks.tif")
    np.testing.assert_array_equal(tifffile.imread(folder / f"{Path(name).stem}_cp_masks.tif"), expected)


def test_rgba_tiff_matches_the_gray_image(corpus):
    # a 4-channel TIFF keeps its alpha (as in Cellpose); a constant alpha shifts the grayscale mean
    # by a constant, which the percentile normalisation removes up to float rounding
    folder, _ = corpus
    expected = tifffile.imread(folder / "gray_cp_masks.tif")
    got = tifffile.imread(folder / "rgbatif_cp_masks.tif")
    assert got.max() == expected.max()
    assert np.mean((got > 0) == (expected > 0)) > 0.99


def test_corrupt_png_message_has_no_decoder_noise(corpus):
    _, result = corpus
    assert "UnicodeDecodeError" not in result.line_for("corruptpng.png")


def test_5d_message_names_the_input_shape(corpus):
    _, result = corpus
    assert "(2, 2, 2, 96, 96)" in result.line_for("fived.npy")


# --------------------------------------------------------------------------------------------------
# tiny images: a Cellpose user expects no cell and an all-zero mask of the same size, not a crash
# (Cellpose 3.1.1.1 itself raises a TypeError on 1x1 and returns masks of shape (3,) for 3x3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tifffile.imwrite(folder / "onepixel.tif", np.full((1, 1), 50, np.uint8))
    tifffile.imwrite(folder / "threepixels.tif", crop(96)[40:43, 40:43])
    tifffile.imwrite(folder / "gray.tif", crop(64))
    return folder, run_cli(["run", "onepixel.tif", "threepixels.tif", "gray.tif", *FAST, "--save_tif"],
                           cwd=folder)


def test_tiny_images_never_crash_the_batch(tiny):
    folder, result = tiny
    _assert_no_traceback(result)
    assert (folder / "gray_cp_masks.tif").is_file()
    assert result.returncode in (0, 1)
    assert leftover_temp_files(folder) == []


@pytest.mark.parametrize("name, shape", [("onepixel.tif", (1, 1)), ("threepixels.tif", (3, 3))])
def test_tiny_image_gives_zero_cells_at_its_size(tiny, name, shape):
    folder, result = tiny
    assert re.search(r": 0 cells, ", result.line_for(name)), result.line_for(name)
    masks = tifffile.imread(folder / f"{Path(name).stem}_cp_masks.tif")
    assert masks.shape == shape and not masks.any()


# --------------------------------------------------------------------------------------------------
# run-wide options: diameter, channels


@pytest.fixture()
def two_images(tmp_path):
    tifffile.imwrite(tmp_path / "first.tif", crop(96))
    tifffile.imwrite(tmp_path / "second.tif", crop(64))
    return tmp_path


def test_huge_diameter_fails_each_file_clearly(two_images):
    result = run_cli(["run", "first.tif", "second.tif", "--model", "nuclei_demo", "--diameter", "1e6",
                      "--save_tif"], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    for name in ("first.tif", "second.tif"):
        line = result.line_for(name)
        assert "FAILED" in line and "no pixels left" in line and "diameter" in line, line
        assert outputs_of(two_images, Path(name).stem) == []
    assert set(result.failure_list()) == {"first.tif", "second.tif"}


@pytest.mark.parametrize("value", ["-5", "-0.5"])
def test_negative_diameter_is_a_usage_error(two_images, value):
    result = run_cli(["run", "first.tif", "--model", "nuclei_demo", "--diameter", value], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 2, result.output
    assert "--diameter" in result.stderr and value in result.stderr
    assert outputs_of(two_images, "first") == []


def test_zero_diameter_estimates_it(two_images):
    result = run_cli(["run", "first.tif", "--model", "nuclei_demo", "--diameter", "0"], cwd=two_images)
    assert result.returncode == 0, result.output
    line = result.line_for("first.tif")
    diameter = float(re.search(r"diameter ([\d.]+) px", line).group(1))
    assert diameter > 5 and diameter != 17.0, line  # the size model's estimate, not a default
    seg = np.load(two_images / "first_seg.npy", allow_pickle=True).item()
    assert seg["diameter"] == pytest.approx(diameter, abs=0.05)


def test_channel_out_of_range_fails_that_file_only(tmp_path):
    # grayscale images ignore chan/chan2 (Cellpose: one channel becomes [image, 0]); an RGB image
    # has no channel 5
    gray = crop(64)
    tifffile.imwrite(tmp_path / "plain.tif", gray)
    (tmp_path / "colour.png").write_bytes(_png(np.stack([gray, gray // 2, gray // 3], -1)))
    result = run_cli(["run", "colour.png", "plain.tif", *FAST, "--chan", "5", "--save_tif"], cwd=tmp_path)
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    line = result.line_for("colour.png")
    assert "FAILED" in line and "channel 5" in line and "3 channels" in line, line
    assert outputs_of(tmp_path, "colour") == []
    assert (tmp_path / "plain_cp_masks.tif").is_file()
    assert set(result.failure_list()) == {"colour.png"}


def test_negative_channel_is_a_usage_error(two_images):
    result = run_cli(["run", "first.tif", *FAST, "--chan", "-1"], cwd=two_images)
    assert result.returncode == 2, result.output


def test_channel_axis_out_of_range_fails_clearly(two_images):
    result = run_cli(["run", "first.tif", *FAST, "--channel_axis", "5"], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 1
    assert "channel_axis=5 is out of range" in result.line_for("first.tif")


# --------------------------------------------------------------------------------------------------
# models


def _copy_model(folder: Path, name: str = "mine") -> Path:
    """The bundled nuclei model copied as NAME.onnx + NAME.json (manifest pointing at the copy)."""
    from cellflow_rt.registry import bundled_model_dir

    src = bundled_model_dir()
    shutil.copy(src / "nuclei_demo.onnx", folder / f"{name}.onnx")
    manifest = json.loads((src / "nuclei_demo.json").read_text())
    manifest.update(name=name, onnx_file=f"{name}.onnx")
    (folder / f"{name}.json").write_text(json.dumps(manifest))
    return folder / f"{name}.onnx"


def _set_sha(onnx_path: Path) -> None:
    manifest_path = onnx_path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _model_error(folder: Path, model: str):
    result = run_cli(["run", "first.tif", "--model", model, "--diameter", "17", "--save_tif"], cwd=folder)
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert outputs_of(folder, "first") == []
    return errors[0]


def test_copied_model_by_path_works(two_images):
    # the control for the cases below: the same copy, untouched, segments
    _copy_model(two_images)
    result = run_cli(["run", "first.tif", "--model", "./mine.onnx", "--diameter", "17"], cwd=two_images)
    assert result.returncode == 0, result.output


def test_manifest_sha256_mismatch(two_images):
    onnx_path = _copy_model(two_images)
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    error = _model_error(two_images, "./mine.onnx")
    assert "mine.onnx" in error and "sha256" in error and "does not match" in error, error


def test_corrupt_onnx_file(two_images):
    onnx_path = _copy_model(two_images)
    onnx_path.write_bytes(onnx_path.read_bytes()[:5000])  # truncated protobuf, manifest updated to match
    _set_sha(onnx_path)
    error = _model_error(two_images, "./mine.onnx")
    assert "mine.onnx" in error and "not a loadable ONNX model" in error, error


def test_wrong_onnx_model(two_images):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    onnx_path = _copy_model(two_images)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(onnx_path))
    _set_sha(onnx_path)
    error = _model_error(two_images, "./mine.onnx")
    assert "mine.onnx" in error and "expected one input 'image'" in error, error


def test_onnx_without_manifest(two_images):
    (two_images / "lone.onnx").write_bytes(b"\x08\x07")
    error = _model_error(two_images, "./lone.onnx")
    assert "lone.onnx" in error and "no manifest" in error, error


def test_missing_model_file_and_unknown_name(two_images):
    assert "model file not found" in _model_error(two_images, "./absent.onnx")
    error = _model_error(two_images, "no_such_model")
    assert "'no_such_model' not found" in error and "nuclei_demo" in error, error


# --------------------------------------------------------------------------------------------------
# execution providers


def _has_cuda() -> bool:
    import onnxruntime
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda(), reason="CUDA is available here: nothing to fall back from")
def test_use_gpu_falls_back_to_cpu_with_a_warning(two_images):
    result = run_cli(["run", "first.tif", *FAST, "--use_gpu", "--save_tif"], cwd=two_images)
    assert result.returncode == 0, result.output
    assert re.search(r"not available.*falling back to CPU", result.stderr), result.stderr
    assert "(CPUExecutionProvider, fp32)" in result.stderr
    assert (two_images / "first_cp_masks.tif").is_file()


@pytest.mark.skipif(_has_cuda(), reason="CUDA is available here: nothing to fall back from")
def test_use_gpu_warning_is_one_line(two_images):
    result = run_cli(["run", "first.tif", *FAST, "--use_gpu"], cwd=two_images)
    warning_lines = [ln for ln in result.stderr.splitlines() if "CUDA" in ln or "warn" in ln.lower()]
    assert len(warning_lines) == 1, result.stderr
    assert "network.py" not in result.stderr and "warnings.warn(" not in result.stderr


@pytest.mark.skipif(_has_cuda(), reason="CUDA is available here: the strict request succeeds")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_strict_provider_unavailable_fails_clearly(two_images, provider):
    result = run_cli(["run", "first.tif", *FAST, "--provider", provider], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "not available" in errors[0] and "available:" in errors[0], result.stderr
    assert outputs_of(two_images, "first") == []


# --------------------------------------------------------------------------------------------------
# output folders: read-only, missing, full


def _mount_tmpfs(target: Path, options: str) -> None:
    """Mount a tmpfs on ``target`` or skip: needs root with CAP_SYS_ADMIN (true in CI containers here)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")


@pytest.fixture()
def readonly_dir(tmp_path):
    """A folder no write can go to: chmod 555 for a normal user; as root (which chmod does not stop)
    a read-only tmpfs."""
    target = tmp_path / "readonly"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    _mount_tmpfs(target, "ro,size=1m")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_readonly_savedir_fails_each_file_clearly(two_images, readonly_dir):
    result = run_cli(["run", "first.tif", "second.tif", *FAST, "--save_tif", "--savedir", readonly_dir],
                     cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    for name in ("first.tif", "second.tif"):
        line = result.line_for(name)
        assert "FAILED" in line and "cannot write" in line and f"{Path(name).stem}_cp_masks.tif" in line, line
        assert re.search(r"read-only|permission denied", line, re.I), line
    assert set(result.failure_list()) == {"first.tif", "second.tif"}
    assert list(readonly_dir.iterdir()) == []
    # the masks file failed first, so no seg file was written next to the images either
    assert outputs_of(two_images, "first") == []


def test_savedir_under_a_file_is_a_usage_error(two_images):
    (two_images / "afile").write_text("x")
    result = run_cli(["run", "first.tif", *FAST, "--savedir", "afile/out"], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 2
    assert "--savedir afile/out: not a directory" in result.stderr


@pytest.fixture()
def full_dir(tmp_path):
    """A real 48 KiB filesystem (tmpfs): the flows of a 64x64 image (48 KiB of float32) never fit."""
    target = tmp_path / "small"
    target.mkdir()
    _mount_tmpfs(target, "size=48k")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_full_disk_real_filesystem(two_images, full_dir):
    result = run_cli(["run", "second.tif", "first.tif", *FAST, "--save_tif", "--save_flows", "--no_npy",
                      "--savedir", full_dir], cwd=two_images)
    _assert_no_traceback(result)
    assert result.returncode == 1, result.output
    assert "second.tif" in result.failure_list(), result.output
    line = result.line_for("second.tif")
    assert "cannot write" in line and "No space left on device" in line, line
    assert leftover_temp_files(full_dir) == []
    for path in full_dir.iterdir():  # whatever fitted is complete
        tifffile.imread(path)


def test_full_disk_simulated_in_process(tmp_path, monkeypatch):
    """ENOSPC while flushing one image's outputs: that image fails, the next one is written."""
    from click.testing import CliRunner

    from cellflow_rt import cli

    tifffile.imwrite(tmp_path / "first.tif", crop(64))
    tifffile.imwrite(tmp_path / "second.tif", crop(96))
    real_fsync = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".tmp.first_" in target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file is flushed")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["run", "first.tif", "second.tif", *FAST, "--save_tif"])
    assert result.exit_code == 1, result.output
    assert re.search(r"first\.tif: FAILED: .*cannot write .*first_cp_masks\.tif.*No space left on device",
                     result.output), result.output
    assert outputs_of(tmp_path, "first") == []
    assert (tmp_path / "second_cp_masks.tif").is_file() and (tmp_path / "second_seg.npy").is_file()
    assert leftover_temp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# inputs that leave nothing to do


def test_folder_without_images_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    result = run_cli(["run", "--dir", tmp_path, *FAST], cwd=tmp_path)
    _assert_no_traceback(result)
    assert result.returncode == 2 and "no images" in result.stderr


def test_missing_folder_is_a_usage_error(tmp_path):
    result = run_cli(["run", "--dir", tmp_path / "absent", *FAST], cwd=tmp_path)
    _assert_no_traceback(result)
    assert result.returncode == 2 and "not a directory" in result.stderr
