"""The kiosk window under pytest-qt (offscreen): stays up, exits only by chord/PIN, watches, recovers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QCloseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QPushButton  # noqa: E402

from cellview.viewer.kiosk.cases import load_classifier  # noqa: E402
from cellview.viewer.kiosk.settings import KioskSettings  # noqa: E402

TIMEOUT_MS = 30000
CHORD_MODS = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ShiftModifier


pytestmark = pytest.mark.usefixtures("isolated_settings")  # conftest: never the user's settings


def kiosk_settings(tmp_path: Path, toy_model: Path, **changes) -> KioskSettings:
    (tmp_path / "watch").mkdir(exist_ok=True)
    values = dict(watch_dir=tmp_path / "watch", outbox_dir=tmp_path / "outbox", model=str(toy_model),
                  device="cpu", idle_s=0.0, settle_s=0.4, poll_s=0.1, png_size_px=256, workers=1)
    values.update(changes)
    return KioskSettings(**values)


def make_kiosk(qtbot, settings: KioskSettings, loader=load_classifier, wait_model: bool = True):
    from cellview.gui.app import make_app
    from cellview.gui.kiosk import KioskWindow

    make_app()
    window = KioskWindow(settings, classifier_loader=loader)
    qtbot.addWidget(window, before_close_func=lambda w: w.exit_kiosk())
    if wait_model:
        with qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS):
            window.start()
    else:
        window.start()
    qtbot.waitExposed(window)
    return window


def write_slowly(qtbot, source: Path, target: Path, chunks: int = 5, gap_ms: int = 150, after_chunk=None) -> None:
    """Copy like a scanner on a slow share: chunks with pauses shorter than settle_s."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            qtbot.wait(gap_ms)
            if after_chunk is not None:
                after_chunk()


@pytest.fixture
def kiosk(qtbot, tmp_path, toy_model):
    return make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model))


def test_full_screen_frameless_no_menus_big_controls(kiosk):
    assert kiosk.isFullScreen() or kiosk.windowState() & Qt.WindowState.WindowFullScreen
    assert kiosk.windowFlags() & Qt.WindowType.FramelessWindowHint
    assert kiosk.windowFlags() & Qt.WindowType.WindowStaysOnTopHint
    assert not kiosk.menuBar().isVisible() and not kiosk.statusBar().isVisible()
    assert kiosk.page == "waiting"
    assert "CPU" in kiosk.header.provider_badge.text()
    for btn in (kiosk.waiting.open_btn, kiosk.case_page.open_btn2, kiosk.case_page.analyse_btn2, kiosk.case_page.home_btn):
        assert btn.sizeHint().height() >= 64 and btn.font().pointSizeF() >= 20
    for box in kiosk.viewer.heatmap.toggles.boxes.values():
        assert box.sizeHint().height() >= 64
    assert kiosk.viewer.heatmap.opacity.sizeHint().height() >= 64


def test_nothing_but_the_chord_closes_it(qtbot, kiosk):
    kiosk.close()
    QTest.keyClick(kiosk, Qt.Key.Key_Escape)
    QTest.keyClick(kiosk, Qt.Key.Key_F4, Qt.KeyboardModifier.AltModifier)
    QTest.keyClick(kiosk, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    event = QCloseEvent()  # what a window manager sends for Alt+F4
    QApplication.sendEvent(kiosk, event)
    assert not event.isAccepted()
    qtbot.wait(50)
    assert kiosk.isVisible() and kiosk.isFullScreen()
    kiosk.showNormal()  # leaving full screen is undone
    qtbot.waitUntil(kiosk.isFullScreen, timeout=5000)
    kiosk.activateWindow()
    QTest.keyClick(kiosk, Qt.Key.Key_Q, CHORD_MODS)
    qtbot.waitUntil(lambda: not kiosk.isVisible(), timeout=5000)


def test_pin_guards_the_exit(qtbot, tmp_path, toy_model):
    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model, pin="2468"))
    window.exit_guard.shortcut.activated.emit()
    pad = window.exit_guard.pin_pad
    assert pad is not None and pad.isVisible()
    for key in "1234":
        pad.keys[key].click()
    pad.keys["OK"].click()
    qtbot.wait(50)
    assert window.isVisible() and window.exit_guard.pin_pad is pad and "Wrong PIN" in pad.message.text()
    for key in "2468":
        pad.keys[key].click()
    pad.keys["OK"].click()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)


