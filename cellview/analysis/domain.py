"""Out-of-domain score per tile: does this tile look like the model's training data? (Qt-free.)

Method (stored next to the model as ``domain.npz``, its sha256 in the sidecar):

1. Features: the model's pooled penultimate features (the ONNX ``features`` output).
2. Distance: class-conditional Mahalanobis distance with one covariance shared by all classes
   (Lee et al., NeurIPS 2018, "A simple unified framework for detecting out-of-distribution
   samples"), to the nearest class mean: d(x) = min_k (x − μ_k)ᵀ Σ⁻¹ (x − μ_k). Means and Σ are
   fitted on the training split's tiles; in Σ every training source (dataset) weighs the same,
   so a small source's variation is not drowned by a large one's. Σ is estimated as a
   probabilistic PCA (Tipping & Bishop, 1999): the top ``d`` principal directions of the
   within-class scatter keep their variances, the rest share one (their mean). That shrinks the
   many poorly estimated small directions without throwing them away (a tile far off the
   training subspace still scores as far), stores D × d numbers instead of D × D, and makes a
   tile's score cost O(D · d). ``d`` is chosen by the log-likelihood of the validation tiles.
3. Score: a conformal p-value against held-out in-domain tiles: ``domain_score`` = share of
   those tiles at least as far from the training data as this one, in (0, 1]; higher = more
   like the training data. The held-out tiles are the validation split's plus the training
   split's scored out of fold (5 folds of whole patients / groups), so every source is
   calibrated on hundreds of tiles.
4. ``in_domain`` = ``domain_score ≥ threshold`` (0.05: the 95th percentile of held-out in-domain
   distances is the boundary, so about 95 % of new in-domain tiles stay in domain).
5. Artefacts: a tile can resemble training tissue in feature space and still be glass, out of
   focus or pen ink. Three cheap pixel statistics, each calibrated against the same held-out
   tiles, are folded into the score (see ``tile_quality``): tissue coverage, sharpness and
   ink-coloured pixels. Each check's p-value is scaled so that on its own it flags a tile only
   beyond the 0.5 % most extreme held-out tiles (CHECK_LEVEL); the feature distance ranks
   everything else. The reported score is the conformal p-value of the smallest of the four,
   against the held-out tiles' own, so the 95 % rule holds for the combination.
6. A lab's tissue (``with_lab``, written by ``cellview adapt``): the lab's labelled tiles add their
   own means (one per label) under the same covariance, calibrated on the lab's tiles scored out of
   file (each image or slide against means fitted without it). A tile's feature p-value is the larger
   of the training one and the lab one, so it is in domain when it is like the training data *or*
   like the lab's labelled tissue; the training part of the statistics is unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.base.errors import ModelError

FORMAT = 1
FORMAT_LAB = 2
"""Files with a lab component (``with_lab``) are format 2; older readers refuse them instead of ignoring it."""
DOMAIN_FILE = "domain.npz"
DEFAULT_THRESHOLD = 0.05
BANNER_BELOW = 0.5
"""The banner shows when fewer than this share of the analysed tiles are in domain."""
OUT_OF_DOMAIN_RGBA = (128, 128, 128, 170)
"""How out-of-domain tiles are painted by default: grey, not in a category colour."""

METHOD = ("class-conditional Mahalanobis distance to the nearest class mean, shared source-balanced PPCA "
          "covariance (Lee et al. 2018), on the model's pooled features; with tissue, sharpness and ink checks; "
          "conformal p-value against held-out in-domain tiles")
COMPONENT_CHOICES = (8, 16, 32, 64, 128, 256)

QUALITY_CHECKS = ("tissue", "sharpness", "ink")
"""Pixel checks folded into the score; each is a one-sided statistic where low = suspicious."""
CHECK_LEVEL = 0.005
"""A pixel check on its own flags a tile beyond this share of held-out in-domain tiles (0.5 %)."""


# ----------------------------------------------------------------------------- pixel checks


def tile_quality(tiles: np.ndarray) -> np.ndarray:
    """(N, 3) float32 per-tile statistics where a low value means glass, blur or ink.

    Glass = bright, unsaturated pixels (HSV value > 70 %, saturation < 10 %); everything else
    counts as material on the slide.

    - tissue: share of the tile that is not glass;
    - sharpness: log of the variance of the Laplacian of the grey image over non-glass pixels
      (the usual focus measure; blur lowers it);
    - ink: minus the share of non-glass pixels whose colour no H&E stain makes: saturated
      green / cyan hues, or dark and greyish (black marker). H&E lies between purple and pink.
      Blue marker shares haematoxylin's hue and is left to the feature distance.

    Computed on a 2× downsampled tile: the statistics barely change, the cost is a quarter.
    """
    tiles = np.asarray(tiles)
    out = np.zeros((len(tiles), len(QUALITY_CHECKS)), np.float32)
    for i, tile in enumerate(tiles):
        small = cv2.resize(tile, (tile.shape[1] // 2, tile.shape[0] // 2), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        material = ~((val > 178) & (sat < 26))
        n = int(material.sum())
        out[i, 0] = n / material.size
        if n > 16:
            lap = cv2.Laplacian(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), cv2.CV_32F, ksize=3)
            out[i, 1] = np.log1p(float(lap[material].var()))
            green_cyan = (sat > 80) & (hue >= 40) & (hue <= 95)  # OpenCV hue 0..180: green 60, cyan 90
            black = (val < 80) & (sat < 70)  # dark and greyish; dense nuclei are dark but saturated
            out[i, 2] = -float((material & (green_cyan | black)).sum()) / n
    return out


def _lower_tail_pvalue(reference_sorted: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Conformal p-value for low values: share of reference values at most as high (+1 smoothing)."""
    n = len(reference_sorted)
    return ((np.searchsorted(reference_sorted, values, side="right") + 1) / (n + 1)).astype(np.float64)


