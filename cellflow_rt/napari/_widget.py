"""The dock widget (``Plugins > cellflow-rt``): options, Run / Cancel, progress, notifications.

Work runs in a napari thread worker, so the viewer never freezes; the worker's function never
raises (it returns the exception), so every problem reaches the user as a notification with a plain
message, never as a traceback dialog. Changing the flow threshold, the cell probability threshold
or the minimum size after a run re-runs only the dynamics from the session's stored network output.
"""
from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                            QLabel, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..eval_options import settings_from_flags
from ..examples import EXAMPLE_MODEL
from ..network import PRECISIONS, available_providers
from ..published import CATALOG, cache_dir, published_names
from ..registry import installed_model, list_models, resolve_model
from ..settings import EvalSettings
from .layers import ImageAxes, InputProblem, check_channels, image_axes, show_outcome
from .progress import RunCancelled
from .session import PROVIDERS, Outcome, RunRequest, SegmentationSession

log = logging.getLogger(__name__)

#: onnxruntime's names of the providers a user can ask for by name.
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "tensorrt": "TensorrtExecutionProvider"}


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the widget (a queued Qt signal)."""

    progressed = Signal(str, int, int)


@dataclass
class _Failed:
    """What a worker returns instead of raising."""

    error: BaseException
    details: str


@dataclass
class _Job:
    """One piece of work for the worker: a run, a dynamics-only re-run, or a diameter estimate."""

    kind: str  # "run" | "retune" | "estimate"
    layer: Image
    data: object  # the layer's data and name, taken on the main thread
    name: str
    axes: ImageAxes
    request: RunRequest


def _check_pixels(image: np.ndarray, name: str) -> None:
    if image.size == 0:
        raise InputProblem(f"image layer {name!r} is empty (shape {image.shape})")
    if image.dtype.kind not in "biuf":
        raise InputProblem(f"image layer {name!r} has dtype {image.dtype}: cellflow-rt segments numeric images")
    low, high = np.min(image), np.max(image)
    if low == high:
        what = "empty (every pixel is 0)" if low == 0 else f"constant (every pixel is {low})"
        raise InputProblem(f"image layer {name!r} is {what}: there is nothing to segment")


def _work(session: SegmentationSession, job: _Job, progress, cancelled):
    """The worker's function: runs the job; returns its result, or a :class:`_Failed`."""
    try:
        image = np.asarray(job.data)
        _check_pixels(image, job.name)
        if job.kind == "estimate":
            return session.estimate(image, job.request, cancelled=cancelled)
        if job.kind == "retune" and not session.has_network_output(image, job.request):
            return None  # the network's inputs changed since the last run: thresholds apply on Run
        return session.segment(image, job.request, progress=progress, cancelled=cancelled)
    except Exception as exc:  # noqa: BLE001 - every error becomes a notification
        return _Failed(exc, traceback.format_exc())


