"""The widgets laid over the slide canvas: the scale bar, the overview thumbnail and the empty-canvas hint.

They are plain QWidgets placed by the view (slideview.SlideView.place_overlays), not items of its
scene, so they keep their size on screen whatever the zoom.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPen
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QVBoxLayout, QWidget

from cellview.gui.canvas.items import rgb_qimage
from cellview.outputs.legend import ScaleBarSpec, scale_bar


class ScaleBar(QWidget):
    """Bottom-left scale bar in µm, redrawn as the zoom changes; hidden without a known scale.

    Its length is ``legend.scale_bar``'s (the longest 1-2-5 length that fits): the bar is drawn
    exactly that many pixels long and the box is sized around the bar and its label, so nothing
    is ever clipped and the label is right at every zoom and font size.
    """

    BASE_PT = 9.5
    MAX_BAR_PX = 160
    """The bar's longest length at the base font (it grows with the font)."""
    MAX_VIEW_SHARE = 0.25
    """…and never more than this share of the view's width (a small kiosk screen)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.mpp_um: float | None = None
        self.l0_per_screen_px = 1.0
        self.view_width_px: int | None = None
        self.font_pt = self.BASE_PT
        self.spec: ScaleBarSpec | None = None
        self.hide()

    @property
    def k(self) -> float:
        return self.font_pt / self.BASE_PT

    def set_font_pt(self, pt: float) -> None:
        """Text size of the label (the kiosk's is read from a metre away); the bar's room grows with it."""
        self.font_pt = float(pt)
        self._fit()

    def label_font(self) -> QFont:
        f = QFont(self.font())
        f.setPointSizeF(self.font_pt)
        return f

    def max_bar_px(self) -> float:
        longest = self.MAX_BAR_PX * self.k
        if self.view_width_px:
            longest = min(longest, self.MAX_VIEW_SHARE * self.view_width_px)
        return longest

    def set_scale(self, mpp_um: float | None, l0_per_screen_px: float, view_width_px: int | None = None) -> None:
        self.mpp_um, self.l0_per_screen_px = mpp_um, l0_per_screen_px
        if view_width_px is not None:
            self.view_width_px = view_width_px
        self._fit()

    def _fit(self) -> None:
        um_per_px = self.mpp_um * self.l0_per_screen_px if self.mpp_um and self.l0_per_screen_px > 0 else None
        self.spec = scale_bar(um_per_px, self.max_bar_px())
        self.setVisible(self.spec is not None)
        if self.spec is not None:
            fm = QFontMetrics(self.label_font())
            pad, bar_h = self._pad(), self._bar_h()
            width = max(self.spec.drawn_px, fm.horizontalAdvance(self.spec.label)) + 2 * pad
            self.resize(width, pad + fm.height() + pad // 2 + bar_h + pad)
        self.update()

    def _pad(self) -> int:
        return max(6, int(round(8 * self.k)))

    def _bar_h(self) -> int:
        return max(4, int(round(5 * self.k)))

    def bar_rect(self) -> QRect:
        """Where the bar is drawn, in this widget's pixels: exactly ``spec.drawn_px`` wide."""
        if self.spec is None:
            return QRect()
        pad, bar_h = self._pad(), self._bar_h()
        return QRect(pad, self.height() - pad - bar_h, self.spec.drawn_px, bar_h)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        spec = self.spec
        if spec is None:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(20, 22, 25, 190))
        p.drawRoundedRect(QRectF(self.rect()), 5, 5)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.fillRect(self.bar_rect(), QColor("white"))
        p.setPen(QColor("white"))
        p.setFont(self.label_font())
        pad = self._pad()
        p.drawText(QRect(pad, pad, self.width() - 2 * pad, QFontMetrics(self.label_font()).height()),
                   Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, spec.label)
        p.end()


