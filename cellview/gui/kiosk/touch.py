"""The kiosk's touch sheets: panels drawn inside the kiosk window, over what they concern.

A sheet is a child of the window, never a top-level dialog: without a window manager a dialog
can open off screen, behind the full-screen window or wider than the screen (Qt's own file
dialog was 2,107 px wide on a 1,024-px screen). A sheet takes the window's (or the slide
view's) geometry, so it always fits, and its controls are finger-sized like the rest of the kiosk.

- ``FilePickerSheet``: folders and slides in big rows (a DICOM folder is one slide), Up, Open.
- ``ScaleSheet``: the pixel size of a slide that does not say it: 40× / 20× / 10× or any value, on a keypad.
- ``TileSheet``: a tapped tile's call and probabilities, over the slide where the finger is.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRect, QRectF, Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.gui.kiosk.keypad import DecimalPad, typed_value
from cellview.gui.kiosk.lines import WholeLines, snap_scroller
from cellview.gui.kiosk.style import (
    KIOSK_LIST_BACKGROUND,
    KIOSK_SHEET_BACKGROUND,
    KIOSK_SHEET_CARD,
    THIN_SCROLL_BAR,
)
from cellview.gui.kiosk.widgets import TextScroll
from cellview.gui.widgets.cards import text_label
from cellview.gui.widgets.inspector import OUT_OF_DOMAIN_TEXT, ProbabilityBars, pct
from cellview.slides.slide import _MPP_PLAUSIBLE_UM as MPP_RANGE
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
        snap_scroller(self.list)
        self.lines = WholeLines(self.list, KIOSK_LIST_BACKGROUND)  # no file name cut at the list's edges
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
    """The pixel size of a slide that does not record it: a preset magnification, or any value typed on a
    keypad (``keypad.DecimalPad``: 0.62, 0.4415 µm/px), by finger."""

    chosen = Signal(str, float)  # slide path, µm per pixel

    def __init__(self, host: QWidget) -> None:
        super().__init__(host)
        self.title = text_label("Pixel size unknown", "kioskTitle", wrap=False)
        self.body.addWidget(self.title)
        self.message = text_label("", "kioskHint")
        presets = QHBoxLayout()
        self.preset_buttons: dict[str, QPushButton] = {}
        for name, mpp in SCALE_PRESETS:
            btn = QPushButton(f"{name}  ({mpp:g} µm/px)")
            btn.clicked.connect(lambda _c=False, v=mpp: self.choose(v))
            presets.addWidget(btn)
            self.preset_buttons[name] = btn
        self.body.addLayout(presets)
        row = QHBoxLayout()  # the value typed, Use and Not now beside the keypad (a landscape screen is short)
        left = QVBoxLayout()
        message = TextScroll(self.message)  # why it is asked: scrolls on a short screen (whole lines), the keypad stays
        self.message_lines = WholeLines(message, KIOSK_SHEET_CARD)
        message.verticalScrollBar().setStyleSheet(THIN_SCROLL_BAR)  # a finger drags the text; the bar only shows it
        left.addWidget(message, 1)
        left.addWidget(text_label("Or type it (µm per pixel):", "kioskHint"))
        self.value_label = text_label("", "kioskValue", wrap=False)
        self.value_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        left.addWidget(self.value_label)
        self.range_note = text_label("", "kioskHint")
        left.addWidget(self.range_note)
        buttons = QHBoxLayout()
        later = QPushButton("Not now")
        later.clicked.connect(self.close_sheet)
        buttons.addWidget(later)
        self.use_btn = QPushButton("Use")
        self.use_btn.setObjectName("primary")
        self.use_btn.clicked.connect(self._use_typed)
        buttons.addWidget(self.use_btn)
        left.addLayout(buttons)
        row.addLayout(left, 1)
        self.pad = DecimalPad()
        self.pad.changed.connect(lambda _t: self._show_value())
        row.addWidget(self.pad)
        self.body.addLayout(row, 1)
        self.path = ""
        self._show_value()

    @property
    def value(self) -> float | None:
        """The pixel size typed, when it is a plausible one (``slides.slide``'s range), else None."""
        v = typed_value(self.pad.text)
        return v if v is not None and MPP_RANGE[0] <= v <= MPP_RANGE[1] else None

    def ask(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.title.setText(f"Pixel size of {slide_display_name(Path(path))}?")
        self.message.setText(message)
        self.pad.set_text("")
        self.open()

    def _show_value(self) -> None:
        text = self.pad.text
        self.value_label.setText(f"{text or '–'} µm/px")
        ok = self.value is not None
        self.use_btn.setEnabled(ok)
        lo, hi = MPP_RANGE
        self.range_note.setText("" if ok or not typed_value(text) else f"From {lo:g} to {hi:g} µm per pixel.")

    def _use_typed(self) -> None:
        if self.value is not None:
            self.choose(self.value)

    def choose(self, mpp_um: float) -> None:
        path = self.path
        self.close_sheet()
        self.chosen.emit(path, float(mpp_um))


class TileSheet(QFrame):
    """A tapped tile's call over the slide view, placed away from the finger so the tile stays in sight.

    The sheet never covers more than ``MAX_SHARE`` of the slide: when every probability row does not fit, it shows
    the category rows (the classes' are under "Patch and details"), and what still does not fit scrolls, cut
    between rows (``lines.WholeLines``); the close and details buttons stay put.
    """

    closeRequested = Signal()
    detailsRequested = Signal()
    MAX_SHARE = 0.7
    MAX_SHARE_SHORT = 0.85
    """On a view too short for the category rows in ``MAX_SHARE`` (800 × 480 with a note above the slide)."""

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
        self.more_label = text_label("", "tileSheetSubtitle")  # compact: where the class rows are
        self.more_label.hide()
        inner.addWidget(self.more_label)
        inner.addStretch(1)
        self.compact = False  # the category rows only: all of them did not fit the sheet
        self._rows: tuple = ()
        self.scroll = QScrollArea()
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setStyleSheet("QScrollArea, QScrollArea > QWidget > QWidget { background: transparent; }")
        snap_scroller(self.scroll)
        self.lines = WholeLines(self.scroll, KIOSK_SHEET_BACKGROUND)  # whole probability rows, never half of one
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
            self._rows = (m.class_names, m.class_colors, None)
            self._show_rows()
            return
        cls, k = int(result.pred_class[index]), int(result.pred_category[index])
        cat = CATEGORIES[k]
        self.title.setText(f"<span style='color:{m.class_colors[cls]}'>■</span> {escape(m.class_names[cls])}")
        sub = f"<b style='color:{CATEGORY_COLORS[cat]}'>{cat}</b> · confidence <b>{pct(float(result.confidence[index]))}</b>"
        if result.has_domain and bool(result.out_of_domain[index]):
            sub += f"<br><b style='color:{OUT_OF_DOMAIN_TEXT}'>Out of the model's domain: unreliable</b>"
        self.subtitle.setText(sub)
        by_class = tuple(m.class_names) != tuple(m.class_categories)
        self._rows = (m.class_names, m.class_colors, result.probs[index], cls,
                      result.category_probs[index] if by_class else None, k)
        self._show_rows()

    def _show_rows(self) -> None:
        """Every row, or in ``compact`` the category rows only (when the model's classes are finer)."""
        rows = self._rows
        compact = self.compact and len(rows) == 6 and rows[4] is not None
        if compact:
            names, colors, probs, _cls, categories, k = rows
            self.bars.set_values((), (), np.zeros(0, np.float32), -1, categories, k)
            self.more_label.setText(f"The {len(names)} classes' probabilities: Patch and details ▸")
        else:
            self.bars.set_values(*rows)
        self.more_label.setVisible(compact)

    def place(self, view_rect: QRect, tile: QRectF) -> QRect:
        """Across the view's width, in the half the tapped tile (``tile``, in view pixels) is not in; returns
        where the sheet is (the kiosk pans the slide when the tile would still be under it). As tall as its
        content, at most ``MAX_SHARE`` of the view (``MAX_SHARE_SHORT`` for the category rows of a short one), and
        then cut between rows, never through one."""
        at_bottom = tile.center().y() < view_rect.center().y()
        most = max(140, int(view_rect.height() * self.MAX_SHARE))
        if self.compact:
            self.compact = False
            self._show_rows()
        self.setFixedSize(max(200, view_rect.width() - 16), most)
        self.show()
        self.raise_()
        self.layout().activate()
        content = self.scroll.widget()
        content.layout().activate()
        room = self.scroll.viewport().height()
        chrome = self.height() - room
        need = self._content_height(self.scroll.width())
        if need > room and not self.compact:  # the category rows alone, when every row would not fit
            self.compact = True
            self._show_rows()
            content.layout().activate()
            need = self._content_height(self.scroll.width())
        if need > room:  # a short view (a note above it): the category rows still whole, on a little more of it
            room = max(room, min(need, int(view_rect.height() * self.MAX_SHARE_SHORT) - chrome))
        if need > room:  # scrolls: the rows that fit whole
            self.setFixedHeight(room + chrome)
            self.layout().activate()
            content.layout().activate()
            room = self.scroll.viewport().height()
            cuts = [y for y in self.lines.cuts() if 0 < y <= room]
            need = cuts[-1] if cuts and self.lines.slices(room) else room
        self.setFixedHeight(need + chrome)
        top = view_rect.bottom() - self.height() - 8 if at_bottom else view_rect.top() + 8
        self.move(view_rect.left() + 8, max(view_rect.top(), top))
        self.scroll.verticalScrollBar().setValue(0)
        self.lines.update()
        return self.geometry()

    def _content_height(self, width: int) -> int:
        """The content's height at ``width`` (the scroll area's: no scroll bar is needed when it fits)."""
        content = self.scroll.widget()
        lay = content.layout()
        return lay.totalHeightForWidth(width) if lay.hasHeightForWidth() else content.sizeHint().height()
