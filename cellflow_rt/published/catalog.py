"""The models Cellpose publishes, by the names Cellpose users type.

Each name maps to Cellpose's own file names (what Cellpose 3.1.1.1's ``models.model_path`` /
``size_model_path`` and Cellpose 4.2.1.1's ``models.cache_model_path`` download and cache) and to
the site Cellpose downloads them from. Cellpose publishes no checksums, so ``sha256`` is None for
every file here; a converted model's manifest records the sha256 of what was downloaded instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

#: Where Cellpose 3.1.1.1 downloads its models (``models._MODEL_URL``).
CELLPOSE3_URL = "https://www.cellpose.org/models"
#: Where Cellpose 4.2.1.1 downloads its models, Cellpose-SAM and CPDINO alike (``models._MODEL_URL``;
#: ``cache_model_path(name)`` fetches ``_MODEL_URL + name``).
CELLPOSE4_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main"


@dataclass(frozen=True)
class PublishedFile:
    """One file as Cellpose publishes it.

    Attributes
    ----------
    name : str
        Cellpose's file name (its cache basename and the last part of its URL).
    base_url : str
        Cellpose's download location; the file's URL is ``base_url/name``.
    sha256 : str or None
        Known digest; None when the publisher gives none (every Cellpose file).
    """

    name: str
    base_url: str
    sha256: Optional[str] = None

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.name}"


@dataclass(frozen=True)
class PublishedModel:
    """A model Cellpose downloads by name.

    Attributes
    ----------
    name : str
        The name users type (``cyto3``, ``nuclei``, ``denoise_cyto3``, ``cpsam``).
    checkpoint : PublishedFile
        The network's weights.
    size_model : PublishedFile or None
        The size model Cellpose pairs with it (cyto, cyto2, cyto3, nuclei only).
    generation : int
        3 (CPnet, Cellpose 3) or 4 (Cellpose-SAM, CPDINO).
    architecture : str
        The network: ``"cpnet"``, ``"cpsam"`` or ``"cpdino"`` (DINOv3 encoder, Cellpose 4.2).
    kind : str
        ``"segmentation"`` or ``"restoration"``.
    restore_type : str or None
        For restoration nets: how Cellpose runs it (``denoise``, ``deblur``, ``upsample``, ``oneclick``).
    unsupported : str or None
        Why cellflow-rt cannot run it (a network that is not a CPnet or CPSAM), else None.
    diam_mean : float or None
        The diam_mean Cellpose 3.1.1.1 uses for this built-in name whatever the checkpoint stores
        (``models.get_model_params``: 17 for ``nuclei``, else 30; ``denoise.DenoiseModel``: 17 when
        the name says nuclei, else 30); None for Cellpose 4, which has no such rule.
    """

    name: str
    checkpoint: PublishedFile
    size_model: Optional[PublishedFile] = None
    generation: int = 3
    kind: str = "segmentation"
    restore_type: Optional[str] = None
    unsupported: Optional[str] = None
    diam_mean: Optional[float] = None
    architecture: str = "cpnet"

    @property
    def files(self) -> Tuple[PublishedFile, ...]:
        return (self.checkpoint,) + ((self.size_model,) if self.size_model else ())


class UnknownModelError(ValueError, FileNotFoundError):
    """A name that is neither a published model nor installed."""


class UnsupportedModelError(ValueError):
    """A published model whose network cellflow-rt does not run."""


# Cellpose 3.1.1.1 models.MODEL_NAMES (CPx is listed twice there).
_CELLPOSE3_SEGMENTATION = (
    "cyto3", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3", "yeast_BF_cp3",
    "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2", "cyto", "CPx", "transformer_cp3",
    "neurips_cellpose_default", "neurips_cellpose_transformer", "neurips_grayscale_cyto2",
    "CP", "TN1", "TN2", "TN3", "LC1", "LC2", "LC3", "LC4",
)
# Cellpose 3.1.1.1 loads these with its segformer Transformer (backbone "transformer"), not a CPnet.
_TRANSFORMERS = ("transformer_cp3", "neurips_cellpose_transformer")
# Model types whose checkpoint is "<type>torch_0" and whose size model is "size_<type>torch_0.npy".
_LEGACY_TORCH = ("cyto", "cyto2", "nuclei")
_RESTORE_KINDS = ("denoise", "deblur", "upsample", "oneclick")
_RESTORE_LOSSES = ("per", "seg", "rec")
# Cellpose 4.2.1.1 models.MODEL_NAMES: CPSAM networks (cpsam_v2 is loaded by the same CPSAM class:
# models.get_backbone picks CPDINO only for checkpoints with an encoder.cls_token) and CPDINO ones
# (DINOv3 ViT-L/16 for cpdino, ViT-B/16 for cpdino-vitb; get_backbone tells them apart by width).
_CELLPOSE4_CPSAM = ("cpsam", "cpsam_v2")
_CELLPOSE4_DINO = ("cpdino", "cpdino-vitb")


def _cellpose3_model(name: str) -> PublishedModel:
    basename = f"{name}torch_0" if name in _LEGACY_TORCH else name
    size = None
    if name in _LEGACY_TORCH:
        size = PublishedFile(f"size_{name}torch_0.npy", CELLPOSE3_URL)
    elif name == "cyto3":
        size = PublishedFile("size_cyto3.npy", CELLPOSE3_URL)
    unsupported = None
    if name in _TRANSFORMERS:
        unsupported = "its network is Cellpose 3's segformer transformer, not a CPnet"
    return PublishedModel(name, PublishedFile(basename, CELLPOSE3_URL), size, unsupported=unsupported,
                          diam_mean=17.0 if name == "nuclei" else 30.0)


def _restoration_names() -> list:
    """Cellpose 3.1.1.1 denoise.MODEL_NAMES."""
    names = []
    for cell_type in ("cyto3", "cyto2", "nuclei"):
        for kind in _RESTORE_KINDS:
            names.append((f"{kind}_{cell_type}", kind))
            if cell_type != "cyto3":
                names.extend((f"{kind}_{loss}_{cell_type}", kind) for loss in _RESTORE_LOSSES)
        if cell_type != "cyto3":
            # Cellpose 3.1.1.1 runs these like denoise nets ("upsample" is not in the name)
            names.append((f"aniso_{cell_type}", "denoise"))
    return names


def _build() -> dict:
    catalog = {name: _cellpose3_model(name) for name in _CELLPOSE3_SEGMENTATION}
    for name, kind in _restoration_names():
        catalog[name] = PublishedModel(name, PublishedFile(name, CELLPOSE3_URL), kind="restoration",
                                       restore_type=kind, diam_mean=17.0 if "nuclei" in name else 30.0)
    for name in _CELLPOSE4_CPSAM:
        catalog[name] = PublishedModel(name, PublishedFile(name, CELLPOSE4_URL), generation=4, architecture="cpsam")
    for name in _CELLPOSE4_DINO:
        catalog[name] = PublishedModel(name, PublishedFile(name, CELLPOSE4_URL), generation=4, architecture="cpdino")
    return catalog


CATALOG = _build()


def published_names(supported_only: bool = False) -> list:
    """Return the published model names in catalog order (Cellpose 3 segmentation, restoration, Cellpose 4)."""
    return [name for name, model in CATALOG.items() if not (supported_only and model.unsupported)]


def lookup(name: str) -> PublishedModel:
    """Return the published model called ``name``.

    Raises
    ------
    UnknownModelError
        Not a name Cellpose publishes.
    UnsupportedModelError
        A Cellpose model whose network cellflow-rt does not run (the message says which network).
    """
    model = CATALOG.get(name)
    if model is None:
        raise UnknownModelError(f"{name!r} is not a model Cellpose publishes (`cellflow-rt models list` "
                                "lists them: cyto3, nuclei, cyto2, cyto, tissuenet_cp3, ..., denoise_cyto3, ..., cpsam, cpdino)")
    if model.unsupported:
        raise UnsupportedModelError(f"model {name!r} cannot be run by cellflow-rt: {model.unsupported}; "
                                    "cellflow-rt runs CPnet (Cellpose 1-3), CPSAM and CPDINO (Cellpose 4) networks")
    return model
