"""Cellpose 4.2's CPDINO (DINOv3 ViT-L/16 or ViT-B/16 backbone), in torch, for the export gate.

The architecture is described in :mod:`cellflow_rt.convert.cpdino_graph`. This module is the torch
side of the exporter's parity gate: a second, independent writing of the network (torch ops, key
names as in Cellpose 4.2.1.1's checkpoints, so a checkpoint loads with ``strict=True``) that the
ONNX graph must match on the gate's tiles. What differs from Cellpose's module, on purpose:

- the input always has 3 channels (Cellpose uses the first 1-3 weight slices; zeros in missing
  channels give the same sums);
- ``forward`` returns ``(flows, style)`` with the style all zeros: Cellpose 4.2.1.1's CPDINO returns
  ``torch.randn`` noise there, which nothing downstream reads (its ``run_net`` returns zero styles);
- no training paths (block drop, rotary jitter): inference only.

This module imports torch at import time: import it lazily, from inside functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellflow_rt.convert.specs import (DINO_KERNEL, NCHAN, NSTYLE, PATCH, CPDINOSpec, cpdino_defaults,
                                       cpdino_expected_shapes, read_cpdino_spec, strip_module_prefix)

LAYERNORM_EPS = 1e-5


def rope_tables(periods: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each ``[height * width, head_dim]``, of DINOv3's axial rotary embedding on a grid.

    Coordinates are cell centres scaled to [-1, 1] per axis; each axis gets ``head_dim / 4`` angles
    ``2 pi coord / period``; the row is ``[angles_y, angles_x]`` twice.
    """
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2.0 - 1.0
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2.0 - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_y.reshape(-1), grid_x.reshape(-1)], dim=1)
    angles = (coords[:, :, None] * (2 * math.pi)) / periods[None, None, :]
    angles = angles.reshape(coords.shape[0], -1).repeat(1, 2)
    return torch.sin(angles), torch.cos(angles)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.register_buffer("qkv_bias_mask", torch.ones(3 * dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, sin, cos, n_prefix: int):
        batch, tokens, dim = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.qkv_bias_mask)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q = torch.cat([q[:, :, :n_prefix], _rotate(q[:, :, n_prefix:], sin, cos)], dim=2)
        k = torch.cat([k[:, :, :n_prefix], _rotate(k[:, :, n_prefix:], sin, cos)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, spec: CPDINOSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=LAYERNORM_EPS)
        self.attn = _Attention(spec.embed_dim, spec.num_heads)
        self.ls1 = _LayerScale(spec.embed_dim)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=LAYERNORM_EPS)
        self.mlp = _MLP(spec.embed_dim, spec.mlp_dim)
        self.ls2 = _LayerScale(spec.embed_dim)

    def forward(self, x, sin, cos, n_prefix: int):
        x = x + self.ls1(self.attn(self.norm1(x), sin, cos, n_prefix))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(NCHAN, dim, kernel_size=DINO_KERNEL, stride=PATCH, padding=PATCH // 2)


class _Rope(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("periods", torch.ones(head_dim // 4))


class _Encoder(nn.Module):
    def __init__(self, spec: CPDINOSpec):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, spec.n_storage, spec.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, spec.embed_dim))
        self.patch_embed = _PatchEmbed(spec.embed_dim)
        self.rope_embed = _Rope(spec.head_dim)
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.embed_dim, eps=LAYERNORM_EPS)


class CPDINO(nn.Module):
    """Cellpose 4.2's CPDINO network, inference only.

    Parameters
    ----------
    spec : CPDINOSpec
        Sizes, usually from :func:`cellflow_rt.convert.specs.read_cpdino_spec`.

    Notes
    -----
    ``forward(image)`` takes float32 ``[B, 3, H, W]`` with H and W multiples of 8 (384 x 384 by
    default in Cellpose) and returns ``flows`` ``[B, nout, H, W]`` and ``style`` ``[B, 256]`` (zeros).
    """

    def __init__(self, spec: CPDINOSpec):
        super().__init__()
        self.spec = spec
        self.encoder = _Encoder(spec)
        self.out = nn.Linear(spec.embed_dim, spec.nout * PATCH * PATCH)
        self.W2 = nn.Parameter(torch.zeros(spec.nout * PATCH * PATCH, spec.nout, PATCH, PATCH))
        self.diam_labels = nn.Parameter(torch.full((1,), 30.0))
        self.diam_mean = nn.Parameter(torch.full((1,), 30.0))

    def forward(self, image):
        x = self.encoder.patch_embed.proj(image)
        batch, _, height, width = x.shape
        sin, cos = rope_tables(self.encoder.rope_embed.periods, height, width)
        prefix = torch.cat([self.encoder.cls_token, self.encoder.storage_tokens], dim=1).expand(batch, -1, -1)
        x = torch.cat([prefix, x.flatten(2).transpose(1, 2)], dim=1)
        n_prefix = prefix.shape[1]
        for block in self.encoder.blocks:
            x = block(x, sin, cos, n_prefix)
        x = self.out(self.encoder.norm(x[:, n_prefix:]))
        x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        flows = F.conv_transpose2d(x, self.W2, stride=PATCH)
        return flows, torch.zeros(batch, NSTYLE, dtype=flows.dtype)


def cpdino_state(state: dict) -> dict:
    """The state dict with any ``module.`` prefix removed and DINOv3's defaults for missing optional keys."""
    state = strip_module_prefix(state)
    spec = read_cpdino_spec(state)
    defaults = {k: torch.from_numpy(np.asarray(v)) for k, v in cpdino_defaults(spec).items() if k not in state}
    if "encoder.mask_token" not in state:
        defaults["encoder.mask_token"] = torch.zeros(1, spec.embed_dim)
    return {**state, **defaults}


def expected_shapes(spec: CPDINOSpec) -> dict[str, tuple[int, ...]]:
    """The state-dict key -> shape a checkpoint of ``spec`` must have (Cellpose's key names)."""
    return cpdino_expected_shapes(spec)


def _module_key(key: str) -> str:
    # Cellpose keeps the key-bias mask inside the qkv Linear; here it is a buffer beside it
    return key.replace("attn.qkv.bias_mask", "attn.qkv_bias_mask")


def build_cpdino(spec: CPDINOSpec, state_dict) -> CPDINO:
    """Return a CPDINO in eval mode, float32 on CPU, with ``state_dict`` (Cellpose's keys) loaded strictly."""
    with torch.device("meta"):
        net = CPDINO(spec)
    state = {_module_key(k): v.float() for k, v in cpdino_state(state_dict).items()}
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def random_cpdino_state(spec: CPDINOSpec, seed: int = 0) -> dict:
    """A state dict of random weights for ``spec``, with Cellpose's key names (tests and benchmarks).

    Weights at a trained network's scale (Linear/Conv default init, layer scale 0.2-0.5, LayerNorm
    affine near 1 and 0), so that every block changes the tokens and parity errors are meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    fixed = {k: torch.from_numpy(np.asarray(v)) for k, v in cpdino_defaults(spec).items()}
    state = {}
    for name, shape in expected_shapes(spec).items():
        if name in fixed:
            state[name] = fixed[name]
        elif name == "W2":
            n = spec.nout * PATCH * PATCH
            state[name] = torch.eye(n).reshape(n, spec.nout, PATCH, PATCH)
        elif name in ("diam_mean", "diam_labels"):
            state[name] = torch.full(shape, 30.0)
        elif name.endswith("gamma"):
            state[name] = 0.2 + 0.3 * torch.rand(shape, generator=generator)
        elif name.endswith(("cls_token", "storage_tokens")):
            state[name] = torch.randn(shape, generator=generator)
        elif name.endswith("mask_token"):
            state[name] = torch.zeros(shape)
        elif len(shape) == 1 and "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            state[name] = base + 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            state[name] = 0.05 * torch.randn(shape, generator=generator)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[name] = (torch.rand(shape, generator=generator) * 2 - 1) * fan_in ** -0.5
    return state
