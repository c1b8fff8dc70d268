"""Issue 19 on the desktop viewer (offscreen): nothing on screen may mislead."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import numpy as np
import pytest

for _module in ("PySide6", "pyqtgraph", "pytestqt"):
    pytest.importorskip(_module)

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from cellview.analysis.model_spec import CATEGORIES  # noqa: E402
from cellview.outputs.legend import format_um  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated_settings")
TIMEOUT_MS = 30000


@contextmanager
def viewer(qtbot, model, auto: bool = True):
    """The desktop window with ``model``, shut down (its threads joined) afterwards."""
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    window.show_error = lambda exc, title="": window.viewer.errorShown.emit(exc.message, exc.details)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    window.run_controls.auto_box.setChecked(auto)
    assert window.add_model(model)
    try:
        yield window
    finally:
        assert window.shutdown(20000)


def open_and_analyse(qtbot, window, path):
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.open_path(path)
    return blocker.args[0]


def image_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, :img.width() * 3] \
        .reshape(img.height(), img.width(), 3).copy()


def white_run(rgb: np.ndarray) -> int:
    """The longest run of white pixels along any row (the bar; the label's letters are short runs)."""
    white = (rgb.min(axis=2) > 200).astype(np.int8)
    best = 0
    for row in white:
        edges = np.diff(np.concatenate([[0], row, [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if len(starts):
            best = max(best, int((ends - starts).max()))
    return best


# ----------------------------------------------------------------------------- 1: the scale bar


@pytest.mark.parametrize("font_pt", [9.5, 14.4, 18.0])  # desktop, kiosk at 800 × 480, kiosk at 1024 × 600
def test_the_drawn_scale_bar_is_as_long_as_its_label_says_at_every_zoom(qtbot, font_pt):
    from PySide6.QtWidgets import QWidget

    from cellview.gui.app import make_app
    from cellview.gui.canvas.widgets import ScaleBar

    make_app()
    host = QWidget()
    qtbot.addWidget(host)
    host.resize(900, 600)
    bar = ScaleBar(host)
    bar.set_font_pt(font_pt)
    mpp = 0.499
    worst = 0.0
    for view_w in (900, 330):
        for l0_per_px in np.geomspace(0.05, 80, 80):
            bar.set_scale(mpp, float(l0_per_px), view_w)
            spec = bar.spec
            assert spec is not None and bar.isVisibleTo(host)
            drawn = white_run(image_rgb(bar.grab().toImage()))
            truth_px = spec.length_um / (mpp * l0_per_px)  # what the label promises, in screen pixels
            worst = max(worst, abs(drawn - truth_px) / truth_px)
            assert abs(drawn - truth_px) <= max(1.0, 0.03 * truth_px), (l0_per_px, drawn, truth_px, spec.label)
            assert drawn <= ScaleBar.MAX_VIEW_SHARE * view_w + 1  # never a quarter of the slide or more
            assert bar.bar_rect().right() < bar.width() and spec.label == format_um(spec.length_um)
    assert worst <= 0.03


def test_the_exported_view_png_has_the_same_true_scale_bar(qtbot, toy_model, synthetic_slide):
    with viewer(qtbot, toy_model) as window:
        open_and_analyse(qtbot, window, synthetic_slide)
        bar = window.view.scale_bar
        for factor in (1.0, 3.7, 0.4):
            window.view.zoom(factor)
            qtbot.wait(50)
            png = QImage.fromData(window.exports.render_view_png())
            g = bar.geometry()
            drawn = white_run(image_rgb(png.copy(g)))
            truth = bar.spec.length_um / (window.model.slide.mpp_um() * window.view.l0_per_screen_px())
            assert abs(drawn - truth) <= max(1.0, 0.03 * truth)


# ----------------------------------------------------------------------------- 2, 4, 6: a new slide starts safe


def test_a_new_slide_starts_with_nothing_carried_over(qtbot, cam_domain_model, square_slide, tmp_path):
    with viewer(qtbot, cam_domain_model) as window:
        result = open_and_analyse(qtbot, window, square_slide)
        assert result.out_of_domain.all() and window.viewer.heatmap.domain_banner.isVisible()
        window.viewer.heatmap.domain_banner.anyway.click()  # "Show calls anyway" on the first slide
        window.colours.threshold.setValue(60)
        window.viewer.heatmap.toggles.boxes["benign"].setChecked(False)
        window.viewer.heatmap.show_regions.setChecked(True)
        qtbot.waitUntil(lambda: not window.model.regions.busy, timeout=TIMEOUT_MS)
        x, y, w, h = result.grid.rect(0)
        window.viewer.canvas.hover_at(x + w / 2, y + h / 2)
        assert window.status.hover_label.text() and window.viewer.heatmap.filter_notice.isVisibleTo(window)
        assert "Out-of-domain tiles are shown" in window.viewer.heatmap.filter_notice.label.text()
        assert window.viewer.heatmap.regions_label.isVisibleTo(window)

        window.run_controls.auto_box.setChecked(False)
        other = tmp_path / "other.tiff"
        shutil.copy(square_slide, other)
        with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
            window.open_path(other)
        assert not window.viewer.heatmap.domain_banner.anyway.isChecked() and not window.model.overlay.settings.show_out_of_domain
        assert window.colours.threshold.value() == 0 and window.viewer.heatmap.toggles.selected() == CATEGORIES
        assert not window.viewer.heatmap.filter_notice.isVisibleTo(window)
        assert window.status.hover_label.text() == ""
        assert not window.viewer.heatmap.regions_label.isVisibleTo(window) and window.viewer.heatmap.regions_label.text() == ""
        with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS):  # analysed: out-of-domain not counted
            window.start_analysis()
        assert window.viewer.heatmap.toggles.counts["malignant"].text().startswith("0 tiles")


def test_a_filter_on_screen_is_shown_and_one_tap_clears_it(qtbot, toy_model, synthetic_slide):
    with viewer(qtbot, toy_model) as window:
        open_and_analyse(qtbot, window, synthetic_slide)
        window.colours.threshold.setValue(80)
        assert window.viewer.heatmap.filter_notice.isVisibleTo(window)
        assert "only tiles ≥ 80% confident" in window.viewer.heatmap.filter_notice.label.text()
        window.viewer.heatmap.filter_notice.reset.click()
        assert window.colours.threshold.value() == 0 and not window.viewer.heatmap.filter_notice.isVisibleTo(window)


# ----------------------------------------------------------------------------- 5: the patch the model was fed


def test_the_inspector_shows_the_stain_normalised_patch(qtbot, stain_model, he_slide):
    from cellview.analysis.tiling import read_tile
    from cellview.slides.opening import open_slide

    with viewer(qtbot, stain_model, auto=False) as window:
        window.run_controls.stain_box.setCurrentIndex(window.run_controls.stain_box.findData("macenko"))
        with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
            window.open_path(he_slide)
        with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
            window.start_analysis()
        result = blocker.args[0]
        with qtbot.waitSignal(window.viewer.patchShown, timeout=TIMEOUT_MS):
            window.select_tile(2)
        transform = window.model.explain.patch_stain()
        assert transform is not None and "Stain-normalised" in window.viewer.inspector.patch_note.text()
        with open_slide(he_slide) as slide:
            scanned = read_tile(slide, result.grid, 2)
        np.testing.assert_array_equal(window.viewer.inspector._rgb, transform.apply(scanned))
        assert not np.array_equal(window.viewer.inspector._rgb, scanned)


# ----------------------------------------------------------------------------- 16, 17: keys and help


def test_keys_help_and_menus(qtbot, toy_model, synthetic_slide):
    from PySide6.QtGui import QKeySequence
    from PySide6.QtWidgets import QApplication

    from cellview.gui.desktop.shortcuts import menu_shortcuts

    with viewer(qtbot, toy_model) as window:
        open_and_analyse(qtbot, window, synthetic_slide)
        rows = menu_shortcuts(window.menuBar())
        keys = {entry: k for _, entry, k in rows}
        assert "Ctrl+=" in keys["Zoom in"] and keys["Keyboard shortcuts"] == "F1" and keys["Fit slide"] == "Ctrl+0"
        window.activateWindow()
        window.view.setFocus()
        before = window.view.l0_per_screen_px()
        qtbot.keyClick(window.view, Qt.Key.Key_Equal, Qt.KeyboardModifier.ControlModifier)
        qtbot.waitUntil(lambda: window.view.l0_per_screen_px() < before * 0.8, timeout=5000)
        # Esc on an open menu: the arrow keys step tiles again, not the menus
        window.select_tile(0)
        bar = window.menuBar()  # the View menu opened from the menu bar, as a user does
        qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.actionGeometry(bar.actions()[1]).center())
        qtbot.waitUntil(lambda: QApplication.activePopupWidget() is not None, timeout=5000)
        qtbot.keyClick(QApplication.activePopupWidget(), Qt.Key.Key_Escape)
        # the keys go to the slide again, not to the menu bar's keyboard mode (arrows walked the menus)
        qtbot.waitUntil(lambda: window.focusWidget() is window.view, timeout=5000)
        qtbot.keyClick(window.focusWidget(), Qt.Key.Key_Right)
        assert window.model.selection.index == 1
        assert QKeySequence("Ctrl+=") in window.menuBar().actions()[1].menu().actions()[1].shortcuts()


def test_class_names_are_never_cut_in_the_bars(qtbot):
    from cellview.gui.app import make_app
    from cellview.gui.widgets.inspector import ProbabilityBars

    make_app()
    bars = ProbabilityBars()
    qtbot.addWidget(bars)
    bars.resize(300, 200)
    names = ("adenocarcinoma", "adenoma / low-grade dysplasia", "normal mucosa")
    bars.set_values(names, ("#d62728", "#ff9f1c", "#2ca02c"), np.array([0.6, 0.3, 0.1], np.float32), 0)
    fits = bars.fontMetrics().horizontalAdvance(names[1]) <= bars.name_width() - 4
    assert not fits and bars.row_lines(1) == 2 and bars.row_lines(0) == 1  # the long name gets its own line
    assert bars.height() >= 4 * bars.row_height()
