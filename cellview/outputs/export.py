"""CSV, GeoJSON, annotated PNG and run metadata, each written atomically (temp file + rename)."""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from cellview import __version__
from cellview.analysis.domain import OUT_OF_DOMAIN_RGBA
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, hex_to_rgb
from cellview.analysis.tiling import TILING_RULE
from cellview.base.errors import ExportError
from cellview.base.files import atomic_write_bytes
from cellview.base.fonts import font

if TYPE_CHECKING:
    from cellview.analysis.morphology import Region
    from cellview.analysis.results import AnalysisResult
    from cellview.outputs.overlay import OverlaySettings

FORMATS = ("csv", "geojson", "png", "json")
SUFFIXES = {"csv": ".csv", "geojson": ".geojson", "png": ".png", "json": ".json"}



def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6f}"


_STATUS = {0: "pending", 1: "done", 2: "failed"}


def _nuclei_cell(name: str, value: float) -> str:
    if not np.isfinite(value):
        return ""
    return str(int(value)) if name == "nuclei_count" else f"{value:.4f}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (or tab / CR) would be read as a
    formula (CSV injection: a slide named ``=HYPERLINK(…).svs`` becomes a live link), so it gets a leading
    apostrophe. Numbers such as ``-0.5`` stay as they are; JSON outputs keep the exact text."""
    if not cell or not cell.startswith(_FORMULA_START):
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell


def csv_text(result: AnalysisResult) -> str:
    """WSInfer's columns (level-0 pixels) plus CellView's prediction columns.

    ``domain_score`` (0–1) and ``in_domain`` (true/false) are empty when the model has no
    domain statistics (and for tiles not classified).

    With nuclei measured (``--nuclei``), the per-tile nucleus columns follow; their area unit
    is in the column name (``_um2``, or ``_px2`` when the scale is unknown).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = result.model.class_names
    nuclei_cols = result.nuclei.column_names() if result.nuclei is not None else ()
    writer.writerow(
        ["minx", "miny", "width", "height", *[spreadsheet_safe(f"prob_{n}") for n in names],
         "pred_class", "pred_category", "confidence", "tissue_fraction", "status", "scale_unknown",
         "domain_score", "in_domain", *nuclei_cols],
    )
    g = result.grid
    pred_class, pred_cat, conf = result.pred_class, result.pred_category, result.confidence
    scale_unknown = "true" if result.scale_unknown else "false"
    score = result.domain_score if result.has_domain else None
    in_domain = result.in_domain
    for i in range(g.n_tiles):
        done = pred_class[i] >= 0
        scored = done and score is not None and np.isfinite(score[i])
        writer.writerow([
            *g.rect(i),
            *[_fmt(p) for p in result.probs[i]],
            spreadsheet_safe(names[pred_class[i]]) if done else "",
            CATEGORIES[pred_cat[i]] if done else "",
            _fmt(conf[i]), f"{g.tissue_fraction[i]:.4f}", _STATUS[int(result.state[i])], scale_unknown,
            f"{score[i]:.4f}" if scored else "", ("true" if in_domain[i] else "false") if scored else "",
            *[_nuclei_cell(c, v) for c, v in zip(nuclei_cols, result.nuclei.values[i] if nuclei_cols else ())],
        ])
    return buf.getvalue()


REGION_CLASS = "Malignant region"


def region_geometry(region: Region) -> dict[str, Any]:
    """GeoJSON Polygon (outline + holes), or MultiPolygon when parts touch only by corners."""
    polygons = [[np.round(r).astype(np.int64).tolist() for r in rings] for rings in region.polygons]
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def region_feature(region: Region, min_confidence: float) -> dict[str, Any]:
    """A malignant region as a QuPath annotation (level-0 pixels)."""
    x, y, w, h = region.bbox
    measurements: dict[str, float] = {
        "rank": region.rank, "n_tiles": region.n_tiles, "area_l0_px2": float(region.area_l0_px2),
        "mean_confidence": float(region.mean_confidence), "bbox_x": x, "bbox_y": y, "bbox_width": w, "bbox_height": h,
    }
    if np.isfinite(region.area_mm2):
        measurements["area_mm2"] = float(region.area_mm2)
    return {
        "type": "Feature",
        "geometry": region_geometry(region),
        "properties": {
            "objectType": "annotation",
            "name": f"{REGION_CLASS} {region.rank} ({region.label()})",
            "classification": {"name": REGION_CLASS, "color": list(hex_to_rgb(CATEGORY_COLORS["malignant"]))},
            "isLocked": False,
            "bbox": [x, y, w, h],
            "min_confidence": float(min_confidence),
            "measurements": measurements,
        },
    }


