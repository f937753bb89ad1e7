"""Cellpose's normalize dict (normalize.py): every reference case against Cellpose 3.1.1.1, the
arithmetic the parity rests on, the bad-input errors, and what blockwise runs accept."""
import json
import math
import sys
import warnings

import numpy as np
import pytest
import tifffile

from conftest import REFERENCE as REFERENCE_ROOT, require_shared
from label_helpers import assert_same_labels

from cellflow_rt.normalize import NormalizeOptions, normalize_img, smooth_sharpen
from cellflow_rt.settings import EvalSettings

REFERENCE = REFERENCE_ROOT / "normalize"
CASES = sorted(p.name for p in REFERENCE.iterdir()) if REFERENCE.is_dir() else []
BUNDLED = {"cellflow_nuclei_demo": "nuclei_demo", "cellflow_cyto_demo": "cyto_demo"}
_MODELS = {}


def _model(name):
    from cellflow_rt import models
    if name not in _MODELS:
        _MODELS[name] = models.CellposeModel(pretrained_model=BUNDLED[name])
    return _MODELS[name]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_normalize_case_matches_cellpose(case):
    """The normalised image within 1e-4 of its range, and the masks at AP 1.0 (0.5, 0.75, 0.9)."""
    from cellflow_rt.metrics import matching_summary
    from cellflow_rt.models import _settings_from_eval_kwargs
    from cellflow_rt.pipeline import prepare_image

    require_shared()
    d = REFERENCE / case
    params = json.loads((d / "params.json").read_text())
    image = tifffile.imread(d / "image.tif")
    ref = np.load(d / "outputs.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stitched case's guessed z_axis, as in Cellpose
        normalised = prepare_image(image, _settings_from_eval_kwargs(params["eval"]), 2)
        masks, _, _ = _model(params["model"]).eval(image, **params["eval"])
    span = float(ref["img_norm"].max() - ref["img_norm"].min())
    error = float(np.abs(normalised - ref["img_norm"]).max())
    s = matching_summary(ref["masks"], masks)
    print(f"{case}: normalised max abs error {error:.3g} ({error / span:.3g} of range); masks "
          f"{s['n_true']}/{s['n_pred']} AP {s['ap_0.5']:.4f} {s['ap_0.75']:.4f} {s['ap_0.9']:.4f}", file=sys.stderr)
    assert normalised.shape == ref["img_norm"].shape
    assert error <= 1e-4 * span
    assert masks.shape == ref["masks"].shape and s["n_true"] == params["n_masks"]
    assert (s["ap_0.5"], s["ap_0.75"], s["ap_0.9"]) == (1.0, 1.0, 1.0)
    assert_same_labels(masks, ref["masks"], same_ids=True, what=case)  # exact, not only AP 1.0 at IoU 0.9


# --- the arithmetic ---------------------------------------------------------------------------------

@pytest.mark.torch
def test_torch_linspace_is_reproduced_bit_for_bit():
    torch = pytest.importorskip("torch")
    from cellflow_rt.normalize import _torch_linspace

    for Ly in (5, 100, 127, 384, 520, 1024, 2049):
        for n in (Ly, 17, 333, 696):
            expected = torch.linspace(-Ly / 2, Ly / 2 + 1, n).numpy()
            assert np.array_equal(_torch_linspace(-Ly / 2, Ly / 2 + 1, n), expected), (Ly, n)


def test_smoothing_is_a_circular_gaussian_correlation():
    rng = np.random.default_rng(0)
    x = rng.random((1, 48, 40, 1)).astype(np.float32)
    smoothed = smooth_sharpen(x.copy(), smooth_radius=2)
    assert smoothed[0, ..., 0].sum() == pytest.approx(x.sum(), rel=1e-5)  # a normalised kernel
    assert smoothed.std() < 0.5 * x.std()
    impulse = np.zeros((1, 48, 40, 1), np.float32)
    impulse[0, 10, 30] = 1
    response = smooth_sharpen(impulse, smooth_radius=2)[0, ..., 0]
    # Cellpose's kernel peaks one sample before (Ly/2, Lx/2) (its ramps end at L/2 + 1), so the image
    # moves by a pixel: reproduced
    assert np.unravel_index(response.argmax(), response.shape) == (11, 31)
    # sharpening alone: Cellpose sets the kernel's centre to 1 (rather than adding 1 to the negative
    # surround), so a flat image keeps G(centre) of its level, G being the normalised surround
    flat = smooth_sharpen(np.full((1, 32, 32, 1), 5.0, np.float32), sharpen_radius=3)
    assert np.ptp(flat) < 1e-5
    assert 0 < flat[0, 0, 0, 0] < 5 * 0.1


def test_lowhigh_maps_every_channel_in_float64():
    x = np.stack([np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((3, 4), np.float32)], -1)[None]
    out = normalize_img(x.copy(), NormalizeOptions(lowhigh=(2, 10)))
    expected = ((x.astype(np.float64) - 2).astype(np.float32).astype(np.float64) / 8).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert (out[..., 1] == -0.25).all()  # Cellpose's lowhigh leaves no channel alone
    per_channel = normalize_img(x.copy(), NormalizeOptions(lowhigh=[[0, 11], [-1, 1]]))
    np.testing.assert_allclose(per_channel[..., 1], 0.5)


TILE_CASES = [case for case in CASES if "tile_norm" in case]


@pytest.mark.parametrize("case", TILE_CASES)
def test_tile_normalisation_matches_cellpose_eval_to_rounding(case):
    """Tile normalisation alone (no network) against Cellpose's eval, at float32 rounding. The stored
    images span several rows and columns of blocks, where a misplaced bound would show."""
    from cellflow_rt.models import _settings_from_eval_kwargs
    from cellflow_rt.pipeline import prepare_image

    require_shared()
    d = REFERENCE / case
    params = json.loads((d / "params.json").read_text())
    ref = np.load(d / "outputs.npz")["img_norm"]
    blocksize = params["eval"]["normalize"]["tile_norm_blocksize"]
    assert min(ref.shape[1:3]) > blocksize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stack's z_axis, as in Cellpose
        normalised = prepare_image(tifffile.imread(d / "image.tif"), _settings_from_eval_kwargs(params["eval"]), 2)
    np.testing.assert_allclose(normalised, ref, rtol=0, atol=2e-6)


def _illuminated_image(shape, seed):
    """Sparse bright spots on a background, under illumination that varies along Y and X."""
    rng = np.random.default_rng(seed)
    Y, X = shape[1:3]
    yy, xx = np.mgrid[:Y, :X]
    light = (1 + 5 * yy / Y + 3 * (xx / X) ** 2)[None, :, :, None]
    return ((rng.random(shape) * 50 + (rng.random(shape) < 0.05) * 800 + 10) * light).astype(np.float32)


def _expected_tile_normalisation(x, blocksize, percentile, norm3D, smooth3D):
    """The documented rule in float64, written independently of normalize.py: block percentiles,
    Gaussian smoothing of the (Z, block row, block column, C) grids over Z and block rows (once more
    over block rows, by smooth3D, with norm3D), then half-pixel bilinear upsampling with edge clamping
    (np.interp) of each plane's grids (per plane without norm3D, else their mean over Z)."""
    from scipy.ndimage import gaussian_filter1d

    Z, Y, X, C = x.shape

    def starts(L):
        n = 1 if L <= blocksize else math.ceil(1.2 * L / blocksize)
        return np.linspace(0, L - min(blocksize, L), n).astype(int), min(blocksize, L)

    (ys, by), (xs, bx) = starts(Y), starts(X)
    grid = np.array([[[[np.percentile(x[z, y0:y0 + by, x0:x0 + bx, c].astype(np.float64), percentile)
                        for c in range(C)] for x0 in xs] for y0 in ys] for z in range(Z)])  # (Z, ny, nx, C, 2)
    for axis in (0, 1):
        grid = gaussian_filter1d(grid, 1, axis=axis)
    if norm3D:
        grid = gaussian_filter1d(grid, smooth3D or 1, axis=1)
    planes = grid if not norm3D and Z > 1 else grid.mean(axis=0, keepdims=True)

    def upsample(g, L, axis):
        pos = (np.arange(L) + 0.5) * g.shape[axis] / L - 0.5
        return np.apply_along_axis(lambda v: np.interp(pos, np.arange(len(v)), v), axis, g)

    bounds = upsample(upsample(planes, Y, 1), X, 2)  # (Z or 1, Y, X, C, 2)
    lo, hi = bounds[..., 0], bounds[..., 1]
    return (x - lo) / (hi - lo)


@pytest.mark.parametrize("shape, blocksize, options", [
    ((1, 150, 100, 1), 64, dict(norm3D=False)),
    ((1, 257, 200, 2), 100, dict()),
    ((1, 200, 333, 1), 128, dict(tile_norm_smooth3D=0)),
    ((1, 300, 220, 2), 100, dict(percentile=(3.0, 97.0))),
    ((4, 140, 150, 2), 48, dict(tile_norm_smooth3D=2.5)),
    ((3, 130, 170, 1), 64, dict(norm3D=False)),
])
def test_tile_bounds_follow_every_row_and_column_of_blocks(shape, blocksize, options):
    x = _illuminated_image(shape, seed=sum(shape) + blocksize)
    opts = NormalizeOptions(tile_norm_blocksize=blocksize, **options)
    out = normalize_img(x.copy(), opts)
    expected = _expected_tile_normalisation(x, blocksize, opts.percentile, opts.norm3D, opts.tile_norm_smooth3D)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


def test_tile_normalisation_flattens_uneven_illumination():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    ramp = 1 + 9 * xx / 255
    img = (rng.random((256, 256)) < 0.05) * ramp * 100 + ramp
    x = np.stack([img, np.zeros_like(img)], -1)[None].astype(np.float32)
    tiled = normalize_img(x.copy(), NormalizeOptions(tile_norm_blocksize=64))[0, ..., 0]
    plain = normalize_img(x.copy(), NormalizeOptions())[0, ..., 0]
    left, right = (slice(None), slice(0, 64)), (slice(None), slice(192, 256))
    assert np.percentile(tiled[right], 99) / np.percentile(tiled[left], 99) < 1.5
    assert np.percentile(plain[right], 99) / np.percentile(plain[left], 99) > 3


def test_stack_rules_follow_cellpose():
    from cellflow_rt.pipeline import stack_normalization

    base = EvalSettings(norm3D=False)
    assert stack_normalization(base.with_(do_3D=True), 5).norm3D is True  # do_3D: whole volume
    assert stack_normalization(base.with_(stitch_threshold=0.5), 5).norm3D is False  # stitching: as asked
    assert stack_normalization(EvalSettings(), 5).norm3D is False  # separate planes: per plane
    assert stack_normalization(base, 1).norm3D is False  # one image: as given (it steers tile smoothing)


def test_dict_carries_its_own_invert():
    assert NormalizeOptions.from_cellpose({"percentile": [2, 98]}, invert=True).invert is False
    assert NormalizeOptions.from_cellpose(True, invert=True).invert is True
    assert NormalizeOptions.from_cellpose({"percentile": None}).percentile == (1.0, 99.0)


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(lowhigh=[5, 5]), "lowhigh"),
    (dict(lowhigh=[[0, 1], [3, 2]]), "lowhigh"),
    (dict(lowhigh=[1, 2, 3]), "lowhigh"),
    (dict(sharpen_radius=-1), "sharpen_radius"),
    (dict(smooth_radius=-0.5), "smooth_radius"),
    (dict(tile_norm_blocksize=-10), "tile_norm_blocksize"),
    (dict(tile_norm_blocksize=12.5), "tile_norm_blocksize"),
    (dict(tile_norm_smooth3D=-1), "tile_norm_smooth3D"),
    (dict(percentile=[99, 1]), "percentile"),
    (dict(normalize=False, invert=True), "invert"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        NormalizeOptions(**options)
    with pytest.raises(ValueError, match=message):
        EvalSettings(**options)


def test_bad_dicts_and_sizes_name_the_option():
    from cellflow_rt import models

    with pytest.raises(ValueError, match="tile_norm"):  # Cellpose's docs say tile_norm; the key is tile_norm_blocksize
        NormalizeOptions.from_cellpose({"tile_norm": 100})
    x = np.random.default_rng(2).random((1, 80, 90, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="tile_norm_blocksize 100 is larger than the image"):
        normalize_img(x.copy(), NormalizeOptions(tile_norm_blocksize=100))
    with pytest.raises(ValueError, match="lowhigh has 3"):
        normalize_img(x.copy(), NormalizeOptions(lowhigh=[[0, 1], [0, 1], [0, 1]]))
    stack = np.random.default_rng(3).random((3, 80, 90, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="norm3D=False"):
        normalize_img(stack, NormalizeOptions(tile_norm_blocksize=40, norm3D=False))
    model = models.CellposeModel(pretrained_model="nuclei_demo")
    with pytest.raises(ValueError, match="lowhigh"):
        model.eval(x[0, ..., 0], channels=[0, 0], diameter=17, normalize={"lowhigh": [3, 1]})


# --- blockwise runs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["sharpen_radius", "smooth_radius", "tile_norm_blocksize"])
def test_blockwise_refuses_whole_image_options(option):
    from cellflow_rt.big.normalization import check_blockwise_normalization

    with pytest.raises(ValueError, match=f"{option}: not available in blockwise runs"):
        check_blockwise_normalization(EvalSettings(**{option: 8}))
    check_blockwise_normalization(EvalSettings(**{option: 8}, lowhigh=(0, 1)))  # lowhigh wins, as in Cellpose
    with pytest.raises(ValueError, match="norm3D=False"):
        check_blockwise_normalization(EvalSettings(norm3D=False, stitch_threshold=0.5))
    check_blockwise_normalization(EvalSettings(norm3D=False, do_3D=True))  # do_3D normalises the whole volume


def test_blockwise_lowhigh_gives_the_single_pass_input():
    from cellflow_rt.big.normalization import block_statistics, global_normalization, network_channels

    image = np.random.default_rng(4).gamma(2.0, 300.0, (120, 90)).astype(np.uint16)
    x = network_channels(image[..., None], (0, 0), 2)
    stats = [block_statistics(x, (0, 0), (1, 1), 4)]
    for lowhigh in ((50.0, 900.0), ((50.0, 900.0), (0.0, 2.0))):
        norm = global_normalization(stats, True, True, (1.0, 99.0), lowhigh=lowhigh)
        whole = normalize_img(x.copy()[None], NormalizeOptions(lowhigh=lowhigh, invert=True))[0]
        np.testing.assert_array_equal(norm.apply(x.copy()), whole)


# --- command line -------------------------------------------------------------------------------------

def _cli_settings(monkeypatch, tmp_path, *flags):
    """The EvalSettings ``cellflow-rt run`` builds from ``flags`` (run_batch replaced: no network)."""
    from click.testing import CliRunner

    from cellflow_rt import batch, cli

    seen = {}

    def fake_run_batch(paths, model, settings, options, **kwargs):
        seen["settings"] = settings
        return []

    monkeypatch.setattr(batch, "run_batch", fake_run_batch)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint16))
    result = CliRunner().invoke(cli.main, ["run", str(tmp_path / "img.tif"), "--model", "nuclei_demo", *flags])
    return result, seen.get("settings")


@pytest.mark.parametrize("flags, expected", [
    (["--lowhigh", "14", "584", "--lowhigh", "20", "381"], dict(lowhigh=((14.0, 584.0), (20.0, 381.0)))),
    (["--lowhigh", "3", "151", "--invert"], dict(lowhigh=(3.0, 151.0), invert=True)),
    (["--sharpen_radius", "4", "--smooth_radius", "1.5"], dict(sharpen_radius=4.0, smooth_radius=1.5)),
    (["--tile_norm_blocksize", "100", "--tile_norm_smooth3D", "2", "--no_norm3D"],
     dict(tile_norm_blocksize=100, tile_norm_smooth3D=2.0, norm3D=False)),
    # --norm_percentile makes Cellpose 3.1.1.1's command line drop --invert (errata A8)
    (["--norm_percentile", "3", "97", "--invert"], dict(percentile=(3.0, 97.0), invert=False)),
    (["--invert"], dict(invert=True)),
])
def test_cli_flags_fill_the_normalize_dict(monkeypatch, tmp_path, flags, expected):
    result, settings = _cli_settings(monkeypatch, tmp_path, *flags)
    assert result.exit_code == 0, result.output
    assert {k: getattr(settings, k) for k in expected} == expected


def test_cli_refuses_bad_normalisation(monkeypatch, tmp_path):
    result, _ = _cli_settings(monkeypatch, tmp_path, "--lowhigh", "5", "1")
    assert result.exit_code == 1 and "lowhigh" in result.output
    result, _ = _cli_settings(monkeypatch, tmp_path, "--sharpen_radius", "-2")
    assert result.exit_code == 1 and "sharpen_radius must be >= 0" in result.output
    result, _ = _cli_settings(monkeypatch, tmp_path, "--blocksize", "256", "--tile_norm_blocksize", "64")
    assert result.exit_code == 1 and "tile_norm_blocksize: not available in blockwise runs" in result.output
