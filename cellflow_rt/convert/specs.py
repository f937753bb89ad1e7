"""Recognising a CPnet (Cellpose 3) or CPSAM (Cellpose 4) from a state dict of numpy arrays.

The torch-free counterpart of :mod:`cellflow_rt.export.checkpoint`: the same detection rules (sizes
read from a few tensors, then every key and shape compared with the network they imply), but the
expected shapes are written out here instead of read from a torch module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import CheckpointError

DIAMETER_KEYS = ("diam_mean", "diam_labels")
#: Cellpose's CPU loader default when a checkpoint stores no diameters (notes 1.2).
DEFAULT_DIAMETER = 30.0
_FIRST_BN = "downsample.down.res_down_0.conv.conv_0.0.weight"
_LEVEL_CONV = re.compile(r"^downsample\.down\.res_down_(\d+)\.conv\.conv_0\.2\.weight$")
_OUTPUT_CONV = "output.2.weight"
_BLOCK_KEY = re.compile(r"^encoder\.blocks\.(\d+)\.")
#: CPSAM's fixed sizes: tile side, patch side, token grid side, input channels, style length.
TILE, PATCH, NCHAN, NSTYLE = 256, 8, 3, 256
GRID = TILE // PATCH


@dataclass(frozen=True)
class CPnetSpec:
    """What a CPnet checkpoint fixes about the network.

    Attributes
    ----------
    nbase : tuple of int
        Channels per level of the down path, starting with the input channel count
        (``(2, 32, 64, 128, 256)`` for every Cellpose 3 model).
    nout : int
        Output channels (3 for segmentation: dY, dX, cellprob).
    """

    nbase: tuple[int, ...]
    nout: int

    @property
    def nchan(self) -> int:
        return self.nbase[0]

    @property
    def nstyle(self) -> int:
        return self.nbase[-1]


@dataclass(frozen=True)
class CPSAMSpec:
    """What a CPSAM checkpoint fixes about the network.

    Attributes
    ----------
    embed_dim : int
        Token width (1024 for Cellpose-SAM's ViT-L).
    depth : int
        Number of transformer blocks (24 for ViT-L).
    num_heads : int
        Attention heads, read from the relative-position tables (16 for ViT-L).
    mlp_dim : int
        Hidden width of each block's MLP (4096 for ViT-L).
    neck_dim : int
        Channels of the neck (256 for ViT-L).
    nout : int
        Output channels (3: dY, dX, cellprob).
    rel_pos_lengths : tuple of int
        Rows of each block's stored relative-position tables (27 for SAM's windowed blocks, 127 for
        its global ones), kept to rebuild the exact module the checkpoint came from.
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    neck_dim: int
    nout: int
    rel_pos_lengths: tuple[int, ...]

    @property
    def nchan(self) -> int:
        return NCHAN

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def as_json(self) -> dict:
        """The spec as manifest numbers."""
        return {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "neck_dim": self.neck_dim, "nout": self.nout,
                "patch_size": PATCH, "tile": TILE, "rel_pos_lengths": list(self.rel_pos_lengths)}


def _bn(prefix: str, channels: int) -> dict:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def _conv(prefix: str, cin: int, cout: int, k: int) -> dict:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def cpnet_expected_shapes(spec: CPnetSpec) -> dict:
    """The state-dict key -> shape of a CPnet of ``spec`` (Cellpose 3's module, key for key)."""
    nbase = list(spec.nbase)
    nbaseup = nbase[1:] + [nbase[-1]]
    nstyle = spec.nstyle
    shapes = {}
    for n in range(len(nbase) - 1):
        cin, cout = nbase[n], nbase[n + 1]
        p = f"downsample.down.res_down_{n}"
        shapes.update({**_bn(f"{p}.proj.0", cin), **_conv(f"{p}.proj.1", cin, cout, 1)})
        for t in range(4):
            shapes.update({**_bn(f"{p}.conv.conv_{t}.0", cin if t == 0 else cout),
                           **_conv(f"{p}.conv.conv_{t}.2", cin if t == 0 else cout, cout, 3)})
    for n in range(1, len(nbaseup)):
        cin, cout = nbaseup[n], nbaseup[n - 1]
        p = f"upsample.up.res_up_{n - 1}"
        shapes.update({**_bn(f"{p}.conv.conv_0.0", cin), **_conv(f"{p}.conv.conv_0.2", cin, cout, 3)})
        for t in (1, 2, 3):
            s = f"{p}.conv.conv_{t}"
            shapes.update({**_bn(f"{s}.conv.0", cout), **_conv(f"{s}.conv.2", cout, cout, 3),
                           f"{s}.full.weight": (cout, nstyle), f"{s}.full.bias": (cout,)})
        shapes.update({**_bn(f"{p}.proj.0", cin), **_conv(f"{p}.proj.1", cin, cout, 1)})
    shapes.update({**_bn("output.0", nbaseup[0]), **_conv("output.2", nbaseup[0], spec.nout, 1)})
    shapes.update({key: (1,) for key in DIAMETER_KEYS})
    return shapes


