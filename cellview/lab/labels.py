"""A pathologist's labels: which tissue is what, as QuPath-compatible annotations (Qt-free).

Labels are regions in level-0 pixels, each with a label (a model class name or a category), kept in
the order they were made: where regions overlap, the later one wins, and the QuPath class
``Ignore*`` takes tissue out of an earlier region. A tile carries the label of the last region that
contains the centre of its grid cell (every point of a slide lies in exactly one cell, so a label
drawn tile by tile in the viewer maps back onto exactly those tiles, whatever the model's spacing).

Files:
- ``<slide>.labels.geojson`` beside the slide (``labels_path``), or in the user's data folder when the
  slide's folder cannot be written. QuPath opens it (File → Import objects) and exports the same form
  (``read_geojson``: FeatureCollection, a list of features, or one feature; Polygon and MultiPolygon).
- ``labels.csv`` for ``cellview adapt``: ``image,label``; ``image`` is relative to the CSV's folder
  unless absolute, ``label`` names the whole image's or slide's label. A row may name a GeoJSON file in
  an optional ``annotations`` column instead of a label: that slide's regions are its labels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, hex_to_rgb
from cellview.analysis.tiling import TileGrid
from cellview.base.errors import CellviewError
from cellview.base.files import atomic_write_text

IGNORE = "Ignore*"
"""QuPath's class for regions to leave out; here it removes a label from the tissue under it."""

LABELS_SUFFIX = ".labels.geojson"

Ring = tuple[tuple[float, float], ...]


class LabelError(CellviewError):
    """A labels file cannot be read, or names something CellView cannot label."""


