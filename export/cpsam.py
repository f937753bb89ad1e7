"""Cellpose-SAM (CPSAM, Cellpose 4), written for export.

Cellpose 4's network is SAM's ViT image encoder re-purposed for 256 x 256 tiles:

- patch embedding: an 8 x 8 convolution with stride 8 on up to 3 channels (a 32 x 32 token grid);
- a learned position embedding for the 32 x 32 grid, added to the tokens;
- transformer blocks, all with global attention: pre-LayerNorm, multi-head attention whose
  logits get SAM's decomposed relative-position terms (one table per axis), a GELU MLP;
- the neck: 1 x 1 convolution, channel LayerNorm, 3 x 3 convolution, channel LayerNorm;
- the readout: a 1 x 1 convolution to ``nout * 8 * 8`` channels, then a transposed convolution with
  the fixed ``W2`` (stride 8) that puts each token's 8 x 8 block of pixels back in place.

The key names match Cellpose 4's checkpoints (``encoder.*``, ``out.*``, ``W2``, ``diam_*``), so a
checkpoint loads with ``strict=True``. What differs from Cellpose's module, on purpose:

- the relative-position tables of the checkpoint are resized once, at load time, to the 63 relative
  offsets of a 32-token axis, exactly as SAM resizes them at every call (linear interpolation,
  ``align_corners=False``), and gathered into fixed (32, 32, head_dim) terms: the exported graph holds
  constants instead of an interpolation;
- the input always has 3 channels (Cellpose runs the first 1, 2 or 3 weight slices on 1-3 channel
  images; zeros in the missing channels give the same sums);
- ``forward`` returns ``(flows, style)`` with the style all zeros, as Cellpose 4 does.

This module imports torch at import time: import it lazily, from inside functions.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from cellflow_rt.convert.specs import CPSAMSpec, read_cpsam_spec

#: Tile side the network runs on (fixed: the position embedding has one entry per token).
TILE = 256
#: Patch size: each token covers PATCH x PATCH pixels.
PATCH = 8
#: Tokens per side of a tile.
GRID = TILE // PATCH
#: Input channels of the exported graph (images with fewer are zero-padded).
NCHAN = 3
#: Length of the (all-zero) style vector Cellpose 4 still returns.
NSTYLE = 256
LAYERNORM_EPS = 1e-6



def resize_rel_pos(table: torch.Tensor, length: int = 2 * GRID - 1) -> torch.Tensor:
    """A relative-position table (L, C) resized to ``length`` rows as SAM's ``get_rel_pos`` does.

    Linear interpolation along the rows (``align_corners=False``), in the table's dtype; a table
    that already has ``length`` rows is returned unchanged.
    """
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return resized[0].t()


def relative_position_terms(table: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(grid, grid, C) table entries for query row i and key row j: row ``i - j + grid - 1``."""
    table = resize_rel_pos(table, 2 * grid - 1)
    offsets = torch.arange(grid)[:, None] - torch.arange(grid)[None, :] + (grid - 1)
    return table[offsets]


