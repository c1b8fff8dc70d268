"""The slide call on screen (issue 25): the desktop viewer's call line and view-PNG legend, the kiosk's headline and
its recent cases say the files' call (``analysis.call.slide_call``), in the same words: a malignant minority is
called malignant, and a slide that could not be called says why."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from cellview.analysis.call import slide_call  # noqa: E402
from cellview.analysis.domain import DomainInfo  # noqa: E402
from cellview.analysis.results import TileState  # noqa: E402
from cellview.testing.synthetic import grid_result  # noqa: E402

TIMEOUT_MS = 30000

pytestmark = pytest.mark.usefixtures("isolated_settings")


from test_kiosk_gui import plain, seen  # noqa: E402


def desktop(qtbot, toy_model):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    assert window.add_model(toy_model)
    return window


def wait_call(qtbot, window):
    qtbot.waitUntil(lambda: window.model.call.current is not None and not window.model.call.busy
                    and not window.model.analysis.running, timeout=TIMEOUT_MS)
    return window.model.call.current


def test_a_malignant_minority_is_called_malignant_in_the_viewer_and_its_legend(qtbot, toy_model, mosaic_slide):
    from PySide6.QtGui import QImage, QPainter

    from cellview.gui.widgets.legend import LegendPainter
    from cellview.outputs.legend import describe_legend

    window = desktop(qtbot, toy_model)
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):
        window.open_path(mosaic_slide)
    call = wait_call(qtbot, window)
    result = window.result
    assert result.category_counts() == {"malignant": 15, "benign": 8, "normal": 57}  # normal: the largest share
    files = slide_call(result)
    assert call == files and call.category == "malignant"
    panel = window.call_panel
    assert plain(panel.call_label) == "Malignant" and seen(panel.evidence_label) == files.evidence
    assert panel.text() == files.text and files.text.startswith("Malignant: 2 regions, largest ")
    assert seen(panel.shares_label) == "normal 71 % · malignant 19 % · benign 10 % · 80 tiles"
    assert all(label.isVisible() for label in panel.labels())
    # the view PNG's legend (the Qt painter) draws the same call, first, under the title
    legend = describe_legend(result, window.model.overlay.settings, source="the viewer")
    img = QImage(400, 900, QImage.Format.Format_RGB32)
    p = QPainter(img)
    painter = LegendPainter(p, 10, 300, window.font())
    painter.paint(legend, 28)
    p.end()
    texts = [t for t, _ in painter.boxes]
    assert texts[:2] == ["CellView", "Malignant"]
    assert " ".join(texts[2:5]).startswith(files.evidence.split(";")[0])
    assert window.exports.render_view_png()[:4] == b"\x89PNG"
    # outlines switched on just before the export: the legend counts the regions, not the job still drawing them
    import cellview.gui.desktop.exports as exports_module

    made = []
    real = exports_module.describe_legend

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    window.model.overlay.set(min_confidence=0.0)
    window.menus.act_regions.setChecked(True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exports_module, "describe_legend", spy)
        window.exports.render_view_png()
    lines = made[-1].lines()
    assert "Malignant regions (≥ 0%): 2" in lines, lines
    assert window.shutdown(20000)


def test_a_malignant_minority_is_called_malignant_in_the_kiosk_and_its_recent_cases(qtbot, tmp_path, toy_model,
                                                                                    mosaic_slide):
    from test_kiosk_gui import kiosk_settings, make_kiosk, run_case

    kiosk = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model))
    case = run_case(qtbot, kiosk, mosaic_slide)
    qtbot.waitUntil(lambda: kiosk.model.call.current is not None and not kiosk.model.call.busy, timeout=TIMEOUT_MS)
    meta = json.loads(case.outputs["json"].read_text())["call"]
    assert meta["category"] == "malignant" and case.call_category == "malignant" and case.call_text == meta["text"]
    panel = kiosk.case_page.call
    assert plain(panel.call_label) == "■ Malignant"  # not "■ Normal 71 %"
    assert panel.text() == meta["text"] and seen(panel.evidence_label) == meta["evidence"]
    assert "malignant 19 %" in seen(panel.shares_label) and "normal 71 %" in seen(panel.shares_label)
    kiosk.case_page.home_btn.click()
    lines = kiosk.waiting.recent_list.item(0).text().replace("\u00a0", " ").split("\n")
    assert lines[1] == meta["text"] and lines[2] == "normal 71 % · malignant 19 % · benign 10 %"
    # on screen: under the case's name the call leads, then every share, the whole text inside the item
    recent = kiosk.waiting.recent_list
    qtbot.waitUntil(lambda: recent.visualItemRect(recent.item(0)).height()
                    >= kiosk.waiting.recent_label(0).heightForWidth(recent.viewport().width()), timeout=TIMEOUT_MS)
    label = kiosk.waiting.recent_label(0)
    assert label.isVisible() and label.wordWrap()
    shown = seen(label)
    assert shown.index("mosaic.tiff") < shown.index("Malignant: 2 regions") < shown.index("normal 71 %")
    assert all(share in shown for share in ("normal 71 %", "malignant 19 %", "benign 10 %"))
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QFontMetrics

    room = label.contentsRect()  # inside the label's padding: the wrapped text fits, no line cut at the bottom
    needed = QFontMetrics(label.font()).boundingRect(room, int(Qt.TextFlag.TextWordWrap), label.text())
    assert needed.height() <= room.height() and needed.width() <= room.width()
    assert "mosaic.tiff: Malignant: 2 regions" in seen(kiosk.waiting.done_label)


def out_of_domain_result():
    base = grid_result(["MMNNNNNN"] * 5)
    model = replace(base.model, domain=DomainInfo(sha256="d", method="m", threshold=0.5, training_data="toy tiles"))
    return replace(base, model=model, domain_score=np.where(np.arange(40) < 10, 0.9, 0.1).astype(np.float32))


@pytest.mark.parametrize("kind, headline", [("out_of_domain", "⚠ No call: out of domain"),
                                            ("too_little_tissue", "⚠ No call: too little tissue"),
                                            ("not_analysed", "⚠ Not analysed")])
def test_a_slide_without_a_call_reads_as_such(qtbot, toy_model, synthetic_slide, kind, headline):
    window = desktop(qtbot, toy_model)
    window.model.analysis.auto_analyse = False
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(synthetic_slide)
    if kind == "out_of_domain":
        result = out_of_domain_result()
    elif kind == "too_little_tissue":  # no tissue tile in the grid
        one = grid_result(["M"])
        none_i = np.zeros(0, np.int32)
        grid = replace(one.grid, grid_col=none_i, grid_row=none_i, l0_x=none_i.astype(np.int64),
                       l0_y=none_i.astype(np.int64), tissue_fraction=np.zeros(0, np.float32))
        result = replace(one, grid=grid, probs=np.zeros((0, 3), np.float32), state=np.zeros(0, np.uint8))
    else:
        result = replace(grid_result(["MMNN"]), state=np.full(4, TileState.PENDING, np.uint8), status="cancelled")
    window.model.analysis.set_result(result)
    call = wait_call(qtbot, window)
    assert call.category == kind
    panel = window.call_panel
    assert plain(panel.call_label) == headline and panel.text() == call.text
    assert panel.call_label.isVisible() and seen(panel.evidence_label) == call.evidence
    assert window.shutdown(20000)


def test_a_figure_stays_with_its_unit_and_its_comparison_sign_on_screen():
    from cellview.gui.widgets.cards import NBSP, unbreakable

    words = unbreakable("2 regions, largest 0.19 mm², 24 % of tiles (confidence ≥ 0.9)")
    assert words == (f"2{NBSP}regions, largest 0.19{NBSP}mm², 24{NBSP}% of tiles (confidence ≥{NBSP}0.9)")
