"""Labels from QuPath, as each version writes them, are what the user meant (issue 26, section 3): cells and
detections of 0.2 / 0.3 / 0.4+ are not labels, derived classes keep their name, .geojson.gz is read, the
<slide>.svs.geojson a QuPath script writes finds its slide, annotations that miss the slide or are smaller than a
tile say so, labels stay beside the path the user opened, QuPath's own classes need a mapping (remembered) and
never break adapt, and labelling can be undone. Every file here is written in the version's own format."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import plan_grid
from cellview.analysis.results import AnalysisParams
from cellview.cli import main
from cellview.lab.classmap import (
    LEAVE_OUT,
    apply_mapping,
    mapping_choices,
    pending_classes,
    remember_mapping,
    remembered_mapping,
    valid_labels,
)
from cellview.lab.history import LabelHistory
from cellview.lab.labels import (
    LabelError,
    LabelRegion,
    labels_path,
    qupath_class_name,
    read_geojson,
    read_labels,
    summarise_import,
    write_geojson,
)
from cellview.slides.opening import open_slide
from cellview.testing.synthetic import lab_block_rect, lab_slide_rgb, write_pyramid_tiff

SQUARE = [[[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]]
CELL = [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]


def _poly(coords):
    return {"type": "Polygon", "coordinates": coords}


def qupath_02() -> list:
    """QuPath 0.2: a list of features; the object type is the feature's "id"; classes as Gson wrote PathClass."""
    return [
        {"type": "Feature", "id": "PathAnnotationObject", "geometry": _poly(SQUARE),
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False,
                        "measurements": []}},
        *({"type": "Feature", "id": "PathCellObject", "geometry": _poly(CELL),
           "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "measurements": []}}
          for _ in range(30)),
        {"type": "Feature", "id": "PathDetectionObject", "geometry": _poly(CELL),
         "properties": {"classification": {"name": "Stroma", "colorRGB": -6895466}}},
    ]


