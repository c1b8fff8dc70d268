"""Out-of-domain score: the statistics, their file and sidecar entry, and the score in every output."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.cache import ResultCache, result_from_bytes, result_to_bytes
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import (
    NOT_AVAILABLE,
    DomainStats,
    auroc,
    fit_domain,
    tile_quality,
)
from cellview.analysis.model_spec import CATEGORIES, ModelSpec
from cellview.analysis.morphology import malignant_regions
from cellview.analysis.pipeline import BatchDone, analyze, run_analysis
from cellview.analysis.results import AnalysisParams, domain_banner
from cellview.base.errors import ModelError
from cellview.outputs.export import csv_text, geojson_dict, metadata_dict
from cellview.testing.synthetic import (
    SYNTH_TILE,
    TOY_COLORS,
    make_toy_domain,
    make_toy_model,
    synthetic_slide_rgb,
    toy_domain_tiles,
    write_pyramid_tiff,
)
from cellview.train.domain import ARTEFACTS, INK_COLOURS, ink_strokes, make_artefacts

ODD = (230, 200, 40)  # yellow: the toy model calls it malignant (most red), but it is no class colour
ODD_BLOCK = (7, 10, 12, 16)  # rows 7–9, cols 12–15 of the synthetic slide: 12 tiles, apart from the others


# ----------------------------------------------------------------------------- statistics


def _gaussian_classes(rng, n, dim=40, shift=0.0):
    """Three classes sharing a covariance with 6 large directions and 34 small equal ones (a PPCA model)."""
    means = np.stack([np.eye(dim)[k] * 6 for k in range(3)])
    scales = np.r_[np.linspace(3.0, 1.0, 6), np.full(dim - 6, 0.3)]
    labels = rng.integers(0, 3, n)
    x = means[labels] + rng.normal(size=(n, dim)) * scales
    x[:, 6:] += shift  # off the training data along the small directions only
    return x.astype(np.float32), labels


def _quality(n):
    return np.tile(np.array([[1.0, 5.0, 0.0]], np.float32), (n, 1))


def test_distance_is_mahalanobis_under_the_ppca_covariance():
    rng = np.random.default_rng(0)
    x, y = _gaussian_classes(rng, 2000)
    cal, cy = _gaussian_classes(rng, 400)
    stats = fit_domain(x, y, cal, cy, _quality(len(cal)), components=4)
    u, lam, s2 = stats.basis.astype(np.float64), stats.eigvals.astype(np.float64), stats.residual_var
    cov = u @ np.diag(lam) @ u.T + s2 * (np.eye(u.shape[0]) - u @ u.T)
    inv = np.linalg.inv(cov)
    q = x[:50].astype(np.float64)
    brute = np.min([np.einsum("ni,ij,nj->n", q - m, inv, q - m) for m in stats.class_means.astype(np.float64)], axis=0)
    np.testing.assert_allclose(stats.distance(x[:50]), brute, rtol=1e-4)


def test_scores_are_calibrated_on_held_out_tiles_and_separate_shifted_ones():
    rng = np.random.default_rng(1)
    x, y = _gaussian_classes(rng, 3000)
    cal, cy = _gaussian_classes(rng, 600)
    stats = fit_domain(x, y, cal, cy, _quality(len(cal)))
    new_in, _ = _gaussian_classes(rng, 2000)
    far, _ = _gaussian_classes(rng, 500, shift=0.4)  # 1.3 σ per small direction, unremarkable on its own
    s_in = stats.score(new_in, quality=_quality(len(new_in)))
    s_far = stats.score(far, quality=_quality(len(far)))
    assert s_in.min() > 0 and s_in.max() <= 1
    assert 0.92 < stats.in_domain(s_in).mean() < 0.98  # the 95 % rule on new in-domain tiles
    assert stats.in_domain(s_far).mean() < 0.2
    assert auroc(s_in, s_far) > 0.95
    # The held-out likelihood picked the smallest choice that holds the 6 large directions.
    assert stats.components == 8


def test_a_lab_s_tissue_joins_the_domain_and_tissue_unlike_both_stays_out():
    from cellview.analysis.domain import lab_min_calibration_tiles, with_lab

    rng = np.random.default_rng(3)
    x, y = _gaussian_classes(rng, 3000)
    cal, cy = _gaussian_classes(rng, 600)
    stats = fit_domain(x, y, cal, cy, _quality(len(cal)))
    lab, _ = _gaussian_classes(rng, 900, shift=0.4)  # a lab whose tissue is off the training data
    far, _ = _gaussian_classes(rng, 300, shift=1.2)  # and tissue unlike the lab's as well
    files = np.arange(len(lab)) // 20  # 45 "images" of 20 tiles
    labels = np.where(files % 2 == 0, "benign", "normal")
    fit = files < 20  # 400 labelled tiles; the rest of the lab is new
    adapted = with_lab(stats, lab[fit], labels[fit], files[fit].astype(str))
    assert adapted.has_lab and len(adapted.lab_cal_distance) == 400
    assert adapted.info["lab"][0]["calibration"].startswith("the lab's tiles")
    new_lab = lab[~fit]
    assert stats.in_domain(stats.score(new_lab, quality=_quality(len(new_lab)))).mean() < 0.2
    assert adapted.in_domain(adapted.score(new_lab, quality=_quality(len(new_lab)))).mean() > 0.85
    assert adapted.in_domain(adapted.score(far, quality=_quality(len(far)))).mean() < 0.1
    fresh, _ = _gaussian_classes(rng, 500)
    assert adapted.in_domain(adapted.score(fresh, quality=_quality(len(fresh)))).mean() > 0.9  # training-like too
    # Too few lab tiles to calibrate on (a p-value from n tiles is at least 1 / (n + 1)): the lab's means are
    # calibrated like the training data's, so far tiles cannot slip in.
    assert lab_min_calibration_tiles(0.05) == 39
    few = files < 2  # one image per label: no tile has an out-of-file mean of its own label
    small = with_lab(stats, lab[few], labels[few], files[few].astype(str))
    assert "training data's held-out tiles" in small.info["lab"][0]["calibration"]
    np.testing.assert_array_equal(small.lab_cal_distance, stats.cal_distance)
    assert small.in_domain(small.score(far, quality=_quality(len(far)))).mean() < 0.1
    # The file keeps the lab (format 2) and reads back the same scores.
    again = DomainStats.from_bytes(adapted.to_bytes())
    np.testing.assert_allclose(again.score(far[:20], quality=_quality(20)), adapted.score(far[:20], quality=_quality(20)))


def _he_like_tiles(n=12, px=64, seed=0):
    """Pink stroma with purple nuclei-sized blobs and noise: H&E colours with texture."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, px, px, 3), np.uint8)
    for i in range(n):
        t = np.zeros((px, px, 3), np.float32) + (240, 190, 220)
        for _ in range(25):
            cv2.circle(t, (int(rng.integers(0, px)), int(rng.integers(0, px))), int(rng.integers(2, 5)),
                       (110.0, 55.0, 150.0), -1)
        out[i] = np.clip(t + rng.normal(0, 10, t.shape), 0, 255).astype(np.uint8)
    return out


