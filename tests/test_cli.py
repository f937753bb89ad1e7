"""``cellflow-rt`` driven as a user would: a subprocess on real files in a temporary folder.

Covers ``run`` (files, ``--dir`` with ``--img_filter`` / ``--look_one_level_down``, the output
flags, ``--skip_existing`` resuming a batch, ``--example``, the one-line summary per image, exit
codes), ``info`` and ``export --help`` without torch. Bad inputs are in ``test_bad_inputs.py``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import FAST, crop, leftover_temp_files, run_cli

#: ``[i/n] NAME: N cells, diameter D px, T s``
SUMMARY = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (\d+) cells, diameter ([\d.]+) px, ([\d.]+) s$", re.M)


def _summaries(result):
    return {m.group(3): m for m in SUMMARY.finditer(result.stdout)}


# --------------------------------------------------------------------------------------------------
# folders and filters


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A folder with images, a filter suffix, a sub-folder, an old output file and a text file."""
    root = tmp_path_factory.mktemp("folder")
    tifffile.imwrite(root / "img_1.tif", crop(64))
    tifffile.imwrite(root / "img_2_nuc.tif", crop(80))
    tifffile.imwrite(root / "img_10_nuc.tif", crop(64))
    tifffile.imwrite(root / "img_2_nuc_cp_masks.tif", np.zeros((8, 8), np.uint16))  # an old output
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    tifffile.imwrite(root / "sub" / "img_3_nuc.tif", crop(64))
    runs = {}
    for key, extra in (("filter", []), ("down", ["--look_one_level_down"])):
        (root / f"out_{key}").mkdir()
        runs[key] = run_cli(["run", "--dir", ".", "--img_filter", "_nuc", *extra, *FAST, "--no_npy", "--save_tif",
                             "--savedir", f"out_{key}"], cwd=root)
    return root, runs


def test_dir_with_img_filter(folder_run):
    root, runs = folder_run
    result = runs["filter"]
    assert result.returncode == 0, result.output
    summaries = _summaries(result)
    # natural order (2 before 10), the old output and the unfiltered image left out
    assert list(summaries) == ["img_2_nuc.tif", "img_10_nuc.tif"], result.stdout
    assert [m.group(1) for m in summaries.values()] == ["1", "2"]
    assert all(m.group(2) == "2" for m in summaries.values())
    assert sorted(p.name for p in (root / "out_filter").iterdir()) == ["img_10_nuc_cp_masks.tif",
                                                                       "img_2_nuc_cp_masks.tif"]
    assert "img_1.tif" not in result.output


def test_dir_look_one_level_down(folder_run):
    root, runs = folder_run
    result = runs["down"]
    assert result.returncode == 0, result.output
    assert list(_summaries(result)) == ["img_2_nuc.tif", "img_10_nuc.tif", "img_3_nuc.tif"], result.stdout
    assert (root / "out_down" / "img_3_nuc_cp_masks.tif").is_file()


def test_summary_line_per_image(folder_run):
    root, runs = folder_run
    for name, match in _summaries(runs["filter"]).items():
        n_cells, diameter, seconds = int(match.group(4)), float(match.group(5)), float(match.group(6))
        masks = tifffile.imread(root / "out_filter" / name.replace(".tif", "_cp_masks.tif"))
        assert n_cells == len(np.unique(masks[masks > 0])) and n_cells > 0
        assert diameter == 17.0 and 0 < seconds < 300


def test_outputs_written_line(folder_run):
    root, runs = folder_run
    assert re.search(r"^outputs written to: .*out_filter$", runs["filter"].stdout, re.M), runs["filter"].stdout


# --------------------------------------------------------------------------------------------------
# output flags


@pytest.fixture(scope="module")
def flag_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    image = crop(96)
    for name in ("plain", "flags"):
        (root / name).mkdir()
        tifffile.imwrite(root / name / "cells.tif", image)
    (root / "flags" / "out").mkdir()
    plain = run_cli(["run", "cells.tif", *FAST], cwd=root / "plain")
    flags = run_cli(["run", "cells.tif", *FAST, "--save_png", "--save_tif", "--no_npy", "--savedir", "out"],
                    cwd=root / "flags")
    return root, plain, flags


def test_default_writes_only_the_seg_file(flag_runs):
    # Cellpose's default: <stem>_seg.npy next to the image, no mask picture
    root, plain, _ = flag_runs
    assert plain.returncode == 0, plain.output
    assert sorted(p.name for p in (root / "plain").iterdir()) == ["cells.tif", "cells_seg.npy"]
    seg = np.load(root / "plain" / "cells_seg.npy", allow_pickle=True).item()
    # the masks of the same segmentation in Python (the CLI's defaults are eval's: channels [0, 0])
    from cellflow_rt import models
    expected = models.CellposeModel(pretrained_model="nuclei_demo").eval(crop(96), diameter=17.0, channels=[0, 0])[0]
    assert expected.max() > 0
    np.testing.assert_array_equal(seg["masks"], expected)
    assert seg["diameter"] == 17.0 and list(seg["chan_choose"]) == [0, 0]
    assert seg["filename"].endswith("cells.tif")


