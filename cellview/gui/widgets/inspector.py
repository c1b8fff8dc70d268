"""The tile inspector: what the model saw for one tile (the patch, its nucleus contours or class activation
map) and what it said about it (probability bars, the domain score, where the tile lies)."""

from __future__ import annotations

import math
from html import escape

import cv2
import numpy as np
from PySide6.QtCore import QEvent, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.domain import NOT_AVAILABLE
from cellview.analysis.explain import colormap
from cellview.analysis.explain import overlay as cam_overlay
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.analysis.morphology import NucleiMeasurement
from cellview.gui.canvas.items import rgb_qimage
from cellview.gui.widgets.cards import text_label
from cellview.gui.widgets.heatmap import ColorBar
from cellview.viewer.explain import ExplainState

CAM_LUT = colormap(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :])[0]
"""The class activation map's colour scale (turbo, as in ``cellview explain``'s picture)."""

OUT_OF_DOMAIN_TEXT = "#ffb347"
"""Amber: what the inspector and the legends say about out-of-domain tiles."""


def nuclei_lines(count: float, density: float, mean_area: float, median_area: float, circularity: float,
                 eccentricity: float, area_unit: str) -> list[str]:
    """The inspector's nuclei rows; areas in µm², or px² flagged as such when the scale is unknown."""
    if not math.isfinite(count):
        return []
    dens = f"  ({density:,.0f}/mm²)" if math.isfinite(density) else ""
    lines = [f"nuclei    {int(count)}{dens}"]
    if count >= 1 and math.isfinite(mean_area):
        unit = "µm²" if area_unit == "um2" else "px² (scale unknown)"
        lines.append(f"  area    mean {mean_area:.0f}, median {median_area:.0f} {unit}")
        lines.append(f"  shape   circularity {circularity:.2f}, eccentricity {eccentricity:.2f}")
    return lines


def domain_line(result, index: int) -> str:
    """The inspector's domain row: the score and the verdict, or that the model has none."""
    if not result.has_domain:
        return "domain    " + NOT_AVAILABLE.removeprefix("domain score: ")
    score = float(result.domain_score[index])
    if not bool(result.done[index]) or not np.isfinite(score):
        return "domain    –"
    verdict = "in domain" if bool(result.in_domain[index]) else "OUT of domain"
    return f"domain    {score:.3f}  {verdict} (≥ {result.model.domain.threshold:g} is in)"


def pct(p: float) -> str:
    """One way to print a probability, so the inspector's text and its bars always agree."""
    return f"{p:.1%}" if np.isfinite(p) else "–"