class Overview(QWidget):
    """Thumbnail with the current view box; click or drag to jump there."""

    jump = Signal(float, float)  # level-0 centre

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        # Opaque: its updates never force the slide canvas underneath to repaint.
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._image: QImage | None = None
        self._l0_size = (1, 1)
        self._view = QRectF()
        self.setToolTip("Overview: click to jump")
        self.hide()

    def set_slide(self, thumb: np.ndarray, l0_size: tuple[int, int], max_px: int | None = None) -> None:
        """``thumb`` is already overview-sized (prepared in the open worker); shown at most ``max_px``."""
        self._full, self._l0_size = rgb_qimage(thumb), l0_size
        self.fit(max_px or max(self._full.width(), self._full.height()))
        self.show()

    def fit(self, max_px: int) -> None:
        """Longest side at most ``max_px`` (the view gives it a share of its own size)."""
        full = getattr(self, "_full", None)
        if full is None:
            return
        if max(full.width(), full.height()) > max_px:
            self._image = full.scaled(max_px, max_px, Qt.AspectRatioMode.KeepAspectRatio,
                                      Qt.TransformationMode.SmoothTransformation)
        else:
            self._image = full
        self.resize(self._image.width() + 4, self._image.height() + 4)
        self.update()

    def set_view(self, rect: QRectF) -> None:
        self._view = rect
        self.update()

    def _scale(self) -> float:
        return self._image.width() / self._l0_size[0] if self._image else 1.0

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self._image is None:
            return
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(15, 17, 19))
        p.drawImage(2, 2, self._image)
        k = self._scale()
        r = QRectF(2 + self._view.x() * k, 2 + self._view.y() * k, self._view.width() * k, self._view.height() * k)
        r = r.intersected(QRectF(2, 2, self._image.width(), self._image.height()))
        p.setPen(QPen(QColor("#ffd400"), 2))
        p.drawRect(r)
        p.setPen(QPen(QColor(90, 95, 100), 1))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()

    def _emit(self, pos: QPointF) -> None:
        k = self._scale()
        self.jump.emit((pos.x() - 2) / k, (pos.y() - 2) / k)

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._emit(event.position())

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._emit(event.position())


class EmptyHint(QFrame):
    """What an empty canvas says: how to open a slide, and the recent ones as buttons."""

    openRequested = Signal()
    recentRequested = Signal(str)
    MAX_RECENT = 6

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("emptyHint")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(28, 22, 28, 22)
        lay.setSpacing(8)
        self.title = QLabel("Open a slide (Ctrl+O) or drop one here")
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.title)
        self.open_btn = QPushButton("Open slide or image…")
        self.open_btn.setObjectName("primary")
        self.open_btn.clicked.connect(self.openRequested)
        lay.addWidget(self.open_btn, 0, Qt.AlignmentFlag.AlignCenter)
        self.recent_title = QLabel("Recent slides")
        self.recent_title.setObjectName("emptyRecentTitle")
        lay.addWidget(self.recent_title)
        self.recent_box = QVBoxLayout()
        self.recent_box.setSpacing(2)
        lay.addLayout(self.recent_box)
        self.recent_buttons: list[QPushButton] = []
        self.set_recent([])

    def set_recent(self, recent: Sequence[tuple[str, str]]) -> None:
        """(path, display name) of recent slides, newest first."""
        for btn in self.recent_buttons:
            self.recent_box.removeWidget(btn)
            btn.deleteLater()
        self.recent_buttons = []
        for path, name in list(recent)[: self.MAX_RECENT]:
            btn = QPushButton(name)
            btn.setObjectName("recentSlide")
            btn.setToolTip(path)
            btn.setFlat(True)
            btn.setCursor(Qt.CursorShape.PointingHandCursor)
            btn.clicked.connect(lambda _c=False, p=path: self.recentRequested.emit(p))
            self.recent_box.addWidget(btn)
            self.recent_buttons.append(btn)
        self.recent_title.setVisible(bool(self.recent_buttons))
        self.adjustSize()
