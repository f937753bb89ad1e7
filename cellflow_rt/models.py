"""Drop-in replacements for Cellpose 3.1.1.1's inference classes (``from cellflow_rt import models``).

``CellposeModel(pretrained_model=NAME_OR_PATH).eval(x, ...)`` returns ``masks, flows, styles`` and
``Cellpose(model_type=NAME).eval(x, ...)`` returns ``masks, flows, styles, diams``, with Cellpose's
argument names and defaults; ``flows = [rgb_flow, dP, cellprob]``. These classes only translate
arguments; the work is done by :func:`cellflow_rt.pipeline.segment`. ``CellposeModel.eval`` takes
the arguments of the Cellpose version the model's family follows (:mod:`cellflow_rt.family`):
Cellpose 3.1.1.1's for CPnet models, Cellpose 4.2.1.1's for Cellpose-SAM models.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np

from .eval_options import settings_from_kwargs
from .family import channels_for, family_of, per_image_value
from .loaded_model import LoadedModel
from .pipeline import segment
from .results import Segmentation
from .restore import RestoreStep, restore_image
from .settings import EvalSettings

#: Bundled model used when none is named.
DEFAULT_MODEL = "cyto_demo"

#: Constructor arguments Cellpose accepts that have no meaning here (torch devices, backbones).
_IGNORED_INIT_ARGS = {"device", "mkldnn", "backbone", "diam_mean", "nchan", "use_bfloat16"}


def _warn_ignored(kind: str, names: Sequence[str]) -> None:
    if names:
        warnings.warn(f"{kind} argument(s) {sorted(names)} are accepted for compatibility with Cellpose "
                      "and ignored by cellflow-rt", stacklevel=3)


def _settings_from_eval_kwargs(kwargs: dict) -> EvalSettings:
    """Cellpose eval keyword arguments -> :class:`EvalSettings`, by the front ends' shared adapter."""
    return settings_from_kwargs(kwargs)


def _flows_for_user(seg: Segmentation):
    """``[rgb_flow, dP, cellprob]``, the picture drawn by the model family's rule."""
    return [family_of(seg).flow_to_rgb(seg.dP), seg.dP, seg.cellprob]


class CellposeModel:
    """Cellpose's ``CellposeModel`` over an ONNX network (no PyTorch).

    Parameters
    ----------
    gpu : bool
        Prefer GPU execution providers (TensorRT, CUDA) when onnxruntime offers them; falls back to
        CPU with a warning otherwise.
    pretrained_model : str or path
        A bundled or user model name (``cellflow-rt info`` lists them), one of Cellpose's published
        names (``cyto3``, ``nuclei``, ``cpsam``...: downloaded and converted on first use, see
        ``cellflow-rt models list``), or a path to an exported ``.onnx`` (with its ``.json`` manifest).
    model_type : str, optional
        Alternative to ``pretrained_model`` (Cellpose's name for the same thing).
    providers : str or list, optional
        onnxruntime execution providers by preference (overrides ``gpu``).
    num_threads : int, optional
        CPU threads for the network.
    precision : {"fp32", "fp16", "bf16", "auto"}
        fp32 (default) gives Cellpose's masks; fp16 (TensorRT) and bf16 (CPU, needs OpenVINO) are
        faster and approximate (see docs/precision.md); auto: bf16 for Cellpose 4 models
        on CPUs with bfloat16 instructions, else fp32.
    pretrained_model_ortho : str or path, optional
        A model for do_3D's ZY and ZX views (the YX view uses ``pretrained_model``), as in Cellpose.
    **kwargs
        Cellpose-only arguments (``device``, ``mkldnn``, ``use_bfloat16``, ...): accepted and ignored
        with a warning.

    Notes
    -----
    ``eval`` takes the arguments and defaults of the Cellpose version of the model's family
    (``self.model.family``): Cellpose 3.1.1.1's for CPnet models; Cellpose 4.2.1.1's for
    Cellpose-SAM models (no ``invert`` or ``interp``, ``bsize`` 256 only, ``channels`` and
    ``rescale`` accepted and ignored with a warning, up to 3 channels in any order, zero styles).
    """

    def __init__(self, gpu: bool = False, pretrained_model=None, model_type: Optional[str] = None,
                 providers=None, num_threads: Optional[int] = None, precision: str = "fp32",
                 pretrained_model_ortho=None, **kwargs):
        unknown = set(kwargs) - _IGNORED_INIT_ARGS
        if unknown:
            raise TypeError(f"unexpected argument(s): {sorted(unknown)}")
        _warn_ignored("CellposeModel", list(kwargs))
        option = "pretrained_model" if pretrained_model else "model_type"
        self.model = _load_model(pretrained_model or model_type or DEFAULT_MODEL, "segmentation", option, gpu,
                                 providers, num_threads, precision, ortho=pretrained_model_ortho)
        self.pretrained_model = str(self.model.info.onnx_path)
        self.diam_mean = self.model.diam_mean
        self.diam_labels = self.model.diam_labels
        self.nchan = self.model.nchan
        self.gpu = any(p != "CPUExecutionProvider" for p in self.model.net.providers)

    def eval(self, x, *args, **kwargs):
        """Segment an image or a list of images; returns ``masks, flows, styles`` as Cellpose.

        Arguments, their order and defaults are those of the model family's Cellpose version
        (:attr:`cellflow_rt.family.ModelFamily.eval_signature`): Cellpose 3.1.1.1's ``eval`` plus
        cellflow-rt's ``dynamics`` ("auto", "cpu", "gpu": where flows become masks, see
        :class:`~cellflow_rt.settings.EvalSettings`) for CPnet models; Cellpose 4.2.1.1's for
        Cellpose-SAM models. ``flows = [rgb_flow, dP, cellprob]``; lists give lists.
        """
        family = self.model.family
        arguments = family.eval_arguments((x,) + args, kwargs)
        images = family.per_image(arguments)
        if images is not None:
            out = [self._eval_one(one) for one in images]
            return tuple(list(items) for items in zip(*out))
        return self._eval_one(arguments)

    def _eval_one(self, arguments: dict):
        settings = _settings_from_eval_kwargs(self.model.family.settings_arguments(arguments))
        seg = segment(arguments["x"], self.model, settings)
        return seg.masks, _flows_for_user(seg), seg.styles


