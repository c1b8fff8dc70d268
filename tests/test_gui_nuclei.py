"""The viewer's nuclei and regions (offscreen): contoured inspector patch, region outlines and labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from test_gui import click_l0, make_window, open_and_analyse  # noqa: E402

from cellview.analysis.morphology import malignant_regions, measure_tile  # noqa: E402
from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.testing.synthetic import SYNTH_TILE, TOY_COLORS, write_pyramid_tiff  # noqa: E402

TWO_BLOCKS = {"big": (1, 4, 1, 4), "small": (6, 8, 8, 10)}  # malignant (row0, row1, col0, col1), tile units
PALER_RED = (170, 90, 100)  # still malignant for the toy model, but below 100 % confidence


pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


@pytest.fixture(scope="module")
def two_region_slide(tmp_path_factory):
    """1536 × 1152 at 0.5 µm/px: malignant blocks of 3 × 3 (red) and 2 × 2 tiles (paler), a benign one."""
    rng = np.random.default_rng(1)
    t = SYNTH_TILE
    img = np.full((9 * t, 12 * t, 3), 245, np.uint8)
    for name, (r0, r1, c0, c1) in TWO_BLOCKS.items():
        img[r0 * t:r1 * t, c0 * t:c1 * t] = TOY_COLORS["malignant"] if name == "big" else PALER_RED
    img[6 * t:8 * t, 1 * t:4 * t] = TOY_COLORS["benign"]
    img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return write_pyramid_tiff(tmp_path_factory.mktemp("regions") / "two.tiff", img, 0.5)


def region_state(window) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    return [(g.text, g.region.bbox, all(i.isVisible() for i in g.items())) for g in window.view.regions]


def expected(result, min_conf: float) -> list[tuple[str, tuple[int, int, int, int], bool]]:
    return [(f"#{r.rank} {r.label()}", r.bbox, True) for r in malignant_regions(result, min_conf)]


def test_click_tile_shows_contoured_patch_and_nuclei(qtbot, toy_model_224, real_slide):
    from cellview.gui.canvas.loaders import CONTOUR_RGB
    from cellview.slides.opening import open_slide

    w = make_window(qtbot, model=toy_model_224)
    result = open_and_analyse(qtbot, w, real_slide)
    g = result.grid
    i = int(np.argmax(g.tissue_fraction))
    x, y, tw, th = g.rect(i)
    with qtbot.waitSignal(w.viewer.patchShown, timeout=10000):
        click_l0(qtbot, w, x + tw / 2, y + th / 2)
    assert w.viewer.inspector.index == i
    with open_slide(real_slide) as slide:
        m, _ = measure_tile(slide, g, i, want_contours=True)
    got = w.viewer.inspector.nuclei
    assert got is not None and m.count > 5
    assert got.count == m.count and got.area_unit == "um2"
    text = w.viewer.inspector.details.text()
    assert f"nuclei    {m.count}  ({m.density_per_mm2:,.0f}/mm²)" in text
    assert f"mean {m.mean_area:.0f}, median {m.median_area:.0f} µm²" in text and "circularity" in text

    def green_pixels() -> int:
        img = w.viewer.inspector.patch.pixmap().toImage()
        arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
        bgra = arr[:, :img.width() * 4].reshape(img.height(), img.width(), 4).astype(int)
        r, gg, b = CONTOUR_RGB
        return int(((abs(bgra[..., 2] - r) < 40) & (abs(bgra[..., 1] - gg) < 40) & (abs(bgra[..., 0] - b) < 60)).sum())

    assert w.viewer.inspector.patch.pixmap().width() == w.viewer.inspector.PATCH_PX
    assert green_pixels() > 5 * m.count  # the contours are drawn
    w.viewer.inspector.contours_box.setChecked(False)
    assert green_pixels() < 5  # the plain patch
    w.viewer.inspector.contours_box.setChecked(True)
    # a repaint (e.g. the threshold moving) keeps the live measurement
    w.colours.threshold.setValue(10)
    assert f"nuclei    {m.count}" in w.viewer.inspector.details.text()
    assert w.shutdown(20000)


def test_nuclei_rows_flag_pixel_areas_when_the_scale_is_unknown():
    from cellview.gui.widgets.inspector import nuclei_lines

    rows = nuclei_lines(12, float("nan"), 130.4, 120.0, 0.81, 0.5, "px2")
    assert rows[0] == "nuclei    12" and "px² (scale unknown)" in rows[1] and "µm²" not in "".join(rows)
    assert nuclei_lines(0, 0.0, float("nan"), float("nan"), float("nan"), float("nan"), "um2") == ["nuclei    0  (0/mm²)"]
    assert nuclei_lines(float("nan"), float("nan"), 1, 1, 1, 1, "um2") == []


def test_regions_toggle_labels_threshold_and_hide(qtbot, toy_model, two_region_slide):
    w = make_window(qtbot, model=toy_model)
    result = open_and_analyse(qtbot, w, two_region_slide)
    assert w.view.regions == [] and not w.viewer.heatmap.regions_label.isVisible()
    with qtbot.waitSignal(w.viewer.regionsShown, timeout=10000):
        w.viewer.heatmap.show_regions.setChecked(True)
    want = expected(result, 0.0)
    assert len(want) == 2 and want[0][0].startswith("#1 ") and want[0][0].endswith(" mm²")
    assert region_state(w) == want
    big, small = w.view.regions
    assert big.text == f"#1 {9 * (SYNTH_TILE * 0.5) ** 2 / 1e6:.3g} mm²"  # 3 × 3 tiles of 64 µm
    r0, r1, c0, c1 = TWO_BLOCKS["big"]
    assert big.region.bbox == (c0 * SYNTH_TILE, r0 * SYNTH_TILE, (c1 - c0) * SYNTH_TILE, (r1 - r0) * SYNTH_TILE)
    outline = big.outline.path().boundingRect()
    assert (outline.x(), outline.y(), outline.width(), outline.height()) == big.region.bbox
    assert big.box.pen().style() == Qt.PenStyle.DashLine and big.outline.parentItem() is not None
    assert "2 regions" in w.viewer.heatmap.regions_label.text()

    # the threshold drives them: at 100 % only the saturated red block is left
    assert float(result.confidence[small.region.tile_indices].max()) < 1.0
    with qtbot.waitSignal(w.viewer.regionsShown, timeout=10000):
        w.colours.threshold.setValue(100)
    assert region_state(w) == expected(result, 1.0) and len(w.view.regions) == 1
    assert w.view.regions[0].region.bbox == big.region.bbox and "1 region of tiles malignant at ≥ 100%" in w.viewer.heatmap.regions_label.text()
    with qtbot.waitSignal(w.viewer.regionsShown, timeout=10000):
        w.colours.threshold.setValue(0)
    assert region_state(w) == want
    first = w.view.regions[0]
    qtbot.waitUntil(lambda: w.model.regions.job is None, timeout=10000)  # its `done` follows the regions it shows
    w.colours.mode_box.setCurrentIndex(w.colours.mode_box.findData(0))  # a repaint that cannot change them: no recomputation
    assert w.model.regions.job is None and w.view.regions[0] is first

    with qtbot.waitSignal(w.viewer.regionsShown, timeout=10000):
        w.viewer.heatmap.show_regions.setChecked(False)
    assert w.view.regions == [] and not w.viewer.heatmap.regions_label.isVisible()
    scene_items = w.view.scene().items()
    assert first.outline not in scene_items and first.label not in scene_items
    assert w.shutdown(20000)


def test_regions_of_a_cancelled_run_use_the_finished_tiles(qtbot, toy_model, two_region_slide):
    w = make_window(qtbot, AnalysisParams(batch_size=4, workers=1, tissue_threshold=0.3), toy_model)
    w.viewer.heatmap.show_regions.setChecked(True)

    def on_started(worker):
        from cellview.analysis.pipeline import BatchDone

        def on_item(ev):  # worker thread: cancel before the next batch
            if isinstance(ev, BatchDone) and ev.done >= 8:
                worker.cancel()
        worker.raw_item.connect(on_item, Qt.ConnectionType.DirectConnection)

    w.viewer.analysisStarted.connect(on_started)
    result = open_and_analyse(qtbot, w, two_region_slide)
    assert result.status == "cancelled" and result.n_done < result.n_tiles
    want = expected(result, 0.0)
    assert want
    qtbot.waitUntil(lambda: w.model.regions.job is None and region_state(w) == want, timeout=10000)
    drawn = {int(i) for g in w.view.regions for i in g.region.tile_indices}
    assert drawn <= set(np.flatnonzero(result.done).tolist())
    assert w.shutdown(20000)
