"""Stain normalisation (Macenko, Reinhard): a slide's colours mapped onto a model's training stain.

A model's sidecar stores the reference stain of its training data (``StainReference``). For one
slide the stain is estimated once, from tissue tiles sampled across the grid, and turned into a
cheap per-tile transform (``TileStainTransform``): for Macenko a 3 × 3 matrix in optical density
space (source stain vectors → concentrations, scaled to the reference's 99th percentiles → reference
stain vectors), for Reinhard one lookup table per LAB channel. Tiles are transformed in the reader
threads, so the cost is spread over them.

Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009.
Reinhard et al., "Color transfer between images", IEEE CG&A 2001.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cellview.analysis.tissue import optical_density
from cellview.base.errors import ModelError

STAIN_METHODS = ("none", "macenko", "reinhard")
"""Choices for ``AnalysisParams.stain_normalize`` (and the CLI's ``--stain-normalize``)."""

_BETA_OD = 0.15  # Macenko: pixels with OD below this in every channel are background, not stain
_ALPHA_PERCENTILE = 1.0  # robust extreme angles in the stain plane
_MAX_C_PERCENTILE = 99.0
_MIN_PIXELS = 500
_MAX_PIXELS = 250_000
_WHITE_L = 230  # uint8 LAB lightness above which a pixel counts as background for Reinhard


class StainError(ValueError):
    """A stain could not be estimated (too little tissue, degenerate colours)."""


@dataclass(frozen=True)
class MacenkoStain:
    """Haematoxylin and eosin OD unit vectors (rows of ``stain_matrix``) and their 99th-percentile amounts."""

    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentrations: tuple[float, float]

    def matrix(self) -> np.ndarray:
        return np.asarray(self.stain_matrix, dtype=np.float64)


@dataclass(frozen=True)
class ReinhardStain:
    """Mean and standard deviation of tissue pixels in OpenCV's 8-bit LAB."""

    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]


@dataclass(frozen=True)
class StainReference:
    """The training data's stain, stored in the model sidecar under ``stain_reference``."""

    macenko: MacenkoStain
    reinhard: ReinhardStain
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "macenko": {"stain_matrix": [list(map(_r6, row)) for row in self.macenko.stain_matrix],
                        "max_concentrations": list(map(_r6, self.macenko.max_concentrations))},
            "reinhard": {"lab_mean": list(map(_r6, self.reinhard.lab_mean)),
                         "lab_std": list(map(_r6, self.reinhard.lab_std))},
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "model sidecar") -> StainReference:
        """Validated reference; any malformed value is a ModelError naming the field."""
        def numbers(value: Any, n: int, field: str, positive: bool = False) -> tuple[float, ...]:
            try:
                out = tuple(float(v) for v in value)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"The {where}: 'stain_reference.{field}' must be {n} numbers.") from exc
            if len(out) != n or not all(math.isfinite(v) for v in out) or (positive and min(out) <= 0):
                raise ModelError(f"The {where}: 'stain_reference.{field}' must be {n} finite"
                                 f"{' positive' if positive else ''} numbers.")
            return out

        if not isinstance(data, dict) or not isinstance(data.get("macenko"), dict) \
                or not isinstance(data.get("reinhard"), dict):
            raise ModelError(f"The {where}: 'stain_reference' must hold 'macenko' and 'reinhard' objects.")
        mac, rein = data["macenko"], data["reinhard"]
        rows = mac.get("stain_matrix")
        if not isinstance(rows, list) or len(rows) != 2:
            raise ModelError(f"The {where}: 'stain_reference.macenko.stain_matrix' must be 2 rows of 3 numbers.")
        matrix = tuple(numbers(r, 3, "macenko.stain_matrix", positive=False) for r in rows)
        for row in matrix:
            if abs(np.linalg.norm(row) - 1.0) > 1e-3 or min(row) < 0:
                raise ModelError(f"The {where}: 'stain_reference.macenko.stain_matrix' rows must be non-negative "
                                 "unit optical-density vectors.")
        max_c = numbers(mac.get("max_concentrations"), 2, "macenko.max_concentrations", positive=True)
        mean = numbers(rein.get("lab_mean"), 3, "reinhard.lab_mean")
        std = numbers(rein.get("lab_std"), 3, "reinhard.lab_std", positive=True)
        return cls(MacenkoStain(matrix, max_c), ReinhardStain(mean, std), str(data.get("note", "")))  # type: ignore[arg-type]


def _r6(v: float) -> float:
    return round(float(v), 6)


# ----------------------------------------------------------------------------- estimation


def _sample(pixels: np.ndarray, limit: int = _MAX_PIXELS) -> np.ndarray:
    """At most ``limit`` pixels, evenly strided (deterministic)."""
    px = pixels.reshape(-1, 3)
    if len(px) > limit:
        px = px[:: int(math.ceil(len(px) / limit))]
    return px


def estimate_macenko(rgb: np.ndarray) -> MacenkoStain:
    """H and E stain vectors of RGB pixels (any shape ending in 3) and their 99th-percentile amounts."""
    od = optical_density(np.ascontiguousarray(_sample(rgb), dtype=np.uint8)).astype(np.float64)
    od = od[(od > _BETA_OD).any(axis=1)]  # tissue: some stain; eosin alone barely absorbs red light
    if len(od) < _MIN_PIXELS:
        raise StainError(f"only {len(od)} stained pixels; need {_MIN_PIXELS}")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors span the H–E plane
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [_ALPHA_PERCENTILE, 100 - _ALPHA_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)  # haematoxylin absorbs more red light
    matrix = np.stack([h, e])
    matrix = np.abs(matrix) / np.linalg.norm(matrix, axis=1, keepdims=True)
    if abs(float(matrix[0] @ matrix[1])) > 0.995:
        raise StainError("haematoxylin and eosin vectors coincide (one stain only?)")
    conc, *_ = np.linalg.lstsq(matrix.T, od.T, rcond=None)
    max_c = np.percentile(conc, _MAX_C_PERCENTILE, axis=1)
    if not np.all(max_c > 1e-3):
        raise StainError("no measurable amount of one stain")
    return MacenkoStain(tuple(map(tuple, matrix.tolist())), (float(max_c[0]), float(max_c[1])))  # type: ignore[arg-type]