def geojson_dict(result: AnalysisResult, regions: Sequence[Region] | None = None,
                 region_confidence: float = 0.5) -> dict[str, Any]:
    """One Polygon per finished tile that QuPath imports as a tile object with measurements.

    With domain statistics each tile also carries ``domain_score`` and ``in_domain`` (1 / 0)
    measurements and an ``in_domain`` property (null without statistics).

    ``regions`` (from ``morphology.malignant_regions(result, region_confidence)``) follow the
    tiles as annotations; nucleus measurements, when made, join each tile's measurements.
    """
    g = result.grid
    names = result.model.class_names
    colors = [list(hex_to_rgb(c)) for c in result.model.class_colors]
    features = []
    for i in np.flatnonzero(result.done):
        x, y, w, h = g.rect(int(i))
        k = int(result.pred_class[i])
        measurements = {f"prob_{n}": float(p) for n, p in zip(names, result.probs[i])}
        measurements["confidence"] = float(result.confidence[i])
        measurements["tissue_fraction"] = float(g.tissue_fraction[i])
        in_domain = None
        if result.has_domain and result.domain_score is not None and np.isfinite(result.domain_score[i]):
            measurements["domain_score"] = float(result.domain_score[i])
            in_domain = bool(result.in_domain[i])
            measurements["in_domain"] = float(in_domain)  # QuPath measurements are numbers: 1 / 0
        if result.nuclei is not None:
            for name, value in zip(result.nuclei.column_names(), result.nuclei.values[i]):
                if np.isfinite(value):
                    measurements[name] = float(value)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": names[k], "color": colors[k]},
                "category": CATEGORIES[int(result.pred_category[i])],
                "in_domain": in_domain,
                "isLocked": False,
                "measurements": measurements,
            },
        })
    features.extend(region_feature(r, region_confidence) for r in regions or ())
    from cellview.analysis.call import slide_call

    call = slide_call(result)
    return {
        "type": "FeatureCollection",
        "properties": {
            "call": call.category, "call_text": call.text,
            "slide": result.slide.name, "model": result.model.name, "model_sha256": result.model.sha256,
            "scale_unknown": result.scale_unknown, "status": result.status,
            "domain_available": result.has_domain, "in_domain_fraction": result.in_domain_fraction,
        },
        "features": features,
    }


