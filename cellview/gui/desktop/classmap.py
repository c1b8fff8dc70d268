"""The QuPath class mapping dialog: each class of imported annotations the model does not know ("Tumor", "Stroma")
gets one of the model's categories or classes, or "leave it out".

A view of ``LabelsModel.foreign_classes`` / ``mapping_for`` / ``set_class_map`` (``lab.classmap`` remembers the
choice per QuPath class, in the file ``cellview adapt`` reads too, and proposes it next time). A class left
"not mapped yet" stays out of the labels, so it never breaks *Adapt model…*.
"""

from __future__ import annotations

from html import escape
from typing import Any

from PySide6.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout

from cellview.lab.classmap import LEAVE_OUT, mapping_choices
from cellview.viewer.labelling import LabelsModel

NOT_MAPPED = "not mapped yet (not a label)"
LEAVE_OUT_TEXT = "ignore: leave it out of the labels"


class ClassMapDialog(QDialog):
    """One row per QuPath class: a choice of the model's categories and classes, 'ignore', or not mapped yet."""

    def __init__(self, parent: Any, labels: LabelsModel, classes: list[str]) -> None:
        super().__init__(parent)
        self.labels = labels
        self.setWindowTitle("Map QuPath classes to the model's labels")
        lay = QVBoxLayout(self)
        intro = QLabel(f"<p>These QuPath classes are not categories or classes of the model. Say what each one means; "
                       "the choice is remembered for the next import (and <i>cellview adapt</i> reads it too). A class "
                       f"left <i>{escape(NOT_MAPPED)}</i> labels nothing.</p>")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        form = QFormLayout()
        result = labels.analysis.shown_result()
        names = result.model.class_names if result is not None else ()
        cats = result.model.class_categories if result is not None else ()
        self.boxes: dict[str, QComboBox] = {}
        for cls in classes:
            box = QComboBox()
            box.addItem(NOT_MAPPED, None)
            for choice in mapping_choices(names, cats):
                box.addItem(LEAVE_OUT_TEXT if choice == LEAVE_OUT else choice, choice)
            was = labels.mapping_for(cls)
            if was is not None and box.findData(was) >= 0:
                box.setCurrentIndex(box.findData(was))  # proposed again
            form.addRow(QLabel(f"<b>{escape(cls)}</b> →"), box)
            self.boxes[cls] = box
        lay.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Use this mapping")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def choices(self) -> dict[str, str | None]:
        return {cls: box.currentData() for cls, box in self.boxes.items()}

    def apply(self) -> None:
        self.labels.set_class_map(self.choices())


def map_classes(window: Any, labels: LabelsModel, classes: list[str] | None = None) -> bool:
    """Open the dialog for ``classes`` (default: every foreign class of the slide's labels); True when applied."""
    classes = labels.foreign_classes() if classes is None else classes
    if not classes or not labels.choices:
        return False
    dialog = ClassMapDialog(window, labels, classes)
    applied = dialog.exec() == QDialog.DialogCode.Accepted
    if applied:
        dialog.apply()
    window.take_focus()
    return applied