class _Attention(nn.Module):
    """Global multi-head attention over the token grid with decomposed relative positions.

    Token grids are (B, 32, 32, C) with every size but B fixed: reshapes use constants, and the
    linear layers see (B * 1024, C) matrices, which export as Gemm on the stored weights (no
    transposed copy of every weight in the graph).
    """

    def __init__(self, dim: int, num_heads: int, rel_pos_length: int):
        super().__init__()
        self.num_heads = num_heads
        self.dim = dim
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # The checkpoint's tables (their stored length), and the resized, gathered terms the
        # forward pass uses (filled by prepare_relative_positions, not part of the state dict).
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.register_buffer("terms_h", torch.zeros(GRID, GRID, head_dim), persistent=False)
        self.register_buffer("terms_w", torch.zeros(GRID, GRID, head_dim), persistent=False)

    def prepare_relative_positions(self) -> None:
        with torch.no_grad():
            self.terms_h.copy_(relative_position_terms(self.rel_pos_h))
            self.terms_w.copy_(relative_position_terms(self.rel_pos_w))

    def forward(self, x):
        # x: (B, G, G, C) -> q, k, v: (B * heads, G * G, head_dim)
        G, C, nh = GRID, self.dim, self.num_heads
        hd = C // nh
        qkv = self.qkv(x.reshape(-1, C)).reshape(-1, G * G, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, -1, G * G, hd).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # decomposed relative positions: rel_h[b, i, j, k] = <q[b, i, j], terms_h[i, k]> (k: key row),
        # rel_w[b, i, j, l] = <q[b, i, j], terms_w[j, l]> (l: key column); as batched matmuls
        r_q = q.reshape(-1, G, G, hd)
        rel_h = torch.matmul(r_q.transpose(0, 1), self.terms_h.transpose(1, 2).unsqueeze(1)).transpose(0, 1)
        rel_w = torch.matmul(r_q.permute(2, 0, 1, 3), self.terms_w.transpose(1, 2).unsqueeze(1)).permute(1, 2, 0, 3)
        attn = attn.reshape(-1, G, G, G, G) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        attn = attn.reshape(-1, G * G, G * G).softmax(dim=-1)
        x = (attn @ v).reshape(-1, nh, G * G, hd).permute(0, 2, 1, 3)
        return self.proj(x.reshape(-1, C)).reshape(-1, G, G, C)


class _MLP(nn.Module):
    """Linear-GELU-linear on the tokens of a (B, G, G, dim) grid (as a (B * G * G, dim) matrix)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = self.lin2(F.gelu(self.lin1(x.reshape(-1, self.dim))))
        return x.reshape(-1, GRID, GRID, self.dim)


class _Block(nn.Module):
    def __init__(self, spec: CPSAMSpec, rel_pos_length: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=LAYERNORM_EPS)
        self.attn = _Attention(spec.embed_dim, spec.num_heads, rel_pos_length)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=LAYERNORM_EPS)
        self.mlp = _MLP(spec.embed_dim, spec.mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, H, W) (SAM's ``LayerNorm2d``), as a last-axis LayerNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, LAYERNORM_EPS)
        return x.permute(0, 3, 1, 2)


class _PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(NCHAN, embed_dim, kernel_size=PATCH, stride=PATCH)


class _Encoder(nn.Module):
    def __init__(self, spec: CPSAMSpec):
        super().__init__()
        self.patch_embed = _PatchEmbed(spec.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID, GRID, spec.embed_dim))
        self.blocks = nn.ModuleList(_Block(spec, n) for n in spec.rel_pos_lengths)
        self.neck = nn.Sequential(
            nn.Conv2d(spec.embed_dim, spec.neck_dim, kernel_size=1, bias=False),
            _ChannelLayerNorm(spec.neck_dim),
            nn.Conv2d(spec.neck_dim, spec.neck_dim, kernel_size=3, padding=1, bias=False),
            _ChannelLayerNorm(spec.neck_dim),
        )


class CPSAM(nn.Module):
    """Cellpose 4's CPSAM network, inference only.

    Parameters
    ----------
    spec : CPSAMSpec
        Sizes, usually from :func:`detect_cpsam_spec`.

    Notes
    -----
    ``forward(image)`` takes float32 ``[B, 3, 256, 256]`` and returns ``flows`` ``[B, nout, 256, 256]``
    and ``style`` ``[B, 256]`` (zeros). Call :meth:`prepare_relative_positions` after loading weights
    (:func:`build_cpsam` does).
    """

    def __init__(self, spec: CPSAMSpec):
        super().__init__()
        self.spec = spec
        self.encoder = _Encoder(spec)
        self.out = nn.Conv2d(spec.neck_dim, spec.nout * PATCH * PATCH, kernel_size=1)
        self.W2 = nn.Parameter(torch.zeros(spec.nout * PATCH * PATCH, spec.nout, PATCH, PATCH))
        self.diam_labels = nn.Parameter(torch.full((1,), 30.0))
        self.diam_mean = nn.Parameter(torch.full((1,), 30.0))

    def prepare_relative_positions(self) -> None:
        """Fill each block's relative-position terms from its (loaded) tables."""
        for block in self.encoder.blocks:
            block.attn.prepare_relative_positions()

    def forward(self, image):
        x = self.encoder.patch_embed.proj(image).permute(0, 2, 3, 1) + self.encoder.pos_embed
        for block in self.encoder.blocks:
            x = block(x)
        x = self.encoder.neck(x.permute(0, 3, 1, 2))
        flows = F.conv_transpose2d(self.out(x), self.W2, stride=PATCH)
        style = torch.zeros(image.shape[0], NSTYLE, dtype=flows.dtype, device=flows.device)
        return flows, style


