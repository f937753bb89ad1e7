"""cellflow_rt.io.pictures: the outline picture and the summary figure, read back by Pillow."""
import numpy as np
import pytest
from pillow_codecs import decode

from cellflow_rt.io import pictures
from cellflow_rt.io.flows import flow_to_rgb
from cellflow_rt.io.outlines import masks_to_outlines

RED = np.array(pictures.OUTLINE_COLOUR)


def _scene(shape=(90, 120)):
    """A gradient image from black to white with masks on its dark, middle and bright parts."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = (xx * 255 / (shape[1] - 1)).astype(np.uint8)
    masks = np.zeros(shape, np.uint16)
    for k, x0 in enumerate((5, 50, 95), start=1):
        masks[20:60, x0:x0 + 20] = k
    masks[70:85, 30:60] = 7  # a gap in the labels
    return image, masks, yy


def _relative_luminance(rgb):
    c = np.asarray(rgb, float) / 255
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def test_outline_colour_shows_on_black_and_on_white():
    red = _relative_luminance(pictures.OUTLINE_COLOUR)
    assert (red + 0.05) / 0.05 >= 3 and 1.05 / (red + 0.05) >= 3  # WCAG contrast of graphics, both ends
    assert pictures.OUTLINE_COLOUR[0] != pictures.OUTLINE_COLOUR[1]  # a colour, never one of the grays


def test_outline_png_marks_exactly_the_mask_boundaries(tmp_path):
    image, masks, _ = _scene()
    rgb = pictures.image_to_rgb(image)
    path = pictures.save_outlines_png(rgb, masks, tmp_path / "cells.tif", suffix="_cp_masks")
    assert path.name == "cells_outlines_cp_masks.png"
    out = decode(path)
    assert out.dtype == np.uint8 and out.shape == image.shape + (3,)
    red = (out == RED).all(axis=-1)
    np.testing.assert_array_equal(red, masks_to_outlines(masks))
    assert red[masks == 0].sum() == 0  # outlines are inner boundaries, on mask pixels only
    gray = out[~red]
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    # the outlined masks lie on dark, middle and bright parts of the image
    assert rgb[..., 0][red].min() < 60 and rgb[..., 0][red].max() > 200


def test_image_to_rgb_channels():
    rng = np.random.default_rng(0)
    planes = rng.random((30, 40, 2)).astype(np.float32)
    gray = pictures.image_to_rgb(planes, (0, 0))
    assert (gray[..., 0] == gray[..., 2]).all()
    colour = pictures.image_to_rgb(planes, (2, 3))  # cytoplasm in green, nuclei in blue, no red
    assert colour[..., 0].max() == 0 and colour[..., 1].max() == 255 and colour[..., 2].max() == 255
    assert pictures.image_to_rgb(np.full((4, 4), 7.0)).max() == 0  # a constant image: black, not NaN


def test_summary_figure_panels(tmp_path):
    image, masks, yy = _scene()
    dP = np.stack([np.sin(yy / 9.0), np.cos(yy / 7.0)]).astype(np.float32)
    cellprob = (masks > 0).astype(np.float32) * 8 - 4
    rgb = pictures.image_to_rgb(image)
    path = pictures.save_summary_png(rgb, masks, flow_to_rgb(dP), cellprob, tmp_path / "cells.png", suffix="_x")
    assert path.name == "cells_cp_output_x.png"
    fig = decode(path)
    Ly, Lx = image.shape
    gap = pictures.PANEL_GAP
    assert fig.dtype == np.uint8 and fig.shape == (Ly, 5 * Lx + 4 * gap, 3)
    panel = [fig[:, i * (Lx + gap):i * (Lx + gap) + Lx] for i in range(5)]
    np.testing.assert_array_equal(panel[0], rgb)
    np.testing.assert_array_equal((panel[1] == RED).all(-1), masks_to_outlines(masks))
    assert (panel[2][masks > 0].std(axis=-1) > 0).all()  # masks in colour, background gray
    assert (panel[2][masks == 0].std(axis=-1) == 0).all()
    np.testing.assert_array_equal(panel[3], flow_to_rgb(dP))
    assert panel[4][masks > 0].min() == 255 and panel[4][masks == 0].max() == 0
    assert (fig[:, Lx:Lx + gap] == 255).all()


def test_summary_figure_of_a_large_image_is_subsampled():
    side = pictures.PANEL_MAX_SIDE * 2 + 10
    masks = np.zeros((side, 50), np.uint16)
    masks[100:400, 10:40] = 1
    fig = pictures.summary_figure(np.zeros((side, 50, 3), np.uint8), masks, np.zeros((side, 50, 3), np.uint8),
                                  np.zeros((side, 50), np.float32))
    assert fig.shape[0] == -(-side // 3) and fig.shape[0] <= pictures.PANEL_MAX_SIDE


def test_mask_overlay_is_the_same_on_every_run():
    image, masks, _ = _scene()
    a, b = pictures.mask_overlay(image, masks), pictures.mask_overlay(image, masks)
    np.testing.assert_array_equal(a, b)
    hues = {tuple(a[masks == k][0]) for k in (1, 2, 3)}
    assert len(hues) == 3


def test_pictures_refuse_3d_masks(tmp_path):
    with pytest.raises(ValueError, match="2D"):
        pictures.save_outlines_png(np.zeros((4, 5, 3), np.uint8), np.zeros((2, 4, 5), np.uint16), tmp_path / "a.tif")
