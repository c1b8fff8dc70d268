"""Typed, frozen analysis results and the views derived from them (heatmaps, counts).

Per-tile probabilities are the one source of truth; predicted class, category, confidence
and the heatmaps are derived from them on demand so they can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from functools import cached_property
from typing import Any

import numpy as np

from cellview.analysis.callrule import DEFAULT_THRESHOLDS, CallThresholds
from cellview.analysis.classifier import TTA_MODES
from cellview.analysis.domain import (
    BANNER_BELOW,
    NOT_AVAILABLE,
    OUT_OF_DOMAIN_RGBA,
    TISSUE_TILE,
    DomainBanner,
    DomainInfo,
    in_domain_mask,
)
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, PRECISIONS, ModelSpec, hex_to_rgb
from cellview.analysis.stain import STAIN_METHODS
from cellview.analysis.tiling import TileGrid
from cellview.analysis.tissue import TissueMask, TissueParams
from cellview.slides.slide import Mpp, SlideInfo


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
    domain: DomainInfo | None = None  # the out-of-domain statistics used; None: the model has none
    precision: str = "fp32"  # the copy of the weights that ran (``sha256`` is that file's): fp32, int8 or fp16
    call: CallThresholds = DEFAULT_THRESHOLDS  # the model's slide-call thresholds (``call.slide_call``)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelInfo:
        domain = DomainInfo.from_stats(spec.domain, spec.domain_sha256) if spec.domain is not None else None
        return cls(
            name=spec.name, version=spec.version, sha256=spec.onnx_sha256, class_names=spec.class_names,
            class_categories=spec.class_categories, class_colors=spec.class_colors,
            activation=spec.activation, temperature=spec.temperature, spacing_um_px=spec.spacing_um_px,
            patch_size_pixels=spec.patch_size_pixels, domain=domain, precision=spec.precision,
            call=replace(spec.call, validation={}),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        data = dict(data)
        for key in ("class_names", "class_categories", "class_colors"):
            data[key] = tuple(data[key])
        if data.get("domain") is not None:
            data["domain"] = DomainInfo(**data["domain"])
        if "call" in data:  # results cached before the slide call get the default; the pipeline refreshes it
            call = dict(data["call"])
            chosen = call.get("chosen_by", "")
            data["call"] = replace(CallThresholds.from_sidecar(call, "cached result"), chosen_by=chosen)
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
    precision: str = "auto"  # one of PRECISIONS: which copy of the weights to run (the one that ran: ModelInfo)

    def __post_init__(self) -> None:
        if self.stain_normalize not in STAIN_METHODS:
            raise ValueError(f"unknown stain normalisation {self.stain_normalize!r}; use one of "
                             f"{', '.join(STAIN_METHODS)}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {self.tta!r}; use one of {', '.join(TTA_MODES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")

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


def category_calls(probs: np.ndarray, class_categories: tuple[str, ...],
                   activation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) class probabilities → per row the category probabilities (N, 3), the predicted category and the
    most probable class within it, so that class and category always agree (one rule for tiles, images
    and the inspector)."""
    cat_probs = category_probabilities(probs, class_categories, activation)
    category = np.argmax(cat_probs, axis=1).astype(np.int64)
    cat_of_class = np.array([CATEGORIES.index(c) for c in class_categories])
    masked = np.where(cat_of_class[None, :] == category[:, None], probs, -np.inf)
    return cat_probs, category, np.argmax(masked, axis=1).astype(np.int64)


RULES = ("vote", "mean")
"""Image-level rules over an image's tiles: the confidence-weighted vote of their categories, or the mean."""


