"""The kiosk window under pytest-qt (offscreen): stays up, exits only by chord/PIN, watches, recovers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QCloseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QPushButton  # noqa: E402

from cellview.kiosk import KioskSettings, load_classifier  # noqa: E402

TIMEOUT_MS = 30000
CHORD_MODS = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ShiftModifier


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLVIEW_SETTINGS_FILE", str(tmp_path / "settings.ini"))


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
    assert "CPU" in kiosk.provider_badge.text()
    for btn in (kiosk.open_btn, kiosk.open_btn2, kiosk.analyse_btn2, kiosk.home_btn):
        assert btn.sizeHint().height() >= 64 and btn.font().pointSizeF() >= 20
    for box in kiosk.toggles.boxes.values():
        assert box.sizeHint().height() >= 64
    assert kiosk.opacity.sizeHint().height() >= 64


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
    window.exit_shortcut.activated.emit()
    pad = window.pin_pad
    assert pad is not None and pad.isVisible()
    for key in "1234":
        pad.keys[key].click()
    pad.keys["OK"].click()
    qtbot.wait(50)
    assert window.isVisible() and window.pin_pad is pad and "Wrong PIN" in pad.message.text()
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
        receiving.append(kiosk.receiving_label.text())

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
    assert "case-001.tiff" in kiosk.recent_list.item(0).text()
    # Back to the list, then reopen the case from it.
    kiosk.home_btn.click()
    assert kiosk.page == "waiting"
    with qtbot.waitSignal(kiosk.analysisFinished, timeout=TIMEOUT_MS):
        kiosk.recent_list.itemClicked.emit(kiosk.recent_list.item(0))
    assert kiosk.page == "case" and kiosk.result.n_done == 56


def test_corrupt_file_shows_error_and_keeps_watching(qtbot, tmp_path, kiosk, synthetic_slide):
    errors: list[str] = []
    kiosk.errorShown.connect(lambda msg, details: errors.append(msg))
    bad = kiosk.settings.watch_dir / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    with qtbot.waitSignal(kiosk.caseFinished, timeout=TIMEOUT_MS) as blocker:
        pass
    assert blocker.args[0].status == "failed"
    qtbot.waitUntil(lambda: kiosk.page == "waiting", timeout=5000)
    assert kiosk.error_card.isVisible() and kiosk.error_label.text()
    assert kiosk.isFullScreen() and kiosk.isVisible()
    assert "broken.svs" in kiosk.recent_list.item(0).text()
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
        assert window.prepare_bar.isVisible() and window.prepare_bar.maximum() == 0  # busy, not frozen
        assert "Preparing model" in window.prepare_title.text()
        qtbot.wait(1100)  # the UI keeps ticking while the worker is busy
        assert "elapsed" in window.prepare_label.text()
    finally:
        release.set()
    qtbot.waitSignal(window.modelReady, timeout=TIMEOUT_MS).wait()
    qtbot.waitUntil(lambda: window.page == "waiting", timeout=5000)
    assert "CPU" in window.provider_badge.text()


def test_model_failure_is_shown_with_retry(qtbot, tmp_path, toy_model):
    window = make_kiosk(qtbot, kiosk_settings(tmp_path, toy_model, model=str(tmp_path / "missing.onnx")),
                        wait_model=False)
    qtbot.waitUntil(window.retry_btn.isVisible, timeout=TIMEOUT_MS)
    assert window.page == "preparing" and window.error_card.isVisible() and window.isFullScreen()


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
    from cellview.cli import build_gui_parser
    from cellview.gui.kiosk import run_kiosk, settings_from_args

    config = tmp_path / "kiosk.json"
    KioskSettings(watch_dir=tmp_path / "in", device="cpu", idle_s=60).save(config)
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--outbox", str(tmp_path / "out"),
                                          "--model", str(toy_model)])
    settings = settings_from_args(args)
    assert settings.watch_dir == tmp_path / "in" and settings.outbox() == tmp_path / "out"
    assert settings.model == str(toy_model) and settings.device == "cpu" and settings.idle_s == 60
    args = build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config), "--device", "cuda"])
    assert settings_from_args(args).device == "cuda"
    config.write_text('{"pni": "1234"}')
    assert run_kiosk(build_gui_parser().parse_args(["--kiosk", "--kiosk-config", str(config)])) == 2


def test_smoke_test_option_opens_and_paints(qtbot, synthetic_slide, capsys, monkeypatch):
    """What packaging/pyinstaller/smoke_test.sh runs inside the bundle, here from the source tree."""
    from cellview.cli import build_gui_parser
    from cellview.gui.app import make_app, run_gui

    monkeypatch.setenv("CELLVIEW_SETTINGS_FILE", "")  # restored after the smoke test replaces it
    make_app()
    assert run_gui(build_gui_parser().parse_args(["--smoke-test", str(synthetic_slide)])) == 0
    out = capsys.readouterr().out
    assert "opened synthetic" in out and "smoke test: OK" in out
