"""cellview adapt: labels (CSV, QuPath GeoJSON), the head refit, its cross-validation, guard rails and the model
folder it writes. The lab is made of colours the toy model gets wrong, so the right answer is known."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec, sha256_file
from cellview.analysis.results import AnalysisParams
from cellview.cli import main
from cellview.lab.adapt import AdaptError, AdaptProgress, AdaptReport, adapt
from cellview.lab.head import AdaptSettings, fit_head, label_targets, label_weights
from cellview.lab.labels import (
    IGNORE,
    LabelError,
    LabelRegion,
    LabelSource,
    read_geojson,
    read_labels,
    read_labels_csv,
    tile_labels,
    write_geojson,
)
from cellview.slides.opening import open_slide
from cellview.testing.synthetic import (
    LAB_BLOCKS,
    LAB_COLOURS,
    lab_block_rect,
    lab_image,
    lab_slide_rgb,
    write_pyramid_tiff,
)

# The toy CAM model (tests/conftest.py: cam_domain_model) calls red malignant, blue benign, green normal.
# This lab's malignant tissue is bluish purple and its benign reddish purple: the model swaps them.
LAB = LAB_COLOURS


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def lab_csv(tmp_path) -> Path:
    """Four images per category, paths relative to the CSV, labels as categories (one in capitals)."""
    rows = []
    for c, (cat, colour) in enumerate(LAB.items()):
        for k in range(4):
            name = f"images/{cat}_{k}.png"
            # Seeds fixed per image: hash() of a str changes with each process (PYTHONHASHSEED), and one draw
            # in eight put the probe image beyond every lab tile's calibration distance.
            write_png(tmp_path / name, lab_image(colour, seed=100 * c + k))
            rows.append((name, cat.upper() if k == 0 else cat))
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return path


def run_adapt(sources, spec, out, **kw):
    report = None
    progress = []
    for item in adapt(sources, spec, out, AnalysisParams(mpp_um=1.0, tissue_threshold=0.0), **kw):
        if isinstance(item, AdaptReport):
            report = item
        elif isinstance(item, AdaptProgress):
            progress.append(item)
    return report, progress


# ----------------------------------------------------------------------------- labels


def test_labels_name_classes_or_categories_in_any_case_and_unknown_ones_list_every_valid_name(cam_domain_model):
    spec = ModelSpec.load(cam_domain_model)
    targets = label_targets(["MALIGNANT", "benign"], spec)
    assert targets["MALIGNANT"].label == "malignant" and targets["MALIGNANT"].allowed == (True, False, False)
    with pytest.raises(LabelError) as err:
        label_targets(["tumour", "benign", "Stroma"], spec)
    msg = err.value.message
    assert "'tumour'" in msg and "'Stroma'" in msg and "'benign'" not in msg
    for name in ("malignant", "benign", "normal"):
        assert name in msg


def test_the_labels_csv_is_read_relative_to_its_folder_and_says_what_it_passed_over(tmp_path):
    path = tmp_path / "sub" / "l.csv"
    path.parent.mkdir()
    path.write_text("image,label\na.png,normal\n/abs/b.png,benign\n,\nc.png,\n", encoding="utf-8")
    sources, notes = read_labels_csv(path)
    assert [s.path for s in sources] == [tmp_path / "sub" / "a.png", Path("/abs/b.png")]
    assert [s.label for s in sources] == ["normal", "benign"]
    assert any("1 row without a label passed over (line 5)" in n for n in notes)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,normal\n", encoding="utf-8")
    with pytest.raises(LabelError, match="image,label"):
        read_labels_csv(bad)


QUPATH = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [400, 0], [400, 400], [0, 400],
                                                                               [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "colorRGB": -3670016}}},
        {"type": "Feature",  # a square with a square hole
         "geometry": {"type": "MultiPolygon", "coordinates": [[[[500, 0], [900, 0], [900, 400], [500, 400], [500, 0]],
                                                               [[600, 100], [800, 100], [800, 300], [600, 300],
                                                                [600, 100]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "normal", "color": [0, 255, 0]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 10]},
         "properties": {"classification": {"name": "normal"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[100, 100], [300, 100], [300, 300],
                                                                               [100, 300], [100, 100]]]},
         "properties": {"objectType": "annotation", "classification": {"name": IGNORE}}},
    ],
}


def test_qupath_annotations_label_the_tiles_whose_cell_centre_they_hold(tmp_path, synthetic_slide):
    path = tmp_path / "ann.geojson"
    path.write_text(json.dumps(QUPATH), encoding="utf-8")
    got = read_geojson(path)
    assert [r.label for r in got.regions] == ["Tumor", "normal", IGNORE]
    assert any("Point" in s for s in got.skipped) and any("without a classification" in s for s in got.skipped)
    from cellview.analysis.pipeline import plan_grid

    with open_slide(synthetic_slide) as slide:
        _, grid = plan_grid(slide, 64, 1.0, AnalysisParams(tissue_threshold=0.0))  # 128-px cells at level 0
    labels = tile_labels(grid, got.regions)
    by_cell = {(int(r), int(c)): labels[i] for i, (r, c) in enumerate(zip(grid.grid_row, grid.grid_col))}
    assert by_cell[(0, 0)] == "Tumor" and by_cell[(2, 2)] == "Tumor"  # centres (64, 64) and (320, 320)
    assert by_cell[(1, 1)] is None  # centre (192, 192) is in the Ignore* square
    assert by_cell[(0, 4)] == by_cell[(2, 5)] == "normal"  # centres (576, 64) and (704, 320) on the ring
    assert by_cell[(1, 5)] is None  # centre (704, 192) is in the hole
    assert by_cell[(4, 0)] is None


def test_the_viewer_s_geojson_reads_back_the_same_regions(tmp_path):
    regions = [LabelRegion.rect("benign", 0, 0, 10, 10), LabelRegion.rect("adenocarcinoma", 10, 0, 20, 10)]
    path = write_geojson(tmp_path / "s.svs.labels.geojson", regions, ["adenocarcinoma"], ["#d62728"], "s.svs")
    data = json.loads(path.read_text())
    assert data["features"][1]["properties"]["classification"] == {"name": "adenocarcinoma", "color": [214, 39, 40]}
    assert read_geojson(path).regions == tuple(regions)
    (tmp_path / "s.svs").write_bytes(b"")
    sources, _ = read_labels([path])
    assert sources[0].path == tmp_path / "s.svs" and sources[0].regions == tuple(regions)


# ----------------------------------------------------------------------------- the head


def test_a_category_label_lets_any_of_its_classes_be_right():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    x[:30, 0] += 3.0
    x[30:, 0] -= 3.0
    allowed = np.zeros((60, 3), bool)
    allowed[:30, :2] = True  # first half: class 0 or 1
    allowed[30:, 2] = True
    w, b = fit_head(x, allowed, np.ones(60), np.zeros((3, 4)), np.zeros(3), AdaptSettings(l2_to_base=0.0))
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p[:30, :2].sum(1).mean() > 0.95 and p[30:, 2].mean() > 0.95
    np.testing.assert_allclose(p[:30, 0], p[:30, 1], atol=1e-3)  # the label says nothing between them


def test_the_pull_keeps_the_head_near_the_base_where_labels_say_nothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    allowed = np.zeros((40, 3), bool)
    allowed[:, 0] = True  # labels only ever name class 0
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=3)
    strong = fit_head(x, allowed, np.ones(40), w0, b0, AdaptSettings(l2_to_base=10.0))
    weak = fit_head(x, allowed, np.ones(40), w0, b0, AdaptSettings(l2_to_base=0.0))
    assert np.abs(strong[0] - w0).max() < np.abs(weak[0] - w0).max() / 5


def test_every_category_weighs_the_same_and_within_it_every_image():
    cats = np.array([0, 0, 0, 1, 2, 2])
    items = np.array([0, 0, 1, 2, 3, 4])
    w = label_weights(cats, items)
    assert w[[0, 1, 2]].sum() == pytest.approx(w[3]) == pytest.approx(w[[4, 5]].sum())
    assert w[0] + w[1] == pytest.approx(w[2])


# ----------------------------------------------------------------------------- end to end


def test_adapt_learns_the_lab_and_writes_a_complete_model_folder(lab_csv, cam_domain_model, tmp_path):
    base = ModelSpec.load(cam_domain_model)
    before_files = {p.name: sha256_file(p) for p in base.onnx_path.parent.iterdir() if p.is_file()}
    sources, _ = read_labels([lab_csv])
    out = tmp_path / "lab-model"
    report, progress = run_adapt(sources, base, out, name="toy-lab")
    assert {p.stage for p in progress} >= {"reading", "fitting", "writing"}
    assert report.before.items_balanced_accuracy < 0.5  # the base swaps malignant and benign
    assert report.after.items_balanced_accuracy == 1.0 and report.improved
    assert report.cv_how == "one fold per image or slide" and report.cv_folds == 12
    # The folder is a model: same outputs, the new head, provenance, domain with the lab, a card.
    spec = ModelSpec.load(out / "model.onnx")
    assert spec.name == "toy-lab" and spec.class_names == base.class_names
    side = json.loads((out / "model.json").read_text())
    prov = side["adaptation"]
    assert prov["base"]["onnx_sha256"] == base.onnx_sha256 and prov["base"]["name"] == base.name
    assert prov["label_counts"]["malignant"] == {"items": 4, "tiles": 16, "files": 4}
    assert len(prov["files"]) == 12 and prov["date"]
    clf = OnnxClassifier(spec, device="cpu")
    assert set(clf.output_names) == {"logits", "features", "feature_map", "cam"}
    for cat, colour in LAB.items():
        probs, score = clf.classify(np.stack([lab_image(colour, 99, 64)]))
        assert spec.class_categories[int(probs[0].argmax())] == cat
        assert spec.domain.in_domain(score).all()  # the lab's tissue is in domain now
        _, base_score = OnnxClassifier(base, device="cpu").classify(np.stack([lab_image(colour, 99, 64)]))
        if cat != "normal":
            assert not base.domain.in_domain(base_score).any()  # and was not before
    yellow = np.full((1, 64, 64, 3), (230, 220, 30), np.uint8)
    assert not spec.domain.in_domain(clf.classify(yellow)[1]).any()  # other colours stay out of domain
    card = (out / "MODEL_CARD.md").read_text()
    assert card.index("Before vs after") < card.index("## Labels") < card.index("## Limits")
    assert "0.33 → 1.00" in card or "0.25 → 1.00" in card or "0.00 → 1.00" in card
    assert json.loads((out / "adaptation.json").read_text())["cross_validation"]["improved"] is True
    assert before_files == {p.name: sha256_file(p) for p in base.onnx_path.parent.iterdir() if p.is_file()}


def test_an_unreadable_image_is_listed_and_the_rest_go_on(lab_csv, cam_domain_model, tmp_path):
    (lab_csv.parent / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with open(lab_csv, "a") as fh:
        fh.write("images/broken.png,benign\nimages/missing.png,normal\n")
    sources, _ = read_labels([lab_csv])
    report, _ = run_adapt(sources, ModelSpec.load(cam_domain_model), tmp_path / "out")
    assert sorted(Path(p).name for p, _ in report.lab.unreadable) == ["broken.png", "missing.png"]
    assert len(report.lab.files) == 12 and report.written is not None


def test_a_model_no_better_than_the_base_is_not_written_unless_forced(tmp_path, cam_domain_model):
    # Labels that agree with the base model: nothing to gain.
    rows = ["image,label"]
    for cat, colour in {"malignant": (220, 40, 40), "benign": (40, 40, 220), "normal": (40, 200, 40)}.items():
        for k in range(3):
            write_png(tmp_path / f"{cat}{k}.png", lab_image(colour, k))
            rows.append(f"{cat}{k}.png,{cat}")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    sources, _ = read_labels([tmp_path / "l.csv"])
    base = ModelSpec.load(cam_domain_model)
    with pytest.raises(AdaptError) as err:
        run_adapt(sources, base, tmp_path / "out")
    msg = err.value.message
    assert "not better" in msg and "1.00 → 1.00" in msg and "not distinguishable" in msg
    assert "--force" not in msg  # the viewer shows this message beside its Write it anyway button
    assert err.value.report.decision.uncertain and err.value.report.before.items_balanced_accuracy == 1.0
    assert not (tmp_path / "out" / "model.json").exists()
    report, _ = run_adapt(sources, base, tmp_path / "out", force=True)
    assert not report.improved and (tmp_path / "out" / "model.json").exists()
    assert "**not better**" in (tmp_path / "out" / "MODEL_CARD.md").read_text()


def test_a_category_with_few_labels_gets_a_warning_saying_how_many_more(lab_csv, cam_domain_model, tmp_path):
    sources, _ = read_labels([lab_csv])
    sources = [s for s in sources if not (s.label.lower() == "normal" and s.path.name != "normal_1.png")]
    report, _ = run_adapt(sources, ModelSpec.load(cam_domain_model), None)
    normal = [w for w in report.warnings if w.startswith("normal")]
    assert normal and "only 1 labelled image" in normal[0] and "label 4 more" in normal[0]
    assert [w for w in report.warnings if w.startswith("malignant")] == [w for w in report.warnings if "label 1 more" in w
                                                                         and w.startswith("malignant")]


def test_one_category_alone_is_refused(lab_csv, cam_domain_model, tmp_path):
    sources, _ = read_labels([lab_csv])
    with pytest.raises(AdaptError, match="Label at least two categories"):
        run_adapt([s for s in sources if s.label.lower() == "benign"], ModelSpec.load(cam_domain_model), None)


def test_the_base_model_s_own_folder_is_never_written(lab_csv, cam_domain_model):
    sources, _ = read_labels([lab_csv])
    with pytest.raises(AdaptError, match="never modified"):
        run_adapt(sources, ModelSpec.load(cam_domain_model), cam_domain_model.parent)


def test_slide_annotations_label_regions_and_cross_validate_by_region_on_one_slide(tmp_path, cam_domain_model):
    slide = write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)
    regions = [LabelRegion.rect(cat, *lab_block_rect(k)) for k, cat in enumerate(LAB_BLOCKS)]
    write_geojson(tmp_path / "lab.geojson", regions)
    sources, _ = read_labels([tmp_path / "lab.geojson"])
    assert sources[0].path == slide
    report, _ = run_adapt(sources, ModelSpec.load(cam_domain_model), tmp_path / "out")
    assert report.cv_how.endswith("(one slide was labelled)") and len(report.lab.items) == 6
    assert report.after.items_balanced_accuracy == 1.0 > report.before.items_balanced_accuracy


def test_the_adapted_onnx_keeps_the_network_and_swaps_only_the_head(cam_domain_model, tmp_path):
    import onnx

    from cellview.analysis.onnx_graph import find_linear_head, replace_linear_head

    model = onnx.load(str(cam_domain_model))
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    b = np.array([0.5, -1.0, 2.0], np.float32)
    new = replace_linear_head(model, w, b)
    head = find_linear_head(new)
    np.testing.assert_array_equal(head.weight, w)
    np.testing.assert_array_equal(head.bias, b)
    path = tmp_path / "m" / "model.onnx"
    shutil.copytree(cam_domain_model.parent, path.parent)
    path.write_bytes(new.SerializeToString())
    side = json.loads((path.parent / "model.json").read_text())
    side["onnx_sha256"] = sha256_file(path)
    (path.parent / "model.json").write_text(json.dumps(side))
    clf = OnnxClassifier(ModelSpec.load(path), device="cpu")
    tiles = np.stack([lab_image(c, 3, 64) for c in LAB.values()])
    logits, feats, cam = clf.run(tiles, ("logits", "features", "cam"))
    np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-4)
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=1e-4)


def test_cellview_adapt_prints_before_and_after_and_lists_what_it_could_not_read(lab_csv, cam_domain_model, tmp_path,
                                                                                 capsys):
    with open(lab_csv, "a") as fh:
        fh.write("images/missing.png,normal\n")
    out = tmp_path / "cli-model"
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(lab_csv), "--mpp", "1.0",
                 "--tissue-threshold", "0", "--out", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 1  # written, but one file could not be used
    assert "Before → after" in captured.out and "missing.png" in captured.err
    assert (out / "model.json").exists()
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(lab_csv), "--out", str(tmp_path / "x"),
                 "-q"])
    assert code != 0 or "could not use" in capsys.readouterr().err  # no --mpp: plain images say so
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nimages/malignant_1.png,tumour\n")
    assert main(["adapt", "--model", str(cam_domain_model), "--labels", str(bad), "--mpp", "1", "--out",
                 str(tmp_path / "y"), "-q"]) == 2
    assert "Unknown label 'tumour'" in capsys.readouterr().err


def test_sources_with_regions_only_ignore_star_are_not_labels(cam_domain_model):
    spec = ModelSpec.load(cam_domain_model)
    src = LabelSource(Path("x.tiff"), None, (LabelRegion.rect(IGNORE, 0, 0, 1, 1), LabelRegion.rect("normal", 0, 0, 1, 1)))
    assert set(label_targets([r.label for r in src.regions if not r.is_ignore], spec)) == {"normal"}


def test_cancel_stops_before_anything_is_written(lab_csv, cam_domain_model, tmp_path):
    from cellview.analysis.pipeline import CancelToken

    sources, _ = read_labels([lab_csv])
    token = CancelToken()
    seen = []
    for item in adapt(sources, ModelSpec.load(cam_domain_model), tmp_path / "out",
                      AnalysisParams(mpp_um=1.0, tissue_threshold=0.0), cancel=token):
        seen.append(item)
        if len(seen) == 3:
            token.cancel()
    assert not any(isinstance(i, AdaptReport) for i in seen)
    assert not (tmp_path / "out" / "model.json").exists()


def test_without_out_the_model_goes_to_the_user_s_models_folder_and_is_listed(lab_csv, cam_domain_model, capsys):
    from cellview.analysis.model_lookup import user_models_dir

    assert main(["adapt", "--model", str(cam_domain_model), "--labels", str(lab_csv), "--mpp", "1.0",
                 "--tissue-threshold", "0", "--name", "my-lab", "-q"]) == 0
    assert (user_models_dir() / "my-lab" / "model.json").exists()
    assert "--model my-lab" in capsys.readouterr().out
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "my-lab (your models folder" in listed and "adapted from toy-cam-domain 0.0-test on" in listed



def test_adapting_a_precision_copy_adapts_its_fp32_model(lab_csv, cam_domain_model, tmp_path):
    """Pointed at model.int8.onnx (the copy that may run), adapt fits and writes the FP32 weights' head."""
    folder = tmp_path / "base"
    shutil.copytree(Path(cam_domain_model).parent, folder)
    fp32 = ModelSpec.load(folder / "model.onnx")
    shutil.copy(folder / "model.onnx", folder / "model.int8.onnx")  # stands in for a quantised copy
    side = json.loads((folder / "model.json").read_text())
    side.update(precision="int8", onnx_sha256=sha256_file(folder / "model.int8.onnx"),
                quantization={"source_onnx_sha256": fp32.onnx_sha256})
    (folder / "model.int8.json").write_text(json.dumps(side))
    copy = ModelSpec.load(folder / "model.int8.onnx")
    assert copy.precision == "int8"
    sources, _ = read_labels([lab_csv])
    report, _ = run_adapt(sources, copy, tmp_path / "lab", name="toy-lab")
    assert report.improved
    written = ModelSpec.load(tmp_path / "lab" / "model.onnx")
    assert written.precision == "fp32" and not (tmp_path / "lab" / "model.int8.onnx").exists()
    base = json.loads((tmp_path / "lab" / "model.json").read_text())["adaptation"]["base"]
    assert base["path"].endswith("/model.onnx") and base["onnx_sha256"] == fp32.onnx_sha256