def image_calls(tile_probs: np.ndarray, tile_sample: np.ndarray, n_samples: int, class_categories: Sequence[str],
                rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: predicted category index (-1: no tile), category scores (3), predicted class (-1).

    ``vote``: scores = confidence-weighted votes of the tiles' predicted categories, normalised to sum 1;
    ``mean``: scores = category probabilities of the mean tile probabilities. The class is the most
    probable class (mean probabilities) within the predicted category, as the app shows it.
    """
    cats = tuple(class_categories)
    cat_probs = category_probabilities(tile_probs, cats, "softmax")
    n_cls = tile_probs.shape[1]
    mean = np.zeros((n_samples, n_cls))
    np.add.at(mean, tile_sample, tile_probs)
    counts = np.bincount(tile_sample, minlength=n_samples)
    has = counts > 0
    mean[has] /= counts[has, None]
    if rule == "vote":
        scores = np.zeros((n_samples, len(CATEGORIES)))
        np.add.at(scores, (tile_sample, cat_probs.argmax(1)), cat_probs.max(1))
    elif rule == "mean":
        scores = category_probabilities(mean.astype(np.float32), cats, "softmax").astype(np.float64)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    scores[has] /= np.maximum(scores[has].sum(1, keepdims=True), 1e-12)
    pred = np.where(has, scores.argmax(1), -1)
    cat_of_class = np.array([CATEGORIES.index(c) for c in cats])
    masked = np.where(cat_of_class[None, :] == pred[:, None], mean, -np.inf)
    pred_class = np.where(has, masked.argmax(1), -1)
    return pred, scores, pred_class


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
    domain_score: np.ndarray | None = None  # (N,) float32 0–1, NaN where not done; None: model has no statistics
    stain: dict[str, Any] = field(default_factory=dict)  # stain normalisation applied: method, note
    reading: dict[str, str] = field(default_factory=dict)  # a smear model's foreground rule, what was assumed

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

    # -- out of domain ------------------------------------------------------------------------------

    @property
    def has_domain(self) -> bool:
        """Tiles carry a domain score (the model had domain statistics)."""
        return self.domain_score is not None and self.model.domain is not None

    @cached_property
    def in_domain(self) -> np.ndarray:
        """(N,) bool: done and like the training data. Without domain statistics every done tile counts."""
        if not self.has_domain:
            return self.done.copy()
        assert self.domain_score is not None and self.model.domain is not None
        return self.done & in_domain_mask(self.domain_score, self.model.domain.threshold)

    @property
    def out_of_domain(self) -> np.ndarray:
        """(N,) bool: done and scored out of domain (all False without domain statistics)."""
        return self.done & ~self.in_domain

    @property
    def in_domain_fraction(self) -> float | None:
        """Share of the finished tiles that are in domain; None without domain statistics or tiles."""
        if not self.has_domain or self.n_done == 0:
            return None
        return float(self.in_domain.sum() / self.n_done)

    def counted(self, include_out_of_domain: bool = False) -> np.ndarray:
        """The tiles that counts, shares and regions use: in-domain ones unless told otherwise."""
        return self.done if include_out_of_domain else self.in_domain

    def domain_grid(self) -> np.ndarray:
        """(n_rows, n_cols) float32 domain score per grid cell; NaN where none (or no statistics)."""
        out = np.full(self.grid.shape, np.nan, dtype=np.float32)
        if self.domain_score is not None:
            d = self.done
            out[self.grid.grid_row[d], self.grid.grid_col[d]] = self.domain_score[d]
        return out

    def out_of_domain_grid(self) -> np.ndarray:
        """(n_rows, n_cols) bool: cells whose tile is out of domain (for hatching in a view)."""
        out = np.zeros(self.grid.shape, dtype=bool)
        ood = self.out_of_domain
        out[self.grid.grid_row[ood], self.grid.grid_col[ood]] = True
        return out

    # -- predictions --------------------------------------------------------------------------------

    @cached_property
    def _calls(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat_probs, category, cls = category_calls(np.nan_to_num(self.probs), self.model.class_categories,
                                                  self.model.activation)
        category[~self.done] = -1
        cls[~self.done] = -1
        return cat_probs, category, cls

    @property
    def category_probs(self) -> np.ndarray:
        return self._calls[0]

    @property
    def pred_category(self) -> np.ndarray:
        """Index into CATEGORIES per tile (-1 where not done)."""
        return self._calls[1]

    @property
    def pred_class(self) -> np.ndarray:
        """Most probable class within the predicted category, so class and category agree (-1 if not done)."""
        return self._calls[2]

    @cached_property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted category (NaN where not done)."""
        conf = np.take_along_axis(self.category_probs, np.maximum(self.pred_category, 0)[:, None], axis=1)[:, 0]
        return np.where(self.done, conf, np.nan).astype(np.float32)

    def class_counts(self, include_out_of_domain: bool = False, *, min_confidence: float = 0.0) -> dict[str, int]:
        """Tiles per class, the tiles ``category_counts`` counts: out-of-domain ones are left out unless
        asked for, and with ``min_confidence`` only those the confidence filter keeps."""
        use = self.confident(min_confidence, include_out_of_domain)
        counts = np.bincount(self.pred_class[use], minlength=len(self.model.class_names))
        return {name: int(n) for name, n in zip(self.model.class_names, counts)}

    def confident(self, min_confidence: float = 0.0, include_out_of_domain: bool = False) -> np.ndarray:
        """Counted tiles (in-domain ones unless told otherwise) at least ``min_confidence`` sure (the viewer's filter)."""
        use = self.counted(include_out_of_domain)
        if min_confidence <= 0:
            return use
        return use & (np.nan_to_num(self.confidence, nan=-1.0) >= min_confidence)

    def category_counts(self, include_out_of_domain: bool = False, *, min_confidence: float = 0.0) -> dict[str, int]:
        """Tiles per category; out-of-domain tiles are left out unless asked for, and with
        ``min_confidence`` only those the confidence filter keeps."""
        counts = np.bincount(self.pred_category[self.confident(min_confidence, include_out_of_domain)],
                             minlength=len(CATEGORIES))
        return {name: int(n) for name, n in zip(CATEGORIES, counts)}

    def category_shares(self, include_out_of_domain: bool = False) -> dict[str, float]:
        """Share of each category among the counted tiles (all 0 when none is counted)."""
        counts = self.category_counts(include_out_of_domain)
        n = max(sum(counts.values()), 1)
        return {k: v / n for k, v in counts.items()}

    def category_percentages(self, include_out_of_domain: bool = False, *,
                             min_confidence: float = 0.0) -> dict[str, int]:
        """Whole percentages of the counted tiles per category that add up to exactly 100 (largest remainder)."""
        return whole_percentages(self.category_counts(include_out_of_domain, min_confidence=min_confidence))

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
        include_out_of_domain: bool = False,
        out_of_domain_rgba: tuple[int, int, int, int] | None = OUT_OF_DOMAIN_RGBA,
    ) -> np.ndarray:
        """(n_rows, n_cols, 4) uint8: category colour, alpha = confidence (0 where hidden).

        Out-of-domain tiles get ``out_of_domain_rgba`` (grey; None: left transparent) instead of
        their category colour, unless ``include_out_of_domain``.
        """
        colors = colors or CATEGORY_COLORS
        palette = np.array([hex_to_rgb(colors[c]) for c in CATEGORIES], dtype=np.uint8)
        out = np.zeros((*self.grid.shape, 4), dtype=np.uint8)
        show = self.counted(include_out_of_domain) & (np.nan_to_num(self.confidence) >= min_confidence)
        show &= np.isin(self.pred_category, [CATEGORIES.index(c) for c in categories])
        rows, cols = self.grid.grid_row[show], self.grid.grid_col[show]
        out[rows, cols, :3] = palette[self.pred_category[show]]
        out[rows, cols, 3] = np.clip(np.round(self.confidence[show] * 255), 0, 255).astype(np.uint8)
        if not include_out_of_domain and out_of_domain_rgba is not None:
            ood = self.out_of_domain
            out[self.grid.grid_row[ood], self.grid.grid_col[ood]] = out_of_domain_rgba
        return out

    def image_level(self, include_out_of_domain: bool = False) -> dict[str, Any]:
        """Whole-image call: the mean of the counted tiles' probabilities.

        Out-of-domain tiles are left out; when every tile is out of domain the call is made from
        all of them and ``based_on`` says it is unreliable.
        """
        use = self.counted(include_out_of_domain)
        based_on = "all tiles" if include_out_of_domain or not self.has_domain else "in-domain tiles"
        if not use.any() and self.n_done:
            use, based_on = self.done, "out-of-domain tiles only (unreliable)"
        if not use.any():
            return {"probs": None, "pred_class": None, "pred_category": None, "confidence": None,
                    "n_tiles": 0, "based_on": based_on}
        mean = self.probs[use].mean(axis=0, dtype=np.float64).astype(np.float32)
        cats, ks, classes = category_calls(mean[None, :], self.model.class_categories, self.model.activation)
        cat, k, cls = cats[0], int(ks[0]), int(classes[0])
        return {
            "probs": {n: float(p) for n, p in zip(self.model.class_names, mean)},
            "pred_class": self.model.class_names[cls],
            "pred_category": CATEGORIES[k],
            "confidence": float(cat[k]),
            "n_tiles": int(use.sum()),
            "based_on": based_on,
        }

    def summary(self) -> str:
        """One line per slide: tiles, speed, provider, category shares (of in-domain tiles), the domain phrase."""
        pct = self.category_percentages()
        shares = ", ".join(f"{k} {pct[k]}%" for k in CATEGORIES)
        if self.has_domain and self.n_done and not self.in_domain.any():
            shares = "no in-domain tiles to share out"
        rate = self.timings.get("tiles_per_s")
        text = f"{self.n_done}/{self.n_tiles} tiles"
        if self.n_failed:
            text += f" ({self.n_failed} failed)"
        if rate and not self.from_cache:
            text += f", {rate:.1f} tiles/s"
        text += f", {self.provider}; {shares}; {domain_summary(self)}"
        if self.from_cache:
            text += " (cached)"
        if self.status != "complete":
            text += f" [{self.status}]"
        return text


