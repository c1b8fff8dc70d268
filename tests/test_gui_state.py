"""Issue 13 in the desktop viewer (offscreen): one state for every widget, and the rough edges it had.

Every test waits for signals or conditions (qtbot.waitSignal / waitUntil), never a fixed sleep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QFontInfo, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from test_gui import TIMEOUT_MS, make_window, open_and_analyse  # noqa: E402

from cellview.analysis.model_spec import CATEGORY_COLORS, hex_to_rgb  # noqa: E402
from cellview.base.errors import CellviewError  # noqa: E402
from cellview.testing.synthetic import SYNTH_BLOCKS, SYNTH_TILE, make_toy_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


@pytest.fixture
def window(qtbot, toy_model):
    w = make_window(qtbot, model=toy_model)
    yield w
    assert w.shutdown(20000)


def open_only(qtbot, window, path) -> None:
    window.run_controls.auto_box.setChecked(False)
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(path)


def screen_rgb(window, shot, l0_x: float, l0_y: float) -> np.ndarray:
    view = window.view
    pos = view.mapFromScene(view.vb.mapViewToScene(QPointF(l0_x, l0_y)))
    c = shot.pixelColor(pos.x(), pos.y())
    return np.array([c.red(), c.green(), c.blue()])


# ----------------------------------------------------------------------------- 5: losing work


def test_a_bad_file_keeps_the_open_slide_and_nothing_open_means_nothing_to_analyse(qtbot, window, synthetic_slide,
                                                                                     tmp_path):
    result = open_and_analyse(qtbot, window, synthetic_slide)
    opened = window.opened
    bad = tmp_path / "x.svs"
    bad.write_bytes(b"")
    with qtbot.waitSignal(window.viewer.errorShown, timeout=TIMEOUT_MS) as blocker:
        window.open_path(bad)
    assert "x.svs is empty" in blocker.args[0]
    assert window.opened is opened and window.result is result  # the slide and its result stay
    assert window.view.opened is opened and not window.view.base.pixmap().isNull()
    assert window.view.overlay.image is not None and window.run_controls.analyse_btn.isEnabled()
    assert not window.view.empty_hint.isVisible() and window.view.scale_bar.isVisible()
    window.close_slide()
    assert not window.run_controls.analyse_btn.isEnabled() and not window.menus.act_analyse.isEnabled()
    assert not window.view.scale_bar.isVisible() and window.view.empty_hint.isVisible()
    assert not any(a.isEnabled() for a in window.menus.export_actions)


# ----------------------------------------------------------------------------- 4: a result belongs to one model


def test_switching_the_model_clears_the_old_result_or_reruns(qtbot, window, synthetic_slide, tmp_path):
    window.run_controls.auto_box.setChecked(False)
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):
        window.open_path(synthetic_slide)
        qtbot.waitUntil(lambda: window.opened is not None, timeout=TIMEOUT_MS)
        window.start_analysis()
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):
        window.start_analysis()  # from the cache this time
    assert "result cache" in window.viewer.run_status.rate_label.text() and window.status.provider_label.text()
    other = make_toy_model(tmp_path / "other", patch_px=64, spacing_um=1.0, name="toy-other")
    assert window.add_model(other)  # selects it
    assert window.result is None and window.view.overlay.image is None and window.view.contours == []
    assert window.viewer.run_status.rate_label.text() == "" and window.status.provider_label.text() == ""
    assert window.viewer.heatmap.summary_label.text() == "" and window.viewer.run_status.progress.format() == "idle"
    assert window.viewer.heatmap.toggles.counts["malignant"].text() == "–"
    window.run_controls.auto_box.setChecked(True)  # with auto-analyse on, the slide is analysed again with the new model
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.model_panel.model_box.setCurrentIndex(window.model_panel.model_box.findText("toy-colour 0.0-test (model.onnx)"))
    assert blocker.args[0].model.name == "toy-colour"


# ----------------------------------------------------------------------------- 9: outline mode


def test_outlines_leave_the_stain_and_fill_tints_it(qtbot, window, synthetic_slide):
    result = open_and_analyse(qtbot, window, synthetic_slide)
    window.view.fit()
    r0, r1, c0, c1 = SYNTH_BLOCKS["benign"]  # blue tissue, drawn in orange
    centre = ((c0 + c1) / 2 * SYNTH_TILE, (r0 + r1) / 2 * SYNTH_TILE)
    orange = np.array(hex_to_rgb(CATEGORY_COLORS["benign"]))
    qtbot.waitUntil(lambda: bool(window.view.contours), timeout=5000)
    shot = window.view.grab().toImage()
    stain = screen_rgb(window, shot, *centre)
    assert np.abs(stain - (40, 60, 220)).max() < 40  # the stain as scanned in the middle
    # the block's border is drawn: a pixel on the top edge, halfway along, is orange (or the dark casing)
    edge = [screen_rgb(window, shot, centre[0], r0 * SYNTH_TILE + dy) for dy in (-2, -1, 0, 1, 2)]
    assert any(np.abs(px - orange).max() < 60 for px in edge)
    window.viewer.heatmap.style_box.setCurrentIndex(window.viewer.heatmap.style_box.findData("fill"))
    window.viewer.heatmap.opacity.setValue(100)
    shot = window.view.grab().toImage()
    assert np.abs(screen_rgb(window, shot, *centre) - orange).max() < 40
    assert result.n_done == 56


# ----------------------------------------------------------------------------- 7: wheel over the panel


def test_wheel_over_a_slider_scrolls_the_panel_not_the_value(qtbot, window, monkeypatch):
    window.resize(1400, 420)  # the panel must scroll
    bar = window.side.scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5000)
    slider = window.colours.threshold
    window.colours.threshold.setValue(45)
    before, top = slider.value(), bar.value()

    def wheel(widget, steps: int) -> None:
        centre = QPointF(widget.width() / 2, widget.height() / 2)
        event = QWheelEvent(centre, widget.mapToGlobal(centre), QPoint(0, 0), QPoint(0, -120 * steps),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                            False)
        QApplication.sendEvent(widget, event)

    wheel(slider, 2)
    assert slider.value() == before and bar.value() > top  # the panel scrolled; the opacity stayed
    wheel(window.colours.mode_box, 1)
    assert window.colours.mode_box.currentIndex() == 0
    # clicked first (offscreen windows get no real focus): the guard lets a focused control take the wheel
    monkeypatch.setattr(window.side.wheel_guard, "takes_wheel", lambda widget: widget is slider)
    wheel(slider, 1)
    assert slider.value() != before  # a focused slider still takes the wheel


# ----------------------------------------------------------------------------- 8: focus without a window manager


def test_window_takes_the_focus_at_start_and_after_every_dialog(qtbot, toy_model, monkeypatch):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    activated: list[int] = []
    monkeypatch.setattr(window, "activateWindow", lambda: activated.append(1))
    window.show()
    qtbot.waitUntil(lambda: len(activated) == 1, timeout=5000)
    qtbot.waitUntil(lambda: window.focusWidget() is window.view, timeout=5000)
    MainWindow.show_error(window, CellviewError("Something went wrong."))
    box = next(w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible())
    box.button(QMessageBox.StandardButton.Ok).click()
    qtbot.waitUntil(lambda: len(activated) == 2, timeout=5000)
    assert window.focusWidget() is window.view
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 10: small text faults


def test_tissue_threshold_printed_as_set(qtbot, window, synthetic_slide):
    open_only(qtbot, window, synthetic_slide)
    assert window.tissue_panel.tissue_min.decimals() == 3
    with qtbot.waitSignal(window.viewer.tissueShown, timeout=TIMEOUT_MS):
        window.tissue_panel.tissue_box.setChecked(True)
    text = window.tissue_panel.tissue_label.text()
    assert f"{window.tissue_panel.tissue_min.value():.3f}" in text and window.tissue_panel.tissue_min.text() in text


def test_hint_counts_and_shares_follow_the_display(qtbot, window, tmp_path):
    from cellview.testing.synthetic import TOY_COLORS, write_pyramid_tiff

    img = np.full((768, 1024, 3), 245, np.uint8)
    for col, colour in enumerate((TOY_COLORS["malignant"], (170, 90, 100), TOY_COLORS["benign"],
                                  TOY_COLORS["normal"], TOY_COLORS["normal"])):
        img[256:384, 128 + col * 128:256 + col * 128] = colour  # one tile each; the second a paler red
    img[384:512, 128:384] = TOY_COLORS["benign"]
    open_and_analyse(qtbot, window, write_pyramid_tiff(tmp_path / "mix.tiff", img, 0.5))
    assert "category" in window.viewer.heatmap.colour_hint.text().lower() or "outline" in window.viewer.heatmap.colour_hint.text().lower()
    window.colours.mode_box.setCurrentIndex(window.colours.mode_box.findData(0))
    assert "probability of malignant" in window.viewer.heatmap.colour_hint.text() and "category" not in window.viewer.heatmap.colour_hint.text()
    window.colours.mode_box.setCurrentIndex(0)
    counts = {c: window.viewer.heatmap.toggles.counts[c].text() for c in ("malignant", "benign", "normal")}
    assert counts == {"malignant": "2 tiles   29%", "benign": "3 tiles   43%", "normal": "2 tiles   28%"}
    # 2 / 3 / 2 of 7 = 28.6 + 42.9 + 28.6 %, rounded one by one 29 + 43 + 29 = 101 %
    conf = window.result.confidence
    cut = float(np.sort(conf)[0]) + 1e-4  # the paler red tile is the least sure: filtered out
    window.model.overlay.set(min_confidence=cut)
    kept = window.result.category_counts(min_confidence=cut)  # counts and shares follow the filter
    assert sum(kept.values()) == 6 and window.viewer.heatmap.toggles.counts["malignant"].text().startswith("1 tile ")
    assert sum(int(window.viewer.heatmap.toggles.counts[c].text().split()[-1].rstrip("%")) for c in kept) == 100
    assert "6 of 7 tiles ≥" in window.viewer.heatmap.summary_label.text()


def test_inspector_numbers_match_their_bars_and_long_names_are_elided(qtbot):
    from dataclasses import replace

    from cellview.gui.app import make_app
    from cellview.gui.widgets.inspector import ProbabilityBars, TileInspector, pct
    from cellview.testing.synthetic import grid_result

    make_app()
    base = grid_result(["M"])
    model = replace(base.model, class_names=("adenocarcinoma", "adenoma / low-grade dysplasia", "hyperplastic polyp",
                                             "normal mucosa"),
                    class_categories=("malignant", "benign", "benign", "normal"),
                    class_colors=("#d62728", "#ff9f1c", "#ffbb78", "#2ca02c"))
    probs = np.array([[0.6374, 0.2001, 0.1620, 0.0005]], np.float32)  # malignant: 0.6374 (its one class)
    probs[0, 0] += 0.0001  # make the category sum differ from a class by rounding: 63.75 %
    result = replace(base, model=model, probs=probs)
    inspector = TileInspector()
    qtbot.addWidget(inspector)
    inspector.resize(380, 500)
    inspector.show_tile(0, result, 0.5)
    conf = float(result.confidence[0])
    assert f"Confidence <b>{pct(conf)}</b>" in inspector.subtitle.text()
    assert inspector.bars.texts()["malignant"] == pct(conf)  # the quoted number is on a bar
    assert inspector.bars.texts()["benign"] == pct(0.2001 + 0.1620)
    bars = ProbabilityBars()
    qtbot.addWidget(bars)
    shown = bars.display_name("adenoma / low-grade dysplasia", 120)
    assert shown.endswith("…") and bars.fontMetrics().horizontalAdvance(shown) <= 116
    assert bars.display_name("normal", 120) == "normal"


# ----------------------------------------------------------------------------- 11: discoverability


def test_recent_slides_are_named_by_their_folder_and_offered_on_the_empty_canvas(qtbot, window, synthetic_slide,
                                                                                  tmp_path):
    from cellview.gui import settings

    dicom = tmp_path / "CMU-1-dicom" / "1.2.826.0.1.3680043.8.498.123.dcm"
    dicom.parent.mkdir()
    dicom.write_bytes(b"x")
    settings.add_recent_file(str(synthetic_slide))
    settings.add_recent_file(str(dicom))
    window.menus.fill_recent()
    assert [a.text() for a in window.menus.recent_menu.actions()] == ["CMU-1-dicom", "synthetic.tiff"]
    window.viewer.canvas.show_recent()
    hint = window.view.empty_hint
    assert hint.isVisible() and "Open a slide (Ctrl+O) or drop one here" in hint.title.text()
    assert [b.text() for b in hint.recent_buttons] == ["CMU-1-dicom", "synthetic.tiff"]
    window.run_controls.auto_box.setChecked(False)
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        hint.recent_buttons[1].click()
    assert not hint.isVisible() and window.opened.info.name == "synthetic"


def test_open_dialog_starts_among_slides_and_exports_fall_back_to_a_writable_folder(qtbot, window, synthetic_slide,
                                                                                    tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    import cellview.base.files as files

    open_and_analyse(qtbot, window, synthetic_slide)
    exports = tmp_path / "exports"
    exports.mkdir()
    assert window.exports.export_to("csv", exports / "a.csv") is not None
    asked: list[str] = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (asked.append(a[2]), ("", ""))[1])
    window.choose_slide()
    assert asked == [str(Path(synthetic_slide).parent)]  # not the export folder Qt would remember
    # the slide's folder (and the last export folder) cannot be written: a writable one is proposed, and said
    slide_dir = Path(synthetic_slide).parent
    monkeypatch.setattr(files, "_can_write", lambda folder: Path(folder) not in (slide_dir, exports))
    monkeypatch.setattr(files, "default_export_dir", lambda: tmp_path / "Documents" / "CellView")
    suggested: list[Path] = []
    monkeypatch.setattr(window, "ask_save_path", lambda title, path, f: suggested.append(path) or None)
    window.exports.export_dialog("geojson")
    assert suggested == [tmp_path / "Documents" / "CellView" / "synthetic.geojson"]
    assert "cannot be written" in window.statusBar().currentMessage()


# ----------------------------------------------------------------------------- 1: skipped levels shown


def test_viewer_says_which_levels_are_skipped_and_never_draws_them(qtbot, window, tmp_path):
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff, ycbcr_as_rgb

    path = write_pyramid_tiff(tmp_path / "false.tiff", synthetic_slide_rgb(), 0.5, damage=ycbcr_as_rgb)
    open_only(qtbot, window, path)
    assert window.viewer.run_status.levels_label.isVisible() and "levels 1–3 skipped" in window.viewer.run_status.levels_label.text()
    assert "levels 1–3 skipped (wrong colours)" in window.status.slide_label.text()
    for l0_per_px in (1.1, 2.5, 5.0, 9.0):
        assert window.view._level_for(l0_per_px) in (None, 0)


# ----------------------------------------------------------------------------- 3: exports as on screen


def test_view_export_legend_and_whole_slide_png_follow_the_display(qtbot, window, synthetic_slide, tmp_path):
    import cv2

    open_and_analyse(qtbot, window, synthetic_slide)
    window.viewer.heatmap.toggles.boxes["benign"].setChecked(False)
    window.colours.threshold.setValue(50)
    shown = window.exports.export_to("png", tmp_path / "shown.png")
    window.viewer.heatmap.toggles.boxes["benign"].setChecked(True)
    window.colours.threshold.setValue(0)
    full = window.exports.export_to("png", tmp_path / "full.png")
    a, b = cv2.imread(str(shown)), cv2.imread(str(full))
    assert a.shape == b.shape and (np.abs(a.astype(int) - b).sum(axis=2) > 30).sum() > 500
    assert window.exports.export_to("view", tmp_path / "view.png") is not None


def test_kiosk_sized_fonts_do_not_leak_into_the_desktop(qtbot, window):
    assert QFontInfo(window.viewer.inspector.title.font()).pointSizeF() < 18