def versions() -> dict[str, str]:
    out = {"cellview": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "numpy": np.__version__, "opencv": cv2.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openslide

        out["openslide-python"] = openslide.__version__
        out["openslide"] = openslide.__library_version__
    except (ImportError, AttributeError):
        pass
    return out


def _timestamp(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(unix_s))


def metadata_dict(result: AnalysisResult, outputs: Iterable[str] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    mpp = result.slide.mpp
    g = result.grid
    from cellview.analysis.call import slide_call

    data: dict[str, Any] = {
        "created": _timestamp(time.time()),  # this export (a cached result is exported again later)
        "analysed": _timestamp(result.created_unix),  # the analysis run that made the result
        "call": slide_call(result).to_dict(),
        "versions": versions(),
        "status": result.status,
        "scale_unknown": result.scale_unknown,
        "slide": {
            "path": result.slide.path, "name": result.slide.name, "vendor": result.slide.vendor,
            "fingerprint": result.slide.fingerprint, "dimensions_l0": list(result.slide.dimensions),
            "level_dimensions": [list(d) for d in result.slide.level_dimensions],
            "level_downsamples": list(result.slide.level_downsamples),
            "mpp_um": None if mpp is None else {"x": mpp.x_um, "y": mpp.y_um},
            "mpp_source": None if mpp is None else mpp.source,
            "mpp_approximate": None if mpp is None else mpp.approximate,
            "skipped_levels": [{"level": sk.level, "reason": sk.reason} for sk in result.slide.skipped_levels],
        },
        "model": {
            "name": result.model.name, "version": result.model.version, "sha256": result.model.sha256,
            "class_names": list(result.model.class_names), "class_categories": list(result.model.class_categories),
            "spacing_um_px": result.model.spacing_um_px, "patch_size_pixels": result.model.patch_size_pixels,
            "temperature": result.model.temperature, "precision": result.model.precision,
        },
        "provider": result.provider,
        "parameters": result.params.to_dict(),
        "grid": {
            "tile_l0_px": [g.tile_l0_w, g.tile_l0_h], "stride_l0_px": [g.stride_l0_x, g.stride_l0_y],
            "read_level": g.read_level, "read_px": [g.read_w, g.read_h], "n_cols": g.n_cols, "n_rows": g.n_rows,
            "whole_image": g.whole_image, "tiling_rule": TILING_RULE,
        },
        "tiles": {
            "total": result.n_tiles, "done": result.n_done, "failed": result.n_failed,
            "pending": result.n_tiles - result.n_done - result.n_failed,
            "out_of_domain": int(result.out_of_domain.sum()) if result.has_domain else None,
            "per_category": result.category_counts(), "per_class": result.class_counts(),
            "per_category_including_out_of_domain": result.category_counts(include_out_of_domain=True),
            "counts_note": "per_category and per_class count in-domain tiles only" if result.has_domain
            else "every classified tile (no domain score for this model)",
        },
        "in_domain_fraction": result.in_domain_fraction,
        "domain": domain_dict(result),
        "image_level": result.image_level(),
        "timings_s": result.timings,
        "from_cache": result.from_cache,
        "outputs": list(outputs),
    }
    if result.stain:
        data["stain_normalization"] = result.stain
    if result.reading:  # a smear model: its foreground rule, and the pixel size it assumed (said, not hidden)
        data["reading"] = result.reading
    if result.tile_errors:
        data["tile_errors"] = {str(k): v for k, v in list(result.tile_errors.items())[:100]}
    if extra:
        data.update(extra)
    return data


def domain_dict(result: AnalysisResult) -> dict[str, Any]:
    """The metadata's ``domain`` object: whether a score exists, how it was made, what it says."""
    from cellview.analysis.domain import NOT_AVAILABLE, TISSUE_TILE
    from cellview.analysis.results import domain_banner

    info = result.model.domain
    if info is None or not result.has_domain:
        return {"available": False, "reason": NOT_AVAILABLE}
    banner = domain_banner(result)
    return {
        "available": True, "method": info.method, "threshold": info.threshold, "statistics_sha256": info.sha256,
        "training_data": info.training_data, "n_fit_tiles": info.n_fit_tiles,
        "n_calibration_tiles": info.n_calibration_tiles,
        "score": "conformal p-value: share of held-out in-domain tiles at least as unlike the training data; "
                 "in_domain = domain_score >= threshold",
        "in_domain_tiles": int(result.in_domain.sum()), "out_of_domain_tiles": int(result.out_of_domain.sum()),
        "in_domain_fraction_tissue_tiles": banner.in_domain_fraction,
        "tissue_tiles": f"tiles at least {TISSUE_TILE:.0%} covered by tissue decide the warning",
        "mostly_out_of_domain": banner.show, "warning": banner.text if banner.show else None,
    }


# ----------------------------------------------------------------------------- annotated PNG


def _overlay_settings(overlay: OverlaySettings | None, **defaults: Any) -> OverlaySettings:
    from cellview.outputs.overlay import OverlaySettings

    return overlay if overlay is not None else OverlaySettings(**defaults)


def overlay_on_thumbnail(result: AnalysisResult, thumb: np.ndarray, opacity: float = 0.5,
                         min_confidence: float = 0.0, overlay: OverlaySettings | None = None) -> np.ndarray:
    """Blend the fill layer (``overlay.fill_rgba``) over an RGB thumbnail of the slide.

    Without ``overlay``: the category colours × confidence at ``opacity`` (the fill style).
    Each thumbnail pixel takes its grid cell (``TileGrid.to_display``), as on screen.
    """
    from cellview.outputs.overlay import fill_rgba

    settings = _overlay_settings(overlay, style="fill", opacity=opacity, min_confidence=min_confidence)
    g = result.grid
    if not settings.visible or g.whole_image:
        return thumb.copy()
    row, col = _thumbnail_cells(result, thumb.shape[:2])
    layer = g.to_display(fill_rgba(result, settings))[row[:, None], col[None, :]]
    alpha = layer[..., 3:4].astype(np.float32) / 255.0 * settings.opacity
    out = thumb.astype(np.float32) * (1 - alpha) + layer[..., :3].astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _thumbnail_cells(result: AnalysisResult, thumb_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(row per thumbnail row, column per thumbnail column) of the display grid cell each pixel shows."""
    g = result.grid
    h, w = thumb_hw
    rows, cols = g.display_shape
    col = np.minimum(np.floor((np.arange(w) + 0.5) * (g.slide_w_l0 / w) / g.stride_l0_x).astype(np.int64), cols - 1)
    row = np.minimum(np.floor((np.arange(h) + 0.5) * (g.slide_h_l0 / h) / g.stride_l0_y).astype(np.int64), rows - 1)
    return row, col


def _hatch(img: np.ndarray, where: np.ndarray, k: float) -> np.ndarray:
    from cellview.outputs.overlay import CASING_RGB, HATCH_ALPHA, HATCH_RGB, HATCH_SPACING_PX, hatch_mask

    line, casing = hatch_mask(*img.shape[:2], spacing_px=max(6, int(round(HATCH_SPACING_PX * k))),
                              width_px=max(1, int(round(k))))
    out = img.astype(np.float32)
    for mask, rgb, a in ((casing & where, CASING_RGB, HATCH_ALPHA[0]), (line & where, HATCH_RGB, HATCH_ALPHA[1])):
        out[mask] = out[mask] * (1 - a / 255.0) + np.asarray(rgb, np.float32) * (a / 255.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _hatched_swatch(size: int, k: float) -> np.ndarray:
    """The legend's out-of-domain swatch: grey with the hatching (as the viewer's legend)."""
    img = np.full((size, size, 3), OUT_OF_DOMAIN_RGBA[:3], np.uint8)
    return _hatch(img, np.ones((size, size), bool), k)


def hatch_out_of_domain(img: np.ndarray, result: AnalysisResult, overlay: OverlaySettings, k: float = 1.0) -> np.ndarray:
    """The screen's out-of-domain hatching on a thumbnail (``overlay.hatch_mask`` over the out-of-domain
    cells), its spacing scaled with the picture's text (``k``)."""
    from cellview.outputs.overlay import hatches_out_of_domain

    if not hatches_out_of_domain(result, overlay):
        return img
    row, col = _thumbnail_cells(result, img.shape[:2])
    return _hatch(img, result.grid.to_display(result.out_of_domain_grid())[row[:, None], col[None, :]], k)


def draw_contours(draw: Any, result: AnalysisResult, overlay: OverlaySettings, thumb_wh: tuple[int, int],
                  k: float = 1.0) -> None:
    """Category contours (``overlay.category_contours``) on a thumbnail: coloured lines on a dark casing."""
    from cellview.outputs.overlay import CASING_RGB, category_contours

    if not overlay.visible or result.grid.whole_image:
        return
    w, h = thumb_wh
    sx, sy = w / result.grid.slide_w_l0, h / result.grid.slide_h_l0
    width = max(2, int(round(2 * k)))
    contours = category_contours(result, overlay)
    for casing in (True, False):
        for contour in contours:
            color = CASING_RGB if casing else hex_to_rgb(contour.color)
            for x0, y0, x1, y1 in contour.segments:
                draw.line([(x0 * sx, y0 * sy), (x1 * sx, y1 * sy)], fill=color, width=width + 2 if casing else width)



def draw_regions(draw: Any, result: AnalysisResult, regions: Sequence[Region], thumb_wh: tuple[int, int],
                 k: float = 1.0, label_font: Any = None) -> None:
    """Region outlines (holes too), bounding boxes and rank + area labels on a thumbnail."""
    w, h = thumb_wh
    sx, sy = w / result.grid.slide_w_l0, h / result.grid.slide_h_l0
    outline, box = (120, 0, 0), (40, 40, 40)
    width = max(2, int(round(2 * k)))
    for region in regions:
        for ring in region.rings:
            pts = [(float(x * sx), float(y * sy)) for x, y in ring]
            draw.line(pts, fill=outline, width=width, joint="curve")
        x, y, bw, bh = region.bbox
        draw.rectangle([x * sx - width, y * sy - width, (x + bw) * sx + width, (y + bh) * sy + width],
                       outline=box, width=max(1, width // 2))
        label = f"#{region.rank} {region.label()}"
        tx, ty = x * sx, max(0.0, y * sy - (16 * k + 2 * width))
        if label_font is not None:
            bb = draw.textbbox((tx, ty), label, font=label_font)
            draw.rectangle([bb[0] - 3, bb[1] - 2, bb[2] + 3, bb[3] + 2], fill=(255, 255, 255))
            draw.text((tx, ty), label, fill=outline, font=label_font)


def _wrap(draw: Any, text: str, fnt: Any, width_px: float) -> list[str]:
    """Greedy word wrap to ``width_px`` (legend lines never run past the panel)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=fnt) > width_px:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def _ellipsize(draw: Any, text: str, fnt: Any, width_px: float) -> str:
    if draw.textlength(text, font=fnt) <= width_px:
        return text
    while text and draw.textlength(text + "…", font=fnt) > width_px:
        text = text[:-1]
    return text.rstrip() + "…"


def draw_legend(canvas: Any, legend: Any, x0: int, y: int, text_w: int, k: float) -> int:
    """The whole-slide PNG's legend (``legend.Legend``) from (x0, y) in a column ``text_w`` wide, its text scaled by
    ``k``; returns the y below it. Count rows follow ``legend.count_row_layout``, as the view PNG's (Qt) legend."""
    from PIL import Image, ImageDraw

    from cellview.outputs.legend import OUT_OF_DOMAIN_SWATCH, call_colour, count_row_layout

    draw = ImageDraw.Draw(canvas)
    title, body, small = font(int(22 * k), bold=True), font(int(15 * k)), font(int(12 * k))
    line_h, small_h = int(24 * k), int(18 * k)
    ink, grey = (20, 20, 20), (90, 90, 90)
    fills = {"info": ink, "hint": grey, "warning": (180, 0, 0), "region": (120, 0, 0)}

    def text(s: str, f: Any = small, fill: tuple[int, int, int] = ink, dy: int = small_h, wrap: bool = False) -> None:
        nonlocal y
        for line in (_wrap(draw, s, f, text_w) if wrap else [_ellipsize(draw, s, f, text_w)]):
            draw.text((x0, y), line, fill=fill, font=f)
            y += dy

    def lines(items: Sequence[Any]) -> None:
        for item in items:
            text(item.text, fill=fills.get(item.kind, ink), wrap=item.wrap)

    text("CellView", title, dy=int(34 * k))
    if legend.call is not None:
        headline = font(int(17 * k), bold=True)
        text(legend.call.headline, headline, fill=hex_to_rgb(call_colour(legend.call)), dy=int(24 * k))
        if legend.call.evidence:
            text(legend.call.evidence, fill=ink, wrap=True)
        y += int(8 * k)
    lines(legend.header)
    y += int(10 * k)
    text(legend.counted, body, dy=line_h + int(4 * k))
    sw = int(18 * k)
    for row in legend.rows:
        if row.swatch == OUT_OF_DOMAIN_SWATCH:
            canvas.paste(Image.fromarray(_hatched_swatch(sw, k)), (x0, y + 2))
            draw.rectangle([x0, y + 2, x0 + sw, y + 2 + sw], outline=(60, 60, 60))
        else:
            draw.rectangle([x0, y + 2, x0 + sw, y + 2 + sw], fill=hex_to_rgb(row.swatch), outline=(60, 60, 60))
        label_x = x0 + sw + int(10 * k)
        label = _ellipsize(draw, row.label + (" (hidden)" if row.hidden else ""), body, x0 + text_w - label_x)
        label_right = label_x + draw.textlength(label, font=body)
        counts_x, own_line = count_row_layout(label_right, draw.textlength(row.text, font=body), x0 + text_w,
                                              int(12 * k))
        draw.text((label_x, y), label, fill=grey if row.hidden else ink, font=body)
        if own_line:
            y += line_h
        draw.text((counts_x, y), row.text, fill=ink, font=body)
        y += line_h + int(4 * k)
    lines(legend.notes)
    if legend.classes:
        y += int(6 * k)
        text("Classes (tiles, counted as above)", body, dy=line_h)
        for row in legend.classes:
            draw.rectangle([x0, y + 3, x0 + int(12 * k), y + 3 + int(12 * k)], fill=hex_to_rgb(row.swatch),
                           outline=(60, 60, 60))
            draw.text((x0 + int(20 * k), y), _ellipsize(draw, f"{row.label}: {row.count:,}", small, text_w - 20 * k),
                      fill=grey if row.hidden else ink, font=small)
            y += small_h
    y += int(10 * k)
    lines(legend.footer)
    return y


def annotated_png(result: AnalysisResult, thumb: np.ndarray, opacity: float = 0.5,
                  regions: Sequence[Region] | None = None, region_confidence: float = 0.5,
                  overlay: OverlaySettings | None = None, source: str = "") -> bytes:
    """Thumbnail with the overlay, a legend (what colours mean, what is shown, counts), scale bar and names.

    ``overlay`` is the display state (``overlay.OverlaySettings``; default: the viewer's default
    look at ``opacity``): style, colouring, confidence filter and categories apply exactly as on
    screen, and the legend (``legend.describe_legend``, as the viewer's) says which. ``regions``
    (``morphology.malignant_regions``) are outlined with their boxes and areas. ``source`` ("the
    viewer", "the kiosk") names where the export was made. The picture is as tall as its legend needs
    (a long legend beside a wide, short slide ran into the closing line).
    """
    from PIL import Image, ImageDraw

    from cellview.outputs.legend import call_colour, describe_legend, scale_bar

    settings = _overlay_settings(overlay, opacity=opacity)
    img = overlay_on_thumbnail(result, thumb, overlay=settings)
    h, w = img.shape[:2]
    k = max(1.0, min(2.5, max(h, w) / 900))  # text scales with the picture
    img = hatch_out_of_domain(img, result, settings, k)
    panel_w = int(330 * k)
    legend = describe_legend(result, settings, source=source, regions=None if regions is None else list(regions),
                             region_confidence=region_confidence)
    x0, y0, text_w = w + int(16 * k), int(14 * k), panel_w - int(28 * k)
    legend_h = draw_legend(Image.new("RGB", (w + panel_w, 1)), legend, x0, y0, text_w, k)  # measured first
    canvas = Image.new("RGB", (w + panel_w, max(h, int(480 * k), legend_h + int(40 * k))), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    body, small = font(int(15 * k)), font(int(12 * k))
    draw_contours(draw, result, settings, (w, h), k)
    if regions:
        draw_regions(draw, result, regions, (w, h), k, small)
    draw_legend(canvas, legend, x0, y0, text_w, k)
    draw.text((x0, canvas.height - int(22 * k)), "Research use only. Not for clinical diagnosis.", fill=(90, 90, 90),
              font=small)
    mpp = result.slide.mpp
    bar = scale_bar(result.grid.slide_w_l0 * mpp.x_um / w, w / 5) if mpp is not None else None
    if bar is not None:
        bx, by = int(14 * k), h - int(20 * k)
        label_w = draw.textlength(bar.label, font=small)
        draw.rectangle([bx - int(6 * k), by - int(24 * k), bx + max(bar.drawn_px, label_w) + int(6 * k), by + int(12 * k)],
                       fill=(255, 255, 255))
        draw.rectangle([bx, by, bx + bar.drawn_px - 1, by + int(6 * k)], fill=(0, 0, 0))
        draw.text((bx, by - int(21 * k)), bar.label, fill=(0, 0, 0), font=small)
    if (result.grid.whole_image or result.n_tiles == 1) and legend.call is not None:
        label = _ellipsize(draw, legend.call.text, body, w - int(36 * k))  # the call, not the largest share
        box = draw.textbbox((int(12 * k), int(10 * k)), label, font=body)
        draw.rectangle([box[0] - 6, box[1] - 5, box[2] + 6, box[3] + 5], fill=(255, 255, 255))
        draw.text((int(12 * k), int(10 * k)), label, fill=hex_to_rgb(call_colour(legend.call)), font=body)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------- one path for CLI, viewer, kiosk


def output_paths(out_dir: Path, stem: str, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    return {f: Path(out_dir) / f"{stem}{SUFFIXES[f]}" for f in formats}


def regions_summary(regions: Sequence[Region], region_confidence: float) -> dict[str, Any]:
    return {
        "min_confidence": region_confidence,
        "regions": [{"rank": r.rank, "n_tiles": r.n_tiles, "bbox_l0": list(r.bbox),
                     "area_mm2": float(r.area_mm2) if np.isfinite(r.area_mm2) else None} for r in regions],
    }


def render(kind: str, result: AnalysisResult, thumbnail: np.ndarray | None = None,
           regions: Sequence[Region] | None = None, region_confidence: float = 0.5,
           overlay: OverlaySettings | None = None, source: str = "", outputs: Iterable[str] = (),
           extra_meta: dict[str, Any] | None = None, png_regions: bool = True) -> bytes:
    """The bytes of one export format: the single place every caller (CLI, viewer, kiosk) goes through.

    ``regions`` go into the GeoJSON and the metadata, and onto the PNG unless ``png_regions`` is
    False (the viewer draws them only when they are shown on screen).
    """
    if kind == "csv":
        return csv_text(result).encode("utf-8")
    if kind == "geojson":
        return json.dumps(geojson_dict(result, regions, region_confidence)).encode("utf-8")
    if kind == "png":
        if thumbnail is None:
            raise ExportError("The annotated PNG needs a thumbnail of the slide.")
        return annotated_png(result, thumbnail, regions=regions if png_regions else None,
                             region_confidence=region_confidence, overlay=overlay, source=source)
    if kind == "json":
        extra = dict(extra_meta or {})
        if regions is not None:
            extra["malignant_regions"] = regions_summary(regions, region_confidence)
        return json.dumps(metadata_dict(result, list(outputs), extra or None), indent=2).encode("utf-8")
    raise ExportError(f"Unknown output format {kind!r}; choose from {', '.join(FORMATS)}.")


def export_all(result: AnalysisResult, out_dir: Path, stem: str, thumbnail: np.ndarray | None,
               formats: Iterable[str] = FORMATS, extra_meta: dict[str, Any] | None = None,
               regions: Sequence[Region] | None = None, region_confidence: float = 0.5,
               overlay: OverlaySettings | None = None, source: str = "", png_regions: bool = True) -> dict[str, Path]:
    """Write the requested formats; metadata last, so its presence means the others are complete.

    ``regions`` (``morphology.malignant_regions(result, region_confidence)``) go into the GeoJSON
    as annotations, onto the PNG as outlines, and into the metadata as a summary; ``overlay`` is
    the display the PNG shows (recorded in the metadata).
    """
    formats = list(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"Unknown output format(s): {', '.join(sorted(unknown))}.")
    formats = [f for f in FORMATS if f in set(formats)]
    paths = output_paths(out_dir, stem, formats)
    names = [p.name for f, p in paths.items() if f != "json"]
    for kind, path in paths.items():
        atomic_write_bytes(path, render(kind, result, thumbnail, regions, region_confidence, overlay, source,
                                        outputs=names, extra_meta=extra_meta, png_regions=png_regions))
    return paths


def export_slide_result(result: AnalysisResult, out_dir: Path, stem: str, formats: Iterable[str] = FORMATS,
                        png_size_px: int = 2048, region_confidence: float | None = 0.5,
                        extra_meta: dict[str, Any] | None = None, overlay: OverlaySettings | None = None,
                        thumbnail: np.ndarray | None = None, source: str = "",
                        regions: Sequence[Region] | None = None,
                        png_regions: bool = True) -> tuple[dict[str, Path], list[Region] | None]:
    """Everything a finished slide exports, for the CLI, the viewer and the kiosk alike.

    Reads the PNG's thumbnail from the slide (unless given), outlines malignant regions at
    ``region_confidence`` (None: no regions; ``regions`` already computed are reused), draws
    ``overlay`` (default: the viewer's default look), and records these export options in the
    metadata so a later run can tell whether the files on disk are what it would write.
    """
    formats = list(formats)
    thumb = thumbnail
    if "png" in formats and thumb is None:
        from cellview.slides.opening import open_slide

        with open_slide(result.slide.path, mpp_um=result.params.mpp_um) as slide:
            thumb = slide.thumbnail(png_size_px)
    if region_confidence is None:
        regions = None
    elif regions is None:
        from cellview.analysis.morphology import malignant_regions

        regions = malignant_regions(result, region_confidence)
    extra = dict(extra_meta or {})
    extra["export_options"] = export_options(formats, png_size_px, region_confidence, overlay)
    paths = export_all(result, out_dir, stem, thumb, formats, extra_meta=extra, regions=regions,
                       region_confidence=region_confidence if region_confidence is not None else 0.5,
                       overlay=overlay, source=source, png_regions=png_regions)
    return paths, None if regions is None else list(regions)


def export_options(formats: Iterable[str], png_size_px: int, region_confidence: float | None,
                   overlay: OverlaySettings | None = None) -> dict[str, Any]:
    """The options that shape the exported files (besides the analysis itself)."""
    out: dict[str, Any] = {"formats": sorted(set(formats)), "png_size_px": int(png_size_px),
                           "region_confidence": region_confidence}
    if overlay is not None:
        out["display"] = overlay.to_dict()
    return out



