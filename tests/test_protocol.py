"""Leave-one-source-out / grouped CV folds and the image-level rules (NumPy only: no torch needed)."""

from __future__ import annotations

import numpy as np

from cellview.analysis.results import image_calls
from cellview.train.data import Sample
from cellview.train.protocol import make_folds, metrics

CATS = ["normal", "benign", "malignant"]  # class order of the synthetic model: one class per category


def _samples(n_per_source: int = 30) -> list[Sample]:
    out = []
    for src in ("a", "b", "c"):
        for i in range(n_per_source):
            out.append(Sample(f"{src}{i}.png", i % 3, f"{src}:patient{i // 4}", src, 1.0))
    return out


def test_folds_hold_out_each_source_and_never_split_a_group():
    samples = _samples()
    groups = np.array([s.group for s in samples])
    loso = make_folds(samples, "loso")
    assert [f.name for f in loso] == ["without a", "without b", "without c"]
    for f in loso:
        held = {samples[i].source for i in np.flatnonzero(f.test)}
        assert len(held) == 1 and not (f.train & f.test).any() and (f.train | f.test).all()
    cv = make_folds(samples, "cv", 5, seed=1)
    assert np.array_equal(np.sum([f.test for f in cv], axis=0), np.ones(len(samples)))  # every image tested once
    for f in cv:
        assert not set(groups[f.test]) & set(groups[f.train])


def test_vote_weighs_tiles_by_confidence_and_differs_from_the_mean():
    # One image, three tiles: two weakly malignant, one very confidently normal.
    probs = np.array([[0.30, 0.05, 0.65], [0.30, 0.05, 0.65], [0.98, 0.01, 0.01]], np.float32)
    tile_sample = np.zeros(3, np.int64)
    vote, scores, _ = image_calls(probs, tile_sample, 1, CATS, "vote")
    mean, _, _ = image_calls(probs, tile_sample, 1, CATS, "mean")
    # categories are indexed as cellview.analysis.model_spec.CATEGORIES: malignant 0, benign 1, normal 2
    assert vote[0] == 0 and np.isclose(scores[0].sum(), 1.0)  # 0.65 + 0.65 malignant votes beat 0.98 normal
    assert mean[0] == 2  # the mean probability of normal (0.527) beats malignant (0.437)


def test_images_without_tiles_count_as_wrong():
    labels = np.array([2, 2, 0])  # malignant, malignant, normal
    sources = np.array(["a", "a", "a"])
    logits = np.array([[0, 0, 5.0], [5.0, 0, 0]], np.float32)  # image 0: malignant; image 2: normal
    tile_sample = np.array([0, 2])
    m = metrics(logits, tile_sample, np.ones(3, bool), labels, sources, ["n", "b", "m"], CATS)
    assert m["a"]["images_without_tiles"] == 1
    assert m["a"]["vote"]["category_recall"]["malignant"] == 0.5  # image 1 had no tile: no call, wrong
    assert m["a"]["vote"]["category_recall"]["normal"] == 1.0
    assert m["a"]["vote"]["category_balanced_accuracy"] == 0.75
    assert m["a"]["vote"]["category_confusion"][0] == [1, 0, 0]  # the missing image is left out of the matrix