def test_slow_copy_is_analysed_once_complete_and_exported(qtbot, tmp_path, kiosk, synthetic_slide):
    started: list[Path] = []
    kiosk.caseStarted.connect(started.append)
    target = kiosk.settings.watch_dir / "case-001.tiff"
    receiving: list[str] = []

    def check_arriving() -> None:
        assert started == []  # never opened while it grows
        receiving.append(kiosk.waiting.receiving_label.text())

    write_slowly(qtbot, synthetic_slide, target, after_chunk=check_arriving)
    assert any("case-001.tiff" in text for text in receiving[1:])  # shown as "Receiving case-001.tiff…"
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        pass
    case = blocker.args[0]
    assert case.ok, case.message
    assert started == [target]
    outbox = kiosk.settings.outbox()
    assert sorted(case.outputs) == ["csv", "geojson", "json", "png"]
    for path in case.outputs.values():
        assert path.parent == outbox and path.stat().st_size > 0
    assert kiosk.result is not None and kiosk.result.n_done == 56  # the overlay shows the case
    assert kiosk.page == "case" and kiosk.view.overlay.image is not None
    assert "case-001.tiff" in kiosk.waiting.recent_list.item(0).text()
    # Back to the list, then reopen the case from it.
    kiosk.case_page.home_btn.click()
    assert kiosk.page == "waiting"
    with qtbot.waitSignal(kiosk.viewer.analysisFinished, timeout=TIMEOUT_MS):
        kiosk.waiting.recent_list.itemClicked.emit(kiosk.waiting.recent_list.item(0))
    assert kiosk.page == "case" and kiosk.result.n_done == 56


def test_corrupt_file_shows_error_and_keeps_watching(qtbot, tmp_path, kiosk, synthetic_slide):
    errors: list[str] = []
    kiosk.viewer.errorShown.connect(lambda msg, details: errors.append(msg))
    bad = kiosk.settings.watch_dir / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        pass
    assert blocker.args[0].status == "failed"
    qtbot.waitUntil(lambda: kiosk.page == "waiting", timeout=5000)
    assert kiosk.cards.error_card.isVisible() and kiosk.cards.error_label.text()
    assert kiosk.isFullScreen() and kiosk.isVisible()
    assert "broken.svs" in kiosk.waiting.recent_list.item(0).text()
    write_slowly(qtbot, synthetic_slide, kiosk.settings.watch_dir / "good.tiff", chunks=2, gap_ms=50)
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        pass
    assert blocker.args[0].ok and (kiosk.settings.outbox() / "good.csv").exists()


def test_preparing_model_is_shown_while_it_loads(qtbot, tmp_path, toy_model):
    release = threading.Event()

    def slow_loader(settings):
        assert release.wait(20)
        return load_classifier(settings)

    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model), loader=slow_loader, wait_model=False)
    try:
        assert window.page == "preparing"
        assert window.preparing.prepare_bar.isVisible() and window.preparing.prepare_bar.maximum() == 0  # busy, not frozen
        assert "Preparing model" in window.preparing.prepare_title.text()
        # the UI keeps ticking while the worker is busy
        qtbot.waitUntil(lambda: "elapsed" in window.preparing.prepare_label.text(), timeout=10000)
    finally:
        release.set()
    qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS).wait()
    qtbot.waitUntil(lambda: window.page == "waiting", timeout=5000)
    assert "CPU" in window.header.provider_badge.text()


def test_model_failure_is_shown_with_retry(qtbot, tmp_path, toy_model):
    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model, model=str(tmp_path / "missing.onnx")),
                        wait_model=False)
    qtbot.waitUntil(window.preparing.retry_btn.isVisible, timeout=TIMEOUT_MS)
    assert window.page == "preparing" and window.cards.error_card.isVisible() and window.isFullScreen()


def test_idle_screen_appears_and_input_dismisses_it(qtbot, tmp_path, toy_model):
    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model, idle_s=0.3))
    with qtbot.waitSignal(window.idleChanged, timeout=5000) as blocker:
        pass
    assert blocker.args == [True] and window.idle_screen.isVisible()
    assert window.idle_screen.geometry() == window.rect()
    with qtbot.waitSignal(window.idleChanged, timeout=5000) as blocker:
        QTest.mouseClick(window.idle_screen, Qt.MouseButton.LeftButton)
    assert blocker.args == [False] and not window.idle_screen.isVisible()


