"""The viewer end to end under pytest-qt (offscreen): open, stream, inspect, export, cancel, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, QRectF, Qt  # noqa: E402

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, hex_to_rgb  # noqa: E402
from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.testing.synthetic import expected_synthetic_tiles, synthetic_slide_rgb, write_pyramid_tiff  # noqa: E402

TIMEOUT_MS = 30000


pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


def make_window(qtbot, params: AnalysisParams | None = None, model: Path | None = None):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow(analysis_defaults=params)
    window.errors = []

    def record_error(exc, title=""):
        window.errors.append(exc)
        window.viewer.errorShown.emit(exc.message, exc.details)

    window.show_error = record_error
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    if model is not None:
        assert window.add_model(model)
    return window


@pytest.fixture
def window(qtbot, toy_model):
    w = make_window(qtbot, model=toy_model)
    yield w
    assert w.shutdown(20000)


def open_and_analyse(qtbot, window, path) -> object:
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.open_path(path)
    return blocker.args[0]


def click_l0(qtbot, window, x: float, y: float) -> None:
    view = window.view
    scene = view.vb.mapViewToScene(QPointF(x, y))
    pos = view.mapFromScene(scene)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def test_synthetic_slide_overlay_matches_results(qtbot, window, synthetic_slide):
    result = open_and_analyse(qtbot, window, synthetic_slide)
    assert result.status == "complete" and result.n_done == result.n_tiles == 56
    got = {(int(r), int(c)): result.model.class_names[k]
           for r, c, k in zip(result.grid.grid_row, result.grid.grid_col, result.pred_class)}
    assert got == expected_synthetic_tiles()
    g = result.grid
    overlay = window.view.overlay
    # The default draws category contours and leaves the stain as it is: the fill layer is empty.
    assert window.model.overlay.settings.style == "outline" and not overlay.isVisible()
    assert len(window.view.contours) == 2 * 3  # casing + colour line per category
    window.viewer.heatmap.style_box.setCurrentIndex(window.viewer.heatmap.style_box.findData("fill"))
    assert overlay.isVisible() and window.view.contours == []
    # One image, one pixel per grid cell, exactly the core's category colours with confidence as alpha.
    np.testing.assert_array_equal(overlay.image, result.category_rgba())
    rect = overlay.mapRectToParent(overlay.boundingRect())
    assert (rect.width(), rect.height()) == (g.n_cols * g.stride_l0_x, g.n_rows * g.stride_l0_y)
    r, c = 3, 3  # inside the red block
    assert tuple(overlay.image[r, c, :3]) == hex_to_rgb(CATEGORY_COLORS["malignant"])
    assert window.viewer.heatmap.toggles.counts["malignant"].text().startswith("16 tiles")

    window.viewer.heatmap.toggles.boxes["benign"].setChecked(False)
    benign = result.pred_category == CATEGORIES.index("benign")
    assert (overlay.image[g.grid_row[benign], g.grid_col[benign], 3] == 0).all()
    assert (overlay.image[g.grid_row[~benign], g.grid_col[~benign], 3] > 0).all()
    for pct in (60, 100):
        window.colours.threshold.setValue(pct)
        np.testing.assert_array_equal(overlay.image, result.category_rgba(pct / 100, ("malignant", "normal")))
    window.colours.threshold.setValue(0)
    window.colours.mode_box.setCurrentIndex(window.colours.mode_box.findData(0))  # P(malignant)
    assert window.colours.colorbar.isVisibleTo(window)
    heat = result.heatmap(0)
    # issue 19: the category toggles apply in probability mode too (benign is still switched off)
    benign_cells = np.zeros(heat.shape, bool)
    benign_cells[g.grid_row[benign], g.grid_col[benign]] = True
    np.testing.assert_array_equal(overlay.image[..., 3] > 0, np.isfinite(heat) & ~benign_cells)
    assert window.viewer.heatmap.toggles.isEnabled() and "benign hidden" in window.viewer.heatmap.filter_notice.label.text()
    window.viewer.heatmap.toggles.boxes["benign"].setChecked(True)
    np.testing.assert_array_equal(overlay.image[..., 3] > 0, np.isfinite(heat))
    assert not window.viewer.heatmap.filter_notice.isVisibleTo(window)
    assert window.opened.info.mpp is not None and window.view.scale_bar.isVisibleTo(window)


def test_pyramid_tiles_load_when_zoomed(qtbot, window, synthetic_slide):
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.run_controls.auto_box.setChecked(False)
        window.open_path(synthetic_slide)
    window.view.vb.setRange(xRange=(400, 700), yRange=(300, 500), padding=0)
    qtbot.waitUntil(lambda: window.view.live_tile_items > 0, timeout=10000)
    assert window.view.live_tile_items <= window.view.MAX_LIVE_ITEMS
    level = window.view._level_for(window.view.l0_per_screen_px())
    assert level == 0  # magnified: the sharpest level
    qtbot.waitUntil(lambda: any(k[0] == level for k in window.view._items), timeout=10000)
    window.view.fit()
    qtbot.waitUntil(lambda: window.view.live_tile_items == 0, timeout=5000)


def test_click_tile_shows_inspector_and_arrows_step(qtbot, window, synthetic_slide):
    from cellview.analysis.tiling import read_tile
    from cellview.slides.opening import open_slide

    result = open_and_analyse(qtbot, window, synthetic_slide)
    g = result.grid
    i = int(np.flatnonzero((g.grid_row == 3) & (g.grid_col == 3))[0])
    x, y, w, h = g.rect(i)
    with qtbot.waitSignal(window.viewer.patchShown, timeout=10000):
        click_l0(qtbot, window, x + w / 2, y + h / 2)
    assert window.viewer.inspector.index == i
    values = window.viewer.inspector.bars.values()
    np.testing.assert_allclose([values[n] for n in result.model.class_names], result.probs[i], rtol=1e-6)
    assert "malignant" in window.viewer.inspector.title.text()
    assert f"x {x:,}" in window.viewer.inspector.details.text() and "64 × 64 µm" in window.viewer.inspector.details.text()
    with open_slide(synthetic_slide) as slide:
        patch = read_tile(slide, g, i)
    shown = window.viewer.inspector.patch.pixmap().toImage()
    assert shown.width() == window.viewer.inspector.PATCH_PX  # the 64-px model patch, scaled for display
    assert patch.shape == (64, 64, 3)
    with qtbot.waitSignal(window.viewer.patchShown, timeout=10000):
        qtbot.keyClick(window.view, Qt.Key.Key_Right)
    j = window.viewer.inspector.index
    assert (g.grid_row[j], g.grid_col[j]) == (3, 4)
    with qtbot.waitSignal(window.viewer.patchShown, timeout=10000):
        qtbot.keyClick(window, Qt.Key.Key_Down)
    k = window.viewer.inspector.index
    assert (g.grid_row[k], g.grid_col[k]) == (4, 4)
    assert window.view.selection.isVisible()
    window.viewer.canvas.hover_at(x + w / 2, y + h / 2)
    assert window.status.hover_label.text().startswith("malignant ")


def test_export_files_parse_and_never_overwrite_silently(qtbot, window, synthetic_slide, tmp_path, monkeypatch):
    result = open_and_analyse(qtbot, window, synthetic_slide)
    out = {}
    for kind, name in (("csv", "t.csv"), ("geojson", "t.geojson"), ("png", "t.png"), ("view", "v.png")):
        out[kind] = window.exports.export_to(kind, tmp_path / name)
        assert out[kind] is not None and out[kind].exists()
    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    assert len(rows) == result.n_tiles and {r["pred_category"] for r in rows} == set(CATEGORIES)
    gj = json.loads(out["geojson"].read_text())
    kinds = [f["properties"]["objectType"] for f in gj["features"]]
    assert kinds.count("tile") == result.n_done and kinds.count("annotation") == 1  # the CLI's regions too
    import cv2

    for kind in ("png", "view"):
        img = cv2.imread(str(out[kind]))
        assert img is not None and img.shape[0] > 100
    before = out["csv"].read_bytes()
    monkeypatch.setattr(window, "confirm_overwrite", lambda path: False)
    window.colours.threshold.setValue(50)
    assert window.exports.export_to("csv", out["csv"]) is None
    assert out["csv"].read_bytes() == before
    # The dialog route remembers the folder.
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.setattr(window, "ask_save_path", lambda title, suggested, f: sub / "x.geojson")
    assert window.exports.export_dialog("geojson") == sub / "x.geojson"
    from cellview.gui import settings

    assert settings.get("last_export_dir") == str(sub)


def test_cancel_keeps_finished_tiles_and_rerun_hits_cache(qtbot, toy_model, synthetic_slide):
    w = make_window(qtbot, AnalysisParams(batch_size=4, workers=1, tissue_threshold=0.3), toy_model)
    w.model.overlay.set(style="fill")

    def on_started(worker):
        from cellview.analysis.pipeline import BatchDone

        def on_item(ev):  # runs in the worker thread: cancels before the next batch
            if isinstance(ev, BatchDone) and ev.done >= 8:
                worker.cancel()
        worker.raw_item.connect(on_item, Qt.ConnectionType.DirectConnection)

    w.viewer.analysisStarted.connect(on_started)
    result = open_and_analyse(qtbot, w, synthetic_slide)
    w.viewer.analysisStarted.disconnect(on_started)
    assert result.status == "cancelled"
    assert 8 <= result.n_done < result.n_tiles
    assert int((w.view.overlay.image[..., 3] > 0).sum()) == result.n_done
    assert "partial" in w.viewer.heatmap.summary_label.text()
    assert w.run_controls.analyse_btn.isEnabled() and not w.run_controls.cancel_btn.isEnabled()
    with qtbot.waitSignal(w.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        w.start_analysis()
    assert blocker.args[0].status == "complete" and not blocker.args[0].from_cache
    with qtbot.waitSignal(w.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        w.start_analysis()
    assert blocker.args[0].from_cache and "cache" in w.viewer.run_status.rate_label.text()
    assert w.shutdown(20000)


def test_gpu_asked_for_but_absent_is_said_plainly(qtbot, window, synthetic_slide):
    import cellview.analysis.classifier as model

    cuda_ok, _, _ = model.gpu_runtime_status()
    if cuda_ok:
        pytest.skip("this machine has a usable GPU")
    window.model_panel.device_box.setCurrentIndex(window.model_panel.device_box.findData("cuda"))
    open_and_analyse(qtbot, window, synthetic_slide)
    text = window.status.provider_label.text()
    assert "CUDA was asked for" in text and "CPU" in text


def test_real_slide_analyses_and_zooms(qtbot, real_slide, toy_model_224):
    w = make_window(qtbot, model=toy_model_224)
    result = open_and_analyse(qtbot, w, real_slide)
    assert result.n_done > 20 and w.view.overlay.image.shape[:2] == result.grid.shape
    assert "0.499 µm/px" in w.status.slide_label.text()
    w.view.vb.setRange(xRange=(800, 1400), yRange=(1000, 1400), padding=0)
    qtbot.waitUntil(lambda: w.view.live_tile_items > 0, timeout=10000)
    assert w.shutdown(20000)


def test_single_cell_image_shows_label(qtbot, window, tmp_path, monkeypatch):
    import cv2

    img = np.full((96, 96, 3), 245, np.uint8)
    img[10:86, 10:86] = (40, 30, 220)  # BGR: red cell
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), img)
    from cellview.viewer.slide import WHOLE_IMAGE

    monkeypatch.setattr(window, "ask_mpp", lambda opened: WHOLE_IMAGE)
    result = open_and_analyse(qtbot, window, path)
    assert result.n_tiles == 1 and result.grid.whole_image
    assert window.view.label.isVisible()
    assert "malignant" in window.view.label.textItem.toHtml()
    assert "one image" in window.status.slide_label.text()


def test_missing_mpp_is_asked_once_and_recorded(qtbot, window, tmp_path, monkeypatch):
    path = write_pyramid_tiff(tmp_path / "nompp.tiff", synthetic_slide_rgb(), None)
    asked = []
    monkeypatch.setattr(window, "ask_mpp", lambda opened: asked.append(opened.path) or 0.5)
    result = open_and_analyse(qtbot, window, path)
    assert asked and result.n_done == 56 and result.slide.mpp.source == "user"
    monkeypatch.setattr(window, "ask_mpp", lambda opened: pytest.fail("asked again"))
    result = open_and_analyse(qtbot, window, path)
    assert result.n_done == 56 and "entered by you" in window.status.slide_label.text()


def test_errors_show_a_dialog_and_the_window_stays_usable(qtbot, window, synthetic_slide, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    with qtbot.waitSignal(window.viewer.errorShown, timeout=TIMEOUT_MS) as blocker:
        window.open_path(bad)
    assert "broken.svs" in blocker.args[0]
    onnx = tmp_path / "m" / "model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"garbage")
    assert not window.add_model(onnx)
    assert len(window.errors) == 2
    window.run_controls.auto_box.setChecked(False)
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(synthetic_slide)
    assert window.opened is not None


def test_tissue_preview(qtbot, window, synthetic_slide):
    window.run_controls.auto_box.setChecked(False)
    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.open_path(synthetic_slide)
    with qtbot.waitSignal(window.viewer.tissueShown, timeout=TIMEOUT_MS):
        window.tissue_panel.tissue_box.setChecked(True)
    img = window.view.tissue_item.image
    assert img is not None and window.view.tissue_item.isVisible()
    assert 0 < (img[..., 1] == 229).mean() < 1
    assert "tissue" in window.tissue_panel.tissue_label.text()


def test_closing_during_analysis_stops_the_worker(qtbot, toy_model, synthetic_slide):
    import time

    w = make_window(qtbot, AnalysisParams(batch_size=1, workers=1, tissue_threshold=0.1), toy_model)

    def on_started(worker):
        from cellview.analysis.pipeline import BatchDone

        def on_item(ev):  # worker thread: hold the run after its first batch until it is cancelled
            if isinstance(ev, BatchDone):
                deadline = time.monotonic() + 20
                while not worker.cancel_token.cancelled and time.monotonic() < deadline:
                    time.sleep(0.01)
        worker.raw_item.connect(on_item, Qt.ConnectionType.DirectConnection)

    w.viewer.analysisStarted.connect(on_started)
    with qtbot.waitSignal(w.viewer.overlayPainted, timeout=TIMEOUT_MS):
        w.open_path(synthetic_slide)
    worker = w.viewer.analysis
    assert worker is not None and worker.is_running()
    w.close()
    assert not worker.is_running()
    assert all(not x.is_running() for x in list(w.viewer.runner.workers))


def test_drop_recent_files_and_kiosk_flag(qtbot, window, synthetic_slide, toy_model, tmp_path, monkeypatch):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtWidgets import QApplication

    from cellview.cli.viewer import build_gui_parser
    from cellview.gui import settings
    from cellview.gui.app import run_gui

    window.run_controls.auto_box.setChecked(False)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(synthetic_slide))])

    class Drop:
        def mimeData(self):  # noqa: N802 - Qt API
            return mime

    with qtbot.waitSignal(window.viewer.slideOpened, timeout=TIMEOUT_MS):
        window.dropEvent(Drop())
    assert settings.recent_files()[0] == str(Path(synthetic_slide).absolute())
    window.menus.fill_recent()
    assert [a.text() for a in window.menus.recent_menu.actions()] == [Path(synthetic_slide).name]
    # The kiosk itself is tested in test_kiosk_gui.py; a missing settings file does not stop it (no exit 2,
    # which systemd would restart in a loop): it runs on defaults and says so.
    from cellview.gui.kiosk import KioskWindow

    seen: list[tuple[KioskWindow, bool, bool]] = []

    def fake_exec(app) -> int:
        kiosk = next(w for w in QApplication.topLevelWidgets() if isinstance(w, KioskWindow) and w.isVisible())
        qtbot.waitUntil(lambda: kiosk.page == "waiting", timeout=TIMEOUT_MS)
        kiosk.request_exit()  # the exit chord
        seen.append((kiosk, kiosk.isVisible(), kiosk.cards.settings_card.isVisible()))
        kiosk.exit_kiosk()
        return 0

    monkeypatch.setattr(QApplication, "exec", fake_exec)
    missing = str(tmp_path / "no-such-kiosk.json")
    assert run_gui(build_gui_parser().parse_args(["--kiosk", "--kiosk-config", missing, "--model", str(toy_model),
                                                  "--device", "cpu", "--outbox", str(tmp_path / "out")])) == 0
    [(kiosk, still_up, problem_shown)] = seen
    # issue 19: a missing file holds no PIN, so the defaults apply and the exit chord leaves (it was locked)
    assert not still_up and not kiosk.exit_locked and "does not exist" in kiosk.cards.settings_label.text()


def test_model_picker_rescans_models_dir(qtbot, window, tmp_path, monkeypatch):
    from cellview.testing.synthetic import make_toy_model

    monkeypatch.setenv("CELLVIEW_MODELS_DIR", str(tmp_path / "models"))
    make_toy_model(tmp_path / "models" / "colon-he", patch_px=64, spacing_um=1.0)
    window.model_panel.model_box.showPopup()
    window.model_panel.model_box.hidePopup()
    names = [window.model_panel.model_box.itemText(i) for i in range(window.model_panel.model_box.count())]
    assert "colon-he" in names
    window.model_panel.refresh_models()
    assert window.model_panel.model_box.currentData() is not None


def test_nuclei_measurements_reach_the_inspector(qtbot, toy_model_224, real_slide):
    w = make_window(qtbot, model=toy_model_224)
    w.run_controls.nuclei_box.setChecked(True)
    result = open_and_analyse(qtbot, w, real_slide)
    assert result.nuclei is not None and result.nuclei.measured.all()
    i = int(np.argmax(result.nuclei.count))
    w.select_tile(i)
    assert f"nuclei    {int(result.nuclei.count[i])}" in w.viewer.inspector.details.text()
    assert w.shutdown(20000)


def test_heatmap_is_clipped_to_the_slide(qtbot, window, tmp_path):
    """Edge tiles reach past the slide's border; their colour must not be painted outside it."""
    from cellview.testing.synthetic import TOY_COLORS

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = TOY_COLORS["malignant"]
    path = write_pyramid_tiff(tmp_path / "edge.tiff", img, 1.0, levels=1, tile=64)
    result = open_and_analyse(qtbot, window, path)
    g = result.grid
    assert g.n_cols * g.stride_l0_x > 100 and g.n_rows * g.stride_l0_y > 100  # tiles stick out
    window.viewer.heatmap.opacity.setValue(window.viewer.heatmap.opacity.maximum())
    view = window.view
    view.vb.setRange(QRectF(-60, -60, 240, 240), padding=0)
    qtbot.wait(100)
    shot = view.grab().toImage()

    def pixel(x: float, y: float) -> tuple[int, int, int]:
        pos = view.mapFromScene(view.vb.mapViewToScene(QPointF(x, y)))
        c = shot.pixelColor(pos.x(), pos.y())
        return c.red(), c.green(), c.blue()

    assert view.visible_l0_rect().contains(QPointF(-20, 50)) and view.visible_l0_rect().contains(QPointF(50, 118))
    background = pixel(-20, 50)
    assert pixel(50, 50) != background
    assert pixel(118, 50) == background and pixel(50, 118) == background