def _load_model(name, kind: str, option: str, gpu: bool, providers, num_threads, precision,
                ortho=None) -> LoadedModel:
    """Open a model of ``kind`` ("segmentation" or "restoration"); errors name ``option``.

    ``ortho``: a second model for do_3D's ZY and ZX views (``pretrained_model_ortho``)."""
    from .registry import ModelNotFoundError

    if providers is None and gpu:
        providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    try:
        model = LoadedModel.load(name, providers=providers or "cpu", num_threads=num_threads, precision=precision,
                                 ortho=ortho)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{option}: {exc}") from None
    return model.require_kind(kind, option)


class SizeModel:
    """Cellpose's ``SizeModel``: the diameter estimate of a :class:`CellposeModel` with a size model."""

    def __init__(self, cp_model: CellposeModel, **kwargs):
        _warn_ignored("SizeModel", [k for k in kwargs if k != "pretrained_size"])
        if kwargs.get("pretrained_size"):
            raise ValueError("cellflow-rt reads the size model from the exported model's manifest; "
                             "export it with `cellflow-rt export CHECKPOINT --size-model SIZE.npy`")
        if cp_model.model.size_model is None:
            raise ValueError(f"model {cp_model.model.name!r} has no size model")
        self.cp = cp_model
        self.diam_mean = cp_model.model.size_model.diam_mean

    def eval(self, x, channels=None, channel_axis=None, normalize=True, invert=False, augment=False,
             batch_size=8, progress=None):
        """Return ``(diam, diam_style)`` for an image (lists give lists)."""
        from .diameter import estimate_diameter
        if isinstance(x, list):
            out = [self.eval(xi, channels=channels_for(channels, i, len(x)), channel_axis=channel_axis,
                             normalize=normalize, invert=invert, batch_size=batch_size) for i, xi in enumerate(x)]
            return [d for d, _ in out], [s for _, s in out]
        if np.asarray(x).squeeze().ndim > 3:
            warnings.warn("image is not 2D: cannot estimate the diameter")
            return self.diam_mean, self.diam_mean
        settings = _settings_from_eval_kwargs(dict(channels=channels, channel_axis=channel_axis, normalize=normalize,
                                                   invert=invert, batch_size=batch_size))
        return estimate_diameter(x, self.cp.model, settings)


