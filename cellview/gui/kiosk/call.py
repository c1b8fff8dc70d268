"""The kiosk's headline: the slide's call and the category shares, at the top of the case page so that they are
visible without scrolling (``kioskCall``, ``kioskShares``).

The shares are of the tiles counted on screen (``AnalysisResult.category_percentages``): the in-domain ones,
unless the out-of-domain calls are shown anyway, so they add up to 100 with the call and agree with the
heatmap's counts, the exports and the recent-cases line. A call on tissue mostly unlike the model's training
data is marked unreliable (``model.overlay.notice()``), and a slide without an in-domain tile gets no call.
"""

from __future__ import annotations

from cellview.analysis.model_spec import CATEGORY_COLORS
from cellview.analysis.results import AnalysisResult, plural
from cellview.gui.canvas.painter import OverlayPainter
from cellview.gui.widgets.cards import text_label
from cellview.viewer.model import ViewerModel

WARN = "<span style='color:#ffb347'>⚠</span>"


class CallPanel:
    """``call_label`` ("■ Benign 43%") and ``shares_label`` ("malignant 29% · normal 28% · 56 tiles"), following
    every repaint (a streaming run's call so far), the domain notice and each new result."""

    def __init__(self, model: ViewerModel, painter: OverlayPainter) -> None:
        self.model = model
        self.call_label = text_label("", "kioskCall")
        self.shares_label = text_label("", "kioskShares")
        painter.updated.connect(self.show)
        model.overlay.events.domain.connect(lambda e: self.show(model.analysis.shown_result()))
        model.analysis.events.result.connect(lambda e: self.show(e.value))

    def show(self, result: AnalysisResult | None) -> None:
        if result is None or result.n_done == 0:
            self.call_label.setText("" if result is None else "Analysing…")
            self.shares_label.setText("")
            return
        anyway = self.model.overlay.settings.show_out_of_domain
        n_out = int(result.out_of_domain.sum())
        out_text = f" · {n_out:,} out of domain" if n_out else ""
        state = "" if result.status == "complete" else (" (so far)" if result.status == "running" else
                                                         f" ({result.status})")
        if not result.counted(anyway).any():
            self.call_label.setText(f"{WARN} No call{state}")
            self.shares_label.setText(f"no tile in the model's domain · {plural(result.n_done, 'tile')}")
            return
        pct = result.category_percentages(anyway)
        order = sorted(pct, key=lambda c: -pct[c])
        top = order[0]
        warn = f"{WARN} " if self.model.overlay.notice().banner else ""
        self.call_label.setText(f"{warn}<span style='color:{CATEGORY_COLORS[top]}'>■</span> {top.capitalize()} "
                                f"{pct[top]}%{state}")
        self.shares_label.setText(" · ".join(f"{c} {pct[c]}%" for c in order[1:])
                                  + f" · {plural(result.n_done, 'tile')}{out_text}")