def test_touch_buttons_are_real_buttons(kiosk):
    for btn in kiosk.findChildren(QPushButton):
        if btn.isVisible():
            assert btn.height() >= 60, btn.text()


def test_command_line_overrides_the_settings_file(tmp_path, toy_model):
    from cellview.cli.viewer import build_gui_parser
    from cellview.gui.kiosk import settings_from_args

    config = tmp_path / "kiosk.json"
    KioskSettings(watch_dir=tmp_path / "in", device="cpu", idle_s=60).save(config)
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--outbox", str(tmp_path / "out"),
                                          "--model", str(toy_model)])
    loaded = settings_from_args(args)
    settings = loaded.settings
    assert loaded.problems == () and not loaded.exit_locked
    assert settings.watch_dir == tmp_path / "in" and settings.outbox() == tmp_path / "out"
    assert settings.model == str(toy_model) and settings.device == "cpu" and settings.idle_s == 60
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--device", "cuda"])
    assert settings_from_args(args).settings.device == "cuda"
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--outbox", str(tmp_path / "in")])
    loaded = settings_from_args(args)  # an outbox inside the watch folder is dropped, not fatal
    assert loaded.settings.outbox() != tmp_path / "in" and "Command line" in loaded.problems[0].message


def kiosk_args(tmp_path: Path, toy_model: Path, config_data=None, config_text: str | None = None):
    """`cellview --kiosk` arguments for a settings file written from ``config_data`` (or raw ``config_text``)."""
    from cellview.cli.viewer import build_gui_parser

    config = tmp_path / "kiosk.json"
    (tmp_path / "watch").mkdir(exist_ok=True)
    if config_text is None:
        values = dict(watch_dir=str(tmp_path / "watch"), outbox_dir=str(tmp_path / "outbox"), idle_s=0,
                      settle_s=0.4, poll_s=0.1, png_size_px=256, workers=1)
        values.update(config_data or {})
        config_text = json.dumps(values)
    config.write_text(config_text)
    return build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--model", str(toy_model),
                                          "--device", "cpu", "--outbox", str(tmp_path / "outbox")])


def start_built_kiosk(qtbot, args):
    """What run_kiosk does, without blocking in app.exec()."""
    from cellview.gui.app import make_app
    from cellview.gui.kiosk import build_kiosk

    make_app()
    window = build_kiosk(args)
    qtbot.addWidget(window, before_close_func=lambda w: w.exit_kiosk())
    with qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS):
        window.start()
    qtbot.waitExposed(window)
    return window


def press_chord(window) -> None:
    window.activateWindow()
    QTest.keyClick(window, Qt.Key.Key_Q, CHORD_MODS)


def test_bad_setting_is_shown_on_screen_until_restart_and_the_kiosk_runs(qtbot, tmp_path, toy_model, capsys,
                                                                         synthetic_slide):
    window = start_built_kiosk(qtbot, kiosk_args(tmp_path, toy_model, {"settle_s": "soon", "colour": "red"}))
    err = capsys.readouterr().err
    assert "'settle_s'" in err and "'colour'" in err  # the journal gets every problem
    assert window.isFullScreen() and window.page == "waiting" and not window.exit_locked
    assert window.settings.watch_dir == tmp_path / "watch" and window.settings.settle_s == 5.0
    text = window.cards.settings_label.text()
    assert window.cards.settings_card.isVisible() and "'settle_s'" in text and "'colour'" in text
    assert text.count(str(tmp_path / "kiosk.json")) == 1  # named once, in what to do
    window.show_message("A case failed.")  # the transient error card comes and goes…
    window.cards.error_timer.timeout.emit()
    assert not window.cards.error_card.isVisible() and window.cards.settings_card.isVisible()  # …the problem stays
    with qtbot.waitSignal(window.caseFinished, timeout=TIMEOUT_MS) as blocker:
        window.enqueue(synthetic_slide)  # the kiosk works with the salvaged settings
    assert blocker.args[0].ok and not window.cards.settings_card.isVisible()  # the slide gets the room
    window.case_page.home_btn.click()
    assert window.page == "waiting" and window.cards.settings_card.isVisible()
    press_chord(window)  # no PIN configured and none lost: the chord still leaves
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)


