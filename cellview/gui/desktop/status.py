"""The desktop's status bar: the open slide (size, levels, scale), the tile under the pointer, the model's
provider, and the model's passing messages."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QStatusBar

from cellview.analysis.results import plural
from cellview.slides.levels import describe_skipped
from cellview.viewer.analysis import ModelReady
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel
from cellview.viewer.slide import WHOLE_IMAGE

NO_SLIDE_TEXT = "No slide open — File → Open (Ctrl+O), drop a file here, or pass one on the command line"


class StatusLine:
    """``slide_label``, ``hover_label`` and ``provider_label`` on ``bar``."""

    def __init__(self, model: ViewerModel, bar: QStatusBar) -> None:
        self.model = model
        self.bar = bar
        self.hover_label = QLabel("")
        self.slide_label = QLabel(NO_SLIDE_TEXT)
        self.provider_label = QLabel("")
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
        else:
            self._show_slide()

    def _show_slide(self) -> None:
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
        self.slide_label.setText(text)
        self.slide_label.setToolTip(describe_skipped(info.skipped_levels))

    def _on_model_ready(self, event: Event) -> None:
        ready: ModelReady = event.value
        self.provider_label.setText(ready.description)
        self.provider_label.setObjectName("warn" if ready.warn else "")
        self.provider_label.setStyle(self.provider_label.style())
        self.provider_label.setToolTip(ready.fallback_message or ready.description)

    def _on_running(self, event: Event) -> None:
        if event.value:
            name = Path(self.model.settings.model_path or "").parent.name
            self.provider_label.setText(f"Loading {name or 'model'}…")

    def _on_result(self, event: Event) -> None:
        if event.value is None and not self.model.analysis.running and self.model.analysis.model_ready is None:
            self.provider_label.setText("")  # e.g. another model chosen: its provider is not known yet
            self.provider_label.setToolTip("")