class ProbabilityBars(QWidget):
    """One horizontal bar per category, then per class, each in its colour; the predicted ones in bold.

    A name is never cut: one that does not fit beside its bar gets a line of its own above it (a long
    class name, the kiosk's large text); row height follows the font.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[str, str, float, bool]] = []
        self.n_category_rows = 0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def row_height(self) -> int:
        return max(22, self.fontMetrics().height() + 6)

    def set_values(self, names: tuple[str, ...], colors: tuple[str, ...], probs: np.ndarray | None,
                   highlight: int = -1, categories: np.ndarray | None = None, category: int = -1) -> None:
        """Class bars (``probs``); with ``categories`` (per-category probabilities) those come first."""
        self.rows = []
        self.n_category_rows = 0
        if probs is not None:
            if categories is not None:
                self.rows += [(c, CATEGORY_COLORS[c], float(p), k == category)
                              for k, (c, p) in enumerate(zip(CATEGORIES, categories))]
                self.n_category_rows = len(CATEGORIES)
            self.rows += [(n, c, float(p), i == highlight) for i, (n, c, p) in enumerate(zip(names, colors, probs))]
        self._fit_height()
        self.update()

    def _fit_height(self) -> None:
        self.setFixedHeight(max(1, sum(self.row_lines(i) for i in range(len(self.rows)))) * self.row_height() + 4)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit_height()  # a narrower panel may put more names on lines of their own

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().changeEvent(event)
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._fit_height()

    def _font(self, bold: bool) -> QFont:
        f = QFont(self.font())
        f.setBold(bold)
        return f

    def row_lines(self, i: int) -> int:
        """1, or 2 when the row's name does not fit beside its bar (it goes on a line above)."""
        name, _, _, bold = self.rows[i]
        return 1 if QFontMetrics(self._font(bold)).horizontalAdvance(name) <= self.name_width() - 4 else 2

    def values(self) -> dict[str, float]:
        """Class name → probability (the class rows, not the category rows above them)."""
        return {n: p for n, _, p, _ in self.rows[self.n_category_rows:]}

    def texts(self) -> dict[str, str]:
        """Row name → the percentage as drawn."""
        return {n: pct(p) for n, _, p, _ in self.rows}

    def name_width(self) -> int:
        return min(170, int(self.width() * 0.42))

    def display_name(self, name: str, width_px: int | None = None) -> str:
        """``name`` cut to ``width_px`` with an ellipsis when it does not fit (for callers with one line of room)."""
        width = (width_px if width_px is not None else self.name_width()) - 4
        return self.fontMetrics().elidedText(name, Qt.TextElideMode.ElideRight, max(10, width))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w = self.width()
        rh = self.row_height()
        name_w = self.name_width()
        pct_w = self.fontMetrics().horizontalAdvance("100.0%") + 6
        bar_w = max(10, w - name_w - pct_w - 8)
        n_cat = self.n_category_rows
        y = 2
        for i, (name, color, prob, bold) in enumerate(self.rows):
            p.setFont(self._font(bold))
            p.setPen(self.palette().text().color())
            flags = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
            x_bar, width_bar = name_w, bar_w
            if self.row_lines(i) == 1:
                p.drawText(QRectF(0, y, name_w - 4, rh - 2), flags, name)
            else:  # the whole name on its own line, the bar under it across the row
                p.drawText(QRectF(0, y, w, rh - 2), flags | Qt.TextFlag.TextWordWrap, name)
                y += rh
                x_bar, width_bar = 12, max(10, w - pct_w - 20)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor(255, 255, 255, 22))
            bar_h = max(8, rh // 2)
            p.drawRoundedRect(QRectF(x_bar, y + (rh - bar_h) / 2 - 1, width_bar, bar_h), 3, 3)
            if np.isfinite(prob):
                p.setBrush(QColor(color))
                p.drawRoundedRect(QRectF(x_bar, y + (rh - bar_h) / 2 - 1, max(2.0, width_bar * prob), bar_h), 3, 3)
            p.setPen(self.palette().text().color())
            p.drawText(QRectF(x_bar + width_bar + 4, y, pct_w, rh - 2),
                       Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, pct(prob))
            if n_cat and i == n_cat - 1:
                p.setPen(QColor(255, 255, 255, 40))
                p.drawLine(0, y + rh, w, y + rh)
            y += rh
        p.end()


class TileInspector(QWidget):
    """What the model saw for one tile and what it said about it: the patch (with its nucleus
    contours, or the class activation map of the predicted or a chosen class), the probabilities,
    the domain score and where the tile lies."""

    PATCH_PX = 196  # large enough to see nucleus contours on a 224-px patch (the kiosk's is larger)

    explainToggled = Signal(bool)
    explainClassChosen = Signal(object)  # None: the predicted class; else the class index

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        top = QHBoxLayout()
        self.top_layout = top  # the kiosk stacks it vertically (a narrow touch panel)
        self.patch = QLabel()
        self.patch.setFixedSize(QSize(self.PATCH_PX + 2, self.PATCH_PX + 2))
        self.patch.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.patch.setStyleSheet("background:#1b1e21; border:1px solid #3d4348;")
        self.patch.setToolTip("The exact patch fed to the model")
        column = QVBoxLayout()  # the patch with the activation map's colour scale right under it
        column.setSpacing(2)
        column.addWidget(self.patch)
        self.patch_note = text_label("", "hint")  # "stain-normalised: the patch fed to the model"
        self.patch_note.setFixedWidth(self.PATCH_PX + 2)
        self.patch_note.setVisible(False)
        column.addWidget(self.patch_note)
        self.cam_scale = ColorBar(CAM_LUT, left="less", right="more", title_below=True)
        self.cam_scale.setFixedWidth(self.PATCH_PX + 2)
        self.cam_scale.setVisible(False)
        column.addWidget(self.cam_scale)
        column.addStretch(1)
        top.addLayout(column)
        facts = QVBoxLayout()
        self.title = QLabel("No tile selected")
        self.title.setObjectName("inspectorTitle")
        self.title.setWordWrap(True)
        self.hint = "Click a tile on the slide.\nArrow keys step to neighbours."
        self.subtitle = QLabel(self.hint)
        self.subtitle.setObjectName("inspectorSubtitle")
        self.subtitle.setWordWrap(True)
        facts.addWidget(self.title)
        facts.addWidget(self.subtitle)
        facts.addStretch(1)
        self.contours_box = QCheckBox("Nucleus contours")
        self.contours_box.setChecked(True)
        self.contours_box.setToolTip("Outline the nuclei found in this patch (H&E deconvolution + watershed)")
        self.contours_box.toggled.connect(lambda _on: self._show_pixmap())
        facts.addWidget(self.contours_box)
        self.cam_box = QCheckBox("Activation map")
        self.cam_box.setToolTip("Overlay the class activation map on the exact patch the model saw: where the "
                                "evidence for the class lies (Zhou et al. 2016; exact for this model's head)")
        self.cam_box.toggled.connect(self.explainToggled)
        facts.addWidget(self.cam_box)
        self.cam_class = QComboBox()
        self.cam_class.setToolTip("The class whose activation map is shown")
        # long class names must not widen the panel: the combo is as wide as the column, the list as its items
        self.cam_class.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.cam_class.setMinimumContentsLength(8)
        self.cam_class.addItem("Predicted class", None)
        self.cam_class.currentIndexChanged.connect(lambda _i: self.explainClassChosen.emit(self.cam_class.currentData()))
        self.cam_class.setVisible(False)
        facts.addWidget(self.cam_class)
        top.addLayout(facts, 1)
        lay.addLayout(top)
        self.cam_status = text_label("", "hint")
        self.cam_status.setVisible(False)
        lay.addWidget(self.cam_status)
        self.bars = ProbabilityBars()
        lay.addWidget(self.bars)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setObjectName("inspectorDetails")
        lay.addWidget(self.details)
        self.index = -1
        self.nuclei: NucleiMeasurement | None = None  # measured live on the shown patch
        self._rgb: np.ndarray | None = None
        self._contoured: np.ndarray | None = None
        self._nuclei_rows: list[str] = []
        self._lines: list[str] = []
        self.explanation: ExplainState = ExplainState("off")
        self._class_names: tuple[str, ...] = ()

    def set_hint(self, text: str) -> None:
        """What the inspector says before a tile is chosen (the kiosk's: tap, no arrow keys)."""
        self.hint = text
        if self.index < 0:
            self.subtitle.setText(text)

    def set_patch_note(self, text: str) -> None:
        """A line under the patch saying what it is (stain-normalised as the model was fed it) or what it waits for."""
        self.patch_note.setText(text)
        self.patch_note.setVisible(bool(text))
        self.patch.setToolTip(text or "The exact patch fed to the model")

    def set_patch_px(self, px: int) -> None:
        """The patch's size on screen (the kiosk shows it large)."""
        px = max(96, int(px))
        if px == self.PATCH_PX:
            return
        self.PATCH_PX = px
        self.patch.setFixedSize(QSize(px + 2, px + 2))
        self.cam_scale.setFixedWidth(px + 2)
        self.patch_note.setFixedWidth(px + 2)
        self._show_pixmap()

    def set_class_names(self, names: tuple[str, ...]) -> None:
        """The classes the map can be shown for (the combo: the predicted class first)."""
        if tuple(names) == self._class_names:
            return
        self._class_names = tuple(names)
        current = self.cam_class.currentData()
        self.cam_class.blockSignals(True)
        while self.cam_class.count() > 1:
            self.cam_class.removeItem(1)
        for k, name in enumerate(names):
            self.cam_class.addItem(name, k)
        idx = self.cam_class.findData(current) if current is not None else 0
        self.cam_class.setCurrentIndex(max(0, idx))
        self.cam_class.blockSignals(False)
        if current is not None and idx < 0:
            self.explainClassChosen.emit(None)

    def set_explanation(self, state: ExplainState) -> None:
        """The map (when ``state`` is ready for the shown tile), or what it is waiting for or why it failed."""
        self.explanation = state
        on = state.state != "off"
        self.cam_box.blockSignals(True)  # a change made elsewhere (the model, a script) shows on the toggle
        self.cam_box.setChecked(on)
        self.cam_box.blockSignals(False)
        self.cam_class.setVisible(on)
        ready = state.state == "ready" and state.explanation is not None and state.index == self.index
        self.cam_scale.setVisible(ready)
        self.contours_box.setEnabled(not ready)  # the map replaces the contoured patch while it is shown
        message = {"idle": "Select a tile to see what the model looked at.",
                   "busy": "Computing the activation map…", "failed": state.message}.get(state.state, "")
        self.cam_status.setText(message)
        self.cam_status.setVisible(bool(message))
        if ready:
            ex = state.explanation
            assert ex is not None
            name = ex.class_names[ex.explained_class]
            self.cam_scale.set_title(f"evidence for {name}")
            self.cam_scale.setToolTip(f"Class activation map of {name}, from its lowest to its highest value in "
                                      "this patch")
        self._show_pixmap()

    def clear(self) -> None:
        self.index = -1
        self.nuclei, self._rgb, self._contoured, self._nuclei_rows, self._lines = None, None, None, [], []
        self.title.setText("No tile selected")
        self.subtitle.setText(self.hint)
        self.bars.set_values((), (), None)
        self.details.setText("")
        self.patch.clear()
        self.set_patch_note("")
        self.cam_scale.setVisible(False)

    def show_tile(self, index: int, result, mpp_um: float | None) -> None:
        """``result`` is an AnalysisResult (possibly partial: the tile may not be done yet)."""
        if index != self.index:
            self.nuclei, self._nuclei_rows = None, []
        self.index = index
        g, m = result.grid, result.model
        x, y, w, h = g.rect(index)
        done = bool(result.done[index])
        # with classes finer than the categories, the category bars come first: the confidence quoted
        # (the category's probability) is then a number the bars show too, printed the same way
        by_class = tuple(m.class_names) != tuple(m.class_categories)
        if done:
            cls = int(result.pred_class[index])
            k = int(result.pred_category[index])
            cat = CATEGORIES[k]
            conf = float(result.confidence[index])
            self.title.setText(f"<span style='color:{m.class_colors[cls]}'>■</span> {escape(m.class_names[cls])}")
            subtitle = f"Category <b style='color:{CATEGORY_COLORS[cat]}'>{cat}</b><br>Confidence <b>{pct(conf)}</b>"
            if result.has_domain and bool(result.out_of_domain[index]):
                subtitle += f"<br><b style='color:{OUT_OF_DOMAIN_TEXT}'>Out of the model's domain</b>"
            self.subtitle.setText(subtitle)
            self.bars.set_values(m.class_names, m.class_colors, result.probs[index], cls,
                                 result.category_probs[index] if by_class else None, k)
        else:
            state = "failed to read" if int(result.state[index]) == 2 else "not analysed yet"
            self.title.setText("Tile " + state)
            self.subtitle.setText(escape(result.tile_errors.get(index, "")))
            self.bars.set_values(m.class_names, m.class_colors, result.probs[index])
        size = f"{w * mpp_um:.0f} × {h * mpp_um:.0f} µm" if mpp_um else "scale unknown"
        lines = [
            f"tile      #{index}  (row {int(g.grid_row[index])}, col {int(g.grid_col[index])})",
            f"level 0   x {x:,}  y {y:,}",
            f"extent    {w:,} × {h:,} px = {size}",
            f"model in  {g.tile_px} px from level {g.read_level}",
            f"tissue    {float(g.tissue_fraction[index]):.0%}",
            domain_line(result, index),
        ]
        nuclei = getattr(result, "nuclei", None)
        if self.nuclei is None and nuclei is not None and bool(nuclei.measured[index]):
            # the run's per-tile values until the live measurement (with contours) arrives
            self._nuclei_rows = nuclei_lines(*(float(v) for v in nuclei.values[index]), nuclei.area_unit)
        self._lines = lines
        self._show_details()

    def _show_details(self) -> None:
        self.details.setText("\n".join(self._lines + self._nuclei_rows))

    def set_patch(self, rgb: np.ndarray | None, nuclei: NucleiMeasurement | None = None,
                  contoured: np.ndarray | None = None) -> None:
        """The model's patch; with ``nuclei``, ``contoured`` is it at display size with their outlines."""
        self._rgb, self._contoured, self.nuclei = rgb, contoured, nuclei
        if rgb is None:
            self.patch.setText("unreadable")
            return
        if nuclei is not None:
            m = nuclei
            self._nuclei_rows = nuclei_lines(m.count, m.density_per_mm2, m.mean_area, m.median_area,
                                             m.mean_circularity, m.mean_eccentricity, m.area_unit)
            self._show_details()
        self._show_pixmap()

    def cam_image(self) -> np.ndarray | None:
        """The patch with the class activation map over it at display size, when the map is ready."""
        state = self.explanation
        ex = state.explanation
        if state.state != "ready" or ex is None or state.index != self.index:
            return None
        px = self.PATCH_PX
        k = px / ex.patch.shape[0]
        patch = cv2.resize(ex.patch, (px, px), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
        heat = cv2.resize(ex.heat(), (px, px), interpolation=cv2.INTER_LINEAR)
        return cam_overlay(patch, heat, opacity=0.55)

    def _show_pixmap(self) -> None:
        img = self.cam_image()
        if img is None:
            img = self._contoured if self._contoured is not None and self.contours_box.isChecked() else self._rgb
        if img is None:
            return
        pm = QPixmap.fromImage(rgb_qimage(img))
        if max(pm.width(), pm.height()) != self.PATCH_PX:
            pm = pm.scaled(self.PATCH_PX, self.PATCH_PX, Qt.AspectRatioMode.KeepAspectRatio,
                           Qt.TransformationMode.SmoothTransformation)
        self.patch.setPixmap(pm)