def test_a_small_source_is_not_called_out_of_domain():
    """Source-balanced covariance + out-of-fold calibration keep more of a minority source's new tiles in domain."""
    rng = np.random.default_rng(2)
    dim = 30

    def draw(n, source):
        labels = rng.integers(0, 2, n)
        scale = np.full(dim, 0.3)
        scale[:4] = 2.0
        if source == "small":
            scale[10:20] = 0.5  # this source varies more where the big one varies little
        return (np.eye(dim)[labels] * 6 + rng.normal(size=(n, dim)) * scale).astype(np.float32), labels

    big, yb = draw(3000, "big")
    small, ys = draw(240, "small")
    x, y = np.concatenate([big, small]), np.concatenate([yb, ys])
    sources = np.array(["big"] * 3000 + ["small"] * 240)
    groups = np.array([f"{s}{i // 8}" for i, s in enumerate(sources)])
    cal, cy = draw(300, "big")  # the validation split happens to hold the big source only
    new_small, _ = draw(400, "small")
    q = _quality
    plain = fit_domain(x, y, cal, cy, q(len(cal)))
    balanced = fit_domain(x, y, cal, cy, q(len(cal)), train_sources=sources, train_groups=groups,
                          train_quality=q(len(x)))
    kept_plain = plain.in_domain(plain.score(new_small, quality=q(400))).mean()
    kept = balanced.in_domain(balanced.score(new_small, quality=q(400))).mean()
    assert kept > kept_plain + 0.1  # 0.61 vs 0.43 with this seed
    new_big, _ = draw(400, "big")
    assert balanced.in_domain(balanced.score(new_big, quality=q(400))).mean() > 0.9
    assert balanced.info["n_calibration_tiles"] == 300 + len(x)
    far = new_small + 1.5 * (np.arange(dim) >= 20)  # off both sources' spread
    assert balanced.in_domain(balanced.score(far, quality=q(400))).mean() < 0.1


