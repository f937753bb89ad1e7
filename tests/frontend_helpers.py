"""The two demo model families as the front-end tests use them: model, image, settings, the API's masks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import tifffile

from conftest import REFERENCE_CPSAM, SHARED, require_shared

#: Settings every front end is given (thresholds off their defaults, so that a front end that drops
#: one gives other masks)
FLOW_THRESHOLD = 0.6
CELLPROB_THRESHOLD = -0.5


@dataclass
class Family:
    """One model family's demo: a model by registry name, a small image and a diameter.

    ``models`` is the user model folder that holds the model (``$CELLFLOW_RT_MODELS``; None for the
    bundled one).
    """

    name: str
    model: str
    image: np.ndarray
    diameter: float
    models: Optional[Path] = None
    _expected: Dict[bytes, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def env(self) -> Dict[str, str]:
        """Environment of a ``cellflow-rt`` process that finds the model by name."""
        return {"CELLFLOW_RT_MODELS": str(self.models)} if self.models else {}

    @property
    def pretrained_model(self) -> str:
        """The model as the Python API and the napari panel are given it (name or ``.onnx`` path)."""
        return str(self.models / f"{self.model}.onnx") if self.models else self.model

    def flags(self) -> List[str]:
        """``cellflow-rt run`` flags for the shared settings."""
        return ["--model", self.model, "--diameter", str(self.diameter), "--flow_threshold", str(FLOW_THRESHOLD),
                "--cellprob_threshold", str(CELLPROB_THRESHOLD)]

    def query(self) -> str:
        """``serve``'s query string for the shared settings."""
        return (f"model={self.model}&diameter={self.diameter}&flow_threshold={FLOW_THRESHOLD}"
                f"&cellprob_threshold={CELLPROB_THRESHOLD}")

    def api_masks(self, image: Optional[np.ndarray] = None) -> np.ndarray:
        """``CellposeModel(...).eval``'s masks for ``image`` (default: the family's), cached."""
        image = self.image if image is None else image
        key = image.tobytes() + str(image.shape).encode()
        if key not in self._expected:
            from cellflow_rt.models import CellposeModel

            model = CellposeModel(pretrained_model=self.pretrained_model)
            extra = {"channels": [0, 0]} if self.name == "cpnet" else {}  # Cellpose-SAM takes no channels
            masks = model.eval(image, diameter=self.diameter, flow_threshold=FLOW_THRESHOLD,
                               cellprob_threshold=CELLPROB_THRESHOLD, **extra)[0]
            assert masks.max() > 3, f"{self.name}: the demo finds {masks.max()} cells: too few to compare"
            self._expected[key] = masks
        return self._expected[key]


def cpnet_family() -> Family:
    """The bundled CPnet nuclei demo on a real 256 x 256 DSB2018 image, at its own diameter."""
    require_shared()
    image = tifffile.imread(SHARED / "data" / "dsb2018_sample" / "dsb_00_image.tif")
    return Family("cpnet", "nuclei_demo", image, 17.0)


def cpsam_family(manifest: Path) -> Family:
    """The Cellpose-SAM demo (converted without torch, ``manifest``) on its 300 x 384 reference image."""
    require_shared()
    image = tifffile.imread(REFERENCE_CPSAM / "gray_300x384_diam40" / "image.tif")
    return Family("cpsam", manifest.stem, image, 40.0, models=manifest.parent)
