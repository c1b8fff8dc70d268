"""When Qt cannot start the viewer, `cellview` says what is missing and how to fix it instead of aborting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellview.cli import qtcheck
from cellview.cli.qtcheck import explain_import_error, missing_library, viewer_problem

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display checks are Linux's")
REPO = Path(__file__).resolve().parent.parent


VIEWER = "import sys; from cellview.cli import main; sys.exit(main([]))"


def _run(command: list[str], env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    """``command`` without the display variables of this session, plus ``env_changes``."""
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(env_changes, PYTHONPATH=str(REPO))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@linux
def test_offscreen_has_no_problem():
    """The real offscreen plugin loads here (the test suite runs on it)."""
    assert viewer_problem({"QT_QPA_PLATFORM": "offscreen"}) is None


@linux
def test_no_display_says_how_to_get_one():
    msg = viewer_problem({})
    assert "no display (DISPLAY is not set)" in msg
    assert "xvfb-run cellview" in msg and "ssh -X" in msg and "cellview analyze SLIDE --out DIR" in msg
    assert "QT_QPA_PLATFORM=wayland" in viewer_problem({"WAYLAND_DISPLAY": "wayland-0"})


@linux
def test_an_unreachable_x_display_is_named():
    """The real xcb plugin and libxcb: nothing listens on display :987."""
    msg = viewer_problem({"DISPLAY": ":987"})
    assert msg.startswith("The viewer cannot start: it cannot connect to the X display ':987'")
    assert "XAUTHORITY" in msg


@linux
def test_a_missing_system_library_names_its_package(monkeypatch):
    def fail(path):
        raise OSError("libxcb-cursor.so.0: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(qtcheck, "_load", fail)
    msg = viewer_problem({"DISPLAY": ":0"})
    assert "Qt's 'xcb' display plugin needs the system library libxcb-cursor.so.0" in msg
    assert "sudo apt-get install libxcb-cursor0 " in msg and "sudo dnf install xcb-util-cursor" in msg
    assert qtcheck.DEBIAN_GUI_PACKAGES in msg


@linux
def test_an_unknown_platform_lists_the_ones_there():
    msg = viewer_problem({"QT_QPA_PLATFORM": "nosuch"})
    assert "Qt has no display plugin 'nosuch'" in msg and "offscreen" in msg and "xcb" in msg
    assert viewer_problem({"QT_QPA_PLATFORM": "wayland;xcb"}) is None  # a fallback list: Qt decides


def test_a_python_without_qt_is_told_how_to_install_it(monkeypatch):
    real = qtcheck.importlib.util.find_spec
    monkeypatch.setattr(qtcheck.importlib.util, "find_spec", lambda name: None if name == "PySide6" else real(name))
    msg = viewer_problem({"QT_QPA_PLATFORM": "offscreen"})
    assert "PySide6 (Qt) is missing" in msg and "pip install --force-reinstall cellview" in msg


@pytest.mark.parametrize(("error", "library", "package"), [
    ("libEGL.so.1: cannot open shared object file: No such file or directory", "libEGL.so.1", "libegl1"),
    ("/usr/lib/x86_64-linux-gnu/libxcb-randr.so.0: file too short", "libxcb-randr.so.0", "libxcb-randr0"),
    ("libxkbcommon-x11.so.0: cannot open shared object file", "libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
])
def test_loader_errors_name_the_library_and_its_package(error, library, package):
    assert missing_library(error) == library
    assert f"sudo apt-get install {package} " in explain_import_error(ImportError(error))


def test_other_import_errors_say_how_to_reinstall():
    msg = explain_import_error(ImportError("No module named 'pyqtgraph'"))
    assert "No module named 'pyqtgraph'" in msg and "pip install --force-reinstall cellview" in msg


@linux
def test_cellview_without_a_display_exits_with_the_message():
    """The whole command: exit status 2 and the advice, not Qt's abort."""
    proc = _run([sys.executable, "-c", VIEWER], {})
    assert proc.returncode == 2, proc.stderr
    assert "there is no display" in proc.stderr and "Aborted" not in proc.stderr


def _loaded_path(library: str) -> Path | None:
    """Where the loader finds ``library`` (it is loaded into this process, then looked up in its maps)."""
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError:
        return None
    maps = Path("/proc/self/maps").read_text().splitlines()
    return next((Path(line.split()[-1]) for line in maps if line.split()[-1].endswith(f"/{library}")
                 or f"/{library}." in line.split()[-1]), None)


def _can_hide_files() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@linux
@pytest.mark.skipif(not _can_hide_files(), reason="needs root and `unshare -m` to hide a system library")
def test_cellview_with_a_real_missing_xcb_library(tmp_path):
    """libxcb-cursor hidden in a private mount namespace: what a bare Linux without libxcb-cursor0 sees."""
    lib = _loaded_path("libxcb-cursor.so.0")
    if lib is None:
        pytest.skip("libxcb-cursor is not installed here")
    script = tmp_path / "hide.sh"
    script.write_text(f'mount --bind /dev/null "{lib.resolve()}" && exec "{sys.executable}" -c "{VIEWER}"\n')
    proc = _run(["unshare", "-m", "bash", str(script)], {"DISPLAY": ":0"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs the system library libxcb-cursor.so.0" in proc.stderr
    assert "sudo apt-get install libxcb-cursor0 " in proc.stderr
