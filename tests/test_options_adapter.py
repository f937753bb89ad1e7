"""One adapter from Cellpose-style arguments to settings (``cellflow_rt.eval_options``), used by the
command line, the Python API, ``serve`` and napari: same names, defaults, checks and messages."""
from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from cellflow_rt.cli import main
from cellflow_rt.eval_options import (FLAG_BY_NAME, FLAGS, OptionError,
                                      settings_from_flags, settings_from_kwargs)
from cellflow_rt.family import CPNET, CPSAM, family_of
from cellflow_rt.registry import resolve_model
from cellflow_rt.settings import EvalSettings

RUN = main.commands["run"]


def _cellpose4_model():
    """A served model whose manifest says Cellpose 4 (Cellpose-SAM), without exporting one."""
    info = dataclasses.replace(resolve_model("nuclei_demo"), family=CPSAM)
    return SimpleNamespace(info=info, family=CPSAM, size_model=None)


def _cli_message(tmp_path, name, value):
    image = tmp_path / "cells.npy"
    np.save(image, np.zeros((32, 32), np.uint16))
    result = CliRunner().invoke(main, ["run", str(image), "--model", "nuclei_demo", f"--{name}", str(value)])
    # before the model loads; main's exit statuses: 2 (usage) for chan, chan2 and diameter, 1 for settings
    assert result.exit_code == (2 if name in ("chan", "chan2", "diameter") else 1), result.output
    return " ".join(result.output.split())  # click wraps long lines


def _api_message(tmp_path, name, value):
    from cellflow_rt import models
    with pytest.raises(ValueError) as err:
        models.CellposeModel(pretrained_model="nuclei_demo").eval(np.zeros((32, 32), np.float32), **{name: value})
    return str(err.value)


def _serve_message(tmp_path, name, value):
    pytest.importorskip("starlette")
    from cellflow_rt.serve.options import parse_query
    with pytest.raises(OptionError) as err:
        parse_query([(name, str(value))], {"plain": SimpleNamespace(size_model=None)}, "plain")
    return str(err.value)


FRONT_ENDS = {"cli": _cli_message, "api": _api_message, "serve": _serve_message}


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("name,value", [("batch_size", 0), ("tile_overlap", 1.5), ("diameter", -2.0),
                                        ("anisotropy", -1.0)])
def test_a_bad_value_is_refused_with_the_same_message_everywhere(tmp_path, front_end, name, value):
    with pytest.raises(OptionError) as err:
        settings_from_flags({name: value})
    expected = str(err.value)
    assert name in expected and str(value) in expected
    assert expected in FRONT_ENDS[front_end](tmp_path, name, value)


@pytest.mark.parametrize("front_end", ["cli", "serve"])
def test_a_negative_channel_is_refused_with_the_same_message(tmp_path, front_end):
    message = FRONT_ENDS[front_end](tmp_path, "chan2", -1)
    assert "chan2 must be >= 0 (0 = none, 1-3 = R/G/B), got -1" in message


def test_serve_says_a_cellpose_sam_models_tile_side():
    """Issue 23's mismatch: serve told clients the tile side is fixed at 224 for every model."""
    pytest.importorskip("starlette")
    from cellflow_rt.serve.options import parse_query
    served = {"plain": SimpleNamespace(info=resolve_model("nuclei_demo"), size_model=None),
              "sam": _cellpose4_model()}
    with pytest.raises(OptionError) as err:
        parse_query([("model", "sam"), ("bsize", "224")], served, "plain")
    assert "256 pixels, fixed" in str(err.value) and "224" not in str(err.value).replace("bsize", "")
    with pytest.raises(OptionError) as err:
        parse_query([("bsize", "256")], served, "plain")
    assert "224 pixels by default" in str(err.value)


def test_serve_reads_a_cellpose_sam_request_as_the_command_line_does():
    """No diameter means no resize for Cellpose 4 models (not 30), all channels, Z on axis 0 for 3D."""
    pytest.importorskip("starlette")
    from cellflow_rt.serve.options import parse_query
    got = parse_query([("chan", "2"), ("do_3D", "true")], {"sam": _cellpose4_model()}, "sam")
    assert got.settings.diameter is None and got.settings.channels is None and got.settings.z_axis == 0
    assert not got.estimate_diameter
    assert parse_query([("diameter", "40")], {"sam": _cellpose4_model()}, "sam").settings.diameter == 40.0


def test_rules_come_from_the_model():
    plain = family_of(resolve_model("nuclei_demo"))
    assert plain.default_tile == 224 and not plain.tile_fixed and plain.restoration_fits
    sam = family_of(_cellpose4_model())
    assert sam.default_tile == 256 and sam.tile_fixed and not sam.restoration_fits
    assert CPNET.tile_side(EvalSettings()) == 224 and not CPNET.tile_fixed  # bsize None: the family's side


def test_run_takes_option_groups_built_from_the_adapter():
    assert len(inspect.signature(RUN.callback).parameters) <= 15  # groups, not 65 loose parameters
    params = {p.name: p for p in RUN.params if isinstance(p, click.Option)}
    for flag in FLAG_BY_NAME.values():
        assert flag.name in params, flag.name
        assert params[flag.name].help == flag.help
        if flag.kind not in ("flag", "pairs"):
            assert params[flag.name].default == flag.default, flag.name
    assert sum(len(group) for group in FLAGS.values()) == len(FLAG_BY_NAME)


