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
    assert "Imported 2 annotations" in text and "labelled normal 12 tiles" in text
    assert "Not labels until mapped to a category or class of the model: Tumor" in text
    assert labels.counts() == {"normal": 12}  # QuPath's 'Normal' is the model's category; 'Tumor' is no label yet
    tiles = block_tiles(labels, 2)
    labels.pick(tiles[0])
    labels.label_picked(None)
    assert labels.counts() == {"normal": 11}
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


def test_suggested_tiles_are_tiles_of_the_shown_grid_and_n_steps_through_them(viewer, lab_slide):
    from cellview.lab.suggest import SuggestResult
    from cellview.viewer.suggestions import SuggestTour

    labels = viewer.labels
    tour = SuggestTour(labels)
    assert tour.step() == -1 and not tour.can_suggest  # nothing open: nothing to suggest
    viewer.open(lab_slide)
    assert tour.can_suggest
    items, errors = [], []
    run_now(tour.job(6, items.append, errors.append))
    assert not errors, errors[0].message if errors else ""
    assert isinstance(items[-1], SuggestResult) and len(tour.tiles) == 6 == len(set(tour.tiles))
    grid = labels.grid
    assert all(0 <= i < grid.n_tiles for i in tour.tiles)
    assert tour.rects() == [grid.rect(i) for i in tour.tiles]
    assert "6 tiles suggested" in tour.note
    # N picks the first, then the next; Shift+N goes back; labelling is one more key.
    assert tour.step() == tour.tiles[0] and labels.picked == {tour.tiles[0]}
    assert tour.step() == tour.tiles[1] and tour.where().startswith("Suggested tile 2 of 6")
    assert tour.step(-1) == tour.tiles[0]
    assert labels.label_key("2") == 1 and labels.tile_labels()[tour.tiles[0]] == "benign"
    assert tour.step(-1) == tour.tiles[-1]  # wraps round
    # Another slide drops them.
    viewer.close_slide()
    assert tour.tiles == [] and tour.rects() == []


def test_undo_takes_back_labelling_and_importing_step_by_step(viewer, lab_slide, tmp_path):
    labels = viewer.labels
    viewer.open(lab_slide)
    block_tiles(labels, 0)
    labels.label_key("1")
    block_tiles(labels, 1)
    labels.label_key("2")
    qupath = tmp_path / "q.geojson"
    write_geojson(qupath, [LabelRegion.rect("normal", *lab_block_rect(2))])
    labels.import_geojson(qupath)
    assert labels.counts() == {"malignant": 12, "benign": 12, "normal": 12}
    assert labels.history.undo_text() == "Undo import q.geojson"
    assert labels.undo() == "Undo import q.geojson"
    assert labels.counts() == {"malignant": 12, "benign": 12}
    assert len(read_geojson(labels.saved_to).regions) == 24  # saved at once
    assert labels.history.undo_text() == "Undo label 12 tiles benign"
    labels.undo()
    assert labels.counts() == {"malignant": 12}
    assert labels.redo() == "Redo label 12 tiles benign" and labels.counts() == {"malignant": 12, "benign": 12}
    labels.undo()
    labels.undo()
    assert labels.counts() == {} and labels.undo() == "" and labels.history.undo_text() == ""
    # Another slide starts a new history.
    labels.redo()
    viewer.close_slide()
    assert not labels.history.can_undo and not labels.history.can_redo


def test_imported_annotations_that_miss_the_slide_or_hold_no_tile_centre_say_so(viewer, lab_slide, tmp_path):
    labels = viewer.labels
    viewer.open(lab_slide)
    far = tmp_path / "other-slide.geojson"
    write_geojson(far, [LabelRegion.rect("malignant", 50000 + 100 * i, 50000, 50090 + 100 * i, 50090)
                        for i in range(151)])
    text = labels.import_geojson(far)
    assert text.startswith("Imported 151 annotations from other-slide.geojson: no tile is labelled")
    assert "may belong to another slide" in text and labels.counts() == {}
    small = tmp_path / "small.geojson"
    x0, y0, _, _ = lab_block_rect(1)
    write_geojson(small, [LabelRegion.rect("benign", x0 + 2, y0 + 2, x0 + 12, y0 + 12)])
    text = labels.import_geojson(small)
    assert "no tile is labelled" in text and "contains no tile centre" in text and "smaller than a tile" in text


def test_a_mapped_qupath_class_labels_tiles_in_its_label_s_colour_and_is_remembered(viewer, lab_slide, tmp_path):
    labels = viewer.labels
    viewer.open(lab_slide)
    qupath = tmp_path / "q.geojson"
    write_geojson(qupath, [LabelRegion.rect("Tumor", *lab_block_rect(0)), LabelRegion.rect("Stroma",
                                                                                          *lab_block_rect(1))])
    labels.import_geojson(qupath)
    assert labels.counts() == {} and labels.outlines() == []  # not labels until mapped
    assert labels.foreign_classes() == ["Tumor", "Stroma"] and labels.mapping_for("Tumor") is None
    labels.set_class_map({"Tumor": "malignant", "Stroma": IGNORE})
    assert labels.counts() == {"malignant": 12}
    malignant = next(c.color for c in labels.choices if c.label == "malignant")
    assert [(c.category, c.color) for c in labels.outlines()] == [("malignant", malignant)]  # not the pick's cyan
    assert "labelled malignant 12 tiles" in labels.import_text() and "Left out as mapped: Stroma" in labels.import_text()
    # Proposed again next time (another slide, another session's model part).
    viewer.close_slide()
    viewer.open(lab_slide)
    assert labels.mapping_for("Tumor") == "malignant" and labels.counts() == {"malignant": 12}


def test_the_proposed_name_of_an_adapted_model_does_not_stack(viewer):
    import datetime as dt

    today = dt.date.today().isoformat()
    assert viewer.labels.default_name("colon-he") == f"colon-he-lab-{today}"
    assert viewer.labels.default_name("colon-he-lab-2026-01-02") == f"colon-he-lab-{today}"
    assert viewer.labels.default_name("colon-he-lab-2026-01-02-lab-2026-02-03") == f"colon-he-lab-{today}"


def test_suggestions_made_for_another_slide_or_analysis_are_not_taken(viewer, lab_slide):
    from cellview.lab.suggest import Suggestion, SuggestResult
    from cellview.viewer.suggestions import SuggestTour

    tour = SuggestTour(viewer.labels)
    viewer.open(lab_slide)
    job = tour.job(3)
    grid = viewer.labels.grid
    x, y, w, h = grid.rect(0)
    late = SuggestResult((Suggestion(1, lab_slide, (x, y, w, h), "benign", 0.9, 0.1),), 10)
    job.on_item(late)
    assert tour.tiles == [0]
    viewer.close_slide()
    job.on_item(late)  # the slide closed while it ran
    assert tour.tiles == [] and "suggest again" in tour.note
