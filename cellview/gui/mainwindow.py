"""The main window: slide canvas in the middle, one side panel with analysis, heatmap and inspector.

The kiosk (``cellview.gui.kiosk.KioskWindow``) subclasses it, hides its menus and drives it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QFont, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from cellview import export
from cellview.errors import CellviewError, ModelError
from cellview.gui import settings as cfg
from cellview.gui.panels import CategoryToggles, ColorBar, TileInspector, section
from cellview.gui.slideview import ARROW_STEPS, SlideView, format_um
from cellview.gui.tasks import (
    ModelReady,
    Opened,
    PatchLoaded,
    PatchRequest,
    SharperThumbnail,
    TileLoaded,
    TileRequests,
    TissuePreview,
    analysis_task,
    open_task,
    regions_task,
    tile_loader_task,
    tissue_task,
)
from cellview.gui.worker import Worker
from cellview.model import CATEGORIES, CATEGORY_COLORS, DEFAULT_MODEL, DEVICES, ModelSpec, available_models
from cellview.morphology import Region, TileNuclei
from cellview.pipeline import BatchDone, Finished, Started
from cellview.results import AnalysisParams, AnalysisResult, ModelInfo, TileState
from cellview.slide import SUPPORTED_SUFFIXES, Mpp
from cellview.tissue import TissueParams

LOADER_THREADS = 2
REPAINT_INTERVAL_MS = 100
REGIONS_INTERVAL_MS = 500
"""While batches stream in, malignant regions are recomputed and redrawn at most this often."""
MAX_REGIONS_DRAWN = 200
WHOLE_IMAGE = "whole-image"


def probability_lut(n: int = 256) -> np.ndarray:
    """Perceptually ordered dark-blue → yellow map (viridis) as an (n, 3) uint8 table."""
    import pyqtgraph as pg

    return pg.colormap.get("viridis").getLookupTable(0.0, 1.0, n, alpha=False).astype(np.uint8)


def format_eta(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _model_label(onnx_path: str) -> str:
    """'name version (file)' from the sidecar, for models opened from anywhere."""
    try:
        with open(Path(onnx_path).with_suffix(".json"), encoding="utf-8") as fh:
            meta = json.load(fh)
        return f"{meta.get('name', Path(onnx_path).stem)} {meta.get('version', '')}".strip() + f" ({Path(onnx_path).name})"
    except (OSError, ValueError):
        return Path(onnx_path).name


class ModelBox(QComboBox):
    """Re-scans models/ each time it opens, so a model trained meanwhile shows up."""

    aboutToShowPopup = Signal()

    def showPopup(self) -> None:  # noqa: N802 - Qt API
        self.aboutToShowPopup.emit()
        super().showPopup()


class MppDialog(QDialog):
    """Asks for the µm per pixel of a slide that does not say, or to classify it as one image."""

    def __init__(self, name: str, plain_image: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Pixel size unknown")
        self.choice: float | str | None = None
        lay = QVBoxLayout(self)
        text = QLabel(
            f"<b>{name}</b> does not record how many micrometres one pixel covers.<br><br>"
            "Tiles must be cut at the model's scale, so enter the pixel size (0.25 µm/px is a typical 40x scan, "
            "0.5 µm/px a 20x scan)"
            + (", or classify this image as a single tile (for one cell or a small field)." if plain_image else ".")
        )
        text.setWordWrap(True)
        text.setMinimumWidth(460)
        text.setMinimumHeight(text.heightForWidth(460))
        lay.addWidget(text)
        form = QFormLayout()
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setRange(0.02, 50.0)
        self.spin.setSingleStep(0.05)
        self.spin.setValue(0.5)
        self.spin.setSuffix(" µm/px")
        form.addRow("Pixel size:", self.spin)
        lay.addLayout(form)
        buttons = QDialogButtonBox()
        ok = buttons.addButton("Use this pixel size", QDialogButtonBox.ButtonRole.AcceptRole)
        ok.clicked.connect(self._use_value)
        if plain_image:
            whole = buttons.addButton("Classify as one image", QDialogButtonBox.ButtonRole.ActionRole)
            whole.clicked.connect(self._use_whole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel).clicked.connect(self.reject)
        lay.addWidget(buttons)

    def _use_value(self) -> None:
        self.choice = float(self.spin.value())
        self.accept()

    def _use_whole(self) -> None:
        self.choice = WHOLE_IMAGE
        self.accept()


def _hint(text: str, wrap: bool = True) -> QLabel:
    """A small grey explanatory label (styled by the "hint" object name)."""
    label = QLabel(text)
    label.setObjectName("hint")
    label.setWordWrap(wrap)
    return label


class MainWindow(QMainWindow):
    """The viewer. Signals let tests and benchmarks wait for what a user would see."""

    slideOpened = Signal(object)  # Opened
    analysisStarted = Signal(object)  # the Worker, before its thread starts
    analysisFinished = Signal(object)  # AnalysisResult
    overlayPainted = Signal()
    patchShown = Signal(int)
    tissueShown = Signal()
    regionsShown = Signal()
    errorShown = Signal(str, str)

    def __init__(self, analysis_defaults: AnalysisParams | None = None) -> None:
        super().__init__()
        self.defaults = analysis_defaults or AnalysisParams()
        self.use_cache = True  # benchmarks turn it off to measure real runs
        self.setWindowTitle("CellView")
        self.setAcceptDrops(True)
        self.resize(1600, 1000)

        self.opened: Opened | None = None
        self.mpp_choice: float | str | None = None  # user-entered µm/px or WHOLE_IMAGE
        self.requests: TileRequests | None = None
        self.loaders: list[Worker] = []
        self.analysis: Worker | None = None
        self._workers: set[Worker] = set()
        self.spec: ModelSpec | None = None
        self._params = self.defaults
        self.result: AnalysisResult | None = None
        self._run: dict | None = None
        self._partial: AnalysisResult | None = None
        self._dirty = False
        self._models: dict[str, str] = {}
        self._tissue_worker: Worker | None = None
        self._open_worker: Worker | None = None
        self.lut = probability_lut()

        self.view = SlideView()
        self.view.clicked.connect(self._view_clicked)
        self.view.hovered.connect(self._view_hovered)
        self.view.stepKey.connect(self.step_selection)
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setCentralWidget(self.view)
        self._build_panel()
        self._build_menus()
        self._build_status()

        self._repaint_timer = QTimer(self, interval=REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self._flush_repaint)
        self._tissue_timer = QTimer(self, singleShot=True, interval=300)
        self._tissue_timer.timeout.connect(self.update_tissue_preview)
        self._regions_timer = QTimer(self, singleShot=True, interval=REGIONS_INTERVAL_MS)
        self._regions_timer.timeout.connect(self.update_regions)
        self.refresh_models()
        self._set_running(False)

    # ------------------------------------------------------------------------------ layout

    def _build_panel(self) -> None:
        panel = QWidget()
        lay = QVBoxLayout(panel)
        lay.setContentsMargins(10, 8, 10, 6)
        lay.setSpacing(8)

        card, c = section("Model")
        row = QHBoxLayout()
        self.model_box = ModelBox()
        self.model_box.aboutToShowPopup.connect(self.refresh_models)
        self.model_box.setToolTip("Models in models/ and any .onnx with its .json sidecar you opened")
        self.model_box.currentIndexChanged.connect(self._model_changed)
        row.addWidget(self.model_box, 1)
        self.open_model_btn = QPushButton("Open…")
        self.open_model_btn.setToolTip("Use an .onnx model with its .json sidecar")
        self.open_model_btn.clicked.connect(self.choose_model_file)
        row.addWidget(self.open_model_btn)
        c.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Run on"))
        self.device_box = QComboBox()
        for d, label in zip(DEVICES, ("Automatic (best available)", "CPU", "CUDA GPU", "TensorRT GPU")):
            self.device_box.addItem(label, d)
        self.device_box.setCurrentIndex(max(0, DEVICES.index(self.defaults.device)))
        row.addWidget(self.device_box, 1)
        c.addLayout(row)
        self.model_info = _hint("")
        c.addWidget(self.model_info)
        lay.addWidget(card)

        card, c = section("Analysis")
        row = QHBoxLayout()
        self.analyse_btn = QPushButton("Analyse slide")
        self.analyse_btn.setObjectName("primary")
        self.analyse_btn.clicked.connect(self.start_analysis)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the current batch; finished tiles are kept")
        self.cancel_btn.clicked.connect(self.cancel_analysis)
        row.addWidget(self.analyse_btn, 1)
        row.addWidget(self.cancel_btn)
        c.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        c.addWidget(self.progress)
        self.rate_label = _hint("", wrap=False)
        c.addWidget(self.rate_label)
        self.nuclei_box = QCheckBox("Measure nuclei per tile (slower)")
        self.nuclei_box.setChecked(self.defaults.nuclei)
        self.nuclei_box.setToolTip("Count nuclei and measure their size and shape in every tile (H&E deconvolution)")
        c.addWidget(self.nuclei_box)
        self.auto_box = QCheckBox("Analyse automatically when a slide opens")
        self.auto_box.setChecked(str(cfg.get("auto_analyse", "true")).lower() == "true")
        self.auto_box.toggled.connect(lambda on: cfg.put("auto_analyse", "true" if on else "false"))
        c.addWidget(self.auto_box)
        lay.addWidget(card)

        card, c = section("Heatmap")
        self.show_overlay = QCheckBox("Show heatmap")
        self.show_overlay.setChecked(True)
        self.show_overlay.toggled.connect(self.repaint_overlay)
        c.addWidget(self.show_overlay)
        self.show_regions = QCheckBox("Outline malignant regions")
        self.show_regions.setToolTip("Connected malignant tiles at or above the minimum confidence, "
                                     "with bounding boxes and areas")
        self.show_regions.toggled.connect(self.update_regions)
        c.addWidget(self.show_regions)
        self.regions_label = _hint("")
        self.regions_label.setVisible(False)
        c.addWidget(self.regions_label)
        self.region_list: list[Region] = []
        self._regions_key: tuple | None = None
        self._regions_worker: Worker | None = None
        self._regions_again = False
        form = QFormLayout()
        form.setHorizontalSpacing(10)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(45)
        self.opacity.valueChanged.connect(lambda v: self.view.overlay.setOpacity(v / 100))
        self.view.overlay.setOpacity(0.45)
        form.addRow("Opacity", self.opacity)
        self.mode_box = QComboBox()
        self.mode_box.addItem("Category (colour × confidence)", -1)
        self.mode_box.currentIndexChanged.connect(self.repaint_overlay)
        form.addRow("Show", self.mode_box)
        thr_row = QHBoxLayout()
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(0)
        self.threshold_label = QLabel("0%")
        self.threshold_label.setMinimumWidth(34)
        self.threshold.valueChanged.connect(self._threshold_changed)
        thr_row.addWidget(self.threshold, 1)
        thr_row.addWidget(self.threshold_label)
        form.addRow("Min. confidence", thr_row)
        c.addLayout(form)
        self.toggles = CategoryToggles()
        self.toggles.changed.connect(self.repaint_overlay)
        c.addWidget(self.toggles)
        hint = _hint("Colour = category, intensity = confidence. Hover or click a tile.")
        c.addWidget(hint)
        self.colorbar = ColorBar(self.lut)
        self.colorbar.setVisible(False)
        c.addWidget(self.colorbar)
        self.summary_label = _hint("")
        c.addWidget(self.summary_label)
        lay.addWidget(card)

        card, c = section("Tissue mask")
        self.tissue_box = QCheckBox("Preview what will be analysed")
        self.tissue_box.toggled.connect(self._tissue_toggled)
        c.addWidget(self.tissue_box)
        form = QFormLayout()
        self.tissue_method = QComboBox()
        self.tissue_method.addItem("Saturation (H&E)", "saturation")
        self.tissue_method.addItem("Optical density (pale tissue)", "od")
        self.tissue_method.setCurrentIndex(0 if self.defaults.tissue.method == "saturation" else 1)
        self.tissue_min = QDoubleSpinBox()
        self.tissue_min.setRange(0.0, 1.0)
        self.tissue_min.setSingleStep(0.01)
        self.tissue_min.setValue(self.defaults.tissue.min_threshold)
        self.tissue_min_obj = QDoubleSpinBox()
        self.tissue_min_obj.setRange(0, 1e7)
        self.tissue_min_obj.setDecimals(0)
        self.tissue_min_obj.setSingleStep(1000)
        self.tissue_min_obj.setSuffix(" µm²")
        self.tissue_min_obj.setValue(self.defaults.tissue.min_object_um2)
        self.tissue_frac = QDoubleSpinBox()
        self.tissue_frac.setRange(0.0, 1.0)
        self.tissue_frac.setSingleStep(0.05)
        self.tissue_frac.setValue(self.defaults.tissue_threshold)
        form.addRow("Method", self.tissue_method)
        form.addRow("Min. threshold", self.tissue_min)
        form.addRow("Min. object", self.tissue_min_obj)
        form.addRow("Tissue per tile ≥", self.tissue_frac)
        for w in (self.tissue_method, self.tissue_min, self.tissue_min_obj):
            sig = w.currentIndexChanged if isinstance(w, QComboBox) else w.valueChanged
            sig.connect(self._tissue_params_changed)
        self.tissue_form = QWidget()
        self.tissue_form.setLayout(form)
        self.tissue_form.setVisible(False)
        form.setContentsMargins(0, 0, 0, 0)
        c.addWidget(self.tissue_form)
        self.tissue_label = _hint("")
        c.addWidget(self.tissue_label)
        lay.addWidget(card)

        card, c = section("Tile inspector")
        self.inspector = TileInspector()
        c.addWidget(self.inspector)
        lay.addWidget(card)
        lay.addStretch(1)
        notice = _hint("Research use only — not for clinical diagnosis.", wrap=False)
        notice.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(notice)

        scroll = QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.dock = QDockWidget("", self)
        self.dock.setObjectName("panel")
        self.dock.setTitleBarWidget(QWidget())
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.dock.setWidget(scroll)
        self.dock.setMinimumWidth(380)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        m = bar.addMenu("&File")
        self.act_open = m.addAction("&Open slide or image…", QKeySequence.StandardKey.Open, self.choose_slide)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addAction("Open &model…", self.choose_model_file)
        m.addSeparator()
        ex = m.addMenu("&Export")
        self.export_actions = [
            ex.addAction("Annotated PNG of the whole slide…", lambda: self.export_dialog("png")),
            ex.addAction("Annotated PNG of the current view…", lambda: self.export_dialog("view")),
            ex.addAction("Tiles as CSV…", lambda: self.export_dialog("csv")),
            ex.addAction("Tiles as GeoJSON (QuPath)…", lambda: self.export_dialog("geojson")),
        ]
        m.addSeparator()
        m.addAction("&Quit", QKeySequence.StandardKey.Quit, self.close)
        m = bar.addMenu("&View")
        m.addAction("Fit slide", QKeySequence("Ctrl+0"), self.view.fit)
        m.addAction("Zoom in", QKeySequence.StandardKey.ZoomIn, lambda: self.view.zoom(1.5))
        m.addAction("Zoom out", QKeySequence.StandardKey.ZoomOut, lambda: self.view.zoom(1 / 1.5))
        act = QAction("Show heatmap", self, checkable=True, checked=True, shortcut=QKeySequence("H"))
        act.toggled.connect(self.show_overlay.setChecked)
        self.show_overlay.toggled.connect(act.setChecked)
        m.addAction(act)
        act = QAction("Outline malignant regions", self, checkable=True, checked=False, shortcut=QKeySequence("R"))
        act.toggled.connect(self.show_regions.setChecked)
        self.show_regions.toggled.connect(act.setChecked)
        m.addAction(act)
        m = bar.addMenu("&Analysis")
        self.act_analyse = m.addAction("&Analyse", QKeySequence("Ctrl+R"), self.start_analysis)
        self.act_cancel = m.addAction("&Cancel", QKeySequence("Esc"), self.cancel_analysis)
        m = bar.addMenu("&Help")
        m.addAction("About CellView", self._about)

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.hover_label = QLabel("")
        self.slide_label = QLabel("No slide open — File → Open, drop a file here, or pass one on the command line")
        self.provider_label = QLabel("")
        sb.addWidget(self.slide_label, 1)
        sb.addPermanentWidget(self.hover_label)
        sb.addPermanentWidget(self.provider_label)

    # ------------------------------------------------------------------------------ dialogs (overridable)

    def show_error(self, error: CellviewError, title: str = "CellView") -> None:
        """Message plus technical details; the window stays usable."""
        self.errorShown.emit(error.message, error.details)
        box = QMessageBox(QMessageBox.Icon.Warning, title, error.message, QMessageBox.StandardButton.Ok, self)
        if error.details:
            box.setDetailedText(error.details)
        box.open()

    def ask_mpp(self, opened: Opened) -> float | str | None:
        dlg = MppDialog(opened.info.name, opened.is_plain_image, self)
        return dlg.choice if dlg.exec() == QDialog.DialogCode.Accepted else None

    def confirm_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Replace file?", f"{path.name} already exists in {path.parent}.\n"
                                      "Do you want to replace it?")
        return answer == QMessageBox.StandardButton.Yes

    def ask_save_path(self, title: str, suggested: Path, filter_text: str) -> Path | None:
        name, _ = QFileDialog.getSaveFileName(self, title, str(suggested), filter_text,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        return Path(name) if name else None

    # ------------------------------------------------------------------------------ models

    def refresh_models(self, select: str | None = None) -> None:
        current = select or self.model_box.currentData()
        self._models = {name: str(p) for name, p in available_models().items()}
        for p in cfg.user_models():
            self._models.setdefault(_model_label(p), p)
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for name, path in self._models.items():
            self.model_box.addItem(name, str(Path(path).absolute()))
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
            self.show_error(exc, "Model not usable")
            return False
        path = str(Path(spec.onnx_path).absolute())
        if path not in {str(Path(p).absolute()) for p in available_models().values()}:
            cfg.add_user_model(path)
        self.refresh_models(select=path)
        return True

    def _model_changed(self, *args) -> None:
        path = self.model_box.currentData()
        if not path:
            self.model_info.setText("Put models in models/<name>/model.onnx with model.json, or open one.")
            return
        try:
            with open(Path(path).with_suffix(".json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            self.model_info.setText(
                f"{meta.get('num_classes', '?')} classes · {meta.get('patch_size_pixels', '?')} px tiles at "
                f"{meta.get('spacing_um_px', '?')} µm/px")
        except (OSError, ValueError):
            self.model_info.setText(Path(path).name)

    def choose_model_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open model", str(cfg.get("last_model_dir", "")),
                                              "ONNX models (*.onnx)")
        if name:
            cfg.put("last_model_dir", str(Path(name).parent))
            self.add_model(name)

    # ------------------------------------------------------------------------------ opening

    def choose_slide(self) -> None:
        exts = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
        name, _ = QFileDialog.getOpenFileName(self, "Open slide or image", str(cfg.get("last_open_dir", "")),
                                              f"Slides and images ({exts});;All files (*)")
        if name:
            cfg.put("last_open_dir", str(Path(name).parent))
            self.open_path(name)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = cfg.recent_files()
        for path in files:
            self.recent_menu.addAction(Path(path).name, lambda p=path: self.open_path(p)).setToolTip(path)
        if not files:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if not urls:
            return
        path = urls[0].toLocalFile()
        if path.lower().endswith(".onnx"):
            self.add_model(path)
        else:
            self.open_path(path)

    def open_path(self, path: str | Path, mpp_um: float | None = None) -> None:
        """Open off the main thread; ``slideOpened`` fires when the thumbnail is on screen."""
        self.close_slide()
        self.slide_label.setText(f"Opening {Path(path).name}…")
        worker = Worker(lambda cancel: open_task(str(path), mpp_um), "open")
        worker.item.connect(lambda item, w=worker: self._on_opened(item) if w is self._open_worker else None)
        self._open_worker = worker
        worker.failed.connect(lambda exc: self.show_error(exc, "Cannot open slide"))
        self._start(worker)

    def close_slide(self) -> None:
        """Stop everything that belongs to the current slide; late events from its workers are ignored."""
        self.cancel_analysis()
        self.analysis = None
        if self._open_worker is not None:  # a slide still opening must not appear after this
            self._open_worker.cancel()
            self._open_worker = None
        self._repaint_timer.stop()
        if self._tissue_worker is not None:
            self._tissue_worker.cancel()
            self._tissue_worker = None
        for w in self.loaders:
            w.cancel()
        if self.requests is not None:
            self.requests.close()
        self.loaders, self.requests = [], None
        self.opened, self.result, self._run, self.mpp_choice = None, None, None, None
        self._partial = None
        self.view.clear_slide()
        self.update_regions()
        self.inspector.clear()
        self.toggles.set_counts(None)
        self.summary_label.setText("")
        self.tissue_label.setText("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.rate_label.setText("")
        self._set_running(False)

    def _on_opened(self, opened: Opened | SharperThumbnail) -> None:
        if isinstance(opened, SharperThumbnail):
            if self.opened is not None and self.opened.path == opened.path:
                self.opened = replace(self.opened, thumbnail=opened.thumbnail, base=opened.base)
                self.view.set_base_image(self.opened)
            return
        info = opened.info
        if info.mpp is None:
            recorded = cfg.recorded_mpp(info.fingerprint)
            if recorded is not None:
                self.mpp_choice = recorded
            elif self.defaults.mpp_um:
                self.mpp_choice = self.defaults.mpp_um
            elif self.defaults.whole_image:
                self.mpp_choice = WHOLE_IMAGE
            if isinstance(self.mpp_choice, float):
                opened = replace(opened, info=replace(info, mpp=Mpp(self.mpp_choice, self.mpp_choice, "user")))
        self.opened = opened
        self.requests = TileRequests()
        self.view.set_slide(opened, self.requests)
        for i in range(LOADER_THREADS):
            w = Worker(lambda cancel, r=self.requests: tile_loader_task(opened.path, r, cancel), f"tiles-{i}")
            w.item.connect(self._on_tile)
            w.failed.connect(lambda exc: self.statusBar().showMessage(f"Tile read failed: {exc.message}", 5000))
            self.loaders.append(w)
            self._start(w)
        cfg.add_recent_file(opened.path)
        self.setWindowTitle(f"{info.name} — CellView")
        self._update_slide_label()
        self.slideOpened.emit(opened)
        self.view.update_tiles()
        if self.tissue_box.isChecked():
            self.update_tissue_preview()
        if self.auto_box.isChecked():
            QTimer.singleShot(0, self.start_analysis)

    def _update_slide_label(self) -> None:
        if self.opened is None:
            return
        info = self.opened.info
        w, h = info.dimensions
        if self.mpp_choice == WHOLE_IMAGE:
            scale = "scale unknown: classified as one image"
        elif info.mpp is None:
            scale = "pixel size unknown"
        else:
            scale = info.mpp.describe().replace("from user", "entered by you")
            scale += f" · {w * info.mpp.x_um / 1000:.2f} × {h * info.mpp.y_um / 1000:.2f} mm"
        levels = len(info.level_dimensions)
        self.slide_label.setText(f"{info.name}  ·  {w:,} × {h:,} px  ·  {levels} level{'s' * (levels > 1)}  ·  {scale}")

    def _on_tile(self, item: object) -> None:
        if isinstance(item, TileLoaded):
            self.view.tile_loaded(item)
        elif isinstance(item, PatchLoaded) and self._run and item.grid_id == id(self._run["grid"]):
            if item.index == self.inspector.index:
                self.inspector.set_patch(item.rgb, item.nuclei, item.contoured)
                self.patchShown.emit(item.index)

    # ------------------------------------------------------------------------------ workers

    def _start(self, worker: Worker) -> None:
        self._workers.add(worker)
        worker.done.connect(lambda w=worker: self._workers.discard(w))
        worker.start()

    def _resolve_mpp(self) -> bool:
        """Make sure the scale is known (or whole-image chosen) before a run; asks the user if needed."""
        if self.opened is None:
            return False
        if self.opened.info.mpp is not None or self.mpp_choice == WHOLE_IMAGE:
            return True
        choice = self.ask_mpp(self.opened)
        if choice is None:
            self.statusBar().showMessage("Analysis needs the pixel size; nothing was run.", 8000)
            return False
        self.mpp_choice = choice
        if isinstance(choice, float):
            cfg.record_mpp(self.opened.info.fingerprint, choice)
            info = replace(self.opened.info, mpp=Mpp(choice, choice, "user"))
            self.opened = replace(self.opened, info=info)
            self.view.set_opened(self.opened)
        self._update_slide_label()
        return True

    def current_params(self) -> AnalysisParams:
        d = self.defaults
        tissue = replace(d.tissue, method=self.tissue_method.currentData(), min_threshold=self.tissue_min.value(),
                         max_threshold=max(d.tissue.max_threshold, self.tissue_min.value()),
                         min_object_um2=self.tissue_min_obj.value())
        whole = self.mpp_choice == WHOLE_IMAGE or d.whole_image
        mpp = self.mpp_choice if isinstance(self.mpp_choice, float) else d.mpp_um
        return replace(d, tissue=tissue, tissue_threshold=self.tissue_frac.value(), whole_image=whole,
                       nuclei=self.nuclei_box.isChecked(),
                       mpp_um=None if whole else mpp, device=self.device_box.currentData())

    def start_analysis(self) -> None:
        if self.opened is None:
            self.statusBar().showMessage("Open a slide first.", 5000)
            return
        if self.analysis is not None:
            return
        model_path = self.model_box.currentData()
        if not model_path:
            self.show_error(ModelError("No model is selected.", "Put a model in models/<name>/ or use Open… "
                                                                 "next to the model list."), "No model")
            return
        if not self._resolve_mpp():
            return
        params = self.current_params()
        path = self.opened.path
        self.result, self._run, self._partial = None, None, None
        self.view.set_overlay(None)
        self.view.set_label(None)
        self.update_regions()
        self.inspector.clear()
        self.view.set_selection(None)
        self.provider_label.setText(f"Loading {Path(model_path).parent.name}…")
        self.progress.setRange(0, 0)
        self.progress.setFormat("Preparing…")
        self.rate_label.setText("Loading model and finding tissue…")
        use_cache = self.use_cache
        worker = Worker(lambda cancel: analysis_task(path, model_path, params, cancel, use_cache), "analysis")
        worker.item.connect(lambda ev, w=worker: self._on_analysis_event(ev) if w is self.analysis else None)
        worker.failed.connect(lambda exc, w=worker: self.show_error(exc, "Analysis failed") if w is self.analysis else None)
        worker.done.connect(lambda w=worker: self._on_analysis_done(w))
        self.analysis = worker
        self._params = params
        self._set_running(True)
        self.analysisStarted.emit(worker)
        self._start(worker)
        self._repaint_timer.start()

    def cancel_analysis(self) -> None:
        if self.analysis is not None:
            self.analysis.cancel()
            self.progress.setFormat("Cancelling… %v / %m tiles")

    def _set_running(self, running: bool) -> None:
        self.analyse_btn.setEnabled(not running)
        self.act_analyse.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.act_cancel.setEnabled(running)
        self.model_box.setEnabled(not running)
        self.device_box.setEnabled(not running)
        for act in self.export_actions:
            act.setEnabled(self.result is not None and not running)

    def _on_analysis_event(self, ev: object) -> None:
        if isinstance(ev, ModelReady):
            self.spec = ev.spec
            self.provider_label.setText(ev.description)
            self.provider_label.setObjectName("warn" if ev.warn else "")
            self.provider_label.setStyle(self.provider_label.style())
            self.provider_label.setToolTip(ev.fallback_message or ev.description)
            self._fill_modes(ev.spec)
        elif isinstance(ev, Started):
            n = ev.total
            self._partial = None
            self._run = {
                "grid": ev.grid, "tissue": ev.tissue, "provider": ev.provider,
                "probs": np.full((n, self.spec.num_classes), np.nan, np.float32),
                "state": np.zeros(n, np.uint8),
                "nuclei": TileNuclei.empty(n, "px2" if self._mpp_um() is None else "um2")
                if self._params.nuclei else None,
            }
            self.progress.setRange(0, max(1, n))
            self.progress.setValue(0)
            self.progress.setFormat("%v / %m tiles")
            self.rate_label.setText("Found in the result cache" if ev.from_cache else f"{n:,} tissue tiles to classify")
            if ev.tissue is not None and self.tissue_box.isChecked():
                self._show_tissue(ev.tissue)
        elif isinstance(ev, BatchDone) and self._run is not None:
            self._run["probs"][ev.indices] = ev.probs
            self._run["state"][ev.indices] = np.where(ev.failed, TileState.FAILED, TileState.DONE)
            if ev.nuclei is not None and self._run["nuclei"] is not None:
                self._run["nuclei"].values[ev.indices] = ev.nuclei
            self.progress.setValue(ev.done)
            self.rate_label.setText(f"{ev.tiles_per_s:.1f} tiles/s  ·  ETA {format_eta(ev.eta_s)}  ·  "
                                    f"{format_eta(ev.elapsed_s)} elapsed")
            self._dirty = True
        elif isinstance(ev, Finished):
            self._finish(ev.result)

    def _finish(self, result: AnalysisResult) -> None:
        if result.slide.mpp is None and self.opened is not None and self.opened.info.mpp is not None:
            result = replace(result, slide=replace(result.slide, mpp=self.opened.info.mpp))
        self.result = result
        grid = result.grid
        self._run = {"grid": grid, "tissue": result.tissue, "provider": result.provider, "probs": result.probs,
                     "nuclei": getattr(result, "nuclei", None),
                     "state": result.state}
        self.progress.setRange(0, max(1, result.n_tiles))
        self.progress.setValue(result.n_done + result.n_failed)
        status = {"complete": "Done", "cancelled": "Cancelled"}.get(result.status, result.status)
        self.progress.setFormat(f"{status}: %v / %m tiles")
        rate = result.timings.get("tiles_per_s")
        if result.from_cache:
            self.rate_label.setText("Loaded from the result cache (same slide, model and settings)")
        elif rate:
            self.rate_label.setText(f"{rate:.1f} tiles/s  ·  {format_eta(result.timings.get('total_s'))} total")
        self._dirty = False
        self.repaint_overlay()
        self._on_analysis_done(self.analysis)  # the thread only closes its slide now: a re-run may start
        self.analysisFinished.emit(result)

    def _on_analysis_done(self, worker: Worker) -> None:
        if worker is not self.analysis:
            return
        self.analysis = None
        self._repaint_timer.stop()
        if self._run is None:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("idle")
            self.rate_label.setText("")
        self._set_running(False)

    def _fill_modes(self, spec: ModelSpec) -> None:
        current = self.mode_box.currentData()
        self.mode_box.blockSignals(True)
        while self.mode_box.count() > 1:
            self.mode_box.removeItem(1)
        for i, name in enumerate(spec.class_names):
            self.mode_box.addItem(f"Probability of {name}", i)
        idx = self.mode_box.findData(current)
        self.mode_box.setCurrentIndex(idx if idx >= 0 else 0)
        self.mode_box.blockSignals(False)

    # ------------------------------------------------------------------------------ heatmap

    def partial_result(self) -> AnalysisResult | None:
        """The finished result, or one built from the batches so far (rebuilt once per repaint)."""
        if self.result is not None:
            return self.result
        if self._run is None or self.spec is None or self.opened is None:
            return None
        if self._partial is None:
            self._partial = self._build_partial()
        return self._partial

    def _build_partial(self) -> AnalysisResult:
        return AnalysisResult(
            slide=self.opened.info, model=ModelInfo.from_spec(self.spec), params=self._params,
            grid=self._run["grid"], probs=self._run["probs"], state=self._run["state"],
            provider=self._run["provider"], status="running", tissue=self._run["tissue"], nuclei=self._run["nuclei"],
        )

    def _flush_repaint(self) -> None:
        if self._dirty:
            self._dirty = False
            self._partial = None
            self.repaint_overlay()

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value}%")
        self.repaint_overlay()

    def overlay_rgba(self, result: AnalysisResult) -> np.ndarray:
        """The overlay image, one pixel per grid cell, exactly as painted."""
        k = self.mode_box.currentData()
        min_conf = self.threshold.value() / 100
        if k is None or k < 0:
            return result.category_rgba(min_confidence=min_conf, categories=self.toggles.selected())
        heat = result.heatmap(int(k))
        conf = np.full(result.grid.shape, np.nan, np.float32)
        d = result.done
        conf[result.grid.grid_row[d], result.grid.grid_col[d]] = result.confidence[d]
        show = np.isfinite(heat) & (np.nan_to_num(conf) >= min_conf)
        idx = np.clip(np.nan_to_num(heat) * (len(self.lut) - 1), 0, len(self.lut) - 1).astype(np.int64)
        rgba = np.zeros((*heat.shape, 4), np.uint8)
        rgba[..., :3] = self.lut[idx]
        rgba[..., 3] = np.where(show, 255, 0)
        return rgba

    def repaint_overlay(self, *args) -> None:
        result = self.partial_result()
        k = self.mode_box.currentData()
        self.colorbar.setVisible(k is not None and k >= 0)
        self.toggles.setEnabled(k is None or k < 0)
        if k is not None and k >= 0 and self.spec is not None:
            self.colorbar.set_title(f"P({self.spec.class_names[k]})")
        if result is None:
            self.view.set_overlay(None)
            return
        g = result.grid
        rgba = self.overlay_rgba(result)
        self.view.set_overlay(rgba, QRectF(0, 0, g.n_cols * g.stride_l0_x, g.n_rows * g.stride_l0_y))
        # One tile covering the whole image is shown as a label, not as a tint over the cell.
        self.view.overlay.setVisible(self.show_overlay.isChecked() and not g.whole_image)
        self.toggles.set_counts(result.category_counts())
        self.summary_label.setText(self._summary_text(result))
        self._update_single_label(result)
        if self.inspector.index >= 0 and self.inspector.index < g.n_tiles:
            self.inspector.show_tile(self.inspector.index, result, self._mpp_um())
        if self.result is None and self.analysis is not None:
            if not self._regions_timer.isActive():  # throttled while batches stream in
                self._regions_timer.start()
        else:
            self._regions_timer.stop()
            self.update_regions()
        self.overlayPainted.emit()

    def update_regions(self, *args) -> None:
        """Malignant regions of the finished tiles at the viewer's confidence threshold, when shown.

        Computed in a worker, one at a time (a request during a computation follows it); skipped
        when neither the result, its progress nor the threshold changed (a category toggle or a
        heatmap mode switch repaints the overlay but cannot change the regions).
        """
        result = self.partial_result() if self.show_regions.isChecked() else None
        if result is None or result.grid.whole_image:
            self._regions_key, self._regions_worker, self._regions_again = None, None, False
            self.region_list = []
            self.view.set_regions(())
            self.regions_label.setVisible(False)
            self.regionsShown.emit()
            return
        min_conf = self.threshold.value() / 100
        key = (result, result.n_done, min_conf)
        if self._regions_key is not None and self._regions_key[0] is result and self._regions_key[1:] == key[1:]:
            return
        if self._regions_worker is not None:
            self._regions_again = True
            return
        self._regions_key = key
        # a snapshot: batches keep arriving in the live arrays while the worker reads
        snapshot = replace(result, probs=result.probs.copy(), state=result.state.copy())
        worker = Worker(lambda cancel: regions_task(snapshot, min_conf), "regions")
        worker.item.connect(
            lambda regions, w=worker: self._show_regions(regions, min_conf) if w is self._regions_worker else None)
        worker.failed.connect(lambda exc: self.statusBar().showMessage(f"Regions failed: {exc.message}", 8000))
        worker.done.connect(lambda w=worker: self._regions_done(w))
        self._regions_worker = worker
        self._start(worker)

    def _show_regions(self, regions: list[Region], min_conf: float) -> None:
        self.region_list = regions
        self.view.set_regions(regions[:MAX_REGIONS_DRAWN])
        self.regions_label.setText(self._regions_text(regions, min_conf))
        self.regions_label.setVisible(True)
        self.regionsShown.emit()

    def _regions_done(self, worker: Worker) -> None:
        if worker is not self._regions_worker:
            return
        self._regions_worker = None
        if self._regions_again:
            self._regions_again = False
            self.update_regions()

    @staticmethod
    def _regions_text(regions: list[Region], min_conf: float) -> str:
        where = f"malignant at ≥ {min_conf:.0%} confidence" if min_conf > 0 else "malignant"
        if not regions:
            return f"No region: no tile is {where}."
        text = f"{len(regions)} region{'s' * (len(regions) > 1)} of tiles {where}; largest {regions[0].label()}"
        if len(regions) > MAX_REGIONS_DRAWN:
            text += f"; the {MAX_REGIONS_DRAWN} largest are drawn"
        return text + "."

    def _summary_text(self, result: AnalysisResult) -> str:
        text = f"{result.n_done:,} of {result.n_tiles:,} tiles classified"
        if result.n_failed:
            text += f", {result.n_failed} unreadable"
        if result.status == "cancelled":
            text += " (run cancelled: partial result)"
        return text + "."

    def _update_single_label(self, result: AnalysisResult) -> None:
        if not (result.grid.whole_image or result.n_tiles == 1):
            self.view.set_label(None)
            return
        level = result.image_level()
        if not level["pred_class"]:
            self.view.set_label(None)
            return
        color = CATEGORY_COLORS[level["pred_category"]]
        self.view.set_label(
            f"<div style='background-color:rgba(20,22,25,215); padding:6px 10px; font-size:15pt;'>"
            f"<span style='color:{color}; font-weight:700;'>{level['pred_class']}</span>"
            f"<span style='color:#e6e9ec;'>&nbsp;{level['confidence']:.0%}</span>"
            f"<span style='color:#aab2b9; font-size:10pt;'>&nbsp;({level['pred_category']})</span></div>")

    def _mpp_um(self) -> float | None:
        info = self.opened.info if self.opened else None
        return info.mpp.um if info and info.mpp and self.mpp_choice != WHOLE_IMAGE else None

    # ------------------------------------------------------------------------------ tissue preview

    def _tissue_toggled(self, on: bool) -> None:
        self.view.tissue_item.setVisible(on)
        self.tissue_form.setVisible(on)
        self.tissue_label.setVisible(on)
        if on:
            self.update_tissue_preview()

    def _tissue_params_changed(self, *args) -> None:
        if self.tissue_box.isChecked():
            self._tissue_timer.start()

    def update_tissue_preview(self) -> None:
        if self.opened is None or not self.tissue_box.isChecked():
            return
        if self._tissue_worker is not None:
            self._tissue_worker.cancel()
        params: TissueParams = self.current_params().tissue
        mpp = self._mpp_um()
        path = self.opened.path
        self.tissue_label.setText("Computing tissue mask…")
        worker = Worker(lambda cancel: tissue_task(path, mpp, params), "tissue")
        worker.item.connect(self._on_tissue)
        worker.failed.connect(lambda exc: self.show_error(exc, "Tissue detection failed"))
        self._tissue_worker = worker
        self._start(worker)

    def _on_tissue(self, preview: TissuePreview) -> None:
        if self.sender() is not self._tissue_worker:
            return
        self._show_tissue(preview.mask)

    def _show_tissue(self, mask) -> None:
        m = mask.mask
        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[~m] = (10, 12, 14, 170)  # skipped: dimmed
        edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rgba[edge] = (0, 229, 255, 255)  # tissue outline
        self.view.set_tissue(rgba, QRectF(0, 0, m.shape[1] * mask.downsample, m.shape[0] * mask.downsample))
        self.view.tissue_item.setVisible(self.tissue_box.isChecked())
        self.tissue_label.setText(f"{mask.fraction:.0%} of the slide is tissue (threshold {mask.threshold:.3f}). "
                                  "Dimmed areas are skipped.")
        self.tissueShown.emit()

    # ------------------------------------------------------------------------------ inspector

    def _view_clicked(self, l0_x: float, l0_y: float) -> None:
        result = self.partial_result()
        if result is None:
            return
        index = result.grid.tile_at(l0_x, l0_y)
        if index >= 0:
            self.select_tile(index)
        self.view.setFocus()

    def select_tile(self, index: int) -> None:
        result = self.partial_result()
        if result is None or not 0 <= index < result.n_tiles:
            return
        self.inspector.show_tile(index, result, self._mpp_um())
        self.view.set_selection(result.grid.rect(index))
        if self.requests is not None:
            self.requests.add_patch(PatchRequest(index, result.grid, self._mpp_um(), self.inspector.PATCH_PX))

    def step_selection(self, d_row: int, d_col: int) -> None:
        """Move to the nearest tile in that direction along the row or column."""
        result = self.partial_result()
        if result is None:
            return
        g = result.grid
        if self.inspector.index < 0:
            if g.n_tiles:
                self.select_tile(0)
            return
        ig = g.index_grid()
        r, c = int(g.grid_row[self.inspector.index]), int(g.grid_col[self.inspector.index])
        while True:
            r, c = r + d_row, c + d_col
            if not (0 <= r < g.n_rows and 0 <= c < g.n_cols):
                return
            if ig[r, c] >= 0:
                self.select_tile(int(ig[r, c]))
                x, y, w, h = g.rect(int(ig[r, c]))
                if not self.view.visible_l0_rect().contains(QRectF(x, y, w, h)):
                    self.view.center_on(x + w / 2, y + h / 2)
                return

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in ARROW_STEPS:
            self.step_selection(*ARROW_STEPS[event.key()])
            return
        super().keyPressEvent(event)

    def _view_hovered(self, l0_x: float, l0_y: float) -> None:
        result = self.partial_result()
        if result is None:
            self.hover_label.setText("")
            return
        index = result.grid.tile_at(l0_x, l0_y)
        if index < 0 or not result.done[index]:
            self.hover_label.setText("")
            QToolTip.hideText()
            return
        cls = result.model.class_names[int(result.pred_class[index])]
        text = f"{cls} {float(result.confidence[index]):.0%}"
        self.hover_label.setText(text)
        pos = self.view.mapToGlobal(self.view.mapFromScene(self.view.vb.mapViewToScene(QPointF(l0_x, l0_y))))
        QToolTip.showText(pos, text, self.view)

    # ------------------------------------------------------------------------------ export

    def export_dialog(self, kind: str) -> Path | None:
        """Ask where to save (remembering the folder), never overwrite silently, then write."""
        if self.result is None or self.opened is None:
            return None
        suffix = {"png": ("-heatmap.png", "PNG image (*.png)"), "view": ("-view.png", "PNG image (*.png)"),
                  "csv": (".csv", "CSV (*.csv)"), "geojson": (".geojson", "GeoJSON (*.geojson *.json)")}[kind]
        folder = Path(str(cfg.get("last_export_dir", "") or Path(self.opened.path).parent))
        path = self.ask_save_path("Export", folder / (self.opened.info.name + suffix[0]), suffix[1])
        if path is None:
            return None
        cfg.put("last_export_dir", str(path.parent))
        return self.export_to(kind, path)

    def export_to(self, kind: str, path: Path) -> Path | None:
        path = Path(path)
        if path.exists() and not self.confirm_overwrite(path):
            return None
        result = self.result
        assert result is not None and self.opened is not None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            if kind == "csv":
                export.atomic_write_text(path, export.csv_text(result))
            elif kind == "geojson":
                export.atomic_write_text(path, json.dumps(export.geojson_dict(result)))
            elif kind == "png":
                export.atomic_write_bytes(path, export.annotated_png(result, self.opened.thumbnail,
                                                                     opacity=self.opacity.value() / 100))
            elif kind == "view":
                export.atomic_write_bytes(path, self.render_view_png())
            else:
                raise ValueError(kind)
        except CellviewError as exc:
            self.show_error(exc, "Export failed")
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.statusBar().showMessage(f"Saved {path}", 8000)
        return path

    def render_view_png(self) -> bytes:
        """The canvas as seen (heatmap, scale bar) with a legend panel on the right."""
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice

        self.view.overview.hide()
        shot = self.view.grab().toImage()
        self.view.overview.show()
        result = self.result
        assert result is not None
        panel_w = 300
        out = QImage(shot.width() + panel_w, shot.height(), QImage.Format.Format_RGB32)
        out.fill(QColor("white"))
        p = QPainter(out)
        p.drawImage(0, 0, shot)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        x, y = shot.width() + 16, 28
        f = QFont(self.font())
        f.setPointSize(15)
        f.setBold(True)
        p.setFont(f)
        p.setPen(QColor(20, 20, 20))
        p.drawText(x, y, "CellView")
        f.setPointSize(9)
        f.setBold(False)
        p.setFont(f)
        y += 26
        rect = self.view.visible_l0_rect()
        lines = [f"Slide: {result.slide.name}"[:40], f"Model: {result.model.name} {result.model.version}"[:40],
                 f"Run on: {result.provider}",
                 f"View: x {max(0, rect.x()):,.0f}  y {max(0, rect.y()):,.0f} (level 0)"]
        if self._mpp_um():
            lines.append(f"Field of view: {format_um(round(rect.width() * self._mpp_um()))} wide")
        for line in lines:
            p.drawText(x, y, line)
            y += 18
        y += 10
        counts = result.category_counts()
        total = max(result.n_done, 1)
        for cat in CATEGORIES:
            p.fillRect(QRectF(x, y - 12, 14, 14), QColor(CATEGORY_COLORS[cat]))
            p.drawText(x + 22, y, f"{cat}")
            p.drawText(x + 120, y, f"{counts[cat]:>6,}  {counts[cat] / total:.0%}")
            y += 22
        y += 6
        p.setPen(QColor(90, 90, 90))
        p.drawText(x, y, "Colour = category; intensity = confidence.")
        if result.status != "complete":
            y += 18
            p.setPen(QColor(180, 0, 0))
            p.drawText(x, y, f"Run {result.status}: partial result.")
        p.setPen(QColor(90, 90, 90))
        p.drawText(x, out.height() - 14, "Research use only. Not for clinical diagnosis.")
        p.end()
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        out.save(buf, "PNG")
        return bytes(data.data())

    # ------------------------------------------------------------------------------ misc

    def _about(self) -> None:
        from cellview import __version__

        QMessageBox.about(self, "About CellView",
                          f"<b>CellView {__version__}</b><br>Whole-slide tile classification "
                          "(malignant / benign / normal) with ONNX models.<br><br>Research use only.")

    def shutdown(self, timeout_ms: int = 15000) -> bool:
        """Stop every worker (analysis first) and wait for their threads; True if all stopped."""
        self._repaint_timer.stop()
        if self.requests is not None:
            self.requests.close()
        workers = list(self._workers)
        for w in workers:
            w.cancel()
        return all(w.wait(timeout_ms) for w in workers)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)