def test_pixel_checks_flag_glass_blur_and_ink():
    textured = _he_like_tiles()
    q = tile_quality(textured)
    glass, blur = (tile_quality(make_artefacts(textured, kind, 0)) for kind in ("glass", "blur"))
    assert (glass[:, 0] < 0.1).all() and (q[:, 0] > 0.9).all()  # tissue share
    assert (blur[:, 1] < q[:, 1] - 1).all()  # log Laplacian variance drops when out of focus
    assert (q[:, 2] == 0).all()
    rng = np.random.default_rng(0)
    # Green marker: the ink-coloured share (negated) grows. (Black and blue are measured on real tissue
    # by `cellview domain evaluate`; blue shares haematoxylin's hue and is left to the features.)
    inked = tile_quality(np.stack([ink_strokes(t, INK_COLOURS["green"], rng) for t in textured]))
    assert (inked[:, 2] < -0.02).all() and inked[:, 2].mean() < -0.1


def test_artefacts_are_deterministic_and_keep_shape():
    tiles, _ = toy_domain_tiles(n_per_class=1)
    for kind in ARTEFACTS:
        a, b = make_artefacts(tiles, kind, 3), make_artefacts(tiles, kind, 3)
        assert a.shape == tiles.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError):
        make_artefacts(tiles, "smudge")


def test_auroc_handles_ties_and_order():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert np.isnan(auroc([], [1]))


# ----------------------------------------------------------------------------- file + sidecar


@pytest.fixture(scope="module")
def domain_model(tmp_path_factory):
    """The toy colour model with a features output and domain statistics of red/blue/green tiles."""
    path = make_toy_model(tmp_path_factory.mktemp("toy_domain"), patch_px=64, spacing_um=1.0, features=True)
    make_toy_domain(path)
    return path


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.parent.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst / src.name


def test_statistics_file_roundtrip_and_sidecar_entry(domain_model):
    spec = ModelSpec.load(domain_model)
    assert spec.domain is not None and spec.domain_path.name == "domain.npz"
    data = spec.domain_path.read_bytes()
    assert spec.domain_sha256 == hashlib.sha256(data).hexdigest()
    assert spec.result_sha256 == f"{spec.onnx_sha256}+{spec.domain_sha256}"
    again = DomainStats.from_bytes(spec.domain.to_bytes())
    tiles, _ = toy_domain_tiles(n_per_class=3, seed=5)
    (feats,) = OnnxClassifier(spec, device="cpu").run(tiles, ("features",))
    np.testing.assert_array_equal(again.score(feats, tiles), spec.domain.score(feats, tiles))
    side = json.loads(domain_model.with_suffix(".json").read_text())
    assert side["domain"]["threshold"] == 0.05 and side["domain"]["training_data"] == "red, blue and green test tiles"
    assert len(data) < 20_000


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("sha", "do not match the model sidecar"),
        ("garbage", "damaged or not a CellView domain file"),
        ("missing", "not next to the model"),
        ("entry", "'domain' must be an object"),
    ],
)
def test_bad_statistics_are_a_clear_model_error(domain_model, tmp_path, damage, match):
    path = _copy_model(domain_model, tmp_path / "m")
    side = path.with_suffix(".json")
    raw = json.loads(side.read_text())
    npz = path.parent / "domain.npz"
    if damage == "sha":
        raw["domain"]["sha256"] = "0" * 64
    elif damage == "garbage":
        npz.write_bytes(b"not a zip file")
        raw["domain"]["sha256"] = hashlib.sha256(b"not a zip file").hexdigest()
    elif damage == "missing":
        npz.unlink()
    else:
        raw["domain"] = "domain.npz"
    side.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=match):
        ModelSpec.load(path)


def test_statistics_for_a_model_without_features_output(domain_model, tmp_path):
    plain = make_toy_model(tmp_path / "plain", patch_px=64, spacing_um=1.0)
    for name in ("domain.npz",):
        (plain.parent / name).write_bytes((domain_model.parent / name).read_bytes())
    raw = json.loads(plain.with_suffix(".json").read_text())
    raw["domain"] = json.loads(domain_model.with_suffix(".json").read_text())["domain"]
    plain.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="no 'features' output"):
        OnnxClassifier(ModelSpec.load(plain), device="cpu")