def cpsam_expected_shapes(spec: CPSAMSpec) -> dict:
    """The state-dict key -> shape of a CPSAM of ``spec`` (Cellpose 4's module, key for key)."""
    e, hd = spec.embed_dim, spec.head_dim
    shapes = {"encoder.patch_embed.proj.weight": (e, NCHAN, PATCH, PATCH), "encoder.patch_embed.proj.bias": (e,),
              "encoder.pos_embed": (1, GRID, GRID, e)}
    for i, length in enumerate(spec.rel_pos_lengths):
        p = f"encoder.blocks.{i}"
        shapes.update({f"{p}.norm1.weight": (e,), f"{p}.norm1.bias": (e,),
                       f"{p}.attn.qkv.weight": (3 * e, e), f"{p}.attn.qkv.bias": (3 * e,),
                       f"{p}.attn.proj.weight": (e, e), f"{p}.attn.proj.bias": (e,),
                       f"{p}.attn.rel_pos_h": (length, hd), f"{p}.attn.rel_pos_w": (length, hd),
                       f"{p}.norm2.weight": (e,), f"{p}.norm2.bias": (e,),
                       f"{p}.mlp.lin1.weight": (spec.mlp_dim, e), f"{p}.mlp.lin1.bias": (spec.mlp_dim,),
                       f"{p}.mlp.lin2.weight": (e, spec.mlp_dim), f"{p}.mlp.lin2.bias": (e,)})
    k = spec.neck_dim
    shapes.update({"encoder.neck.0.weight": (k, e, 1, 1), "encoder.neck.1.weight": (k,), "encoder.neck.1.bias": (k,),
                   "encoder.neck.2.weight": (k, k, 3, 3), "encoder.neck.3.weight": (k,), "encoder.neck.3.bias": (k,),
                   "out.weight": (spec.nout * PATCH * PATCH, k, 1, 1), "out.bias": (spec.nout * PATCH * PATCH,),
                   "W2": (spec.nout * PATCH * PATCH, spec.nout, PATCH, PATCH)})
    shapes.update({key: (1,) for key in DIAMETER_KEYS})
    return shapes


def is_cpsam_state(state: dict) -> bool:
    """Whether a state dict is a Cellpose 4 CPSAM's (``W2`` and SAM encoder keys, maybe ``module.``-prefixed)."""
    keys = strip_module_prefix(state)
    return "W2" in keys and "encoder.patch_embed.proj.weight" in keys