# ----------------------------------------------------------------------------- the domain, in words


def tissue_tile_fraction(result: AnalysisResult, min_tissue: float = TISSUE_TILE) -> float | None:
    """In-domain share among tiles mostly covered by tissue (all analysed tiles when none is).

    Tiles on the edge of the tissue are mostly glass, which the model never saw: they are out of
    domain tile by tile, but say nothing about whether the tissue itself is the model's kind.
    """
    if result.in_domain_fraction is None:
        return None
    done = result.done
    rich = done & (result.grid.tissue_fraction >= min_tissue)
    use = rich if rich.any() else done
    return float(result.in_domain[use].sum() / use.sum())


def mostly_out_of_domain(result: AnalysisResult, below: float = BANNER_BELOW) -> bool:
    frac = tissue_tile_fraction(result)
    return frac is not None and frac < below


def domain_banner(result: AnalysisResult, below: float = BANNER_BELOW) -> DomainBanner:
    """Show a banner when fewer than ``below`` of the tissue tiles are in domain."""
    frac = tissue_tile_fraction(result)
    if frac is None:
        return DomainBanner(False, NOT_AVAILABLE if result.model.domain is None else "", None)
    if frac >= below:
        return DomainBanner(False, f"{frac:.0%} of the analysed tissue is in the model's domain.", frac)
    what = result.model.domain.training_data if result.model.domain else "the model's training data"
    headline = f"This tissue does not look like {what}; the calls are unreliable"
    return DomainBanner(True, f"{headline} ({1 - frac:.0%} of the tissue tiles are out of domain).", frac,
                        headline + ".")


def domain_summary(result: AnalysisResult) -> str:
    """The CLI's per-slide domain phrase: 'in domain 12%' or the not-available sentence."""
    frac = result.in_domain_fraction
    if result.model.domain is None:
        return NOT_AVAILABLE
    if frac is None:
        return "in domain: no tiles analysed"
    text = f"in domain {frac:.0%}"
    tissue = tissue_tile_fraction(result)
    if tissue is not None and abs(tissue - frac) >= 0.005:
        text += f" ({tissue:.0%} of tissue tiles)"
    if mostly_out_of_domain(result):
        text += f" — mostly unlike {result.model.domain.training_data}: the calls are unreliable"
    return text