@pytest.mark.parametrize("config", [{"pin": 2468}, {"pim": "2468"}])
def test_unusable_pin_keeps_the_kiosk_locked(qtbot, tmp_path, toy_model, config):
    window = start_built_kiosk(qtbot, kiosk_args(tmp_path, toy_model, config))
    assert window.exit_locked and window.cards.settings_card.isVisible()
    assert "cannot be left" in window.cards.settings_label.text()
    with qtbot.waitSignal(window.exitRefused, timeout=5000):
        press_chord(window)
    qtbot.wait(100)
    assert window.isVisible() and window.isFullScreen() and window.exit_guard.pin_pad is None
    assert window.cards.error_card.isVisible() and "disabled" in window.cards.error_label.text()


def test_bad_value_elsewhere_keeps_a_valid_pin_working(qtbot, tmp_path, toy_model):
    window = start_built_kiosk(qtbot, kiosk_args(tmp_path, toy_model, {"pin": "2468", "idle_s": -1}))
    assert not window.exit_locked and window.settings.pin == "2468" and window.cards.settings_card.isVisible()
    press_chord(window)
    pad = window.exit_guard.pin_pad
    assert pad is not None and pad.isVisible()
    for key in "2468":
        pad.keys[key].click()
    pad.keys["OK"].click()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)


def test_unparseable_settings_file_runs_on_defaults_with_cases_opened_by_hand(qtbot, tmp_path, toy_model,
                                                                              synthetic_slide):
    window = start_built_kiosk(qtbot, kiosk_args(tmp_path, toy_model, config_text='{"pin": "2468", "idle_s": 30,}'))
    assert window.exit_locked and window.settings.watch_dir is None and window.cases.watcher is None
    assert window.settings.outbox() == tmp_path / "outbox"  # command-line values still apply
    assert "not valid JSON" in window.cards.settings_label.text() and window.cards.settings_card.isVisible()
    assert window.waiting.open_btn.isVisible() and "Open slide" in window.waiting.waiting_hint.text()
    with qtbot.waitSignal(window.caseFinished, timeout=TIMEOUT_MS) as blocker:
        window.enqueue(synthetic_slide)  # what the "Open slide…" dialog does
    assert blocker.args[0].ok and (tmp_path / "outbox" / "synthetic.csv").exists()
    window.idle_screen.show_idle()
    assert "Settings problem" in window.idle_screen.status.text()


def test_run_kiosk_starts_on_a_bad_settings_file(qtbot, tmp_path, toy_model, monkeypatch):
    """Once exit code 2: under systemd's Restart=on-failure that was a restart loop on a blank screen."""
    from cellview.gui.kiosk import KioskWindow, run_kiosk

    seen: list[KioskWindow] = []

    def fake_exec(app) -> int:
        window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, KioskWindow) and w.isVisible())
        seen.append(window)
        qtbot.waitUntil(lambda: window.classifier is not None, timeout=TIMEOUT_MS)
        window.exit_kiosk()
        return 0

    monkeypatch.setattr(QApplication, "exec", fake_exec)
    assert run_kiosk(kiosk_args(tmp_path, toy_model, config_text='{"pni": "1234"}')) == 0
    (window,) = seen
    assert window.exit_locked and "'pni' (did you mean 'pin'?)" in window.cards.settings_label.text()


def test_smoke_test_option_opens_and_paints(qtbot, synthetic_slide, capsys, monkeypatch):
    """What packaging/pyinstaller/smoke_test.sh runs inside the bundle, here from the source tree."""
    from cellview.cli.viewer import build_gui_parser
    from cellview.gui.app import make_app, run_gui

    monkeypatch.setenv("CELLVIEW_SETTINGS_FILE", "")  # restored after the smoke test replaces it
    app = make_app()
    assert run_gui(build_gui_parser().parse_args(["--smoke-test", str(synthetic_slide)])) == 0
    # The smoke test's app.exec() ends with a Quit event still queued (its window closing posts one).
    # Handled outside exec(), it would make every later event loop return at once (the tests after
    # this one time out immediately); a short exec() handles it and leaves the application usable.
    QTimer.singleShot(0, app.quit)
    app.exec()
    out = capsys.readouterr().out
    assert "opened synthetic" in out and "smoke test: OK" in out


# ----------------------------------------------------------------------------- issue 13: a 1024 × 600 Jetson screen


def show_at(qtbot, kiosk, width: int, height: int) -> None:
    def there() -> bool:  # a screen smaller than the text was scaled for: asked again once it is scaled down
        if (kiosk.width(), kiosk.height()) != (width, height):
            kiosk.setGeometry(0, 0, width, height)
        return (kiosk.width(), kiosk.height()) == (width, height)

    qtbot.waitUntil(there, timeout=5000)
    qtbot.waitUntil(lambda: kiosk.case_page.side_scroll.viewport().width() > 0, timeout=5000)