def test_model_without_statistics_keeps_working(toy_model):
    clf = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")
    tiles = np.tile(np.array(TOY_COLORS["benign"], np.uint8), (2, 64, 64, 1))
    probs, score = clf.classify(tiles)
    assert score is None and not clf.has_domain and probs.argmax(1).tolist() == [1, 1]
    np.testing.assert_array_equal(probs, clf.predict(tiles))


# ----------------------------------------------------------------------------- through the pipeline


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    rgb = synthetic_slide_rgb()
    r0, r1, c0, c1 = ODD_BLOCK
    rgb[r0 * SYNTH_TILE:r1 * SYNTH_TILE, c0 * SYNTH_TILE:c1 * SYNTH_TILE] = ODD
    return write_pyramid_tiff(tmp_path_factory.mktemp("odd") / "odd.tiff", rgb, 0.5)


@pytest.fixture(scope="module")
def odd_result(odd_slide, domain_model):
    return run_analysis(odd_slide, OnnxClassifier(ModelSpec.load(domain_model), device="cpu"),
                        AnalysisParams(batch_size=16))


def _odd_tiles(result):
    r0, r1, c0, c1 = ODD_BLOCK
    g = result.grid
    return (g.grid_row >= r0) & (g.grid_row < r1) & (g.grid_col >= c0) & (g.grid_col < c1)


def test_pipeline_scores_every_tile_and_flags_the_odd_block(odd_result):
    odd = _odd_tiles(odd_result)
    assert odd.sum() == 12 and odd_result.n_done == 68
    assert odd_result.domain_score.dtype == np.float32 and np.isfinite(odd_result.domain_score).all()
    assert not odd_result.in_domain[odd].any()
    assert odd_result.in_domain[~odd].mean() > 0.85
    assert odd_result.pred_category[odd].tolist() == [0] * 12  # called malignant, but out of domain
    assert odd_result.in_domain_fraction == pytest.approx(odd_result.in_domain.sum() / 68)


def test_counts_shares_and_regions_leave_out_of_domain_tiles_out(odd_result):
    everything = odd_result.category_counts(include_out_of_domain=True)
    counted = odd_result.category_counts()
    ood = odd_result.out_of_domain
    for k, cat in enumerate(CATEGORIES):
        assert everything[cat] - counted[cat] == int((ood & (odd_result.pred_category == k)).sum())
    assert everything["malignant"] - counted["malignant"] >= 12
    assert sum(counted.values()) == odd_result.in_domain.sum()
    assert sum(odd_result.category_shares().values()) == pytest.approx(1.0)
    odd = _odd_tiles(odd_result)
    in_regions = set(np.concatenate([r.tile_indices for r in malignant_regions(odd_result, 0.0)]).tolist())
    assert not in_regions & set(np.flatnonzero(odd).tolist())
    with_ood = malignant_regions(odd_result, 0.0, include_out_of_domain=True)
    assert set(np.flatnonzero(odd).tolist()) <= set(np.concatenate([r.tile_indices for r in with_ood]).tolist())
    rgba = odd_result.category_rgba()
    r, c = odd_result.grid.grid_row[odd][0], odd_result.grid.grid_col[odd][0]
    assert tuple(rgba[r, c]) == (128, 128, 128, 170)  # grey, not red
    assert tuple(odd_result.category_rgba(include_out_of_domain=True)[r, c, :3]) == (0xD6, 0x27, 0x28)
    assert odd_result.out_of_domain_grid()[r, c] and not odd_result.out_of_domain_grid()[3, 3]


def test_every_output_carries_the_score(odd_result):
    rows = list(csv.DictReader(csv_text(odd_result).splitlines()))
    odd = _odd_tiles(odd_result)
    assert all(rows[i]["in_domain"] == "false" for i in np.flatnonzero(odd))
    assert all(0 < float(r["domain_score"]) <= 1 for r in rows)
    geo = geojson_dict(odd_result)
    f = geo["features"][int(np.flatnonzero(odd)[0])]
    assert f["properties"]["in_domain"] is False and f["properties"]["measurements"]["in_domain"] == 0.0
    assert 0 < f["properties"]["measurements"]["domain_score"] < 0.05
    assert geo["properties"]["in_domain_fraction"] == odd_result.in_domain_fraction
    meta = metadata_dict(odd_result)
    assert meta["in_domain_fraction"] == odd_result.in_domain_fraction
    assert meta["domain"]["available"] and meta["domain"]["threshold"] == 0.05
    assert meta["domain"]["out_of_domain_tiles"] == int(odd_result.out_of_domain.sum())
    assert meta["tiles"]["per_category"] == odd_result.category_counts()
    assert "in domain" in odd_result.summary()


