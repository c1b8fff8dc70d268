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


def read_geojson(path: str | os.PathLike[str]) -> GeoJSONLabels:
    """Annotations of a QuPath (or CellView) GeoJSON file as labelled regions, in file order.

    A feature's label is its classification's name. Features without a classification, with a
    geometry other than (Multi)Polygon, or CellView's own tile objects (``objectType: tile``, the
    analysis results, not labels) are passed over and said so.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
        if props.get("objectType") in ("tile", "detection", "cell"):
            skip(f"{props.get('objectType')} objects (not annotations)")
            continue
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        if not isinstance(name, str) or not name.strip():
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
        regions.append(LabelRegion(name.strip(), polygons))
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


def labels_path(slide_path: str | os.PathLike[str], writable: bool = True) -> Path:
    """Where a slide's labels are kept: ``<slide>.labels.geojson`` beside it, or in the user's data folder.

    ``writable``: choose the place that can be written (the user's folder when the slide's is
    read-only); otherwise the first place that holds labels already.
    """
    slide = Path(slide_path).resolve()
    beside = slide.parent / (slide.name + LABELS_SUFFIX)
    key = hashlib.sha256(str(slide).encode()).hexdigest()[:12]
    fallback = user_labels_dir() / f"{slide.name}-{key}{LABELS_SUFFIX}"
    if not writable:
        return beside if beside.exists() or not fallback.exists() else fallback
    if beside.exists() and os.access(beside, os.W_OK):
        return beside
    if not beside.exists() and os.access(slide.parent, os.W_OK):
        return beside
    return fallback


def slide_for_labels(path: Path) -> Path | None:
    """The slide a ``<slide>.labels.geojson`` or QuPath ``<stem>.geojson`` belongs to, if it is beside it."""
    name = path.name
    if name.endswith(LABELS_SUFFIX):
        slide = path.with_name(name[: -len(LABELS_SUFFIX)])
        return slide if slide.exists() else None
    stem = path.stem
    for candidate in sorted(path.parent.glob(f"{stem}.*")):
        if candidate != path and candidate.suffix.lower() not in (".geojson", ".json", ".csv"):
            return candidate
    folder = path.parent / stem  # a DICOM slide is a folder
    return folder if folder.is_dir() else None


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


def read_labels_csv(path: str | os.PathLike[str]) -> tuple[list[LabelSource], list[str]]:
    """``image,label[,annotations]`` rows → sources, and the notes worth telling (empty rows passed over).

    Paths are relative to the CSV's folder unless absolute. Raises LabelError for a file that is not
    such a CSV.
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
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        image, label, ann = row.get("image", ""), row.get("label", ""), row.get("annotations", "")
        where = f"{path.name}, line {n}"
        if not image:
            if label or ann:
                notes.append(f"{where}: no image; row passed over")
            continue
        target = _relative(path, image)
        if ann:
            geo = read_geojson(_relative(path, ann))
            notes += [f"{where}: {ann}: passed over {s}" for s in geo.skipped]
            out.append(LabelSource(target, None, geo.regions, f"{where} ({ann})"))
        elif label:
            out.append(LabelSource(target, label, (), where))
        else:
            notes.append(f"{where}: {image} has no label; row passed over")
    return out, notes


def read_labels(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[LabelSource], list[str]]:
    """Labels from CSV files and slide GeoJSON files (``<slide>.labels.geojson`` or QuPath ``<stem>.geojson``)."""
    sources: list[LabelSource] = []
    notes: list[str] = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() in (".geojson", ".json"):
            slide = slide_for_labels(p)
            if slide is None:
                raise LabelError(f"No slide found for {p.name}: put the slide beside it with the same name "
                                 f"(e.g. {p.stem}.svs), or list both in a CSV (image,annotations).")
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
    key = str(Path(slide_path).resolve())
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

