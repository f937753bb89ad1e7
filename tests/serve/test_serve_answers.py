"""Masks -> answer bytes (``cellflow_rt.serve.answers``): the files ``cellflow-rt run`` writes, built
in memory by the same io functions; the Accept header; the JSON run-length encoding."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import tifffile

pytest.importorskip("starlette")

from cellflow_rt import io as outputs  # noqa: E402
from cellflow_rt.serve.answers import (GEOJSON, JSON, TIFF, ZIP, NotAcceptableError, choose_answer,  # noqa: E402
                                       count_masks, encode_answer, json_bytes, rle_decode, rle_encode)


def _masks():
    masks = np.zeros((60, 70), np.uint16)
    masks[5:20, 5:25] = 1
    masks[30:50, 10:30] = 2
    masks[25:55, 40:65] = 7
    masks[58:60, 0:2] = 3  # too small for an outline
    return masks


@pytest.mark.parametrize("accept,chosen", [
    ("", TIFF), ("*/*", TIFF), ("image/*", TIFF), ("application/json", JSON),
    ("application/geo+json", GEOJSON), ("application/zip", ZIP),
    ("application/json, */*;q=0.1", JSON), ("application/*", GEOJSON),
    ("image/tiff;q=0.2, application/json;q=0.9", JSON), ("application/json;q=0, */*", TIFF),
    ("text/html, application/zip;q=0.5", ZIP),
])
def test_choose_answer(accept, chosen):
    assert choose_answer(accept) == chosen


@pytest.mark.parametrize("accept", ["text/html", "application/json;q=0", "image/png"])
def test_choose_answer_refuses(accept):
    with pytest.raises(NotAcceptableError):
        choose_answer(accept)


def test_geojson_and_rois_are_the_files_run_writes(tmp_path):
    masks = _masks()
    image = tmp_path / "cells.tif"
    assert encode_answer(GEOJSON, masks, {}) == outputs.save_geojson(masks, image).read_bytes()
    with zipfile.ZipFile(io.BytesIO(encode_answer(ZIP, masks, {}))) as got, \
            zipfile.ZipFile(outputs.save_rois_zip(masks, image)) as want:
        assert got.namelist() == want.namelist() == ["1.roi", "2.roi", "7.roi"]
        assert all(got.read(n) == want.read(n) for n in want.namelist())


def _tiff_answer(masks):
    with tifffile.TiffFile(io.BytesIO(encode_answer(TIFF, masks, {}))) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.NONE  # HTTP compression when asked
        return tif.asarray()


def test_tiff_is_the_label_image_in_the_smallest_dtype(tmp_path):
    masks = _masks()
    got = _tiff_answer(masks)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, tifffile.imread(outputs.save_masks(masks, tmp_path / "c.tif", png=False,
                                                                           tif=True)[0]))
    many = np.arange(70000, dtype=np.uint32).reshape(350, 200)
    got = _tiff_answer(many)
    assert got.dtype == np.uint32 and np.array_equal(got, many)
    stack = np.stack([masks, masks[::-1]])
    np.testing.assert_array_equal(_tiff_answer(stack), stack)


def test_2d_formats_refuse_stacks():
    stack = np.stack([_masks()] * 2)
    for answer_type in (GEOJSON, ZIP):
        with pytest.raises(NotAcceptableError, match="2D"):
            encode_answer(answer_type, stack, {})


@pytest.mark.parametrize("masks", [_masks(), np.zeros((3, 4), np.uint16), np.zeros((0, 5), np.uint16),
                                   np.arange(70000, dtype=np.uint32).reshape(2, 35000),
                                   np.stack([_masks(), _masks()[::-1]])])
def test_rle_round_trip(masks):
    summary = json.loads(json_bytes(masks, {"n_masks": count_masks(masks)}))
    got = rle_decode(summary["masks"])
    assert got.dtype == masks.dtype and got.shape == masks.shape
    np.testing.assert_array_equal(got, masks)
    assert summary["n_masks"] == len(np.unique(masks[masks > 0]))
    assert sum(rle_encode(masks)["lengths"]) == masks.size


def test_the_client_side_stays_light():
    """The Python client decodes JSON answers with ``rle_decode`` from here: numpy only, no numba."""
    import subprocess
    import sys

    script = ("import sys; from cellflow_rt.serve.answers import rle_decode; import cellflow_rt.client; "
              "rle_decode({'values': [0, 2], 'lengths': [3, 1], 'shape': [2, 2]}); "
              "assert not {'numba', 'tifffile', 'PIL', 'roifile'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