class Cellpose:
    """Cellpose's ``Cellpose`` class: network plus size model; ``eval`` estimates the diameter when
    ``diameter`` is None or 0 and returns ``masks, flows, styles, diams``."""

    def __init__(self, gpu: bool = False, model_type: str = DEFAULT_MODEL, providers=None,
                 num_threads: Optional[int] = None, **kwargs):
        self.cp = CellposeModel(gpu=gpu, model_type=model_type, providers=providers, num_threads=num_threads,
                                **kwargs)
        self.diam_mean = self.cp.diam_mean
        self.sz = SizeModel(self.cp) if self.cp.model.size_model is not None else None

    def eval(self, x, batch_size: int = 8, channels=(0, 0), channel_axis=None, invert: bool = False,
             normalize=True, diameter=30.0, do_3D: bool = False, **kwargs):
        """Segment with the diameter given or estimated; returns ``masks, flows, styles, diams``."""
        first = x[0] if isinstance(x, list) else np.asarray(x)
        diam0 = diameter[0] if isinstance(diameter, (list, np.ndarray)) else diameter
        estimate = diameter is None or diam0 == 0
        if estimate and self.sz is not None and not do_3D and np.ndim(first) < 4:
            diams, _ = self.sz.eval(x, channels=channels, channel_axis=channel_axis, normalize=normalize,
                                    invert=invert, batch_size=batch_size)
        elif estimate:
            warnings.warn("could not estimate the diameter (no size model, or not a 2D image): "
                          f"using diam_mean={float(self.diam_mean)}")
            diams = float(self.diam_mean)
        else:
            diams = diameter
        masks, flows, styles = self.cp.eval(x, batch_size=batch_size, channels=channels, channel_axis=channel_axis,
                                            invert=invert, normalize=normalize, diameter=diams, do_3D=do_3D,
                                            **kwargs)
        return masks, flows, styles, diams


class DenoiseModel:
    """Cellpose 3's ``denoise.DenoiseModel`` (image restoration) over an exported ONNX restoration net.

    Parameters
    ----------
    gpu : bool
        Prefer GPU execution providers, as :class:`CellposeModel`.
    pretrained_model : str or path
        A path to an exported restoration ``.onnx`` (or a registered name).
    nchan : int
        1: Cellpose 3's restoration nets take one channel (others are refused).
    model_type : str, optional
        A registered restoration model's name, e.g. an export of Cellpose's ``denoise_cyto3``.
    chan2 : bool
        Accepted for compatibility; it changes nothing, as in Cellpose 3.1.1.1, whose restoration
        runs the first net on every channel (see :func:`cellflow_rt.restore.restore_image`).
    diam_mean : float, optional
        Diameter the net was trained at; default the exported model's (Cellpose: 17 for nuclei
        nets, 30 otherwise, which the exporter records). Cellpose's default for a net given by path
        is 30.
    providers, num_threads, precision
        As in :class:`CellposeModel`.

    Attributes
    ----------
    ratio : float
        Upsampling factor of the last image restored (``upsample`` nets), as in Cellpose.
    """

    def __init__(self, gpu: bool = False, pretrained_model=False, nchan: int = 1, model_type: Optional[str] = None,
                 chan2: bool = False, diam_mean: Optional[float] = None, device=None, providers=None,
                 num_threads: Optional[int] = None, precision: str = "fp32"):
        _warn_ignored("DenoiseModel", ["device"] if device is not None else [])
        if nchan != 1:
            raise ValueError(f"nchan: Cellpose 3's restoration nets take one channel, got nchan={nchan}")
        name = model_type or pretrained_model
        if not name:
            raise ValueError("DenoiseModel needs model_type (a registered restoration model) or pretrained_model "
                             "(a path to one exported with `cellflow-rt export CHECKPOINT --restore-type TYPE`)")
        option = "model_type" if model_type else "pretrained_model"
        self._attach(_load_model(name, "restoration", option, gpu, providers, num_threads, precision), chan2, diam_mean)

    def _attach(self, model: LoadedModel, chan2: bool, diam_mean: Optional[float]) -> None:
        if chan2:
            warnings.warn("chan2 (chan2_restore) has no effect: Cellpose 3.1.1.1 restores every channel with the "
                          "first channel's net, and cellflow-rt does the same", stacklevel=3)
        self.model = model
        self.pretrained_model = str(model.info.onnx_path)
        self.restore_type = model.restore_type
        self.diam_mean = float(model.info.diam_mean if diam_mean is None else diam_mean)
        self.nchan = 1
        self.ratio = 1.0

    def eval(self, x, batch_size: int = 8, channels=None, channel_axis=None, z_axis=None, normalize=True,
             rescale=None, diameter=None, tile: bool = True, do_3D: bool = False, tile_overlap: float = 0.1,
             bsize: int = 224):
        """Restore an image or a list of images; returns the restored image(s), float32, channels last.

        ``normalize`` is a bool or Cellpose's dict (its ``invert`` included); ``tile`` is ignored,
        as in Cellpose.
        """
        if isinstance(x, list):
            return [self.eval(xi, batch_size=batch_size, channels=channels_for(channels, i, len(x)),
                              channel_axis=channel_axis, z_axis=z_axis, normalize=normalize,
                              rescale=per_image_value(rescale, i), diameter=per_image_value(diameter, i), do_3D=do_3D,
                              tile_overlap=tile_overlap, bsize=bsize) for i, xi in enumerate(x)]
        settings = _settings_from_eval_kwargs(dict(
            batch_size=batch_size, channels=channels, channel_axis=channel_axis, z_axis=z_axis, normalize=normalize,
            rescale=rescale, diameter=diameter, do_3D=do_3D, tile_overlap=tile_overlap, bsize=bsize))
        restoration = restore_image(x, self.model, settings, self.diam_mean)
        self.ratio = restoration.ratio
        return restoration.image


