"""The desktop viewer as a new user met it (issue 25, section 3, items 6–11): a window that fits the screen, a calm
status bar, the shortcut list, zoom limits at both ends, region labels inside the view, an overview that covers
nothing it need not, the last pixel size proposed again, and plurals."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QRect  # noqa: E402

from cellview.testing.synthetic import mosaic_rgb, synthetic_slide_rgb, write_pyramid_tiff  # noqa: E402

TIMEOUT_MS = 30000

pytestmark = pytest.mark.usefixtures("isolated_settings")


def window_at(qtbot, toy_model, rect: QRect | None = None):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    qtbot.addWidget(window)
    if rect is not None:
        window.setGeometry(rect)
    window.show()
    qtbot.waitExposed(window)
    assert window.add_model(toy_model)
    return window


def open_only(qtbot, window, path):
    window.model.analysis.auto_analyse = False
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(path)


def open_and_analyse(qtbot, window, path):
    window.model.analysis.auto_analyse = True
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.open_path(path)
    return blocker.args[0]


def rect_in(widget, window) -> QRect:
    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


# ----------------------------------------------------------------------------- 6: the window fits the screen


def test_the_window_fits_the_available_screen(qtbot, toy_model, synthetic_slide):
    from PySide6.QtWidgets import QApplication

    from cellview.gui.desktop.window import fitted_geometry

    assert fitted_geometry(QRect(0, 0, 1366, 768)) == QRect(0, 0, 1366, 768)
    assert fitted_geometry(QRect(0, 0, 1920, 1080)) == QRect(160, 40, 1600, 1000)  # room: the usual size, centred
    assert fitted_geometry(QRect(0, 24, 1366, 744)).bottom() <= 767  # a panel at the top of the screen
    window = window_at(qtbot, toy_model)
    available = (window.screen() or QApplication.primaryScreen()).availableGeometry()
    qtbot.waitUntil(lambda: available.contains(window.frameGeometry()), timeout=5000)  # not a fixed 1600 × 1000
    window.setGeometry(fitted_geometry(QRect(0, 0, 1366, 768)))
    open_and_analyse(qtbot, window, synthetic_slide)
    qtbot.wait(100)
    inside = window.rect()
    for part in (window.side.dock, window.statusBar(), window.view, window.view.scale_bar):
        assert part.isVisible() and inside.contains(rect_in(part, window)), part
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 7: a calm status bar


def test_the_status_bar_is_short_calm_and_says_everything_in_its_tooltips(qtbot, toy_model, tmp_path):
    from cellview.testing.synthetic import ycbcr_as_rgb

    window = window_at(qtbot, toy_model, QRect(0, 0, 1366, 768))
    path = write_pyramid_tiff(tmp_path / "CMU-1-Small-Region-dicom-copy-with-levels.tiff", synthetic_slide_rgb(), 0.5,
                              damage=ycbcr_as_rgb)  # the DICOM copy's fault: levels in false colour
    open_and_analyse(qtbot, window, path)
    status = window.status
    ready = window.model.analysis.model_ready
    assert ready is not None and ready.fallback_message is None  # "auto" on a machine without a GPU: routine
    assert status.provider_label.objectName() != "warn" and status.provider_label.text() == ready.short
    assert status.provider_label.toolTip() == ready.description and window.model_panel.run_info.text().endswith(
        ready.description)
    slide = status.slide_label
    assert "⚠ 3 levels skipped" in slide.text() and "levels 1–3 skipped" in slide.toolTip()
    for label in (slide, status.provider_label):
        assert not label.elided(), label.text()  # whole at 1366 px: nothing cut
        assert window.rect().contains(rect_in(label, window))
    assert rect_in(slide, window).right() < rect_in(status.provider_label, window).left()
    assert window.statusBar().height() <= 2.5 * slide.fontMetrics().height()  # one line
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 8: the shortcut list


def test_f1_lists_how_to_pick_tiles(qtbot, toy_model):
    from cellview.gui.desktop.shortcuts import shortcuts_html

    window = window_at(qtbot, toy_model)
    html = shortcuts_html(window.menuBar())
    assert "Shift+click" in html and "Shift+drag" in html and "labelling" in html
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 9, 11: zoom limits and the overview


def test_zoom_is_bounded_at_both_ends_and_the_overview_keeps_its_box(qtbot, toy_model, synthetic_slide):
    from cellview.gui.canvas.view import MAX_SCREEN_PX_PER_L0, MIN_SLIDE_SHARE

    window = window_at(qtbot, toy_model, QRect(0, 0, 1366, 768))
    open_only(qtbot, window, synthetic_slide)
    view = window.view
    assert not view.overview.isVisible()  # the whole slide is in view: the thumbnail would cover it for nothing
    for _ in range(40):
        view.zoom(1.5)
    qtbot.wait(50)
    assert 1 / view.l0_per_screen_px() <= MAX_SCREEN_PX_PER_L0 * 1.001  # it went to 113 screen px per slide pixel
    assert view.overview.isVisible()
    box = view.overview.box_rect()
    assert box.width() >= view.overview.MIN_BOX_PX and box.height() >= view.overview.MIN_BOX_PX
    assert QRect(QPoint(0, 0), view.overview.size()).adjusted(-1, -1, 1, 1).contains(box.toAlignedRect())
    window.menus.act_overview.setChecked(False)  # hidden by choice
    assert not view.overview.isVisible()
    window.menus.act_overview.setChecked(True)
    for _ in range(60):
        view.zoom(1 / 1.5)
    qtbot.wait(50)
    w0, h0 = view.opened.info.dimensions
    on_screen = max(w0 / view.l0_per_screen_px() / view.width(), h0 / view.l0_per_screen_px() / view.height())
    assert on_screen >= MIN_SLIDE_SHARE * 0.999  # not a speck
    assert not view.overview.isVisible()
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 10: region labels


def test_a_region_label_at_the_views_right_edge_is_not_clipped(qtbot, toy_model, tmp_path):
    rows = ["NNNNNNNNNN", "NNNNNNNNNM", "NNNNNNNNNM", "NNNNNNNNNN", "NNNNNNNNNN", "NNNNNNNNNN"]
    path = write_pyramid_tiff(tmp_path / "edge.tiff", mosaic_rgb(rows), 0.5)
    window = window_at(qtbot, toy_model, QRect(0, 0, 1366, 768))
    open_and_analyse(qtbot, window, path)
    with qtbot.waitSignal(window.viewer.regionsShown, timeout=TIMEOUT_MS):
        window.viewer.heatmap.show_regions.setChecked(True)
    qtbot.waitUntil(lambda: bool(window.view.regions), timeout=TIMEOUT_MS)
    view = window.view
    label = view.regions[0].label
    x, y, w, h = view.regions[0].region.bbox
    for centre in (None, (x + w * 0.9, y + h / 2)):  # fitted, then zoomed in on the region's right side
        if centre is not None:
            view.zoom(3)
            view.center_on(*centre)
        qtbot.wait(50)
        shown = view.mapFromScene(label.sceneBoundingRect()).boundingRect()
        assert view.viewport().rect().contains(shown), (shown, view.viewport().rect())
    assert label.toPlainText().strip().startswith("#1")
    assert window.shutdown(20000)


# ----------------------------------------------------------------------------- 11: the last pixel size, plurals


def test_the_pixel_size_prompt_proposes_the_last_value_used(qtbot, toy_model, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from cellview.gui.desktop.dialogs import MppDialog

    proposed: list[float] = []

    def answer(dialog):  # the user types 0.62 the first time and accepts what is proposed after that
        proposed.append(dialog.spin.value())
        dialog.spin.setValue(0.62)
        dialog._use_value()
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(MppDialog, "exec", answer)
    window = window_at(qtbot, toy_model)
    for seed, name in enumerate(("first.tiff", "second.tiff")):
        path = write_pyramid_tiff(tmp_path / name, synthetic_slide_rgb(seed=seed), None)
        result = open_and_analyse(qtbot, window, path)
        assert result.slide.mpp.um == pytest.approx(0.62)
    assert proposed == [0.5, pytest.approx(0.62)]  # a series of 0.62 µm/px images: 0.62 again, not 0.5
    assert window.shutdown(20000)


def test_one_annotation_is_one_annotation(tmp_path, cam_domain_model):
    from cellview.lab.labels import LabelRegion, write_geojson
    from cellview.testing.synthetic import lab_block_rect, lab_slide_rgb
    from cellview.viewer.jobs import run_now
    from cellview.viewer.model import ViewerModel
    from cellview.viewer.settings import MemoryStore

    slide = write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)
    viewer = ViewerModel(run_now, store=MemoryStore(), labelling=True)
    viewer.set_model(str(cam_domain_model))
    viewer.open(slide)
    qupath = tmp_path / "one.geojson"
    write_geojson(qupath, [LabelRegion.rect("normal", *lab_block_rect(2))])
    assert viewer.labels.import_geojson(qupath).startswith("Imported 1 annotation from one.geojson")


def test_the_call_reads_in_a_light_grey_when_no_call_is_made_on_the_dark_screen(qtbot, toy_model):
    from cellview.analysis.call import slide_call
    from cellview.gui.panels.call import NO_CALL_ON_SCREEN

    window = window_at(qtbot, toy_model)
    window.call_panel.show(slide_call(None))
    assert NO_CALL_ON_SCREEN in window.call_panel.call_label.text() and "#555555" not in window.call_panel.call_label.text()
    assert window.shutdown(20000)
