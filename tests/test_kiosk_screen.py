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
from test_kiosk_gui import TIMEOUT_MS, kiosk_settings, make_kiosk, run_case, show_at  # noqa: E402

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


# ----------------------------------------------------------------------------- item 2: no clipped or overlapping text

COLON_CLASSES = ("normal mucosa", "hyperplastic / inflammatory polyp", "serrated adenoma", "adenoma / low-grade IN",
                 "high-grade IN", "adenocarcinoma")


def test_the_inspectors_class_names_are_whole_and_overlap_nothing(qtbot, kiosk):
    import numpy as np
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QFontMetrics

    show_at(qtbot, kiosk, 1024, 600)
    bars = kiosk.viewer.inspector.bars
    probs = np.array([0.01, 0.02, 0.9, 0.03, 0.02, 0.02], np.float32)
    bars.set_values(COLON_CLASSES, ("#2ca02c",) * 6, probs, 2, np.array([0.05, 0.92, 0.03], np.float32), 1)
    qtbot.wait(50)
    assert bars.width() > 100 and bars.n_category_rows == 3
    layout = bars.layout()
    assert len(layout) == 9
    for i, ((name, _, _, bold), (name_rect, track, pct_rect)) in enumerate(zip(bars.rows, layout)):
        fm = QFontMetrics(bars._font(bold))
        need = fm.boundingRect(0, 0, int(name_rect.width()), 10000, int(Qt.TextFlag.TextWordWrap), name)
        assert need.width() <= name_rect.width() + 1 and need.height() <= name_rect.height() + 2, name
        for j, (other_name, other_track, other_pct) in enumerate(layout):
            if j != i:  # a name never runs into another row's bar or percentage (it did into the bar above)
                assert not name_rect.intersects(other_track) and not name_rect.intersects(other_pct), (name, j)
                assert not name_rect.intersects(other_name), (name, j)
        assert not name_rect.intersects(track) and not name_rect.intersects(pct_rect)  # nor into its own
    assert layout[-1][2].bottom() <= bars.height()


@pytest.fixture
def kiosk(qtbot, tmp_path, toy_model):
    return make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model))


def test_the_header_and_a_long_case_title_are_read_whole(qtbot, kiosk, synthetic_slide, tmp_path):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QFontMetrics

    long_name = tmp_path / "TCGA-AA-3516-01Z-00-DX1_CMU-1-Small-Region.tiff"
    shutil.copy(synthetic_slide, long_name)
    run_case(qtbot, kiosk, long_name)
    for size in SIZES:
        show_at(qtbot, kiosk, *size)
        qtbot.wait(50)
        badge = kiosk.header.provider_badge
        assert badge.text() and not badge.elided(), (size, badge.text())  # it read "on CPU (no …"
        title = kiosk.case_page.case_title
        assert title.name == long_name.name
        fm = QFontMetrics(title.font())
        need = fm.boundingRect(0, 0, title.contentsRect().width(), 10000, int(Qt.TextFlag.TextWordWrap), title.text())
        assert need.width() <= title.contentsRect().width() and need.height() <= title.contentsRect().height(), size