def run_case(qtbot, kiosk, path) -> object:
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        kiosk.enqueue(path)
    return blocker.args[0]


def plain(label) -> str:
    """A rich-text label's text as it reads on screen."""
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(label.text())
    return doc.toPlainText()


def seen(label) -> str:
    """A label's text as read: no-break and zero-width spaces (which keep "11 %" on one line) as plain spaces."""
    return label.text().replace("\u00a0", " ").replace("\u200b", "").replace("\u2060", "")


def inside_viewport(widget, scroll) -> bool:
    from PySide6.QtCore import QPoint

    top = widget.mapTo(scroll.viewport(), QPoint(0, 0))
    return (widget.isVisible() and top.y() >= 0 and top.y() + widget.height() <= scroll.viewport().height()
            and top.x() >= 0 and top.x() + widget.width() <= scroll.viewport().width())


@pytest.mark.parametrize("size", [(1024, 600), (1920, 1080)])
def test_the_call_and_shares_show_without_scrolling(qtbot, kiosk, synthetic_slide, size):
    show_at(qtbot, kiosk, *size)
    case = run_case(qtbot, kiosk, synthetic_slide)
    assert case.ok and kiosk.page == "case"
    scroll = kiosk.case_page.side_scroll
    assert scroll.verticalScrollBar().value() == 0
    from cellview.analysis.call import slide_call

    call = slide_call(kiosk.result)  # the files' call: 16 of 56 tiles malignant, though benign is the largest share
    panel = kiosk.case_page.call
    assert call.category == "malignant" and plain(panel.call_label) == "■ Malignant"
    assert seen(panel.evidence_label) == call.evidence and panel.text() == call.text
    assert seen(panel.shares_label) == "benign 43 % · malignant 29 % · normal 28 % · 56 tiles"  # all, adding up to 100
    assert all(inside_viewport(label, scroll) for label in panel.labels())
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()  # nothing cut on the right
    view = kiosk.view
    assert max(view.overview.width(), view.overview.height()) <= 0.2 * min(view.width(), view.height()) + 4


def test_header_stays_one_line_and_elides(qtbot, kiosk):
    show_at(qtbot, kiosk, 1024, 600)
    kiosk.cases.current = Path("CMU-1-Small-Region-with-a-very-long-name-from-the-scanner-2024-05-17.svs")
    kiosk.update_state()
    qtbot.waitUntil(lambda: kiosk.header.state_label.shown_text().endswith("…"), timeout=5000)
    line = kiosk.header.state_label.fontMetrics().height()
    assert kiosk.header.state_label.height() < 1.8 * line  # one line, never wrapped
    assert kiosk.header.state_label.shown_text().startswith("Analysing CMU-1-Small")
    kiosk.cases.current = None


