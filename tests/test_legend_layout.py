"""The legends' text never overlaps (issue 25, item 5): "out of domain (counted)" and its "27  100%" were drawn over
each other in the whole-slide PNG (PIL) and the view PNG (Qt). Both lay their rows out with one rule
(``legend.count_row_layout``); checked here with the fonts they draw in, at every size the PNG's text takes."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest

from cellview.analysis.domain import DomainInfo
from cellview.outputs.overlay import OverlaySettings
from cellview.testing.synthetic import grid_result


def odd_result():
    """40 tiles, 27 of them out of the model's domain, some malignant: every row of the legend has figures."""
    base = grid_result(["MMMBBNNN"] * 5)
    model = replace(base.model, domain=DomainInfo(sha256="d", method="m", threshold=0.5, training_data="toy tiles"))
    score = np.where(np.arange(40) < 13, 0.9, 0.1).astype(np.float32)
    return replace(base, model=model, domain_score=score)


def overlaps(boxes):
    """Pairs of text boxes (text, (x0, y0, x1, y1)) that share pixels."""
    return [(a[0], b[0]) for a, b in combinations(boxes, 2)
            if a[1][0] < b[1][2] and b[1][0] < a[1][2] and a[1][1] < b[1][3] and b[1][1] < a[1][3]]


@pytest.mark.parametrize("thumb_px", [400, 900, 1400, 2200])
def test_the_whole_slide_png_legend_text_never_overlaps(monkeypatch, thumb_px):
    from PIL import ImageDraw

    from cellview.outputs.export import annotated_png

    drawn: list[tuple[str, tuple[float, float, float, float]]] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, s, *args, **kwargs):
        if self.im.size[1] > 1:  # not the legend's measuring pass
            drawn.append((s, self.textbbox(xy, s, font=kwargs.get("font"))))
        return original(self, xy, s, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    thumb = np.full((thumb_px * 5 // 8, thumb_px, 3), 230, np.uint8)
    annotated_png(odd_result(), thumb, overlay=OverlaySettings(show_out_of_domain=True))
    legend = [(s, box) for s, box in drawn if box[0] >= thumb_px]  # the legend panel, right of the picture
    labels = [s for s, _ in legend]
    assert "out of domain (counted)" in labels and any(s.split()[:2] == ["27", "68%"] for s in labels)
    assert overlaps(legend) == []


def test_the_view_png_legend_text_never_overlaps(qtbot):
    pytest.importorskip("PySide6")
    from PySide6.QtGui import QFont, QImage, QPainter

    from cellview.gui.app import make_app
    from cellview.gui.widgets.legend import LegendPainter
    from cellview.outputs.legend import describe_legend

    app = make_app()
    legend = describe_legend(odd_result(), OverlaySettings(show_out_of_domain=True), source="the viewer")
    for family in (app.font().family(), "DejaVu Sans"):
        img = QImage(400, 1000, QImage.Format.Format_RGB32)
        p = QPainter(img)
        painter = LegendPainter(p, 16, 292, QFont(family))  # the view PNG's panel (320 px, less margins)
        painter.paint(legend, 28)
        p.end()
        boxes = [(s, (r.left(), r.top(), r.right() + 1, r.bottom() + 1)) for s, r in painter.boxes]
        assert "out of domain (counted)" in [s for s, _ in boxes]
        assert overlaps(boxes) == []
        assert all(box[2] <= 16 + 292 for _, box in boxes)  # nothing past the panel


def test_figures_go_on_a_line_of_their_own_when_the_label_would_reach_them():
    from cellview.outputs.legend import count_row_layout

    assert count_row_layout(label_right=120, counts_width=60, right=300, gap=10) == (240, False)
    x, own_line = count_row_layout(label_right=235, counts_width=60, right=300, gap=10)
    assert x == 240 and own_line
