"""A smear image on screen (issue 27): the viewer and the kiosk show its call in the words of the files, outline the
stained cells behind it in level-0 coordinates (with their nuclei), say what pixel size the model's rule assumed,
and never ask for one. The smears and the model are made here (``cellview.testing``), not read from ../shared."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cellview.analysis.call import slide_call
from cellview.testing.synthetic import make_toy_model, synthetic_smear
from cellview.viewer.jobs import run_now
from cellview.viewer.model import ViewerModel
from cellview.viewer.settings import MemoryStore

TIMEOUT_MS = 30000
SMEAR_READING = {
    "foreground": {"rule": "stained-cells", "fallback": "whole-field"},
    "unstated_pixel_size": {"read": "field", "field_um": 100, "note": "its training images are 100 µm fields"},
}


@pytest.fixture(scope="module")
def smear_model(tmp_path_factory):
    return make_toy_model(tmp_path_factory.mktemp("smear-model") / "toy-smear", patch_px=64, spacing_um=0.225,
                          name="toy-smear", sidecar_overrides=SMEAR_READING)


@pytest.fixture(scope="module")
def smear(tmp_path_factory):
    """A 320 px field (no pixel size stated) with three white cells; returns (path, their centres)."""
    rgb, centres = synthetic_smear(320, seed=4, white_cells=3, red_cell_px=22.0)
    path = tmp_path_factory.mktemp("smear") / "smear.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path, centres


def inside(polygon: np.ndarray, x: float, y: float) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32).reshape(-1, 1, 2), (float(x), float(y)), False) >= 0


def check_outlines(outlines, centres, size_px: int) -> None:
    """One cell outline around each white cell, a nucleus inside each, all in the image's level-0 pixels."""
    assert outlines.method == "stained-cells" and len(outlines.cells) == len(centres)
    for cx, cy in centres:
        assert sum(inside(p, cx, cy) for p in outlines.cells) == 1
        assert any(inside(p, cx, cy) for p in outlines.nuclei)
    for poly in outlines.cells + outlines.nuclei:
        assert poly.shape[1] == 2 and poly.min() >= 0 and poly.max() <= size_px
    # the mask is coarser than the image (1 µm pixels, the image's 0.31 µm): outlines scaled back to level 0
    cell_area = max(cv2.contourArea(p.astype(np.float32)) for p in outlines.cells)
    nucleus_area = max(cv2.contourArea(p.astype(np.float32)) for p in outlines.nuclei)
    assert nucleus_area < cell_area < 0.2 * size_px ** 2
    assert outlines.note.startswith(f"{len(centres)} stained cells outlined (their nuclei inside)")


def test_the_viewer_model_reads_a_smear_by_the_model_rule_and_outlines_its_cells(smear_model, smear):
    path, centres = smear
    m = ViewerModel(run_now, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(smear_model))
    m.slide.ask_scale = lambda opened: pytest.fail("a smear model's image must not ask for a pixel size")
    errors = []
    m.events.error.connect(lambda e: errors.append(e.value[1].message))
    m.open(path)
    assert m.analysis.start() and not errors
    assert m.analysis.result is not None and m.analysis.result.status == "complete"
    result = m.analysis.result
    assert m.slide.opened.info.mpp is None  # the viewer keeps the image's own word: none
    assert result.slide.mpp.source == "field width assumed by the model" and result.slide.mpp.um == pytest.approx(100 / 320)
    assert "taken as one field 100 µm wide" in result.reading["pixel_size"]
    assert m.call.current == slide_call(result)
    check_outlines(m.cells.shown, centres, 320)
    m.cells.set_visible(False)
    assert not m.cells.drawn().cells and m.cells.shown.cells
    m.cells.set_visible(True)
    # an H&E model (no reading rule) still asks, and draws no cells
    he = make_toy_model(path.parent / "he", patch_px=64, spacing_um=0.5, name="toy-he")
    asked = []
    m.slide.ask_scale = lambda opened: asked.append(opened.path) or 0.5
    m.set_model(str(he))
    m.analysis.start()
    assert asked and not m.cells.shown.method and not m.cells.drawn().cells


