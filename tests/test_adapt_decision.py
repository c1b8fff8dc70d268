"""The before / after decision of cellview adapt rests on an estimate with its uncertainty (issue 26, section 1):
better / not distinguishable / worse from a bootstrap over the labelled images or regions, folds that keep every
category, warnings before the run, exit statuses that say which case it is, and adapted models that say what they
were built on and whether they were shown better."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.model_lookup import user_models_dir
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.results import AnalysisParams
from cellview.cli import main
from cellview.lab.adapt import AdaptNotWritten, AdaptPlan, AdaptReport, adapt
from cellview.lab.check import plan_check
from cellview.lab.decision import Decision, decide
from cellview.lab.labels import LabelRegion, LabelSource, read_labels
from cellview.lab.labtiles import LabItem, LabTiles
from cellview.testing.synthetic import (
    LAB_BLOCKS,
    LAB_COLOURS,
    lab_block_rect,
    lab_image,
    lab_slide_rgb,
    write_pyramid_tiff,
)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def labels_csv(folder: Path, colours: dict[str, tuple[int, int, int]], per_category: int) -> Path:
    rows = []
    for cat, colour in colours.items():
        for k in range(per_category):
            name = f"images/{cat}_{k}.png"
            write_png(folder / name, lab_image(colour, seed=7 * k + len(cat)))
            rows.append((name, cat))
    path = folder / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return path


AGREE = {"malignant": (220, 40, 40), "benign": (40, 40, 220), "normal": (40, 200, 40)}  # as the toy model calls them


def run(sources, spec, out, **kw):
    items = list(adapt(sources, spec, out, AnalysisParams(mpp_um=1.0, tissue_threshold=0.5), **kw))
    plan = next(i for i in items if isinstance(i, AdaptPlan))
    report = next((i for i in items if isinstance(i, AdaptReport)), None)
    return plan, report, items


# ----------------------------------------------------------------------------- the estimate


def test_the_verdict_follows_the_interval_not_the_point():
    cat = np.repeat([0, 1, 2], 5)
    assert decide(np.zeros(15), np.ones(15), cat).verdict == "better"
    assert decide(np.ones(15), np.zeros(15), cat).verdict == "worse"
    one_flip = np.zeros(15)
    one_flip[3] = 1  # one image of fifteen changes: "after > before", as the old gate said, but not shown
    d = decide(np.zeros(15), one_flip, cat)
    assert d.estimate == pytest.approx(1 / 15) and d.verdict == "not distinguishable" and d.low <= 0 <= d.high
    mixed_b = np.array([0, 0, 0, 0, 1] * 3, float)
    mixed_a = np.array([1, 1, 1, 0, 1] * 3, float)
    d = decide(mixed_b, mixed_a, cat)
    assert d.verdict == "better" and d.estimate == pytest.approx(0.6) and 0 < d.low <= d.estimate <= d.high
    assert d.phrase() == f"better by 0.60 ({d.low:.2f}–{d.high:.2f})"
    worse = Decision("worse", -0.1, -0.18, -0.02, 0.9, "items", 15)
    assert worse.phrase() == "worse by 0.10 (0.02–0.18)"
    assert Decision("not distinguishable", 0.05, -0.1, 0.2, 0.9, "items", 15).phrase() == \
        "not distinguishable (+0.05; −0.10 to +0.20)"


def test_every_category_keeps_labels_in_every_fold():
    """Two files, one of which holds a category's only images: folds by file would leave that category out."""
    items = (LabItem(0, "malignant", "malignant", 4), LabItem(0, "benign", "benign", 4), LabItem(1, "malignant",
             "malignant", 4), LabItem(1, "normal", "normal", 4), LabItem(1, "normal", "normal", 4),
             LabItem(0, "benign", "benign", 4))
    item = np.repeat(np.arange(6), 4)
    lab = LabTiles(("a", "b"), items, np.zeros((24, 2), np.float32), np.zeros((24, 3), np.float32),
                   np.ones((24, 3), bool), item)
    plan = plan_check(lab)
    assert plan.level == "item" and plan.n_folds == 6
    for k in range(plan.n_folds):
        kept = {items[i].category for i in np.unique(item[plan.fold != k])}
        assert kept == {"malignant", "benign", "normal"}
    single = LabTiles(("a",), items[:2] + (LabItem(0, "normal", "normal", 4),), np.zeros((12, 2), np.float32),
                      np.zeros((12, 3), np.float32), np.ones((12, 3), bool), np.repeat(np.arange(3), 4),
                      position=np.array([[r, c] for r in range(3) for c in range(4)]))
    plan = plan_check(single)
    assert plan.level == "block" and plan.single == ("malignant", "benign", "normal") and plan.n_folds == 12


# ----------------------------------------------------------------------------- one region per category


def test_one_region_per_category_on_one_slide_does_not_collapse_and_is_warned_before_the_run(tmp_path,
                                                                                            cam_domain_model):
    slide = write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)
    regions = tuple(LabelRegion.rect(cat, *lab_block_rect(k)) for k, cat in enumerate(LAB_BLOCKS[:3]))
    source = LabelSource(slide, None, regions, "lab.tiff.labels.geojson")
    spec = ModelSpec.load(cam_domain_model)
    with pytest.raises(AdaptNotWritten) as err:
        run([source], spec, tmp_path / "m")
    items = err.value.report
    plan_warning = "each category has only one labelled region or image: the check cannot hold one out"
    assert any(plan_warning in w for w in items.warnings)
    # Before: the toy model swaps the lab's malignant and benign. After: blocks of each region held out —
    # no longer "1.00 → 0.00" (a held-out category with no label left).
    assert items.before.items_balanced_accuracy == pytest.approx(1 / 3)
    assert items.after.items_balanced_accuracy == 1.0
    assert items.decision.uncertain and "flatters" in items.decision.note  # blocks never say "better"
    assert "spatial block" in items.cv_how
    plan, report, got = run([source], spec, tmp_path / "m", writes="not distinguishable")
    assert got.index(plan) == 0 and any(plan_warning in w for w in plan.warnings)  # before any tile is read
    assert report.written is not None and report.written_because == "chosen"