def estimate_reinhard(rgb: np.ndarray) -> ReinhardStain:
    """LAB mean and std of the tissue (non-white) pixels."""
    px = np.ascontiguousarray(_sample(rgb), dtype=np.uint8).reshape(-1, 1, 3)
    lab = cv2.cvtColor(px, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    tissue = lab[lab[:, 0] < _WHITE_L]
    if len(tissue) < _MIN_PIXELS:
        raise StainError(f"only {len(tissue)} tissue pixels; need {_MIN_PIXELS}")
    std = tissue.std(axis=0)
    if not np.all(std > 0.5):
        raise StainError("no colour variation in the tissue")
    return ReinhardStain(tuple(tissue.mean(axis=0).tolist()), tuple(std.tolist()))  # type: ignore[arg-type]


def estimate_reference(images: Sequence[np.ndarray], note: str = "") -> StainReference:
    """The pooled stain of many training images (each contributes about the same number of pixels)."""
    per = max(1000, _MAX_PIXELS // max(1, len(images)))
    pooled = np.concatenate([_sample(np.asarray(im), per) for im in images])
    return StainReference(estimate_macenko(pooled), estimate_reinhard(pooled), note)


# ----------------------------------------------------------------------------- per-tile transform

_EXP_CLIP = 12.0


@dataclass(frozen=True)
class TileStainTransform:
    """One slide's stain mapped to a reference; ``apply`` is cheap and thread-safe."""

    method: str
    od_matrix: np.ndarray | None = None  # Macenko: (3, 3), OD_out = OD_in @ od_matrix
    lab_lut: np.ndarray | None = None  # Reinhard: (256, 1, 3) uint8 LUT per LAB channel
    note: str = ""

    def apply(self, tile: np.ndarray) -> np.ndarray:
        """Normalised copy of an RGB uint8 tile (any H × W)."""
        if self.method == "macenko":
            assert self.od_matrix is not None
            od = optical_density(tile).reshape(-1, 3) @ self.od_matrix
            np.clip(od, 0.0, _EXP_CLIP, out=od)
            out = 256.0 * np.exp(-od) - 1.0
            return np.clip(out, 0, 255).astype(np.uint8).reshape(tile.shape)
        if self.method == "reinhard":
            assert self.lab_lut is not None
            lab = cv2.cvtColor(np.ascontiguousarray(tile), cv2.COLOR_RGB2LAB)
            return cv2.cvtColor(cv2.LUT(lab, self.lab_lut), cv2.COLOR_LAB2RGB)
        return tile


def macenko_transform(source: MacenkoStain, reference: MacenkoStain) -> np.ndarray:
    """(3, 3) OD matrix: concentrations under the source stains, rescaled, re-stained with the reference's."""
    src = source.matrix()
    unmix = np.linalg.pinv(src)  # (3, 2): OD row → H, E amounts
    scale = np.diag(np.asarray(reference.max_concentrations) / np.asarray(source.max_concentrations))
    return (unmix @ scale @ reference.matrix()).astype(np.float32)


def reinhard_lut(source: ReinhardStain, reference: ReinhardStain) -> np.ndarray:
    """(256, 1, 3) uint8 LUT: each LAB channel shifted and scaled from the source's statistics to the reference's.

    Background (lightness above the tissue range) keeps its lightness so white stays white.
    """
    v = np.arange(256, dtype=np.float64)
    lut = np.empty((256, 1, 3), np.uint8)
    for c in range(3):
        mapped = (v - source.lab_mean[c]) / source.lab_std[c] * reference.lab_std[c] + reference.lab_mean[c]
        if c == 0:
            mapped = np.where(v >= _WHITE_L, np.maximum(mapped, v), mapped)
        lut[:, 0, c] = np.clip(np.round(mapped), 0, 255).astype(np.uint8)
    return lut


def fit_transform(method: str, pixels: np.ndarray, reference: StainReference) -> TileStainTransform:
    """The per-tile transform for a slide whose tissue ``pixels`` were sampled; identity when impossible."""
    if method not in STAIN_METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; use one of {', '.join(STAIN_METHODS)}")
    if method == "none":
        return TileStainTransform("none")
    try:
        if method == "macenko":
            src = estimate_macenko(pixels)
            return TileStainTransform("macenko", od_matrix=macenko_transform(src, reference.macenko))
        return TileStainTransform("reinhard", lab_lut=reinhard_lut(estimate_reinhard(pixels), reference.reinhard))
    except StainError as exc:
        return TileStainTransform("none", note=f"{method} stain normalisation skipped: {exc}")


def sample_tile_indices(n_tiles: int, tissue_fraction: np.ndarray, limit: int = 24) -> np.ndarray:
    """Up to ``limit`` tiles spread evenly over the grid order, most tissue first among ties."""
    if n_tiles <= limit:
        return np.arange(n_tiles)
    full = np.flatnonzero(tissue_fraction >= 0.75)
    pool = full if len(full) >= limit else np.arange(n_tiles)
    return pool[np.linspace(0, len(pool) - 1, limit).round().astype(np.int64)]