class HalfPrecisionCPSAM(nn.Module):
    """A CPSAM computing in float16, with float32 input and outputs, for export.

    Parameters
    ----------
    net : CPSAM
        The float32 network; it is copied, not changed.
    """

    def __init__(self, net: CPSAM):
        super().__init__()
        self.spec = net.spec
        self.net = copy.deepcopy(net).half().eval()

    def forward(self, image):
        flows, style = self.net(image.half())
        return flows.float(), style.float()


def is_cpsam_state(state: dict) -> bool:
    """Whether a state dict is a Cellpose 4 CPSAM's (it has ``W2`` and SAM encoder keys)."""
    keys = _strip_module_prefix(state)
    return "W2" in keys and "encoder.patch_embed.proj.weight" in keys


def _strip_module_prefix(state: dict) -> dict:
    # Checkpoints saved from DataParallel carry a "module." prefix; Cellpose 4 strips it when loading.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def cpsam_state(state: dict) -> dict:
    """The state dict with any DataParallel ``module.`` prefix removed."""
    return dict(_strip_module_prefix(state))


def detect_cpsam_spec(state: dict) -> CPSAMSpec:
    """Read a CPSAM's sizes from its state dict (:func:`cellflow_rt.convert.specs.read_cpsam_spec`).

    Raises
    ------
    KeyError, IndexError, ValueError
        When a tensor the sizes are read from is missing or has an unexpected shape.
    """
    return read_cpsam_spec(_strip_module_prefix(state))


def expected_shapes(spec: CPSAMSpec) -> dict[str, tuple[int, ...]]:
    """Return the state-dict key -> tensor shape that a checkpoint of ``spec`` must have."""
    with torch.device("meta"):
        net = CPSAM(spec)
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def build_cpsam(spec: CPSAMSpec, state_dict) -> CPSAM:
    """Return a CPSAM in eval mode, float32 on CPU, with ``state_dict`` loaded strictly.

    The module takes the state dict's tensors (``assign``) rather than copies of them, so a
    memory-mapped checkpoint is not duplicated in memory.
    """
    with torch.device("meta"):
        net = CPSAM(spec)
    state = {k: v.float() for k, v in cpsam_state(state_dict).items()}
    net.load_state_dict(state, strict=True, assign=True)
    for block in net.encoder.blocks:
        attn = block.attn
        attn.terms_h = torch.zeros(GRID, GRID, spec.head_dim)
        attn.terms_w = torch.zeros(GRID, GRID, spec.head_dim)
    net.prepare_relative_positions()
    return net.eval()


def random_cpsam_state(spec: CPSAMSpec, seed: int = 0) -> dict:
    """A state dict of random weights for ``spec`` (tests and benchmarks of full-size networks).

    Weights are drawn like a trained network's scale (Linear/Conv default init, LayerNorm affine
    near 1 and 0, position embedding and relative-position tables ~0.02): the outputs stay in a
    Cellpose-like range, so parity errors are meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(spec).items():
        if name == "W2":
            n = spec.nout * PATCH * PATCH
            state[name] = torch.eye(n).reshape(n, spec.nout, PATCH, PATCH)
        elif name in ("diam_mean", "diam_labels"):
            state[name] = torch.full(shape, 30.0)
        elif name.endswith("bias") or "rel_pos" in name or "pos_embed" in name:
            state[name] = 0.02 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # LayerNorm weights
            state[name] = 1.0 + 0.02 * torch.randn(shape, generator=generator)
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            bound = fan_in ** -0.5
            state[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return state
