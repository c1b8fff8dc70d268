"""Labelling in the viewer without Qt (cellview.viewer.labelling.LabelsModel, a ViewerModel's labelling part):
picking tiles, labelling them by key, saving beside the slide (or in the user's folder), reopening, QuPath import,
and Adapt model… as a viewer job."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cellview.analysis.model_spec import ModelSpec
from cellview.lab.adapt import AdaptProgress, AdaptReport
from cellview.lab.labels import IGNORE, LabelRegion, labelled_slides, labels_path, read_geojson, write_geojson
from cellview.testing.synthetic import LAB_BLOCKS, lab_block_rect, lab_slide_rgb, write_pyramid_tiff
from cellview.viewer.jobs import run_now
from cellview.viewer.labelling import LabelsModel, label_choices
from cellview.viewer.model import ViewerModel
from cellview.viewer.settings import MemoryStore


@pytest.fixture
def lab_slide(tmp_path):
    return write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)


@pytest.fixture
def viewer(cam_domain_model):
    m = ViewerModel(run_now, store=MemoryStore(), labelling=True)
    m.analysis.use_cache = False
    m.analysis.auto_analyse = True
    m.settings.set(tissue_threshold=0.5)
    m.set_model(str(cam_domain_model))
    return m


def block_tiles(labels: LabelsModel, k: int) -> list[int]:
    """The tiles whose cells lie in block k of the lab slide."""
    x0, y0, x1, y1 = lab_block_rect(k)
    labels.pick_rect(x0, y0, x1, y1)
    return sorted(labels.picked)


def test_keys_label_the_picked_tiles_and_the_labels_are_saved_beside_the_slide(viewer, lab_slide):
    labels = viewer.labels
    viewer.open(lab_slide)
    assert [(c.key, c.label) for c in labels.choices] == [("1", "malignant"), ("2", "benign"), ("3", "normal")]
    tiles = block_tiles(labels, 0)
    assert len(tiles) == 12  # 2 × 6 tiles of 64 px
    assert labels.label_key("1") == 12 and labels.counts() == {"malignant": 12}
    path = lab_slide.parent / "lab.tiff.labels.geojson"
    assert labels.saved_to == path and path.exists()
    assert [f["properties"]["classification"]["name"] for f in json.loads(path.read_text())["features"]] == \
        ["malignant"] * 12
    # Shift-click adds and removes one tile; a label on a labelled tile replaces it.
    assert labels.picked == set()  # labelling is the pick's end
    labels.pick(tiles[0])
    labels.pick(tiles[1], extend=True)
    labels.pick(tiles[0], extend=True)
    assert labels.picked == {tiles[1]}
    labels.label_key("2")
    assert labels.counts() == {"malignant": 11, "benign": 1}
    # Without a pick, a key labels the tile selected in the inspector; 0 takes the label away.
    labels.clear_picked()
    viewer.selection.select(tiles[1])
    labels.label_key("0")
    assert labels.counts() == {"malignant": 11}
    outlines = labels.outlines()
    assert [o.category for o in outlines] == ["malignant"] and len(outlines[0].segments) >= 4
    assert [s.path for s in labelled_slides()] == [lab_slide.resolve()]
    # Reopened (another slide between), the labels come back from the file.
    viewer.close_slide()
    assert labels.slide is None and labels.counts() == {}
    viewer.open(lab_slide)
    assert labels.counts() == {"malignant": 11} and "lab.tiff.labels.geojson" in labels.note


def test_a_read_only_slide_folder_keeps_the_labels_in_the_user_s_folder(viewer, lab_slide, monkeypatch):
    import cellview.lab.labels as labels_module

    folder = lab_slide.parent
    real_access = os.access
    monkeypatch.setattr(labels_module.os, "access",
                        lambda p, mode: False if os.path.abspath(p) == str(folder) and mode == os.W_OK
                        else real_access(p, mode))
    labels = viewer.labels
    viewer.open(lab_slide)
    block_tiles(labels, 2)
    labels.label_key("3")
    assert labels.saved_to is not None and labels.saved_to.parent != folder and labels.saved_to.exists()
    assert labels_path(lab_slide, writable=False) == labels.saved_to
    viewer.close_slide()
    viewer.open(lab_slide)
    assert labels.counts() == {"normal": 12}


def test_unlabelling_a_tile_under_an_imported_annotation_leaves_it_out(viewer, lab_slide, tmp_path):
    labels = viewer.labels
    viewer.open(lab_slide)
    qupath = tmp_path / "from-qupath.geojson"
    write_geojson(qupath, [LabelRegion.rect("Normal", *lab_block_rect(2)), LabelRegion.rect("Tumor", 0, 0, 9, 9)])
    text = labels.import_geojson(qupath)
    assert "Imported 2 annotations" in text and "Not a label of this model: Tumor" in text
    assert labels.counts() == {"Normal": 12}
    tiles = block_tiles(labels, 2)
    labels.pick(tiles[0])
    labels.label_picked(None)
    assert labels.counts() == {"Normal": 11}
    assert read_geojson(labels.saved_to).regions[-1].label == IGNORE


def test_adapt_model_runs_on_every_labelled_slide_and_writes_a_model(viewer, lab_slide, tmp_path):
    labels = viewer.labels
    viewer.open(lab_slide)
    for k, cat in enumerate(LAB_BLOCKS):
        block_tiles(labels, k)
        labels.label_picked(cat)
    items, errors = [], []
    job = labels.adapt_job("toy-lab", False, items.append, errors.append, lambda: None, out_dir=tmp_path / "m")
    run_now(job)
    assert not errors, errors[0].message if errors else ""
    report = items[-1]
    assert isinstance(report, AdaptReport) and any(isinstance(i, AdaptProgress) for i in items)
    assert report.improved and report.after.items_balanced_accuracy == 1.0
    assert report.cv_how.endswith("(one slide was labelled)")
    spec = ModelSpec.load(tmp_path / "m" / "model.onnx")
    assert spec.name == "toy-lab"
    assert json.loads((tmp_path / "m" / "model.json").read_text())["adaptation"]["files"][0]["path"] == \
        str(lab_slide.resolve())
    # Re-analysed with the adapted model, the lab's purple blocks get the lab's categories.
    viewer.set_model(str(spec.onnx_path))
    viewer.analysis.start()
    result = viewer.analysis.result
    x0, y0, x1, y1 = lab_block_rect(0)
    assert result.model.name == "toy-lab"
    i = result.grid.tile_at((x0 + x1) / 2, (y0 + y1) / 2)
    assert result.pred_category[i] == 0  # malignant


def test_label_choices_are_the_categories_then_the_classes(cam_domain_model):
    from cellview.analysis.results import ModelInfo

    info = ModelInfo.from_spec(ModelSpec.load(cam_domain_model))
    assert [c.label for c in label_choices(info)] == ["malignant", "benign", "normal"]
    six = ModelInfo(name="x", version="", sha256="", class_names=("normal mucosa", "polyp", "serrated", "adenoma",
                                                                   "HGIN", "adenocarcinoma"),
                    class_categories=("normal", "benign", "benign", "benign", "malignant", "malignant"),
                    class_colors=("#000000",) * 6, activation="softmax", temperature=1.0, spacing_um_px=0.8,
                    patch_size_pixels=224)
    choices = label_choices(six)
    assert [c.key for c in choices] == list("123456789")
    assert [c.label for c in choices][:4] == ["malignant", "benign", "normal", "normal mucosa"]
    assert choices[4].text == "polyp (benign)"
    assert np.all([c.color.startswith("#") for c in choices])


def test_a_symlinked_slide_s_labels_are_saved_beside_the_link_not_its_target(viewer, lab_slide, tmp_path):
    data = tmp_path / "someone-elses-data"
    data.mkdir()
    target = data / "lab.tiff"
    lab_slide.rename(target)
    mine = tmp_path / "mine"
    mine.mkdir()
    link = mine / "lab.tiff"
    os.symlink(target, link)
    labels = viewer.labels
    viewer.open(link)
    block_tiles(labels, 0)
    labels.label_key("1")
    assert labels.saved_to == mine / "lab.tiff.labels.geojson" and labels.saved_to.exists()
    assert not (data / "lab.tiff.labels.geojson").exists()
    assert [s.path for s in labelled_slides()] == [link]


def test_imported_qupath_classes_without_a_mapping_never_break_adapt_model(viewer, lab_slide, tmp_path):
    """Importing 'Tumor' and 'Stroma' used to make every later Adapt model… fail with 'Unknown labels'."""
    labels = viewer.labels
    viewer.open(lab_slide)
    for k, cat in enumerate(LAB_BLOCKS):
        block_tiles(labels, k)
        labels.label_picked(cat)
    qupath = tmp_path / "from-qupath.geojson"
    write_geojson(qupath, [LabelRegion.rect("Tumor", 0, 0, 9, 9), LabelRegion.rect("Stroma", 20, 20, 40, 40)])
    labels.import_geojson(qupath)
    items, errors = [], []
    run_now(labels.adapt_job("toy-lab", False, items.append, errors.append, lambda: None, out_dir=tmp_path / "m"))
    assert not errors, errors[0].message if errors else ""
    report = items[-1]
    assert isinstance(report, AdaptReport) and report.written is not None
    assert any("not labels until mapped" in n and "Tumor" in n for n in report.lab.notes)
