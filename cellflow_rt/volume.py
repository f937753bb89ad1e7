"""do_3D: the 2D network over YX, ZY and ZX slices, flows summed into a 3D field, 3D dynamics.

Cellpose 3.1.1.1's ``_run_net(do_3D=True)`` and ``core.run_3D``: the volume is resized in XY by
``rescale`` and in Z by ``anisotropy * rescale``; the three slice orientations are run through the
network at that size; the views' flows and cell probabilities are *summed* (not averaged); with
``resample`` the field is resized back before the dynamics. Stitching of 2D masks across Z lives
in the dynamics package (``stitch3D``); this module only makes the ``do_3D`` flows (the pipeline
runs the dynamics).
"""
from __future__ import annotations

import numpy as np

from .family import family_of
from .flows import rescaled_size, run_network
from .resize import resize_bilinear

#: (axes to transpose the (Z, Y, X, C) volume into slices, axes to put outputs back, flow targets)
#: for the YX, ZY and ZX views; each view's network outputs (first, second) flow go to the targets.
_VIEWS = (
    ((0, 1, 2, 3), (0, 1, 2), (1, 2)),   # YX planes indexed by z: dY, dX
    ((1, 0, 2, 3), (1, 0, 2), (0, 2)),   # ZX planes indexed by y: dZ, dX
    ((2, 0, 1, 3), (1, 2, 0), (0, 1)),   # ZY planes indexed by x: dZ, dY
)


def _resize_planes(stack: np.ndarray, Ly: int, Lx: int) -> np.ndarray:
    """Bilinear resize of the 2nd and 3rd axes of (N, Y, X, C)."""
    return np.stack([resize_bilinear(plane, Ly, Lx) for plane in stack])


def resize_volume(x: np.ndarray, rescale, anisotropy) -> np.ndarray:
    """Resize XY by ``rescale`` then Z by ``anisotropy * rescale`` (the reference's two passes)."""
    Lz, Ly, Lx = x.shape[:3]
    if rescale == 1.0 and (anisotropy is None or anisotropy == 1.0):
        return x
    anisotropy = 1.0 if anisotropy is None else anisotropy
    Lyr, Lxr = rescaled_size(Ly, rescale), rescaled_size(Lx, rescale)
    if rescale != 1.0:
        x = _resize_planes(x, Lyr, Lxr)
    Lzr = int(Lz * anisotropy * rescale)
    if Lzr < 1 or Lyr < 1 or Lxr < 1:
        raise ValueError(f"volume {Lz}x{Ly}x{Lx} rescaled by {float(rescale):.4g} (anisotropy {anisotropy}) "
                         "has no voxels left")
    return _resize_planes(x.transpose(1, 0, 2, 3), Lzr, Lxr).transpose(1, 0, 2, 3)


def run_network_3d(net, x: np.ndarray, augment: bool, batch_size: int, tile_overlap: float, bsize: int,
                   net_ortho=None, pad_to=None, styles: bool = True):
    """Sum of the three views' outputs: (Z, Y, X, 4) = dZ, dY, dX, cellprob; and the last view's styles.

    ``net_ortho``, if given, runs the ZX and ZY views (Cellpose's ``pretrained_model_ortho``).
    ``pad_to`` and ``styles`` as in :func:`~cellflow_rt.flows.run_network` (Cellpose 4's tiling).
    """
    yf = np.zeros(x.shape[:3] + (4,), np.float32)
    view_styles = None
    for view, (to_slices, back, targets) in enumerate(_VIEWS):
        view_net = net if view == 0 or net_ortho is None else net_ortho
        y, view_styles = run_network(view_net, x.transpose(to_slices), rescale=None, augment=augment,
                                     batch_size=batch_size, tile_overlap=tile_overlap, bsize=bsize, pad_to=pad_to,
                                     styles=styles)
        yf[..., 3] += y[..., 2].transpose(back)
        for j, target in enumerate(targets):
            yf[..., target] += y[..., j].transpose(back)
        del y
    return yf, view_styles


def volume_flows(x: np.ndarray, model, settings, rescale, bsize=None, pad_to=None, styles: bool = True):
    """do_3D flows of a normalised (Z, Y, X, C) volume: dP (3, Z, Y, X), cellprob (Z, Y, X), styles.

    With ``resample`` the field comes back at the volume's own size, else at the rescaled size.
    ``bsize`` (default: the model family's tile side for ``settings``), ``pad_to`` and ``styles``: the tiling, as in
    :func:`~cellflow_rt.flows.run_network`.
    """
    Lz, Ly, Lx = x.shape[:3]
    xr = resize_volume(x, rescale, settings.anisotropy)
    yf, view_styles = run_network_3d(model.net, xr, settings.augment, settings.batch_size, settings.tile_overlap,
                                     bsize or family_of(model).tile_side(settings), net_ortho=getattr(model, "net_ortho", None),
                                     pad_to=pad_to, styles=styles)
    del xr
    if settings.resample:
        if rescale != 1.0:
            yf = _resize_planes(yf, Ly, Lx)
        if yf.shape[0] != Lz:
            yf = _resize_planes(yf.transpose(1, 0, 2, 3), Lz, Lx).transpose(1, 0, 2, 3)
    cellprob = np.ascontiguousarray(yf[..., 3])
    dP = np.ascontiguousarray(yf[..., :3].transpose(3, 0, 1, 2))
    del yf
    if settings.flow3D_smooth > 0:
        from scipy.ndimage import gaussian_filter
        s = settings.flow3D_smooth
        dP = gaussian_filter(dP, (0, s, s, s))
    return dP, cellprob, view_styles