def test_flags_become_cellposes_settings():
    chosen = settings_from_flags({"chan": 2, "chan2": 1, "diameter": 0, "no_norm": False, "norm_percentile": (2, 98),
                                  "invert": True, "niter": 0, "no_interp": True},
                                 given={"chan", "chan2", "diameter", "norm_percentile", "invert", "no_interp"})
    # --norm_percentile leaves --invert out, as Cellpose 3.1.1.1's command line does
    assert chosen.settings == EvalSettings(channels=(2, 1), percentile=(2.0, 98.0), interp=False)
    assert chosen.estimate_diameter and chosen.normalize == {"percentile": (2, 98), "normalize": True, "invert": False}
    assert settings_from_flags({}).settings == EvalSettings(channels=(0, 0), diameter=30.0)
    assert settings_from_flags({"lowhigh": ((0.0, 10.0),)}).settings.lowhigh == (0.0, 10.0)


def test_cellpose4_rules_drop_the_channel_flags():
    values = {"chan": 2, "invert": True, "diameter": 30.0, "stitch_threshold": 0.5}
    chosen = settings_from_flags(values, given={"chan", "invert", "stitch_threshold"}, family=CPSAM)
    assert chosen.unused == ("chan", "invert")
    assert chosen.settings.channels is None and not chosen.settings.invert and chosen.settings.diameter is None
    assert chosen.settings.z_axis == 0


def test_eval_arguments_unknown_ignored_and_refused():
    """The Python API's path (a family's own eval rules, e.g. Cellpose 4's, are applied before it)."""
    with pytest.raises(TypeError, match="unexpected eval argument"):
        settings_from_kwargs({"flow_treshold": 0.3})
    with pytest.warns(UserWarning, match="progress"):
        assert settings_from_kwargs({"progress": True, "rescale": 2.0}) == EvalSettings(rescale=2.0)
    with pytest.raises(OptionError, match="diameter must be >= 0"):
        settings_from_kwargs({"diameter": -1})
    with pytest.raises(OptionError, match="flow3D_smooth"):
        settings_from_kwargs({"flow3D_smooth": [1, 2, 2]})


def test_unknown_flag_names_the_closest_one():
    with pytest.raises(OptionError, match="did you mean 'flow_threshold'"):
        settings_from_flags({"flow_treshold": 0.3})


def _cli_settings(monkeypatch, tmp_path, flags):
    """The settings ``cellflow-rt run`` builds from ``flags`` (run_batch replaced: no network)."""
    import tifffile

    from cellflow_rt import batch

    seen = {}
    monkeypatch.setattr(batch, "run_batch", lambda paths, model, settings, options, **kw: seen.update(s=settings) or [])
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint16))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "img.tif"), "--model", "nuclei_demo", *flags])
    assert result.exit_code == 0, result.output
    return seen["s"]


@pytest.mark.parametrize("query", [
    [],
    [("diameter", "17"), ("flow_threshold", "0.6"), ("cellprob_threshold", "-0.5"), ("min_size", "20"),
     ("chan", "2"), ("chan2", "1"), ("augment", "true"), ("invert", "true")],
    [("do_3D", "true"), ("anisotropy", "2.5"), ("z_axis", "0"), ("flow3D_smooth", "1")],
    [("stitch_threshold", "0.3"), ("niter", "100"), ("tile_overlap", "0.3"), ("batch_size", "4")],
    [("all_channels", "true"), ("sharpen_radius", "2"), ("tile_norm_blocksize", "64"), ("dynamics", "cpu")],
])
def test_the_same_options_give_the_same_settings_from_the_cli_and_serve(monkeypatch, tmp_path, query):
    pytest.importorskip("starlette")
    from cellflow_rt.serve.options import parse_query
    flags = []
    for name, value in query:
        flags += [f"--{name}"] if value == "true" else [f"--{name}", value]
    served = {"nuclei_demo": SimpleNamespace(info=resolve_model("nuclei_demo"), size_model=None)}
    assert _cli_settings(monkeypatch, tmp_path, flags) == parse_query(query, served, "nuclei_demo").settings


def test_bsize_is_checked_by_the_models_family():
    """``--bsize``: Cellpose-SAM's tiles are fixed at 256; other families take multiples of 8."""
    assert settings_from_flags({"bsize": 256}, family=CPSAM).settings.bsize == 256
    with pytest.raises(OptionError, match="bsize must be 256") as err:
        settings_from_flags({"bsize": 384}, family=CPSAM)
    assert err.value.option == "bsize"
    with pytest.raises(OptionError, match="multiple of 8"):
        settings_from_flags({"bsize": 100}, family=CPNET)
    assert settings_from_flags({}, family=CPNET).settings.bsize is None
    assert CPNET.tile_side(settings_from_flags({"bsize": 160}, family=CPNET).settings) == 160


def test_cli_refuses_a_tile_side_the_model_does_not_take(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((40, 40), np.uint8))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "img.tif"), "--pretrained_model", "nuclei_demo",
                                       "--bsize", "100"])
    assert result.exit_code == 2 and "multiple of 8" in result.output
