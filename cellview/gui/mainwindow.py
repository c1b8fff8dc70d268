"""The main window: a thin view of ``cellview.viewer.model.ViewerModel``.

Slide canvas in the middle, one side panel (model, analysis, overlay, tissue mask, tile
inspector). Widgets only turn input into model calls, and model events into what they show, so
the state lives in one place. The kiosk (``cellview.gui.kiosk.KioskWindow``) subclasses this
window, lays the same widgets out for touch and drives the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QAbstractSlider,
    QAbstractSpinBox,
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
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.classifier import DEVICES, TTA_MODES
from cellview.analysis.model_lookup import DEFAULT_MODEL, available_models
from cellview.analysis.model_spec import CATEGORY_COLORS, PRECISION_CHOICES, PRECISIONS, ModelSpec
from cellview.analysis.morphology import Region
from cellview.analysis.results import AnalysisParams, AnalysisResult, plural
from cellview.analysis.stain import STAIN_METHODS
from cellview.base.errors import CellviewError
from cellview.gui import settings as cfg
from cellview.gui.legendview import paint_legend
from cellview.gui.panels import (
    CategoryToggles,
    ColorBar,
    DomainBanner,
    FilterNotice,
    TileInspector,
    section,
    show_model_card,
)
from cellview.gui.slideview import ARROW_STEPS, SlideView
from cellview.gui.tasks import PatchLoaded, PatchRequest, TileLoaded, TileRequests, tile_loader_task
from cellview.gui.worker import QtRunner, Worker
from cellview.outputs.legend import (
    STAIN_LABELS,
    TTA_LABELS,
    category_rows,
    describe_legend,
    describe_run_options,
    format_um,
    out_of_domain_row,
)
from cellview.outputs.overlay import (
    PER_SLIDE,
    STYLES,
    category_contours,
    counted_text,
    describe_colours,
    describe_overrides,
    fill_rgba,
    hatches_out_of_domain,
    out_of_domain_runs,
    probability_lut,
)
from cellview.slides.levels import describe_skipped
from cellview.slides.slide import SUPPORTED_SUFFIXES
from cellview.viewer.analysis import ModelReady, Progress
from cellview.viewer.events import Event
from cellview.viewer.explain import ExplainState
from cellview.viewer.model import ViewerModel
from cellview.viewer.overlay import DomainNotice
from cellview.viewer.slide import WHOLE_IMAGE, Opened

LOADER_THREADS = 2
REPAINT_INTERVAL_MS = 100
REGIONS_INTERVAL_MS = 500
"""While batches stream in, malignant regions are recomputed and redrawn at most this often."""
MAX_REGIONS_DRAWN = 200
STYLE_LABELS = {"outline": "Outlines (stain stays visible)", "fill": "Fill (colour × confidence)",
                "fill+outline": "Fill and outlines"}
EXPORT_FILTERS = {"png": "PNG image (*.png)", "view": "PNG image (*.png)", "csv": "CSV (*.csv)",
                  "geojson": "GeoJSON (*.geojson *.json)", "json": "JSON (*.json)"}

__all__ = ["WHOLE_IMAGE", "MainWindow", "format_eta", "probability_lut"]


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


class WheelGuard(QObject):
    """A wheel turned over a slider, combo box or spin box that does not have the focus scrolls the
    panel instead of changing the value (click the control first to wheel it)."""

    def __init__(self, scroll: QScrollArea) -> None:
        super().__init__(scroll)
        self.scroll = scroll

    def guard(self, root: QWidget) -> None:
        for kind in (QAbstractSlider, QComboBox, QAbstractSpinBox):
            for widget in root.findChildren(kind):
                if isinstance(widget, QAbstractSlider) and widget.parent() is self.scroll:
                    continue  # the panel's own scroll bars
                widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
                widget.installEventFilter(self)

    @staticmethod
    def takes_wheel(widget: QWidget) -> bool:
        """A control takes the wheel once the user has clicked (focused) it."""
        return widget.hasFocus()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Wheel and isinstance(obj, QWidget) and not self.takes_wheel(obj):
            QApplication.sendEvent(self.scroll.verticalScrollBar(), event)
            return True
        return False


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
    domainShown = Signal(object)  # DomainNotice, once the banner, the legend row and the overlay show it

    LABELLING = True
    """Tile labels and *Adapt model…* (cellview.gui.labelpanel); the kiosk has none."""

    def __init__(self, analysis_defaults: AnalysisParams | None = None) -> None:
        super().__init__()
        self.runner = QtRunner(self)
        self.runner.started.connect(self._on_job_started)
        self.model = ViewerModel(self.runner, analysis_defaults, store=cfg.STORE, labelling=self.LABELLING)
        self.model.slide.ask_scale = lambda opened: self.ask_mpp(opened)
        self.model.analysis.auto_analyse = str(cfg.get("auto_analyse", "true")).lower() == "true"
        self.setWindowTitle("CellView")
        self.setAcceptDrops(True)
        self.resize(1600, 1000)

        self.requests: TileRequests | None = None
        self.loaders: list[Worker] = []
        self._analysis_worker: Worker | None = None
        self._models: dict[str, str] = {}
        self._dirty = False
        self._shut_down = False
        self.lut = probability_lut()

        self.view = SlideView()
        self.view.clicked.connect(self._view_clicked)
        self.view.hovered.connect(self._view_hovered)
        self.view.stepKey.connect(self.step_selection)
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.view.empty_hint.openRequested.connect(self.choose_slide)
        self.view.empty_hint.recentRequested.connect(self.open_path)
        self.domain_banner = DomainBanner()
        self.domain_banner.showAnywayToggled.connect(self.model.overlay.show_calls_anyway)
        self.canvas = QWidget()  # the banner above the slide (the kiosk moves the banner into its panel)
        canvas = QVBoxLayout(self.canvas)
        canvas.setContentsMargins(0, 0, 0, 0)
        canvas.setSpacing(0)
        canvas.addWidget(self.domain_banner)
        canvas.addWidget(self.view, 1)
        self.setCentralWidget(self.canvas)
        self._build_panel()
        self._build_menus()
        self._build_status()
        if self.LABELLING:
            from cellview.gui.labelpanel import install_labels

            self.labels, self.labels_panel = install_labels(self, self.panel_layout, self._labels_at)

        self._repaint_timer = QTimer(self, interval=REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self._flush_repaint)
        self._tissue_timer = QTimer(self, singleShot=True, interval=300)
        self._tissue_timer.timeout.connect(self.update_tissue_preview)
        self._regions_timer = QTimer(self, singleShot=True, interval=REGIONS_INTERVAL_MS)
        self._regions_timer.timeout.connect(self.update_regions)
        self._connect_model()
        self.refresh_models()
        self._show_recent()
        self._sync_actions()

    # ------------------------------------------------------------------------------ model wiring

    def _connect_model(self) -> None:
        slide = self.model.slide.events
        slide.slide.connect(self._on_slide)
        slide.slide_image.connect(self._on_slide_image)
        slide.opening.connect(self._on_opening)
        settings = self.model.settings.events
        settings.model.connect(self._on_model_selected)
        settings.settings.connect(lambda e: (self._show_run_options(), self._update_summary()))
        settings.model_options.connect(lambda e: self._show_run_options())
        analysis = self.model.analysis.events
        analysis.model_ready.connect(self._on_model_ready)
        analysis.running.connect(self._on_running)
        analysis.progress.connect(self._on_progress)
        analysis.tiles.connect(self._on_tiles)
        analysis.result.connect(self._on_result)
        overlay = self.model.overlay.events
        overlay.overlay.connect(self._on_overlay)
        overlay.domain.connect(self._on_domain)
        selection = self.model.selection.events
        selection.selection.connect(self._on_selection)
        selection.hover.connect(self._on_hover)
        self.model.regions.events.regions.connect(self._on_regions)
        self.model.tissue.events.tissue.connect(self._on_tissue)
        explain = self.model.explain.events
        explain.explanation.connect(self._on_explanation)
        explain.stain.connect(self._request_patch)
        ev = self.model.events
        ev.status.connect(lambda e: self.statusBar().showMessage(e.value, 8000))
        ev.error.connect(lambda e: self.show_error(e.value[1], e.value[0]))

    def _on_job_started(self, name: str, worker: Worker) -> None:
        if name == "analysis":
            self._analysis_worker = worker
            self.analysisStarted.emit(worker)

    # -- state the tests, benchmarks and scripts read -------------------------------------------

    @property
    def defaults(self) -> AnalysisParams:
        return self.model.settings.defaults

    @property
    def use_cache(self) -> bool:
        return self.model.analysis.use_cache

    @use_cache.setter
    def use_cache(self, value: bool) -> None:
        self.model.analysis.use_cache = bool(value)

    @property
    def opened(self) -> Opened | None:
        return self.model.slide.opened

    @property
    def result(self) -> AnalysisResult | None:
        return self.model.analysis.result

    @property
    def mpp_choice(self) -> float | str | None:
        return self.model.slide.mpp_choice

    @property
    def spec(self) -> ModelSpec | None:
        return self.model.analysis.spec

    @property
    def analysis(self) -> Worker | None:
        """The running analysis' worker (None when none runs)."""
        return self._analysis_worker if self.model.analysis.running else None

    @property
    def _workers(self) -> set[Worker]:
        return self.runner.workers

    @property
    def _regions_worker(self) -> object | None:
        return self.model.regions.job if self.model.regions.busy else None

    @property
    def region_list(self) -> list[Region]:
        return self.model.regions.shown

    # ------------------------------------------------------------------------------ layout

    def _build_panel(self) -> None:
        panel = QWidget()
        lay = QVBoxLayout(panel)
        lay.setContentsMargins(10, 8, 10, 6)
        lay.setSpacing(8)
        d = self.model.settings.params

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
        self.card_btn = QPushButton("Card")
        self.card_btn.setToolTip("The selected model's card: what it was trained on, its figures and limits")
        self.card_btn.clicked.connect(
            lambda: (show_model_card(self, self.model.settings.model_path), self._take_focus()))
        row.addWidget(self.card_btn)
        c.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Run on"))
        self.device_box = QComboBox()
        for dev, label in zip(DEVICES, ("Automatic (best available)", "CPU", "CUDA GPU", "TensorRT GPU")):
            self.device_box.addItem(label, dev)
        self.device_box.setCurrentIndex(max(0, DEVICES.index(d.device)))
        self.device_box.currentIndexChanged.connect(
            lambda _i: self.model.settings.set(device=self.device_box.currentData()))
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
        self.levels_label = QLabel("")
        self.levels_label.setObjectName("levelsWarning")
        self.levels_label.setWordWrap(True)
        self.levels_label.setVisible(False)
        c.addWidget(self.levels_label)
        self.nuclei_box = QCheckBox("Measure nuclei per tile (slower)")
        self.nuclei_box.setChecked(d.nuclei)
        self.nuclei_box.setToolTip("Count nuclei and measure their size and shape in every tile (H&E deconvolution)")
        self.nuclei_box.toggled.connect(lambda on: self.model.settings.set(nuclei=on))
        c.addWidget(self.nuclei_box)
        self._build_run_options(c)
        self.auto_box = QCheckBox("Analyse automatically when a slide opens or the model changes")
        self.auto_box.setToolTip("Also when stain normalisation or test-time augmentation changes: like another "
                                 "model, they change what the model sees. Other settings wait for Analyse.")
        self.auto_box.setChecked(self.model.analysis.auto_analyse)
        self.auto_box.toggled.connect(self._auto_toggled)
        c.addWidget(self.auto_box)
        lay.addWidget(card)

        card, c = section("Heatmap")
        self.show_overlay = QCheckBox("Show heatmap")
        self.show_overlay.setChecked(self.model.overlay.settings.visible)
        self.show_overlay.toggled.connect(lambda on: self.model.overlay.set(visible=on))
        c.addWidget(self.show_overlay)
        self.show_regions = QCheckBox("Outline malignant regions")
        self.show_regions.setToolTip("Connected malignant tiles at or above the minimum confidence, "
                                     "with bounding boxes and areas")
        self.show_regions.toggled.connect(lambda on: self.model.overlay.set(show_regions=on))
        c.addWidget(self.show_regions)
        self.regions_label = _hint("")
        self.regions_label.setVisible(False)
        c.addWidget(self.regions_label)
        form = QFormLayout()
        form.setHorizontalSpacing(10)
        self.style_box = QComboBox()
        for style in STYLES:
            self.style_box.addItem(STYLE_LABELS[style], style)
        self.style_box.setCurrentIndex(STYLES.index(self.model.overlay.settings.style))
        self.style_box.setToolTip("Outlines leave the stain as scanned: a red fill over eosin pink reads as more "
                                  "staining")
        self.style_box.currentIndexChanged.connect(
            lambda _i: self.model.overlay.set(style=self.style_box.currentData()))
        form.addRow("Draw", self.style_box)
        self.mode_box = QComboBox()
        self.mode_box.addItem("Category (colour × confidence)", -1)
        self.mode_box.currentIndexChanged.connect(self._mode_changed)
        form.addRow("Colour by", self.mode_box)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(round(self.model.overlay.settings.opacity * 100)))
        self.opacity.valueChanged.connect(lambda v: self.model.overlay.set(opacity=v / 100))
        self.view.overlay.setOpacity(self.model.overlay.settings.opacity)
        form.addRow("Fill opacity", self.opacity)
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
        self.toggles.changed.connect(lambda: self.model.overlay.set(categories=self.toggles.selected()))
        c.addWidget(self.toggles)
        self.filter_notice = FilterNotice()  # a filter or an override of the domain warning is never silent
        self.filter_notice.resetRequested.connect(lambda: self.model.overlay.set(**PER_SLIDE))
        c.addWidget(self.filter_notice)
        self.colour_hint = _hint("")
        c.addWidget(self.colour_hint)
        self.colorbar = ColorBar(self.lut)
        self.colorbar.setVisible(False)
        c.addWidget(self.colorbar)
        self.summary_label = _hint("")
        c.addWidget(self.summary_label)
        lay.addWidget(card)
        self.panel_layout, self._labels_at = lay, lay.count()

        card, c = section("Tissue mask")
        self.tissue_box = QCheckBox("Preview what will be analysed")
        self.tissue_box.toggled.connect(self._tissue_toggled)
        c.addWidget(self.tissue_box)
        form = QFormLayout()
        self.tissue_method = QComboBox()
        self.tissue_method.addItem("Saturation (H&E)", "saturation")
        self.tissue_method.addItem("Optical density (pale tissue)", "od")
        self.tissue_method.setCurrentIndex(0 if d.tissue.method == "saturation" else 1)
        self.tissue_min = QDoubleSpinBox()
        self.tissue_min.setRange(0.0, 1.0)
        self.tissue_min.setDecimals(3)  # as the threshold found is printed below it
        self.tissue_min.setSingleStep(0.01)
        self.tissue_min.setValue(d.tissue.min_threshold)
        self.tissue_min.setToolTip("Otsu's threshold on the tissue signal is kept at least this high")
        self.tissue_min_obj = QDoubleSpinBox()
        self.tissue_min_obj.setRange(0, 1e7)
        self.tissue_min_obj.setDecimals(0)
        self.tissue_min_obj.setSingleStep(1000)
        self.tissue_min_obj.setSuffix(" µm²")
        self.tissue_min_obj.setValue(d.tissue.min_object_um2)
        self.tissue_frac = QDoubleSpinBox()
        self.tissue_frac.setRange(0.0, 1.0)
        self.tissue_frac.setSingleStep(0.05)
        self.tissue_frac.setValue(d.tissue_threshold)
        self.tissue_frac.valueChanged.connect(lambda v: self.model.settings.set(tissue_threshold=float(v)))
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
        self.inspector.explainToggled.connect(self.model.explain.set_on)
        self.inspector.explainClassChosen.connect(self.model.explain.set_class)
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
        self.panel_scroll = scroll
        self.wheel_guard = WheelGuard(scroll)
        self.wheel_guard.guard(panel)
        self.dock = QDockWidget("", self)
        self.dock.setObjectName("panel")
        self.dock.setTitleBarWidget(QWidget())
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.dock.setWidget(scroll)
        self.dock.setMinimumWidth(380)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self._update_colour_hint()

    STAIN_TIP = ("Map each slide's colours onto the stain of the model's training data before classifying: "
                 "the slide's stain is estimated once from tissue tiles sampled across it, then every tile gets "
                 "a cheap transform. Macenko: haematoxylin and eosin separated in optical density; Reinhard: "
                 "colour statistics matched in LAB. Recorded in the run metadata and the result cache key.")
    TTA_TIP = ("Test-time augmentation: average each tile's probabilities over flipped and rotated copies. "
               "Flips ×4 runs the model 4 times per tile (about 4× the classification time), D4 ×8 (every "
               "flip and 90° rotation) 8 times (about 8×). Keep it off unless the model card says it helps.")

    PRECISION_TIP = ("Which copy of the model's weights runs. Auto: the INT8 copy on a CPU when the model ships one "
                     "that passed its validation against FP32 (see its model card; about 1.5× faster), FP16 on a "
                     "GPU; FP32: the trained weights. The status bar, the metadata and the result cache say which ran.")

    def _build_run_options(self, c: QVBoxLayout) -> None:
        """Stain normalisation, test-time augmentation and precision: shown as the model's settings say, set
        through it."""
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self.stain_box = QComboBox()
        for method in STAIN_METHODS:
            self.stain_box.addItem(STAIN_LABELS[method], method)
        self.stain_box.currentIndexChanged.connect(
            lambda _i: self.model.settings.set(stain_normalize=self.stain_box.currentData()))
        self.tta_box = QComboBox()
        for mode in TTA_MODES:
            self.tta_box.addItem(TTA_LABELS[mode] + ("" if mode == "none" else " (slower)"), mode)
        self.tta_box.setToolTip(self.TTA_TIP)
        self.tta_box.currentIndexChanged.connect(lambda _i: self.model.settings.set(tta=self.tta_box.currentData()))
        self.precision_box = QComboBox()
        for precision in PRECISIONS:
            self.precision_box.addItem(PRECISION_CHOICES[precision], precision)
        self.precision_box.setToolTip(self.PRECISION_TIP)
        self.precision_box.currentIndexChanged.connect(
            lambda _i: self.model.settings.set(precision=self.precision_box.currentData()))
        self.stain_hint = _hint("")  # why normalisation is unavailable, under its control
        self.stain_hint.setVisible(False)
        form.addRow("Stain normalisation", self.stain_box)
        form.addRow(self.stain_hint)
        form.addRow("Test-time augmentation", self.tta_box)
        form.addRow("Precision", self.precision_box)
        c.addLayout(form)
        self._show_run_options()

    def _show_run_options(self) -> None:
        """The combo boxes follow the model's settings and options (without re-emitting their signals)."""
        d, options = self.model.settings.params, self.model.settings.options
        for box, value in ((self.stain_box, d.stain_normalize), (self.tta_box, d.tta),
                           (self.precision_box, d.precision)):
            box.blockSignals(True)
            box.setCurrentIndex(max(0, box.findData(value)))
            box.blockSignals(False)
        self.stain_box.setEnabled(options.stain_available and not self.model.analysis.running)
        self.tta_box.setEnabled(not self.model.analysis.running)
        self.precision_box.setEnabled(not self.model.analysis.running)
        if options.stain_available:
            self.stain_box.setToolTip(self.STAIN_TIP)
            self.stain_hint.setVisible(False)
        else:
            why = f"Stain normalisation is unavailable. {options.stain_unavailable}"
            self.stain_box.setToolTip(why)
            self.stain_hint.setText(why)
            self.stain_hint.setVisible(self.model.settings.model_path is not None)

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
            ex.addAction("All formats to a folder (as the command line writes them)…", self.export_all_dialog),
            ex.addAction("Annotated PNG of the whole slide…", lambda: self.export_dialog("png")),
            ex.addAction("Annotated PNG of the current view…", lambda: self.export_dialog("view")),
            ex.addAction("Tiles as CSV…", lambda: self.export_dialog("csv")),
            ex.addAction("Tiles and malignant regions as GeoJSON (QuPath)…", lambda: self.export_dialog("geojson")),
            ex.addAction("Run metadata (JSON)…", lambda: self.export_dialog("json")),
        ]
        m.addSeparator()
        m.addAction("&Quit", QKeySequence.StandardKey.Quit, self.close)
        m = bar.addMenu("&View")
        m.addAction("Fit slide", QKeySequence("Ctrl+0"), self.view.fit)
        zoom_in = m.addAction("Zoom in", lambda: self.view.zoom(1.5))
        zoom_in.setShortcuts([QKeySequence(QKeySequence.StandardKey.ZoomIn), QKeySequence("Ctrl+=")])  # no Shift needed
        m.addAction("Zoom out", QKeySequence.StandardKey.ZoomOut, lambda: self.view.zoom(1 / 1.5))
        self.act_heatmap = QAction("Show heatmap", self, checkable=True, checked=True, shortcut=QKeySequence("H"))
        self.act_heatmap.toggled.connect(lambda on: self.model.overlay.set(visible=on))
        m.addAction(self.act_heatmap)
        self.act_regions = QAction("Outline malignant regions", self, checkable=True, checked=False,
                                   shortcut=QKeySequence("R"))
        self.act_regions.toggled.connect(lambda on: self.model.overlay.set(show_regions=on))
        m.addAction(self.act_regions)
        m.addAction("Next drawing style (outlines / fill)", QKeySequence("O"), self._next_style)
        m = bar.addMenu("&Analysis")
        self.act_analyse = m.addAction("&Analyse", QKeySequence("Ctrl+R"), self.start_analysis)
        self.act_cancel = m.addAction("&Cancel", QKeySequence("Esc"), self.cancel_analysis)
        m = bar.addMenu("&Help")
        m.addAction("&Keyboard shortcuts", QKeySequence(QKeySequence.StandardKey.HelpContents), self.show_shortcuts)
        m.addAction("About CellView", self._about)
        for menu in bar.findChildren(QMenu):
            self.return_focus_after(menu)

    def return_focus_after(self, menu: QMenu) -> None:
        """Esc on ``menu`` gives the keys back to the slide (arrows step tiles); a menu added later calls it too."""
        menu.aboutToHide.connect(lambda: QTimer.singleShot(0, self._focus_canvas_after_menu))

    def _focus_canvas_after_menu(self) -> None:
        """A menu closed without opening anything: the canvas takes the keyboard again, and the menu bar
        leaves its keyboard mode (else the arrow keys would walk the menus)."""
        if QApplication.activePopupWidget() is None and QApplication.activeModalWidget() is None:
            self.view.setFocus(Qt.FocusReason.PopupFocusReason)

    def show_shortcuts(self) -> None:
        from cellview.gui.shortcuts import ShortcutsDialog

        ShortcutsDialog(self.menuBar(), self).exec()
        self._take_focus()

    NO_SLIDE_TEXT = "No slide open — File → Open (Ctrl+O), drop a file here, or pass one on the command line"

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.hover_label = QLabel("")
        self.slide_label = QLabel(self.NO_SLIDE_TEXT)
        self.provider_label = QLabel("")
        sb.addWidget(self.slide_label, 1)
        sb.addPermanentWidget(self.hover_label)
        sb.addPermanentWidget(self.provider_label)

    # ------------------------------------------------------------------------------ focus and dialogs

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        QTimer.singleShot(0, self._take_focus)

    def _take_focus(self) -> None:
        """Make this window the active one with the canvas focused, so keyboard shortcuts work at once.

        Without a window manager (a kiosk has none) nothing activates a window: shortcuts would do
        nothing until the canvas was clicked. Called at start and after every dialog.
        """
        if not self.isVisible():
            return
        if QApplication.platformName() != "offscreen":  # which cannot raise windows (and says so)
            self.raise_()
        self.activateWindow()
        self.view.setFocus(Qt.FocusReason.ActiveWindowFocusReason)

    def show_error(self, error: CellviewError, title: str = "CellView") -> None:
        """Message plus technical details; the window stays usable (and keeps the focus afterwards)."""
        self.errorShown.emit(error.message, error.details)
        box = QMessageBox(QMessageBox.Icon.Warning, title, error.message, QMessageBox.StandardButton.Ok, self)
        if error.details:
            box.setDetailedText(error.details)
        box.finished.connect(lambda _r: self._take_focus())
        box.open()

    def ask_mpp(self, opened: Opened) -> float | str | None:
        dlg = MppDialog(opened.info.name, opened.is_plain_image, self)
        accepted = dlg.exec() == QDialog.DialogCode.Accepted
        self._take_focus()
        return dlg.choice if accepted else None

    def confirm_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Replace file?", f"{path.name} already exists in {path.parent}.\n"
                                      "Do you want to replace it?")
        self._take_focus()
        return answer == QMessageBox.StandardButton.Yes

    def ask_save_path(self, title: str, suggested: Path, filter_text: str) -> Path | None:
        name, _ = QFileDialog.getSaveFileName(self, title, str(suggested), filter_text,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        self._take_focus()
        return Path(name) if name else None

    def ask_folder(self, title: str, suggested: Path) -> Path | None:
        name = QFileDialog.getExistingDirectory(self, title, str(suggested))
        self._take_focus()
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
        self.model.set_model(self.model_box.currentData() or None)
        self._show_model_info()

    def _show_model_info(self) -> None:
        path = self.model.settings.model_path
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

    def _on_model_selected(self, event: Event) -> None:
        idx = self.model_box.findData(event.value)
        if idx >= 0 and idx != self.model_box.currentIndex():
            self.model_box.blockSignals(True)
            self.model_box.setCurrentIndex(idx)
            self.model_box.blockSignals(False)
        self._show_model_info()

    def choose_model_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open model", str(cfg.get("last_model_dir", "") or Path.home()),
                                              "ONNX models (*.onnx)")
        self._take_focus()
        if name:
            cfg.put("last_model_dir", str(Path(name).parent))
            self.add_model(name)

    def _on_model_ready(self, event: Event) -> None:
        ready: ModelReady = event.value
        self.provider_label.setText(ready.description)
        self.provider_label.setObjectName("warn" if ready.warn else "")
        self.provider_label.setStyle(self.provider_label.style())
        self.provider_label.setToolTip(ready.fallback_message or ready.description)
        self._fill_modes(ready.spec.class_names)
        self.inspector.set_class_names(ready.spec.class_names)

    def _fill_modes(self, class_names: tuple[str, ...]) -> None:
        current = self.mode_box.currentData()
        self.mode_box.blockSignals(True)
        while self.mode_box.count() > 1:
            self.mode_box.removeItem(1)
        for i, name in enumerate(class_names):
            self.mode_box.addItem(f"Probability of {name}", i)
        idx = self.mode_box.findData(current)
        self.mode_box.setCurrentIndex(idx if idx >= 0 else 0)
        self.mode_box.blockSignals(False)
        if self.mode_box.currentData() != self.model.overlay.settings.mode:
            self.model.overlay.set(mode=int(self.mode_box.currentData()))

    # ------------------------------------------------------------------------------ opening

    def choose_slide(self) -> None:
        exts = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
        name, _ = QFileDialog.getOpenFileName(self, "Open slide or image", self.model.slide.open_dialog_dir(),
                                              f"Slides and images ({exts});;All files (*)")
        self._take_focus()
        if name:
            self.model.slide.remember_open_dir(name)
            self.open_path(name)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.model.slide.recent()
        for item in recent:
            self.recent_menu.addAction(item.name, lambda p=item.path: self.open_path(p)).setToolTip(item.path)
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _show_recent(self) -> None:
        self.view.empty_hint.set_recent([(r.path, r.name) for r in self.model.slide.recent()])
        self.view.place_overlays()

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
        """Open off the main thread; the open slide stays until the new one has opened (``slideOpened``)."""
        self.model.open(path, mpp_um=mpp_um)

    def close_slide(self) -> None:
        self.model.close_slide()

    def _on_opening(self, event: Event) -> None:
        if event.value:
            self.statusBar().showMessage(f"Opening {Path(event.value).name}…")
        else:
            self.statusBar().clearMessage()

    def _on_slide(self, event: Event) -> None:
        self._stop_loaders()
        opened: Opened | None = event.value
        if opened is None:
            self.view.clear_slide()
            self.view.set_overlay(None)
            self.inspector.clear()
            self.setWindowTitle("CellView")
            self.slide_label.setText(self.NO_SLIDE_TEXT)
            self.slide_label.setToolTip("")
            self.levels_label.setVisible(False)
            self.tissue_label.setText("")
            self._show_recent()
            self._sync_actions()
            return
        if self._shut_down:  # a slide that finished opening as the window closed: no loader threads to leak
            return
        self.requests = TileRequests()
        self.view.set_slide(opened, self.requests)
        for i in range(LOADER_THREADS):
            w = Worker(lambda cancel, r=self.requests: tile_loader_task(opened.path, r, cancel), f"tiles-{i}")
            w.item.connect(self._on_tile)
            w.failed.connect(lambda exc: self.statusBar().showMessage(f"Tile read failed: {exc.message}", 5000))
            self.loaders.append(w)
            self.runner.start(w)
        self.setWindowTitle(f"{opened.info.name} — CellView")
        self._update_slide_label()
        self._sync_actions()
        self.slideOpened.emit(opened)
        self.view.update_tiles()
        if self.tissue_box.isChecked():
            self.update_tissue_preview()

    def _on_slide_image(self, event: Event) -> None:
        opened: Opened = event.value
        if self.view.opened is not None and self.view.opened.thumbnail is not opened.thumbnail:
            self.view.set_base_image(opened)
        else:
            self.view.set_opened(opened)
        self._update_slide_label()

    def _stop_loaders(self) -> None:
        for w in self.loaders:
            w.cancel()
        if self.requests is not None:
            self.requests.close()
        self.loaders, self.requests = [], None

    def _update_slide_label(self) -> None:
        opened = self.model.slide.opened
        if opened is None:
            return
        info = opened.info
        w, h = info.dimensions
        if self.model.slide.mpp_choice == WHOLE_IMAGE:
            scale = "scale unknown: classified as one image"
        elif info.mpp is None:
            scale = "pixel size unknown"
        else:
            scale = info.mpp.describe().replace("from user", "entered by you")
            scale += f" · {w * info.mpp.x_um / 1000:.2f} × {h * info.mpp.y_um / 1000:.2f} mm"
        levels = len(info.level_dimensions)
        text = f"{info.name}  ·  {w:,} × {h:,} px  ·  {plural(levels, 'level')}  ·  {scale}"
        skipped = describe_skipped(info.skipped_levels, reasons=False)
        if skipped:
            text += f"  ·  {skipped} (wrong colours)"
            why = describe_skipped(info.skipped_levels)
            self.levels_label.setText(f"Pyramid {why}. They are never read: tiles and the view use the nearest "
                                      "good finer level.")
        self.levels_label.setVisible(bool(skipped))
        self.slide_label.setText(text)
        self.slide_label.setToolTip(describe_skipped(info.skipped_levels))

    def _on_tile(self, item: object) -> None:
        if isinstance(item, TileLoaded):
            self.view.tile_loaded(item)
        elif isinstance(item, PatchLoaded):
            result = self.model.analysis.shown_result()
            if result is not None and item.grid_id == id(result.grid) and item.index == self.inspector.index:
                self.inspector.set_patch(item.rgb, item.nuclei, item.contoured)
                self.patchShown.emit(item.index)

    # ------------------------------------------------------------------------------ analysis

    def _auto_toggled(self, on: bool) -> None:
        self.model.analysis.auto_analyse = on
        cfg.put("auto_analyse", "true" if on else "false")

    def start_analysis(self) -> None:
        self.model.analysis.start()

    def cancel_analysis(self) -> None:
        if self.model.analysis.running:
            self.model.analysis.cancel()
            self.progress.setFormat("Cancelling… %v / %m tiles")

    def _sync_actions(self) -> None:
        """Buttons and menu entries follow the model: nothing to analyse without a slide."""
        running = self.model.analysis.running
        self.analyse_btn.setEnabled(self.model.analysis.can_analyse)
        self.act_analyse.setEnabled(self.model.analysis.can_analyse)
        self.cancel_btn.setEnabled(running)
        self.act_cancel.setEnabled(running)
        self.model_box.setEnabled(not running)
        self.device_box.setEnabled(not running)
        self._show_run_options()
        for act in self.export_actions:
            act.setEnabled(self.model.exports.can_export)

    def _on_running(self, event: Event) -> None:
        if event.value:
            self._dirty = False
            self.view.set_label(None)
            self.inspector.clear()
            self.view.set_selection(None)
            name = Path(self.model.settings.model_path or "").parent.name
            self.provider_label.setText(f"Loading {name or 'model'}…")
            self._repaint_timer.start()
        else:
            self._repaint_timer.stop()
            self._flush_repaint()
        self._sync_actions()

    def _on_progress(self, event: Event) -> None:
        p: Progress = event.value
        if p.phase == "preparing":
            self.progress.setRange(0, 0)
            self.progress.setFormat("Preparing…")
            self.rate_label.setText("Loading model and finding tissue…")
        elif p.phase == "running":
            self.progress.setRange(0, max(1, p.total))
            self.progress.setValue(p.done)
            self.progress.setFormat("%v / %m tiles")
            if p.done == 0:
                self.rate_label.setText("Found in the result cache" if p.from_cache
                                        else f"{plural(p.total, 'tissue tile')} to classify")
            elif p.tiles_per_s == 0:  # the first item of a resumed run: the tiles done before Cancel
                self.rate_label.setText(f"Going on from the {plural(p.done, 'tile')} classified before Cancel")
            else:
                self.rate_label.setText(f"{p.tiles_per_s:.1f} tiles/s  ·  ETA {format_eta(p.eta_s)}  ·  "
                                        f"{format_eta(p.elapsed_s)} elapsed")
        elif p.phase in ("done", "cancelled"):
            self.progress.setRange(0, max(1, p.total))
            self.progress.setValue(p.done)
            self.progress.setFormat(f"{'Done' if p.phase == 'done' else 'Cancelled'}: %v / %m tiles")
            if p.from_cache:
                self.rate_label.setText("Loaded from the result cache (same slide, model and settings)")
            elif p.tiles_per_s:
                self.rate_label.setText(f"{p.tiles_per_s:.1f} tiles/s  ·  {format_eta(p.elapsed_s)} total")
        else:  # idle, failed
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("idle")
            self.rate_label.setText("")

    def _on_tiles(self, event: Event) -> None:
        self._dirty = True

    def _on_result(self, event: Event) -> None:
        result: AnalysisResult | None = event.value
        self._dirty = False
        if result is None and not self.model.analysis.running and self.model.analysis.model_ready is None:
            self.provider_label.setText("")  # e.g. another model chosen: its provider is not known yet
            self.provider_label.setToolTip("")
        self.repaint_overlay()
        self._sync_actions()
        if result is not None:
            self.analysisFinished.emit(result)

    # ------------------------------------------------------------------------------ overlay

    def _flush_repaint(self) -> None:
        if self._dirty:
            self._dirty = False
            self.repaint_overlay()

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value}%")
        self.model.overlay.set(min_confidence=value / 100)

    def _mode_changed(self, *args) -> None:
        k = self.mode_box.currentData()
        self.model.overlay.set(mode=int(k if k is not None else -1))

    def _next_style(self) -> None:
        style = STYLES[(STYLES.index(self.model.overlay.settings.style) + 1) % len(STYLES)]
        self.model.overlay.set(style=style)

    def _on_overlay(self, event: Event) -> None:
        ov = event.value
        # a change made elsewhere (a menu, the kiosk, a script) shows on the controls, without their signals:
        # a slider's whole percent must not overwrite the model's exact value
        for widget, value in ((self.show_overlay, ov.visible), (self.show_regions, ov.show_regions),
                              (self.act_heatmap, ov.visible), (self.act_regions, ov.show_regions),
                              (self.style_box, STYLES.index(ov.style)), (self.opacity, round(ov.opacity * 100)),
                              (self.threshold, round(ov.min_confidence * 100))):
            widget.blockSignals(True)
            if isinstance(widget, (QCheckBox, QAction)):
                widget.setChecked(bool(value))
            elif isinstance(widget, QComboBox):
                widget.setCurrentIndex(int(value))
            else:
                widget.setValue(int(value))
            widget.blockSignals(False)
        self.threshold_label.setText(f"{round(ov.min_confidence * 100)}%")
        self.toggles.set_selected(ov.categories)
        self.filter_notice.set_text(describe_overrides(ov))
        self.view.overlay.setOpacity(ov.opacity)
        self._update_colour_hint()
        self.repaint_overlay()

    def _update_colour_hint(self) -> None:
        ov = self.model.overlay.settings
        names = self.model.analysis.spec.class_names if self.model.analysis.spec else ()
        self.colorbar.setVisible(not ov.by_category)
        self.opacity.setEnabled(ov.draws_fill)
        if not ov.by_category and ov.mode < len(names):
            self.colorbar.set_title(f"P({names[ov.mode]})")
        self.colour_hint.setText(f"{describe_colours(ov, names)} Hover or click a tile.")

    def overlay_rgba(self, result: AnalysisResult) -> np.ndarray:
        """The fill image, one pixel per grid cell, exactly as painted (``overlay.fill_rgba``)."""
        return fill_rgba(result, self.model.overlay.settings, self.lut)

    def repaint_overlay(self, *args) -> None:
        result = self.model.analysis.shown_result()
        ov = self.model.overlay.settings
        if result is None:
            self.view.set_overlay(None)
            self.view.set_out_of_domain(np.zeros((0, 4)))
            self.view.set_contours(())
            self.view.set_label(None)
            self.toggles.set_counts(None)
            self.toggles.set_out_of_domain(None)
            self.summary_label.setText("")
            self.overlayPainted.emit()
            return
        g = result.grid
        rgba = g.to_display(self.overlay_rgba(result))
        rows, cols = rgba.shape[:2]
        self.view.set_overlay(rgba, QRectF(0, 0, cols * g.stride_l0_x, rows * g.stride_l0_y))
        # One tile covering the whole image is shown as a label, not as a tint over the cell. Out-of-domain
        # tiles are tinted grey and hatched in every style (the outline style's fill holds only them).
        hatch = hatches_out_of_domain(result, ov)
        self.view.overlay.setVisible(ov.visible and (ov.draws_fill or hatch) and not g.whole_image)
        self.view.set_out_of_domain(out_of_domain_runs(result, ov))
        self.view.set_contours(category_contours(result, ov) if ov.visible and not g.whole_image else ())
        rows = category_rows(result, ov)  # the legend's rows: the exports count the same tiles
        self.toggles.set_counts({r.key: r.count for r in rows}, {r.key: r.percent for r in rows})
        self.toggles.set_out_of_domain(out_of_domain_row(result, ov))
        self._update_summary()
        self._update_single_label(result)
        if 0 <= self.model.selection.index < g.n_tiles and self.inspector.index == self.model.selection.index:
            self.inspector.show_tile(self.model.selection.index, result, self.model.slide.mpp_um())
        if self.model.analysis.running:
            if not self._regions_timer.isActive():  # throttled while batches stream in
                self._regions_timer.start()
        else:
            self._regions_timer.stop()
            self.update_regions()
        self.overlayPainted.emit()

    def update_regions(self, *args) -> None:
        self.model.regions.update()

    def _on_regions(self, event: Event) -> None:
        regions: list[Region] = event.value
        if not self.model.overlay.settings.show_regions:
            self.view.set_regions(())
        else:
            self.view.set_regions(regions[:MAX_REGIONS_DRAWN])
        text = self.model.regions.note()
        if len(regions) > MAX_REGIONS_DRAWN:
            text += f" The {MAX_REGIONS_DRAWN} largest are drawn."
        self.regions_label.setText(text)
        self.regions_label.setVisible(bool(text))
        self.regionsShown.emit()

    def _update_summary(self) -> None:
        result = self.model.analysis.shown_result()
        if result is None:
            self.summary_label.setText("")
            return
        self.summary_label.setText(self._summary_text(result))

    def _summary_text(self, result: AnalysisResult) -> str:
        text = f"{result.n_done:,} of {plural(result.n_tiles, 'tile')} classified"
        if result.n_failed:
            text += f", {result.n_failed:,} unreadable"
        if result.status == "cancelled":
            text += " (run cancelled: partial result)"
        text += "."
        options = describe_run_options(result.params, result.stain)
        if options:
            text += f" {options}."
        ov = self.model.overlay.settings
        if ov.min_confidence > 0:
            text += f" Counts: {counted_text(result, ov)}."
        if self.model.analysis.stale:
            text += " Settings changed since this result: Analyse again to apply them."
        return text

    def _update_single_label(self, result: AnalysisResult) -> None:
        if not (result.grid.whole_image or result.n_tiles == 1):
            self.view.set_label(None)
            return
        level = result.image_level()
        if not level["pred_class"]:
            self.view.set_label(None)
            return
        color = CATEGORY_COLORS[level["pred_category"]]
        unreliable = ""
        if result.has_domain and not result.in_domain.any():  # the call of an image unlike the training data
            unreliable = ("<br><span style='color:#ffb347; font-size:10pt;'>⚠ out of the model's domain: "
                          "unreliable</span>")
        self.view.set_label(
            f"<div style='background-color:rgba(20,22,25,215); padding:6px 10px; font-size:15pt;'>"
            f"<span style='color:{color}; font-weight:700;'>{level['pred_class']}</span>"
            f"<span style='color:#e6e9ec;'>&nbsp;{level['confidence']:.0%}</span>"
            f"<span style='color:#aab2b9; font-size:10pt;'>&nbsp;({level['pred_category']})</span>{unreliable}</div>")

    # ------------------------------------------------------------------------------ the model's domain

    def _on_domain(self, event: Event) -> None:
        notice: DomainNotice = event.value
        self.domain_banner.set_notice(notice)
        self.toggles.set_domain(notice)
        self.domainShown.emit(notice)

    def _on_explanation(self, event: Event) -> None:
        state: ExplainState = event.value
        self.inspector.set_explanation(state)

    # ------------------------------------------------------------------------------ tissue preview

    def _tissue_toggled(self, on: bool) -> None:
        self.view.tissue_item.setVisible(on)
        self.tissue_form.setVisible(on)
        self.tissue_label.setVisible(on)
        if on:
            self.update_tissue_preview()

    def _tissue_params_changed(self, *args) -> None:
        self.model.settings.set_tissue(method=self.tissue_method.currentData(),
                                       min_threshold=float(self.tissue_min.value()),
                              min_object_um2=float(self.tissue_min_obj.value()))
        if self.tissue_box.isChecked():
            self._tissue_timer.start()

    def update_tissue_preview(self) -> None:
        if self.model.slide.opened is None or not self.tissue_box.isChecked():
            return
        self.tissue_label.setText("Computing tissue mask…")
        self.model.tissue.preview()

    def _on_tissue(self, event: Event) -> None:
        if self.tissue_box.isChecked():
            self._show_tissue(event.value)

    def _show_tissue(self, mask) -> None:
        m = mask.mask
        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[~m] = (10, 12, 14, 170)  # skipped: dimmed
        edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rgba[edge] = (0, 229, 255, 255)  # tissue outline
        self.view.set_tissue(rgba, QRectF(0, 0, m.shape[1] * mask.downsample, m.shape[0] * mask.downsample))
        self.view.tissue_item.setVisible(self.tissue_box.isChecked())
        t = self.model.settings.current().tissue
        self.tissue_label.setText(
            f"{mask.fraction:.0%} of the slide is tissue. Threshold {mask.threshold:.3f} (Otsu, kept within "
            f"{t.min_threshold:.3f}–{t.max_threshold:.3f}). Dimmed areas are skipped.")
        self.tissueShown.emit()

    # ------------------------------------------------------------------------------ inspector

    def _view_clicked(self, l0_x: float, l0_y: float) -> None:
        self.model.selection.select_at(l0_x, l0_y)
        self.view.setFocus()

    def select_tile(self, index: int) -> None:
        self.model.selection.select(index)

    def _on_selection(self, event: Event) -> None:
        index = event.value
        result = self.model.analysis.shown_result()
        if result is None or not 0 <= index < result.n_tiles:
            self.inspector.clear()
            self.view.set_selection(None)
            return
        self.inspector.show_tile(index, result, self.model.slide.mpp_um())
        self.view.set_selection(result.grid.rect(index))
        self._request_patch()

    def _request_patch(self, *args) -> None:
        """The selected tile's patch as the model was fed it (once the run's stain transform is fitted)."""
        result, index = self.model.analysis.shown_result(), self.model.selection.index
        if self.requests is None or result is None or not 0 <= index < result.n_tiles:
            return
        if self.model.explain.stain_pending:
            self.inspector.set_patch_note("Normalising the stain as the model saw it…")
            self.model.explain.request_stain()  # events.stain asks again
            return
        stain = self.model.explain.patch_stain()
        self.inspector.set_patch_note("Stain-normalised, as fed to the model" if stain is not None else "")
        self.requests.add_patch(PatchRequest(index, result.grid, self.model.slide.mpp_um(), self.inspector.PATCH_PX,
                                             stain))

    def step_selection(self, d_row: int, d_col: int) -> None:
        """Move to the nearest tile in that direction and keep it in view."""
        index = self.model.selection.step(d_row, d_col)
        result = self.model.analysis.shown_result()
        if index >= 0 and result is not None:
            x, y, w, h = result.grid.rect(index)
            if not self.view.visible_l0_rect().contains(QRectF(x, y, w, h)):
                self.view.center_on(x + w / 2, y + h / 2)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in ARROW_STEPS:
            self.step_selection(*ARROW_STEPS[event.key()])
            return
        super().keyPressEvent(event)

    def _view_hovered(self, l0_x: float, l0_y: float) -> None:
        text = self.model.selection.hover_at(l0_x, l0_y)
        if text:
            pos = self.view.mapToGlobal(self.view.mapFromScene(self.view.vb.mapViewToScene(QPointF(l0_x, l0_y))))
            QToolTip.showText(pos, text, self.view)
        else:
            QToolTip.hideText()

    def _on_hover(self, event: Event) -> None:
        self.hover_label.setText(event.value)
        if not event.value:
            QToolTip.hideText()

    # ------------------------------------------------------------------------------ export

    def export_dialog(self, kind: str) -> Path | None:
        """Ask where to save (the last export folder, else the slide's, else a writable one), then write."""
        if not self.model.exports.can_export:
            return None
        try:
            suggested, note = self.model.exports.suggest_path(kind)
        except CellviewError as exc:
            self.show_error(exc, "Export failed")
            return None
        if note:
            self.statusBar().showMessage(note, 15000)
        path = self.ask_save_path("Export" if not note else f"Export ({note})", suggested, EXPORT_FILTERS[kind])
        if path is None:
            return None
        return self.export_to(kind, path)

    def export_to(self, kind: str, path: Path) -> Path | None:
        path = Path(path)
        if path.exists() and not self.confirm_overwrite(path):
            return None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            if kind == "view":
                self.model.exports.save(path, self.render_view_png())
            else:
                self.model.exports.export_file(kind, path)
        except CellviewError as exc:
            self.show_error(exc, "Export failed")
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.statusBar().showMessage(f"Saved {path}", 8000)
        return path

    def export_all_dialog(self) -> dict[str, Path] | None:
        """Every format into one folder, named and written as `cellview analyze` writes them."""
        if not self.model.exports.can_export:
            return None
        try:
            folder, note = self.model.exports.suggest_path("folder")
        except CellviewError as exc:
            self.show_error(exc, "Export failed")
            return None
        if note:
            self.statusBar().showMessage(note, 15000)
        chosen = self.ask_folder("Export all formats to a folder", folder)
        return None if chosen is None else self.export_all_to(chosen)

    def export_all_to(self, folder: Path) -> dict[str, Path] | None:
        from cellview.outputs.export import output_paths
        from cellview.slides.slide import slide_stem

        assert self.model.slide.opened is not None
        existing = [p for p in output_paths(folder, slide_stem(Path(self.model.slide.opened.path)),
                                            self.model.exports.settings.formats).values() if p.exists()]
        if existing and not self.confirm_overwrite(existing[0]):
            return None
        try:
            paths = self.model.exports.export_all(folder)
        except CellviewError as exc:
            self.show_error(exc, "Export failed")
            return None
        self.statusBar().showMessage(f"Saved {len(paths)} files to {folder}", 8000)
        return paths

    def render_view_png(self) -> bytes:
        """The canvas as seen (overlay, contours, regions, scale bar) with the legend (``legend.describe_legend``,
        as the whole-slide PNG's) on the right."""
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice

        self.view.overview.hide()
        self.view.place_overlays()  # the scale bar measured on the view as it is now
        shot = self.view.grab().toImage()
        self.view.overview.setVisible(self.model.slide.opened is not None)
        result = self.model.analysis.result
        assert result is not None
        ov = self.model.overlay.settings
        rect = self.view.visible_l0_rect()
        extra = [f"View: x {max(0, rect.x()):,.0f}  y {max(0, rect.y()):,.0f} (level 0)"]
        if self.model.slide.mpp_um():
            extra.append(f"Field of view: {format_um(round(rect.width() * self.model.slide.mpp_um()))} wide")
        legend = describe_legend(result, ov, source="the viewer",
                                 regions=self.model.regions.shown if ov.show_regions else None,
                                 region_confidence=ov.min_confidence, extra_header=tuple(extra))
        panel_w = 320
        out = QImage(shot.width() + panel_w, shot.height(), QImage.Format.Format_RGB32)
        out.fill(QColor("white"))
        p = QPainter(out)
        p.drawImage(0, 0, shot)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        paint_legend(p, legend, shot.width() + 16, 28, panel_w - 28, self.font())
        p.setPen(QColor(90, 90, 90))
        p.drawText(shot.width() + 16, out.height() - 14, "Research use only. Not for clinical diagnosis.")
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
        self._take_focus()

    def shutdown(self, timeout_ms: int = 15000) -> bool:
        """Stop every worker (analysis first) and wait for their threads; True if all stopped."""
        self._shut_down = True
        self._repaint_timer.stop()
        if self.requests is not None:
            self.requests.close()
        if self._analysis_worker is not None:
            self._analysis_worker.cancel()
        return self.runner.shutdown(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

