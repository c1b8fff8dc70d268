"""*Suggest tiles to label* and undo in the desktop viewer: thin views of ``viewer.suggestions.SuggestTour`` and the
labelling part's history (``LabelsModel.undo`` / ``redo``).

Suggest runs ``cellview.lab.suggest`` on the shown slide on the one worker (the button cancels it while it runs),
outlines the suggested tiles on the slide with white dashes, and N / Shift+N go to the next / previous one:
the view centres on it and picks it, so labelling it is one more key (1–9). A picks every tissue tile of the
image, to label the whole image with one key.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QAction, QColor, QKeySequence, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsPathItem, QHBoxLayout, QMenu, QPushButton, QWidget

from cellview.base.errors import CellviewError
from cellview.gui.widgets.cards import text_label
from cellview.lab.labtiles import AdaptProgress
from cellview.viewer.labelling import LabelsModel
from cellview.viewer.suggestions import DEFAULT_N, SuggestTour

SUGGEST_COLOUR = "#ffffff"
"""Suggested tiles' outline: white dashes on a dark casing, apart from the categories' colours (red, orange, green),
the labels' dashed ones and the pick's cyan."""
CASING = QColor(20, 20, 20, 210)
SUGGEST_HINT = ("Suggest tiles to label: the model reads this slide and proposes the tiles that would teach it most "
                "(every kind of tissue, the unsure first). N goes to the next one, Shift+N back; press 1–9 to label "
                "it. A picks every tissue tile, to label the whole image with one key.")


def _pen(width: float, style: Qt.PenStyle, colour: QColor | None = None) -> QPen:
    pen = QPen(colour or QColor(SUGGEST_COLOUR), width, style)
    pen.setCosmetic(True)
    return pen


class SuggestControls:
    """The Labels card's suggest row, the Labels menu's suggest entries and the suggested tiles' outlines."""

    def __init__(self, window: Any, labels: LabelsModel, menu: QMenu, panel: QWidget, at: int = 1) -> None:
        self.window, self.labels = window, labels
        self.tour = SuggestTour(labels)
        self.worker: Any = None
        self.casing = QGraphicsPathItem()  # under the dashes: legible on pale glass and dark nuclei alike
        self.casing.setPen(_pen(4.5, Qt.PenStyle.SolidLine, CASING))
        self.casing.setZValue(17)
        self.outline = QGraphicsPathItem()
        self.outline.setPen(_pen(2.0, Qt.PenStyle.DashLine))
        self.outline.setZValue(18)
        self.current_casing = QGraphicsPathItem()
        self.current_casing.setPen(_pen(7.0, Qt.PenStyle.SolidLine, CASING))
        self.current_casing.setZValue(20)
        self.current = QGraphicsPathItem()
        self.current.setPen(_pen(4.0, Qt.PenStyle.SolidLine))
        self.current.setZValue(21)
        for item in (self.casing, self.outline, self.current_casing, self.current):
            window.view.vb.addItem(item)
        row_box = QWidget()
        row = QHBoxLayout(row_box)
        row.setContentsMargins(0, 0, 0, 0)
        self.suggest_btn = QPushButton("Suggest tiles to label")
        self.suggest_btn.setToolTip(SUGGEST_HINT)
        self.suggest_btn.clicked.connect(self.suggest)
        row.addWidget(self.suggest_btn, 1)
        self.next_btn = QPushButton("Next  N")
        self.next_btn.setToolTip("Go to the next suggested tile and pick it (Shift+N: the previous one)")
        self.next_btn.clicked.connect(lambda: self.step(1))
        row.addWidget(self.next_btn)
        self.all_btn = QPushButton("Whole image  A")
        self.all_btn.setToolTip("Pick every tissue tile of the image; then 1–9 labels them all")
        self.all_btn.clicked.connect(self.pick_all)
        row.addWidget(self.all_btn)
        self.status = text_label("", "hint")
        self.status.hide()  # an empty line left a gap in the Labels card until something is suggested
        panel.layout().insertWidget(at, row_box)
        panel.layout().insertWidget(at + 1, self.status)

        menu.addSeparator()
        self.act_suggest = menu.addAction("Suggest tiles to label", self.suggest)
        self.act_next = QAction("Next suggested tile", window, shortcut=QKeySequence("N"))
        self.act_next.triggered.connect(lambda: self.step(1))
        self.act_prev = QAction("Previous suggested tile", window, shortcut=QKeySequence("Shift+N"))
        self.act_prev.triggered.connect(lambda: self.step(-1))
        self.act_all = QAction("Pick every tissue tile of the image", window, shortcut=QKeySequence("A"))
        self.act_all.triggered.connect(self.pick_all)
        for act in (self.act_next, self.act_prev, self.act_all):
            menu.addAction(act)
        self.tour.events.suggestions.connect(lambda e: self.redraw())
        labels.events.labels.connect(lambda e: self.redraw())
        labels.events.picked.connect(lambda e: self.redraw())
        self.sync()

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(bool(text))

    # -- running ---------------------------------------------------------------------------------

    def suggest(self) -> None:
        """Start suggesting on the worker; while it runs, the button cancels it."""
        if self.worker is not None:
            self.worker.cancel()
            self._say("Cancelling…")
            return
        self.tour.clear()

        def on_item(item: Any) -> None:
            if isinstance(item, AdaptProgress) and item.done < item.total:
                self._say("The model reads this slide's tiles to choose what to suggest… (click the button "
                                    "again to cancel)")

        def on_failed(exc: CellviewError) -> None:
            self.worker = None
            self.window.show_error(exc, "No tiles suggested")

        def on_done() -> None:
            cancelled = self.worker is not None and self.worker.cancel_token.cancelled
            self.worker = None
            if cancelled and not self.tour.tiles:
                self._say("Suggesting cancelled.")
            self.sync()
            if self.tour.tiles:
                self.step(1)

        self._say("Suggesting…")
        self.worker = self.window.viewer.runner(self.tour.job(DEFAULT_N, on_item, on_failed, on_done))
        self.sync()

    def step(self, by: int) -> None:
        """Centre the view on the next / previous suggested tile and pick it."""
        index = self.tour.step(by)
        grid = self.labels.grid
        if index < 0 or grid is None:
            if not self.tour.tiles:
                self.window.statusBar().showMessage("No suggested tiles: Labels → Suggest tiles to label first.", 5000)
            return
        x, y, w, h = grid.rect(index)
        view = self.window.view
        (x0, x1), _ = view.vb.viewRange()
        if not 3 * w <= (x1 - x0) <= 16 * w:  # keep the zoom where the tile and its neighbours show
            view.vb.setRange(QRectF(x + w / 2 - 4 * w, y + h / 2 - 4 * h, 8 * w, 8 * h), padding=0)
        view.center_on(x + w / 2, y + h / 2)
        self.window.select_tile(index)
        self.labels.pick(index)  # after the selection: the key labels the pick
        self._say(self.tour.where())

    def pick_all(self) -> None:
        n = self.labels.pick_all()
        self.window.statusBar().showMessage(
            f"Picked every tissue tile ({n}): press 1–9 to label the whole image" if n
            else "Analyse the image first: labels go to its tiles.", 6000)

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Suggested tiles not labelled yet in white dashes (a labelled one shows its label's outline instead)."""
        path = QPainterPath()
        labelled = self.labels.tile_labels()
        for i, (x, y, w, h) in zip(self.tour.tiles, self.tour.rects()):
            if i >= len(labelled) or labelled[i] is None:
                path.addRect(QRectF(x, y, w, h))
        self.outline.setPath(path)
        self.casing.setPath(path)
        current = QPainterPath()
        grid = self.labels.grid
        if grid is not None and 0 <= self.tour.position < len(self.tour.tiles):
            current.addRect(QRectF(*grid.rect(self.tour.tiles[self.tour.position])))
        self.current.setPath(current)
        self.current_casing.setPath(current)
        self.sync()

    def sync(self) -> None:
        running = self.worker is not None
        can = self.tour.can_suggest
        self.suggest_btn.setText("Cancel suggesting" if running else
                                 "Suggest again" if self.tour.tiles else "Suggest tiles to label")
        self.suggest_btn.setEnabled(running or can)
        self.act_suggest.setEnabled(can and not running)
        for w in (self.next_btn, self.act_next, self.act_prev):
            w.setEnabled(bool(self.tour.tiles))
        self.all_btn.setEnabled(can)
        self.act_all.setEnabled(can)
        if not running and self.tour.tiles and self.tour.position < 0:
            self._say(self.tour.note)
        elif not running and not self.tour.tiles and not can:
            self._say("")


class UndoActions:
    """Labels → Undo / Redo (Ctrl+Z / Ctrl+Shift+Z), named after the step they take back."""

    def __init__(self, window: Any, labels: LabelsModel, menu: QMenu) -> None:
        self.window, self.labels = window, labels
        self.act_undo = QAction("Undo", window, shortcut=QKeySequence(QKeySequence.StandardKey.Undo))
        self.act_undo.triggered.connect(self.undo)
        self.act_redo = QAction("Redo", window, shortcut=QKeySequence(QKeySequence.StandardKey.Redo))
        self.act_redo.triggered.connect(self.redo)
        first = menu.actions()[0] if menu.actions() else None
        menu.insertActions(first, [self.act_undo, self.act_redo])
        menu.insertSeparator(first)
        labels.events.labels.connect(lambda e: self.sync())
        self.sync()

    def undo(self) -> None:
        text = self.labels.undo()
        self.window.statusBar().showMessage(f"{text}: done" if text else "Nothing to undo", 5000)

    def redo(self) -> None:
        text = self.labels.redo()
        self.window.statusBar().showMessage(f"{text}: done" if text else "Nothing to redo", 5000)

    def sync(self) -> None:
        history = self.labels.history
        self.act_undo.setText(history.undo_text() or "Undo (nothing to undo)")
        self.act_undo.setEnabled(history.can_undo)
        self.act_redo.setText(history.redo_text() or "Redo (nothing to redo)")
        self.act_redo.setEnabled(history.can_redo)
