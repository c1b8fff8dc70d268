"""The kiosk's touch sheets: panels drawn inside the kiosk window, over what they concern.

A sheet is a child of the window, never a top-level dialog: without a window manager a dialog
can open off screen, behind the full-screen window or wider than the screen (Qt's own file
dialog was 2,107 px wide on a 1,024-px screen). A sheet takes the window's (or the slide
view's) geometry, so it always fits, and its controls are finger-sized like the rest of the kiosk.

- ``FilePickerSheet``: folders and slides in big rows (a DICOM folder is one slide), Up, Open.
- ``ScaleSheet``: the pixel size of a slide that does not say it: 40× / 20× / 10× or a value.
- ``TileSheet``: a tapped tile's call and probabilities, over the slide where the finger is.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from PySide6.QtCore import QRect, QRectF, Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QScroller,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.gui.widgets.cards import text_label
from cellview.gui.widgets.inspector import OUT_OF_DOMAIN_TEXT, ProbabilityBars, pct
from cellview.slides.slide import SUPPORTED_SUFFIXES, slide_display_name
from cellview.viewer.kiosk.settings import SCALE_PRESETS


class Sheet(QFrame):
    """A card over a dimmed host widget, sized to the host (``margin_px`` all round); hidden until ``open``."""

    closed = Signal()

    def __init__(self, host: QWidget, margin_px: int = 16) -> None:
        super().__init__(host)
        self.setObjectName("kioskSheetBackdrop")
        self.margin_px = margin_px
        outer = QVBoxLayout(self)
        outer.setContentsMargins(margin_px, margin_px, margin_px, margin_px)
        self.card = QFrame()
        self.card.setObjectName("kioskSheet")
        outer.addWidget(self.card)
        self.body = QVBoxLayout(self.card)
        self.body.setContentsMargins(20, 14, 20, 14)
        self.body.setSpacing(10)
        self.hide()

    def open(self) -> None:
        self.fit()
        self.show()
        self.raise_()

    def fit(self) -> None:
        host = self.parentWidget()
        if host is not None:
            self.setGeometry(QRect(0, 0, host.width(), host.height()))

    def close_sheet(self) -> None:
        if self.isVisible():
            self.hide()
            self.closed.emit()


class FilePickerSheet(Sheet):
    """Choose a slide by finger: one folder at a time, folders first, a DICOM folder as one slide."""

    chosen = Signal(str)

    def __init__(self, host: QWidget) -> None:
        super().__init__(host)
        head = QHBoxLayout()
        head.addWidget(text_label("Open slide or image", "kioskTitle", wrap=False))
        head.addStretch(1)
        self.up_btn = QPushButton("▲ Up")
        self.up_btn.clicked.connect(self.go_up)
        head.addWidget(self.up_btn)
        self.body.addLayout(head)
        self.where = text_label("", "kioskHint", wrap=False)
        self.body.addWidget(self.where)
        self.list = QListWidget()
        self.list.setObjectName("kioskFiles")
        self.list.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.itemClicked.connect(self._clicked)
        QScroller.grabGesture(self.list.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        self.body.addWidget(self.list, 1)
        row = QHBoxLayout()
        row.addStretch(1)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.close_sheet)
        row.addWidget(cancel)
        self.open_btn = QPushButton("Open")
        self.open_btn.setObjectName("primary")
        self.open_btn.setEnabled(False)
        self.open_btn.clicked.connect(self._open_selected)
        row.addWidget(self.open_btn)
        self.body.addLayout(row)
        self.folder = Path.home()
        self.selected: Path | None = None

    def show_folder(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.selected = None
        self.open_btn.setEnabled(False)
        self.where.setText(str(self.folder))
        self.where.setToolTip(str(self.folder))
        self.up_btn.setEnabled(self.folder.parent != self.folder)
        self.list.clear()
        for kind, path in entries(self.folder):
            text = f"▸ {path.name}/" if kind == "folder" else f"   {slide_display_name(path)}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, (kind, str(path)))
            self.list.addItem(item)
        if self.list.count() == 0:
            item = QListWidgetItem("No slides or folders here")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.list.addItem(item)

    def open_at(self, folder: str | Path) -> None:
        self.show_folder(folder if Path(folder).is_dir() else Path.home())
        self.open()

    def go_up(self) -> None:
        self.show_folder(self.folder.parent)

    def _clicked(self, item: QListWidgetItem) -> None:
        data = item.data(Qt.ItemDataRole.UserRole)
        if not data:
            return
        kind, path = data
        if kind == "folder":
            self.show_folder(path)
        else:
            self.selected = Path(path)
            self.open_btn.setEnabled(True)

    def _open_selected(self) -> None:
        if self.selected is not None:
            path = str(self.selected)
            self.close_sheet()
            self.chosen.emit(path)


def entries(folder: Path) -> list[tuple[str, Path]]:
    """("folder" | "slide", path) in ``folder``: sub-folders first, then slides (a folder of .dcm files is one
    slide, opened by its first file), hidden names left out, each group by name."""
    try:
        children = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name.lower())
    except OSError:
        return []
    folders: list[tuple[str, Path]] = []
    slides: list[tuple[str, Path]] = []
    for p in children:
        try:
            if p.is_dir():
                inside = list(p.iterdir())
                dcm = sorted(f for f in inside if f.suffix.lower() == ".dcm")
                only_dicom = dcm and not any(f.is_dir() or (f.suffix.lower() in SUPPORTED_SUFFIXES
                                                            and f.suffix.lower() != ".dcm") for f in inside)
                (slides if only_dicom else folders).append(("slide", dcm[0]) if only_dicom else ("folder", p))
            elif p.suffix.lower() in SUPPORTED_SUFFIXES and p.suffix.lower() != ".dcm":
                slides.append(("slide", p))
        except OSError:
            continue
    if any(p.suffix.lower() == ".dcm" for p in children):  # inside a DICOM slide's folder: the slide itself
        slides.insert(0, ("slide", next(p for p in children if p.suffix.lower() == ".dcm")))
    return folders + slides


class ScaleSheet(Sheet):
    """The pixel size of a slide that does not record it: a preset magnification or a value, by finger."""

    chosen = Signal(str, float)  # slide path, µm per pixel

    STEP_UM = 0.01

    def __init__(self, host: QWidget) -> None:
        super().__init__(host)
        self.title = text_label("Pixel size unknown", "kioskTitle", wrap=False)
        self.body.addWidget(self.title)
        self.message = text_label("", "kioskHint")
        self.body.addWidget(self.message)
        presets = QHBoxLayout()
        self.preset_buttons: dict[str, QPushButton] = {}
        for name, mpp in SCALE_PRESETS:
            btn = QPushButton(f"{name}  ({mpp:g} µm/px)")
            btn.clicked.connect(lambda _c=False, v=mpp: self.choose(v))
            presets.addWidget(btn)
            self.preset_buttons[name] = btn
        self.body.addLayout(presets)
        row = QHBoxLayout()
        row.addWidget(text_label("Other:", "kioskHint", wrap=False))
        minus, plus = QPushButton("−"), QPushButton("+")
        minus.clicked.connect(lambda: self.nudge(-1))
        plus.clicked.connect(lambda: self.nudge(1))
        self.value_label = text_label("", "kioskTitle", wrap=False)
        self.value_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        row.addWidget(minus)
        row.addWidget(self.value_label, 1)
        row.addWidget(plus)
        self.use_btn = QPushButton("Use")
        self.use_btn.setObjectName("primary")
        self.use_btn.clicked.connect(lambda: self.choose(self.value))
        row.addWidget(self.use_btn)
        self.body.addLayout(row)
        self.body.addStretch(1)
        later = QPushButton("Not now")
        later.clicked.connect(self.close_sheet)
        self.body.addWidget(later, 0, Qt.AlignmentFlag.AlignRight)
        self.path = ""
        self.value = 0.5
        self._show_value()

    def ask(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.title.setText(f"Pixel size of {slide_display_name(Path(path))}?")
        self.message.setText(message)
        self.open()

    def nudge(self, steps: int) -> None:
        step = self.STEP_UM if self.value < 0.2 else 0.05
        self.value = min(50.0, max(0.02, round(self.value + steps * step, 3)))
        self._show_value()

    def _show_value(self) -> None:
        self.value_label.setText(f"{self.value:g} µm/px")

    def choose(self, mpp_um: float) -> None:
        path = self.path
        self.close_sheet()
        self.chosen.emit(path, float(mpp_um))


class TileSheet(QFrame):
    """A tapped tile's call over the slide view, placed away from the finger so the tile stays in sight.

    The call and the probability bars scroll inside the sheet when the view is short (800 × 480), so
    the sheet never covers more than ``MAX_SHARE`` of the slide; the close and details buttons stay put.
    """

    closeRequested = Signal()
    detailsRequested = Signal()
    MAX_SHARE = 0.7

    def __init__(self, host: QWidget) -> None:
        super().__init__(host)
        self.setObjectName("kioskTileSheet")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 8, 10, 10)
        lay.setSpacing(4)
        content = QWidget()
        content.setObjectName("kioskTileSheetContent")
        inner = QVBoxLayout(content)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.setSpacing(4)
        self.title = text_label("", "tileSheetTitle")
        self.title.setTextFormat(Qt.TextFormat.RichText)
        inner.addWidget(self.title)
        self.subtitle = text_label("", "tileSheetSubtitle")
        self.subtitle.setTextFormat(Qt.TextFormat.RichText)
        inner.addWidget(self.subtitle)
        self.bars = ProbabilityBars()
        inner.addWidget(self.bars)
        inner.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setStyleSheet("QScrollArea, QScrollArea > QWidget > QWidget { background: transparent; }")
        QScroller.grabGesture(self.scroll.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        lay.addWidget(self.scroll, 1)
        row = QHBoxLayout()
        self.details_btn = QPushButton("Patch and details ▸")
        self.details_btn.clicked.connect(self.detailsRequested)
        row.addWidget(self.details_btn)
        row.addStretch(1)
        self.close_btn = QPushButton("Close")
        self.close_btn.clicked.connect(self.closeRequested)
        row.addWidget(self.close_btn)
        lay.addLayout(row)
        self.index = -1
        self.hide()

    def show_tile(self, index: int, result) -> None:
        """``result``: the shown AnalysisResult; the tile's call as the inspector gives it."""
        self.index = index
        m = result.model
        if not bool(result.done[index]):
            self.title.setText("Tile not analysed yet")
            self.subtitle.setText("")
            self.bars.set_values(m.class_names, m.class_colors, None)
            return
        cls, k = int(result.pred_class[index]), int(result.pred_category[index])
        cat = CATEGORIES[k]
        self.title.setText(f"<span style='color:{m.class_colors[cls]}'>■</span> {escape(m.class_names[cls])}")
        sub = f"<b style='color:{CATEGORY_COLORS[cat]}'>{cat}</b> · confidence <b>{pct(float(result.confidence[index]))}</b>"
        if result.has_domain and bool(result.out_of_domain[index]):
            sub += f"<br><b style='color:{OUT_OF_DOMAIN_TEXT}'>Out of the model's domain: unreliable</b>"
        self.subtitle.setText(sub)
        by_class = tuple(m.class_names) != tuple(m.class_categories)
        self.bars.set_values(m.class_names, m.class_colors, result.probs[index], cls,
                             result.category_probs[index] if by_class else None, k)

    def place(self, view_rect: QRect, tile: QRectF) -> QRect:
        """Across the view's width, in the half the tapped tile (``tile``, in view pixels) is not in; returns
        where the sheet is (the kiosk pans the slide when the tile would still be under it)."""
        self.setFixedWidth(max(200, view_rect.width() - 16))
        self.scroll.widget().adjustSize()
        margins = self.layout().contentsMargins()
        wanted = (self.scroll.widget().sizeHint().height() + margins.top() + margins.bottom()
                  + self.close_btn.sizeHint().height() + 12)
        self.setFixedHeight(max(140, min(wanted, int(view_rect.height() * self.MAX_SHARE))))
        at_bottom = tile.center().y() < view_rect.center().y()
        top = view_rect.bottom() - self.height() - 8 if at_bottom else view_rect.top() + 8
        self.move(view_rect.left() + 8, max(view_rect.top(), top))
        self.scroll.verticalScrollBar().setValue(0)
        self.show()
        self.raise_()
        return self.geometry()
