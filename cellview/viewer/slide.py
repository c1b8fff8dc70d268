"""The open slide: opening it off the UI thread, its scale, the recent slides and where dialogs start.

Opening is a job (``open_task``: the cheapest good preview first, then a sharper base image) so a bad
file never replaces the open slide; a slide that does not say its pixel size gets one from the user
(remembered per slide) or is classified as one image (``WHOLE_IMAGE``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.analysis.results import AnalysisParams
from cellview.base.errors import CellviewError
from cellview.slides.opening import open_slide
from cellview.slides.slide import Mpp, SlideInfo, slide_display_name
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import Job, JobHandle, Runner
from cellview.viewer.settings import SettingsStore

WHOLE_IMAGE = "whole-image"
"""``ViewerModel.mpp_choice`` when a slide of unknown scale is classified as one image."""

THUMBNAIL_PX = 2048
"""Longest side of the base image drawn under the pyramid tiles (and used for PNG export)."""

OVERVIEW_PX = 200


# ----------------------------------------------------------------------------- opening a slide


@dataclass(frozen=True)
class BaseImage:
    """The thumbnail in the forms a view draws without converting (prepared off the UI thread)."""

    bgra: np.ndarray  # QImage.Format_RGB32 memory layout: a QPixmap copy, no conversion
    overview_rgb: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> BaseImage:
        h, w = rgb.shape[:2]
        k = OVERVIEW_PX / max(h, w)
        small = cv2.resize(rgb, (max(1, int(w * k)), max(1, int(h * k))), interpolation=cv2.INTER_AREA)
        return cls(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)), small)


@dataclass(frozen=True)
class Opened:
    """Everything the viewer needs about a slide, read once off the main thread."""

    path: str
    info: SlideInfo
    thumbnail: np.ndarray
    base: BaseImage
    vendor: str
    is_plain_image: bool

    @property
    def name(self) -> str:
        return slide_display_name(Path(self.path))


@dataclass(frozen=True)
class SharperThumbnail:
    """The full-size base image, after a quick preview was shown."""

    path: str
    thumbnail: np.ndarray
    base: BaseImage


def _quick_preview(slide: Any) -> np.ndarray | None:
    """The scanner's own small thumbnail (no pixel decoding of the pyramid), if it has the slide's shape."""
    get = getattr(slide, "associated_image", None)
    try:
        img = get("thumbnail") if get else None
    except Exception:  # noqa: BLE001 - a broken associated image only costs the preview
        return None
    if img is None:
        return None
    w0, h0 = slide.dimensions
    return img if abs(img.shape[1] / img.shape[0] - w0 / h0) < 0.02 * (w0 / h0) else None


def open_task(path: str, mpp_um: float | None) -> Iterator[Opened | SharperThumbnail]:
    """Opened with the cheapest good preview, then the sharper base image if the preview was small.

    Preview: the scanner's thumbnail, else the whole coarsest usable pyramid level when it is
    small (one read, no resampling of a finer level), else a THUMBNAIL_PX thumbnail.
    """
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        info = slide.info()
        preview = _quick_preview(slide)
        if preview is None:
            coarsest_px = max(slide.level_dimensions[info.usable_levels[-1]])
            preview = slide.thumbnail(min(THUMBNAIL_PX, coarsest_px) if coarsest_px <= 2 * THUMBNAIL_PX
                                      else THUMBNAIL_PX)
        yield Opened(str(slide.path), info, preview, BaseImage.from_rgb(preview), slide.vendor, slide.vendor == "image")
        if max(preview.shape[:2]) < 0.75 * min(THUMBNAIL_PX, max(slide.dimensions)):
            sharp = slide.thumbnail(THUMBNAIL_PX)
            yield SharperThumbnail(str(slide.path), sharp, BaseImage.from_rgb(sharp))
    finally:
        slide.close()


@dataclass(frozen=True)
class RecentSlide:
    path: str
    name: str  # the file name, or the DICOM folder's name


class SlideState:
    """The open slide as ``model.slide`` (module docstring). Events: ``slide`` (the ``Opened``; None when it
    closed), ``slide_image`` (a sharper base image, or a scale entered), ``opening`` (the path being opened;
    None when that is over) and ``open_failed`` (``(path, CellviewError)``; the open slide stays)."""

    EVENTS = ("slide", "slide_image", "opening", "open_failed")

    def __init__(self, runner: Runner, store: SettingsStore, messages: Messages, defaults: AnalysisParams) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.runner, self.store, self.messages, self.defaults = runner, store, messages, defaults
        self.opened: Opened | None = None
        self.opening: str | None = None
        self.mpp_choice: float | str | None = None
        """The pixel size chosen for a slide that does not say it: µm per pixel, or ``WHOLE_IMAGE``."""
        self.ask_scale: Callable[[Opened], float | str | None] | None = None
        """Asked for the µm per pixel of a slide that does not say (None: the run fails with the pipeline's
        message)."""
        self._ids = itertools.count(1)
        self._open_id = 0
        self._open_job: JobHandle | None = None

    def mpp_um(self) -> float | None:
        """The slide's µm per level-0 pixel as the viewer knows it (None: unknown or one-image mode)."""
        info = self.opened.info if self.opened else None
        return info.mpp.um if info and info.mpp and self.mpp_choice != WHOLE_IMAGE else None

    # -- opening ----------------------------------------------------------------------------------

    def open(self, path: str | os.PathLike[str], mpp_um: float | None, on_opened: Callable[[Opened], None]) -> None:
        """Open off the UI thread; ``on_opened`` gets the slide (``ViewerModel.open`` closes the last one then and
        ``show``s it), so the open slide stays until the new one opened: a bad file loses nothing."""
        if self._open_job is not None:
            self._open_job.cancel()
        path = str(path)
        self._open_id = job_id = next(self._ids)
        self.opening = path
        self.events.opening(path)

        def on_item(item: Opened | SharperThumbnail) -> None:
            if job_id != self._open_id:
                return
            if isinstance(item, SharperThumbnail):
                self._sharper(item)
            else:
                on_opened(item)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._open_id:
                self.opening = None
                self.events.opening(None)
                self.messages.error(exc, "Cannot open slide")
                self.events.open_failed((path, exc))

        def on_done() -> None:
            if job_id == self._open_id:
                self._open_job = None
                if self.opening is not None:  # finished without a slide (cancelled)
                    self.opening = None
                    self.events.opening(None)

        self._open_job = self.runner(Job("open", lambda cancel: open_task(path, mpp_um), on_item, on_failed, on_done))

    def _sharper(self, item: SharperThumbnail) -> None:
        if self.opened is not None and self.opened.path == item.path:
            self.opened = replace(self.opened, thumbnail=item.thumbnail, base=item.base)
            self.events.slide_image(self.opened)

    def show(self, item: Opened) -> None:
        """Make an opened slide the open one: a pixel size it does not say comes from the store (entered
        before for this slide) or the launch defaults."""
        self.opening = None
        self.events.opening(None)
        info = item.info
        if info.mpp is None:
            recorded = self.store.recorded_mpp(info.fingerprint)
            if recorded is not None:
                self.mpp_choice = recorded
            elif self.defaults.mpp_um:
                self.mpp_choice = self.defaults.mpp_um
            elif self.defaults.whole_image:
                self.mpp_choice = WHOLE_IMAGE
            if isinstance(self.mpp_choice, float):
                item = replace(item, info=replace(info, mpp=Mpp(self.mpp_choice, self.mpp_choice, "user")))
        self.opened = item
        self.store.add_recent_file(item.path)
        self.events.slide(item)

    def cancel_open(self) -> None:
        """A slide still opening must not appear after this."""
        if self._open_job is not None:
            self._open_job.cancel()
            self._open_id = next(self._ids)
            self._open_job = None
            self.opening = None

    def close(self) -> bool:
        """Forget the open slide and its scale choice (``events.slide(None)`` when one was open); True if one was."""
        had = self.opened is not None
        self.opened, self.mpp_choice = None, None
        if had:
            self.events.slide(None)
        return had

    # -- scale ------------------------------------------------------------------------------------

    def resolve_scale(self, model_decides: bool = False) -> bool:
        """The scale is known, one-image mode chosen, or asked for now; False: the run must not start.

        ``model_decides``: the model declares how it reads an image without a pixel size (a smear model's
        sidecar): nobody is asked, the run applies that rule and says what it assumed."""
        if self.opened is None:
            return False
        if (self.opened.info.mpp is not None or self.mpp_choice == WHOLE_IMAGE or self.ask_scale is None
                or model_decides):
            return True
        choice = self.ask_scale(self.opened)
        if choice is None:
            self.messages.status("Analysis needs the pixel size; nothing was run.")
            return False
        self.set_scale(choice)
        return True

    def set_scale(self, choice: float | str) -> None:
        """A user-entered µm per pixel (remembered for this slide) or ``WHOLE_IMAGE``."""
        if self.opened is None:
            return
        self.mpp_choice = choice
        if isinstance(choice, float):
            self.store.record_mpp(self.opened.info.fingerprint, choice)
            self.opened = replace(self.opened, info=replace(self.opened.info, mpp=Mpp(choice, choice, "user")))
        self.events.slide_image(self.opened)

    # -- recent slides and dialog folders --------------------------------------------------------

    def recent(self) -> list[RecentSlide]:
        """Recently opened slides that still exist, named as a person names them (a DICOM slide by its folder)."""
        return [RecentSlide(p, slide_display_name(Path(p))) for p in self.store.recent_files()]

    def open_dialog_dir(self) -> str:
        """Where File → Open starts: the last folder opened from, else the newest recent slide's, else home.

        Never empty: Qt's file dialog would start in whatever folder any dialog last visited
        (often the last export folder).
        """
        last = str(self.store.get("last_open_dir", "") or "")
        if last and Path(last).is_dir():
            return last
        for recent in self.store.recent_files():
            folder = Path(recent).parent
            if folder.is_dir():
                return str(folder)
        return str(Path.home())

    def remember_open_dir(self, path: str | os.PathLike[str]) -> None:
        self.store.put("last_open_dir", str(Path(path).parent))