def _upper_tail_pvalue(reference_sorted: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Conformal p-value for high values: share of reference values at least as high (+1 smoothing)."""
    n = len(reference_sorted)
    return ((n - np.searchsorted(reference_sorted, values, side="left") + 1) / (n + 1)).astype(np.float64)


# ----------------------------------------------------------------------------- statistics


def in_domain_mask(score: np.ndarray, threshold: float) -> np.ndarray:
    """The in-domain rule everywhere: score at or above the threshold; a missing (NaN) score is out."""
    return np.nan_to_num(np.asarray(score, np.float32), nan=-1.0) >= threshold


@dataclass(frozen=True, eq=False)
class DomainStats:
    """Fitted statistics of one model's training domain (see the module docstring)."""

    class_means: np.ndarray  # (K, D) float32, one row per class present in the training split
    basis: np.ndarray  # (D, d) float32, orthonormal columns
    eigvals: np.ndarray  # (d,) float32, within-class variance along each basis column
    residual_var: float  # variance shared by every direction outside the basis
    cal_distance: np.ndarray  # (n,) float32 sorted: held-out in-domain tiles' distances
    cal_quality: np.ndarray  # (n, len(QUALITY_CHECKS)) float32, columns sorted independently
    cal_combined: np.ndarray  # (n,) float64 sorted: held-out tiles' smallest p-value
    threshold: float = DEFAULT_THRESHOLD
    info: dict[str, Any] = field(default_factory=dict)  # method, training data description, counts
    lab_means: np.ndarray | None = None  # (M, D) float32: a lab's tissue, one row per label (see with_lab)
    lab_cal_distance: np.ndarray | None = None  # (m,) float32 sorted: the lab tiles' out-of-file distances

    @property
    def has_lab(self) -> bool:
        return self.lab_means is not None and len(self.lab_means) > 0

    @property
    def feature_dim(self) -> int:
        return int(self.class_means.shape[1])

    @property
    def components(self) -> int:
        return int(self.basis.shape[1])

    @property
    def training_data(self) -> str:
        """A short phrase naming what the model was trained on, for messages and the banner."""
        return str(self.info.get("training_data") or "the model's training data")

    # -- scoring --------------------------------------------------------------------------------

    @cached_property
    def _scoring(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """Prepared once: [basis | means ᵀ] as one float32 matrix (the lab's means after the classes'),
        projected means, ‖μ‖², 1/variances."""
        u = self.basis.astype(np.float64)
        mu = self.class_means.astype(np.float64)
        if self.has_lab:
            mu = np.vstack([mu, np.asarray(self.lab_means, np.float64)])
        both = np.ascontiguousarray(np.hstack([u, mu.T]), dtype=np.float32)  # (D, d + K)
        return both, mu @ u, (mu * mu).sum(1), 1.0 / self.eigvals.astype(np.float64), 1.0 / float(self.residual_var)

    def _distances(self, features: np.ndarray) -> np.ndarray:
        """(N, K + M) squared Mahalanobis distance to every class mean, then to every lab mean.

        One float32 product with the D-wide arrays, the rest in float64. The product is an einsum
        on purpose: a multi-threaded BLAS call this small, made right after ONNX Runtime's own
        threads ran, waits on them (1.3 ms vs 20–70 ms per 32 tiles on 2 busy cores).
        """
        f = np.ascontiguousarray(features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise ModelError(f"Domain statistics expect {self.feature_dim} features per tile, got {f.shape}.")
        both, m, mu_sq, inv_l, inv_s = self._scoring
        d = self.components
        prod = np.einsum("nd,dk->nk", f, both).astype(np.float64)  # no BLAS threads (see above)
        p, f_mu = prod[:, :d], prod[:, d:]  # (N, d) projections, (N, K) products with the means
        sq = (f.astype(np.float64) ** 2).sum(1)[:, None] - 2.0 * f_mu + mu_sq[None, :]  # ‖x − μ_k‖²
        out = np.empty(sq.shape)
        for k in range(len(m)):
            proj = p - m[k]
            inside = (proj * proj).sum(1)
            out[:, k] = np.maximum(sq[:, k] - inside, 0.0) * inv_s + (proj * proj * inv_l).sum(1)
        return out

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distance to the nearest class mean of the training data (NaN rows stay NaN)."""
        return self._distances(features)[:, :len(self.class_means)].min(axis=1).astype(np.float32)

    def lab_distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) the same distance to the nearest of the lab's means (needs a lab component)."""
        if not self.has_lab:
            raise ModelError("These domain statistics have no lab component.")
        return self._distances(features)[:, len(self.class_means):].min(axis=1).astype(np.float32)

    def feature_pvalue(self, features: np.ndarray) -> np.ndarray:
        """(N,) how typical the tile's features are: of the training data's, or of the lab's when that is larger."""
        dist = self._distances(features)
        k = len(self.class_means)
        d = dist[:, :k].min(axis=1).astype(np.float32)
        p = _upper_tail_pvalue(self.cal_distance, d)
        if self.has_lab:
            p = np.maximum(p, _upper_tail_pvalue(self.lab_cal_distance, dist[:, k:].min(axis=1).astype(np.float32)))
        p[~np.isfinite(d)] = np.nan
        return p

    def pvalues(self, features: np.ndarray, quality: np.ndarray | None) -> np.ndarray:
        """(N, 1 + checks) p-values: feature distance, then each pixel check (1 where not measured)."""
        p = self.feature_pvalue(features)
        cols = [p]
        for j in range(len(QUALITY_CHECKS)):
            if quality is None:
                cols.append(np.ones(len(p)))
            else:
                cols.append(_lower_tail_pvalue(self.cal_quality[:, j], np.asarray(quality)[:, j]))
        out = np.stack(cols, axis=1)
        out[~np.isfinite(p)] = np.nan
        return out

    def score(self, features: np.ndarray, tiles: np.ndarray | None = None,
              quality: np.ndarray | None = None) -> np.ndarray:
        """(N,) float32 domain score in (0, 1]; higher = more like the training data.

        ``tiles`` (the RGB patches) add the pixel checks; without them only the features count.
        """
        if quality is None and tiles is not None:
            quality = tile_quality(tiles)
        combined = self.combined(self.pvalues(features, quality))
        out = _lower_tail_pvalue(self.cal_combined, combined)
        out[~np.isfinite(combined)] = np.nan
        return out.astype(np.float32)

    def combined(self, pvalues: np.ndarray) -> np.ndarray:
        """The smallest p-value, each pixel check's scaled so it alone crosses the threshold at CHECK_LEVEL.

        The features rank tiles; a pixel check only decides when its statistic is more extreme
        than all but CHECK_LEVEL of the held-out in-domain tiles.
        """
        weights = np.r_[1.0, np.full(pvalues.shape[1] - 1, self.threshold / CHECK_LEVEL)]
        return np.minimum(pvalues * weights, 1.0).min(axis=1)

    def in_domain(self, score: np.ndarray) -> np.ndarray:
        return in_domain_mask(score, self.threshold)

    # -- files ----------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = {"format": FORMAT_LAB if self.has_lab else FORMAT, "threshold": self.threshold,
                "residual_var": self.residual_var, "quality_checks": list(QUALITY_CHECKS), **{"info": self.info}}
        lab = {} if not self.has_lab else {"lab_means": np.asarray(self.lab_means, np.float32),
                                           "lab_cal_distance": np.asarray(self.lab_cal_distance, np.float32)}
        np.savez_compressed(
            buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            class_means=self.class_means.astype(np.float32), basis=self.basis.astype(np.float32),
            eigvals=self.eigvals.astype(np.float32), cal_distance=self.cal_distance.astype(np.float32),
            cal_quality=self.cal_quality.astype(np.float32), cal_combined=self.cal_combined.astype(np.float64), **lab,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "domain statistics") -> DomainStats:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                names = ["class_means", "basis", "eigvals", "cal_distance", "cal_quality", "cal_combined"]
                if meta.get("format") == FORMAT_LAB:
                    names += ["lab_means", "lab_cal_distance"]
                arrays = {k: z[k] for k in names}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise ModelError(f"The {where} file is damaged or not a CellView domain file.", str(exc)) from exc
        if meta.get("format") not in (FORMAT, FORMAT_LAB):
            raise ModelError(f"The {where} file has format {meta.get('format')!r}; this CellView reads "
                             f"{FORMAT} and {FORMAT_LAB}.")
        if list(meta.get("quality_checks", [])) != list(QUALITY_CHECKS):
            raise ModelError(f"The {where} file was made with other pixel checks; fit it again.")
        k, dim = arrays["class_means"].shape if arrays["class_means"].ndim == 2 else (0, 0)
        n = len(arrays["cal_distance"])
        ok = (k >= 1 and arrays["basis"].ndim == 2 and arrays["basis"].shape[0] == dim
              and arrays["eigvals"].shape == (arrays["basis"].shape[1],) and n >= 1
              and arrays["cal_quality"].shape == (n, len(QUALITY_CHECKS)) and arrays["cal_combined"].shape == (n,)
              and float(meta.get("residual_var", 0)) > 0 and np.all(arrays["eigvals"] > 0)
              and all(np.all(np.isfinite(a)) for a in arrays.values()))
        if "lab_means" in arrays:
            ok = ok and (arrays["lab_means"].ndim == 2 and arrays["lab_means"].shape[1] == dim
                         and len(arrays["lab_means"]) >= 1 and arrays["lab_cal_distance"].ndim == 1
                         and len(arrays["lab_cal_distance"]) >= 1)
        threshold = meta.get("threshold")
        if not ok or not isinstance(threshold, (int, float)) or not 0 < float(threshold) < 1:
            raise ModelError(f"The {where} file holds inconsistent arrays; fit it again.")
        return cls(class_means=arrays["class_means"], basis=arrays["basis"], eigvals=arrays["eigvals"],
                   residual_var=float(meta["residual_var"]), cal_distance=arrays["cal_distance"],
                   cal_quality=arrays["cal_quality"], cal_combined=arrays["cal_combined"],
                   threshold=float(threshold), info=dict(meta.get("info") or {}),
                   lab_means=arrays.get("lab_means"), lab_cal_distance=arrays.get("lab_cal_distance"))

    @classmethod
    def load(cls, path: Path, sha256: str | None = None) -> DomainStats:
        """Read and validate; ``sha256`` (from the model sidecar) must match the file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"The model's domain statistics {path.name} cannot be read.", str(exc)) from exc
        if sha256:
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise ModelError(
                    f"The domain statistics {path.name} do not match the model sidecar (sha256 differs); "
                    "they may belong to another model — fit them again with `cellview domain fit`.",
                    f"sidecar {sha256[:12]}…, file {actual[:12]}…",
                )
        return cls.from_bytes(data, where=f"domain statistics {path.name}")


# ----------------------------------------------------------------------------- fitting


def source_weights(sources: Sequence[str] | np.ndarray) -> np.ndarray:
    """Per-tile weights summing to 1 in which every source (dataset) weighs the same."""
    sources = np.asarray(sources)
    w = np.zeros(len(sources))
    names = np.unique(sources)
    for name in names:
        hit = sources == name
        w[hit] = 1.0 / (hit.sum() * len(names))
    return w


def _within_class_scatter(features: np.ndarray, labels: np.ndarray,
                          weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, class means (K, D), eigenvalues descending, eigenvectors) of the weighted within-class scatter."""
    f = np.asarray(features, np.float64)
    classes = np.unique(labels)
    means = np.stack([f[labels == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    w = weights / weights.sum()
    n_eff = 1.0 / float((w * w).sum())  # effective sample size, for the unbiased scale
    cov = (centred * w[:, None]).T @ centred * n_eff / max(n_eff - len(classes), 1.0)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    return classes, means, np.maximum(vals[order], 0.0), vecs[:, order]


def _ppca(eigvals_desc: np.ndarray, d: int) -> tuple[np.ndarray, float]:
    top = np.maximum(eigvals_desc[:d], 1e-12)
    rest = eigvals_desc[d:]
    resid = float(rest.mean()) if len(rest) else float(top[-1])
    resid = max(resid, 1e-12 * float(top[0]), 1e-12)
    return np.maximum(top, resid), resid  # a kept direction never gets less variance than the rest


def _heldout_loglik(stats_means: np.ndarray, classes: np.ndarray, vecs: np.ndarray, vals: np.ndarray, resid: float,
                    features: np.ndarray, labels: np.ndarray) -> float:
    """Mean Gaussian log-likelihood (up to a constant) of held-out tiles under their own class."""
    dim = vecs.shape[0]
    logdet = float(np.log(vals).sum()) + (dim - len(vals)) * np.log(resid)
    known = np.isin(labels, classes)
    if not known.any():
        return -np.inf
    r = np.asarray(features[known], np.float64) - stats_means[np.searchsorted(classes, labels[known])]
    proj = r @ vecs
    maha = np.maximum((r * r).sum(1) - (proj * proj).sum(1), 0) / resid + (proj * proj / vals).sum(1)
    return float(-0.5 * (logdet + maha).mean())


def _bare_stats(means: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray, d: int,
                threshold: float = DEFAULT_THRESHOLD, info: dict[str, Any] | None = None) -> DomainStats:
    """Statistics without calibration (enough for ``distance``), stored as float32 like the file."""
    vals, resid = _ppca(eigvals, d)
    return DomainStats(
        class_means=means.astype(np.float32), basis=eigvecs[:, :d].astype(np.float32), eigvals=vals.astype(np.float32),
        residual_var=float(resid), cal_distance=np.zeros(1, np.float32),
        cal_quality=np.zeros((1, len(QUALITY_CHECKS)), np.float32), cal_combined=np.zeros(1), threshold=threshold,
        info=info or {},
    )


def fit_domain(train_features: np.ndarray, train_labels: np.ndarray, cal_features: np.ndarray,
               cal_labels: np.ndarray, cal_quality: np.ndarray, components: int | None = None,
               threshold: float = DEFAULT_THRESHOLD, info: dict[str, Any] | None = None,
               train_sources: Sequence[str] | np.ndarray | None = None,
               train_groups: Sequence[str] | np.ndarray | None = None, train_quality: np.ndarray | None = None,
               folds: int = 5, seed: int = 0) -> DomainStats:
    """Fit on the training split's tiles, choose ``d`` and calibrate on held-out in-domain tiles.

    - ``cal_*``: the validation split's tiles (``cal_quality`` = their ``tile_quality``).
    - ``train_sources``: the covariance weighs every source (dataset) the same, so a small
      source's variation is not drowned by a large one's (its tiles would otherwise all look far).
    - ``train_groups`` + ``train_quality``: the training tiles join the calibration set with
      out-of-fold distances (``folds`` folds of whole groups: a tile's patient never helped fit the
      statistics that score it), so small sources are calibrated on hundreds of tiles, not a few.
    - ``components`` None: the ``d`` in COMPONENT_CHOICES with the best log-likelihood of the
      validation tiles (their labels are used only for that choice).
    """
    train_features = np.asarray(train_features)
    train_labels = np.asarray(train_labels)
    cal_labels = np.asarray(cal_labels)
    if len(train_features) < 10 or len(cal_features) < 10:
        raise ValueError("Fitting domain statistics needs at least 10 training and 10 held-out tiles.")
    weights = source_weights(train_sources) if train_sources is not None else np.ones(len(train_features))
    classes, means, w, v = _within_class_scatter(train_features, train_labels, weights)
    dim = v.shape[0]
    limit = max(1, min(dim - 1, len(train_features) - len(classes) - 1))
    choices = [d for d in COMPONENT_CHOICES if d <= limit] or [limit]
    if components and components not in choices:
        choices.append(int(components))
    loglik = {}
    for d in choices:
        vals, resid = _ppca(w, d)
        loglik[d] = _heldout_loglik(means, classes, v[:, :d], vals, resid, cal_features, cal_labels)
    chosen = int(components) if components else max(loglik, key=lambda d: loglik[d])
    chosen = max(1, min(chosen, limit))
    info = dict(info or {})
    info.update({
        "method": METHOD, "components": chosen, "feature_dim": int(dim),
        "heldout_loglik_per_components": {str(k): round(val, 3) for k, val in loglik.items()},
        "n_fit_tiles": int(len(train_features)), "classes_fitted": [int(c) for c in classes],
        "covariance": "each training source weighs the same" if train_sources is not None else "every tile the same",
    })
    base = _bare_stats(means, w, v, chosen, threshold, info)
    # Calibrate with the stored (float32) arrays, so the file reproduces its own calibration exactly.
    cal_d = [base.distance(cal_features)]
    cal_q = [np.asarray(cal_quality, np.float32)]
    if train_groups is not None and train_quality is not None and folds > 1:
        oof = _out_of_fold_distances(train_features, train_labels, weights, np.asarray(train_groups), chosen, folds,
                                     seed)
        if oof is not None:
            cal_d.append(oof)
            cal_q.append(np.asarray(train_quality, np.float32))
    calibration = np.concatenate(cal_d)
    quality = np.concatenate(cal_q)
    info["n_calibration_tiles"] = int(len(calibration))
    info["calibration"] = ("validation split's tiles" + (f" + training tiles out of fold ({folds} group folds)"
                                                         if len(cal_d) > 1 else ""))
    staged = DomainStats(base.class_means, base.basis, base.eigvals, base.residual_var, np.sort(calibration),
                         np.sort(quality, axis=0), np.zeros(1), threshold, info)
    p = np.stack([_upper_tail_pvalue(staged.cal_distance, calibration),
                  *[_lower_tail_pvalue(staged.cal_quality[:, j], quality[:, j]) for j in range(len(QUALITY_CHECKS))]],
                 axis=1)
    combined = np.sort(staged.combined(p))
    return DomainStats(staged.class_means, staged.basis, staged.eigvals, staged.residual_var, staged.cal_distance,
                       staged.cal_quality, combined, threshold, info)


def _out_of_fold_distances(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, groups: np.ndarray, d: int,
                           folds: int, seed: int) -> np.ndarray | None:
    """Each training tile's distance under statistics fitted without its group's fold (None: too few groups)."""
    names = np.unique(groups)
    if len(names) < folds:
        return None
    fold_of = dict(zip(names.tolist(), np.random.default_rng(seed).permutation(len(names)) % folds))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    out = np.empty(len(features), np.float32)
    for k in range(folds):
        fit = fold != k
        if len(np.unique(labels[fit])) < 1 or fit.sum() <= d + 1:
            return None
        classes, means, w, v = _within_class_scatter(features[fit], labels[fit], weights[fit])
        out[~fit] = _bare_stats(means, w, v, min(d, v.shape[0] - 1)).distance(features[~fit])
    return out


def lab_min_calibration_tiles(threshold: float) -> int:
    """Out-of-file lab tiles needed to calibrate the lab's means on the lab's own tiles.

    A conformal p-value from n tiles is at least 1 / (n + 1): below 2 / threshold − 1 tiles even a tile far
    beyond every lab tile would stay near or above the threshold, so the lab's means would call anything
    in domain. With fewer, they are calibrated like the training data's means.
    """
    return int(np.ceil(2.0 / threshold)) - 1


def with_lab(stats: DomainStats, features: np.ndarray, labels: Sequence[str] | np.ndarray,
             files: Sequence[str] | np.ndarray, info: dict[str, Any] | None = None) -> DomainStats:
    """These statistics with a lab component: the lab's tissue counts as in domain (module docstring, 6).

    ``features`` are the lab's labelled tiles, ``labels`` their label (one mean per label) and ``files``
    the image or slide each came from. Calibration: each tile's distance to the lab means fitted
    without its file, for labels labelled in at least two files (a tile of a label's only file has no
    honest out-of-file mean of its own). With fewer such tiles than ``lab_min_calibration_tiles`` the
    lab's means are calibrated with the training tiles' distances instead. A lab component already
    there (a model adapted before) is kept: its means and calibration join the new ones.
    """
    f = np.asarray(features, np.float32)
    labels = np.asarray(labels).astype(str)
    files = np.asarray(files).astype(str)
    if f.ndim != 2 or f.shape[1] != stats.feature_dim or len(f) != len(labels) or len(f) != len(files) or not len(f):
        raise ModelError(f"Lab tiles need {stats.feature_dim} features each, one label and one file per tile.")
    names = sorted(set(labels.tolist()))
    means = np.stack([f[labels == n].mean(axis=0) for n in names]).astype(np.float32)
    in_two_files = [n for n in names if len(np.unique(files[labels == n])) >= 2]
    cal: list[np.ndarray] = []
    for name in np.unique(files):
        mine = files == name
        rest = ~mine
        if not rest.any():
            continue
        counted = np.isin(labels[mine], in_two_files)
        if not counted.any():
            continue
        other = np.stack([f[rest & (labels == n)].mean(axis=0) for n in names if (rest & (labels == n)).any()])
        probe = replace(stats, lab_means=other.astype(np.float32), lab_cal_distance=np.zeros(1, np.float32))
        cal.append(probe.lab_distance(f[mine][counted]))
    calibration = np.concatenate(cal) if cal else np.zeros(0, np.float32)
    lab_info = dict(info or {})
    lab_info.update({"labels": names, "n_tiles": int(len(f)), "n_files": int(len(np.unique(files))),
                     "n_calibration_tiles": int(len(calibration))})
    if len(calibration) < lab_min_calibration_tiles(stats.threshold):
        calibration = stats.cal_distance
        lab_info["calibration"] = (f"the training data's held-out tiles (fewer than "
                                   f"{lab_min_calibration_tiles(stats.threshold)} lab tiles of labels labelled in two "
                                   "or more files, too few to calibrate on the lab's own)")
    else:
        lab_info["calibration"] = "the lab's tiles, each scored against means fitted without its image or slide"
    if stats.has_lab:
        means = np.vstack([stats.lab_means, means])
        calibration = np.concatenate([stats.lab_cal_distance, calibration])
    new_info = dict(stats.info)
    new_info["lab"] = [*stats.info.get("lab", []), lab_info]
    return replace(stats, lab_means=means.astype(np.float32), lab_cal_distance=np.sort(calibration).astype(np.float32),
                   info=new_info)


# ----------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class DomainInfo:
    """What a result records about the domain statistics used (JSON-serialisable)."""

    sha256: str
    method: str
    threshold: float
    training_data: str
    n_fit_tiles: int = 0
    n_calibration_tiles: int = 0

    @classmethod
    def from_stats(cls, stats: DomainStats, sha256: str) -> DomainInfo:
        return cls(sha256=sha256, method=str(stats.info.get("method", METHOD)), threshold=stats.threshold,
                   training_data=stats.training_data, n_fit_tiles=int(stats.info.get("n_fit_tiles", 0)),
                   n_calibration_tiles=int(stats.info.get("n_calibration_tiles", 0)))


NOT_AVAILABLE = "domain score: not available for this model"
"""What every output says when the model has no domain statistics."""


@dataclass(frozen=True)
class DomainBanner:
    """The viewer/kiosk banner decision for one result."""

    show: bool
    text: str
    in_domain_fraction: float | None  # over the tiles the decision looked at (see tissue_tile_fraction)
    headline: str = ""  # the warning without its figure: "This tissue does not look like …; the calls are unreliable."


TISSUE_TILE = 0.5
"""Tiles at least this much covered by tissue decide whether the tissue is like the training data."""


def auroc(in_scores: Sequence[float] | np.ndarray, out_scores: Sequence[float] | np.ndarray) -> float:
    """Probability that an in-domain tile scores higher than an out-of-domain one (ties count half)."""
    a = np.asarray(in_scores, np.float64)
    b = np.asarray(out_scores, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    both = np.concatenate([a, b])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of tied values, 1-based
    return float((ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2.0) / (len(a) * len(b)))
