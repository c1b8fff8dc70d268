"""Stain normalisation (Macenko, Reinhard), the model's reference stain, test-time augmentation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier, tta_views
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import run_analysis
from cellview.analysis.results import AnalysisParams
from cellview.analysis.stain import (
    STAIN_METHODS,
    StainReference,
    estimate_macenko,
    estimate_reference,
    fit_transform,
)
from cellview.base.errors import AnalysisError, ModelError
from cellview.testing.synthetic import (
    make_spatial_toy_model,
    make_toy_model,
    synthetic_he,
    synthetic_he_amounts,
    write_pyramid_tiff,
)

H1, E1 = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
H2, E2 = np.array([0.45, 0.80, 0.40]), np.array([0.25, 0.92, 0.30])  # another lab's dyes
LAB_A = np.stack([H1 / np.linalg.norm(H1), E1 / np.linalg.norm(E1)])
LAB_B = np.stack([H2 / np.linalg.norm(H2), E2 / np.linalg.norm(E2)])


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same tissue stained in two labs: other stain vectors, more haematoxylin, less eosin."""
    amounts = synthetic_he_amounts(256, seed)
    return synthetic_he(amounts, LAB_A), synthetic_he(amounts * np.array([1.5, 0.6]), LAB_B)


def _tissue_diff(a: np.ndarray, b: np.ndarray) -> float:
    tissue = a.min(axis=2) < 220
    return float(np.abs(a.astype(int) - b.astype(int))[tissue].mean())


def test_macenko_recovers_the_stain_vectors():
    img, _ = _pair()
    est = estimate_macenko(img).matrix()
    assert float(est[0] @ LAB_A[0]) > 0.99  # haematoxylin
    assert float(est[1] @ LAB_A[1]) > 0.99  # eosin


@pytest.mark.parametrize(("method", "max_left"), [("macenko", 0.15), ("reinhard", 0.5)])
def test_normalisation_undoes_a_synthetic_stain_change(method, max_left):
    reference_img, other_lab = _pair(0)
    ref = estimate_reference([reference_img])
    before = _tissue_diff(other_lab, reference_img)
    transform = fit_transform(method, other_lab, ref)
    assert transform.method == method and not transform.note
    after = _tissue_diff(transform.apply(other_lab), reference_img)
    assert before > 15  # grey levels on tissue pixels
    assert after < before * max_left, (before, after)  # Macenko models this change exactly, Reinhard roughly
    # A different field of the same lab: the slide's estimate carries over to tissue it was not fitted on.
    _, other_field = _pair(1)
    ref_field, _ = _pair(1)
    assert _tissue_diff(transform.apply(other_field), ref_field) < _tissue_diff(other_field, ref_field) / 2


def test_macenko_keeps_white_background_white():
    reference_img, other_lab = _pair(0)
    out = fit_transform("macenko", other_lab, estimate_reference([reference_img])).apply(other_lab)
    background = other_lab.min(axis=2) >= 250
    assert background.any() and out[background].min() >= 245


def test_blank_tile_is_left_alone_with_a_note():
    blank = np.full((64, 64, 3), 250, np.uint8)
    ref = estimate_reference([_pair(0)[0]])
    transform = fit_transform("macenko", blank, ref)
    assert transform.method == "none" and "skipped" in transform.note
    assert np.array_equal(transform.apply(blank), blank)


