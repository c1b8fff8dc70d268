"""Exports of the shown result as the screen shows it: one file, every format, and where they go.

The same renderer as the command line and the kiosk (``outputs.export``), with the overlay's look and the
regions on screen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellview.analysis.results import AnalysisResult
from cellview.base.errors import ExportError
from cellview.base.files import writable_dir
from cellview.outputs.export import FORMATS, export_slide_result, render
from cellview.slides.slide import slide_stem
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.events import EmitterGroup
from cellview.viewer.overlay import OverlayState
from cellview.viewer.regions import Regions
from cellview.viewer.settings import SettingsStore
from cellview.viewer.slide import THUMBNAIL_PX, SlideState


@dataclass(frozen=True)
class ExportSettings:
    """What "Export all" writes besides the overlay: its formats and the PNG's longest side (as `--png-size`)."""

    formats: tuple[str, ...] = FORMATS
    png_size_px: int = THUMBNAIL_PX


EXPORT_KINDS = {"png": "-heatmap.png", "view": "-view.png", "csv": ".csv", "geojson": ".geojson", "json": ".json"}


class Exports:
    """Exports of the shown result as ``model.exports`` (module docstring): ``settings`` are Export all's
    formats and PNG size. No events (an empty group, as every part has one): an export is an answer, not a
    state the views follow."""

    EVENTS: tuple[str, ...] = ()

    def __init__(self, slide: SlideState, analysis: AnalysisRun, overlay: OverlayState, regions: Regions,
                 store: SettingsStore) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.slide, self.analysis, self.overlay, self.regions, self.store = slide, analysis, overlay, regions, store
        self.settings = ExportSettings()

    @property
    def can_export(self) -> bool:
        return self.analysis.result is not None and not self.analysis.running

    def suggest_path(self, kind: str) -> tuple[Path, str]:
        """Where File → Export proposes to save: the last export folder, else the slide's, falling back to a
        writable folder (``export.default_export_dir``) when that cannot be written; plus a note saying so."""
        opened = self.slide.opened
        if opened is None:
            raise ExportError("Nothing to export: no slide is open.")
        name = Path(opened.path).name if kind == "folder" else opened.info.name + EXPORT_KINDS[kind]
        last = str(self.store.get("last_export_dir", "") or "")
        preferred = Path(last) if last and Path(last).is_dir() else Path(opened.path).parent
        folder, note = writable_dir(preferred)
        return (folder if kind == "folder" else folder / name), note

    def export_file(self, kind: str, path: str | os.PathLike[str], source: str = "the viewer") -> Path:
        """Write one export of the shown result as the screen shows it (``csv``, ``geojson``, ``png``, ``json``).

        The same renderer as the CLI and the kiosk (``export.render``): the GeoJSON carries the
        malignant-region annotations, the PNG the overlay style, filters and region outlines on screen.
        """
        result = self._result()
        regions, conf = self.regions.for_export(result)
        thumb = self.slide.opened.thumbnail if self.slide.opened is not None else None
        overlay = self.overlay.settings
        data = render(kind, result, thumb, regions, conf, overlay, source,
                      extra_meta={"export_options": self._options()}, png_regions=overlay.show_regions)
        return self.save(path, data)

    def save(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """Write an export atomically and remember its folder for the next one (also the GUI's view PNG)."""
        from cellview.base.files import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, data)
        self.store.put("last_export_dir", str(path.parent))
        return path

    def export_all(self, folder: str | os.PathLike[str], stem: str | None = None,
                   source: str = "the viewer") -> dict[str, Path]:
        """Every format into ``folder`` through the CLI's own ``export_slide_result``, with the screen's look."""
        result = self._result()
        opened = self.slide.opened
        assert opened is not None
        regions, conf = self.regions.for_export(result)
        size = self.settings.png_size_px
        thumb = opened.thumbnail if max(opened.thumbnail.shape[:2]) == size else None  # else read anew
        paths, _ = export_slide_result(
            result, Path(folder), stem or slide_stem(Path(opened.path)), self.settings.formats, size,
            conf, overlay=self.overlay.settings, thumbnail=thumb, source=source, regions=regions,
            png_regions=self.overlay.settings.show_regions)
        self.store.put("last_export_dir", str(folder))
        return paths

    def _options(self) -> dict[str, Any]:
        from cellview.outputs.export import export_options

        size = max(self.slide.opened.thumbnail.shape[:2]) if self.slide.opened is not None else THUMBNAIL_PX
        overlay = self.overlay.settings
        return export_options(["csv", "geojson", "png", "json"], size, overlay.min_confidence, overlay)

    def _result(self) -> AnalysisResult:
        if self.analysis.result is None or self.slide.opened is None:
            raise ExportError("Nothing to export: analyse the slide first.")
        if self.analysis.running:
            raise ExportError("Wait until the analysis has finished (or cancel it) to export.")
        return self.analysis.result
