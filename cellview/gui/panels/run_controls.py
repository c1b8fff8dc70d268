"""Starting and stopping a run, and what it runs with (``model.settings``): nuclei, stain normalisation,
test-time augmentation, precision, and whether a slide is analysed as it opens. Shown as the model's settings
say, set through them; nothing to analyse without a slide."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QPushButton

from cellview.analysis.classifier import TTA_MODES
from cellview.analysis.model_spec import PRECISION_CHOICES, PRECISIONS
from cellview.analysis.stain import STAIN_METHODS
from cellview.gui import settings as cfg
from cellview.gui.panels.run_status import AnalysisStatus
from cellview.gui.widgets.cards import text_label
from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS
from cellview.viewer.model import ViewerModel

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


class RunControls:
    """``analyse_btn``, ``cancel_btn``, ``nuclei_box``, ``run_options`` (a form: ``stain_box`` with its
    ``stain_hint``, ``tta_box``, ``precision_box``) and ``auto_box``. ``sync`` once they are laid out."""

    def __init__(self, model: ViewerModel, status: AnalysisStatus) -> None:
        self.model = model
        self.status = status
        d = model.settings.params
        self.analyse_btn = QPushButton("Analyse slide")
        self.analyse_btn.setObjectName("primary")
        self.analyse_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the current batch; finished tiles are kept")
        self.cancel_btn.clicked.connect(self.cancel)
        self.nuclei_box = QCheckBox("Measure nuclei per tile (slower)")
        self.nuclei_box.setChecked(d.nuclei)
        self.nuclei_box.setToolTip("Count nuclei and measure their size and shape in every tile (H&E deconvolution)")
        self.nuclei_box.toggled.connect(lambda on: model.settings.set(nuclei=on))
        self.run_options = self._build_run_options()
        self.auto_box = QCheckBox("Analyse automatically when a slide opens or the model changes")
        self.auto_box.setToolTip("Also when stain normalisation or test-time augmentation changes: like another "
                                 "model, they change what the model sees. Other settings wait for Analyse.")
        self.auto_box.setChecked(model.analysis.auto_analyse)
        self.auto_box.toggled.connect(self._auto_toggled)
        model.settings.events.settings.connect(lambda e: self.show_run_options())
        model.settings.events.model_options.connect(lambda e: self.show_run_options())
        for events in (model.slide.events.slide, model.analysis.events.running, model.analysis.events.result):
            events.connect(lambda e: self.sync())

    def _build_run_options(self) -> QFormLayout:
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        settings = self.model.settings
        self.stain_box = QComboBox()
        for method in STAIN_METHODS:
            self.stain_box.addItem(STAIN_LABELS[method], method)
        self.stain_box.currentIndexChanged.connect(
            lambda _i: settings.set(stain_normalize=self.stain_box.currentData()))
        self.tta_box = QComboBox()
        for mode in TTA_MODES:
            self.tta_box.addItem(TTA_LABELS[mode] + ("" if mode == "none" else " (slower)"), mode)
        self.tta_box.setToolTip(TTA_TIP)
        self.tta_box.currentIndexChanged.connect(lambda _i: settings.set(tta=self.tta_box.currentData()))
        self.precision_box = QComboBox()
        for precision in PRECISIONS:
            self.precision_box.addItem(PRECISION_CHOICES[precision], precision)
        self.precision_box.setToolTip(PRECISION_TIP)
        self.precision_box.currentIndexChanged.connect(
            lambda _i: settings.set(precision=self.precision_box.currentData()))
        self.stain_hint = text_label("", "hint")  # why normalisation is unavailable, under its control
        self.stain_hint.setVisible(False)
        form.addRow("Stain normalisation", self.stain_box)
        form.addRow(self.stain_hint)
        form.addRow("Test-time augmentation", self.tta_box)
        form.addRow("Precision", self.precision_box)
        return form

    def show_run_options(self) -> None:
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
            self.stain_box.setToolTip(STAIN_TIP)
            self.stain_hint.setVisible(False)
        else:
            why = f"Stain normalisation is unavailable. {options.stain_unavailable}"
            self.stain_box.setToolTip(why)
            self.stain_hint.setText(why)
            self.stain_hint.setVisible(self.model.settings.model_path is not None)

    def sync(self) -> None:
        """Nothing to analyse without a slide; nothing to cancel without a run."""
        self.analyse_btn.setEnabled(self.model.analysis.can_analyse)
        self.cancel_btn.setEnabled(self.model.analysis.running)
        self.show_run_options()

    def _auto_toggled(self, on: bool) -> None:
        self.model.analysis.auto_analyse = on
        cfg.put("auto_analyse", "true" if on else "false")

    def start(self) -> None:
        self.model.analysis.start()

    def cancel(self) -> None:
        if self.model.analysis.running:
            self.model.analysis.cancel()
            self.status.show_cancelling()