@dataclass(frozen=True)
class LabelRegion:
    """One labelled region: polygons of level-0 rings (outer ring, then holes; even-odd rule)."""

    label: str
    polygons: tuple[tuple[Ring, ...], ...]

    @classmethod
    def rect(cls, label: str, x0: float, y0: float, x1: float, y1: float) -> LabelRegion:
        return cls(label, ((((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)),),))

    @property
    def is_ignore(self) -> bool:
        return self.label == IGNORE

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which points lie inside (even-odd over every ring: holes are outside)."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        inside = np.zeros(x.shape, bool)
        for polygon in self.polygons:
            for ring in polygon:
                inside ^= _in_ring(np.asarray(ring, np.float64), x, y)
        return inside

    def bounds(self) -> tuple[float, float, float, float]:
        pts = np.array([p for polygon in self.polygons for ring in polygon for p in ring], np.float64)
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def _in_ring(ring: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ray casting: a point is inside when a ray to its right crosses the ring an odd number of times."""
    inside = np.zeros(x.shape, bool)
    if len(ring) < 3:
        return inside
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        crosses = (ay > y) != (by > y)
        at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < at)
    return inside


# ----------------------------------------------------------------------------- tiles


def cell_centres(grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 centre of every tile's grid cell (the point that decides its label)."""
    x0 = grid.cell_edges_l0(grid.grid_col, "x")
    x1 = grid.cell_edges_l0(grid.grid_col + 1, "x")
    y0 = grid.cell_edges_l0(grid.grid_row, "y")
    y1 = grid.cell_edges_l0(grid.grid_row + 1, "y")
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def cell_rect(grid: TileGrid, index: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) level-0 corners of one tile's grid cell."""
    col, row = np.array([grid.grid_col[index]]), np.array([grid.grid_row[index]])
    return (float(grid.cell_edges_l0(col, "x")[0]), float(grid.cell_edges_l0(row, "y")[0]),
            float(grid.cell_edges_l0(col + 1, "x")[0]), float(grid.cell_edges_l0(row + 1, "y")[0]))


def tile_labels(grid: TileGrid, regions: Sequence[LabelRegion]) -> np.ndarray:
    """(n_tiles,) object array: each tile's label, or None (unlabelled or ignored). Later regions win."""
    out = np.full(grid.n_tiles, None, dtype=object)
    if not grid.n_tiles or not regions:
        return out
    cx, cy = cell_centres(grid)
    for region in regions:
        x0, y0, x1, y1 = region.bounds()
        near = np.flatnonzero((cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1))
        if not len(near):
            continue
        hit = near[region.contains(cx[near], cy[near])]
        out[hit] = None if region.is_ignore else region.label
    return out


@dataclass(frozen=True)
class RegionCheck:
    """What one labelled region does on a slide's tile grid."""

    label: str
    tiles: int  # tissue tiles whose cell centre it holds
    outside: bool  # no part of it lies on the slide
    smaller_than_tile: bool  # narrower or lower than one tile's cell: it may hold no cell centre


def check_regions(regions: Sequence[LabelRegion], grid: TileGrid) -> tuple[RegionCheck, ...]:
    """Each (non-Ignore*) region: how many tiles it labels, and why none when none (outside, or too small)."""
    out = []
    cx, cy = cell_centres(grid) if grid.n_tiles else (np.zeros(0), np.zeros(0))
    for region in regions:
        if region.is_ignore:
            continue
        x0, y0, x1, y1 = region.bounds()
        outside = x1 <= 0 or y1 <= 0 or x0 >= grid.slide_w_l0 or y0 >= grid.slide_h_l0
        near = np.flatnonzero((cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1))
        tiles = int(region.contains(cx[near], cy[near]).sum()) if len(near) else 0
        small = (x1 - x0) < grid.stride_l0_x or (y1 - y0) < grid.stride_l0_y
        out.append(RegionCheck(region.label, tiles, bool(outside), bool(small)))
    return tuple(out)


def region_problems(checks: Sequence[RegionCheck], grid: TileGrid, mpp_um: float | None = None) -> dict[str, str]:
    """Per label that labels no tile on this slide: why, in words (outside the slide; smaller than a tile; no
    tissue under it). Labels with at least one tile are not in it."""
    by_label: dict[str, list[RegionCheck]] = {}
    for c in checks:
        by_label.setdefault(c.label, []).append(c)
    size = f"{grid.stride_l0_x} × {grid.stride_l0_y} px" + (
        f", {grid.stride_l0_x * mpp_um:.0f} µm" if mpp_um else "")
    out = {}
    for label, cs in by_label.items():
        if any(c.tiles for c in cs):
            continue
        n = len(cs)
        its = "its annotation" if n == 1 else f"its {n} annotations"
        if all(c.outside for c in cs):
            out[label] = (f"{its} lie{'s' if n == 1 else ''} outside the slide ({grid.slide_w_l0} × "
                          f"{grid.slide_h_l0} px): no tile is labelled; {'it' if n == 1 else 'they'} may belong to "
                          "another slide")
        elif all(c.smaller_than_tile or c.outside for c in cs):
            out[label] = (f"{its} contain{'s' if n == 1 else ''} no tile centre: smaller than a tile ({size}); "
                          "draw them larger than a tile, or label whole tiles")
        else:
            out[label] = f"{its} hold{'s' if n == 1 else ''} no tissue tile's centre"
    return out


@dataclass(frozen=True)
class ImportSummary:
    """What importing annotations onto an analysed slide does: for the viewer's message and the CLI."""

    regions: int
    tiles_per_label: dict[str, int]
    problems: dict[str, str]  # label → why it labels no tile
    outside: int  # regions wholly outside the slide

    @property
    def labelled_tiles(self) -> int:
        return sum(self.tiles_per_label.values())

    def text(self, source: str = "") -> str:
        """'Imported 151 annotations from x.geojson: no tile is labelled — …' (one paragraph)."""
        head = f"Imported {self.regions} annotation{'s' if self.regions != 1 else ''}" + (
            f" from {source}" if source else "")
        if not self.labelled_tiles:
            if self.outside == self.regions and self.regions:
                return (f"{head}: no tile is labelled — they lie outside this slide and may belong to another "
                        "slide.")
            return f"{head}: no tile is labelled — " + "; ".join(f"{k}: {v}" for k, v in self.problems.items()) + "."
        parts = ", ".join(f"{k} {v} tile{'s' if v != 1 else ''}" for k, v in self.tiles_per_label.items() if v)
        text = f"{head}: labelled {parts}."
        if self.problems:
            text += " " + " ".join(f"{k}: {v}." for k, v in self.problems.items())
        return text


def summarise_import(regions: Sequence[LabelRegion], grid: TileGrid, mpp_um: float | None = None) -> ImportSummary:
    """Per label, the tiles the regions label (later regions win, as ``tile_labels``), and what labels none."""
    checks = check_regions(regions, grid)
    labels = tile_labels(grid, regions)
    names, n = np.unique([str(v) for v in labels if v is not None], return_counts=True)
    counts = {r.label: 0 for r in regions if not r.is_ignore} | dict(zip(names.tolist(), n.tolist()))
    return ImportSummary(len([r for r in regions if not r.is_ignore]), counts,
                         region_problems(checks, grid, mpp_um), sum(c.outside for c in checks))


# ----------------------------------------------------------------------------- GeoJSON (QuPath)


def label_color(label: str, class_names: Sequence[str] = (), class_colors: Sequence[str] = ()) -> tuple[int, int, int]:
    """The colour a label is drawn in: its class's, its category's, grey for Ignore*, else one from its name."""
    if label in class_names and len(class_colors) == len(class_names):
        return hex_to_rgb(class_colors[list(class_names).index(label)])
    if label.lower() in CATEGORIES:
        return hex_to_rgb(CATEGORY_COLORS[label.lower()])
    if label == IGNORE:
        return (180, 180, 180)
    digest = hashlib.sha256(label.encode()).digest()
    return int(digest[0]), int(digest[1]), int(digest[2])


def geojson_dict(regions: Sequence[LabelRegion], class_names: Sequence[str] = (),
                 class_colors: Sequence[str] = (), slide: str = "") -> dict[str, Any]:
    """A FeatureCollection of QuPath annotations, one per region, classified by label."""
    features = []
    for region in regions:
        coords = [[[list(p) for p in ring] for ring in polygon] for polygon in region.polygons]
        geometry = ({"type": "Polygon", "coordinates": coords[0]} if len(coords) == 1
                    else {"type": "MultiPolygon", "coordinates": coords})
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "annotation", "isLocked": False,
                           "classification": {"name": region.label,
                                              "color": list(label_color(region.label, class_names, class_colors))}},
        })
    return {"type": "FeatureCollection", "properties": {"slide": slide, "written_by": "cellview labels"},
            "features": features}