def test_labels_of_two_categories_leave_the_third_as_the_base_model_had_it():
    """Fifteen suggested images may hold no normal one: the refit must not learn 'nothing is normal'."""
    from cellview.lab.head import labelled_classes

    rng = np.random.default_rng(3)
    cats = ("malignant", "malignant", "benign", "normal")
    w0 = rng.normal(size=(4, 6))
    b0 = rng.normal(size=4)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    allowed = np.zeros((40, 4), bool)
    allowed[:20, :2] = True  # malignant
    allowed[20:, 2] = True  # benign; no normal label
    assert labelled_classes(allowed, cats).tolist() == [True, True, True, False]
    w, b = fit_head(x, allowed, np.ones(40), w0, b0, AdaptSettings(), cats)
    np.testing.assert_allclose(w[3], w0[3], atol=1e-6)
    assert b[3] == pytest.approx(b0[3], abs=1e-6)
    plain = fit_head(x, allowed, np.ones(40), w0, b0, AdaptSettings())  # the old fit pushes normal away
    assert np.abs(plain[0][3] - w0[3]).max() > 0.01
    same = fit_head(x, allowed | np.eye(4, dtype=bool)[np.full(40, 3)], np.ones(40), w0, b0, AdaptSettings(), cats)
    np.testing.assert_allclose(same[0], fit_head(x, allowed | np.eye(4, dtype=bool)[np.full(40, 3)], np.ones(40),
                                                 w0, b0, AdaptSettings())[0], atol=1e-6)  # all named: as before


