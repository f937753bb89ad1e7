"""Query parameters -> EvalSettings (``cellflow_rt.serve.options``), without a server."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import pytest

pytest.importorskip("starlette")

from cellflow_rt.serve.options import (NOT_OFFERED, OptionError, all_options, openapi_parameters,  # noqa: E402
                                       parse_query, parser_for)
from cellflow_rt.settings import EvalSettings  # noqa: E402


class _Model:
    def __init__(self, size_model=None):
        self.size_model = size_model


SERVED = {"nuclei_demo": _Model(size_model=object()), "plain": _Model()}


def test_every_setting_is_a_query_parameter():
    names = {o.name for o in all_options()}
    assert set(EvalSettings.names()) - set(NOT_OFFERED) <= names
    assert {"model", "chan", "chan2", "all_channels"} <= names
    documented = {p["name"]: p["description"] for p in openapi_parameters()}
    assert "Flow error" in documented["flow_threshold"] or "flow error" in documented["flow_threshold"].lower()


@dataclass(frozen=True)
class _Normalize:
    tile_norm_blocksize: int = 0
    sharpen_radius: float = 0.0


@pytest.mark.parametrize("hint,text,value", [
    (bool, "true", True), (bool, "0", False), (int, "12", 12), (float, "-0.5", -0.5),
    (Optional[float], "none", None), (Optional[int], "3", 3), (Tuple[float, float], "1, 99.5", (1.0, 99.5)),
    (Tuple[int, ...], "1,2,3", (1, 2, 3)), (Dict[str, Any], '{"lowhigh": [0, 1]}', {"lowhigh": [0, 1]}),
    (Union[bool, Dict[str, Any]], "false", False),
    (Union[bool, Dict[str, Any]], '{"tile_norm_blocksize": 100}', {"tile_norm_blocksize": 100}),
    (_Normalize, '{"sharpen_radius": 2}', _Normalize(sharpen_radius=2.0)),
])
def test_parser_for_each_kind_of_annotation(hint, text, value):
    """New options of any of these types are read without a change to the service."""
    assert parser_for(hint)(text) == value


@pytest.mark.parametrize("hint,text", [(bool, "maybe"), (int, "1.5"), (float, "inf"), (float, "nan"),
                                       (Tuple[float, float], "1"), (Dict[str, Any], "[1, 2]"),
                                       (Union[bool, Dict[str, Any]], "yes please")])
def test_parser_refuses_wrong_values(hint, text):
    with pytest.raises(ValueError):
        parser_for(hint)(text)


def test_query_gives_the_settings_of_the_same_run_flags():
    """``?diameter=17&flow_threshold=0.6&...`` is what ``cellflow-rt run`` builds from the same flags."""
    got = parse_query([("model", "plain"), ("diameter", "17"), ("flow_threshold", "0.6"), ("min_size", "20"),
                       ("chan", "2"), ("chan2", "1"), ("percentile", "2,98"), ("do_3D", "true"), ("z_axis", "0")],
                      SERVED, "nuclei_demo")
    assert got.model == "plain" and not got.estimate_diameter
    assert got.settings == EvalSettings(channels=(2, 1), diameter=17.0, flow_threshold=0.6, min_size=20,
                                        percentile=(2.0, 98.0), do_3D=True, z_axis=0)


def test_defaults_are_the_command_lines():
    got = parse_query([], SERVED, "nuclei_demo")
    assert got.model == "nuclei_demo" and got.settings == EvalSettings(channels=(0, 0), diameter=30.0)
    assert parse_query([("all_channels", "true")], SERVED, "plain").settings.channels is None


def test_timeout_is_the_clients_own():
    assert parse_query([("timeout", "2.5")], SERVED, "plain").timeout == 2.5
    assert parse_query([], SERVED, "plain").timeout is None


def test_diameter_zero_estimates_with_a_size_model_only():
    assert parse_query([("diameter", "0")], SERVED, "nuclei_demo").estimate_diameter
    plain = parse_query([("diameter", "0")], SERVED, "plain")
    assert not plain.estimate_diameter and plain.settings.diameter is None


@pytest.mark.parametrize("items,words", [
    ([("flow_treshold", "1")], "did you mean 'flow_threshold'"),
    ([("nonsense", "1")], "unknown option 'nonsense'"),
    ([("channels", "1,2")], "chan and chan2"),
    ([("compute_masks", "false")], "not offered"),
    ([("min_size", "1"), ("min_size", "2")], "more than once"),
    ([("model", "cyto3")], "not served"),
    ([("model", "../models/x.onnx")], "not served"),
    ([("diameter", "-3")], "diameter"),
    ([("chan", "-1")], "chan"),
    ([("tile_overlap", "2")], "tile_overlap"),
    ([("batch_size", "x")], "batch_size"),
    ([("timeout", "0")], "timeout"),
])
def test_bad_queries_name_the_option(items, words):
    with pytest.raises(OptionError, match=None) as err:
        parse_query(items, SERVED, "nuclei_demo")
    assert words in str(err.value) and "\n" not in str(err.value)
