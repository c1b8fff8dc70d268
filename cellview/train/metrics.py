"""Image-level metrics and calibration for training runs (NumPy only).

Kept apart from ``evaluate`` (plots, checks, ONNX) and ``train`` so both can use them without
importing each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellview.analysis.classifier import probabilities
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import category_probabilities


def image_probs(tile_logits: np.ndarray, tile_sample: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of calibrated tile probabilities per image → (probs, sample ids in sorted order)."""
    p = probabilities(np.asarray(tile_logits), "softmax", temperature)
    ids, inv = np.unique(tile_sample, return_inverse=True)
    out = np.zeros((len(ids), p.shape[1]))
    np.add.at(out, inv, p)
    out /= np.bincount(inv)[:, None]
    return out, ids


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    if len(y) == 0:
        return float("nan")
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(y), np.asarray(pred)), 1)
    return m


def report(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    m = confusion(y, pred, len(names))
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        tp, fp, fn = m[i, i], m[:, i].sum() - m[i, i], m[i, :].sum() - m[i, i]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[name] = {"precision": round(float(p), 4), "recall": round(float(r), 4),
                     "f1": round(float(2 * p * r / (p + r)) if p + r else 0.0, 4), "support": int(m[i].sum())}
    present = [v for v in out.values() if v["support"]]
    out["macro avg"] = {k: round(float(np.mean([v[k] for v in present])), 4) for k in ("precision", "recall", "f1")}
    out["macro avg"]["support"] = int(len(y))
    return out


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-label confidence, with the per-bin table."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total, table = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs(correct[m].mean() - conf[m].mean())
            total += m.mean() * gap
            table.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()),
                          "accuracy": float(correct[m].mean()), "confidence": float(conf[m].mean())})
    return float(total), table


def nll(logits: np.ndarray, y: np.ndarray, t: float, tile_sample: np.ndarray | None = None) -> float:
    """Negative log-likelihood of tiles, or of images (mean tile probabilities) when ``tile_sample`` is given."""
    if tile_sample is not None:
        probs, ids = image_probs(logits, tile_sample, t)
        yi = _image_labels(y, tile_sample, ids)
        return float(-np.log(np.maximum(probs[np.arange(len(ids)), yi], 1e-12)).mean())
    z = np.asarray(logits, np.float64) / t
    z = z - z.max(1, keepdims=True)
    return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())


def _image_labels(tile_y: np.ndarray, tile_sample: np.ndarray, ids: np.ndarray) -> np.ndarray:
    first = {int(s): int(v) for s, v in zip(tile_sample, tile_y, strict=True)}
    return np.array([first[int(i)] for i in ids])


def fit_temperature(logits: np.ndarray, y: np.ndarray, tile_sample: np.ndarray | None = None) -> float:
    """Temperature minimising validation NLL (log-grid then a finer grid: robust, no optimiser state).

    With ``tile_sample`` the NLL is taken on image-level probabilities (mean of calibrated tiles), the
    number CellView reports for a plain image.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
    best = min(grid, key=lambda t: nll(logits, y, t, tile_sample))
    fine = np.exp(np.linspace(np.log(best) - 0.05, np.log(best) + 0.05, 51))
    return round(float(min(fine, key=lambda t: nll(logits, y, t, tile_sample))), 4)


def to_categories(probs: np.ndarray, y: np.ndarray, class_categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Category probabilities (summed over each category's classes, as CellView does) and category labels."""
    idx = np.array([CATEGORIES.index(c) for c in class_categories])
    return category_probabilities(probs, tuple(class_categories), "softmax"), idx[y]


def summarise(probs: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, Any]:
    pred = probs.argmax(1)
    e, table = ece(probs, y)
    return {
        "n": int(len(y)),
        "accuracy": round(float((pred == y).mean()), 4) if len(y) else None,
        "balanced_accuracy": round(balanced_accuracy(y, pred), 4),
        "ece": round(e, 4),
        "report": report(y, pred, names),
        "confusion": confusion(y, pred, len(names)).tolist(),
        "reliability": table,
    }
