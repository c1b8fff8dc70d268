"""The model to analyse with (``model.settings``): the models found (re-scanned each time the list opens, so a
model trained meanwhile shows up) and the user's own, the device to run on, and what the model expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QPushButton

from cellview.analysis.classifier import DEVICES
from cellview.analysis.model_lookup import DEFAULT_MODEL, available_models
from cellview.analysis.model_spec import ModelSpec
from cellview.base.errors import CellviewError
from cellview.gui import settings as cfg
from cellview.gui.widgets.cards import show_model_card, text_label
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel


def model_label(onnx_path: str) -> str:
    """'name version (file)' from the sidecar, for models opened from anywhere."""
    try:
        with open(Path(onnx_path).with_suffix(".json"), encoding="utf-8") as fh:
            meta = json.load(fh)
        return f"{meta.get('name', Path(onnx_path).stem)} {meta.get('version', '')}".strip() + f" ({Path(onnx_path).name})"
    except (OSError, ValueError):
        return Path(onnx_path).name


NOT_BETTER = "⚠ not shown better"
"""Beside an adapted model in the list that was written without being shown better than its base."""


def not_better_mark(onnx_path: str) -> str:
    """``lab.modelfolder.adaptation_mark`` from the sidecar (cheap: no weights read); '' for any other model."""
    from cellview.lab.modelfolder import adaptation_mark

    try:
        with open(Path(onnx_path).with_suffix(".json"), encoding="utf-8") as fh:
            return adaptation_mark(json.load(fh))
    except (OSError, ValueError):
        return ""


def model_choices() -> dict[str, str]:
    """Name → .onnx path: the models found (``available_models``), then the ones the user opened."""
    choices = {name: str(p) for name, p in available_models().items()}
    for p in cfg.user_models():
        choices.setdefault(model_label(p), p)
    return choices


def default_model_path() -> str | None:
    """The model a new viewer starts with: ``DEFAULT_MODEL`` if there, else the first choice, else none."""
    choices = model_choices()
    path = choices.get(DEFAULT_MODEL) or next(iter(choices.values()), None)
    return str(Path(path).absolute()) if path else None


class ModelBox(QComboBox):
    """Re-scans models/ each time it opens, so a model trained meanwhile shows up."""

    aboutToShowPopup = Signal()

    def showPopup(self) -> None:  # noqa: N802 - Qt API
        self.aboutToShowPopup.emit()
        super().showPopup()


class ModelPanel:
    """``model_box`` with ``open_model_btn`` and ``card_btn``, ``device_box``, ``model_info`` and ``run_info`` (what the
    loaded model runs on, in full). ``host`` (the window)
    parents the file dialog and the model card and shows errors."""

    def __init__(self, model: ViewerModel, host: Any) -> None:
        self.model = model
        self.host = host
        self._models: dict[str, str] = {}
        self.model_box = ModelBox()
        self.model_box.aboutToShowPopup.connect(self.refresh_models)
        self.model_box.setToolTip("Models in models/ and any .onnx with its .json sidecar you opened")
        self.model_box.currentIndexChanged.connect(self._model_changed)
        self.open_model_btn = QPushButton("Open…")
        self.open_model_btn.setToolTip("Use an .onnx model with its .json sidecar")
        self.open_model_btn.clicked.connect(self.choose_model_file)
        self.card_btn = QPushButton("Card")
        self.card_btn.setToolTip("The selected model's card: what it was trained on, its figures and limits")
        self.card_btn.clicked.connect(lambda: (show_model_card(host, model.settings.model_path), host.take_focus()))
        self.device_box = QComboBox()
        for dev, label in zip(DEVICES, ("Automatic (best available)", "CPU", "CUDA GPU", "TensorRT GPU")):
            self.device_box.addItem(label, dev)
        self.device_box.setCurrentIndex(max(0, DEVICES.index(model.settings.params.device)))
        self.device_box.currentIndexChanged.connect(lambda _i: model.settings.set(device=self.device_box.currentData()))
        self.model_info = text_label("", "hint")
        self.run_info = text_label("", "hint")  # the loaded model's whole sentence (the status bar's is short)
        self.run_info.setVisible(False)
        model.settings.events.model.connect(self._on_model_selected)
        model.analysis.events.model_ready.connect(self._on_model_ready)
        for events in (model.slide.events.slide, model.analysis.events.running, model.analysis.events.result):
            events.connect(lambda e: self.sync())

    def sync(self) -> None:
        """The model and the device stay while a run uses them."""
        running = self.model.analysis.running
        self.model_box.setEnabled(not running)
        self.device_box.setEnabled(not running)

    def refresh_models(self, select: str | None = None) -> None:
        current = select or self.model_box.currentData()
        self._models = model_choices()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for name, path in self._models.items():
            mark = not_better_mark(str(path))
            self.model_box.addItem(f"{name}  {NOT_BETTER}" if mark else name, str(Path(path).absolute()))
            if mark:
                self.model_box.setItemData(self.model_box.count() - 1, mark, Qt.ItemDataRole.ToolTipRole)
        if not self._models:
            self.model_box.addItem("No model found — open one", None)
        idx = self.model_box.findData(current) if current else -1
        if idx < 0:
            idx = max(0, self.model_box.findText(DEFAULT_MODEL))
        self.model_box.setCurrentIndex(idx)
        self.model_box.blockSignals(False)
        self._model_changed()

    def add_model(self, path: str | Path) -> bool:
        """Validate an .onnx + sidecar and select it; errors go to a dialog."""
        try:
            spec = ModelSpec.load(path)
        except CellviewError as exc:
            self.host.show_error(exc, "Model not usable")
            return False
        path = str(Path(spec.onnx_path).absolute())
        if path not in {str(Path(p).absolute()) for p in available_models().values()}:
            cfg.add_user_model(path)
        self.refresh_models(select=path)
        return True

    def choose_model_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self.host, "Open model",
                                              str(cfg.get("last_model_dir", "") or Path.home()), "ONNX models (*.onnx)")
        self.host.take_focus()
        if name:
            cfg.put("last_model_dir", str(Path(name).parent))
            self.add_model(name)

    def _model_changed(self, *args) -> None:
        self.model.set_model(self.model_box.currentData() or None)
        self._show_model_info()

    def _on_model_ready(self, event: Event) -> None:
        self.run_info.setText(f"Runs as {event.value.description}")
        self.run_info.setVisible(True)

    def _on_model_selected(self, event: Event) -> None:
        idx = self.model_box.findData(event.value)
        if idx >= 0 and idx != self.model_box.currentIndex():
            self.model_box.blockSignals(True)
            self.model_box.setCurrentIndex(idx)
            self.model_box.blockSignals(False)
        self._show_model_info()

    def _show_model_info(self) -> None:
        path = self.model.settings.model_path
        if self.model.analysis.model_ready is None:
            self.run_info.setVisible(False)  # known once the model has loaded
        if not path:
            self.model_info.setText("Put models in models/<name>/model.onnx with model.json, or open one.")
            return
        try:
            with open(Path(path).with_suffix(".json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            self.model_info.setText(
                f"{meta.get('num_classes', '?')} classes · {meta.get('patch_size_pixels', '?')} px tiles at "
                f"{meta.get('spacing_um_px', '?')} µm/px"
                + (f" · {mark}" if (mark := not_better_mark(path)) else ""))
        except (OSError, ValueError):
            self.model_info.setText(Path(path).name)
