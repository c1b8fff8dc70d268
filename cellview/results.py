"""Typed, frozen analysis results and the views derived from them (heatmaps, counts).

Per-tile probabilities are the one source of truth; predicted class, category, confidence
and the heatmaps are derived from them on demand so they can never disagree.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from functools import cached_property
from typing import Any

import numpy as np

from cellview.model import CATEGORIES, CATEGORY_COLORS, TTA_MODES, ModelSpec, hex_to_rgb
from cellview.slide import Mpp, SlideInfo
from cellview.stain import STAIN_METHODS
from cellview.tiling import TileGrid
from cellview.tissue import TissueMask, TissueParams


@dataclass(frozen=True, eq=False)
class TileNuclei:
    """Per-tile nucleus measurements of a result: ``values[i]`` in FIELDS order, NaN = not measured."""

    values: np.ndarray  # (n_tiles, len(FIELDS)) float32
    area_unit: str  # "um2" or "px2"

    FIELDS = ("count", "density_per_mm2", "mean_area", "median_area", "mean_circularity", "mean_eccentricity")

    @classmethod
    def empty(cls, n_tiles: int, area_unit: str) -> TileNuclei:
        return cls(np.full((n_tiles, len(cls.FIELDS)), np.nan, dtype=np.float32), area_unit)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in TileNuclei.FIELDS:
            return self.values[:, TileNuclei.FIELDS.index(name)]
        raise AttributeError(name)

    @property
    def measured(self) -> np.ndarray:
        return np.isfinite(self.values[:, 0])

    def column_names(self) -> tuple[str, ...]:
        """Export column names, the area unit in the name (µm² → ``um2``; unknown scale → ``px2``)."""
        u = self.area_unit
        return ("nuclei_count", "nuclei_density_per_mm2", f"nuclei_mean_area_{u}", f"nuclei_median_area_{u}",
                "nuclei_mean_circularity", "nuclei_mean_eccentricity")

    def columns(self) -> dict[str, np.ndarray]:
        return {name: self.values[:, k] for k, name in enumerate(self.column_names())}


class TileState(IntEnum):
    PENDING = 0
    DONE = 1
    FAILED = 2


@dataclass(frozen=True)
class ModelInfo:
    """What a result needs to know about the model that produced it (JSON-serialisable)."""

    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]
    class_categories: tuple[str, ...]
    class_colors: tuple[str, ...]
    activation: str
    temperature: float
    spacing_um_px: float
    patch_size_pixels: int

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelInfo:
        return cls(
            name=spec.name, version=spec.version, sha256=spec.onnx_sha256, class_names=spec.class_names,
            class_categories=spec.class_categories, class_colors=spec.class_colors,
            activation=spec.activation, temperature=spec.temperature, spacing_um_px=spec.spacing_um_px,
            patch_size_pixels=spec.patch_size_pixels,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        data = dict(data)
        for key in ("class_names", "class_categories", "class_colors"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class AnalysisParams:
    """Everything that shapes a run. ``cache_dict`` holds the part that changes results."""

    tissue: TissueParams = field(default_factory=TissueParams)
    tissue_threshold: float = 0.25
    overlap: float = 0.0
    whole_image: bool = False
    mpp_um: float | None = None
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    nuclei: bool = False  # measure nuclei per tile (count, density, area, shape)
    stain_normalize: str = "none"  # one of STAIN_METHODS: map each slide's stain onto the model's
    tta: str = "none"  # one of TTA_MODES: average the tile's probabilities over flips / rotations

    def __post_init__(self) -> None:
        if self.stain_normalize not in STAIN_METHODS:
            raise ValueError(f"unknown stain normalisation {self.stain_normalize!r}; use one of "
                             f"{', '.join(STAIN_METHODS)}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {self.tta!r}; use one of {', '.join(TTA_MODES)}")

    def cache_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tissue": asdict(self.tissue),
            "tissue_threshold": self.tissue_threshold,
            "overlap": self.overlap,
            "whole_image": self.whole_image,
            "mpp_um": self.mpp_um,
        }
        if self.nuclei:  # only when on, so results cached before nuclei existed keep their keys
            out["nuclei"] = True
        if self.stain_normalize != "none":  # likewise: only when not at the default
            out["stain_normalize"] = self.stain_normalize
        if self.tta != "none":
            out["tta"] = self.tta
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisParams:
        data = dict(data)
        data["tissue"] = TissueParams(**data.get("tissue", {}))
        return cls(**data)


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 tile', '2 tiles', '1,204 tiles'."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def whole_percentages(counts: dict[str, int]) -> dict[str, int]:
    """Integer percentages that add up to 100 (largest-remainder rounding), all 0 when nothing is counted.

    Rounding each share alone shows 99% or 101% in total (33/33/33); shares a person reads must add up.
    """
    total = sum(counts.values())
    if total <= 0:
        return {k: 0 for k in counts}
    exact = {k: 100.0 * v / total for k, v in counts.items()}
    out = {k: int(np.floor(v)) for k, v in exact.items()}
    for k in sorted(counts, key=lambda k: (-(exact[k] - out[k]), -counts[k]))[: 100 - sum(out.values())]:
        out[k] += 1
    return out


def category_probabilities(probs: np.ndarray, class_categories: tuple[str, ...], activation: str) -> np.ndarray:
    """(N, 3) probability of each category: summed over its classes (softmax), max for sigmoid."""
    out = np.zeros((probs.shape[0], len(CATEGORIES)), dtype=np.float32)
    for k, cat in enumerate(CATEGORIES):
        cols = [i for i, c in enumerate(class_categories) if c == cat]
        if cols:
            part = probs[:, cols]
            out[:, k] = part.max(axis=1) if activation == "sigmoid" else part.sum(axis=1)
    return out


@dataclass(frozen=True)
class AnalysisResult:
    """One slide analysed by one model; tiles not yet done (cancelled run) have NaN probabilities."""

    slide: SlideInfo
    model: ModelInfo
    params: AnalysisParams
    grid: TileGrid
    probs: np.ndarray
    state: np.ndarray
    provider: str
    status: str  # "complete" or "cancelled"
    tissue: TissueMask | None = None
    tile_errors: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created_unix: float = field(default_factory=time.time)
    from_cache: bool = False
    nuclei: TileNuclei | None = None  # per-tile nucleus measurements when params.nuclei
    stain: dict[str, Any] = field(default_factory=dict)  # stain normalisation applied: method, note

    def with_slide(self, slide: SlideInfo) -> AnalysisResult:
        """The same result found again for a slide at another path (cache hit)."""
        return replace(self, slide=slide, from_cache=True)

    @property
    def scale_unknown(self) -> bool:
        return self.slide.mpp is None

    @property
    def mpp(self) -> Mpp | None:
        return self.slide.mpp

    @property
    def n_tiles(self) -> int:
        return self.grid.n_tiles

    @cached_property
    def done(self) -> np.ndarray:
        return self.state == TileState.DONE

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def n_failed(self) -> int:
        return int((self.state == TileState.FAILED).sum())

    @cached_property
    def category_probs(self) -> np.ndarray:
        return category_probabilities(np.nan_to_num(self.probs), self.model.class_categories, self.model.activation)

    @cached_property
    def pred_category(self) -> np.ndarray:
        """Index into CATEGORIES per tile (-1 where not done)."""
        out = np.argmax(self.category_probs, axis=1).astype(np.int64)
        out[~self.done] = -1
        return out

    @cached_property
    def pred_class(self) -> np.ndarray:
        """Most probable class within the predicted category, so class and category agree (-1 if not done)."""
        cat_of_class = np.array([CATEGORIES.index(c) for c in self.model.class_categories])
        masked = np.where(cat_of_class[None, :] == self.pred_category[:, None], np.nan_to_num(self.probs), -np.inf)
        out = np.argmax(masked, axis=1).astype(np.int64)
        out[~self.done] = -1
        return out

    @cached_property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted category (NaN where not done)."""
        conf = np.take_along_axis(self.category_probs, np.maximum(self.pred_category, 0)[:, None], axis=1)[:, 0]
        return np.where(self.done, conf, np.nan).astype(np.float32)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.pred_class[self.done], minlength=len(self.model.class_names))
        return {name: int(n) for name, n in zip(self.model.class_names, counts)}

    def confident(self, min_confidence: float = 0.0) -> np.ndarray:
        """Finished tiles whose call is at least ``min_confidence`` sure (the viewer's filter)."""
        if min_confidence <= 0:
            return self.done
        return self.done & (np.nan_to_num(self.confidence, nan=-1.0) >= min_confidence)

    def category_counts(self, *, min_confidence: float = 0.0) -> dict[str, int]:
        """Tiles per category; with ``min_confidence``, only those the confidence filter keeps."""
        counts = np.bincount(self.pred_category[self.confident(min_confidence)], minlength=len(CATEGORIES))
        return {name: int(n) for name, n in zip(CATEGORIES, counts)}

    def category_shares(self) -> dict[str, float]:
        n = max(self.n_done, 1)
        return {k: v / n for k, v in self.category_counts().items()}

    def category_percentages(self, *, min_confidence: float = 0.0) -> dict[str, int]:
        """Whole percentages of the tiles per category that add up to exactly 100 (largest remainder)."""
        return whole_percentages(self.category_counts(min_confidence=min_confidence))

    def call(self) -> str:
        """The slide's call in a few words, shares first: 'malignant 75% · benign 13% · normal 12%'."""
        if self.n_done == 0:
            return "no tile classified"
        pct = self.category_percentages()
        return " · ".join(f"{c} {pct[c]}%" for c in sorted(CATEGORIES, key=lambda c: -pct[c]))

    def heatmap(self, class_index: int) -> np.ndarray:
        """(n_rows, n_cols) probability of one class per grid cell; NaN where no finished tile."""
        out = np.full(self.grid.shape, np.nan, dtype=np.float32)
        d = self.done
        out[self.grid.grid_row[d], self.grid.grid_col[d]] = self.probs[d, class_index]
        return out

    def category_rgba(
        self,
        min_confidence: float = 0.0,
        categories: tuple[str, ...] = CATEGORIES,
        colors: dict[str, str] | None = None,
    ) -> np.ndarray:
        """(n_rows, n_cols, 4) uint8: category colour, alpha = confidence (0 where hidden)."""
        colors = colors or CATEGORY_COLORS
        palette = np.array([hex_to_rgb(colors[c]) for c in CATEGORIES], dtype=np.uint8)
        out = np.zeros((*self.grid.shape, 4), dtype=np.uint8)
        show = self.done & (np.nan_to_num(self.confidence) >= min_confidence)
        show &= np.isin(self.pred_category, [CATEGORIES.index(c) for c in categories])
        rows, cols = self.grid.grid_row[show], self.grid.grid_col[show]
        out[rows, cols, :3] = palette[self.pred_category[show]]
        out[rows, cols, 3] = np.clip(np.round(self.confidence[show] * 255), 0, 255).astype(np.uint8)
        return out

    def image_level(self) -> dict[str, Any]:
        """Whole-image call: the mean of the finished tiles' probabilities."""
        if self.n_done == 0:
            return {"probs": None, "pred_class": None, "pred_category": None, "confidence": None}
        mean = self.probs[self.done].mean(axis=0, dtype=np.float64).astype(np.float32)
        cat = category_probabilities(mean[None, :], self.model.class_categories, self.model.activation)[0]
        k = int(np.argmax(cat))
        members = [i for i, c in enumerate(self.model.class_categories) if c == CATEGORIES[k]]
        cls = max(members, key=lambda i: mean[i])
        return {
            "probs": {n: float(p) for n, p in zip(self.model.class_names, mean)},
            "pred_class": self.model.class_names[cls],
            "pred_category": CATEGORIES[k],
            "confidence": float(cat[k]),
        }

    def summary(self) -> str:
        pct = self.category_percentages()
        shares = ", ".join(f"{k} {pct[k]}%" for k in CATEGORIES)
        rate = self.timings.get("tiles_per_s")
        text = f"{self.n_done}/{self.n_tiles} tiles"
        if self.n_failed:
            text += f" ({self.n_failed} failed)"
        if rate and not self.from_cache:
            text += f", {rate:.1f} tiles/s"
        text += f", {self.provider}; {shares}"
        if self.from_cache:
            text += " (cached)"
        if self.status != "complete":
            text += f" [{self.status}]"
        return text
