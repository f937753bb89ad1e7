"""cellflow_rt.family: one object per model family, chosen from the manifest in one place."""
import json

import numpy as np
import pytest

from cellflow_rt.family import CPNET, CPSAM, FAMILIES, UnknownFamilyError, family_for_manifest, family_of
from cellflow_rt.family.cpsam import CellposeSAM
from cellflow_rt.registry import ModelFileError, bundled_model_dir, read_manifest, resolve_model
from cellflow_rt.settings import EvalSettings


@pytest.mark.parametrize("manifest, family", [
    ({}, CPNET),                                                   # exports from before Cellpose 4
    ({"cellpose_generation": 3}, CPNET),
    ({"cellpose_generation": 4}, CPSAM),                           # Cellpose-SAM exports without architecture
    ({"cellpose_generation": 4, "architecture": "cpsam"}, CPSAM),
    ({"cellpose_generation": 3, "architecture": "cpnet"}, CPNET),
    ({"cellpose_generation": 3, "architecture": "cpsam"}, CPNET),   # the generation decides, as it always did
])
def test_family_is_chosen_from_the_manifest(manifest, family):
    assert family_for_manifest(manifest) is family


@pytest.mark.parametrize("manifest, message", [
    ({"cellpose_generation": 5}, "cellpose_generation"),
    ({"cellpose_generation": True}, "cellpose_generation"),
    ({"cellpose_generation": 4, "architecture": "unet9"}, "unet9"),
])
def test_unknown_or_contradictory_families_are_refused(manifest, message):
    with pytest.raises(UnknownFamilyError, match=message):
        family_for_manifest(manifest)


def test_bundled_models_are_cpnets_and_say_so_through_the_registry():
    info = resolve_model("nuclei_demo")
    assert info.family is CPNET and info.fixed_tile is None and info.generation == 3


def test_manifest_errors_name_the_family_rule(tmp_path):
    manifest = json.loads((bundled_model_dir() / "nuclei_demo.json").read_text())
    path = tmp_path / "m.json"
    path.write_text(json.dumps(dict(manifest, architecture="cpsam", cellpose_generation=4)))
    with pytest.raises(ModelFileError, match="'cpsam'"):  # a Cellpose-SAM manifest needs its network description
        read_manifest(path)
    path.write_text(json.dumps(dict(manifest, default_channels=[1])))
    with pytest.raises(ModelFileError, match="default_channels"):
        read_manifest(path)


@pytest.mark.parametrize("family, bsize, tile, pad_to", [
    (CPNET, 224, 224, None), (CPNET, 160, 160, None),   # CPnet: bsize is the tile
    (CPSAM, 224, 256, 256), (CPSAM, 160, 256, 256),     # Cellpose-SAM: 256, planes padded up to a tile
])
def test_tile_side_and_padding(family, bsize, tile, pad_to):
    settings = EvalSettings(bsize=bsize)
    assert family.tile_side(settings) == tile and family.pad_to(settings) == pad_to


class _Meta:
    def __init__(self, diam_mean, diam_labels):
        self.diam_mean, self.diam_labels = diam_mean, diam_labels


def test_scale_and_euler_steps_per_family():
    meta = _Meta(np.float32(17.0), np.float32(20.0))
    settings = EvalSettings(diameter=45.0)
    assert CPNET.rescale_for(meta, settings) == np.float32(17.0) / 45.0
    assert CPSAM.rescale_for(meta, settings) == 30.0 / 45.0  # no diam_mean in Cellpose 4
    assert CPSAM.rescale_for(meta, EvalSettings()) == 1.0     # no diameter: no resize
    assert CPNET.rescale_for(meta, EvalSettings()) == np.float32(17.0) / np.float32(20.0)
    # 200 / rescale: unrounded in Cellpose 3, truncated in Cellpose 4
    assert CPNET.euler_iterations(settings, 30.0 / 47.0) == pytest.approx(313.3333) and \
        CPSAM.euler_iterations(settings, 30.0 / 47.0) == 313
    assert CPSAM.euler_iterations(EvalSettings(resample=False), 0.5) == 200
    assert CPSAM.diameter_at(meta, 0.75) == 40.0 and CPNET.diameter_at(meta, 0.5) == 34.0


def test_flow_pictures_differ_by_family_on_a_big_flow_field():
    # above 224**3 values Cellpose 4 takes the magnitude's percentiles on a strided subsample
    from cellflow_rt.io.flows import flow_to_rgb

    rng = np.random.default_rng(0)
    dP = rng.random((2, 3400, 3400), np.float32)
    dP[:, ::7] *= 20
    cpnet, cpsam = CPNET.flow_to_rgb(dP), CPSAM.flow_to_rgb(dP)
    np.testing.assert_array_equal(cpnet, flow_to_rgb(dP))
    np.testing.assert_array_equal(cpsam, flow_to_rgb(dP, rule="numpy2.1"))
    assert not np.array_equal(cpnet, cpsam)


def test_family_of_objects_without_one_is_the_default():
    assert family_of(object()) is CPNET
    assert family_of(_WithFamily(CPSAM)) is CPSAM


class _WithFamily:
    def __init__(self, family):
        self.family = family


def test_eval_arguments_follow_each_cellpose_version():
    image = np.zeros((8, 8), np.float32)
    cp3 = CPNET.eval_arguments((image, 4), {"invert": True})
    assert cp3["batch_size"] == 4 and cp3["invert"] is True and cp3["bsize"] == 224
    with pytest.raises(TypeError, match="invert"):
        CPSAM.eval_arguments((image,), {"invert": True})
    with pytest.raises(ValueError, match="256"):
        CPSAM.eval_arguments((image,), {"bsize": 224})
    with pytest.warns(UserWarning, match="channels"):
        cp4 = CPSAM.eval_arguments((image,), {"channels": [0, 0]})
    assert "channels" not in cp4 and "bsize" not in cp4
    # Cellpose 4's positional order: ... normalize, rescale (Cellpose 3: normalize, invert)
    with pytest.warns(UserWarning, match="rescale"):
        CPSAM.eval_arguments((image, 8, True, None, None, None, True, 0.5), {})


def test_a_family_with_changeable_tiles_is_a_subclass():
    """What a third family (CPDINO: Cellpose 4's dynamics, 384-pixel tiles that bsize may change)
    states: a subclass with its tiles and manifest key; registered, manifests name it."""

    class Wide(CellposeSAM):
        name = "wide_test"
        title = "Cellpose 4 (wide test)"
        manifest_keys = {"wide_test": (dict,)}
        default_tile = 384
        tile_fixed = False

    wide = Wide()
    assert wide.tile_side(EvalSettings(bsize=320)) == 320 and wide.fixed_tile is None
    assert wide.euler_iterations(EvalSettings(), 0.5) == CPSAM.euler_iterations(EvalSettings(), 0.5)
    image = np.zeros((8, 8), np.float32)
    assert wide.eval_arguments((image,), {"bsize": 320})["bsize"] == 320
    assert wide.eval_arguments((image,), {})["bsize"] == 384
    FAMILIES[wide.name] = wide
    try:
        assert family_for_manifest({"cellpose_generation": 4, "architecture": "wide_test"}) is wide
    finally:
        del FAMILIES[wide.name]
