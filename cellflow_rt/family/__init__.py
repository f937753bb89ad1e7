"""Model families: one object per kind of Cellpose network, stating everything that differs.

Stages and front ends ask ``model.family`` (:class:`~.base.ModelFamily`) instead of testing which
Cellpose version a model comes from; :func:`family_for_manifest` is the one place that picks it,
from the manifest's ``architecture`` or, for manifests written before that key, its
``cellpose_generation`` (absent: 3, a CPnet).

==========  ===============================  ======  =================================
family      network                          tiles   reference
==========  ===============================  ======  =================================
``cpnet``   CPnet (cyto3, nuclei, ...)       224     Cellpose 3.1.1.1
``cpsam``   Cellpose-SAM (cpsam, cpsam_v2)   256     Cellpose 4.2.1.1
``cpdino``  CPDINO (cpdino, cpdino-vitb)     384 (*) Cellpose 4.2.1.1
==========  ===============================  ======  =================================

(*) changeable (``bsize``); Cellpose 4.2.1.1's command line passes 256.

Adding a family: a module here with a :class:`~.base.ModelFamily` subclass and its instance, listed
in :data:`FAMILIES`, plus the network export that writes its manifest.
"""
from __future__ import annotations

from typing import Dict, Optional

from .base import ModelFamily, channels_for, per_image_value
from .cpdino import CPDINO
from .cpnet import CPNET
from .cpsam import CPSAM

__all__ = ["ModelFamily", "CPNET", "CPSAM", "CPDINO", "FAMILIES", "DEFAULT_FAMILY", "family_for_manifest", "family_named",
           "family_of", "UnknownFamilyError", "channels_for", "per_image_value"]

#: Every family, by name (the manifest's ``architecture``).
FAMILIES: Dict[str, ModelFamily] = {family.name: family for family in (CPNET, CPSAM, CPDINO)}
#: The family of a manifest without ``architecture`` or ``cellpose_generation`` (exports before Cellpose 4).
DEFAULT_FAMILY = CPNET
#: A manifest's ``cellpose_generation`` -> the family of manifests that do not name their ``architecture``.
_BY_GENERATION = {3: CPNET, 4: CPSAM}


class UnknownFamilyError(ValueError):
    """A manifest names a family (or Cellpose generation) this cellflow-rt does not know."""


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (``cpnet``, ``cpsam``)."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownFamilyError(f"unknown model family {name!r}; this cellflow-rt knows {sorted(FAMILIES)} "
                                 "(a newer cellflow-rt may read it)") from None


def family_for_manifest(manifest: dict) -> ModelFamily:
    """The family of a model manifest: its ``architecture``, else its ``cellpose_generation``.

    Raises
    ------
    UnknownFamilyError
        An unknown architecture or generation.
    """
    generation = manifest.get("cellpose_generation", DEFAULT_FAMILY.cellpose_generation)
    if isinstance(generation, bool) or generation not in _BY_GENERATION:
        raise UnknownFamilyError(f"cellpose_generation must be one of {tuple(_BY_GENERATION)}, got {generation!r} "
                                 "(a newer cellflow-rt may read it)")
    architecture = manifest.get("architecture")
    if architecture is not None:
        family = family_named(architecture)
        if family.cellpose_generation == generation:
            return family
    # no architecture (manifests before it), or one of another generation: the generation decides, as
    # it always did, and the family's required keys then say what is missing
    return _BY_GENERATION[generation]


def family_of(model) -> ModelFamily:
    """``model.family``; metadata objects without one (tests' stand-ins) are of the default family."""
    family: Optional[ModelFamily] = getattr(model, "family", None)
    return family if family is not None else DEFAULT_FAMILY
