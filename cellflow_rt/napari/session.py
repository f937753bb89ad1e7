"""What the panel runs, without any GUI: requests, the model cache and the network-output cache.

A :class:`SegmentationSession` keeps the opened models and the network stage's output of the last
run (:func:`cellflow_rt.pipeline.predict`). A request whose network inputs are the same as that
run's -- same image pixels, model file, provider, precision and every option the network stage reads
-- only re-runs the dynamics (:func:`cellflow_rt.pipeline.finish`) at its thresholds: what makes
threshold tuning instant. Any other request runs the network again and replaces the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..diameter import estimate_diameter
from ..loaded_model import LoadedModel
from ..pipeline import finish, predict, rescale_for
from ..results import Prediction, Segmentation
from ..registry import resolve_model
from ..settings import EvalSettings
from .progress import ProgressNetwork, RunCancelled, expected_tiles

#: Options only :func:`cellflow_rt.pipeline.finish` reads: changing them re-runs the dynamics only.
#: (``stitch_threshold`` also tells the network stage that a stack is a volume, so whether it is
#: above 0 is part of the network key; its value is not.)
DYNAMICS_OPTIONS = ("flow_threshold", "cellprob_threshold", "min_size", "max_size_fraction", "niter", "interp",
                    "stitch_threshold", "compute_masks")

#: Providers offered to the user; "auto" takes the best available (TensorRT > CUDA > CPU).
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")

#: ``progress(phase, done, total)``: phase is "estimating diameter", "network" or "dynamics";
#: ``total`` 0 means unknown.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RunRequest:
    """Everything one run depends on besides the image.

    Attributes
    ----------
    model : str
        A registry name (``cellflow-rt info`` lists them) or the path of an exported ``.onnx``.
    settings : EvalSettings
        Cellpose's options; ``channel_axis`` and ``z_axis`` should name the image's axes.
    estimate_diameter : bool
        Estimate the diameter with the model's size model first (2D images only; a model without a
        size model runs at its own default diameter, as ``cellflow-rt run --diameter 0``).
    provider : str
        One of :data:`PROVIDERS`. A named provider that is not available is an error, not a fallback.
    precision : str
        ``fp32``, ``fp16`` or ``bf16`` (see the README).
    """

    model: str
    settings: EvalSettings = EvalSettings()
    estimate_diameter: bool = False
    provider: str = "auto"
    precision: str = "fp32"

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")

    def dynamics(self) -> Dict[str, object]:
        """The options of this request that only the dynamics read."""
        return {name: getattr(self.settings, name) for name in DYNAMICS_OPTIONS}


@dataclass
class Outcome:
    """A finished run.

    Attributes
    ----------
    segmentation : Segmentation
        Masks, flows, cell probability, styles, diameter and timings.
    settings : EvalSettings
        The settings as run (with the estimated diameter, if one was estimated).
    model_name : str
        The model's registry name.
    network_ran : bool
        False when the network output came from the cache (only the dynamics ran).
    timings : dict
        Seconds: ``estimate`` (when the diameter was estimated), ``preprocess``, ``network``,
        ``dynamics``.
    """

    segmentation: Segmentation
    settings: EvalSettings
    model_name: str
    network_ran: bool
    timings: Dict[str, float] = field(default_factory=dict)


def image_digest(image: np.ndarray) -> Tuple[tuple, str, str]:
    """Shape, dtype and a BLAKE2 digest of the pixels: equal digests mean the same network input."""
    data = np.ascontiguousarray(image)
    return data.shape, data.dtype.str, hashlib.blake2b(data.view(np.uint8).reshape(-1), digest_size=16).hexdigest()


def spatial_shape(shape: Sequence[int], settings: EvalSettings) -> Tuple[int, ...]:
    """(Y, X) or (Z, Y, X) of an image of ``shape`` with the settings' channel axis and Z axis."""
    ndim = len(shape)
    axes = list(range(ndim))
    if settings.channel_axis is not None:
        axes.remove(settings.channel_axis % ndim)
    if settings.z_axis is not None:
        z = settings.z_axis % ndim
        axes.remove(z)
        axes.insert(0, z)
    return tuple(shape[a] for a in axes)