def test_an_adapted_model_says_its_slide_call_thresholds_are_the_base_s_not_re_validated(lab_csv, cam_domain_model,
                                                                                          tmp_path):
    """The sidecar's call section used to be copied whole: its chosen_by claimed the base's leave-one-source-out
    validation for a head that validation never saw."""
    folder = tmp_path / "base"
    shutil.copytree(Path(cam_domain_model).parent, folder)
    side = json.loads((folder / "model.json").read_text())
    side["call"] = {"rule_version": 1, "malignant": {"min_confidence": 0.9, "min_share": 0.05, "min_area_mm2": 0.1},
                    "chosen_by": "leave-one-source-out on 4 sources (bench/slide_call.py)",
                    "validation": {"sources": 4, "balanced_accuracy": 0.9}}
    (folder / "model.json").write_text(json.dumps(side))
    base = ModelSpec.load(folder / "model.onnx")
    sources, _ = read_labels([lab_csv])
    report, _ = run_adapt(sources, base, tmp_path / "lab", name="toy-lab")
    assert report.written is not None
    spec = ModelSpec.load(tmp_path / "lab" / "model.onnx")
    call = json.loads((tmp_path / "lab" / "model.json").read_text())["call"]
    assert call["malignant"] == side["call"]["malignant"]  # the same figures
    assert call["chosen_by"].startswith("the base model's thresholds (")
    assert "not re-validated for the adapted head on the lab's labels" in call["chosen_by"]
    assert "(for the base: leave-one-source-out" in call["chosen_by"]
    assert call["validation"] == {"of_base_model": {"sources": 4, "balanced_accuracy": 0.9}, "re_validated": False}
    assert spec.call.chosen_by == call["chosen_by"]
