"""Labelled images: reading folders / CSVs / recipes, resampling to the model's µm per pixel, views.

Images are small (≤ 1k px) so each one is read whole, rescaled once to the training spacing and cut
into tiles the way the core tiles a slide. Augmentations are the ones that keep histology meaning:
dihedral flips/rotations, small HED stain and HSV jitter, slight scale change and blur.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.analysis.foreground import Reading
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, sha256_file
from cellview.analysis.morphology import HED_STAIN_MATRIX
from cellview.base.errors import ModelError
from cellview.slides.image_slide import read_image_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """A training input that cannot be used, with a sentence saying why."""


@dataclass(frozen=True)
class ClassInfo:
    name: str
    category: str
    color: str


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``group`` is the unit that must never straddle a split."""

    path: str
    label: int
    group: str
    source: str
    spacing_um_px: float | None  # None: the image states no pixel size (the recipe's reading rule applies)
    raw_label: str = ""


@dataclass
class Source:
    """One labelled collection: a CSV (path,label[,group]) or a folder of class folders."""

    path: str
    name: str = ""
    spacing_um_px: float | None = None
    path_column: str = "path"
    label_column: str = "label"
    group_column: str | None = "group"
    label_map: dict[str, str | None] = field(default_factory=dict)
    group_prefix: str = ""
    group_by: str = "column"  # grouping.GROUP_RULES: the group column, runs of file numbers, near-duplicates, images
    unstated_pixel_size: bool = False  # the images state no pixel size: read them as the recipe's reading says


@dataclass
class Recipe:
    """Everything ``cellview train`` needs to know about one model, usually read from JSON."""

    name: str
    classes: list[ClassInfo]
    sources: list[Source]
    spacing_um_px: float
    patch_size: int = 224
    description: str = ""
    license: str = "Research use only; see the training data terms"
    group_near_duplicates: bool = False
    group_threshold: float = 0.95
    group_mutual_k: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    reading: Reading = field(default_factory=Reading)  # foreground rule, images without a pixel size (sidecar)
    int8_validation: str = ""  # where `cellview export` validates the INT8 copy (quantize.VALIDATION_MODES); '' = run
    domain_threshold: float = 0.05  # a tile is in domain when its domain score (a p-value) is at least this

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "license": self.license,
            "spacing_um_px": self.spacing_um_px,
            "patch_size": self.patch_size,
            "group_near_duplicates": self.group_near_duplicates,
            "group_threshold": self.group_threshold,
            "group_mutual_k": self.group_mutual_k,
            "classes": [asdict(c) for c in self.classes],
            "sources": [asdict(s) for s in self.sources],
            "notes": self.notes,
            **self.reading.sidecar_entries(),
            **({"int8_validation": self.int8_validation} if self.int8_validation else {}),
            **({"domain_threshold": self.domain_threshold} if self.domain_threshold != 0.05 else {}),
        }


def _class_infos(raw: Any) -> list[ClassInfo]:
    """Classes from a list of {name, category, color} or a {name: category | {...}} mapping."""
    items: list[tuple[str, Any]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(c["name"], c) if isinstance(c, dict) else (str(c), {}) for c in raw]
    else:
        raise DataError("'classes' must be a list of {name, category, color} or a mapping name → category.")
    out = []
    for name, spec in items:
        if isinstance(spec, str):
            spec = {"category": spec}
        elif not isinstance(spec, dict):
            spec = {}
        category = spec.get("category") or (name.lower() if name.lower() in CATEGORIES else None)
        if category not in CATEGORIES:
            raise DataError(f"Class {name!r} needs a category, one of {', '.join(CATEGORIES)}.")
        color = spec.get("color") or CATEGORY_COLORS[category]
        if not (isinstance(color, str) and len(color) == 7 and color.startswith("#")):
            raise DataError(f"Class {name!r}: colour must look like '#d62728', got {color!r}.")
        out.append(ClassInfo(str(name), category, color.lower()))
    if len(out) < 2:
        raise DataError("A classifier needs at least two classes.")
    return out


