"""The desktop's status bar: the open slide (size, levels, scale), the tile under the pointer, the model and what it
runs on, and the model's passing messages.

It stays short and calm: each part is one line that ends in "…" rather than pushing the others off (the whole text
is its tooltip, and the model's whole sentence is in the Model card too); amber only for what needs attention (a
GPU asked for and not used, pyramid levels skipped), never for routine facts such as running on the CPU of a
machine without a GPU or a precision copy not chosen.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QSizePolicy, QStatusBar

from cellview.analysis.results import plural
from cellview.gui.widgets.cards import ElidedLabel
from cellview.slides.levels import describe_skipped
from cellview.slides.slide import SlideInfo
from cellview.viewer.analysis import ModelReady
from cellview.viewer.cells import reading_note
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel
from cellview.viewer.slide import WHOLE_IMAGE

NO_SLIDE_TEXT = "No slide open — File → Open (Ctrl+O), drop a file here, or pass one on the command line"


def slide_facts(info: SlideInfo, whole_image: bool, assumed: str = "") -> tuple[str, str]:
    """(the status bar's line, its tooltip) for an open slide: 'name · 2,220 × 2,967 px · 5 levels · 0.499 µm/px ·
    ⚠ 4 levels skipped', and the same in full (where the pixel size comes from, the area, why levels are skipped).
    ``assumed``: what the run assumed for an image that states no pixel size (the model's rule: a smear field)."""
    w, h = info.dimensions
    if whole_image:
        scale, full = "one image (scale unknown)", "scale unknown: classified as one image"
    elif info.mpp is None and assumed:
        scale, full = "pixel size assumed by the model", assumed
    elif info.mpp is None:
        scale = full = "pixel size unknown"
    else:
        scale = f"{info.mpp.x_um:.3g} µm/px"
        full = (info.mpp.describe().replace("from user", "entered by you")
                + f" · {w * info.mpp.x_um / 1000:.2f} × {h * info.mpp.y_um / 1000:.2f} mm")
    levels = plural(len(info.level_dimensions), "level")
    parts = [info.name, f"{w:,} × {h:,} px", levels, scale]
    tip = [info.name, f"{w:,} × {h:,} px, {levels}", full]
    if info.skipped_levels:
        parts.append(f"⚠ {plural(len(info.skipped_levels), 'level')} skipped")
        tip.append(describe_skipped(info.skipped_levels))
    return " · ".join(parts), "\n".join(tip)


class StatusLine:
    """``slide_label``, ``hover_label`` and ``provider_label`` on ``bar``."""

    def __init__(self, model: ViewerModel, bar: QStatusBar) -> None:
        self.model = model
        self.bar = bar
        self.hover_label = QLabel("")
        self.slide_label = ElidedLabel(NO_SLIDE_TEXT)
        self.provider_label = ElidedLabel("")
        self.provider_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.provider_label.setMaximumWidth(360)  # the slide's facts keep most of the bar
        bar.addWidget(self.slide_label, 1)
        bar.addPermanentWidget(self.hover_label)
        bar.addPermanentWidget(self.provider_label)
        model.slide.events.opening.connect(self._on_opening)
        model.slide.events.slide.connect(self._on_slide)
        model.slide.events.slide_image.connect(lambda e: self._show_slide())
        model.selection.events.hover.connect(lambda e: self.hover_label.setText(e.value))
        analysis = model.analysis.events
        analysis.model_ready.connect(self._on_model_ready)
        analysis.running.connect(self._on_running)
        analysis.result.connect(self._on_result)
        model.events.status.connect(lambda e: bar.showMessage(e.value, 8000))

    def _on_opening(self, event: Event) -> None:
        if event.value:
            self.bar.showMessage(f"Opening {Path(event.value).name}…")
        else:
            self.bar.clearMessage()

    def _on_slide(self, event: Event) -> None:
        if event.value is None:
            self.slide_label.setText(NO_SLIDE_TEXT)
            self.slide_label.setToolTip("")
            self._warn(self.slide_label, False)
        else:
            self._show_slide()

    def _show_slide(self) -> None:
        opened = self.model.slide.opened
        if opened is None:
            return
        text, tip = slide_facts(opened.info, self.model.slide.mpp_choice == WHOLE_IMAGE,
                                reading_note(self.model.analysis.shown_result()))
        self.slide_label.setText(text)
        self.slide_label.setToolTip(tip)
        self._warn(self.slide_label, bool(opened.info.skipped_levels))

    @staticmethod
    def _warn(label: QLabel, on: bool) -> None:
        label.setObjectName("warn" if on else "")
        label.setStyle(label.style())

    def _on_model_ready(self, event: Event) -> None:
        ready: ModelReady = event.value
        self.provider_label.setText(ready.short)
        self._warn(self.provider_label, bool(ready.fallback_message))  # a GPU asked for and not used
        self.provider_label.setToolTip(ready.description)

    def _on_running(self, event: Event) -> None:
        if event.value:
            name = Path(self.model.settings.model_path or "").parent.name
            self.provider_label.setText(f"Loading {name or 'model'}…")

    def _on_result(self, event: Event) -> None:
        self._show_slide()  # a smear model's run says what pixel size it assumed
        if event.value is None and not self.model.analysis.running and self.model.analysis.model_ready is None:
            self.provider_label.setText("")  # e.g. another model chosen: its provider is not known yet
            self.provider_label.setToolTip("")