def test_banner_when_most_tissue_is_out_of_domain(odd_result):
    import dataclasses

    assert not domain_banner(odd_result).show
    mostly_odd = dataclasses.replace(odd_result, domain_score=np.where(np.arange(68) < 50, 0.001, 0.9).astype(
        np.float32))
    banner = domain_banner(mostly_odd)
    assert banner.show and "does not look like red, blue and green test tiles" in banner.text
    assert "unreliable" in mostly_odd.summary()
    assert mostly_odd.image_level()["based_on"] == "in-domain tiles"
    # Glass-edged tiles at the border of the tissue do not make the tissue itself unlike the training data.
    edges = np.where(np.arange(68) < 50, 0.3, 1.0).astype(np.float32)
    bordered = dataclasses.replace(mostly_odd, grid=dataclasses.replace(mostly_odd.grid, tissue_fraction=edges))
    assert bordered.in_domain_fraction < 0.5 and not domain_banner(bordered).show
    assert "(100% of tissue tiles)" in bordered.summary() and "unreliable" not in bordered.summary()
    all_odd = dataclasses.replace(odd_result, domain_score=np.full(68, 0.001, np.float32))
    assert all_odd.image_level()["based_on"].startswith("out-of-domain tiles only")
    assert "no in-domain tiles" in all_odd.summary()


def test_without_statistics_outputs_say_so(synthetic_slide, toy_model):
    result = run_analysis(synthetic_slide, OnnxClassifier(ModelSpec.load(toy_model), device="cpu"))
    assert result.domain_score is None and result.in_domain_fraction is None
    assert result.in_domain.sum() == result.n_done  # nothing is left out
    assert NOT_AVAILABLE in result.summary()
    assert not domain_banner(result).show and domain_banner(result).text == NOT_AVAILABLE


def test_batches_stream_domain_scores(odd_slide, domain_model):
    clf = OnnxClassifier(ModelSpec.load(domain_model), device="cpu")
    batches = [e for e in analyze(odd_slide, clf, AnalysisParams(batch_size=10)) if isinstance(e, BatchDone)]
    assert all(b.domain_score is not None and b.domain_score.shape == b.indices.shape for b in batches)


def test_cache_keeps_scores_and_changes_key_with_statistics(odd_result, odd_slide, domain_model, tmp_path):
    back = result_from_bytes(result_to_bytes(odd_result))
    np.testing.assert_array_equal(back.domain_score, odd_result.domain_score)
    assert back.model.domain == odd_result.model.domain and back.in_domain_fraction == odd_result.in_domain_fraction
    cache = ResultCache(tmp_path / "cache")
    clf = OnnxClassifier(ModelSpec.load(domain_model), device="cpu")
    run_analysis(odd_slide, clf, cache=cache)
    refit = _copy_model(domain_model, tmp_path / "refit")
    make_toy_domain(refit, training_data="another fit")
    again = run_analysis(odd_slide, OnnxClassifier(ModelSpec.load(refit), device="cpu"), cache=cache)
    assert not again.from_cache and again.model.domain.training_data == "another fit"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_run_trained_on_every_image_gets_a_grouped_held_out_split():
    """A run with no test split (``--holdout none``) is evaluated on the same grouped split export fits on."""
    pytest.importorskip("torch")
    from cellview.train.data import Sample
    from cellview.train.domain import held_out_split
    from cellview.train.splits import SPLITS

    samples = [Sample(f"img{i}.png", i % 3, f"patient{i // 4}", "src", 1.0) for i in range(120)]
    everything_train = np.zeros(len(samples), int)
    split = held_out_split(samples, everything_train, (0.7, 0.15, 0.15), 0)
    assert {SPLITS[k] for k in split} == {"train", "val", "test"}
    for group in {s.group for s in samples}:
        assert len({int(split[i]) for i, s in enumerate(samples) if s.group == group}) == 1
    given = np.array([SPLITS.index("test") if i % 5 == 0 else 0 for i in range(len(samples))])
    assert np.array_equal(held_out_split(samples, given, (0.7, 0.15, 0.15), 0), given)
