"""The CPDINO family: Cellpose 4.2.1.1's ``cpdino`` / ``cpdino-vitb`` networks (a DINOv3 ViT encoder).

Everything is Cellpose-SAM's (:mod:`.cpsam`: preprocessing, ``30 / diameter`` resize, Euler steps,
Cellpose 4's dynamics, zero styles) except the tiles: Cellpose 4.2.1.1 runs CPDINO on tiles of
``bsize`` 384 by default (``CellposeModel._run_net``), any other side may be asked for (a multiple of
8: the patch embedding's stride), and planes smaller than a tile are padded up to one, as for
Cellpose-SAM (``run_net`` is the same function for both networks).

Where the side comes from: ``bsize`` (settings or the Python API; None: 384); Cellpose 4.2.1.1's
command line always passes its ``--bsize`` option, default 256, so ``run`` uses 256 tiles as it does
unless ``--bsize`` is given.
"""
from __future__ import annotations

from .cpsam import CellposeSAM

#: Cellpose 4.2.1.1's command line ``--bsize`` default, which it passes to ``eval``.
COMMAND_LINE_BSIZE = 256


class CellposeDINO(CellposeSAM):
    """Cellpose 4.2.1.1's CPDINO (see the module docstring)."""

    name = "cpdino"
    title = "Cellpose 4.2 (CPDINO, DINOv3)"
    manifest_keys = {"cpdino": (dict,)}
    default_tile = 384
    tile_fixed = False
    tile_multiple = 8  # the patch embedding's stride
    pads_to_tile = True

    #: TensorRT's profile: the command line's 256 and the Python API's 384 (planes are padded up to a
    #: tile, so these are the sides run), up to 512.
    tile_profile = (COMMAND_LINE_BSIZE, 384, 512)

    def eval_arguments(self, args: tuple, kwargs: dict) -> dict:
        """Cellpose-SAM's arguments, with ``bsize`` free: None gives 384; it must be a positive
        multiple of 8."""
        arguments = super().eval_arguments(args, kwargs)
        bsize = arguments.get("bsize", self.default_tile)
        refused = self.check_tile_side(bsize)
        if refused:
            raise ValueError(f"{refused} (default {self.default_tile})")
        arguments["bsize"] = bsize
        return arguments

    def command_line_settings(self, settings, diameter_given: bool):
        """Cellpose-SAM's command-line rules, with the tiles of Cellpose 4.2.1.1's ``--bsize`` default."""
        settings = super().command_line_settings(settings, diameter_given)
        return settings if settings.bsize is not None else settings.with_(bsize=COMMAND_LINE_BSIZE)


CPDINO = CellposeDINO()
