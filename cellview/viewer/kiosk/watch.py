"""The kiosk's watch folder: slides are handed over only once they have stopped growing.

A scanner or a copy over the network writes a slide for minutes; opening it half-written would
fail or, worse, analyse part of it. Polling (no inotify) works the same on network shares.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cellview.slides.slide import SUPPORTED_SUFFIXES
from cellview.viewer.kiosk.settings import KioskSettings, KioskSettingsError

log = logging.getLogger(__name__)

# Never opened as a slide: partial downloads and copies, editor backups, OS metadata.
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".filepart", ".swp", ".lock")


def is_temporary_name(name: str) -> bool:
    """Hidden, partial or backup names that a scanner, browser or copy tool writes before the real file."""
    lower = name.lower()
    return name.startswith((".", "~")) or name.endswith("~") or lower.endswith(TEMP_SUFFIXES)


@dataclass
class _Seen:
    signature: tuple[int, int, int]
    since: float


class WatchFolder:
    """Polls a folder (and its sub-folders) for slides that have finished arriving.

    Polling rather than inotify: it needs no extra dependency and works the same on network
    shares, where change notifications are unreliable. A file is returned once its size and
    modification time have stayed unchanged for ``settle_s`` seconds (a slide copied slowly in
    chunks is returned only when complete). A DICOM slide (a folder of .dcm files) is one case,
    returned as its first .dcm file like ``discover_slides`` does, once every file in the folder
    has settled. Files present when the watcher starts are not returned unless
    ``include_existing``. A returned file that later changes (replaced, or a copy that had paused
    longer than ``settle_s``) is returned again once it settles. Empty files are held back.
    """

    def __init__(self, root: str | os.PathLike[str], settle_s: float = 5.0, include_existing: bool = False,
                 ignore: Iterable[str | os.PathLike[str]] = (), clock: Callable[[], float] = time.monotonic,
                 skip_existing: Callable[[Path], bool] | None = None) -> None:
        """``include_existing``: files already there are returned too (once settled, oldest first), except
        those ``skip_existing(path)`` says are done; ``backlog`` lists them."""
        self.root = Path(root)
        self.settle_s = float(settle_s)
        self.ignore = {Path(p).resolve() for p in ignore}
        self.clock = clock
        self.problem: str | None = None
        self._pending: dict[Path, _Seen] = {}
        self._returned: dict[Path, tuple[int, int, int]] = {}
        self.backlog: list[Path] = []
        """Slides present when the watcher started that it will return (``include_existing``), oldest first."""
        existing = self._scan()
        if include_existing:
            skip = skip_existing or (lambda _p: False)
            self._returned = {key: sig for key, (path, sig) in existing.items() if skip(path)}
            self.backlog = [path for key, (path, sig) in sorted(existing.items(), key=lambda kv: (kv[1][1][1], kv[0]))
                            if key not in self._returned]
        else:
            self._returned = {key: sig for key, (_, sig) in existing.items()}

    @classmethod
    def for_settings(cls, settings: KioskSettings, include_existing: bool = False,
                     skip_existing: Callable[[Path], bool] | None = None) -> WatchFolder:
        """The watcher a kiosk runs (its outbox is never watched); needs ``settings.watch_dir``."""
        if settings.watch_dir is None:
            raise KioskSettingsError("No watch folder is set (setting 'watch_dir' or --watch DIR).")
        return cls(settings.watch_dir, settings.settle_s, include_existing, ignore=[settings.outbox()],
                   skip_existing=skip_existing)

    def _scan(self) -> dict[Path, tuple[Path, tuple[int, int, int]]]:
        """Case key (file, or DICOM folder) → (path to open, (size, mtime_ns, n_files))."""
        found: dict[Path, tuple[Path, tuple[int, int, int]]] = {}
        try:
            if not self.root.is_dir():
                self.problem = f"The watch folder {self.root} is not reachable."
                return found
        except OSError as exc:
            self.problem = f"The watch folder {self.root} is not reachable ({exc.strerror or exc})."
            return found
        self.problem = None
        dicom: dict[Path, list[tuple[Path, os.stat_result]]] = {}

        def on_error(exc: OSError) -> None:
            log.debug("watch folder: cannot list %s: %s", exc.filename, exc)

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=on_error):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not is_temporary_name(d)
                                 and not (self.ignore and (here / d).resolve() in self.ignore))
            for name in sorted(filenames):
                path = here / name
                if is_temporary_name(name) or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished or unreadable between listing and stat: next poll decides
                if path.suffix.lower() == ".dcm":
                    dicom.setdefault(here, []).append((path, st))
                else:
                    found[path] = (path, (st.st_size, st.st_mtime_ns, 1))
        for folder, files in dicom.items():
            sig = (sum(st.st_size for _, st in files), max(st.st_mtime_ns for _, st in files), len(files))
            found[folder] = (files[0][0], sig)
        return found

    def poll(self) -> list[Path]:
        """Slides that became complete since the last poll, oldest arrival first (files found together, such
        as those present at start: oldest modification first)."""
        now = self.clock()
        scan = self._scan()
        for key in set(self._pending) - set(scan):
            del self._pending[key]
        for key in set(self._returned) - set(scan):
            del self._returned[key]  # deleted: the same name dropped again is a new case
        ready: list[tuple[float, Path]] = []
        for key, (path, sig) in scan.items():
            if self._returned.get(key) == sig:
                continue
            seen = self._pending.get(key)
            if seen is None or seen.signature != sig:
                self._pending[key] = _Seen(sig, now)
                continue
            if sig[0] > 0 and now - seen.since >= self.settle_s:
                ready.append((seen.since, sig[1], path))
                self._returned[key] = sig
                del self._pending[key]
        return [p for *_, p in sorted(ready)]  # oldest arrival first; seen together: oldest file first

    @property
    def waiting(self) -> list[Path]:
        """Files seen but still arriving (for a "receiving…" line on screen)."""
        return sorted(self._pending)
