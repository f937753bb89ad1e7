"""cellflow_rt.big.output: the blockwise output zarr, complete or absent."""
from __future__ import annotations

import pytest

from cellflow_rt.big.output import atomic_zarr, interrupted_outputs


def _fill(folder, text):
    folder.mkdir()
    (folder / "zarr.json").write_text(text)


def test_output_appears_only_when_complete_and_replaces_the_old_one(tmp_path):
    output = tmp_path / "cells_cp_masks.zarr"
    _fill(output, "old")
    with atomic_zarr(output) as building:
        _fill(building, "new")
        assert (output / "zarr.json").read_text() == "old"  # untouched while the new one is built
    assert (output / "zarr.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


def test_a_failed_run_leaves_the_old_output_and_no_temporary(tmp_path):
    output = tmp_path / "cells_cp_masks.zarr"
    _fill(output, "old")
    with pytest.raises(RuntimeError):
        with atomic_zarr(output) as building:
            _fill(building, "half")
            raise RuntimeError("killed")
    assert (output / "zarr.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]


def test_leftovers_of_an_interrupted_run_are_removed_before_starting(tmp_path, caplog):
    output = tmp_path / "cells_cp_masks.zarr"
    stale = tmp_path / f".0badc0de.tmp.{output.name}"
    _fill(stale, "half")
    other = tmp_path / ".0badc0de.tmp.other_cp_masks.zarr"  # another output's: not ours to remove
    _fill(other, "half")
    assert interrupted_outputs(output) == [stale]
    with atomic_zarr(output) as building:
        assert not stale.exists()
        _fill(building, "new")
    assert other.exists() and "interrupted run" in caplog.text
