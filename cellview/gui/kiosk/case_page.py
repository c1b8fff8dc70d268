"""The kiosk's case page: the slide, and beside it a touch column whose top (the case, its call and shares)
fits a 1024 × 600 screen, then the shared panels' widgets (the domain warning under the call it qualifies, the
progress, the heatmap's controls, the tile inspector) and the page's buttons. A tap on the slide shows the
tile's call in a sheet over the slide, away from the finger."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRectF, Qt, Signal
from PySide6.QtWidgets import (
    QBoxLayout,
    QGridLayout,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.results import AnalysisResult
from cellview.gui.kiosk.lines import WholeLines, snap_scroller
from cellview.gui.kiosk.style import KIOSK_BACKGROUND, KIOSK_OVERVIEW_SHARE, KIOSK_SCALE_BAR_PT
from cellview.gui.kiosk.touch import TileSheet
from cellview.gui.kiosk.widgets import NameLabel
from cellview.gui.panels.call import CallPanel
from cellview.gui.qt_viewer import QtViewer
from cellview.gui.widgets.cards import text_label
from cellview.gui.widgets.scroll import WheelGuard
from cellview.viewer.events import Event

SHORT_STYLE_LABELS = ("Outlines", "Fill", "Fill + outlines")
"""The drawing styles in a narrow touch column (``outputs.overlay.STYLES``' order)."""


def same_rect(a: QRectF, b: QRectF) -> bool:
    """The same view of the slide, give or take a rounding (level-0 pixels)."""
    tol = 1e-3 * max(a.width(), a.height(), 1.0)
    return all(abs(u - v) <= tol for u, v in zip((a.x(), a.y(), a.width(), a.height()),
                                                  (b.x(), b.y(), b.width(), b.height())))


class CasePage(QWidget):
    """``case_title``, ``call`` (the headline), the buttons (``home_btn``, ``open_btn2``, ``analyse_btn2``,
    ``fit_btn``: ``homeRequested``, ``openRequested``, ``analyseRequested``), the scrolling column
    ``side_scroll`` and the ``tile_sheet``."""

    homeRequested = Signal()
    openRequested = Signal()
    analyseRequested = Signal()

    def __init__(self, viewer: QtViewer) -> None:
        super().__init__()
        self.model = viewer.model
        self.view = view = viewer.view
        heatmap, status, inspector = viewer.heatmap, viewer.run_status, viewer.inspector
        self.inspector = inspector
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(16)
        holder = QWidget()
        canvas = QVBoxLayout(holder)
        canvas.setContentsMargins(0, 0, 0, 0)
        canvas.setSpacing(0)
        canvas.addWidget(view, 1)
        lay.addWidget(holder, 1)
        view.overview_share = KIOSK_OVERVIEW_SHARE
        view.offer_open = False
        view.empty_hint.hide()
        view.scale_bar.set_font_pt(KIOSK_SCALE_BAR_PT)
        panel = QWidget()
        side = QVBoxLayout(panel)
        side.setContentsMargins(0, 0, 8, 0)
        side.setSpacing(10)
        self.case_title = NameLabel("", "kioskTitle")  # the whole name, on two lines if need be
        side.addWidget(self.case_title)
        self.call = CallPanel(self.model, ("kioskCall", "kioskEvidence", "kioskShares"), swatch=True,
                              short_reading=True)
        for label in self.call.widgets():
            side.addWidget(label)
        # the domain warning right under the call it qualifies (the slide view is too small for a banner)
        side.addWidget(heatmap.domain_banner)
        heatmap.domain_banner.set_stacked(True)
        side.addWidget(status.progress)
        side.addWidget(status.rate_label)
        status.rate_label.setWordWrap(True)  # "Results saved to /long/outbox/path" must not widen the panel
        buttons = QGridLayout()
        self.home_btn = QPushButton("◀ Cases")
        self.home_btn.clicked.connect(self.homeRequested)
        self.open_btn2 = QPushButton("Open…")
        self.open_btn2.clicked.connect(self.openRequested)
        self.analyse_btn2 = QPushButton("Analyse")
        self.analyse_btn2.setObjectName("primary")
        self.analyse_btn2.clicked.connect(self.analyseRequested)
        self.fit_btn = QPushButton("Fit")
        self.fit_btn.clicked.connect(view.fit)
        for i, btn in enumerate((self.home_btn, self.open_btn2, self.analyse_btn2, self.fit_btn)):
            buttons.addWidget(btn, i // 2, i % 2)
        side.addLayout(buttons)
        side.addWidget(status.levels_label)
        side.addWidget(heatmap.show_overlay)
        side.addWidget(heatmap.show_regions)
        side.addWidget(heatmap.regions_label)
        side.addWidget(heatmap.show_cells)
        side.addWidget(text_label("Draw", "kioskHint", wrap=False))
        side.addWidget(heatmap.style_box)
        side.addWidget(text_label("Fill opacity", "kioskHint", wrap=False))
        side.addWidget(heatmap.opacity)
        side.addWidget(heatmap.toggles)
        side.addWidget(heatmap.filter_notice)  # a filter or "Show calls anyway" is never silent here either
        side.addWidget(heatmap.colour_hint)
        side.addWidget(heatmap.summary_label)
        side.addWidget(text_label("Tile inspector", "kioskHint", wrap=False))
        side.addWidget(inspector)
        # a narrow touch panel: shorter labels, the inspector's patch above its facts
        heatmap.show_regions.setText("Malignant regions")
        for i, short in enumerate(SHORT_STYLE_LABELS):
            heatmap.style_box.setItemText(i, short)
        inspector.top_layout.setDirection(QBoxLayout.Direction.TopToBottom)
        side.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # A finger drag scrolls the panel (kinetic), as on a phone, and it stops between lines of text (no line is
        # ever shown cut at its edges); a wheel over a slider scrolls it too.
        snap_scroller(scroll)
        self.side_lines = WholeLines(scroll, KIOSK_BACKGROUND)
        self.side_guard = WheelGuard(scroll)
        self.side_guard.guard(panel)
        self.side_scroll = scroll
        lay.addWidget(scroll, 0)
        self._panned: tuple[QRectF, QRectF] | None = None  # (the view before a tap panned it, the view after)
        self.tile_sheet = TileSheet(view)
        self.tile_sheet.closeRequested.connect(self.hide_tile_sheet)
        self.tile_sheet.detailsRequested.connect(self.show_tile_details)
        viewer.painter.updated.connect(self._refresh_sheet)
        self.model.selection.events.selection.connect(self._on_selection)

    def fit(self, width: int, height: int, k: float) -> None:
        """The column's share of a ``width`` × ``height`` screen whose text is scaled by ``k``."""
        # Touch-sized controls need about 440 px besides the 40 px scroll bar (less with smaller text); a share
        # of the screen keeps them unclipped and leaves the slide the rest (at 1024 px the panel takes 480,
        # at 1920 px 760, at 800 × 480 384).
        self.side_scroll.setFixedWidth(int(min(760, max(480 * k, 0.40 * width))))
        # the inspector's patch (and its activation map) as large as the panel allows, with room below it
        # for its colour scale on a short screen (at 1024 × 600: 330 px)
        self.inspector.set_patch_px(min(512, self.side_scroll.width() - 90, int(0.55 * height)))
        if self.tile_sheet.isVisible():
            self.hide_tile_sheet()

    def show_top(self) -> None:
        """A case opens at the top of its panel (the call first), with no sheet of an earlier one."""
        self.hide_tile_sheet()
        self.side_scroll.verticalScrollBar().setValue(0)

    # ------------------------------------------------------------------------------ the tapped tile

    def tap(self, l0_x: float, l0_y: float) -> None:
        """A tap on the slide: the tile's call in a sheet over the slide, away from the finger."""
        index = self.model.selection.select_at(l0_x, l0_y)
        result = self.model.analysis.shown_result()
        if index < 0 or result is None:
            self.hide_tile_sheet()
            return
        self.tile_sheet.show_tile(index, result)
        x, y, w, h = result.grid.rect(index)
        view = self.view
        tile = view.mapFromScene(view.vb.mapViewToScene(QRectF(x, y, w, h))).boundingRect()
        sheet = self.tile_sheet.place(view.rect(), QRectF(tile))
        if sheet.intersects(tile):  # pan the slide so the tile sits in the middle of the room the sheet leaves
            free_top, free_bottom = ((view.rect().top(), sheet.top()) if sheet.top() > view.rect().top() + 8
                                     else (sheet.bottom(), view.rect().bottom()))
            dy_px = (free_top + free_bottom) / 2 - tile.center().y()
            before = view.visible_l0_rect()
            centre = before.center()
            view.center_on(centre.x(), centre.y() - dy_px * view.l0_per_screen_px())
            if self._panned is None:  # the view the slide goes back to when the sheet closes
                self._panned = (before, view.visible_l0_rect())
            else:
                self._panned = (self._panned[0], view.visible_l0_rect())

    def _on_selection(self, event: Event) -> None:
        if event.value < 0:
            self.hide_tile_sheet()

    def _refresh_sheet(self, result: AnalysisResult | None) -> None:
        if self.tile_sheet.isVisible() and result is not None and 0 <= self.tile_sheet.index < result.n_tiles:
            self.tile_sheet.show_tile(self.tile_sheet.index, result)  # a streaming run: its call may arrive now

    def hide_tile_sheet(self) -> None:
        """Close the sheet; a slide panned to make room for it goes back to where it was (unless it was moved since)."""
        self.tile_sheet.hide()
        self.tile_sheet.index = -1
        panned, self._panned = self._panned, None
        if panned is not None and same_rect(self.view.visible_l0_rect(), panned[1]):
            self.view.vb.setRange(panned[0], padding=0)

    def show_tile_details(self) -> None:
        """The sheet's "Patch and details": the panel's inspector (the patch, its map, where the tile lies)."""
        self.hide_tile_sheet()
        self.side_scroll.ensureWidgetVisible(self.inspector, 0, 0)
        bar = self.side_scroll.verticalScrollBar()
        bar.setValue(min(bar.maximum(), self.inspector.mapTo(self.side_scroll.widget(), QPoint(0, 0)).y()))
