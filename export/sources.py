"""Finding what to export: a checkpoint given by path or by Cellpose built-in name, and its size model.

Cellpose caches its downloaded models in ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``
under fixed basenames (``cytotorch_0``, ``cyto2torch_0``, ``nucleitorch_0``, ``cyto3``) with size
models ``size_<basename>.npy``; a custom model's size model is ``<checkpoint path>_size.npy``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

# Model type -> Cellpose's file basename for the types that come with a size model.
BUILTIN_BASENAMES = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0", "cyto3": "cyto3"}
_LEGACY_BASENAME = re.compile(r"^(cyto|cyto2|nuclei)torch_[0-3]$")
# Cellpose 3's restoration nets (denoise.MODEL_NAMES, without aniso_*): <type>[_<loss>]_<cell type>
_RESTORE_BASENAME = re.compile(r"^(denoise|deblur|upsample|oneclick)(_(per|seg|rec))?_(cyto3|cyto2|nuclei)$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")


def cellpose_model_dir() -> Path:
    """Return Cellpose's model cache folder (``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``)."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def builtin_name_of(checkpoint) -> str | None:
    """Return ``cyto``/``cyto2``/``cyto3``/``nuclei`` when ``checkpoint`` is a built-in Cellpose file, else None.

    Recognised by basename, as Cellpose does: it uses diam_mean 17 for nuclei and 30 for the others
    by name, whatever the checkpoint stores.
    """
    basename = Path(checkpoint).name
    if basename == "cyto3":
        return "cyto3"
    match = _LEGACY_BASENAME.match(basename)
    return match.group(1) if match else None


def builtin_restoration_of(checkpoint) -> tuple[str, float] | None:
    """Return ``(restore_type, diam_mean)`` when ``checkpoint`` is one of Cellpose 3's restoration nets
    (``denoise_cyto3``, ``upsample_nuclei``, ...), else None.

    Recognised by basename, with Cellpose's diam_mean rule for them: 17 when the name says nuclei,
    else 30 (``denoise.DenoiseModel``).
    """
    match = _RESTORE_BASENAME.match(Path(checkpoint).name)
    if match is None:
        return None
    return match.group(1), 17.0 if match.group(4) == "nuclei" else 30.0


def locate_checkpoint(checkpoint) -> Path:
    """Return the checkpoint file for a path or a built-in name.

    Parameters
    ----------
    checkpoint : str or Path
        A path to a file, or a name found in Cellpose's model folder: a model type (``cyto3``,
        ``nuclei``: the ``<type>torch_0`` file for cyto/cyto2/nuclei) or a basename there.

    Raises
    ------
    FileNotFoundError
        Naming the places that were tried.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    tried = [str(path)]
    text = str(checkpoint)
    if os.sep not in text and "/" not in text:
        folder = cellpose_model_dir()
        for basename in dict.fromkeys((BUILTIN_BASENAMES.get(text, text), text)):
            candidate = folder / basename
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise FileNotFoundError(f"checkpoint {checkpoint!r} not found (tried {', '.join(tried)})")


def default_size_model(checkpoint) -> Path | None:
    """Return the size model Cellpose would pair with ``checkpoint`` if that file exists, else None."""
    checkpoint = Path(checkpoint)
    if builtin_name_of(checkpoint):
        candidate = checkpoint.with_name(f"size_{checkpoint.name}.npy")
    else:
        candidate = checkpoint.with_name(f"{checkpoint.name}_size.npy")
    return candidate if candidate.is_file() else None


def default_model_name(checkpoint) -> str:
    """Return the registry name for an export of ``checkpoint`` when the user gives none."""
    checkpoint = Path(checkpoint)
    builtin = builtin_name_of(checkpoint)
    if builtin:
        return builtin
    name = checkpoint.name
    for suffix in _CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-") or "model"


def check_model_name(name: str) -> str:
    """Return ``name`` if it can name a model file (letters, digits, ``_ . -``), else raise ValueError."""
    if not isinstance(name, str) or not MODEL_NAME.match(name) or name.endswith((".onnx", ".json")):
        raise ValueError(
            f"name: {name!r} is not a valid model name (use letters, digits, '_', '.', '-'; "
            "start with a letter or digit; no .onnx/.json suffix)"
        )
    return name