@pytest.mark.parametrize("size", SIZES)
def test_no_line_of_text_is_cut_at_a_scrolling_edge(qtbot, tmp_path, toy_model, synthetic_slide, size):
    settings = kiosk_settings(tmp_path, toy_model)
    shutil.copy(synthetic_slide, settings.watch_dir / "waiting-at-start.tiff")  # the start-up note takes room too
    kiosk = make_kiosk(qtbot, settings)
    show_at(qtbot, kiosk, *size)
    qtbot.waitUntil(lambda: kiosk.result is not None and kiosk.cases.current is None, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    page = kiosk.case_page
    bar = page.side_scroll.verticalScrollBar()
    for value in (0, bar.maximum() // 3, bar.maximum() // 2 + 17, bar.maximum()):
        bar.setValue(value)
        qtbot.wait(20)
        assert page.side_lines.hidden_text() == [], (size, value)
    page.home_btn.click()
    qtbot.wait(100)
    waiting = kiosk.waiting
    assert waiting.done_card.isVisible() and waiting.run_options_label.isVisible()
    done = waiting.done_label  # the page's layout settles (a loaded machine takes several passes) with the note whole
    qtbot.waitUntil(lambda: done.height() >= done.heightForWidth(done.width()) - 1, timeout=5000)
    bar = waiting.waiting_scroll.verticalScrollBar()
    for value in range(0, bar.maximum() + 1, 13):  # the model line and the result note: never sliced mid-line
        bar.setValue(value)
        qtbot.wait(10)
        assert waiting.waiting_lines.hidden_text() == [], (size, value)
    bar = waiting.recent_list.verticalScrollBar()
    for value in range(0, bar.maximum() + 1, 11):  # nor a recent case at the list's edges
        bar.setValue(value)
        qtbot.wait(10)
        assert waiting.recent_lines.hidden_text() == [], (size, value)
    sb = page.side_scroll.verticalScrollBar()  # finger-sized scroll arrows (they were about 36 px)
    from PySide6.QtWidgets import QStyle, QStyleOptionSlider

    opt = QStyleOptionSlider()
    sb.initStyleOption(opt)
    for control in (QStyle.SubControl.SC_ScrollBarSubLine, QStyle.SubControl.SC_ScrollBarAddLine):
        r = sb.style().subControlRect(QStyle.ComplexControl.CC_ScrollBar, opt, control, sb)
        assert min(r.width(), r.height()) >= 48, (size, r)


@pytest.mark.parametrize("size", SIZES)
def test_the_tile_sheet_is_opaque_and_shows_whole_rows(qtbot, kiosk, tmp_path, size):
    from PySide6.QtGui import QColor

    from cellview.gui.kiosk.style import KIOSK_SHEET_BACKGROUND
    from cellview.testing.synthetic import mosaic_rgb, write_pyramid_tiff

    bright = write_pyramid_tiff(tmp_path / "bright.tiff", mosaic_rgb(["MMMMMMMM"] * 6), 0.5)
    show_at(qtbot, kiosk, *size)
    run_case(qtbot, kiosk, bright)
    g = kiosk.result.grid
    x, y, w, h = g.rect(int(g.index_grid()[5, 3]))
    kiosk.case_page.tap(x + w / 2, y + h / 2)
    sheet = kiosk.case_page.tile_sheet
    qtbot.wait(50)
    assert sheet.isVisible() and sheet.lines.hidden_text() == []
    rows = sheet.bars.row_boundaries()
    top = sheet.bars.mapTo(sheet.scroll.widget(), sheet.bars.rect().topLeft()).y()
    shown = sheet.scroll.viewport().height() - (sheet.lines.bottom_mask.height() if sheet.lines.bottom_mask.isVisible()
                                                else 0)
    whole = [b for b in rows[1:] if top + b <= shown]
    assert len(whole) >= 2  # at 800 × 480 it showed one and a half rows
    img = kiosk.grab().toImage()
    inner = sheet.geometry().translated(kiosk.view.mapTo(kiosk, sheet.parentWidget().rect().topLeft()))
    probe = img.pixelColor(inner.left() + 7, inner.center().y())  # inside the sheet, left of its text
    assert probe == QColor(KIOSK_SHEET_BACKGROUND)  # not the slide showing through
    sheet.close_btn.click()


# ----------------------------------------------------------------------------- item 3: any pixel size, typed


def test_any_pixel_size_can_be_typed_on_the_keypad(qtbot, kiosk, synthetic_slide):
    show_at(qtbot, kiosk, 800, 480)
    sheet = kiosk.scale_sheet
    chosen: list[tuple[str, float]] = []
    sheet.chosen.connect(lambda path, mpp: chosen.append((path, mpp)))
    kiosk.cases.analyse_with_scale = lambda path, mpp: None  # only the sheet is under test here
    for digits, value in (("0.62", 0.62), ("0.4415", 0.4415), ("12", 12.0)):
        sheet.ask(synthetic_slide, "no pixel size")
        for key in digits:
            sheet.pad.keys[key].click()
        assert sheet.value_label.text().startswith(digits) and sheet.use_btn.isEnabled()
        sheet.use_btn.click()
        assert chosen[-1] == (str(synthetic_slide), value) and not sheet.isVisible()
    sheet.ask(synthetic_slide, "no pixel size")
    for key in "0.001":
        sheet.pad.keys[key].click()
    assert not sheet.use_btn.isEnabled() and "0.02" in sheet.range_note.text()  # not a microscope's pixel
    sheet.pad.keys["⌫"].click()
    assert sheet.pad.text == "0.00"
    for key in sheet.pad.keys.values():
        assert key.height() >= 48 and key.width() >= 48 and kiosk.rect().contains(rect_in(key, kiosk))
    assert kiosk.rect().contains(rect_in(sheet.use_btn, kiosk))
    sheet.close_sheet()


def rect_in(widget, window):
    from PySide6.QtCore import QPoint, QRect

    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


# ----------------------------------------------------------------------------- item 4: the slide goes back


@pytest.mark.parametrize("size", SIZES)
def test_the_slide_returns_to_its_view_after_the_sheet_or_its_details(qtbot, kiosk, synthetic_slide, size):
    from cellview.gui.kiosk.case_page import same_rect

    show_at(qtbot, kiosk, *size)
    run_case(qtbot, kiosk, synthetic_slide)
    view, page = kiosk.view, kiosk.case_page
    g = kiosk.result.grid
    x, y, w, h = g.rect(int(g.index_grid()[0, 4]))  # a tile at the top: the sheet goes below it and pans
    for close in (page.tile_sheet.close_btn.click, page.tile_sheet.details_btn.click):
        before = view.visible_l0_rect()
        page.tap(x + w / 2, y + h / 2)
        assert page.tile_sheet.isVisible()
        panned = view.visible_l0_rect()
        close()
        qtbot.wait(20)
        assert not page.tile_sheet.isVisible()
        assert same_rect(view.visible_l0_rect(), before), (size, before, panned, view.visible_l0_rect())
    # moved by the user meanwhile: left where the user put it
    page.tap(x + w / 2, y + h / 2)
    view.zoom(1.3)
    moved = view.visible_l0_rect()
    page.tile_sheet.close_btn.click()
    assert same_rect(view.visible_l0_rect(), moved)


@pytest.mark.parametrize("size", SIZES)
def test_a_tap_on_a_scroll_arrow_moves_a_third_of_the_view(qtbot, kiosk, synthetic_slide, size):
    """Qt's 20 px step took a dozen taps from the inspector's patch to its classes."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QStyle, QStyleOptionSlider

    show_at(qtbot, kiosk, *size)
    run_case(qtbot, kiosk, synthetic_slide)
    page = kiosk.case_page
    g = kiosk.result.grid
    x, y, w, h = g.rect(int(g.index_grid()[2, 4]))
    page.tap(x + w / 2, y + h / 2)
    page.tile_sheet.details_btn.click()  # the inspector: a patch, its facts, then every class
    qtbot.wait(50)
    sb, viewport = page.side_scroll.verticalScrollBar(), page.side_scroll.viewport()
    qtbot.waitUntil(lambda: sb.maximum() > viewport.height() // 3, timeout=TIMEOUT_MS)
    sb.setValue(0)
    opt = QStyleOptionSlider()
    sb.initStyleOption(opt)
    down = sb.style().subControlRect(QStyle.ComplexControl.CC_ScrollBar, opt, QStyle.SubControl.SC_ScrollBarAddLine,
                                     sb)
    qtbot.mouseClick(sb, Qt.MouseButton.LeftButton, pos=down.center())
    qtbot.waitUntil(lambda: sb.value() > 0, timeout=5000)
    assert sb.value() >= viewport.height() // 3 - 1, (size, sb.value(), viewport.height())
    qtbot.wait(50)
    assert page.side_lines.hidden_text() == [], size  # and no line is cut where the tap left the edges


@pytest.mark.parametrize("size", SIZES)
def test_the_recent_cases_show_no_cut_line_as_the_waiting_page_opens(qtbot, kiosk, synthetic_slide, mosaic_slide,
                                                                     size):
    """The list's items are re-fitted to its width after it shows: the second case's title was left sliced at the
    list's bottom edge until a finger moved the list."""
    show_at(qtbot, kiosk, *size)
    run_case(qtbot, kiosk, synthetic_slide)
    run_case(qtbot, kiosk, mosaic_slide)
    kiosk.case_page.home_btn.click()
    waiting = kiosk.waiting
    recent = waiting.recent_list
    qtbot.waitUntil(lambda: recent.count() == 2 and recent.verticalScrollBar().maximum() > 0, timeout=TIMEOUT_MS)
    qtbot.wait(300)  # nothing touched: the list as it first settles
    assert recent.verticalScrollBar().value() == 0
    assert waiting.recent_lines.hidden_text() == [], size


def test_a_labels_lines_span_the_height_the_label_lays_its_text_out_in(qtbot):
    """On X11 a line with a fallback glyph ("⚠") made a recent case's text a line taller than the font metrics'
    estimate: the edges' masks, placed from the estimate, let the next case's title show sliced."""
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QLabel

    from cellview.gui.kiosk.lines import label_lines

    class TallerLayout(QLabel):  # the platform's layout: one line more than the metrics say
        def heightForWidth(self, width):  # noqa: N802 - Qt API
            return super().heightForWidth(width) + self.fontMetrics().lineSpacing()

    text = "CMU-1-Small-Region.svs · 23:37\nNo call: out of domain: 100 % of the tissue tiles are unlike colon H&E\n⚠ x"
    for cls in (QLabel, TallerLayout):
        label = cls(text)
        label.setWordWrap(True)
        label.setStyleSheet("QLabel { padding: 8px 14px; font-size: 20pt; color: white; background: black; }")
        qtbot.addWidget(label)
        label.resize(315, label.heightForWidth(315))
        label.show()
        qtbot.waitExposed(label)
        lines = label_lines(label)
        cr = label.contentsRect()
        assert lines[-1] - lines[0] >= label.heightForWidth(315) - (label.height() - cr.height()) - 1, cls
        img = label.grab().toImage()
        inked = [y for y in range(img.height())
                 if any(QColor(img.pixel(x, y)).lightness() > 128 for x in range(0, img.width(), 2))]
        assert lines[0] <= inked[0] and inked[-1] <= lines[-1], (cls, lines, inked[0], inked[-1])


@pytest.mark.parametrize("size", SIZES)
def test_open_slide_shows_no_file_name_cut_at_the_lists_edges(qtbot, kiosk, tmp_path, size):
    """At 800 × 480 the list showed the fourth file's name sliced at its bottom edge."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for k in range(12):
        (folder / f"case-{k:02d}.svs").write_bytes(b"")
    show_at(qtbot, kiosk, *size)
    sheet = kiosk.file_sheet
    sheet.open_at(folder)
    qtbot.waitUntil(lambda: sheet.isVisible() and sheet.list.count() >= 12, timeout=5000)
    bar = sheet.list.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5000)
    qtbot.wait(50)
    assert (kiosk.width(), kiosk.height()) == size  # the sheet never makes the window outgrow the screen
    for value in [*range(0, bar.maximum() + 1, 17), bar.maximum()]:
        bar.setValue(value)
        qtbot.wait(10)
        assert sheet.lines.hidden_text() == [], (size, value)