def test_a_finger_drag_scrolls_the_panel(qtbot, kiosk, synthetic_slide):
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QMouseEvent

    show_at(qtbot, kiosk, 1024, 600)
    run_case(qtbot, kiosk, synthetic_slide)
    scroll = kiosk.case_page.side_scroll
    bar = scroll.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == 0
    target = scroll.viewport()
    start = kiosk.case_page.call.shares_label.mapTo(target, QPoint(20, kiosk.case_page.call.shares_label.height() // 2))

    def send(kind, point, buttons) -> None:
        pos = QPointF(point)
        event = QMouseEvent(kind, pos, target.mapToGlobal(pos), Qt.MouseButton.LeftButton, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(target, event)

    send(QEvent.Type.MouseButtonPress, start, Qt.MouseButton.LeftButton)
    for step in range(1, 13):
        qtbot.wait(16)  # a finger moves over time: the scroller measures the speed
        send(QEvent.Type.MouseMove, start - QPoint(0, 25 * step), Qt.MouseButton.LeftButton)
    send(QEvent.Type.MouseButtonRelease, start - QPoint(0, 300), Qt.MouseButton.NoButton)
    qtbot.waitUntil(lambda: bar.value() > 100, timeout=5000)


def test_every_text_is_kiosk_sized(qtbot, kiosk, synthetic_slide):
    from PySide6.QtGui import QFontInfo
    from PySide6.QtWidgets import QLabel

    show_at(qtbot, kiosk, 1024, 600)
    run_case(qtbot, kiosk, synthetic_slide)
    qtbot.waitUntil(lambda: kiosk.viewer.inspector.title.isVisible(), timeout=5000)
    labels = [w for w in kiosk.findChildren(QLabel) if w.isVisibleTo(kiosk) and w.text()]
    small = [(w.objectName(), w.text()[:30]) for w in labels if QFontInfo(w.font()).pointSizeF() < 18]
    assert small == []
    assert QFontInfo(kiosk.viewer.inspector.title.font()).pointSizeF() >= 20  # "No tile selected", the class name
    assert kiosk.view.scale_bar.font_pt >= 18 and kiosk.view.scale_bar.isVisible()
    assert kiosk.viewer.inspector.bars.row_height() >= kiosk.viewer.inspector.bars.fontMetrics().height()


@pytest.mark.parametrize("width", [1024, 1920])
def test_recent_cases_show_the_call_first_and_whole(qtbot, kiosk, synthetic_slide, width):
    show_at(qtbot, kiosk, width, 600 if width == 1024 else 1080)
    run_case(qtbot, kiosk, synthetic_slide)
    kiosk.case_page.home_btn.click()
    qtbot.waitUntil(lambda: kiosk.waiting.recent_list.viewport().width() > 0, timeout=5000)
    kiosk.waiting.fit_recent_items()
    item = kiosk.waiting.recent_list.item(0)
    first, second, third = item.text().replace("\u00a0", " ").split("\n")
    assert first.startswith("synthetic.tiff · ") and second == kiosk.case_page.call.text()  # the call, then the shares
    assert second.startswith("Malignant: ") and third == "benign 43 % · malignant 29 % · normal 28 %"
    assert "tiles/s" not in item.text()
    label = kiosk.waiting.recent_label(0)  # what draws the item: wrapped, as tall as it needs
    assert label.wordWrap() and label.text().replace("\u200b", "") == item.text()
    assert item.sizeHint().height() >= label.heightForWidth(kiosk.waiting.recent_list.viewport().width())


def test_the_kiosk_takes_the_keyboard_focus_at_start(qtbot, tmp_path, toy_model, monkeypatch):
    from cellview.gui.app import make_app
    from cellview.gui.kiosk import KioskWindow

    make_app()
    window = KioskWindow(kiosk_settings(tmp_path, toy_model))
    qtbot.addWidget(window, before_close_func=lambda w: w.exit_kiosk())
    activated: list[int] = []
    monkeypatch.setattr(window, "activateWindow", lambda: activated.append(1))
    with qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS):
        window.start()
    qtbot.waitUntil(lambda: len(activated) >= 1, timeout=5000)  # no window manager will do it


def test_a_finger_still_drags_a_slider_in_the_scrolling_panel(qtbot, kiosk, synthetic_slide):
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QMouseEvent

    show_at(qtbot, kiosk, 1024, 600)
    run_case(qtbot, kiosk, synthetic_slide)
    kiosk.model.overlay.set(style="fill")
    slider = kiosk.viewer.heatmap.opacity
    kiosk.case_page.side_scroll.ensureWidgetVisible(slider)
    qtbot.waitUntil(lambda: inside_viewport(slider, kiosk.case_page.side_scroll), timeout=5000)
    before = slider.value()
    span = slider.width() - 60
    start = QPoint(int(30 + span * before / 100), slider.height() // 2)  # on the handle

    def send(kind, point, buttons) -> None:
        pos = QPointF(point)
        event = QMouseEvent(kind, pos, slider.mapToGlobal(pos), Qt.MouseButton.LeftButton, buttons,
                            Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(slider, event)

    send(QEvent.Type.MouseButtonPress, start, Qt.MouseButton.LeftButton)
    for step in range(1, 9):
        qtbot.wait(16)
        send(QEvent.Type.MouseMove, start + QPoint(20 * step, 0), Qt.MouseButton.LeftButton)
    send(QEvent.Type.MouseButtonRelease, start + QPoint(160, 0), Qt.MouseButton.NoButton)
    assert slider.value() > before + 10 and kiosk.model.overlay.settings.opacity == slider.value() / 100


# ----------------------------------------------------------------------------- issue 19: touch alone, 7-inch screen


def inside(widget, window) -> bool:
    from PySide6.QtCore import QRect

    top_left = widget.mapTo(window, widget.rect().topLeft())
    return window.rect().contains(QRect(top_left, widget.size()))


def test_slides_waiting_at_start_are_analysed_oldest_first_with_a_notice(qtbot, tmp_path, toy_model, synthetic_slide):
    import os
    import shutil
    import time

    from cellview.viewer.kiosk.cases import process_case

    settings = kiosk_settings(tmp_path, toy_model)
    watch = settings.watch_dir
    for age, name in ((300, "older.tiff"), (100, "newer.tiff"), (500, "done.tiff")):
        shutil.copy(synthetic_slide, watch / name)
        os.utime(watch / name, (time.time() - age, time.time() - age))
    assert process_case(watch / "done.tiff", load_classifier(settings), settings).ok  # before the kiosk started
    finished: list[str] = []
    window = make_kiosk(qtbot, settings, wait_model=False)
    window.caseFinished.connect(lambda case: finished.append(case.path.name))
    assert window.cards.info_card.isVisible() and "2 slides already in the watch folder" in window.cards.info_label.text()
    assert "oldest first" in window.cards.info_label.text()
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=TIMEOUT_MS)
    assert finished == ["older.tiff", "newer.tiff"]
    outbox = {p.name for p in settings.outbox().iterdir()}
    assert {"older.json", "newer.json", "done.json"} <= outbox and "done_2.json" not in outbox


def test_a_slide_the_kiosk_stopped_on_is_not_retried_by_itself(qtbot, tmp_path, toy_model, synthetic_slide):
    import shutil

    from cellview.viewer.kiosk.cases import RecentCases

    settings = kiosk_settings(tmp_path, toy_model)
    shutil.copy(synthetic_slide, settings.watch_dir / "crasher.tiff")
    RecentCases.for_settings(settings).begin(settings.watch_dir / "crasher.tiff")  # then the kiosk died
    window = make_kiosk(qtbot, settings)
    qtbot.wait(600)
    assert window.cases.current is None and not window.cases.queue and not window.cards.info_card.isVisible()
    assert "crasher.tiff" in window.waiting.recent_list.item(0).text() and "stopped" in window.waiting.recent_list.item(0).text()


@pytest.mark.parametrize("size", [(1024, 600), (800, 480)])
def test_every_sheet_and_dialog_fits_the_screen(qtbot, tmp_path, toy_model, synthetic_slide, size):
    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model, pin="2468"))
    show_at(qtbot, window, *size)
    window.waiting.open_btn.click()  # "Open slide…": Qt's own dialog was 2,107 px wide on a 1,024 px screen
    sheet = window.file_sheet
    assert sheet.isVisible() and inside(sheet.card, window) and inside(sheet.open_btn, window)
    sheet.show_folder(synthetic_slide.parent)
    row = next(i for i in range(sheet.list.count()) if "synthetic.tiff" in sheet.list.item(i).text())
    assert sheet.list.visualItemRect(sheet.list.item(row)).height() >= 48  # a finger-sized row
    sheet.list.itemClicked.emit(sheet.list.item(row))
    with qtbot.waitSignal(window.caseFinished, timeout=TIMEOUT_MS):
        sheet.open_btn.click()
    assert not sheet.isVisible() and window.page == "case"
    window.scale_sheet.ask(synthetic_slide, "x does not say how many µm a pixel is.")
    assert inside(window.scale_sheet.card, window)
    assert all(inside(b, window) and b.height() >= 48 for b in window.scale_sheet.preset_buttons.values())
    window.scale_sheet.close_sheet()
    window.request_exit()
    pad = window.exit_guard.pin_pad
    qtbot.waitUntil(lambda: pad.isVisible(), timeout=5000)
    assert window.geometry().contains(pad.geometry())
    assert all(window.geometry().contains(k.mapToGlobal(k.rect().bottomRight())) for k in pad.keys.values())
    pad.reject()


def test_a_slide_without_a_pixel_size_gets_a_scale_on_screen(qtbot, tmp_path, toy_model, synthetic_slide):
    import cv2

    from cellview.slides.opening import open_slide

    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model))
    with open_slide(synthetic_slide) as slide:
        rgb = slide.thumbnail(max(slide.dimensions))
    png = window.settings.watch_dir / "noscale.png"
    with qtbot.waitSignal(window.caseFinished, timeout=TIMEOUT_MS) as blocker:
        cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    case = blocker.args[0]
    assert case.status == "failed" and case.needs_scale
    sheet = window.scale_sheet
    assert sheet.isVisible() and "mpp_um" in sheet.message.text() and "--mpp" not in sheet.message.text()
    item = window.waiting.recent_list.item(0).text()
    assert item.count("\n") == 1 and "pixel size unknown" in item  # one line, not the whole message
    with qtbot.waitSignal(window.caseFinished, timeout=TIMEOUT_MS) as blocker:
        sheet.preset_buttons["20×"].click()
    case = blocker.args[0]
    assert case.ok and case.path == png and window.result.slide.mpp.um == 0.5
    assert json.loads(case.outputs["json"].read_text())["slide"]["mpp_um"]["x"] == 0.5


