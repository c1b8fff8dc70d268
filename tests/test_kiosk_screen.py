"""The kiosk as a user sees it on a 1024 × 600 and an 800 × 480 screen (issue 25, section 2): a true scale bar at
every moment, no clipped or overlapping text, finger-sized scroll arrows, any typed pixel size, and a slide that
returns to its view after a sheet closes."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF  # noqa: E402
from test_kiosk_gui import TIMEOUT_MS, kiosk_settings, make_kiosk, show_at  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated_settings")

SIZES = [(1024, 600), (800, 480)]


def screen_px_per_l0(view) -> float:
    """Measured on the slide as it is drawn: where 1,000 level-0 pixels land on the screen."""
    a, b = view.vb.mapViewToScene(QPointF(0, 0)), view.vb.mapViewToScene(QPointF(1000, 0))
    return (b.x() - a.x()) / 1000


def assert_bar_true(view, when: str) -> None:
    bar = view.scale_bar
    assert bar.isVisible() and bar.spec is not None, when
    needed = bar.spec.length_um / view.opened.info.mpp.um * screen_px_per_l0(view)
    assert abs(bar.bar_rect().width() - needed) <= 1.0, f"{when}: {bar.bar_rect().width()} px drawn, {needed:.1f} needed"


@pytest.mark.parametrize("size", SIZES)
def test_the_scale_bar_is_true_while_the_start_up_note_shows_and_after(qtbot, tmp_path, toy_model, synthetic_slide,
                                                                       size):
    settings = kiosk_settings(tmp_path, toy_model)
    shutil.copy(synthetic_slide, settings.watch_dir / "waiting.tiff")  # there at start: a note says so
    kiosk = make_kiosk(qtbot, settings)
    show_at(qtbot, kiosk, *size)
    checks: list[str] = []

    def check() -> None:  # at every change of the slide's transform
        if kiosk.view.opened is not None and kiosk.view.scale_bar.spec is not None:
            assert_bar_true(kiosk.view, f"transform change {len(checks)}")
            checks.append("ok")

    kiosk.view.vb.sigTransformChanged.connect(check)
    qtbot.waitUntil(lambda: kiosk.result is not None and kiosk.cases.current is None, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    assert kiosk.cards.info_card.isVisible()
    assert_bar_true(kiosk.view, "with the start-up note")
    kiosk.cards.info_card.hide()
    qtbot.waitUntil(lambda: not kiosk.cards.info_card.isVisible(), timeout=5000)
    qtbot.wait(100)
    assert_bar_true(kiosk.view, "after the note")
    kiosk.cards.show_info("Another note")
    qtbot.wait(100)
    assert_bar_true(kiosk.view, "with a note again")
    kiosk.view.zoom(1.7)
    assert_bar_true(kiosk.view, "zoomed in")
    assert checks
