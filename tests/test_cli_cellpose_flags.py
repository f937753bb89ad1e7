"""The rest of Cellpose 3.1.1.1's command line on ``cellflow-rt run``, each flag with Cellpose's file names
and folders (read from 3.1.1.1's ``__main__.py`` and ``io.save_masks`` and checked by running it; the
side-by-side comparison with a real ``python -m cellpose`` run is ``test_cellpose_cli_compare.py``):
``--exclude_on_edges``, ``--output_name``, ``--dir_above``, ``--in_folders``, ``--save_outlines``,
``--save_mpl``, ``--add_model``, and ``--savedir`` created when missing."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pillow_codecs import decode

from cli_helpers import FAST, crop, run_cli
from cellflow_rt.io.outlines import masks_to_outlines
from cellflow_rt.postprocess import remove_edge_masks


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    image = crop(160)
    for folder in ("a", "b", "c"):
        (root / folder).mkdir()
        tifffile.imwrite(root / folder / "cells.tif", image)
    tifffile.imwrite(root / "c" / "cells_lbl.tif", np.zeros((16, 16), np.uint16))  # a label file for --mask_filter
    every = ["--save_png", "--save_tif", "--save_outlines", "--save_mpl", "--save_txt", "--save_flows", "--save_rois"]
    return root, {
        "a": run_cli(["run", "--dir", "a", *FAST, *every, "--exclude_on_edges", "--in_folders", "--dir_above",
                      "--output_name", "_mine"], cwd=root),
        "b": run_cli(["run", "--image_path", "b/cells.tif", *FAST, "--save_png", "--save_outlines",
                      "--savedir", "new/deeper", "--output_name", ""], cwd=root),
        "c": run_cli(["run", "--dir", "c", *FAST, "--save_png", "--savedir", "c", "--output_name", "_ignored",
                      "--mask_filter", "_lbl", "--gpu_device", "1", "--check_mkl"], cwd=root),
    }


def test_dir_above_in_folders_output_name(runs):
    root, result = runs[0], runs[1]["a"]
    assert result.returncode == 0, result.output
    # Cellpose: masks/, outlines/, txt_outlines/, flows/ in the folder above the images, the figure at its
    # top, the suffix on masks, outline picture, figure and flows; _seg.npy and _rois.zip beside the image
    expected = ["a/cells.tif", "a/cells_rois.zip", "a/cells_seg.npy", "cells_cp_output_mine.png", "flows/cells_dP_mine.tif", "flows/cells_flows_mine.tif",
                "masks/cells_mine.png", "masks/cells_mine.tif", "outlines/cells_outlines_mine.png",
                "txt_outlines/cells_cp_outlines.txt"]
    assert [f for f in _files(root) if not f.startswith(("new/", "b/", "c/"))] == expected


def test_exclude_on_edges_keeps_exactly_the_inner_masks(runs):
    root = runs[0]
    assert runs[1]["b"].returncode == 0, runs[1]["b"].output
    everything = decode(root / "new" / "deeper" / "cells.png")  # run b: same image, no exclusion
    kept = decode(root / "masks" / "cells_mine.png")
    np.testing.assert_array_equal(kept, remove_edge_masks(everything))
    assert 0 < kept.max() < everything.max()
    assert kept.max() == len(np.unique(kept)) - 1  # numbered 1..N
    for edge in (kept[0], kept[-1], kept[:, 0], kept[:, -1]):
        assert not edge.any()
    seg = np.load(root / "a" / "cells_seg.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(seg["masks"], kept)  # the seg file holds the same masks
    assert f": {kept.max()} cells, " in runs[1]["a"].line_for("cells.tif")  # the count after the exclusion


def test_pictures_written_by_the_run(runs):
    root = runs[0]
    masks = decode(root / "masks" / "cells_mine.png")
    outlines = decode(root / "outlines" / "cells_outlines_mine.png")
    assert outlines.dtype == np.uint8 and outlines.shape == masks.shape + (3,)
    np.testing.assert_array_equal((outlines == (255, 0, 0)).all(-1), masks_to_outlines(masks))
    figure = decode(root / "cells_cp_output_mine.png")
    assert figure.dtype == np.uint8 and figure.shape[0] == masks.shape[0] and figure.shape[2] == 3
    assert figure.shape[1] > 5 * masks.shape[1]


def test_savedir_created_and_empty_output_name(runs):
    root, result = runs[0], runs[1]["b"]
    assert sorted(p.name for p in (root / "new" / "deeper").iterdir()) == ["cells.png", "cells_outlines.png"]
    assert (root / "b" / "cells_seg.npy").is_file()


def test_output_name_ignored_when_savedir_is_the_dir_and_mask_filter(runs):
    root, result = runs[0], runs[1]["c"]
    assert result.returncode == 0, result.output
    assert sorted(p.name for p in (root / "c").iterdir()) == ["cells.tif", "cells_cp_masks.png", "cells_lbl.tif",
                                                              "cells_seg.npy"]  # the _lbl file was skipped
    assert "--output_name is ignored" in result.stderr
    # Cellpose's torch flags are accepted, with a word that they do nothing here
    assert "--gpu_device 1 ignored" in result.stderr and "--check_mkl ignored" in result.stderr


def test_add_model_copies_an_exported_model(tmp_path):
    from cellflow_rt.registry import bundled_model_dir

    source = tmp_path / "from"
    source.mkdir()
    for name in ("nuclei_demo.onnx", "nuclei_demo.json"):
        shutil.copyfile(bundled_model_dir() / name, source / name)
    env = {"CELLFLOW_RT_MODELS": str(tmp_path / "models")}
    result = run_cli(["run", "--add_model", source / "nuclei_demo.onnx"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.output
    assert "--pretrained_model nuclei_demo" in result.stdout
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["nuclei_demo.json", "nuclei_demo.onnx"]
    info = run_cli(["info"], cwd=tmp_path, env=env)
    assert str(tmp_path / "models" / "nuclei_demo.onnx") in info.stdout
    (tmp_path / "cellpose_model").write_bytes(b"\x80\x02 a torch checkpoint")
    refused = run_cli(["run", "--add_model", tmp_path / "cellpose_model"], cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "cellflow-rt export" in refused.stderr and "Traceback" not in refused.output


def test_pretrained_model_ortho_on_the_command_line(tmp_path):
    from conftest import REFERENCE_3D, require_shared
    from cellflow_rt import models

    require_shared()
    stack = tifffile.imread(REFERENCE_3D / "nuclei_vol_do3D" / "image.tif")[:8, :64, :64]
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    result = run_cli(["run", "stack.tif", *FAST, "--do_3D", "--z_axis", "0", "--pretrained_model_ortho", "cyto_demo",
                      "--save_tif", "--no_npy"], cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert "ortho model cyto_demo" in result.stderr
    model = models.CellposeModel(pretrained_model="nuclei_demo", pretrained_model_ortho="cyto_demo")
    expected = model.eval(stack, channels=[0, 0], diameter=17.0, do_3D=True, z_axis=0)[0]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack_cp_masks.tif"), expected)