@pytest.mark.parametrize("size", [(1024, 600), (800, 480)])
def test_a_tapped_tile_shows_its_call_where_the_finger_is(qtbot, kiosk, synthetic_slide, size):
    from cellview.testing.synthetic import SYNTH_BLOCKS, SYNTH_TILE

    show_at(qtbot, kiosk, *size)
    run_case(qtbot, kiosk, synthetic_slide)
    assert "Arrow keys" not in kiosk.viewer.inspector.subtitle.text() and "Tap" in kiosk.viewer.inspector.subtitle.text()
    r0, _, c0, _ = SYNTH_BLOCKS["malignant"]
    kiosk.case_page.tap(c0 * SYNTH_TILE + 5, r0 * SYNTH_TILE + 5)  # what a tap on the slide calls
    sheet = kiosk.case_page.tile_sheet
    assert sheet.isVisible() and inside(sheet, kiosk.view) and sheet.index == kiosk.model.selection.index >= 0
    assert "malignant" in sheet.title.text() and sheet.bars.texts()["malignant"].endswith("%")
    assert sheet.height() <= 0.7 * kiosk.view.height() + 1  # the slide stays in sight
    sel = kiosk.view.selection.sceneBoundingRect()
    on_screen = kiosk.view.mapFromScene(sel.center())
    assert not sheet.geometry().contains(on_screen)  # the tapped tile is not under the sheet
    sheet.close_btn.click()
    assert not sheet.isVisible()
    # at 800 × 480: the title and the Open button whole, a scale bar that leaves the slide in view
    assert inside(kiosk.case_page.case_title, kiosk) and kiosk.view.scale_bar.width() <= 0.3 * kiosk.view.width()
    kiosk.case_page.home_btn.click()
    assert inside(kiosk.waiting.open_btn, kiosk) and kiosk.waiting.open_btn.isVisible()


