"""Every front end x every model family gives the Python API's masks for the same settings (issue 23).

Front ends: ``cellflow-rt run`` on a file, ``run --dir`` over a folder, blockwise on Dask (``run
--blocksize`` with one block covering the image) and ``serve`` (the napari panel:
tests/napari/test_frontends_napari.py). Families: the bundled CPnet demo and the Cellpose-SAM demo, converted
without torch. The reference is ``CellposeModel(...).eval`` (tests/frontend_helpers.py).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from frontend_helpers import cpnet_family, cpsam_family
from label_helpers import assert_same_labels


@pytest.fixture(scope="module", params=["cpnet", "cpsam"])
def family(request):
    if request.param == "cpnet":
        return cpnet_family()
    return cpsam_family(request.getfixturevalue("cpsam_converted"))


def _run(family, args, cwd):
    run = run_cli(["run", *args, *family.flags()], cwd, env=family.env)
    assert run.returncode == 0, run.output
    return run


def test_run_on_a_file(family, tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", family.image)
    _run(family, ["cells.tif", "--save_tif"], tmp_path)
    assert_same_labels(tifffile.imread(tmp_path / "cells_cp_masks.tif"), family.api_masks(), same_ids=True,
                       what=f"{family.name}: run")


def test_run_over_a_folder(family, tmp_path):
    # two images of different shapes: each must get its own masks, not its neighbour's settings or size
    images = {"a": family.image, "b": np.ascontiguousarray(family.image[: family.image.shape[0] * 3 // 4, ::-1])}
    folder = tmp_path / "images"
    folder.mkdir()
    for stem, image in images.items():
        tifffile.imwrite(folder / f"{stem}.tif", image)
    _run(family, ["--dir", "images", "--save_tif"], tmp_path)
    for stem, image in images.items():
        assert_same_labels(tifffile.imread(folder / f"{stem}_cp_masks.tif"), family.api_masks(image), same_ids=True,
                           what=f"{family.name}: run --dir, {stem}.tif")


def test_blockwise_with_one_block(family, tmp_path):
    pytest.importorskip("dask")
    zarr = pytest.importorskip("zarr")
    tifffile.imwrite(tmp_path / "cells.tif", family.image)
    run = _run(family, ["cells.tif", "--blocksize", str(max(family.image.shape))], tmp_path)
    assert "blocks 1 " in run.stdout, run.output
    labels = zarr.open_array(tmp_path / "cells_cp_masks.zarr", mode="r")[:]
    # blocks number their cells themselves: the same masks, up to a relabelling
    assert_same_labels(labels, family.api_masks(), what=f"{family.name}: run --blocksize")


def test_serve(family, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from serve_helpers import ServerProcess

    server = ServerProcess(["--model", family.model, "--workers", "1"], tmp_path, env=family.env)
    try:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, family.image, photometric="minisblack")
        answer = server.post(f"/segment?{family.query()}", buffer.getvalue())
        assert answer.status == 200, answer.text
        labels = tifffile.imread(io.BytesIO(answer.body))
    finally:
        status = server.stop()
    assert status == 0, server.log()[-3000:]
    assert_same_labels(labels, family.api_masks(), same_ids=True, what=f"{family.name}: serve")