def test_the_desktop_shows_the_smear_call_the_assumption_and_the_cells(qtbot, smear_model, smear, tmp_path,
                                                                       isolated_settings):
    pytest.importorskip("pytestqt")
    from test_gui_call import desktop, wait_call
    from test_kiosk_gui import plain, seen

    from cellview.cli import build_parser

    path, centres = smear
    window = desktop(qtbot, smear_model)
    window.model.slide.ask_scale = lambda opened: pytest.fail("asked for a pixel size")
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):
        window.open_path(path)
    call = wait_call(qtbot, window)
    qtbot.waitUntil(lambda: not window.model.cells.busy and bool(window.model.cells.shown.nuclei), timeout=TIMEOUT_MS)
    result = window.result
    assert call == slide_call(result)
    # the same words as `cellview analyze SMEAR --model M` (no other option) prints and writes
    args = build_parser().parse_args(["analyze", str(path), "--model", str(smear_model), "--out", str(tmp_path / "o"),
                                      "-q", "--no-cache"])
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "o" / "smear.json").read_text())
    panel = window.call_panel
    assert panel.text() == call.text == meta["call"]["text"]
    assert plain(panel.call_label) == meta["call"]["headline"] == call.headline
    assert seen(panel.evidence_label) == meta["call"]["evidence"]
    reading = seen(panel.reading_label)
    assert reading.startswith(meta["reading"]["pixel_size"]) and "3 stained cells outlined" in reading
    assert panel.reading_label.isVisible()
    status = window.status.slide_label  # the status bar says it too: not "pixel size unknown"
    assert "pixel size assumed by the model" in status.text() and meta["reading"]["pixel_size"] in status.toolTip()
    check_outlines(window.model.cells.shown, centres, 320)
    view = window.view
    assert len(view.cell_outlines) == 4 and all(item.scene() is view.scene() for item in view.cell_outlines)
    drawn = view.cell_outlines[1].path().boundingRect()  # the cells' white line, in level-0 pixels
    assert 0 <= drawn.left() and drawn.right() <= 320 and 0 <= drawn.top() and drawn.bottom() <= 320
    assert window.viewer.heatmap.show_cells.isVisible() and window.menus.act_cells.isChecked()
    window.menus.act_cells.setChecked(False)  # View → Outline stained cells
    assert not view.cell_outlines and not window.viewer.heatmap.show_cells.isChecked()
    assert "stained cells" not in seen(panel.reading_label)
    window.viewer.heatmap.show_cells.setChecked(True)
    assert len(view.cell_outlines) == 4 and window.menus.act_cells.isChecked()
    assert window.shutdown(20000)


def test_the_kiosk_headline_says_the_smear_call_and_outlines_its_cells(qtbot, smear_model, smear, tmp_path,
                                                                       isolated_settings):
    pytest.importorskip("pytestqt")
    from test_kiosk_gui import kiosk_settings, make_kiosk, plain, run_case, seen

    path, centres = smear
    kiosk = make_kiosk(qtbot, kiosk_settings(tmp_path, smear_model))
    case = run_case(qtbot, kiosk, path)
    assert case.status == "done" and not case.needs_scale  # no pixel size asked: the model's rule applies
    qtbot.waitUntil(lambda: kiosk.model.call.current is not None and not kiosk.model.call.busy
                    and bool(kiosk.model.cells.shown.nuclei), timeout=TIMEOUT_MS)
    meta = json.loads(case.outputs["json"].read_text())
    call = slide_call(kiosk.model.analysis.shown_result())
    panel = kiosk.case_page.call
    assert case.call_text == panel.text() == call.text == meta["call"]["text"]
    assert plain(panel.call_label) == f"■ {call.headline}" and seen(panel.evidence_label) == call.evidence
    mpp = meta["slide"]["mpp_um"]["x"]  # the kiosk's narrow column says it in one line, with the same figure
    assert seen(panel.reading_label).startswith(f"Pixel size assumed: {mpp:.3g} µm/px, by the model's rule")
    assert mpp == pytest.approx(100 / 320) and "3 stained cells outlined" in seen(panel.reading_label)
    check_outlines(kiosk.model.cells.shown, centres, 320)
    assert len(kiosk.view.cell_outlines) == 4
