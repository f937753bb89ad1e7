"""CPnet, Cellpose 3's U-Net, written for export.

The layer names and shapes match Cellpose's checkpoints key for key, so a checkpoint's state dict
loads with ``strict=True``. Two things differ from Cellpose's own module, both on purpose:

- the style is a mean over (H, W) rather than an ``avg_pool2d`` whose kernel is the runtime feature
  size, so that the exported graph is valid at any H and W (the pooled kernel gets baked into the
  ONNX graph otherwise);
- there is no mkldnn path, and ``forward`` returns only ``(flows, style)``.

This module imports torch at import time: import it lazily, from inside functions.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from cellflow_rt.convert.specs import CPnetSpec

BN_EPS = 1e-5


def _bn_relu_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin, eps=BN_EPS), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2))


def _bn_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin, eps=BN_EPS), nn.Conv2d(cin, cout, k, padding=k // 2))


class _ResDown(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = _bn_conv(cin, cout, 1)
        self.conv = nn.Sequential()
        for t in range(4):
            self.conv.add_module(f"conv_{t}", _bn_relu_conv(cin if t == 0 else cout, cout, 3))

    def forward(self, x):
        x = self.proj(x) + self.conv[1](self.conv[0](x))
        return x + self.conv[3](self.conv[2](x))


class _Down(nn.Module):
    def __init__(self, nbase):
        super().__init__()
        self.down = nn.Sequential()
        for n in range(len(nbase) - 1):
            self.down.add_module(f"res_down_{n}", _ResDown(nbase[n], nbase[n + 1]))

    def forward(self, x):
        levels = [self.down[0](x)]
        for block in list(self.down)[1:]:
            levels.append(block(F.max_pool2d(levels[-1], 2, 2)))
        return levels


class _StyleConv(nn.Module):
    """BN-ReLU-conv whose input gets the style, through a linear map, as a per-channel bias."""

    def __init__(self, cin: int, cout: int, nstyle: int):
        super().__init__()
        self.conv = _bn_relu_conv(cin, cout, 3)
        self.full = nn.Linear(nstyle, cout)

    def forward(self, style, x, skip=None):
        if skip is not None:
            x = x + skip
        return self.conv(x + self.full(style)[:, :, None, None])


class _ResUp(nn.Module):
    def __init__(self, cin: int, cout: int, nstyle: int):
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv_0", _bn_relu_conv(cin, cout, 3))
        for t in (1, 2, 3):
            self.conv.add_module(f"conv_{t}", _StyleConv(cout, cout, nstyle))
        self.proj = _bn_conv(cin, cout, 1)

    def forward(self, x, skip, style):
        x = self.proj(x) + self.conv[1](style, self.conv[0](x), skip=skip)
        return x + self.conv[3](style, self.conv[2](style, x))


class _Up(nn.Module):
    def __init__(self, nbaseup):
        super().__init__()
        self.up = nn.Sequential()
        for n in range(1, len(nbaseup)):
            self.up.add_module(f"res_up_{n - 1}", _ResUp(nbaseup[n], nbaseup[n - 1], nbaseup[-1]))

    def forward(self, style, levels):
        x = self.up[-1](levels[-1], levels[-1], style)
        for n in range(len(self.up) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.up[n](x, levels[n], style)
        return x


class CPnet(nn.Module):
    """Cellpose 3's CPnet (2D, residual, style on, skips added), inference only.

    Parameters
    ----------
    spec : CPnetSpec
        Channel counts, usually from :func:`cellflow_rt.export.checkpoint.detect_spec`.

    Notes
    -----
    ``forward(image)`` takes float32 ``[B, nchan, H, W]`` with H and W multiples of 8 and returns
    ``flows`` ``[B, nout, H, W]`` and ``style`` ``[B, nbase[-1]]`` (L2-normalised).
    """

    def __init__(self, spec: CPnetSpec):
        super().__init__()
        self.spec = spec
        nbase = list(spec.nbase)
        nbaseup = nbase[1:] + [nbase[-1]]
        self.downsample = _Down(nbase)
        self.upsample = _Up(nbaseup)
        self.output = _bn_relu_conv(nbaseup[0], spec.nout, 1)
        # Kept as buffers so that checkpoints load with strict=True; the network never reads them.
        self.register_buffer("diam_mean", torch.full((1,), 30.0))
        self.register_buffer("diam_labels", torch.full((1,), 30.0))

    def forward(self, image):
        levels = self.downsample(image)
        style = _style(levels[-1])
        flows = self.output(self.upsample(style, levels))
        return flows, style


class HalfPrecisionCPnet(nn.Module):
    """A CPnet computing in float16, with float32 input and outputs, for export.

    The style's normalisation stays in float32: its sum of squares (about 1.5e5 for the cyto demo
    on ordinary images) is beyond float16's largest value, 65504.

    Parameters
    ----------
    net : CPnet
        The float32 network; it is copied, not changed.
    """

    def __init__(self, net: CPnet):
        super().__init__()
        self.spec = net.spec
        self.net = copy.deepcopy(net).half().eval()

    def forward(self, image):
        levels = self.net.downsample(image.half())
        style = _style(levels[-1].float())
        flows = self.net.output(self.net.upsample(style.half(), levels))
        return flows.float(), style


def _style(features):
    # A mean over (H, W), not Cellpose's avg_pool2d with the runtime size as kernel: see the module doc.
    pooled = features.mean(dim=(2, 3))
    return pooled / torch.sum(pooled**2, dim=1, keepdim=True) ** 0.5


def expected_shapes(spec: CPnetSpec) -> dict[str, tuple[int, ...]]:
    """Return the state-dict key -> tensor shape that a checkpoint of ``spec`` must have."""
    return {name: tuple(t.shape) for name, t in CPnet(spec).state_dict().items()}


def build_cpnet(spec: CPnetSpec, state_dict) -> CPnet:
    """Return a CPnet in eval mode, float32 on CPU, with ``state_dict`` loaded strictly."""
    net = CPnet(spec)
    net.load_state_dict(state_dict, strict=True)
    return net.float().eval()