def qupath_03() -> dict:
    """QuPath 0.3: a FeatureCollection; the type in properties.object_type."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": _poly(SQUARE),
         "properties": {"object_type": "annotation", "classification": {"name": "Stroma", "colorRGB": -6895466}}},
        *({"type": "Feature", "geometry": _poly(CELL), "nucleusGeometry": _poly(CELL),
           "properties": {"object_type": "cell", "classification": {"name": "Tumor", "colorRGB": -3670016}}}
          for _ in range(30)),
        {"type": "Feature", "geometry": _poly(CELL),
         "properties": {"object_type": "detection", "classification": {"name": "Tumor", "colorRGB": -3670016}}},
    ]}


def qupath_04() -> dict:
    """QuPath 0.4+: properties.objectType, a UUID id, classes as {"name"|"names", "color"}."""
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "0e8a2c9e-1c53-4b8e-9a7e-4f2a8c1d2b3e", "geometry": _poly(SQUARE),
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "1f9b3d0f-2d64-4c9f-8b8f-5a3b9d2e3c4f", "geometry": _poly(CELL),
         "properties": {"objectType": "cell", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "2a0c4e1a-3e75-4da0-9c90-6b4cae3f4d5a", "geometry": _poly(CELL),
         "properties": {"objectType": "tile"}},
    ]}


def test_cells_and_detections_of_qupath_0_2_0_3_and_0_4_are_not_labels(tmp_path):
    for version, data, label in (("0.2", qupath_02(), "Tumor"), ("0.3", qupath_03(), "Stroma"),
                                 ("0.4", qupath_04(), "Tumor")):
        path = tmp_path / f"v{version}.geojson"
        path.write_text(json.dumps(data))
        got = read_geojson(path)
        assert [r.label for r in got.regions] == [label], version  # the one annotation, not 30 cells
        assert any("cell objects (not annotations)" in s for s in got.skipped), (version, got.skipped)
    assert any(s.startswith("30 cell") for s in read_geojson(tmp_path / "v0.2.geojson").skipped)
    assert any("detection objects" in s for s in read_geojson(tmp_path / "v0.3.geojson").skipped)


def test_derived_classes_keep_their_name_in_every_form():
    assert qupath_class_name({"names": ["Tumor", "Positive"], "color": [200, 0, 0]}) == "Tumor: Positive"  # 0.4+
    old = {"name": "Positive", "colorRGB": -377282,  # before 0.4: Gson's PathClass with its parent
           "parentClass": {"name": "Tumor", "colorRGB": -3670016}}
    assert qupath_class_name(old) == "Tumor: Positive"
    assert qupath_class_name({"name": "3+", "parentClass": old}) == "Tumor: Positive: 3+"
    assert qupath_class_name("Tumor: Positive") == "Tumor: Positive"
    assert qupath_class_name({"name": "Tumor", "color": [1, 2, 3]}) == "Tumor"
    assert qupath_class_name({}) is None and qupath_class_name(None) is None


def test_a_derived_class_read_from_a_file_is_not_unclassified(tmp_path):
    data = qupath_04()
    data["features"][0]["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [200, 0, 0]}
    path = tmp_path / "derived.geojson"
    path.write_text(json.dumps(data))
    got = read_geojson(path)
    assert [r.label for r in got.regions] == ["Tumor: Positive"]
    assert not any("without a classification" in s for s in got.skipped)


@pytest.fixture
def lab_slide(tmp_path):
    return write_pyramid_tiff(tmp_path / "lab.tiff", lab_slide_rgb(), 1.0, levels=2)


def _blocks_geojson(blocks: list[int], names: list[str]) -> dict:
    feats = []
    for k, name in zip(blocks, names):
        x0, y0, x1, y1 = lab_block_rect(k)
        feats.append({"type": "Feature", "geometry": _poly([[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]),
                      "properties": {"objectType": "annotation", "classification": {"name": name}}})
    return {"type": "FeatureCollection", "features": feats}


def test_gzipped_qupath_exports_and_slide_svs_geojson_find_their_slide(lab_slide):
    data = _blocks_geojson([0, 1], ["malignant", "benign"])
    gz = lab_slide.with_name("lab.tiff.geojson.gz")  # QuPath: getImageName() + ".geojson", compressed
    gz.write_bytes(gzip.compress(json.dumps(data).encode()))
    sources, _ = read_labels([gz])
    assert sources[0].path == lab_slide and [r.label for r in sources[0].regions] == ["malignant", "benign"]
    plain = lab_slide.with_name("lab.tiff.geojson")
    plain.write_text(json.dumps(data))
    assert read_labels([plain])[0][0].path == lab_slide
    stray = lab_slide.with_name("CMU-1-Small-Region.svs.geojson")
    stray.write_text(json.dumps(data))
    with pytest.raises(LabelError) as err:
        read_labels([stray])
    assert "CMU-1-Small-Region.svs" in err.value.message and ".svs.svs" not in err.value.message


def test_annotations_that_miss_the_slide_or_are_smaller_than_a_tile_say_so(lab_slide):
    with open_slide(lab_slide) as slide:
        _, grid = plan_grid(slide, 64, 1.0, AnalysisParams(tissue_threshold=0.5))
    far = [LabelRegion.rect("benign", 50_000 + i, 50_000, 50_400 + i, 50_400) for i in range(3)]
    summary = summarise_import(far, grid)
    assert summary.labelled_tiles == 0 and summary.outside == 3
    assert "no tile is labelled" in summary.text("x.geojson") and "another slide" in summary.text()
    x0, y0, _, _ = lab_block_rect(1)
    tiny = [LabelRegion.rect("malignant", *lab_block_rect(0)), LabelRegion.rect("benign", x0 + 2, y0 + 2, x0 + 20,
                                                                                y0 + 20)]
    summary = summarise_import(tiny, grid)
    assert summary.tiles_per_label["malignant"] == 12 and summary.tiles_per_label["benign"] == 0
    assert "no tile centre" in summary.problems["benign"] and "smaller than a tile" in summary.problems["benign"]


def test_cli_says_why_only_one_category_is_labelled(lab_slide, cam_domain_model, capsys):
    x0, y0, _, _ = lab_block_rect(1)
    data = _blocks_geojson([0, 3], ["malignant", "malignant"])
    data["features"].append({"type": "Feature", "geometry": _poly([[[90000, 0], [91000, 0], [91000, 900],
                                                                     [90000, 900], [90000, 0]]]),
                             "properties": {"objectType": "annotation", "classification": {"name": "benign"}}})
    data["features"].append({"type": "Feature", "geometry": _poly([[[x0 + 2, y0 + 2], [x0 + 20, y0 + 2],
                                                                     [x0 + 20, y0 + 20], [x0 + 2, y0 + 20],
                                                                     [x0 + 2, y0 + 2]]]),
                             "properties": {"objectType": "annotation", "classification": {"name": "normal"}}})
    path = lab_slide.with_name("lab.tiff.geojson")
    path.write_text(json.dumps(data))
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(path), "--tissue-threshold", "0.5",
                 "--out", str(lab_slide.parent / "m"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Only malignant tissue is labelled" in err
    assert "benign (lab.tiff: its annotation lies outside the slide" in err and "another slide" in err
    assert "normal (lab.tiff: its annotation contains no tile centre: smaller than a tile" in err


def test_labels_are_kept_beside_the_path_the_user_opened_not_the_symlink_target(tmp_path):
    data = tmp_path / "shared-data"
    data.mkdir()
    target = data / "slide.svs"
    target.write_bytes(b"x")
    mine = tmp_path / "mine"
    mine.mkdir()
    link = mine / "slide.svs"
    os.symlink(target, link)
    assert labels_path(link) == mine / "slide.svs.labels.geojson"
    assert labels_path(link, writable=False) == mine / "slide.svs.labels.geojson"
    older = data / "slide.svs.labels.geojson"  # where an earlier version saved them: still found
    write_geojson(older, [LabelRegion.rect("normal", 0, 0, 1, 1)])
    assert labels_path(link, writable=False) == older
    write_geojson(labels_path(link), [LabelRegion.rect("benign", 0, 0, 1, 1)])
    assert labels_path(link, writable=False) == mine / "slide.svs.labels.geojson"


def test_qupath_classes_need_a_mapping_which_is_remembered(cam_domain_model):
    spec = ModelSpec.load(cam_domain_model)
    valid = valid_labels(spec.class_names, spec.class_categories)
    assert mapping_choices(spec.class_names, spec.class_categories)[-1] == LEAVE_OUT
    regions = [LabelRegion.rect("Normal", 0, 0, 9, 9), LabelRegion.rect("Tumor", 0, 0, 9, 9),
               LabelRegion.rect("Stroma", 0, 0, 9, 9)]
    assert pending_classes(regions, valid) == ["Tumor", "Stroma"]
    got = apply_mapping(regions, valid)
    assert [r.label for r in got.regions] == ["normal"] and got.pending == ("Tumor", "Stroma")
    assert any("not labels until mapped" in n for n in got.notes())
    remember_mapping("Tumor", "malignant")
    remember_mapping("Stroma", LEAVE_OUT)
    assert remembered_mapping() == {"Tumor": "malignant", "Stroma": LEAVE_OUT}
    got = apply_mapping(regions, valid)
    assert [r.label for r in got.regions] == ["normal", "malignant"] and got.pending == ()
    assert got.left_out == ("Stroma",) and pending_classes(regions, valid) == []
    remember_mapping("Tumor", None)
    assert pending_classes(regions, valid) == ["Tumor"]


def test_unmapped_qupath_classes_never_break_adapt_and_map_from_the_command_line(lab_slide, cam_domain_model,
                                                                                tmp_path, capsys):
    names = ["Tumor", "Stroma", "normal", "Tumor", "Stroma", "normal"]  # QuPath's defaults beside valid labels
    path = lab_slide.with_name("lab.tiff.geojson")
    path.write_text(json.dumps(_blocks_geojson(list(range(6)), names)))
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(path), "--tissue-threshold", "0.5",
                 "--out", str(tmp_path / "m1"), "-q"])
    err = capsys.readouterr().err
    assert "Unknown label" not in err and "not labels until mapped" in err
    assert code == 2 and "Only normal tissue is labelled" in err  # what is left is one category: said plainly
    code = main(["adapt", "--model", str(cam_domain_model), "--labels", str(path), "--tissue-threshold", "0.5",
                 "--map", "Tumor=benign", "--map", "Stroma=malignant", "--out", str(tmp_path / "m2"), "-q"])
    captured = capsys.readouterr()
    assert "Tumor read as benign" in captured.err and code in (0, 3)
    assert "Before → after" in captured.out


def test_labelling_can_be_undone_and_redone():
    a = (LabelRegion.rect("benign", 0, 0, 1, 1),)
    b = (*a, LabelRegion.rect("normal", 1, 0, 2, 1))
    c = (LabelRegion.rect("malignant", 0, 0, 1, 1),)
    history = LabelHistory(max_steps=2)
    assert not history.can_undo and history.undo() is None
    history.record((), a, "label 1 tile benign")
    history.record(a, a, "nothing")  # no change, no step
    history.record(a, b, "label 1 tile normal")
    assert history.undo_text() == "Undo label 1 tile normal"
    assert history.undo() == a and history.redo_text() == "Redo label 1 tile normal"
    assert history.redo() == b and not history.can_redo
    history.undo()
    history.record(a, c, "remove a label")  # a new change forgets the redo
    assert not history.can_redo
    assert history.undo() == a and history.undo() == () and history.undo() is None
    for before, after in (((), a), (a, b), (b, c)):
        history.record(before, after, "step")
    assert history.undo() == b and history.undo() == a and history.undo() is None  # bounded: the last two kept


def test_the_viewer_s_labels_write_back_as_annotations_only(tmp_path):
    """QuPath 0.2 cells imported once must not come back as 30 labelled annotations in the labels file."""
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps(qupath_02()))
    regions = read_geojson(path).regions
    out = write_geojson(tmp_path / "s.svs.labels.geojson", regions)
    features = json.loads(out.read_text())["features"]
    assert len(features) == 1 and features[0]["properties"]["objectType"] == "annotation"