def write_geojson(path: Path, regions: Sequence[LabelRegion], class_names: Sequence[str] = (),
                  class_colors: Sequence[str] = (), slide: str = "") -> Path:
    atomic_write_text(Path(path), json.dumps(geojson_dict(regions, class_names, class_colors, slide)) + "\n")
    return Path(path)


@dataclass(frozen=True)
class GeoJSONLabels:
    """What a GeoJSON file held: its labelled regions, and what was passed over (one line each)."""

    regions: tuple[LabelRegion, ...]
    skipped: tuple[str, ...] = ()


QUPATH_LEGACY_TYPES = {"PathTileObject": "tile", "PathCellObject": "cell", "TMACoreObject": "tmaCore",
                       "PathDetectionObject": "detection", "PathRootObject": "root",
                       "PathAnnotationObject": "annotation"}
"""QuPath 0.2 kept an object's type in the feature's ``id`` (``PathObjectTypeAdapters.LEGACY_TYPE_IDS``)."""
NOT_ANNOTATIONS = {"tile": "tile", "cell": "cell", "detection": "detection", "tmaCore": "TMA core",
                   "tma_core": "TMA core", "root": "root"}


def qupath_object_type(feature: dict[str, Any]) -> str:
    """A feature's QuPath object type by QuPath's own rules: ``properties.objectType`` (0.4+), else
    ``properties.object_type`` (0.3), else ``properties.type``, else a 0.2 type name in the feature's ``id``;
    anything else (or nothing) is an annotation."""
    props = feature.get("properties") or {}
    kind = "annotation"
    fid = feature.get("id")
    if isinstance(fid, str) and fid in QUPATH_LEGACY_TYPES:
        kind = QUPATH_LEGACY_TYPES[fid]
    if isinstance(props, dict):
        for key in ("objectType", "object_type", "type"):
            if isinstance(props.get(key), str):
                value = props[key]
                kind = QUPATH_LEGACY_TYPES.get(value, value)
                break
    return kind


