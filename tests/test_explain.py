"""Graph surgery (features / feature map / CAM outputs), class activation maps and `cellview explain` / `domain`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.explain import explain_at, explanation_png, resolve_class
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.onnx_graph import EXPLAIN_OUTPUTS, add_explain_outputs, find_linear_head
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import ModelError
from cellview.cli import main
from cellview.testing.synthetic import (
    CAM_STRIDE,
    TOY_COLORS,
    make_toy_cam_model,
    make_toy_model,
    square_tile,
    write_pyramid_tiff,
)

SQUARES = [("malignant", (40, 8)), ("benign", (0, 40)), ("normal", (24, 24)), ("malignant", (48, 48))]


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _tiles(n=6, px=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory):
    return make_toy_cam_model(tmp_path_factory.mktemp("cam"))


# ----------------------------------------------------------------------------- graph surgery


def test_added_outputs_leave_logits_bit_identical(tmp_path):
    plain = onnx.load(str(make_toy_cam_model(tmp_path / "plain", explain_outputs=False)))
    upgraded = add_explain_outputs(plain)
    assert [o.name for o in upgraded.graph.output] == ["logits", *EXPLAIN_OUTPUTS]
    x = np.concatenate([_tiles(), square_tile(TOY_COLORS["malignant"], (8, 8))[None]])
    before = _session(plain).run(["logits"], {"tiles": x})[0]
    logits, features, fmap, cam = _session(upgraded).run(None, {"tiles": x})
    np.testing.assert_array_equal(before, logits)
    assert fmap.shape == (7, 4, 64 // CAM_STRIDE, 64 // CAM_STRIDE) and cam.shape == (7, 3, 8, 8)
    np.testing.assert_allclose(fmap.mean(axis=(2, 3)), features, atol=1e-6)
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=1e-5)  # the CAM is exact
    assert add_explain_outputs(upgraded).graph.output[-1].name == "cam"  # idempotent


def test_float16_copy_keeps_its_logits_too(tmp_path):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    plain = onnx.load(str(make_toy_cam_model(tmp_path / "plain", explain_outputs=False)))
    half = convert_float_to_float16(plain, keep_io_types=True)
    assert find_linear_head(half).float16
    upgraded = add_explain_outputs(half)
    x = _tiles(8)
    before = _session(half).run(["logits"], {"tiles": x})[0]
    logits, features, _, cam = _session(upgraded).run(None, {"tiles": x})
    np.testing.assert_array_equal(before, logits)
    assert features.dtype == np.float32 and cam.dtype == np.float32
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=2e-2)


def test_models_without_a_gap_linear_head_are_refused(tmp_path):
    colour = onnx.load(str(make_toy_model(tmp_path / "colour", patch_px=64)))  # ReduceMean over NHWC axes 1, 2
    with pytest.raises(ModelError, match="not the spatial axes"):
        add_explain_outputs(colour)
    plain = onnx.load(str(make_toy_cam_model(tmp_path / "p", explain_outputs=False)))
    plain.graph.node[-1].op_type = "Relu"  # the last node is no longer a linear layer
    del plain.graph.node[-1].attribute[:]
    del plain.graph.node[-1].input[1:]
    with pytest.raises(ModelError, match="not by a linear layer"):
        find_linear_head(plain)


def test_domain_upgrade_command_rewrites_model_and_sidecar(tmp_path, capsys):
    path = make_toy_cam_model(tmp_path / "m", explain_outputs=False)
    before = OnnxClassifier(ModelSpec.load(path), device="cpu").logits(_tiles())
    assert main(["domain", "upgrade", str(path)]) == 0
    assert "bit-identical" in capsys.readouterr().err
    spec = ModelSpec.load(path)  # the sidecar's sha256 follows the new file
    clf = OnnxClassifier(spec, device="cpu")
    assert clf.has_cam and json.loads(path.with_suffix(".json").read_text())["outputs"][0] == "logits"
    np.testing.assert_array_equal(clf.logits(_tiles()), before)


# ----------------------------------------------------------------------------- class activation maps


@pytest.fixture(scope="module")
def squares_slide(tmp_path_factory):
    """4 × 4 tiles of 64 px at 0.5 µm/px (the toy CAM model's spacing): grey, one coloured square per SQUARES tile."""
    img = np.full((256, 256, 3), 200, np.uint8)
    for k, (cls, (x, y)) in enumerate(SQUARES):
        row, col = divmod(k, 4)
        img[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64] = square_tile(TOY_COLORS[cls], (x, y))
    return write_pyramid_tiff(tmp_path_factory.mktemp("squares") / "squares.tiff", img, 0.5, levels=1)


def test_cam_peaks_on_the_coloured_square(squares_slide, cam_model):
    clf = OnnxClassifier(ModelSpec.load(cam_model), device="cpu")
    for k, (cls, (x, y)) in enumerate(SQUARES):
        ex = explain_at(squares_slide, clf, k * 64 + 32, 32, AnalysisParams(tissue_threshold=0.0))
        assert ex.class_names[ex.pred_class] == cls and ex.explained_class == ex.pred_class
        assert ex.rect_l0 == (k * 64, 0, 64, 64) and ex.patch.shape == (64, 64, 3)
        px, py = ex.peak_px()
        assert x - 2 <= px < x + 18 and y - 2 <= py < y + 18, (cls, (px, py), (x, y))
        heat = ex.heat()
        inside = heat[y:y + 16, x:x + 16].mean()
        assert inside > 0.5 > heat[np.ix_(range(64), range(64))].mean()  # the square holds the evidence
        assert ex.domain_score is None  # this toy model has no domain statistics
        np.testing.assert_allclose(ex.cam.mean(axis=(1, 2)), ex.logits, atol=1e-5)


def test_another_class_and_tiles_outside_the_analysis(squares_slide, cam_model):
    clf = OnnxClassifier(ModelSpec.load(cam_model), device="cpu")
    benign = resolve_class("Benign", clf.spec.class_names)
    ex = explain_at(squares_slide, clf, 32, 32, class_index=benign)  # a red square; show the benign map
    assert ex.class_names[ex.pred_class] == "malignant" and ex.explained_class == benign
    assert not ex.analysed  # too little tissue for the default threshold, explained all the same
    with pytest.raises(ModelError, match="No class named"):
        resolve_class("tumour", clf.spec.class_names)
    with pytest.raises(Exception, match="outside the slide"):
        explain_at(squares_slide, clf, 500, 10)


def test_explain_png_holds_patch_map_and_probabilities(squares_slide, cam_model):
    from io import BytesIO

    from PIL import Image

    clf = OnnxClassifier(ModelSpec.load(cam_model), device="cpu")
    ex = explain_at(squares_slide, clf, 10, 10)
    img = np.asarray(Image.open(BytesIO(explanation_png(ex))).convert("RGB"))
    assert img.shape[1] > 2 * 128 + 300
    patch_panel = img[92:92 + 128, 16:16 + 128]
    np.testing.assert_array_equal(patch_panel[22:42, 86:106], np.full((20, 20, 3), TOY_COLORS["malignant"]))


def test_explain_command(squares_slide, cam_model, tmp_path, capsys):
    out = tmp_path / "explain.png"
    assert main(["explain", str(squares_slide), "--at", "100,20", "--out", str(out), "--model", str(cam_model),
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert out.stat().st_size > 1000 and "benign" in line and "domain score: not available" in line
    assert main(["explain", str(squares_slide), "--at", "a,b", "--out", str(out), "--model", str(cam_model)]) == 2
    assert "--at must be two" in capsys.readouterr().err
    plain = make_toy_model(tmp_path / "plain", patch_px=64, spacing_um=0.5)
    assert main(["explain", str(squares_slide), "--at", "5,5", "--out", str(out), "--model", str(plain)]) == 2
    assert "exposes no class activation maps" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fitting from a run folder


def _toy_run(root: Path) -> Path:
    """A training-run folder (recipe.json + samples.json) of grey images with coloured squares."""
    from dataclasses import asdict

    from cellview.testing.synthetic import TOY_CLASSES
    from cellview.train import data as D

    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for k, cls in enumerate(TOY_CLASSES):
        for i in range(12):
            img = np.full((128, 128, 3), 200, np.uint8)
            for _ in range(3):
                x, y = rng.integers(0, 112, 2)
                img[y:y + 16, x:x + 16] = np.clip(np.array(TOY_COLORS[cls]) + rng.integers(-10, 10, 3), 0, 255)
            path = images / f"{cls}_{i}.png"
            import cv2

            cv2.imwrite(str(path), img[..., ::-1])
            s = D.Sample(path=str(path), label=k, group=f"g{k}_{i}", source="toy", spacing_um_px=0.5)
            rows.append({**asdict(s), "split": ("train", "train", "val", "test")[i % 4], "leaky_split": "train"})
    recipe = D.Recipe(name="toy-cam", classes=[D.ClassInfo(c, c, "#d62728") for c in TOY_CLASSES],
                      sources=[], spacing_um_px=0.5, patch_size=64, description="Toy squares: coloured squares")
    run = root / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe.to_json()))
    (run / "samples.json").write_text(json.dumps(rows))
    return run


def test_domain_fit_and_evaluate_from_a_run(tmp_path, capsys, squares_slide):
    model = make_toy_cam_model(tmp_path / "model")
    run = _toy_run(tmp_path / "data")
    report_path = tmp_path / "report.json"
    (model.parent / "MODEL_CARD.md").write_text("# toy\n\n## Limits\n- none\n")
    code = main(["domain", "fit", str(model), "--run", str(run), "--slide", str(squares_slide), "--card",
                 "--out", str(report_path), "--cache", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    spec = ModelSpec.load(model)
    assert spec.domain is not None and spec.domain.training_data == "toy squares"
    report = json.loads(report_path.read_text())
    assert report["in_domain_test"]["tiles"] == 9 * 4  # 9 test images × 4 tiles of 64 px
    assert set(report["sets"]) >= {"generated glass", "generated blur", "generated ink", "generated fold",
                                   "squares.tiff tissue tiles"}
    assert report["sets"]["generated glass"]["auroc"] > 0.9
    card = (model.parent / "MODEL_CARD.md").read_text()
    assert card.index("## Limits") < card.index("## Out-of-domain detection") and "AUROC" in card
    # Running it again replaces the section instead of adding a second one.
    assert main(["domain", "evaluate", str(model), "--run", str(run), "--card", "--cache", str(tmp_path / "cache")]) == 0
    assert (model.parent / "MODEL_CARD.md").read_text().count("## Out-of-domain detection") == 1
    assert main(["domain", "fit", str(model)]) == 2  # neither --run nor --recipe
    assert "--run RUN" in capsys.readouterr().err


def test_explain_on_the_terminal_says_what_the_picture_says(squares_slide, cam_model, tmp_path, capsys):
    """Issue 19: a tile with too little tissue printed a bare call; a slide without a pixel size was told to use
    --whole-image, which explain rejects."""
    import cv2

    out = tmp_path / "glass.png"
    assert main(["explain", str(squares_slide), "--at", "32,32", "--out", str(out), "--model", str(cam_model),
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert "too little tissue to be analysed" in line and "means nothing" in line
    image = tmp_path / "cells.png"  # a PNG records no pixel size
    cv2.imwrite(str(image), np.full((128, 128, 3), 200, np.uint8))
    assert main(["explain", str(image), "--at", "5,5", "--out", str(out), "--model", str(cam_model)]) == 2
    err = capsys.readouterr().err
    assert "does not say how many µm a pixel is" in err and "--mpp" in err and "--whole-image" not in err
    with pytest.raises(SystemExit):
        main(["explain", str(image), "--whole-image", "--at", "5,5", "--out", str(out)])