def test_fewer_than_five_per_category_is_said_before_the_run(tmp_path, cam_domain_model, capsys):
    path = labels_csv(tmp_path, LAB_COLOURS, 2)
    assert main(["adapt", "--model", str(cam_domain_model), "--labels", str(path), "--mpp", "1",
                 "--tissue-threshold", "0.5", "--out", str(tmp_path / "m")]) in (0, 3)
    err = capsys.readouterr().err
    warning = err.index("warning: malignant: only 2 labelled images or regions; label 3 more")
    assert warning < err.index("reading")  # printed before the progress bar starts


# ----------------------------------------------------------------------------- the command line


def test_exit_status_says_better_not_distinguishable_or_worse(tmp_path, cam_domain_model, capsys, monkeypatch):
    lab = labels_csv(tmp_path / "lab", LAB_COLOURS, 4)  # the base swaps two categories: adapting fixes it
    args = ["adapt", "--model", str(cam_domain_model), "--mpp", "1", "--tissue-threshold", "0.5", "-q"]
    assert main([*args, "--labels", str(lab), "--out", str(tmp_path / "better")]) == 0
    out = capsys.readouterr().out
    assert "Decision: the adapted model is better by 0.67 (0.67–0.67)" in out
    agree = labels_csv(tmp_path / "agree", AGREE, 3)  # the base is right already: nothing to show
    assert main([*args, "--labels", str(agree), "--if-uncertain", "keep-base", "--out", str(tmp_path / "kept")]) == 3
    captured = capsys.readouterr()
    assert "not distinguishable" in captured.out and "Not written" in captured.err and "--force" in captured.err
    assert not (tmp_path / "kept").exists()
    assert main([*args, "--labels", str(agree), "--name", "lab-uncertain"]) == 3  # default: written, marked
    assert "NOT shown better" in capsys.readouterr().err
    side = json.loads((user_models_dir() / "lab-uncertain" / "model.json").read_text())
    assert side["adaptation"]["not_better"] is True and side["adaptation"]["written_because"] == "chosen"
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "lab-uncertain (your models folder" in listed and "NOT shown better than its base" in listed

    import cellview.lab.check as check

    monkeypatch.setattr(check, "decide", lambda *a, **k: Decision("worse", -0.3, -0.5, -0.1, 0.9, "items", 12))
    assert main([*args, "--labels", str(lab), "--out", str(tmp_path / "worse")]) == 4
    captured = capsys.readouterr()
    assert "worse by 0.30 (0.10–0.50)" in captured.err and not (tmp_path / "worse").exists()
    assert main([*args, "--labels", str(lab), "--force", "--name", "lab-forced"]) == 4
    side = json.loads((user_models_dir() / "lab-forced" / "model.json").read_text())
    assert side["adaptation"]["written_because"] == "forced" and "NOT shown better" in side["description"]
    assert "**not better**" in (user_models_dir() / "lab-forced" / "MODEL_CARD.md").read_text()


def test_adapting_an_adapted_model_says_which_base_and_offers_the_shipped_one(tmp_path, cam_domain_model, capsys):
    lab = labels_csv(tmp_path / "lab", LAB_COLOURS, 4)
    args = ["adapt", "--labels", str(lab), "--mpp", "1", "--tissue-threshold", "0.5", "-q"]
    assert main([*args, "--model", str(cam_domain_model), "--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    code = main([*args, "--model", str(tmp_path / "first" / "model.onnx")])
    err = capsys.readouterr().err
    assert code in (0, 3)
    assert "Base: toy-cam-domain-adapted" in err and "itself adapted from toy-cam-domain" in err
    assert "--from-shipped" in err
    second = json.loads((user_models_dir() / "toy-cam-domain-adapted" / "model.json").read_text())  # not …-adapted-adapted
    assert second["adaptation"]["shipped_base"]["name"] == "toy-cam-domain"
    shipped = ModelSpec.load(cam_domain_model)
    code = main([*args, "--model", str(tmp_path / "first" / "model.onnx"), "--from-shipped",
                 "--out", str(tmp_path / "again")])
    assert code == 0 and "Base: toy-cam-domain" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "model.json").read_text())["adaptation"]
    assert again["base"]["onnx_sha256"] == shipped.onnx_sha256


def test_the_viewer_keeps_refusing_what_is_not_shown_better(tmp_path, cam_domain_model):
    """adapt's default (the viewer's job) writes only 'better'; the refusal carries both figures to show."""
    sources, _ = read_labels([labels_csv(tmp_path, AGREE, 3)])
    with pytest.raises(AdaptNotWritten) as err:
        run(sources, ModelSpec.load(cam_domain_model), tmp_path / "m")
    report = err.value.report
    assert report.before.items_balanced_accuracy == report.after.items_balanced_accuracy == 1.0
    assert "not better" in err.value.message and not (tmp_path / "m").exists()
