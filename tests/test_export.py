"""Exports: CSV, GeoJSON (QuPath tiles), annotated PNG, metadata; all atomic."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import run_analysis
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import ExportError
from cellview.base.files import atomic_write_text
from cellview.outputs.export import export_all, geojson_dict, overlay_on_thumbnail
from cellview.slides.opening import open_slide


@pytest.fixture(scope="module")
def result(synthetic_slide, toy_model):
    return run_analysis(synthetic_slide, OnnxClassifier(ModelSpec.load(toy_model), device="cpu"), AnalysisParams())


def test_export_all_formats(result, synthetic_slide, tmp_path):
    with open_slide(synthetic_slide) as slide:
        thumb = slide.thumbnail(512)
    paths = export_all(result, tmp_path, "synthetic", thumb)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synthetic.csv", "synthetic.geojson", "synthetic.json", "synthetic.png"]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 56 and {r["pred_class"] for r in rows} == {"malignant", "benign", "normal"}
    assert rows[0]["width"] == "128" and rows[0]["scale_unknown"] == "false"

    geo = json.loads(paths["geojson"].read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 56
    f = geo["features"][0]
    assert f["properties"]["objectType"] == "tile"
    assert f["properties"]["classification"]["name"] == "malignant"
    assert len(f["properties"]["classification"]["color"]) == 3
    assert f["geometry"]["coordinates"][0][0] == f["geometry"]["coordinates"][0][-1]
    assert set(f["properties"]["measurements"]) >= {"prob_malignant", "prob_benign", "prob_normal"}

    meta = json.loads(paths["json"].read_text())
    assert meta["model"]["sha256"] == result.model.sha256
    assert meta["slide"]["mpp_source"] == "openslide" and meta["slide"]["fingerprint"]
    counts = {"malignant": 16, "benign": 24, "normal": 16}
    assert meta["tiles"] == {"total": 56, "done": 56, "failed": 0, "pending": 0, "out_of_domain": None,
                             "per_category": counts, "per_class": counts,
                             "per_category_including_out_of_domain": counts,
                             "counts_note": "every classified tile (no domain score for this model)"}
    # A model without domain statistics: every output says the score is absent.
    assert meta["in_domain_fraction"] is None
    assert meta["domain"] == {"available": False, "reason": "domain score: not available for this model"}
    assert rows[0]["domain_score"] == "" and rows[0]["in_domain"] == ""
    assert geo["properties"]["domain_available"] is False and f["properties"]["in_domain"] is None
    assert "domain_score" not in f["properties"]["measurements"]
    assert meta["versions"]["onnxruntime"] and meta["provider"] == "CPU"
    assert set(meta["outputs"]) == {"synthetic.csv", "synthetic.geojson", "synthetic.png"}

    from PIL import Image

    png = Image.open(paths["png"])
    assert png.size[0] > thumb.shape[1] and png.size[1] >= thumb.shape[0]  # thumbnail plus legend panel


def test_overlay_paints_the_right_cells(result, synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        thumb = slide.thumbnail(512)  # 512 × 384: one tile = 32 px
    out = overlay_on_thumbnail(result, thumb, opacity=1.0)
    assert np.array_equal(out[10, 10], thumb[10, 10])          # background untouched
    assert tuple(out[2 * 32 + 16, 2 * 32 + 16]) == (0xD6, 0x27, 0x28)  # malignant cell painted red


def test_geojson_skips_unfinished_tiles(result):
    import dataclasses

    state = result.state.copy()
    state[:10] = 0
    partial = dataclasses.replace(result, state=state, status="cancelled")
    assert len(geojson_dict(partial)["features"]) == 46


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old complete content\n")
    import os

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(ExportError, match="Cannot write"):
        atomic_write_text(target, "new content that never lands")
    assert target.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left behind


def test_export_to_unwritable_place(tmp_path, result):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError):
        export_all(result, blocker / "sub", "s", None, formats=["csv"])


def test_spreadsheet_safe_neutralises_formula_cells_only():
    from cellview.outputs.export import spreadsheet_safe

    for cell in ("=HYPERLINK(\"http://x\",\"y\").svs", "+1+2", "-cmd", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(cell) == "'" + cell
    for cell in ("slide.svs", "", "-0.5", "+3", "1e-3", "a=b"):
        assert spreadsheet_safe(cell) == cell