def strip_module_prefix(state: dict) -> dict:
    """The state dict without a DataParallel ``module.`` prefix on every key (Cellpose 4 strips it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def read_cpnet_spec(state: dict, source) -> CPnetSpec:
    """Read a CPnet's channel counts from a few of its tensors (numpy arrays or torch tensors alike).

    Raises
    ------
    CheckpointError
        When the key names are not a CPnet's or the tensors they are read from are unusable.
    """
    levels = sorted(int(m.group(1)) for k in state if (m := _LEVEL_CONV.match(k)))
    if _FIRST_BN not in state or _OUTPUT_CONV not in state or levels != list(range(len(levels))) or not levels:
        raise CheckpointError(
            f"{source} is not a Cellpose CPnet state dict (expected keys such as '{_FIRST_BN}' and "
            f"'{_OUTPUT_CONV}'; found {len(state)} keys, e.g. {', '.join(repr(k) for k in list(state)[:3]) or 'none'})")
    try:
        nbase = [int(state[_FIRST_BN].shape[0])]
        nbase += [int(state[f"downsample.down.res_down_{n}.conv.conv_0.2.weight"].shape[0]) for n in levels]
        return CPnetSpec(nbase=tuple(nbase), nout=int(state[_OUTPUT_CONV].shape[0]))
    except (IndexError, ValueError) as err:
        raise CheckpointError(f"{source} has CPnet key names but unusable shapes: {err}") from None


def detect_cpnet_spec(state: dict, source) -> CPnetSpec:
    """Recognise a CPnet from its state dict: :func:`read_cpnet_spec`, then every key and shape compared.

    Raises
    ------
    CheckpointError
        With a message naming what does not fit.
    """
    spec = read_cpnet_spec(state, source)
    _compare_keys(state, cpnet_expected_shapes(spec), source,
                  f"a 2D CPnet with nbase={list(spec.nbase)}, nout={spec.nout}")
    return spec


def read_cpsam_spec(state: dict) -> CPSAMSpec:
    """Read a CPSAM's sizes from its (prefix-stripped) state dict; numpy arrays or torch tensors alike.

    The head count comes from the relative-position tables' width.

    Raises
    ------
    KeyError, IndexError, ValueError
        When a tensor the sizes are read from is missing or has an unexpected shape.
    """
    patch = state["encoder.patch_embed.proj.weight"]
    if patch.ndim != 4 or tuple(patch.shape[1:]) != (NCHAN, PATCH, PATCH):
        raise ValueError(f"patch embedding has shape {tuple(patch.shape)}, expected (embed_dim, 3, 8, 8)")
    embed_dim = int(patch.shape[0])
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise ValueError("no transformer blocks (encoder.blocks.N.*)")
    head_dim = int(state["encoder.blocks.0.attn.rel_pos_h"].shape[1])
    if head_dim == 0 or embed_dim % head_dim:
        raise ValueError(f"relative-position tables of width {head_dim} do not divide the width {embed_dim}")
    lengths = tuple(int(state[f"encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth))
    return CPSAMSpec(embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
                     mlp_dim=int(state["encoder.blocks.0.mlp.lin1.weight"].shape[0]),
                     neck_dim=int(state["out.weight"].shape[1]), nout=int(state["W2"].shape[1]),
                     rel_pos_lengths=lengths)


def detect_cpsam_spec(state: dict, source) -> CPSAMSpec:
    """Recognise a CPSAM from its (prefix-stripped) state dict: :func:`read_cpsam_spec`, then every key compared.

    Raises
    ------
    CheckpointError
        With a message naming what does not fit.
    """
    try:
        spec = read_cpsam_spec(state)
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(f"{source} looks like a Cellpose-SAM (Cellpose 4) checkpoint but its tensors are "
                              f"unusable: {type(err).__name__}: {err}") from None
    _compare_keys(state, cpsam_expected_shapes(spec), source,
                  f"a Cellpose-SAM with width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads")
    return spec


def _compare_keys(state: dict, expected: dict, source, what: str) -> None:
    missing = sorted(set(expected) - set(state) - set(DIAMETER_KEYS))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    nonnumeric = sorted(k for k in set(expected) & set(state) if state[k].dtype.kind not in "fiub")
    if missing or unexpected or wrong or nonnumeric:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                                ("not numbers", nonnumeric)) if keys)
        raise CheckpointError(f"{source} does not match {what} ({details})")


def stored_diameter(state: dict, key: str) -> float:
    """A stored float32 diameter as a Python float; 30.0 when the checkpoint has none."""
    if key not in state:
        return DEFAULT_DIAMETER
    return float(np.asarray(state[key], dtype=np.float32).reshape(-1)[0])


def as_float32(array) -> np.ndarray:
    """A C-contiguous float32 copy-if-needed of a checkpoint tensor (the graphs compute in float32)."""
    return np.ascontiguousarray(array, dtype=np.float32)