def qupath_class_name(classification: Any) -> str | None:
    """QuPath's class name, derived classes as QuPath writes them ("Tumor: Positive"): 0.4+ ``{"names": [...]}``,
    before 0.4 ``{"name": ..., "parentClass": {...}}``, or a plain string."""
    if isinstance(classification, str):
        return classification.strip() or None
    if not isinstance(classification, dict):
        return None
    names = classification.get("names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return ": ".join(n.strip() for n in names) or None
    name = classification.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    parent = classification.get("parentClass", classification.get("parent"))
    above = qupath_class_name(parent) if parent is not None else None
    return f"{above}: {name.strip()}" if above else name.strip()


def _read_json(path: Path) -> Any:
    """A JSON file, gzip-compressed or not (QuPath exports ``.geojson.gz``)."""
    import gzip

    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw.decode("utf-8-sig"))


def read_geojson(path: str | os.PathLike[str]) -> GeoJSONLabels:
    """Annotations of a QuPath (or CellView) GeoJSON file as labelled regions, in file order.

    A feature's label is its classification's name (derived classes as "Tumor: Positive"). Objects
    that are not annotations by QuPath's rules (``qupath_object_type``: cells, detections, tiles —
    CellView's own analysis tiles too), features without a classification and geometries other than
    (Multi)Polygon are passed over and said so. ``.geojson.gz`` is read as QuPath writes it.
    """
    path = Path(path)
    try:
        data = _read_json(path)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise LabelError(f"Cannot read the annotations {path.name}: it is missing or not GeoJSON.", str(exc)) from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise LabelError(f"{path.name} is not a GeoJSON FeatureCollection or list of features.")
    regions: list[LabelRegion] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for feature in features:
        if not isinstance(feature, dict):
            skip("not a GeoJSON feature")
            continue
        props = feature.get("properties") or {}
        kind = qupath_object_type(feature)
        if kind in NOT_ANNOTATIONS:
            skip(f"{NOT_ANNOTATIONS[kind]} objects (not annotations)")
            continue
        name = qupath_class_name(props.get("classification") if isinstance(props, dict) else None)
        if name is None:
            skip("annotations without a classification")
            continue
        try:
            polygons = _polygons(feature.get("geometry"))
        except (TypeError, ValueError, IndexError):
            skip("annotations with broken coordinates")
            continue
        if not polygons:
            skip(f"{(feature.get('geometry') or {}).get('type', 'empty')} geometries (only areas label tiles)")
            continue
        regions.append(LabelRegion(name, polygons))
    notes = tuple(f"{n} {reason}" for reason, n in skipped.items())
    return GeoJSONLabels(tuple(regions), notes)


def _polygons(geometry: Any) -> tuple[tuple[Ring, ...], ...]:
    if not isinstance(geometry, dict):
        return ()
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        coords = [coords]
    elif kind != "MultiPolygon":
        if kind == "GeometryCollection":
            return tuple(p for g in geometry.get("geometries") or () for p in _polygons(g))
        return ()
    out = []
    for polygon in coords:
        rings = tuple(tuple((float(p[0]), float(p[1])) for p in ring) for ring in polygon)
        if rings and len(rings[0]) >= 3:
            out.append(rings)
    return tuple(out)


# ----------------------------------------------------------------------------- where labels live


def user_labels_dir() -> Path:
    return Path(platformdirs.user_data_dir("cellview")) / "labels"


def _opened(path: str | os.PathLike[str]) -> Path:
    """The path as the user opened it, made absolute but not resolved: a symlink stays the symlink."""
    return Path(os.path.abspath(os.fspath(path)))


def _user_fallback(slide: Path) -> Path:
    key = hashlib.sha256(str(slide).encode()).hexdigest()[:12]
    return user_labels_dir() / f"{slide.name}-{key}{LABELS_SUFFIX}"


