"""Why the viewer cannot start, said before Qt is loaded (no Qt import here).

Qt ends the process (qFatal, then abort) when its platform plugin cannot be loaded or cannot
reach a display, with a message that names neither the missing package nor a way out. So before
the viewer creates its QApplication, ``cellview`` asks viewer_problem(): it loads the platform
plugin's shared library the way Qt will (the loader names a missing system library) and, for
X11, opens and closes a connection to the display. Only Linux needs this: the Qt wheels carry
their libraries on Windows and macOS.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

HEADLESS = "Headless analysis needs none of this: cellview analyze SLIDE --out DIR"

# System libraries that Qt's xcb plugin and QtGui load, by the package that provides them
# (Debian/Ubuntu, Fedora/RHEL). The xcb extension libraries follow one rule (_package_names).
_PACKAGES = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libGLdispatch.so.0": ("libglvnd0", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor"),
}
# Everything the viewer may need on a bare Debian/Ubuntu desktop, for one apt-get line (the loader
# reports one missing library at a time).
DEBIAN_GUI_PACKAGES = (
    "libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 "
    "libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libx11-xcb1 libegl1 libgl1 "
    "libfontconfig1 libdbus-1-3 libglib2.0-0"
)
_XCB_EXTENSION = re.compile(r"^libxcb-([a-z0-9]+)\.so\.(\d+)$")
_MISSING = re.compile(r"(lib[\w.+-]+\.so[.\d]*)\s*:")


def _package_names(library: str) -> tuple[str, str] | None:
    """(Debian/Ubuntu, Fedora/RHEL) package of a shared library, when known."""
    if library in _PACKAGES:
        return _PACKAGES[library]
    if library == "libxcb.so.1":
        return "libxcb1", "libxcb"
    m = _XCB_EXTENSION.match(library)  # libxcb-randr.so.0 → libxcb-randr0 (Fedora: all in libxcb)
    return (f"libxcb-{m[1]}{m[2]}", "libxcb") if m else None


def missing_library(error: str) -> str | None:
    """The shared library a loader error names (``libxcb-cursor.so.0: cannot open shared object file``)."""
    m = _MISSING.search(error)
    return m[1] if m else None


def library_advice(library: str, needed_by: str) -> str:
    """What to say when ``library`` is missing: which package brings it and how to install it."""
    names = _package_names(library)
    lines = [f"The viewer cannot start: {needed_by} needs the system library {library}, which is not installed."]
    if names:
        lines.append(f"  Debian/Ubuntu: sudo apt-get install {names[0]}   (Fedora/RHEL: sudo dnf install {names[1]})")
    else:
        lines.append(f"  Install the package of your distribution that provides {library}.")
    lines.append(f"  All the viewer may need on a Debian/Ubuntu X11 desktop: sudo apt-get install {DEBIAN_GUI_PACKAGES}")
    lines.append(f"  {HEADLESS}")
    return "\n".join(lines)


def explain_import_error(exc: ImportError) -> str:
    """The message for a viewer whose Qt modules do not import."""
    library = missing_library(str(exc))
    if library:
        return library_advice(library, "Qt (PySide6)")
    return (f"The viewer is not available ({exc}). It comes with cellview: pip install --force-reinstall cellview "
            f"(or pip install PySide6-Essentials pyqtgraph into this Python).\n  {HEADLESS}")


def _qt_dir() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "Qt"


def _load(path: Path) -> None:
    """dlopen a shared library as Qt will; OSError names what is missing."""
    ctypes.CDLL(str(path), mode=os.RTLD_LAZY)


def _platform_plugins(qt_dir: Path) -> dict[str, Path]:
    folder = qt_dir / "plugins" / "platforms"
    return {p.name[len("libq"):-len(".so")]: p for p in sorted(folder.glob("libq*.so"))}


def _x_display_error(display: str) -> str | None:
    """None when the X server at ``display`` accepts a connection, else why not."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError as exc:
        return str(exc)
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    xcb.xcb_connection_has_error.argtypes = (ctypes.c_void_p,)
    xcb.xcb_disconnect.argtypes = (ctypes.c_void_p,)
    conn = xcb.xcb_connect(display.encode(), None)
    code = xcb.xcb_connection_has_error(conn)
    xcb.xcb_disconnect(conn)
    return None if code == 0 else f"connection error {code}"


def viewer_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Qt could not start the viewer here, with what to do; None when nothing is known to be wrong."""
    env = os.environ if env is None else env
    qt_dir = _qt_dir()
    if qt_dir is None or importlib.util.find_spec("pyqtgraph") is None:
        missing = "PySide6 (Qt)" if qt_dir is None else "pyqtgraph"
        return (f"The viewer is not installed in this Python: {missing} is missing. It comes with cellview: "
                "pip install --force-reinstall cellview (or pip install PySide6-Essentials pyqtgraph).\n"
                f"  {HEADLESS}")
    if not sys.platform.startswith("linux"):
        return None
    requested = env.get("QT_QPA_PLATFORM", "")
    if ";" in requested:  # a fallback list: Qt tries each in turn
        return None
    if not requested and env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland":
        return None  # Qt picks Wayland (falling back on XWayland) in a Wayland session
    name = requested.split(":")[0] or "xcb"
    plugins = _platform_plugins(qt_dir)
    if not plugins:
        return None  # Qt's plugins are laid out otherwise here (a bundle, a distribution's Qt): Qt will say
    # One library may serve several names (libqwayland.so: wayland, wayland-egl, wayland-brcm).
    plugin = plugins.get(name) or next((p for key, p in plugins.items() if name.startswith(f"{key}-")), None)
    if plugin is None:
        if env.get("QT_QPA_PLATFORM_PLUGIN_PATH") or env.get("QT_PLUGIN_PATH"):
            return None  # a plugin from elsewhere: Qt will say
        return (f"The viewer cannot start: Qt has no display plugin {name!r} (QT_QPA_PLATFORM={requested}); "
                f"this PySide6 has: {', '.join(plugins)}.")
    if name == "xcb" and not env.get("DISPLAY"):
        wayland = ("  A Wayland display is there: QT_QPA_PLATFORM=wayland cellview\n"
                   if env.get("WAYLAND_DISPLAY") else "")
        return ("The viewer cannot start: there is no display (DISPLAY is not set).\n"
                f"{wayland}"
                "  Start it from a desktop session, or over SSH with X forwarding (ssh -X).\n"
                "  On a machine without a screen, give it a virtual one: xvfb-run cellview (apt-get install xvfb).\n"
                f"  {HEADLESS}")
    try:
        _load(plugin)
    except OSError as exc:
        library = missing_library(str(exc))
        if library:
            return library_advice(library, f"Qt's {name!r} display plugin")
        return f"The viewer cannot start: Qt's {name!r} display plugin does not load ({exc}).\n  {HEADLESS}"
    if name == "xcb":
        display = env["DISPLAY"]
        error = _x_display_error(display)
        if error:
            return (f"The viewer cannot start: it cannot connect to the X display {display!r} ({error}).\n"
                    "  Is the X server running, and may this user use it (xhost, XAUTHORITY)? Over SSH, connect "
                    "with ssh -X.\n"
                    f"  {HEADLESS}")
    return None