def test_stain_reference_round_trip_and_validation():
    ref = estimate_reference([_pair(0)[0]], note="test")
    again = StainReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert np.allclose(again.macenko.matrix(), ref.macenko.matrix(), atol=1e-5)
    assert again.note == "test"
    bad = ref.to_dict()
    bad["macenko"]["max_concentrations"] = [1.0, -2.0]
    with pytest.raises(ModelError, match="max_concentrations"):
        StainReference.from_dict(bad)
    bad = ref.to_dict()
    bad["reinhard"]["lab_std"] = [1.0, 2.0]
    with pytest.raises(ModelError, match="lab_std"):
        StainReference.from_dict(bad)
    bad = ref.to_dict()
    bad["macenko"]["stain_matrix"] = [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    with pytest.raises(ModelError, match="unit"):
        StainReference.from_dict(bad)
    with pytest.raises(ModelError, match="stain_reference"):
        StainReference.from_dict({"macenko": []})


def test_sidecar_stain_reference_is_validated_on_load(tmp_path):
    ref = estimate_reference([_pair(0)[0]]).to_dict()
    ok = ModelSpec.load(make_toy_model(tmp_path / "ok", sidecar_overrides={"stain_reference": ref}))
    assert ok.stain_reference is not None
    old = ModelSpec.load(make_toy_model(tmp_path / "old"))
    assert old.stain_reference is None  # a sidecar from before keeps working
    ref["reinhard"]["lab_mean"] = ["a", 1, 2]
    with pytest.raises(ModelError, match="lab_mean"):
        ModelSpec.load(make_toy_model(tmp_path / "bad", sidecar_overrides={"stain_reference": ref}))


def _he_slide(tmp_path, seed: int = 0):
    amounts = np.concatenate([synthetic_he_amounts(256, seed + k) for k in range(2)], axis=1)
    return write_pyramid_tiff(tmp_path / "he.tiff", synthetic_he(amounts * np.array([1.5, 0.6]), LAB_B), 1.0, levels=1)


def test_analysis_with_stain_normalisation(tmp_path):
    ref = estimate_reference([_pair(0)[0]])
    model = make_toy_model(tmp_path / "m", patch_px=64, spacing_um=1.0,
                           sidecar_overrides={"stain_reference": ref.to_dict()})
    clf = OnnxClassifier(ModelSpec.load(model), device="cpu")
    slide = _he_slide(tmp_path)
    plain = run_analysis(slide, clf, AnalysisParams(tissue_threshold=0.0))
    normed = run_analysis(slide, clf, AnalysisParams(tissue_threshold=0.0, stain_normalize="macenko"))
    assert plain.stain == {} and normed.stain["applied"] == "macenko" and normed.stain["note"] == ""
    assert not np.allclose(plain.probs, normed.probs)  # the toy model reads colour: normalisation changes it
    assert "stain_normalize" not in plain.params.cache_dict()
    assert normed.params.cache_dict()["stain_normalize"] == "macenko"
    from cellview.outputs.export import metadata_dict

    meta = metadata_dict(normed)
    assert meta["parameters"]["stain_normalize"] == "macenko" and meta["stain_normalization"]["applied"] == "macenko"


def test_stain_normalisation_without_reference_is_a_clear_error(tmp_path):
    clf = OnnxClassifier(ModelSpec.load(make_toy_model(tmp_path / "m", patch_px=64, spacing_um=1.0)), device="cpu")
    with pytest.raises(AnalysisError, match="no reference stain"):
        run_analysis(_he_slide(tmp_path), clf, AnalysisParams(stain_normalize="reinhard"))


def test_params_reject_unknown_choices():
    assert STAIN_METHODS == ("none", "macenko", "reinhard")
    with pytest.raises(ValueError, match="stain"):
        AnalysisParams(stain_normalize="vahadane")
    with pytest.raises(ValueError, match="test-time"):
        AnalysisParams(tta="d8")
    assert AnalysisParams.from_dict(AnalysisParams(tta="d4").to_dict()).tta == "d4"


# ----------------------------------------------------------------------------- test-time augmentation


def test_tta_views_are_the_flips_and_rotations():
    tiles = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    flips, d4 = tta_views(tiles, "flips"), tta_views(tiles, "d4")
    assert len(flips) == 4 and len(d4) == 8
    rot90 = np.rot90(tiles, 1, axes=(1, 2))
    assert len({v.tobytes() for v in d4}) == 8 and any(np.array_equal(v, rot90) for v in d4)


def test_tta_makes_predictions_invariant(tmp_path):
    clf = OnnxClassifier(ModelSpec.load(make_spatial_toy_model(tmp_path / "s", patch_px=16)), device="cpu")
    tiles = np.random.default_rng(1).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    hflip = np.ascontiguousarray(tiles[:, :, ::-1])
    rot = np.ascontiguousarray(np.rot90(tiles, 1, axes=(1, 2)))
    assert not np.allclose(clf.predict(tiles), clf.predict(rot), atol=1e-3)  # the model itself is not invariant
    assert np.allclose(clf.predict(tiles, "flips"), clf.predict(hflip, "flips"), atol=1e-6)
    assert not np.allclose(clf.predict(tiles, "flips"), clf.predict(rot, "flips"), atol=1e-3)
    assert np.allclose(clf.predict(tiles, "d4"), clf.predict(rot, "d4"), atol=1e-6)
    mean = np.mean([clf.predict(v) for v in tta_views(tiles, "d4")], axis=0)
    assert np.allclose(clf.predict(tiles, "d4"), mean, atol=1e-6)


def test_analysis_with_tta_averages_views(tmp_path):
    clf = OnnxClassifier(ModelSpec.load(make_spatial_toy_model(tmp_path / "s", patch_px=16, spacing_um=1.0)),
                         device="cpu")
    rng = np.random.default_rng(2)
    img = cv2.resize(rng.integers(0, 200, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    slide = write_pyramid_tiff(tmp_path / "s.tiff", img, 1.0, levels=1)
    plain = run_analysis(slide, clf, AnalysisParams(tissue_threshold=0.0))
    d4 = run_analysis(slide, clf, AnalysisParams(tissue_threshold=0.0, tta="d4"))
    assert d4.params.cache_dict()["tta"] == "d4" and "tta" not in plain.params.cache_dict()
    assert not np.allclose(plain.probs, d4.probs, atol=1e-4)


def test_tta_with_domain_statistics_scores_the_tile_as_read(tmp_path):
    from cellview.testing.synthetic import make_toy_domain, square_tile

    path = make_toy_model(tmp_path / "d", patch_px=64, spacing_um=1.0, features=True)
    make_toy_domain(path)
    clf = OnnxClassifier(ModelSpec.load(path), device="cpu")
    tiles = np.stack([square_tile((220, 30, 40), (8, 40)), square_tile((40, 60, 220), (30, 4))])
    probs, score = clf.classify(tiles)
    probs_d4, score_d4 = clf.classify(tiles, tta="d4")
    assert np.allclose(score_d4, score)  # the domain score is the tile's, not an average over views
    assert np.allclose(probs_d4, clf.predict(tiles, "d4"))  # mean-colour toy: views agree, so does TTA
    assert np.allclose(probs_d4, probs, atol=1e-5)
