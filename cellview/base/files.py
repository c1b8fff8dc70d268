"""Files written whole or not at all (temp file + fsync + rename), and the folders a user can write to.

Every writer in CellView (exports, caches, models, cards) goes through ``atomic_write``: a crash or
Ctrl-C mid-write leaves the previous file whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cellview.base.errors import ExportError


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Let ``write`` fill a temp file in the same folder, fsync, then rename it over ``path``.

    A crash or Ctrl-C mid-write leaves the previous file whole and no temp file behind. Streamed,
    so np.save / torch.save of large arrays need not be held in memory a second time.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"Cannot write to {path.parent}.", str(exc)) from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"Cannot write {path}.", str(exc)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def default_export_dir() -> Path:
    """Where exports go when the slide's own folder cannot be written: ~/Documents/CellView (or the like)."""
    import platformdirs

    return Path(platformdirs.user_documents_dir()) / "CellView"


def writable_dir(preferred: Path, fallback: Path | None = None) -> tuple[Path, str]:
    """``preferred`` if files can be created in it, else ``fallback`` (created), and a note saying so.

    Slides often sit on read-only shares or media; an export dialog must not start where saving fails.
    """
    preferred = Path(preferred)
    if _can_write(preferred):
        return preferred, ""
    target = Path(fallback) if fallback is not None else default_export_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        target = Path(tempfile.gettempdir())
    return target, f"{preferred} cannot be written; saving to {target} instead."


def _can_write(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cellview-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)
    return True
