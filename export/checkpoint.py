"""Reading a Cellpose checkpoint: load it safely, recognise its architecture, read its diameters.

A Cellpose 3 checkpoint is ``torch.save(state_dict)`` of a CPnet (313 entries for the standard
``nbase = [2, 32, 64, 128, 256]``, ``nout = 3``). A Cellpose 4 checkpoint is the state dict of a
CPSAM (Cellpose-SAM: ``W2`` and SAM encoder entries, :mod:`.cpsam`) or, since Cellpose 4.2, of a
CPDINO (``W2`` and a DINOv3 encoder with ``encoder.cls_token``, :mod:`.cpdino`). Anything else
(random bytes, a truncated file, another network's weights) is refused with :class:`CheckpointError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cpnet imports torch, which loading imports lazily
    from .cpnet import CPnetSpec

# Cellpose's CPU loader rebuilds the net without passing diam_mean, so a checkpoint without
# the diam_* entries ends up with the constructor default on CPU (notes 1.2).
DEFAULT_DIAMETER = 30.0
DIAMETER_KEYS = ("diam_mean", "diam_labels")
#: ``Checkpoint.architecture`` values.
CPNET = "cpnet"
CPSAM = "cpsam"
CPDINO = "cpdino"


class CheckpointError(ValueError):
    """The file is not a Cellpose 3 CPnet or Cellpose 4 CPSAM checkpoint that we can export."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded CPnet checkpoint.

    Attributes
    ----------
    path : Path
        The file it was read from.
    spec : CPnetSpec or CPSAMSpec
        Channel counts (CPnet) or sizes (CPSAM) detected from the tensor shapes.
    state_dict : dict
        Tensors ready for ``CPnet.load_state_dict(strict=True)`` (missing diameters filled in).
    diam_mean, diam_labels : float
        The stored float32 values as Python floats (30.0 when the checkpoint has none).
    has_diameters : bool
        Whether the checkpoint stores ``diam_mean`` and ``diam_labels`` itself.
    architecture : str
        ``"cpnet"`` (Cellpose 3), ``"cpsam"`` or ``"cpdino"`` (Cellpose 4).
    """

    path: Path
    spec: CPnetSpec
    state_dict: dict
    diam_mean: float
    diam_labels: float
    has_diameters: bool
    architecture: str = CPNET

    @property
    def generation(self) -> int:
        """The Cellpose generation the checkpoint belongs to: 3 (CPnet) or 4 (CPSAM, CPDINO)."""
        return 4 if self.architecture in (CPSAM, CPDINO) else 3


def load_checkpoint(path) -> Checkpoint:
    """Load and validate a CPnet (Cellpose 3) or CPSAM (Cellpose 4) checkpoint.

    Parameters
    ----------
    path : str or Path
        A file written by ``torch.save(net.state_dict())`` (Cellpose's format). Zip-format files
        are memory-mapped, so a 1.2 GB Cellpose-SAM checkpoint is not copied into memory.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        When the file cannot be unpickled safely, is not a state dict, or is neither a CPnet nor
        a CPSAM.
    FileNotFoundError
        When ``path`` does not exist.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        state = _torch_load(path)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise CheckpointError(
            f"checkpoint {path} could not be read as a PyTorch state dict "
            f"(corrupt, truncated or not a torch.save file): {type(err).__name__}: {_first_line(err)}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a CPnet state dict")
    return checkpoint_from_state_dict(state, path)


def _torch_load(path: Path):
    import torch

    try:  # zip-format files (every torch.save since 1.6) can be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a legacy-format file, or a corrupt one: read it whole (and report that error)
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_from_state_dict(state: dict, path) -> Checkpoint:
    """A :class:`Checkpoint` from a state dict already in memory (``path`` names its source).

    Raises
    ------
    CheckpointError
        When the state dict is neither a CPnet nor a CPSAM.
    """
    import torch

    path = Path(path)
    if "W2" in state or "module.W2" in state:
        return _cpsam_checkpoint(state, path)
    spec = detect_spec(state, source=path)
    state = dict(state)
    has_diameters = all(k in state for k in DIAMETER_KEYS)
    for key in DIAMETER_KEYS:
        state.setdefault(key, torch.full((1,), DEFAULT_DIAMETER))
    return Checkpoint(
        path=path,
        spec=spec,
        state_dict=state,
        diam_mean=_stored_float(state["diam_mean"]),
        diam_labels=_stored_float(state["diam_labels"]),
        has_diameters=has_diameters,
    )


def detect_spec(state: dict, source="checkpoint"):
    """Recognise a CPnet from its state dict and return its :class:`CPnetSpec`.

    The channel counts are read from a few tensors; then every key and shape is compared with
    the CPnet they imply, so that nothing else gets through.

    Raises
    ------
    CheckpointError
        With a message naming what does not fit.
    """
    from cellflow_rt.convert.specs import read_cpnet_spec

    from .cpnet import expected_shapes

    spec = read_cpnet_spec(state, source)
    try:
        expected = expected_shapes(spec)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{source} has CPnet key names but unusable shapes: {err}") from None
    _compare_keys(state, expected, set(DIAMETER_KEYS), source,
                  f"a 2D CPnet with nbase={list(spec.nbase)}, nout={spec.nout}")
    return spec


def _cpdino_checkpoint(state: dict, path: Path) -> Checkpoint:
    import torch

    from cellflow_rt.convert.errors import CheckpointError as ConvertCheckpointError
    from cellflow_rt.convert.specs import detect_cpdino_spec

    from .cpdino import cpdino_state

    state = {k: v for k, v in state.items()}
    try:
        spec = detect_cpdino_spec(_numpy_shapes(state), source=path)
        state = cpdino_state(state)
    except (ConvertCheckpointError, KeyError, IndexError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    has_diameters = all(k in state for k in DIAMETER_KEYS)
    for key in DIAMETER_KEYS:
        state.setdefault(key, torch.full((1,), DEFAULT_DIAMETER))
    return Checkpoint(path=path, spec=spec, state_dict=state, diam_mean=_stored_float(state["diam_mean"]),
                      diam_labels=_stored_float(state["diam_labels"]), has_diameters=has_diameters,
                      architecture=CPDINO)


class _Shape:
    # what the torch-free spec detection reads of a tensor: its shape, ndim and dtype kind
    def __init__(self, tensor):
        self.shape = tuple(tensor.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype("float32") if tensor.is_floating_point() else np.dtype("int64")


def _numpy_shapes(state: dict) -> dict:
    from cellflow_rt.convert.specs import strip_module_prefix

    return {k: _Shape(v) for k, v in strip_module_prefix(state).items()}


def _cpsam_checkpoint(state: dict, path: Path) -> Checkpoint:
    from cellflow_rt.convert.specs import is_cpdino_state

    from .cpsam import cpsam_state, is_cpsam_state

    if is_cpdino_state(state):
        return _cpdino_checkpoint(state, path)
    if not is_cpsam_state(state):
        raise CheckpointError(f"{path} is a Cellpose 4 checkpoint with no SAM or DINOv3 encoder; cellflow-rt exports "
                              "Cellpose 4's CPSAM (Cellpose-SAM) and CPDINO networks and Cellpose 3's CPnets")
    state = cpsam_state(state)
    spec = detect_cpsam_spec(state, source=path)
    has_diameters = all(k in state for k in DIAMETER_KEYS)
    import torch

    for key in DIAMETER_KEYS:
        state.setdefault(key, torch.full((1,), DEFAULT_DIAMETER))
    return Checkpoint(path=path, spec=spec, state_dict=state, diam_mean=_stored_float(state["diam_mean"]),
                      diam_labels=_stored_float(state["diam_labels"]), has_diameters=has_diameters,
                      architecture=CPSAM)


def detect_cpsam_spec(state: dict, source="checkpoint"):
    """Recognise a CPSAM from its state dict and return its :class:`~.cpsam.CPSAMSpec`.

    Width, depth, head count (from the relative-position tables), MLP and neck widths are read from
    a few tensors; then every key and shape is compared with the CPSAM they imply.

    Raises
    ------
    CheckpointError
        With a message naming what does not fit.
    """
    from .cpsam import detect_cpsam_spec as read_spec, expected_shapes

    try:
        spec = read_spec(state)
        expected = expected_shapes(spec)
    except (KeyError, IndexError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{source} looks like a Cellpose-SAM (Cellpose 4) checkpoint but its tensors are "
                              f"unusable: {type(err).__name__}: {err}") from None
    _compare_keys(state, expected, set(DIAMETER_KEYS), source,
                  f"a Cellpose-SAM with width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} heads")
    return spec


def _compare_keys(state: dict, expected: dict, optional: set, source, what: str) -> None:
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{source} does not match {what} ({details})")


def _stored_float(tensor) -> float:
    # The float32 value exactly, as a Python float (JSON writes it with repr, losing nothing).
    return float(tensor.detach().reshape(-1)[0].float().item())


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""