def labels_path(slide_path: str | os.PathLike[str], writable: bool = True) -> Path:
    """Where a slide's labels are kept: ``<slide>.labels.geojson`` beside it, or in the user's data folder.

    Beside the path the user opened, not beside a symlink's target (someone else's, often read-only,
    data folder). ``writable``: choose the place that can be written (the user's folder when the
    slide's is read-only); otherwise the first place that holds labels already (labels an earlier
    version saved beside the symlink's target are still found).
    """
    slide = _opened(slide_path)
    beside = slide.parent / (slide.name + LABELS_SUFFIX)
    fallback = _user_fallback(slide)
    if not writable:
        target = Path(os.path.realpath(slide))
        older = [target.parent / (target.name + LABELS_SUFFIX), _user_fallback(target)] if target != slide else []
        for candidate in (beside, fallback, *older):
            if candidate.exists():
                return candidate
        return beside
    if beside.exists() and os.access(beside, os.W_OK):
        return beside
    if not beside.exists() and os.access(slide.parent, os.W_OK):
        return beside
    return fallback


ANNOTATION_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")


def is_annotation_file(path: str | os.PathLike[str]) -> bool:
    """A GeoJSON file (QuPath export, ``.geojson.gz`` too) rather than a labels CSV."""
    return Path(path).name.lower().endswith(ANNOTATION_SUFFIXES)


def _annotation_stem(path: Path) -> str:
    """``a.svs.labels.geojson`` → ``a.svs``; ``a.svs.geojson(.gz)`` → ``a.svs``; ``a.geojson`` → ``a``."""
    name = path.name
    for suffix in (LABELS_SUFFIX, *sorted(ANNOTATION_SUFFIXES, key=len, reverse=True)):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def slide_for_labels(path: Path) -> Path | None:
    """The slide an annotation file belongs to, when it is beside it: ``<slide>.labels.geojson``, QuPath's
    ``<slide>.svs.geojson`` (``getImageName() + ".geojson"``), or ``<stem>.geojson`` beside ``<stem>.<ext>``."""
    stem = _annotation_stem(path)
    named = path.with_name(stem)
    if stem and named.exists() and named != path:
        return named
    if path.name.endswith(LABELS_SUFFIX):
        return None
    for candidate in sorted(path.parent.glob(f"{_glob_escape(stem)}.*")):
        if candidate != path and not is_annotation_file(candidate) and candidate.suffix.lower() not in (".csv",):
            return candidate
    folder = path.parent / stem  # a DICOM slide is a folder
    return folder if folder.is_dir() else None


def _glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


# ----------------------------------------------------------------------------- labels for adapt


@dataclass(frozen=True)
class LabelSource:
    """One labelled image or slide: its whole-image label, or its labelled regions."""

    path: Path
    label: str | None = None  # the whole image's label
    regions: tuple[LabelRegion, ...] = ()
    origin: str = ""  # the file (and row) it came from, for messages
    mpp_um: float | None = None  # the slide's µm/px when its file does not say (else the run's --mpp)

    @property
    def name(self) -> str:
        return self.path.name


RECT_COLUMNS = ("x", "y", "width", "height")


