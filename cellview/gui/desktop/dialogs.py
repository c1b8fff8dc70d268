"""The desktop's dialogs of its own: the pixel size a slide does not record (or classify it as one image)."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from cellview.viewer.slide import WHOLE_IMAGE


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
