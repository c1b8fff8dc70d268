"""The adapted head: weighted softmax regression on the base model's pooled features, pulled towards the
shipped head (``fit_head``), and what a lab's labels allow (``label_targets``).

No network is trained and nothing needs torch. The pull keeps the base model's knowledge where the lab
gave no labels; the method was chosen over replaying a bank of the training tiles' features by
leave-one-source-out (``cellview evaluate --adaptation``; figures in the colon model's card). Labels may
name a model class or a category (then any class of that category is right: the loss is on the
category's probability). Every labelled category weighs the same, and within it every labelled image
or region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellview.analysis.model_spec import CATEGORIES, ModelSpec
from cellview.lab.labels import LabelError, LabelSource


@dataclass(frozen=True)
class AdaptSettings:
    """How the head is refitted (the defaults are the ones the leave-one-source-out protocol chose)."""

    l2_to_base: float = 1.8e-4  # pull towards the base head, per mean square of the base weights (0.01 for colon-he)
    iterations: int = 300
    learning_rate: float = 0.075  # Adam's step, as a fraction of the base weights' RMS (0.01 for colon-he)
    max_tiles_per_file: int = 1000  # a whole slide labelled by one row: a random sample of its tiles
    max_folds: int = 20  # more files than this: grouped folds instead of one fold per file
    blocks: int = 4  # a category with one labelled region: its tiles are held out in up to this many spatial blocks
    interval: float = 0.9  # the before / after's bootstrap interval (5th to 95th percentile)
    bootstrap: int = 2000
    measure: str = "items"  # what the decision compares (lab.decision.MEASURES)
    seed: int = 0


DEFAULT_SETTINGS = AdaptSettings()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def labelled_classes(allowed: np.ndarray, class_categories: Sequence[str]) -> np.ndarray:
    """The classes of every category some label allows: the only ones the labels say anything about."""
    cats = np.asarray(class_categories)
    named = set(cats[np.asarray(allowed, bool).any(axis=0)].tolist())
    return np.array([c in named for c in cats], bool)


def fit_head(features: np.ndarray, allowed: np.ndarray, weights: np.ndarray, base_weight: np.ndarray,
             base_bias: np.ndarray, settings: AdaptSettings = DEFAULT_SETTINGS,
             class_categories: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A linear head for the labelled tiles, pulled towards the base head.

    Minimises ``Σ wᵢ · −log Σ_{c ∈ allowedᵢ} softmax_A(W xᵢ + b)_c / Σ w + λ/2 (‖W − W₀‖² + ‖b − b₀‖²) / s²``
    by full-batch Adam from (W₀, b₀), where s is the RMS of W₀: a class label allows one class, a
    category label all of its classes. The pull and Adam's step (``learning_rate`` · s) follow the base
    head's scale, so a head trained at another scale moves as far in as many steps. NumPy only,
    deterministic, about a second for a few thousand tiles.

    With ``class_categories``, the softmax runs over A, the classes of the categories the labels name
    (``labelled_classes``): labels of two categories say nothing about the third, so its rows keep the
    base head's weights and the others are not pushed away from it (without this, 15 images with no
    normal one among them cost a training source's unseen patients 0.03–0.1 of balanced accuracy).
    """
    x = np.asarray(features, np.float64)
    a = np.asarray(allowed, bool)
    active = (labelled_classes(a, class_categories) if class_categories is not None
              else np.ones(a.shape[1], bool))
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    w0 = np.asarray(base_weight, np.float64)
    b0 = np.asarray(base_bias, np.float64)
    weight, bias = w0.copy(), b0.copy()
    scale = max(float(np.sqrt((w0 * w0).mean())), 0.1)
    lam = settings.l2_to_base / scale**2
    rate = settings.learning_rate * scale
    m_w, v_w, m_b, v_b = np.zeros_like(weight), np.zeros_like(weight), np.zeros_like(bias), np.zeros_like(bias)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, settings.iterations + 1):
        z = x @ weight.T + bias
        z[:, ~active] = -np.inf
        p = _softmax(z)
        q = p * a
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        g = (p - q) * w[:, None]  # gradient of the loss on the logits
        g_w = g.T @ x + lam * (weight - w0)
        g_b = g.sum(axis=0) + lam * (bias - b0)
        m_w = beta1 * m_w + (1 - beta1) * g_w
        v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
        step = rate * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        weight -= step * m_w / (np.sqrt(v_w) + eps)
        bias -= step * m_b / (np.sqrt(v_b) + eps)
    return weight.astype(np.float32), bias.astype(np.float32)


def label_weights(categories: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Every labelled category the same total, within it every image or region the same, then every tile."""
    categories = np.asarray(categories)
    items = np.asarray(items)
    w = np.zeros(len(categories))
    present = np.unique(categories)
    for c in present:
        in_c = categories == c
        its = np.unique(items[in_c])
        for it in its:
            m = in_c & (items == it)
            w[m] = 1.0 / m.sum() / len(its) / len(present)
    return w


def source_labels(source: LabelSource) -> list[str]:
    """The labels one image or slide gives (its own, or its regions' but Ignore*)."""
    return [source.label] if source.label is not None else [r.label for r in source.regions if not r.is_ignore]


@dataclass(frozen=True)
class LabelTarget:
    """A label as the model understands it: the classes it allows and their category."""

    label: str  # canonical: the class name or the category, as the model spells it
    allowed: tuple[bool, ...]
    category: str


def label_targets(labels: Sequence[str], spec: ModelSpec) -> dict[str, LabelTarget]:
    """Each distinct label → its target; LabelError naming every valid name when one is unknown."""
    classes = {c.lower(): i for i, c in enumerate(spec.class_names)}
    present = [c for c in CATEGORIES if c in spec.class_categories]
    out: dict[str, LabelTarget] = {}
    unknown = []
    for label in dict.fromkeys(labels):
        key = label.strip().lower()
        if key in classes:
            i = classes[key]
            allowed = tuple(j == i for j in range(spec.num_classes))
            out[label] = LabelTarget(spec.class_names[i], allowed, spec.class_categories[i])
        elif key in present:
            allowed = tuple(c == key for c in spec.class_categories)
            out[label] = LabelTarget(key, allowed, key)
        else:
            unknown.append(label)
    if unknown:
        valid = ", ".join(dict.fromkeys([*present, *spec.class_names]))
        raise LabelError(f"Unknown label{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(u) for u in unknown)} for the model {spec.name}: use a category or a class "
                         f"of the model (case does not matter): {valid}.")
    return out

