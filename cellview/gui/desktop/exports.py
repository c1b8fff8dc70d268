"""The desktop's exports: File → Export asks where (the last export folder, else the slide's, else a writable
one), confirms a replacement and writes through ``model.exports``, as the screen shows the result; the current
view's PNG is the canvas as seen with the legend beside it (``outputs.legend.describe_legend``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QApplication

from cellview.analysis.results import plural
from cellview.base.errors import CellviewError
from cellview.gui.widgets.legend import paint_legend
from cellview.outputs.export import output_paths
from cellview.outputs.legend import describe_legend, format_um
from cellview.slides.slide import slide_stem

EXPORT_FILTERS = {"png": "PNG image (*.png)", "view": "PNG image (*.png)", "csv": "CSV (*.csv)",
                  "geojson": "GeoJSON (*.geojson *.json)", "json": "JSON (*.json)"}


class ExportActions:
    """Export dialogs and writers for ``host`` (the window: it asks where, confirms, shows errors and news)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.model = host.model
        self.view = host.view

    def export_dialog(self, kind: str) -> Path | None:
        """Ask where to save (the last export folder, else the slide's, else a writable one), then write."""
        if not self.model.exports.can_export:
            return None
        try:
            suggested, note = self.model.exports.suggest_path(kind)
        except CellviewError as exc:
            self.host.show_error(exc, "Export failed")
            return None
        if note:
            self.host.statusBar().showMessage(note, 15000)
        path = self.host.ask_save_path("Export" if not note else f"Export ({note})", suggested, EXPORT_FILTERS[kind])
        if path is None:
            return None
        return self.export_to(kind, path)

    def export_to(self, kind: str, path: Path) -> Path | None:
        path = Path(path)
        if path.exists() and not self.host.confirm_overwrite(path):
            return None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            if kind == "view":
                self.model.exports.save(path, self.render_view_png())
            else:
                self.model.exports.export_file(kind, path)
        except CellviewError as exc:
            self.host.show_error(exc, "Export failed")
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.host.statusBar().showMessage(f"Saved {path}", 8000)
        return path

    def export_all_dialog(self) -> dict[str, Path] | None:
        """Every format into one folder, named and written as `cellview analyze` writes them."""
        if not self.model.exports.can_export:
            return None
        try:
            folder, note = self.model.exports.suggest_path("folder")
        except CellviewError as exc:
            self.host.show_error(exc, "Export failed")
            return None
        if note:
            self.host.statusBar().showMessage(note, 15000)
        chosen = self.host.ask_folder("Export all formats to a folder", folder)
        return None if chosen is None else self.export_all_to(chosen)

    def export_all_to(self, folder: Path) -> dict[str, Path] | None:
        assert self.model.slide.opened is not None
        existing = [p for p in output_paths(folder, slide_stem(Path(self.model.slide.opened.path)),
                                            self.model.exports.settings.formats).values() if p.exists()]
        if existing and not self.host.confirm_overwrite(existing[0]):
            return None
        try:
            paths = self.model.exports.export_all(folder)
        except CellviewError as exc:
            self.host.show_error(exc, "Export failed")
            return None
        self.host.statusBar().showMessage(f"Saved {plural(len(paths), 'file')} to {folder}", 8000)
        return paths

    def render_view_png(self) -> bytes:
        """The canvas as seen (overlay, contours, regions, scale bar) with the legend (``legend.describe_legend``,
        as the whole-slide PNG's) on the right."""
        self.view.overview.hide()
        self.view.place_overlays()  # the scale bar measured on the view as it is now
        shot = self.view.grab().toImage()
        self.view.update_overview()
        result = self.model.analysis.result
        assert result is not None
        ov = self.model.overlay.settings
        rect = self.view.visible_l0_rect()
        extra = [f"View: x {max(0, rect.x()):,.0f}  y {max(0, rect.y()):,.0f} (level 0)"]
        if self.model.slide.mpp_um():
            extra.append(f"Field of view: {format_um(round(rect.width() * self.model.slide.mpp_um()))} wide")
        # the regions of this result at this threshold, even when the job drawing them has not finished (outlines
        # switched on just before the export read "Malignant regions: 0" beside a call of 2 regions)
        regions, region_conf = self.model.regions.for_export(result) if ov.show_regions else (None, ov.min_confidence)
        legend = describe_legend(result, ov, source="the viewer", regions=regions, region_confidence=region_conf,
                                 extra_header=tuple(extra))
        panel_w = 320
        out = QImage(shot.width() + panel_w, shot.height(), QImage.Format.Format_RGB32)
        out.fill(QColor("white"))
        p = QPainter(out)
        p.drawImage(0, 0, shot)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        paint_legend(p, legend, shot.width() + 16, 28, panel_w - 28, self.host.font())
        p.setPen(QColor(90, 90, 90))
        p.drawText(shot.width() + 16, out.height() - 14, "Research use only. Not for clinical diagnosis.")
        p.end()
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        out.save(buf, "PNG")
        return bytes(data.data())
