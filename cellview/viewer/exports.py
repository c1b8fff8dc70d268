"""Exports of the shown result as the screen shows it: one file, every format, and where they go.

The same renderer as the command line and the kiosk (``outputs.export``), with the overlay's look and the
regions on screen.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellview.outputs.export import FORMATS
from cellview.viewer.slide import THUMBNAIL_PX


@dataclass(frozen=True)
class ExportSettings:
    """What "Export all" writes besides the overlay: its formats and the PNG's longest side (as `--png-size`)."""

    formats: tuple[str, ...] = FORMATS
    png_size_px: int = THUMBNAIL_PX


EXPORT_KINDS = {"png": "-heatmap.png", "view": "-view.png", "csv": ".csv", "geojson": ".geojson", "json": ".json"}