def test_png_tif_no_npy_savedir(flag_runs):
    root, plain, flags = flag_runs
    assert flags.returncode == 0, flags.output
    assert sorted(p.name for p in (root / "flags").iterdir()) == ["cells.tif", "out"]  # no seg file
    out = root / "flags" / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cells_cp_masks.png", "cells_cp_masks.tif"]
    from pillow_codecs import decode
    png = decode(out / "cells_cp_masks.png")
    tif = tifffile.imread(out / "cells_cp_masks.tif")
    assert png.dtype == np.uint16 and tif.dtype == np.uint16
    np.testing.assert_array_equal(png, tif)
    seg = np.load(root / "plain" / "cells_seg.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(tif, seg["masks"])  # same masks whichever file holds them


def test_all_inputs_ok_exit_zero_and_no_temp_files(flag_runs):
    root, plain, flags = flag_runs
    assert plain.returncode == 0 and flags.returncode == 0
    assert "failed" not in plain.output + flags.output
    assert leftover_temp_files(root) == []


def test_no_inputs_is_a_usage_error(tmp_path):
    result = run_cli(["run", *FAST], cwd=tmp_path)
    assert result.returncode == 2 and "no input images" in result.stderr


# --------------------------------------------------------------------------------------------------
# --skip_existing: a resumed batch


def _mtimes(folder: Path):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_skip_existing_resumes_a_batch(tmp_path):
    for i, size in enumerate((64, 80, 72)):
        tifffile.imwrite(tmp_path / f"part_{i}.tif", crop(size))
    flags = ["--save_tif", "--savedir", "out"]
    (tmp_path / "out").mkdir()
    first = run_cli(["run", "part_0.tif", "part_1.tif", *FAST, *flags], cwd=tmp_path)
    assert first.returncode == 0, first.output
    # an interrupted batch: part_1's masks never made it, part_2 was not reached
    (tmp_path / "out" / "part_1_cp_masks.tif").unlink()
    before = _mtimes(tmp_path) | _mtimes(tmp_path / "out")
    resumed = run_cli(["run", "--dir", ".", *FAST, *flags, "--skip_existing"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.output
    assert re.search(r"^\[1/3\] part_0\.tif: skipped \(outputs exist\)$", resumed.stdout, re.M), resumed.stdout
    assert list(_summaries(resumed)) == ["part_1.tif", "part_2.tif"], resumed.stdout
    after = _mtimes(tmp_path) | _mtimes(tmp_path / "out")
    assert after["part_0_seg.npy"] == before["part_0_seg.npy"]
    assert after["part_0_cp_masks.tif"] == before["part_0_cp_masks.tif"]
    for i in (1, 2):
        assert (tmp_path / "out" / f"part_{i}_cp_masks.tif").is_file()
        assert (tmp_path / f"part_{i}_seg.npy").is_file()
    # and a third run has nothing left to do
    again = run_cli(["run", "--dir", ".", *FAST, *flags, "--skip_existing"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("skipped (outputs exist)") == 3, again.output


def test_skip_existing_knows_every_output_flag(tmp_path):
    """Each --save_* flag's files are the ones --skip_existing looks for: a rerun skips everything."""
    tifffile.imwrite(tmp_path / "every.tif", crop(64))
    (tmp_path / "out").mkdir()
    flags = ["--save_png", "--save_tif", "--save_txt", "--save_rois", "--save_geojson", "--save_flows",
             "--save_ome", "--savedir", "out"]
    first = run_cli(["run", "every.tif", *FAST, *flags], cwd=tmp_path)
    assert first.returncode == 0, first.output
    second = run_cli(["run", "every.tif", *FAST, *flags, "--skip_existing"], cwd=tmp_path)
    assert second.returncode == 0 and "every.tif: skipped (outputs exist)" in second.stdout, second.output
    # deleting any one of them makes the image run again
    (tmp_path / "out" / "every.geojson").unlink()
    third = run_cli(["run", "every.tif", *FAST, *flags, "--skip_existing"], cwd=tmp_path)
    assert "every.tif" in _summaries(third), third.output
    assert (tmp_path / "out" / "every.geojson").is_file()


def test_skip_existing_ome_tif_input(tmp_path):
    tifffile.imwrite(tmp_path / "scan.ome.tif", crop(64), ome=True)
    first = run_cli(["run", "scan.ome.tif", *FAST, "--save_tif"], cwd=tmp_path)
    assert first.returncode == 0 and (tmp_path / "scan_cp_masks.tif").is_file(), first.output
    second = run_cli(["run", "scan.ome.tif", *FAST, "--save_tif", "--skip_existing"], cwd=tmp_path)
    assert "skipped (outputs exist)" in second.stdout, second.output


# --------------------------------------------------------------------------------------------------
# the bundled example


def test_run_example(tmp_path):
    result = run_cli(["run", "--example", "--save_png"], cwd=tmp_path)
    assert result.returncode == 0, result.output
    folder = tmp_path / "cellflow-rt-example"
    match = _summaries(result)["example_nuclei.tif"]
    assert int(match.group(4)) >= 20 and float(match.group(5)) == 17.0, result.stdout
    masks_png = folder / "example_nuclei_cp_masks.png"
    assert masks_png.is_file() and (folder / "example_nuclei_seg.npy").is_file()
    assert f"outputs written to: {folder}" in result.stdout or "outputs written to: cellflow-rt-example" \
        in result.stdout, result.stdout


def test_example_image_path():
    from cellflow_rt.examples import EXAMPLE_MODEL, example_image_path
    from cellflow_rt.io import imread

    path = example_image_path()
    image = imread(path)
    assert path.name == "example_nuclei.tif" and path.stat().st_size < 100_000
    assert image.shape == (256, 256) and image.dtype == np.uint8 and image.std() > 5
    from cellflow_rt.registry import resolve_model
    assert resolve_model(EXAMPLE_MODEL).default_channels == (0, 0)


# --------------------------------------------------------------------------------------------------
# info, version, export without torch


def test_info(tmp_path):
    import onnxruntime

    cache = tmp_path / "numba-cache"
    result = run_cli(["info"], cwd=tmp_path, env={"NUMBA_CACHE_DIR": str(cache), "NUMBA_NUM_THREADS": "2"})
    assert result.returncode == 0, result.output
    out = result.stdout
    assert re.search(r"^cellflow-rt \d+\.\d+", out, re.M)
    providers = re.search(r"^execution providers: (.+)$", out, re.M).group(1).split(", ")
    assert providers == list(onnxruntime.get_available_providers())
    assert f"numba cache: {cache}" in out
    assert re.search(r"^numba threading layer: \S+ \(2 threads\)$", out, re.M), out
    assert re.search(r"^--precision auto: (bf16|fp32) for Cellpose 4 \(Cellpose-SAM\) models", out, re.M), out
    models = re.findall(r"^  (\w+) +diam_mean", out, re.M)
    assert {"nuclei_demo", "cyto_demo"} <= set(models), out


def test_info_default_numba_cache_is_a_user_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.run([sys.executable, "-m", "cellflow_rt.cli", "info"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"numba cache: {tmp_path / 'xdg' / 'cellflow-rt' / 'numba'}" in proc.stdout


def test_version():
    from cellflow_rt import __version__
    result = run_cli(["--version"], cwd=Path.cwd())
    assert result.returncode == 0 and __version__ in result.stdout


_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked for this test")
sys.meta_path.insert(0, _NoTorch())
from cellflow_rt.cli import main
try:
    main({args!r}, prog_name="cellflow-rt", standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
assert "torch" not in sys.modules, "torch was imported"
print("TORCH-FREE")
"""


@pytest.mark.parametrize("args", [["export", "--help"], ["run", "--help"], ["info"]])
def test_commands_work_without_torch(tmp_path, args):
    """``export --help`` (and the runtime commands) work where torch cannot be imported at all."""
    proc = subprocess.run([sys.executable, "-c", _BLOCK_TORCH.format(args=args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("TORCH-FREE")
    if args[0] == "export":
        assert "Usage: cellflow-rt export" in proc.stdout and "CHECKPOINT" in proc.stdout


def test_run_does_not_import_torch(tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", crop(64))
    code = _BLOCK_TORCH.format(args=["run", "cells.tif", *FAST, "--save_tif"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "cells_cp_masks.tif").is_file()


def test_export_help_as_a_user_types_it(tmp_path):
    result = run_cli(["export", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert "Usage: cellflow-rt export [OPTIONS] CHECKPOINT" in result.stdout


# --------------------------------------------------------------------------------------------------
# blockwise (images larger than memory)


def test_run_blocksize_segments_blockwise_into_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    image = np.tile(crop(160), (2, 2))
    tifffile.imwrite(tmp_path / "big.tif", image)
    result = run_cli(["run", "big.tif", "--model", "nuclei_demo", "--diameter", "17", "--blocksize", "160",
                      "--overlap", "40"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "blocks 4" in result.stdout
    labels = np.asarray(zarr.open_array(str(tmp_path / "big_cp_masks.zarr"), mode="r"))
    assert labels.shape == image.shape and labels.max() > 0
    # every label is one connected object (no cell split into two ids across block faces, no id reused)
    from scipy import ndimage
    ids = np.unique(labels[labels > 0])
    assert all(ndimage.label(labels == i)[1] == 1 for i in ids)