def read_labels_csv(path: str | os.PathLike[str]) -> tuple[list[LabelSource], list[str]]:
    """``image,label[,annotations][,x,y,width,height]`` rows → sources, and the notes worth telling.

    Paths are relative to the CSV's folder unless absolute. A row with ``x,y,width,height`` (level-0
    pixels, as ``cellview suggest`` writes for a slide's tile) labels that rectangle of the slide; the
    rectangles of one slide become one source. Rows without a label are passed over (a ``suggest``
    list filled in part). Raises LabelError for a file that is not such a CSV.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"Cannot read the labels {path}.", str(exc)) from exc
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "image" not in fields or ("label" not in fields and "annotations" not in fields):
        raise LabelError(f"{path.name} needs the columns image,label (optionally annotations); it has "
                         f"{', '.join(reader.fieldnames or []) or 'none'}.")
    out: list[LabelSource] = []
    notes: list[str] = []
    unlabelled: list[int] = []
    rects: dict[Path, list[LabelRegion]] = {}
    rect_lines: dict[Path, list[int]] = {}
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        image, label, ann = row.get("image", ""), row.get("label", ""), row.get("annotations", "")
        where = f"{path.name}, line {n}"
        if not image:
            if label or ann:
                notes.append(f"{where}: no image; row passed over")
            continue
        target = _relative(path, image)
        rect = [row.get(c, "") for c in RECT_COLUMNS]
        if ann:
            geo = read_geojson(_relative(path, ann))
            notes += [f"{where}: {ann}: passed over {s}" for s in geo.skipped]
            out.append(LabelSource(target, None, geo.regions, f"{where} ({ann})"))
        elif not label:
            unlabelled.append(n)
        elif any(rect):
            try:
                x, y, w, h = (float(v) for v in rect)
            except ValueError:
                raise LabelError(f"{where}: x, y, width, height must be numbers (level-0 pixels); they are "
                                 f"{', '.join(rect)}.") from None
            rects.setdefault(target, []).append(LabelRegion.rect(label, x, y, x + w, y + h))
            rect_lines.setdefault(target, []).append(n)
        else:
            out.append(LabelSource(target, label, (), where))
    for target, regions in rects.items():
        lines = rect_lines[target]
        out.append(LabelSource(target, None, tuple(regions), f"{path.name}, line{'s' if len(lines) > 1 else ''} "
                                                             f"{_line_list(lines)}"))
    if unlabelled:
        notes.append(f"{path.name}: {len(unlabelled)} row{'s' if len(unlabelled) > 1 else ''} without a label passed "
                     f"over (line{'s' if len(unlabelled) > 1 else ''} {_line_list(unlabelled)})")
    return out, notes


def _line_list(lines: Sequence[int]) -> str:
    return ", ".join(str(v) for v in lines[:8]) + (f" and {len(lines) - 8} more" if len(lines) > 8 else "")


def read_labels(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[LabelSource], list[str]]:
    """Labels from CSV files and slide annotation files (``<slide>.labels.geojson``, QuPath's
    ``<slide>.svs.geojson`` or ``<stem>.geojson``, gzip-compressed too)."""
    sources: list[LabelSource] = []
    notes: list[str] = []
    for p in paths:
        p = Path(p)
        if is_annotation_file(p):
            slide = slide_for_labels(p)
            if slide is None:
                stem = _annotation_stem(p)
                example = stem if Path(stem).suffix else f"{stem}.svs"
                raise LabelError(f"No slide found for {p.name}: put the slide beside it as {example}, or list both "
                                 "in a CSV (image,annotations).")
            geo = read_geojson(p)
            notes += [f"{p.name}: passed over {s}" for s in geo.skipped]
            sources.append(LabelSource(slide, None, geo.regions, p.name))
        else:
            got, more = read_labels_csv(p)
            sources += got
            notes += more
    return sources, notes


def _relative(csv_path: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else (csv_path.parent / p)


# ----------------------------------------------------------------------------- slides labelled so far


def _index_path() -> Path:
    return user_labels_dir() / "index.json"


def _read_index() -> dict[str, Any]:
    try:
        data = json.loads(_index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("slides", {}) if isinstance(data, dict) and isinstance(data.get("slides"), dict) else {}


def remember_labels(slide_path: str | os.PathLike[str], labels_file: Path | None, mpp_um: float | None) -> None:
    """Note (or, with ``labels_file`` None, forget) that a slide has labels: the viewer adapts on every one."""
    slides = _read_index()
    key = str(_opened(slide_path))
    if labels_file is None:
        slides.pop(key, None)
    else:
        slides[key] = {"labels": str(labels_file), "mpp_um": mpp_um}
    atomic_write_text(_index_path(), json.dumps({"slides": slides}, indent=2) + "\n")


def labelled_slides() -> list[LabelSource]:
    """Every slide labelled in the viewer whose slide and labels file still exist, with its regions."""
    out = []
    for slide, entry in sorted(_read_index().items()):
        labels_file = Path(entry.get("labels", ""))
        if not Path(slide).exists() or not labels_file.is_file():
            continue
        try:
            regions = read_geojson(labels_file).regions
        except LabelError:
            continue
        if any(not r.is_ignore for r in regions):
            mpp = entry.get("mpp_um")
            out.append(LabelSource(Path(slide), None, regions, labels_file.name,
                                   float(mpp) if isinstance(mpp, (int, float)) else None))
    return out