def load_recipe(path: Path, data_root: Path | None = None) -> Recipe:
    """Read a recipe JSON; source paths are relative to ``data_root`` (default: the recipe's folder)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read the recipe {path}: {exc}") from exc
    return recipe_from_dict(raw, data_root or Path(path).parent)


def recipe_from_dict(raw: dict[str, Any], data_root: Path) -> Recipe:
    if "classes" not in raw or "sources" not in raw:
        raise DataError("A recipe needs 'classes' and 'sources'.")
    sources = []
    for s in raw["sources"]:
        s = dict(s)
        p = Path(s.pop("path"))
        s["path"] = str(p if p.is_absolute() else data_root / p)
        sources.append(Source(**s))
    return Recipe(
        name=raw.get("name", "model"),
        classes=_class_infos(raw["classes"]),
        sources=sources,
        spacing_um_px=float(raw["spacing_um_px"]),
        patch_size=int(raw.get("patch_size", 224)),
        description=raw.get("description", ""),
        license=raw.get("license", Recipe.license),
        group_near_duplicates=bool(raw.get("group_near_duplicates", False)),
        group_threshold=float(raw.get("group_threshold", 0.95)),
        group_mutual_k=int(raw.get("group_mutual_k", 0)),
        notes=raw.get("notes", {}),
        reading=_reading(raw),
        int8_validation=str(raw.get("int8_validation", "")),
        domain_threshold=_threshold(raw.get("domain_threshold", 0.05)),
    )


def _threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
        raise DataError(f"'domain_threshold' must be a p-value between 0 and 1, got {value!r}.")
    return float(value)


def _reading(raw: dict[str, Any]) -> Reading:
    """The recipe's foreground / unstated-pixel-size entries, checked as a sidecar's are."""
    try:
        return Reading.from_sidecar(raw, "recipe")
    except ModelError as exc:
        raise DataError(exc.message) from exc


def recipe_from_args(data: Sequence[str], classes: str | None, spacing: float, patch: int, name: str,
                     reading: Reading | None = None) -> Recipe:
    """A recipe for the simple case: ``--data`` folders/CSVs plus an optional class → category JSON.

    ``reading``: the model's foreground rule, and with a rule for images without a pixel size the images are
    read by it (not at ``spacing``, which stays the model's)."""
    if classes:
        inline = classes.lstrip().startswith(("{", "["))  # a JSON string; Path(...).is_file() raises on long ones
        try:
            raw_classes = json.loads(classes if inline else Path(classes).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"--classes must be a JSON file or a JSON string: {exc}") from exc
    else:
        raw_classes = None
    reading = reading or Reading()
    unstated = reading.unstated.read != "ask"
    sources = [Source(path=str(Path(d).resolve()), name=Path(d).stem, spacing_um_px=spacing,
                      unstated_pixel_size=unstated) for d in data]
    if raw_classes is None:
        found: list[str] = []
        for s in sources:
            for smp in _read_source(s, None):
                if smp.raw_label not in found:
                    found.append(smp.raw_label)
        raw_classes = {c: c.lower() if c.lower() in CATEGORIES else None for c in found}
    return Recipe(name=name, classes=_class_infos(raw_classes), sources=sources, spacing_um_px=spacing,
                  patch_size=patch, reading=reading)


def _read_source(src: Source, class_names: list[str] | None, default_spacing: float = 0.0) -> Iterator[Sample]:
    root = Path(src.path)
    name = src.name or root.stem
    spacing = None if src.unstated_pixel_size else float(src.spacing_um_px or default_spacing)
    if root.is_dir():
        rows = [
            {"path": str(f), "label": d.name, "group": f"{d.name}/{f.relative_to(d).with_suffix('').as_posix()}"}
            for d in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        base = root
        pcol, lcol, gcol = "path", "label", "group"
    elif root.is_file():
        with open(root, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        base = root.parent
        pcol, lcol, gcol = src.path_column, src.label_column, src.group_column
        if rows and (pcol not in rows[0] or lcol not in rows[0]):
            raise DataError(f"{root.name} needs columns '{pcol}' and '{lcol}'; it has {', '.join(rows[0])}.")
    else:
        raise DataError(f"Training data {root} does not exist.")
    for i, row in enumerate(rows):
        raw = row[lcol]
        mapped = src.label_map.get(raw, raw) if src.label_map else raw
        if mapped is None:
            continue  # deliberately dropped class
        if class_names is not None and mapped not in class_names:
            raise DataError(f"{name}: label {raw!r} maps to {mapped!r}, which is not a model class.")
        p = Path(row[pcol])
        group = row.get(gcol) if gcol else None
        yield Sample(
            path=str(p if p.is_absolute() else base / p),
            label=class_names.index(mapped) if class_names is not None else -1,
            group=f"{src.group_prefix or name}:{group if group else p.stem + '#' + str(i)}",
            source=name,
            spacing_um_px=spacing,
            raw_label=raw,
        )


def read_samples(recipe: Recipe) -> list[Sample]:
    samples: list[Sample] = []
    for src in recipe.sources:
        samples.extend(_read_source(src, recipe.class_names, recipe.spacing_um_px))
    if not samples:
        raise DataError("No labelled images found.")
    missing = [s.path for s in samples[:50] if not Path(s.path).is_file()]
    if missing:
        raise DataError(f"Image {missing[0]} listed in the labels does not exist.")
    return samples


def merge_identical_files(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """Byte-identical files put into one group (the group of the first), so no copy straddles a split.

    Returns the samples and how many groups were merged away. LC25000 holds such pairs under
    different source groups.
    """
    first: dict[str, str] = {}
    rename: dict[str, str] = {}
    for s in samples:
        digest = sha256_file(Path(s.path))
        target = first.setdefault(digest, _root(rename, s.group))
        here = _root(rename, s.group)
        if here != target:
            rename[here] = target
    out = [Sample(**{**asdict(s), "group": _root(rename, s.group)}) for s in samples]
    return out, len({s.group for s in samples}) - len({s.group for s in out})


def _root(rename: dict[str, str], group: str) -> str:
    while group in rename:
        group = rename[group]
    return group


def data_checksum(samples: Sequence[Sample], root: Path | None = None) -> str:
    """sha256 over (relative path, label, sha256 of file) of every image: names the exact data used."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        rel = str(Path(s.path).relative_to(root)) if root and Path(s.path).is_relative_to(root) else s.path
        digest.update(f"{rel}\t{s.raw_label}\t{sha256_file(Path(s.path))}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- pixels


def read_rgb(path: str) -> np.ndarray:
    """The core's plain-image decoder, so training and inference see the same pixels."""
    img = read_image_rgb(path)
    if img is None:
        raise DataError(f"Cannot read image {path}.")
    return img


def rescale(img: np.ndarray, factor: float) -> np.ndarray:
    if abs(factor - 1.0) < 1e-3:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Pad with white below and to the right up to ``size``, as the core reads past an image's edge."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    return cv2.copyMakeBorder(img, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_CONSTANT,
                              value=(255, 255, 255))


def analysis_tiles(img: np.ndarray, src_spacing: float | None, spacing: float, patch: int,
                   stain: Callable[[np.ndarray], np.ndarray] | None = None,
                   reading: Reading | None = None) -> np.ndarray:
    """Exactly the tiles ``cellview analyze --mpp src_spacing`` classifies for this image, (N, patch, patch, 3).

    The core does the work (foreground mask, grid at the model's spacing, level-0 reads resized to the
    patch), so evaluation follows any change to the tiling rule. ``stain``: (image tiles) →
    per-tile transform, as the pipeline's stain normalisation fits one per slide. ``reading``: the model's
    foreground rule and what it does with an image that states no pixel size (``src_spacing`` None): the
    tiles ``cellview analyze`` (no ``--mpp``) classifies then.
    """
    from cellview.analysis.foreground import choose_scale
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams
    from cellview.analysis.tiling import read_tile
    from cellview.slides.image_slide import ImageSlide
    from cellview.slides.slide import Mpp

    reading = reading or Reading()
    mpp = None if src_spacing is None else Mpp(src_spacing, src_spacing, "user")
    scale = choose_scale(reading, mpp, False, "model", patch, (img.shape[1], img.shape[0]))
    if scale.mpp is None and not scale.whole_image:
        raise DataError("An image without a pixel size needs the source's spacing_um_px, or a reading rule "
                        "('unstated_pixel_size') in the recipe.")
    slide = ImageSlide(Path("image"), np.ascontiguousarray(img), {}, scale.mpp)
    _, grid = plan_grid(slide, patch, spacing, AnalysisParams(whole_image=scale.whole_image), reading.foreground)
    if grid.n_tiles == 0:
        return np.zeros((0, patch, patch, 3), np.uint8)
    tiles = np.stack([read_tile(slide, grid, i) for i in range(grid.n_tiles)])
    if stain is not None:
        tiles = stain(tiles)
    return tiles


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90° rotations (k in 0..7)."""
    out = np.rot90(img, k % 4)
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# Ruifrok & Johnston H&E-DAB stain vectors (the core's, as in scikit-image), rows = H, E, DAB.
_RGB_FROM_HED = np.array(HED_STAIN_MATRIX, dtype=np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.02) -> np.ndarray:
    """Perturb haematoxylin / eosin / DAB optical densities, as stain variation between labs would."""
    rgb = np.maximum(img.astype(np.float32), 1.0) / 255.0
    od = -np.log(rgb)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    hed = hed * alpha + beta
    od = hed @ _RGB_FROM_HED
    out = np.exp(-od).reshape(img.shape) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.08, contrast: float = 0.08,
               saturation: float = 0.1, hue: float = 0.02) -> np.ndarray:
    out = img.astype(np.float32)
    out = out * rng.uniform(1 - brightness, 1 + brightness)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue) * 180) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - saturation, 1 + saturation), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


@dataclass
class Augment:
    """Histology augmentation settings; ``none()`` gives plain crops for evaluation."""

    dihedral: bool = True
    scale_jitter: float = 0.2  # log-uniform ±20 %: spacing estimates and scanners differ by that much
    hed_sigma: float = 0.1  # stain amounts ×U(0.9, 1.1) per stain, as between labs
    hed_bias: float = 0.03
    hsv: bool = True
    hue: float = 0.03
    saturation: float = 0.2
    blur_p: float = 0.3

    @classmethod
    def none(cls) -> Augment:
        return cls(dihedral=False, scale_jitter=0.0, hed_sigma=0.0, hed_bias=0.0, hsv=False, hue=0.0, saturation=0.0,
                   blur_p=0.0)


def as_stated(img: np.ndarray, src_spacing: float | None, spacing: float, patch: int,
              reading: Reading) -> tuple[np.ndarray, float]:
    """An image and its pixel size as the model reads it: an image without one resized to the tile (read whole)
    at the model's spacing, or at the pixel size the model assumes (see ``analysis.foreground``)."""
    if src_spacing is not None:
        return img, src_spacing
    if reading.unstated.read == "whole-image":
        return cv2.resize(img, (patch, patch), interpolation=cv2.INTER_AREA), spacing
    if reading.unstated.read == "assume" and reading.unstated.mpp_um:
        return img, reading.unstated.mpp_um
    if reading.unstated.read == "field" and reading.unstated.field_um:
        return img, reading.unstated.field_um / max(img.shape[:2])
    raise DataError("An image without a pixel size needs the source's spacing_um_px, or a reading rule "
                    "('unstated_pixel_size') in the recipe.")


def train_views(img: np.ndarray, src_spacing: float, spacing: float, patch: int, n: int,
                rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """``n`` randomly placed, augmented tiles of one image at the model spacing."""
    out = []
    for _ in range(n):
        factor = src_spacing / spacing * float(np.exp(rng.uniform(-aug.scale_jitter, aug.scale_jitter)))
        im = pad_to(rescale(img, factor), patch)
        h, w = im.shape[:2]
        y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        tile = im[y:y + patch, x:x + patch]
        if aug.dihedral:
            tile = dihedral(tile, int(rng.integers(0, 8)))
        if aug.hed_sigma or aug.hed_bias:
            tile = hed_jitter(tile, rng, aug.hed_sigma, aug.hed_bias)
        if aug.hsv:
            tile = hsv_jitter(tile, rng, saturation=aug.saturation, hue=aug.hue)
        if aug.blur_p and rng.random() < aug.blur_p:
            tile = cv2.GaussianBlur(tile, (0, 0), float(rng.uniform(0.3, 1.2)))
        out.append(np.ascontiguousarray(tile))
    return np.stack(out)


def reinhard(img: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """Reinhard colour normalisation in LAB: used to check a model reads tissue, not stain."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean, std = _tissue_lab_stats(lab)
    lab = (lab - mean) / (std + 1e-3) * target_std + target_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def lab_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LAB mean and std of an RGB image's tissue pixels."""
    return _tissue_lab_stats(cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32))


def _tissue_lab_stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = lab[..., 0] < 235  # ignore white background when measuring the image's colour
    px = lab[mask] if mask.sum() > 100 else lab.reshape(-1, 3)
    return px.mean(0), px.std(0)