class CellposeDenoiseModel:
    """Cellpose 3's ``denoise.CellposeDenoiseModel``: image restoration, then segmentation of the
    restored image; ``eval`` returns ``masks, flows, styles, img_restore``.

    Parameters
    ----------
    gpu : bool
        Prefer GPU execution providers.
    pretrained_model, model_type : str, optional
        The segmentation model (as in :class:`CellposeModel`).
    restore_type : str
        The restoration model: a registered name (e.g. your export of ``denoise_cyto3``) or a path
        to its ``.onnx``.
    nchan : int
        Accepted for compatibility (the segmentation model says how many channels it takes).
    chan2_restore : bool
        Accepted; no effect, as in Cellpose 3.1.1.1 (see :class:`DenoiseModel`).
    providers, num_threads, precision
        As in :class:`CellposeModel`, for both networks.
    """

    def __init__(self, gpu: bool = False, pretrained_model=False, model_type: Optional[str] = None,
                 restore_type: str = "denoise_cyto3", nchan: int = 2, chan2_restore: bool = False, device=None,
                 providers=None, num_threads: Optional[int] = None, precision: str = "fp32"):
        _warn_ignored("CellposeDenoiseModel", ["device"] if device is not None else [])
        self.dn = DenoiseModel.__new__(DenoiseModel)
        self.dn._attach(_load_model(restore_type, "restoration", "restore_type", gpu, providers, num_threads,
                                    precision), chan2_restore, None)
        self.cp = CellposeModel(gpu=gpu, pretrained_model=pretrained_model or None, model_type=model_type,
                                providers=providers, num_threads=num_threads, precision=precision)
        self.restore_type = restore_type

    def eval(self, x, batch_size: int = 8, channels=None, channel_axis=None, z_axis=None, normalize=True,
             rescale=None, diameter=None, tile_overlap: float = 0.1, augment: bool = False, resample: bool = True,
             invert: bool = False, flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, do_3D: bool = False,
             anisotropy=None, stitch_threshold: float = 0.0, min_size: int = 15, niter=None, interp: bool = True,
             bsize: int = 224, flow3D_smooth=0):
        """Restore, then segment; returns ``masks, flows, styles, img_restore`` (lists for lists).

        The normalisation options (``normalize`` as a dict) apply to the restoration only; the
        restored image is segmented with Cellpose's default normalisation (see
        :func:`cellflow_rt.restore.split_normalization`).
        """
        step = RestoreStep.create(self.dn.model, normalize, invert, diam_mean=self.dn.diam_mean,
                                  name=self.restore_type)
        args = dict(batch_size=batch_size, channel_axis=channel_axis, z_axis=z_axis, tile_overlap=tile_overlap,
                    augment=augment, resample=resample, flow_threshold=flow_threshold,
                    cellprob_threshold=cellprob_threshold, do_3D=do_3D, anisotropy=anisotropy,
                    stitch_threshold=stitch_threshold, min_size=min_size, niter=niter, interp=interp, bsize=bsize,
                    flow3D_smooth=flow3D_smooth)
        images = x if isinstance(x, list) else [x]
        settings = [_settings_from_eval_kwargs(dict(args, channels=channels_for(channels, i, len(images)),
                                                    rescale=per_image_value(rescale, i),
                                                    diameter=per_image_value(diameter, i)))
                    for i in range(len(images))]
        restored = []
        for image, s in zip(images, settings):
            restoration = step.restore(image, s)
            self.dn.ratio = restoration.ratio
            restored.append(restoration)
        # Cellpose decides the segmentation diameter from the last image's upsampling ratio, for all
        results = [segment(r.image, self.cp.model, step.segmentation_settings(s, r, ratio=restored[-1].ratio))
                   for r, s in zip(restored, settings)]
        out = [(seg.masks, _flows_for_user(seg), seg.styles, r.image) for seg, r in zip(results, restored)]
        if not isinstance(x, list):
            return out[0]
        return tuple(list(items) for items in zip(*out))
