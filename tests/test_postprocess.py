"""cellflow_rt.postprocess: --exclude_on_edges (Cellpose 3.1.1.1's utils.remove_edge_masks)."""
import numpy as np

from cellflow_rt.postprocess import remove_edge_masks


def test_edge_masks_removed_and_the_rest_renumbered():
    masks = np.zeros((10, 12), np.uint16)
    masks[0:3, 4:6] = 9  # top edge
    masks[4:6, 4:6] = 3  # inside
    masks[7:10, 0:2] = 5  # bottom-left corner
    masks[4:7, 8:10] = 12  # inside
    masks[5, 11] = 2  # right edge, one pixel
    out = remove_edge_masks(masks)
    assert out.dtype == np.int32
    expected = np.zeros_like(out)
    expected[4:6, 4:6] = 1  # label order kept: 3 -> 1, 12 -> 2
    expected[4:7, 8:10] = 2
    np.testing.assert_array_equal(out, expected)


def test_3d_masks_touching_the_first_or_last_plane_are_removed():
    masks = np.zeros((4, 8, 8), np.uint32)
    masks[0, 3:5, 3:5] = 1  # first plane
    masks[1:3, 3:5, 3:5] = 4  # inside
    masks[3, 1:3, 1:3] = 6  # last plane
    out = remove_edge_masks(masks)
    assert sorted(np.unique(out)) == [0, 1] and (out[1:3, 3:5, 3:5] == 1).all()


def test_nothing_left():
    np.testing.assert_array_equal(remove_edge_masks(np.ones((3, 3), np.uint16)), np.zeros((3, 3)))