class SegmentationWidget(QWidget):
    """cellflow-rt's panel: segment an image layer into a Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered and where the results go.

    Attributes
    ----------
    session : SegmentationSession
        The models and the stored network output.
    worker : napari worker or None
        The work in progress (None when idle).
    labels_layer : napari.layers.Labels or None
        The masks of the last run.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = SegmentationSession()
        self.worker = None
        self.labels_layer = None
        self._cancel = threading.Event()
        self._retune_pending = False
        self._succeeded = False
        self._relay = _ProgressRelay(self)
        self._relay.progressed.connect(self._on_progress)
        self._build()
        self._refresh_models()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.moved):
            event.connect(self._refresh_images)
        self._refresh_images()

    # ---------------------------------------------------------------------------------------------
    # building the form
    def _build(self):
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        form.addRow("image", self.image_combo)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("bundled and exported models (cellflow-rt info), or an .onnx file")
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.model_file_button = QPushButton("file...")
        self.model_file_button.setToolTip("use an exported .onnx model (its .json manifest beside it)")
        self.model_file_button.clicked.connect(self._pick_model_file)
        form.addRow("model", _row(self.model_combo, self.model_file_button))

        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip("the image layer's axis holding channels (none = grayscale)")
        self.channel_axis_combo.currentIndexChanged.connect(self._update_stack_options)
        self.chan_spin = _spin(0, 16, "gray", "chan: channel to segment (0 = gray, 1 = red/first, 2 = green, "
                                              "3 = blue, ...)")
        self.chan2_spin = _spin(0, 16, "none", "chan2: optional nuclear channel (0 = none)")
        form.addRow("channel axis", self.channel_axis_combo)
        form.addRow("chan / chan2", _row(self.chan_spin, self.chan2_spin))

        self.diameter_spin = _double_spin(0, 10000, 1, 1.0, "cell diameter in pixels; 0 = estimate with the "
                                                            "model's size model at Run")
        self.diameter_spin.setSpecialValueText("estimate")
        self.estimate_button = QPushButton("estimate")
        self.estimate_button.setToolTip("estimate the diameter with the model's size model now")
        self.estimate_button.clicked.connect(self.estimate_diameter)
        form.addRow("diameter", _row(self.diameter_spin, self.estimate_button))

        defaults = EvalSettings()
        self.flow_spin = _double_spin(0, 10, 2, 0.1, "flow_threshold: maximum flow error of a mask (0 = no check)")
        self.flow_spin.setValue(defaults.flow_threshold)
        self.cellprob_spin = _double_spin(-20, 20, 2, 0.5, "cellprob_threshold: pixels above it are cells")
        self.cellprob_spin.setValue(defaults.cellprob_threshold)
        self.min_size_spin = _spin(-1, 10 ** 7, None, "min_size: smaller masks are removed (-1 = keep all)")
        self.min_size_spin.setValue(defaults.min_size)
        form.addRow("flow threshold", self.flow_spin)
        form.addRow("cellprob threshold", self.cellprob_spin)
        form.addRow("min size", self.min_size_spin)
        for spin in (self.flow_spin, self.cellprob_spin, self.min_size_spin):
            spin.setKeyboardTracking(False)  # one re-run per typed value, not per keystroke
            spin.valueChanged.connect(self._on_dynamics_changed)

        self.do_3d_check = QCheckBox("do_3D")
        self.do_3d_check.setToolTip("run the network on YX, ZY and ZX slices and 3D dynamics")
        self.stitch_spin = _double_spin(0, 1, 2, 0.05, "stitch_threshold: link 2D masks across Z by IoU (0 = off)")
        self.anisotropy_spin = _double_spin(0.1, 100, 2, 0.5, "anisotropy: Z spacing over XY spacing (do_3D)")
        self.anisotropy_spin.setValue(1.0)
        form.addRow("stacks", _row(self.do_3d_check, QLabel("stitch"), self.stitch_spin, QLabel("aniso"),
                                   self.anisotropy_spin))

        self.augment_check = QCheckBox("augment")
        self.augment_check.setToolTip("test-time augmentation (slower, smoother flows)")
        self.invert_check = QCheckBox("invert")
        self.invert_check.setToolTip("invert intensities (dark cells on a bright background)")
        form.addRow("options", _row(self.augment_check, self.invert_check))

        self.provider_combo = QComboBox()
        self.provider_combo.addItems(PROVIDERS)
        self.provider_combo.setToolTip("auto = TensorRT, then CUDA, then CPU, whichever onnxruntime offers")
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(PRECISIONS)
        self.precision_combo.setToolTip("fp32 = Cellpose's masks; bf16 (CPU, OpenVINO) and fp16 (TensorRT) "
                                        "are faster and approximate")
        form.addRow("provider", _row(self.provider_combo, QLabel("precision"), self.precision_combo))

        self.flows_check = QCheckBox("flows")
        self.cellprob_check = QCheckBox("cell probability")
        form.addRow("also show", _row(self.flows_check, self.cellprob_check))

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("stop after the tile batch in progress")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setValue(0)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(_row(self.run_button, self.cancel_button))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    # ---------------------------------------------------------------------------------------------
    # choices that depend on the viewer and the registry
    def _refresh_models(self):
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        installed = set()
        for info in list_models():
            if info.kind == "segmentation":
                self.model_combo.addItem(info.name, info.name)
                installed.add(info.name)
        for name in published_names(supported_only=True):
            if name not in installed and CATALOG[name].kind == "segmentation":
                self.model_combo.addItem(f"{name} (Cellpose, downloaded on first use)", name)
        self.model_combo.blockSignals(False)
        wanted = current if current is not None else EXAMPLE_MODEL
        index = self.model_combo.findData(wanted)
        self.model_combo.setCurrentIndex(max(index, 0))
        self._on_model_changed()

    def set_model(self, name_or_path: str) -> None:
        """Choose a model by registry name or ``.onnx`` path (what the file button does)."""
        index = self.model_combo.findData(str(name_or_path))
        if index < 0:
            self.model_combo.addItem(Path(name_or_path).name if Path(name_or_path).suffix else str(name_or_path),
                                     str(name_or_path))
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def _pick_model_file(self):
        path, _ = QFileDialog.getOpenFileName(self, "Exported cellflow-rt model", "", "ONNX model (*.onnx)")
        if path:
            self.set_model(path)

    def _on_model_changed(self, *_):
        """Show the model's own diameter and channels."""
        name = self.model_combo.currentData()
        if not name:
            return
        if name in CATALOG and installed_model(name) is None:
            # fetched by the run's worker thread, not here: a download would freeze the panel
            self.status_label.setText(f"{name}: Cellpose's published model, downloaded and converted "
                                      f"on first use into {cache_dir()}")
            return
        try:
            info = resolve_model(name)
        except (ValueError, FileNotFoundError) as exc:
            self.status_label.setText(str(exc))
            return
        self.diameter_spin.setValue(float(info.diam_mean))
        if info.default_channels is not None:  # Cellpose 4 models take the image's first 3 channels
            self.chan_spin.setValue(int(info.default_channels[0]))
            self.chan2_spin.setValue(int(info.default_channels[1]))

    def _image_layers(self):
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, *_):
        current = self.image_layer()
        layers = self._image_layers()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in layers:
            self.image_combo.addItem(layer.name, layer)
        self.image_combo.blockSignals(False)
        active = self.viewer.layers.selection.active
        chosen = current if current in layers else active if active in layers else None
        if chosen is not None:
            self.image_combo.setCurrentIndex(layers.index(chosen))
        self._on_image_changed()

    def set_image_layer(self, layer: Image) -> None:
        """Choose the image layer to segment."""
        self.image_combo.setCurrentIndex(self._image_layers().index(layer))

    def image_layer(self) -> Optional[Image]:
        """The image layer chosen in the panel (None when the viewer has none)."""
        layer = self.image_combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_image_changed(self, *_):
        """Offer the chosen layer's axes as the channel axis; enable the stack options for stacks."""
        layer = self.image_layer()
        self.channel_axis_combo.clear()
        if layer is None:
            return
        shape = layer.data.shape
        if getattr(layer, "rgb", False):
            self.channel_axis_combo.addItem(f"{len(shape) - 1} (RGB)", len(shape) - 1)
        else:
            self.channel_axis_combo.addItem("none", None)
            for axis, size in enumerate(shape):
                self.channel_axis_combo.addItem(f"{axis} ({size})", axis)
            # a short axis of a 3-D or 4-D array is most likely channels (Z stacks are longer)
            short = [axis for axis, size in enumerate(shape) if size <= 4]
            if len(shape) >= 3 and short:
                self.channel_axis_combo.setCurrentIndex(short[0] + 1)
        self._update_stack_options()

    def _update_stack_options(self, *_):
        layer = self.image_layer()
        try:
            is_stack = layer is not None and image_axes(layer, self.channel_axis_combo.currentData()).z_axis is not None
        except InputProblem:
            is_stack = False
        for widget in (self.do_3d_check, self.stitch_spin, self.anisotropy_spin):
            widget.setEnabled(is_stack)

    # ---------------------------------------------------------------------------------------------
    # the request
    def current_request(self):
        """The chosen image layer, its axes and the :class:`RunRequest` the panel describes.

        Raises
        ------
        InputProblem
            No image layer, impossible axes or channels, a missing model file, or a provider that
            onnxruntime does not offer here.
        """
        layer = self.image_layer()
        if layer is None:
            raise InputProblem("no image layer to segment: open an image (File > Open) and choose it under 'image'")
        axes = image_axes(layer, self.channel_axis_combo.currentData())
        chan, chan2 = self.chan_spin.value(), self.chan2_spin.value()
        check_channels(axes, chan, chan2, layer.name)
        model = self.model_combo.currentData()
        if not model:
            raise InputProblem("no model: choose one, or pick an exported .onnx with 'file...'")
        if model.lower().endswith(".onnx") and not Path(model).is_file():
            raise InputProblem(f"model file {model!r} does not exist: pick another with 'file...'")
        provider = self.provider_combo.currentText()
        if provider != "auto" and _PROVIDER_NAMES[provider] not in available_providers():
            raise InputProblem(f"provider {provider!r} is not available on this machine (onnxruntime offers "
                               f"{', '.join(available_providers())}): choose 'auto' or 'cpu'")
        stack = axes.z_axis is not None
        do_3D = stack and self.do_3d_check.isChecked()
        flags = dict(chan=chan, chan2=chan2, channel_axis=axes.channel_axis, z_axis=axes.z_axis,
                     diameter=self.diameter_spin.value(), flow_threshold=self.flow_spin.value(),
                     cellprob_threshold=self.cellprob_spin.value(), min_size=self.min_size_spin.value(),
                     augment=self.augment_check.isChecked(), invert=self.invert_check.isChecked(), do_3D=do_3D,
                     stitch_threshold=self.stitch_spin.value() if stack and not do_3D else 0.0,
                     anisotropy=self.anisotropy_spin.value() if do_3D else None)
        chosen = settings_from_flags(flags)
        request = RunRequest(model=model, settings=chosen.settings, estimate_diameter=chosen.estimate_diameter,
                             provider=provider,
                             precision=self.precision_combo.currentText())
        return layer, axes, request

    # ---------------------------------------------------------------------------------------------
    # actions
    @property
    def busy(self) -> bool:
        """True while a worker runs."""
        return self.worker is not None

    def run(self) -> None:
        """Segment the chosen image (only the dynamics when the network's inputs are unchanged)."""
        self._start("run")

    def estimate_diameter(self) -> None:
        """Estimate the diameter with the model's size model and put it in the diameter box."""
        self._start("estimate")

    def cancel(self) -> None:
        """Stop the run after the tile batch in progress."""
        if self.busy:
            self._cancel.set()
            self.status_label.setText("cancelling after the current tile batch...")

    def _on_dynamics_changed(self, *_):
        if self.labels_layer is None:
            return  # nothing to tune yet
        if self.busy:
            self._retune_pending = True
            return
        self._start("retune", quiet=True)

    def _start(self, kind: str, quiet: bool = False) -> None:
        if self.busy:
            return
        try:
            layer, axes, request = self.current_request()
        except (InputProblem, ValueError) as exc:
            if not quiet:
                show_warning(f"cellflow-rt: {exc}")
            return
        job = _Job(kind, layer, layer.data, layer.name, axes, request)
        self._cancel.clear()
        self.worker = create_worker(_work, self.session, job, self._relay.progressed.emit, self._cancel.is_set)
        self.worker.returned.connect(lambda result, job=job: self._on_returned(job, result))
        self.worker.finished.connect(self._on_finished)
        self._set_busy(True, kind)
        self.worker.start()

    def _set_busy(self, busy: bool, kind: str = "") -> None:
        for widget in (self.run_button, self.estimate_button, self.model_file_button):
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and kind != "retune")
        if busy:
            self.progress_bar.setRange(0, 0)
            self.status_label.setText({"run": "running...", "retune": "re-running the dynamics...",
                                       "estimate": "estimating the diameter..."}[kind])
        else:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1 if self._succeeded else 0)

    def _on_progress(self, phase: str, done: int, total: int) -> None:
        if not self.busy:
            return
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
            self.status_label.setText(f"{phase}: {done} / {total} tiles")
        else:
            self.progress_bar.setRange(0, 0)
            self.status_label.setText(f"{phase}...")

    def _on_returned(self, job: _Job, result) -> None:
        self._succeeded = not isinstance(result, _Failed)
        if isinstance(result, _Failed):
            self._report_failure(job, result)
        elif job.kind == "estimate":
            self.diameter_spin.setValue(round(float(result), 1))
            self.status_label.setText(f"estimated diameter: {result:.1f} px")
            show_info(f"estimated diameter of {job.layer.name!r}: {result:.1f} px")
        elif result is None:
            self.status_label.setText("the network's inputs changed: press Run to apply the thresholds")
        else:
            self._show(job, result)

    def _show(self, job: _Job, outcome: Outcome) -> None:
        self.labels_layer = show_outcome(self.viewer, job.layer, job.axes, outcome,
                                         show_flows=self.flows_check.isChecked(),
                                         show_cellprob=self.cellprob_check.isChecked())
        n = int(outcome.segmentation.masks.max(initial=0))
        seconds = sum(outcome.timings.values())
        how = "network + dynamics" if outcome.network_ran else "dynamics only (network output reused)"
        self.status_label.setText(f"{n} masks, diameter {self.labels_layer.metadata['cellflow_rt']['diameter']:.1f}"
                                  f" px, {seconds:.2f} s ({how})")

    def _report_failure(self, job: _Job, failed: _Failed) -> None:
        error = failed.error
        if isinstance(error, RunCancelled):
            self.status_label.setText("cancelled")
            show_info("cellflow-rt: run cancelled; the layers are unchanged")
            return
        self.status_label.setText(f"failed: {error}")
        if isinstance(error, InputProblem):
            show_warning(f"cellflow-rt: {error}")
        elif isinstance(error, (ValueError, FileNotFoundError, RuntimeError)):
            show_error(f"cellflow-rt: {error}")
        else:
            show_error(f"cellflow-rt: unexpected {type(error).__name__}: {error} (details in the log)")
        log.warning("cellflow-rt %s failed:\n%s", job.kind, failed.details)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_busy(False)
        if self._retune_pending:
            self._retune_pending = False
            self._start("retune", quiet=True)


def _row(*widgets) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row


def _spin(low: int, high: int, special: Optional[str], tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    if special:
        spin.setSpecialValueText(special)
    spin.setToolTip(tip)
    return spin


def _double_spin(low: float, high: float, decimals: int, step: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(decimals)
    spin.setSingleStep(step)
    spin.setToolTip(tip)
    return spin
