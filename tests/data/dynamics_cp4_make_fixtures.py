"""Regenerate tests/data/dynamics_cp4_fixtures.npz with Cellpose 4.2.1.1 (its reference environment).

Run from the repository root with Cellpose 4's python (cellpose==4.2.1.1, torch 2.13 CPU, numpy
2.4.6), e.g. ``/work/ref/cp4/bin/python tests/data/dynamics_cp4_make_fixtures.py``. torchvision does
not import with that torch: ``../shared/tools/train_cpsam_tiny.py`` stubs it. The fixtures cover the
pieces of Cellpose 4's dynamics one by one (the reference cases in ``shared/reference/cpsam`` cover
them end to end): the 2D ``grid_sample`` Euler steps, the flow check's masks_to_flows and flow
errors, hole filling (2D and ``fill_voids``' 3D rule) with ``min_size``, and ``compute_masks`` with
masks removed by the flow check and a resize. Inputs are small integers (exact in float32).
"""
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1].parent / "shared" / "tools"))
from train_cpsam_tiny import stub_torchvision  # noqa: E402

stub_torchvision()
from cellpose import dynamics, utils  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

CPU = torch.device("cpu")


def smooth_int8(rng, shape, sigma, scale):
    """Smoothed noise rounded to int8 (stored as is; the tests divide by 16 like here)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma) * scale
    return np.clip(np.round(field), -127, 127).astype(np.int8)


def disks(rng, shape, n):
    """Labels 1..k of random overlapping disks, renumbered (later disks on top)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.uint16)
    for k in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(shape).astype(np.uint16)


def main():
    rng = np.random.default_rng(18)
    out = {}

    # 2D Euler steps (torch grid_sample), niter 137, every endpoint
    dP = smooth_int8(rng, (2, 64, 80), (0, 3, 3), 16 * 8)
    cellprob = smooth_int8(rng, (64, 80), 2, 40)
    fg = cellprob > 0
    flow = dP.astype(np.float32) / 16
    ends = dynamics.follow_flows(flow * fg / 5.0, np.nonzero(fg), niter=137, device=CPU)
    out.update(euler_dP=dP, euler_cellprob=cellprob, euler_ends=ends.int().numpy())

    # masks_to_flows and flow_error of touching disks
    labels = disks(rng, (96, 112), 30)
    dP = smooth_int8(rng, (2, 96, 112), (0, 2, 2), 16 * 6)
    mu = dynamics.masks_to_flows_gpu(labels.astype(np.int64), device=CPU)[0]
    errors = dynamics.flow_error(labels, dP.astype(np.float32) / 16, device=CPU)[0]
    out.update(heat_labels=labels, heat_dP=dP, heat_mu=mu, heat_errors=errors)

    # hole filling: 2D with nesting and gaps; 3D with holes and border pockets
    m2 = disks(rng, (48, 48), 12)
    m2[10:30, 10:30][(m2[10:30, 10:30] > 0) & (rng.random((20, 20)) < 0.15)] = 0
    m2[m2 == 3] = 0  # a gap in the ids
    m3 = np.zeros((6, 20, 20), np.uint16)
    for k in range(1, 9):
        z0, y0, x0 = rng.integers(0, 4), rng.integers(0, 14), rng.integers(0, 14)
        m3[z0:z0 + rng.integers(2, 4), y0:y0 + rng.integers(3, 7), x0:x0 + rng.integers(3, 7)] = k
    m3[(m3 > 0) & (rng.random(m3.shape) < 0.2)] = 0
    for name, masks in (("fill2d", m2), ("fill3d", m3)):
        out[name] = masks
        for min_size in (-1, 5):
            out[f"{name}_min{min_size}"] = utils.fill_holes_and_remove_small_masks(masks.copy(), min_size=min_size)

    # compute_masks end to end: noisy flows of disks (the flow check removes some masks), then a resize
    cells = disks(rng, (80, 80), 16)
    ideal = dynamics.masks_to_flows_gpu(cells.astype(np.int64), device=CPU)[0]
    noise = gaussian_filter(rng.standard_normal((2, 80, 80)), (0, 1.5, 1.5)) * 12
    dP = np.clip(np.round(16 * (5 * ideal + noise)), -127, 127).astype(np.int8)
    cellprob = np.where(cells > 0, 40, -40).astype(np.int8) + smooth_int8(rng, (80, 80), 1, 40)
    flow = dP.astype(np.float32) / 16
    out.update(compute_dP=dP, compute_cellprob=cellprob)
    for threshold in (0.0, 0.4):
        out[f"compute_flow{threshold}"] = dynamics.resize_and_compute_masks(
            flow, cellprob.astype(np.float32), niter=150, cellprob_threshold=0.0, flow_threshold=threshold,
            min_size=15, resize=[101, 93], device=CPU)
    np.savez_compressed(HERE / "dynamics_cp4_fixtures.npz", **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
