"""The slide call end to end: the console line of `cellview analyze`, the metadata JSON, cohort.csv / .html, the
GeoJSON and the PNG legend say the same words; plus the export's times and the progress bar's rate (issue 25)."""

from __future__ import annotations

import csv
import json
import re
import time

import cv2
import numpy as np

from cellview.cli import main
from cellview.testing.synthetic import mosaic_rgb


def _run(capsys, *args, quiet=True):
    code = main(["analyze", *map(str, args), *(["-q"] if quiet else [])])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _call_line(out: str, name: str) -> str:
    lines = out.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: "))
    assert lines[k + 1].startswith("  call: ")
    return lines[k + 1].removeprefix("  call: ")


def test_a_malignant_minority_is_called_malignant_in_the_console_the_metadata_and_cohort_csv(
        mosaic_slide, synthetic_slide, toy_model, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, mosaic_slide, synthetic_slide, "--model", toy_model, "--out", out_dir, "--no-cache")
    assert code == 0, err
    meta = json.loads((out_dir / "mosaic.json").read_text())
    counts = meta["tiles"]["per_category"]
    assert counts == {"malignant": 15, "benign": 8, "normal": 57}  # normal is by far the largest share
    assert meta["image_level"]["pred_category"] == "normal"  # today's mean of the tiles says normal
    call = meta["call"]
    assert call["category"] == "malignant"
    assert call["text"] == ("Malignant: 2 regions, largest 0.04 mm², 19 % of tiles (confidence ≥ 0.9); "
                            "default thresholds, not validated for this model")
    assert call["findings"]["malignant"]["regions"] == 2
    assert _call_line(out, "mosaic.tiff") == call["text"]
    with open(out_dir / "cohort.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert rows["mosaic.tiff"]["call"] == "malignant" and rows["mosaic.tiff"]["call_text"] == call["text"]
    synth = json.loads((out_dir / "synthetic.json").read_text())["call"]
    assert rows["synthetic.tiff"]["call"] == synth["category"] and rows["synthetic.tiff"]["call_text"] == synth["text"]
    page = (out_dir / "cohort.html").read_text()
    assert '<td class="call" data-sort="0"><b style="color:#d62728">Malignant</b>' in page
    # the same words; a figure kept with its unit and "≥" with its figure in the table's narrow column
    assert "2&nbsp;regions, largest 0.04&nbsp;mm², 19&nbsp;% of tiles (confidence ≥&nbsp;0.9)" in page
    geo = json.loads((out_dir / "mosaic.geojson").read_text())
    assert geo["properties"]["call"] == "malignant" and geo["properties"]["call_text"] == call["text"]
    # a second run skips both slides and keeps their calls in the table
    code, out, err = _run(capsys, mosaic_slide, synthetic_slide, "--model", toy_model, "--out", out_dir, "--no-cache")
    assert code == 0 and "0 analysed, 2 up to date" in err
    with open(out_dir / "cohort.csv", newline="") as fh:
        again = {r["name"]: r for r in csv.DictReader(fh)}
    assert again["mosaic.tiff"]["status"] == "skipped" and again["mosaic.tiff"]["call_text"] == call["text"]


def test_a_folder_of_images_gets_one_row_and_one_call_per_image(toy_model, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "mixed.png"), cv2.cvtColor(mosaic_rgb(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "normal.png"), cv2.cvtColor(mosaic_rgb(["NNNN", "NNNN"]), cv2.COLOR_RGB2BGR))
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, folder, "--model", toy_model, "--mpp", "0.5", "--out", out_dir, "--no-cache")
    assert code == 0, err
    with open(out_dir / "cohort.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert {k: v["call"] for k, v in rows.items()} == {"mixed.png": "malignant", "normal.png": "normal"}
    assert rows["normal.png"]["call_text"].startswith("Normal: 100 % of tiles normal")
    for name in ("mixed.png", "normal.png"):
        assert _call_line(out, name) == rows[name]["call_text"]
    assert out.count("most probable class (mean of") == 2  # a detail under the call, no longer its headline
    (folder / "normal.png").unlink()  # a folder of one image still gets its row
    code, out, err = _run(capsys, folder, "--model", toy_model, "--mpp", "0.5", "--out", tmp_path / "one", "--no-cache")
    assert code == 0, err
    with open(tmp_path / "one" / "cohort.csv", newline="") as fh:
        assert [(r["name"], r["call"]) for r in csv.DictReader(fh)] == [("mixed.png", "malignant")]


def test_the_legend_and_the_png_carry_the_call(mosaic_slide, toy_model):
    from cellview.analysis.call import slide_call
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.pipeline import run_analysis
    from cellview.outputs.export import annotated_png
    from cellview.outputs.legend import call_colour, describe_legend
    from cellview.outputs.overlay import OverlaySettings

    result = run_analysis(mosaic_slide, OnnxClassifier(ModelSpec.load(toy_model), device="cpu"))
    legend = describe_legend(result, OverlaySettings(min_confidence=0.99, categories=("normal",)))
    assert legend.call == slide_call(result)  # the display filters do not change the slide's call
    assert legend.lines()[0] == f"Call: {slide_call(result).text}"
    assert call_colour(legend.call) == "#d62728"
    thumb = np.full((200, 250, 3), 240, np.uint8)
    png = cv2.imdecode(np.frombuffer(annotated_png(result, thumb), np.uint8), cv2.IMREAD_COLOR)
    panel = png[:, 250:]
    red = (panel[..., 2] > 180) & (panel[..., 1] < 80) & (panel[..., 0] < 80)
    assert red[:120].sum() > 50  # the headline, in the malignant red, at the top of the legend


def test_an_export_from_the_cache_records_when_it_was_made_and_when_the_slide_was_analysed(
        synthetic_slide, toy_model, tmp_path, capsys, monkeypatch):
    from cellview.outputs.export import metadata_dict
    from cellview.testing.synthetic import grid_result

    old = grid_result(["MN"])
    from dataclasses import replace

    data = metadata_dict(replace(old, created_unix=86400.0 * 365))
    assert data["analysed"].startswith("1971-01-0")
    assert int(data["created"][:4]) >= 2024  # this export, not the run's time
    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("CELLVIEW_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = _run(capsys, synthetic_slide, "--model", toy_model, "--out", first, "--formats", "json")
    assert code == 0, err
    code, _, err = _run(capsys, synthetic_slide, "--model", toy_model, "--out", second, "--formats", "json")
    assert code == 0, err
    a = json.loads((first / "synthetic.json").read_text())
    b = json.loads((second / "synthetic.json").read_text())
    assert not a["from_cache"] and b["from_cache"]
    assert b["analysed"] == a["analysed"]  # the same analysis, found in the cache
    assert b["created"] >= a["created"] >= a["analysed"]


def test_the_progress_bar_shows_the_pipelines_rate_never_an_absurd_one(synthetic_slide, toy_model, tmp_path,
                                                                       capsys, monkeypatch):
    from cellview.analysis.classifier import OnnxClassifier

    pause_s = 0.2
    classify = OnnxClassifier.classify

    def slow(self, tiles, *args, **kwargs):
        time.sleep(pause_s)
        return classify(self, tiles, *args, **kwargs)

    monkeypatch.setenv("CELLVIEW_CACHE_DIR", str(tmp_path / "cache"))  # a fresh cache: the first run classifies
    monkeypatch.setattr(OnnxClassifier, "classify", slow)
    code, out, err = _run(capsys, synthetic_slide, "--model", toy_model, "--out", tmp_path / "a", "--formats", "json",
                          quiet=False)
    assert code == 0, err
    n_tiles = json.loads((tmp_path / "a" / "synthetic.json").read_text())["tiles"]["done"]
    rates = [float(x) for x in re.findall(r"([\d.]+) ?tiles?/s", err)]
    assert rates, err
    # at least one classification (≥ pause_s) precedes any progress, so no honest rate can be higher
    assert max(rates) <= n_tiles / pause_s, err
    monkeypatch.setattr(OnnxClassifier, "classify", classify)
    code, out, err = _run(capsys, synthetic_slide, "--model", toy_model, "--out", tmp_path / "b", "--formats", "json",
                          quiet=False)
    assert code == 0, err
    assert "cached" in err and not re.search(r"tiles?/s", err), err  # from the cache: no rate to show
