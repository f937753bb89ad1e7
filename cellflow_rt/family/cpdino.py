"""The CPDINO family: Cellpose 4.2.1.1's ``cpdino`` / ``cpdino-vitb`` networks (a DINOv3 ViT encoder).

Everything is Cellpose-SAM's (:mod:`.cpsam`: preprocessing, ``30 / diameter`` resize, Euler steps,
Cellpose 4's dynamics, zero styles) except the tiles: Cellpose 4.2.1.1 runs CPDINO on tiles of
``bsize`` 384 by default (``CellposeModel._run_net``), any other side may be asked for (a multiple of
8: the patch embedding's stride), and planes smaller than a tile are padded up to one, as for
Cellpose-SAM (``run_net`` is the same function for both networks).

Where the side comes from: the Python API's ``bsize`` (None: 384); Cellpose 4.2.1.1's command line
always passes its ``--bsize`` option, default 256, so ``run`` uses 256 tiles as it does; settings
built elsewhere with the settings' default side (224, Cellpose 3's) get 384.
"""
from __future__ import annotations

from ..settings import BSIZE
from .cpsam import CellposeSAM

#: The patch embedding's stride: tile sides are multiples of it.
TILE_MULTIPLE = 8
#: Cellpose 4.2.1.1's command line ``--bsize`` default, which it passes to ``eval``.
COMMAND_LINE_BSIZE = 256


class CellposeDINO(CellposeSAM):
    """Cellpose 4.2.1.1's CPDINO (see the module docstring)."""

    name = "cpdino"
    title = "Cellpose 4.2 (CPDINO, DINOv3)"
    manifest_keys = {"cpdino": (dict,)}
    default_tile = 384
    tile_fixed = False
    pads_to_tile = True

    def tile_side(self, settings) -> int:
        """``bsize``, except None or the settings' default (224, Cellpose 3's): then 384."""
        if settings.bsize is None or int(settings.bsize) == BSIZE:
            return self.default_tile
        return int(settings.bsize)

    def eval_arguments(self, args: tuple, kwargs: dict) -> dict:
        """Cellpose-SAM's arguments, with ``bsize`` free: None gives 384; it must be a positive
        multiple of 8."""
        arguments = super().eval_arguments(args, kwargs)
        bsize = arguments.get("bsize", self.default_tile)
        if isinstance(bsize, bool) or not isinstance(bsize, int) or bsize <= 0 or bsize % TILE_MULTIPLE:
            raise ValueError(f"bsize={bsize!r}: {self.title} tiles must have a side that is a positive multiple "
                             f"of {TILE_MULTIPLE} (default {self.default_tile})")
        arguments["bsize"] = bsize
        return arguments

    def command_line_settings(self, settings, diameter_given: bool):
        """Cellpose-SAM's command-line rules, with the tiles of Cellpose 4.2.1.1's ``--bsize`` default."""
        return super().command_line_settings(settings, diameter_given).with_(bsize=COMMAND_LINE_BSIZE)


CPDINO = CellposeDINO()
