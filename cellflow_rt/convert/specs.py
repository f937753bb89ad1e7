"""Recognising a CPnet (Cellpose 3), CPSAM or CPDINO (Cellpose 4) from a state dict of numpy arrays.

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


#: CPDINO's fixed sizes: the patch embedding's kernel (DINOv3's 16) run at stride PATCH with
#: padding PATCH // 2, the default tile side (Cellpose 4.2.1.1's ``bsize`` for it), prefix tokens.
DINO_KERNEL, DINO_TILE = 16, 384
DINO_ROPE_BASE = 100.0
#: Backbone names by token width, as Cellpose 4.2.1.1's ``get_backbone`` tells them apart.
DINO_BACKBONES = {1024: "vitl", 768: "vitb"}


@dataclass(frozen=True)
class CPDINOSpec:
    """What a CPDINO (Cellpose 4.2's DINOv3 network) checkpoint fixes about the network.

    Attributes
    ----------
    embed_dim : int
        Token width (1024 for ViT-L/16, 768 for ViT-B/16).
    depth : int
        Number of transformer blocks (24 ViT-L, 12 ViT-B).
    num_heads : int
        Attention heads, read from the rotary embedding's periods (``head_dim // 4`` of them).
    mlp_dim : int
        Hidden width of each block's MLP.
    n_storage : int
        Storage (register) tokens after the class token (4 in DINOv3).
    nout : int
        Output channels (3: dY, dX, cellprob).
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    n_storage: int
    nout: int

    @property
    def nchan(self) -> int:
        return NCHAN

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def n_prefix(self) -> int:
        """Tokens before the patch tokens: the class token and the storage tokens."""
        return 1 + self.n_storage

    @property
    def backbone(self) -> str:
        """``vitl``, ``vitb`` (by width, as Cellpose tells them apart) or ``custom``."""
        return DINO_BACKBONES.get(self.embed_dim, "custom")

    def as_json(self) -> dict:
        """The spec as manifest numbers."""
        return {"backbone": self.backbone, "embed_dim": self.embed_dim, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "n_storage": self.n_storage,
                "nout": self.nout, "patch_size": PATCH, "patch_kernel": DINO_KERNEL, "tile": DINO_TILE,
                "tile_multiple": PATCH}


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


#: CPDINO keys a checkpoint may lack: Cellpose loads with ``strict=False`` and keeps DINOv3's
#: defaults for them (see :func:`cpdino_defaults`); ``mask_token`` is never used at inference.
CPDINO_OPTIONAL = ("encoder.mask_token", "encoder.rope_embed.periods")


def cpdino_expected_shapes(spec: CPDINOSpec) -> dict:
    """The state-dict key -> shape of a CPDINO of ``spec`` (Cellpose 4.2.1.1's module, key for key)."""
    e, m = spec.embed_dim, spec.mlp_dim
    shapes = {"encoder.cls_token": (1, 1, e), "encoder.storage_tokens": (1, spec.n_storage, e),
              "encoder.mask_token": (1, e), "encoder.patch_embed.proj.weight": (e, NCHAN, DINO_KERNEL, DINO_KERNEL),
              "encoder.patch_embed.proj.bias": (e,), "encoder.rope_embed.periods": (spec.head_dim // 4,)}
    for i in range(spec.depth):
        p = f"encoder.blocks.{i}"
        shapes.update({f"{p}.norm1.weight": (e,), f"{p}.norm1.bias": (e,),
                       f"{p}.attn.qkv.weight": (3 * e, e), f"{p}.attn.qkv.bias": (3 * e,),
                       f"{p}.attn.qkv.bias_mask": (3 * e,),
                       f"{p}.attn.proj.weight": (e, e), f"{p}.attn.proj.bias": (e,), f"{p}.ls1.gamma": (e,),
                       f"{p}.norm2.weight": (e,), f"{p}.norm2.bias": (e,),
                       f"{p}.mlp.fc1.weight": (m, e), f"{p}.mlp.fc1.bias": (m,),
                       f"{p}.mlp.fc2.weight": (e, m), f"{p}.mlp.fc2.bias": (e,), f"{p}.ls2.gamma": (e,)})
    n = spec.nout * PATCH * PATCH
    shapes.update({"encoder.norm.weight": (e,), "encoder.norm.bias": (e,), "out.weight": (n, e), "out.bias": (n,),
                   "W2": (n, spec.nout, PATCH, PATCH)})
    shapes.update({key: (1,) for key in DIAMETER_KEYS})
    return shapes


def cpdino_defaults(spec: CPDINOSpec) -> dict:
    """DINOv3's values for the optional keys a checkpoint may lack (what Cellpose's module keeps).

    The rotary periods are ``100 ** (2 * i / (head_dim / 2))``; each block's ``qkv.bias_mask`` is
    ones with the key third zeroed (DINOv3 has no key bias).
    """
    quarter = spec.head_dim // 4
    periods = (np.float32(DINO_ROPE_BASE) ** (2 * np.arange(quarter, dtype=np.float32)
                                              / np.float32(spec.head_dim // 2))).astype(np.float32)
    mask = np.ones(3 * spec.embed_dim, np.float32)
    mask[spec.embed_dim:2 * spec.embed_dim] = 0
    defaults = {"encoder.rope_embed.periods": periods}
    defaults.update({f"encoder.blocks.{i}.attn.qkv.bias_mask": mask for i in range(spec.depth)})
    return defaults


def is_cpdino_state(state: dict) -> bool:
    """Whether a state dict is a Cellpose 4.2 CPDINO's (``W2`` and a DINOv3 ``encoder.cls_token``).

    Cellpose 4.2.1.1's ``get_backbone`` makes the same call: a class token means DINOv3.
    """
    keys = strip_module_prefix(state)
    return "W2" in keys and "encoder.cls_token" in keys


def read_cpdino_spec(state: dict) -> CPDINOSpec:
    """Read a CPDINO's sizes from its (prefix-stripped) state dict; numpy arrays or torch tensors alike.

    The head count comes from the rotary periods (``head_dim // 4`` of them); a checkpoint without
    them has DINOv3's 64-wide heads.

    Raises
    ------
    KeyError, IndexError, ValueError
        When a tensor the sizes are read from is missing or has an unexpected shape.
    """
    patch = state["encoder.patch_embed.proj.weight"]
    if patch.ndim != 4 or tuple(patch.shape[1:]) != (NCHAN, DINO_KERNEL, DINO_KERNEL):
        raise ValueError(f"patch embedding has shape {tuple(patch.shape)}, expected (embed_dim, 3, 16, 16)")
    embed_dim = int(patch.shape[0])
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise ValueError("no transformer blocks (encoder.blocks.N.*)")
    periods = state.get("encoder.rope_embed.periods")
    head_dim = 4 * int(periods.shape[0]) if periods is not None else 64
    if head_dim == 0 or embed_dim % head_dim:
        raise ValueError(f"rotary periods for heads of width {head_dim} do not divide the width {embed_dim}")
    nout = int(state["W2"].shape[1])
    return CPDINOSpec(embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
                      mlp_dim=int(state["encoder.blocks.0.mlp.fc1.weight"].shape[0]),
                      n_storage=int(state["encoder.storage_tokens"].shape[1]) if "encoder.storage_tokens" in state
                      else 0, nout=nout)


def detect_cpdino_spec(state: dict, source) -> CPDINOSpec:
    """Recognise a CPDINO from its (prefix-stripped) state dict: :func:`read_cpdino_spec`, then every key compared.

    Raises
    ------
    CheckpointError
        With a message naming what does not fit.
    """
    spec = _read_vit_spec(read_cpdino_spec, state, source, "a Cellpose 4.2 CPDINO (DINOv3)")
    _compare_keys(state, cpdino_expected_shapes(spec), source,
                  f"a CPDINO with width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads",
                  optional=set(CPDINO_OPTIONAL) | {k for k in cpdino_defaults(spec)})
    return spec


def is_cpsam_state(state: dict) -> bool:
    """Whether a state dict is a Cellpose 4 CPSAM's (``W2`` and SAM encoder keys, maybe ``module.``-prefixed)."""
    keys = strip_module_prefix(state)
    return "W2" in keys and "encoder.patch_embed.proj.weight" in keys and "encoder.cls_token" not in keys


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
    spec = _read_vit_spec(read_cpsam_spec, state, source, "a Cellpose-SAM (Cellpose 4)")
    _compare_keys(state, cpsam_expected_shapes(spec), source,
                  f"a Cellpose-SAM with width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads")
    return spec


def _read_vit_spec(read, state: dict, source, what: str):
    """``read(state)``, its KeyError/IndexError/ValueError turned into a CheckpointError naming ``what``."""
    try:
        return read(state)
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(f"{source} looks like {what} checkpoint but its tensors are unusable: "
                              f"{type(err).__name__}: {err}") from None


def _compare_keys(state: dict, expected: dict, source, what: str, optional=frozenset()) -> None:
    missing = sorted(set(expected) - set(state) - set(DIAMETER_KEYS) - set(optional))
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
