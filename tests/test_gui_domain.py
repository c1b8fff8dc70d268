"""The model's domain and the class activation map in the viewer and the kiosk (pytest-qt, offscreen)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QRectF  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from cellview.analysis.domain import OUT_OF_DOMAIN_RGBA  # noqa: E402
from cellview.testing.synthetic import (  # noqa: E402
    SQUARE_AT,
    SQUARE_BLOCK,
    SYNTH_TILE,
    hatch_stripes,
    square_slide_rgb,
)

TIMEOUT_MS = 30000


pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


def make_window(qtbot, model_path):
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    make_app()
    window = MainWindow()
    window.errors = []
    window.show_error = lambda exc, title="": window.errors.append(exc)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    assert window.add_model(model_path)
    return window


@pytest.fixture
def window(qtbot, cam_domain_model):
    w = make_window(qtbot, cam_domain_model)
    yield w
    assert w.shutdown(20000)


def open_and_analyse(qtbot, window, path):
    with qtbot.waitSignal(window.viewer.analysisFinished, timeout=TIMEOUT_MS) as blocker:
        window.open_path(path)
    qtbot.waitUntil(lambda: window.model.overlay.domain.kind != "none", timeout=TIMEOUT_MS)
    return blocker.args[0]


def image_array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    return np.frombuffer(image.constBits(), np.uint8, image.bytesPerLine() * h).reshape(h, -1)[:, : w * 3].reshape(
        h, w, 3).copy()


def grab_l0(window, x: float, y: float, w: float, h: float) -> np.ndarray:
    """The canvas as drawn over a level-0 rectangle (screen pixels)."""
    view = window.view
    rect = view.mapFromScene(view.vb.mapViewToScene(QRectF(x, y, w, h))).boundingRect()
    return image_array(view.grab(rect.adjusted(2, 2, -2, -2)).toImage())


def block_rect_l0():
    r0, r1, c0, c1 = SQUARE_BLOCK
    return (c0 * SYNTH_TILE, r0 * SYNTH_TILE, (c1 - c0) * SYNTH_TILE, (r1 - r0) * SYNTH_TILE)


def test_banner_hatching_and_show_anyway_change_pixels_and_counts(qtbot, window, square_slide):
    result = open_and_analyse(qtbot, window, square_slide)
    n = result.n_done
    assert n == 24 and result.out_of_domain.all()
    banner = window.viewer.heatmap.domain_banner
    assert banner.isVisible() and banner.kind == "warning"
    assert "This tissue does not look like red, blue and green test tiles; the calls are unreliable." \
        in banner.label.text()
    assert not banner.anyway.isChecked()
    # Out of domain: grey and hatched even in the default outline style, no category outline, not counted.
    assert window.model.overlay.settings.style == "outline"
    assert window.view.overlay.isVisible() and window.view.contours == []
    r0, _, c0, _ = SQUARE_BLOCK
    assert tuple(window.view.overlay.image[r0, c0]) == OUT_OF_DOMAIN_RGBA
    assert len(window.view.hatch.rects) == SQUARE_BLOCK[1] - SQUARE_BLOCK[0]  # one run per grid row
    assert window.viewer.heatmap.toggles.counts["malignant"].text().startswith("0 tiles")
    assert window.viewer.heatmap.toggles.ood_label.isVisibleTo(window) and window.viewer.heatmap.toggles.ood_count.text().startswith("24 tiles")
    hatched = grab_l0(window, *block_rect_l0())

    with qtbot.waitSignal(window.viewer.domainShown, timeout=TIMEOUT_MS):
        banner.anyway.click()
    assert window.model.overlay.settings.show_out_of_domain and banner.isVisible()
    assert "counted anyway" in banner.label.text()
    assert window.viewer.heatmap.toggles.counts["malignant"].text().startswith(f"{n} tiles") and "100%" in \
        window.viewer.heatmap.toggles.counts["malignant"].text()
    assert window.viewer.heatmap.toggles.ood_label.text() == "Out of domain (counted)"
    assert len(window.view.hatch.rects) == 0 and len(window.view.contours) == 2  # malignant: casing + line
    assert not window.view.overlay.isVisible()  # outline style: the stain as scanned
    shown = grab_l0(window, *block_rect_l0())
    assert hatched.shape == shown.shape
    assert (np.abs(hatched.astype(int) - shown.astype(int)).sum(axis=-1) > 60).mean() > 0.2
    assert hatch_stripes(hatched) > 2 and hatch_stripes(shown) < 1.3

    banner.anyway.click()  # and back
    assert not window.model.overlay.settings.show_out_of_domain
    assert window.viewer.heatmap.toggles.counts["malignant"].text().startswith("0")


def test_a_note_when_some_tiles_are_out_of_domain(qtbot, window, odd_slide):
    result = open_and_analyse(qtbot, window, odd_slide)
    n_out = int(result.out_of_domain.sum())
    banner = window.viewer.heatmap.domain_banner
    assert banner.isVisible() and banner.kind == "note" and banner.objectName() == "domainNote"
    assert f"{n_out} of 68 tiles" in banner.label.text() and "⚠" not in banner.label.text()
    assert window.viewer.heatmap.toggles.ood_count.text().startswith(f"{n_out} tiles")
    counted = sum(int(window.viewer.heatmap.toggles.counts[c].text().split()[0]) for c in ("malignant", "benign", "normal"))
    assert counted == 68 - n_out


def test_without_statistics_the_panel_and_inspector_say_so(qtbot, toy_model, synthetic_slide):
    window = make_window(qtbot, toy_model)
    try:
        open_and_analyse(qtbot, window, synthetic_slide)
        assert not window.viewer.heatmap.domain_banner.isVisible()
        assert window.viewer.heatmap.toggles.ood_label.text() == "Domain score: not available for this model"
        assert not window.viewer.heatmap.toggles.ood_count.isVisibleTo(window) and len(window.view.hatch.rects) == 0
        window.select_tile(0)
        assert "domain    not available for this model" in window.viewer.inspector.details.text()
    finally:
        assert window.shutdown(20000)


def test_inspector_shows_the_score_and_the_activation_map(qtbot, window, square_slide):
    result = open_and_analyse(qtbot, window, square_slide)
    r0, _, c0, _ = SQUARE_BLOCK
    i = int(result.grid.index_grid()[r0 + 1, c0 + 2])
    with qtbot.waitSignal(window.viewer.patchShown, timeout=TIMEOUT_MS):
        window.select_tile(i)
    insp = window.viewer.inspector
    score = float(result.domain_score[i])
    assert f"domain    {score:.3f}  OUT of domain" in insp.details.text()
    assert "Out of the model's domain" in insp.subtitle.text()
    plain = image_array(insp.patch.pixmap().toImage())

    insp.cam_box.click()
    qtbot.waitUntil(lambda: window.model.explain.current.state == "ready", timeout=TIMEOUT_MS)
    ex = window.model.explain.current.explanation
    assert ex.explained_class == ex.pred_class == 0 and ex.rect_l0 == result.grid.rect(i)
    x, y, side = SQUARE_AT
    px, py = ex.peak_px()
    assert x <= px < x + side and y <= py < y + side  # the map peaks on the red square
    shown = image_array(insp.patch.pixmap().toImage())
    assert shown.shape == plain.shape == (insp.PATCH_PX, insp.PATCH_PX, 3)
    np.testing.assert_array_equal(shown, insp.cam_image())
    assert (np.abs(shown.astype(int) - plain.astype(int)).sum(axis=-1) > 30).mean() > 0.5
    k = insp.PATCH_PX / 64  # the map is strongest (most opaque, turbo's red end) on the square
    sq = shown[int(y * k):int((y + side) * k), int(x * k):int((x + side) * k)].astype(int)
    corner = shown[int(48 * k):, : int(16 * k)].astype(int)
    assert (sq[..., 0] - sq[..., 2]).mean() > (corner[..., 0] - corner[..., 2]).mean() + 40
    assert insp.cam_scale.isVisibleTo(window) and insp.cam_scale.title == "evidence for malignant"
    assert insp.cam_class.isVisibleTo(window)

    insp.cam_class.setCurrentIndex(insp.cam_class.findData(2))  # the normal class's map
    assert window.model.explain.current.explanation.explained_class == 2
    assert insp.cam_scale.title == "evidence for normal"
    assert not np.array_equal(image_array(insp.patch.pixmap().toImage()), shown)
    insp.cam_class.setCurrentIndex(0)
    assert window.model.explain.class_index is None

    insp.cam_box.click()
    assert window.model.explain.current.state == "off" and not insp.cam_scale.isVisibleTo(window)
    np.testing.assert_array_equal(image_array(insp.patch.pixmap().toImage()), plain)


def test_view_export_draws_the_hatching_and_says_why(qtbot, window, square_slide, monkeypatch):
    import cellview.gui.widgets.legend as lv  # the legend is drawn from legend.describe_legend (issue 19)

    open_and_analyse(qtbot, window, square_slide)
    lines: list[str] = []
    original = lv.wrap_text
    monkeypatch.setattr(lv, "wrap_text", lambda fm, text, width: lines.append(text) or original(fm, text, width))
    window.exports.render_view_png()
    assert any("hatched grey and left out of the counts" in t for t in lines)
    assert "This tissue does not look like red, blue and green test tiles; the calls are unreliable." in lines
    lines.clear()
    window.model.overlay.show_calls_anyway(True)
    window.exports.render_view_png()
    assert any("counted anyway" in t for t in lines)


def test_kiosk_banner_call_and_large_activation_map(qtbot, tmp_path, cam_domain_model, square_slide):
    import shutil

    from cellview.gui.app import make_app
    from cellview.gui.kiosk import KioskWindow
    from cellview.viewer.kiosk.settings import KioskSettings

    (tmp_path / "watch").mkdir()
    settings = KioskSettings(watch_dir=tmp_path / "watch", outbox_dir=tmp_path / "outbox", model=str(cam_domain_model),
                             device="cpu", idle_s=0.0, settle_s=0.3, poll_s=0.1, png_size_px=256, workers=1)
    make_app()
    kiosk = KioskWindow(settings)
    qtbot.addWidget(kiosk, before_close_func=lambda w: w.exit_kiosk())
    with qtbot.waitSignal(kiosk.modelReady, timeout=TIMEOUT_MS):
        kiosk.start()
    kiosk.setGeometry(0, 0, 1024, 600)
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        shutil.copy(square_slide, tmp_path / "watch" / "square.tiff")
    case = blocker.args[0]
    assert case.ok and case.domain_warning.startswith("This tissue does not look like red, blue and green")
    assert "⚠ unlike the model's training data" in kiosk.waiting.recent_list.item(0).text()
    banner = kiosk.viewer.heatmap.domain_banner
    assert banner.isVisibleTo(kiosk) and banner.kind == "warning"
    assert kiosk.case_page.side_scroll.widget().isAncestorOf(banner)  # in the touch panel, under the call
    assert "No call" in kiosk.case_page.call.call_label.text() and "no tile in the model's domain" in kiosk.case_page.call.shares_label.text()
    assert banner.anyway.sizeHint().height() >= 64 and kiosk.viewer.inspector.cam_box.sizeHint().height() >= 64
    banner.anyway.click()
    assert "Malignant 100%" in kiosk.case_page.call.call_label.text() and "⚠" in kiosk.case_page.call.call_label.text()
    assert "24 out of domain" in kiosk.case_page.call.shares_label.text()
    banner.anyway.click()

    result = kiosk.result
    kiosk.select_tile(int(result.grid.index_grid()[SQUARE_BLOCK[0], SQUARE_BLOCK[2]]))
    kiosk.viewer.inspector.cam_box.click()
    qtbot.waitUntil(lambda: kiosk.model.explain.current.state == "ready", timeout=TIMEOUT_MS)
    assert kiosk.model.explain.classifier is kiosk.classifier  # the kiosk's loaded model, not a second copy
    assert kiosk.viewer.inspector.PATCH_PX >= 300  # large on a 1024 × 600 screen
    shown = image_array(kiosk.viewer.inspector.patch.pixmap().toImage())
    np.testing.assert_array_equal(shown, kiosk.viewer.inspector.cam_image())


def test_real_slide_banner_with_the_shipped_colon_model(qtbot, real_slide):
    from cellview.analysis.model_lookup import resolve_model
    from cellview.base.errors import CellviewError

    try:
        colon = resolve_model("colon-he")
    except CellviewError:
        pytest.skip("models/colon-he is absent")
    window = make_window(qtbot, colon)
    try:
        result = open_and_analyse(qtbot, window, real_slide)
        assert result.has_domain and result.in_domain_fraction < 0.5
        assert window.viewer.heatmap.domain_banner.kind == "warning"
        assert "This tissue does not look like colon" in window.viewer.heatmap.domain_banner.label.text()
        assert len(window.view.hatch.rects) > 0
    finally:
        assert window.shutdown(20000)


def test_a_single_image_unlike_the_training_data_is_labelled_unreliable(qtbot, window, tmp_path, monkeypatch):
    import cv2

    from cellview.viewer.slide import WHOLE_IMAGE

    rgb = square_slide_rgb(n_cols=3, n_rows=3)[SYNTH_TILE:2 * SYNTH_TILE, SYNTH_TILE:2 * SYNTH_TILE]
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    monkeypatch.setattr(window, "ask_mpp", lambda opened: WHOLE_IMAGE)
    result = open_and_analyse(qtbot, window, path)
    assert result.grid.whole_image and result.out_of_domain.all()
    html = window.view.label.textItem.toHtml()
    assert window.view.label.isVisible() and "malignant" in html and "out of the model's domain" in html
    assert window.viewer.heatmap.domain_banner.kind == "warning"