class SegmentationSession:
    """Runs :class:`RunRequest` s, reusing opened models and the last network output.

    One run at a time: the panel never starts a second one before the first has returned.
    """

    def __init__(self):
        self._models: Dict[tuple, LoadedModel] = {}
        self._key: Optional[tuple] = None
        self._prediction: Optional[Prediction] = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------
    # caches
    def load_model(self, request: RunRequest) -> LoadedModel:
        """The request's model, opened once per file, provider and precision."""
        key = self._model_key(request)
        if key not in self._models:
            auto = request.provider == "auto"
            self._models[key] = LoadedModel.load(request.model, providers=None if auto else request.provider,
                                                 strict_provider=not auto, precision=request.precision)
        return self._models[key]

    @staticmethod
    def _model_key(request: RunRequest) -> tuple:
        info = resolve_model(request.model)
        stat = info.onnx_path.stat()
        return str(info.onnx_path), stat.st_mtime_ns, stat.st_size, request.provider, request.precision

    def network_key(self, image: np.ndarray, request: RunRequest) -> tuple:
        """What the network stage's output depends on: image, model, provider, precision, options."""
        defaults = EvalSettings()
        network_settings = request.settings.with_(**{n: getattr(defaults, n) for n in DYNAMICS_OPTIONS})
        return (image_digest(image), self._model_key(request), network_settings, request.estimate_diameter,
                request.settings.stitch_threshold > 0)

    def has_network_output(self, image: np.ndarray, request: RunRequest) -> bool:
        """True when :meth:`segment` would only run the dynamics for this image and request."""
        return self._cached(self.network_key(image, request)) is not None

    def _cached(self, key: tuple) -> Optional[Prediction]:
        with self._lock:
            if self._key == key:
                return self._prediction
            # anything that changes the network's output makes the stored output useless: free it
            self._key, self._prediction = None, None
            return None

    def clear(self) -> None:
        """Forget the stored network output."""
        with self._lock:
            self._key, self._prediction = None, None

    # ---------------------------------------------------------------------------------------------
    # running
    def segment(self, image, request: RunRequest, progress: Optional[ProgressCallback] = None,
                cancelled: Optional[Callable[[], bool]] = None) -> Outcome:
        """Segment ``image``; the network runs only when its inputs differ from the stored run's.

        Raises
        ------
        RunCancelled
            ``cancelled()`` became true; the run stopped after the tile batch in progress.
        ValueError, FileNotFoundError, ProviderUnavailableError
            Bad image, options or model (the message says which).
        """
        image = np.asarray(image)
        key = self.network_key(image, request)
        prediction = self._cached(key)
        timings: Dict[str, float] = {}
        network_ran = prediction is None
        if network_ran:
            prediction, timings = self._predict(image, request, progress, cancelled)
            with self._lock:
                self._key, self._prediction = key, prediction
        if cancelled is not None and cancelled():
            raise RunCancelled()
        if progress is not None:
            progress("dynamics", 0, 0)
        settings = prediction.settings.with_(**request.dynamics())
        segmentation = finish(dataclasses.replace(prediction, settings=settings))
        timings = {**timings, **segmentation.timings}
        if not network_ran:
            timings = {"dynamics": segmentation.timings["dynamics"]}
        return Outcome(segmentation, settings, self.load_model(request).name, network_ran, timings)

    def _predict(self, image: np.ndarray, request: RunRequest, progress, cancelled):
        model = self.load_model(request)
        phase = ["network"]

        def on_tiles(n):
            done[0] += n
            if progress is not None:
                progress(phase[0], done[0], total[0])

        done, total = [0], [0]
        watched = LoadedModel(model.info, ProgressNetwork(model.net, on_tiles, cancelled))
        settings, timings = request.settings, {}
        if request.estimate_diameter and model.size_model is not None and not settings.do_3D \
                and len(spatial_shape(image.shape, settings)) == 2:
            phase[0] = "estimating diameter"
            if progress is not None:
                progress(phase[0], 0, 0)
            tic = time.perf_counter()
            diameter, _ = estimate_diameter(image, watched, settings)
            timings["estimate"] = time.perf_counter() - tic
            settings = settings.with_(diameter=diameter)
        phase[0], done[0] = "network", 0
        total[0] = expected_tiles(spatial_shape(image.shape, settings), rescale_for(model, settings), settings,
                                  model.family)
        if progress is not None:
            progress("network", 0, total[0])
        return predict(image, watched, settings), timings

    def estimate(self, image, request: RunRequest, cancelled: Optional[Callable[[], bool]] = None) -> float:
        """The diameter the model's size model estimates for a 2D image (Cellpose's two steps).

        Raises
        ------
        ValueError
            The model has no size model, or the image is not 2D.
        """
        image = np.asarray(image)
        model = self.load_model(request)
        if model.size_model is None:
            raise ValueError(f"model {model.name!r} has no size model: type the diameter instead")
        if len(spatial_shape(image.shape, request.settings)) != 2:
            raise ValueError("the diameter is estimated on 2D images only: type it for a stack")
        watched = LoadedModel(model.info, ProgressNetwork(model.net, None, cancelled))
        return estimate_diameter(image, watched, request.settings)[0]