def test_reopening_a_case_starts_at_the_top_of_its_panel(qtbot, kiosk, synthetic_slide):
    show_at(qtbot, kiosk, 1024, 600)
    run_case(qtbot, kiosk, synthetic_slide)
    bar = kiosk.case_page.side_scroll.verticalScrollBar()
    bar.setValue(bar.maximum())
    assert bar.value() > 0
    kiosk.case_page.home_btn.click()
    kiosk.waiting.recent_list.itemClicked.emit(kiosk.waiting.recent_list.item(0))
    qtbot.waitUntil(lambda: kiosk.page == "case", timeout=5000)
    assert bar.value() == 0


def test_a_case_that_finishes_behind_the_idle_screen_is_shown_on_the_next_touch(qtbot, kiosk, synthetic_slide):
    kiosk.idle_screen.show_idle()  # nobody at the screen
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS):
        kiosk.enqueue(synthetic_slide)
    assert kiosk.idle and kiosk.idle_screen.isVisible()  # a dropped slide does not wake the screen
    assert "New result: synthetic.tiff" in kiosk.idle_screen.status.text() and "Touch to see it" in kiosk.idle_screen.status.text()
    QTest.mouseClick(kiosk.idle_screen, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not kiosk.idle, timeout=5000)
    assert kiosk.page == "case" and Path(kiosk.model.slide.opened.path) == synthetic_slide and kiosk.result is not None
    # finished while someone was away but before the idle screen came: it stays behind it too
    kiosk.case_page.home_btn.click()
    kiosk.idle_screen.last_activity = 0.0
    kiosk.idle_screen.finished_at = 1.0
    kiosk.waiting.recent_list.itemClicked.emit(kiosk.waiting.recent_list.item(0))
    kiosk.idle_screen.last_activity = 0.0
    kiosk.idle_screen.show_idle()
    assert "New result" in kiosk.idle_screen.status.text()
    kiosk.idle_screen.note_activity()
    assert kiosk.page == "case"
