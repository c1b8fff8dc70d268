"""The Qt-free viewer state (cellview.viewer.model.ViewerModel) driven like the GUI drives it, without Qt."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, hex_to_rgb
from cellview.analysis.pipeline import BatchDone, Finished, Started, analyze
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import CellviewError
from cellview.testing.synthetic import SYNTH_BLOCKS, SYNTH_TILE, make_toy_model
from cellview.viewer.jobs import run_now
from cellview.viewer.model import ViewerModel
from cellview.viewer.settings import MemoryStore
from cellview.viewer.slide import WHOLE_IMAGE


class Recorder:
    """Every event the model emits, in order, as (type, value)."""

    def __init__(self, model: ViewerModel) -> None:
        self.events: list[tuple[str, object]] = []
        for group in [model.events] + [part.events for part in model.parts().values()]:
            for name in group.names:
                getattr(group, name).connect(lambda e: self.events.append((e.type, e.value)))

    def of(self, kind: str) -> list[object]:
        return [v for t, v in self.events if t == kind]


@pytest.fixture
def model(toy_model) -> ViewerModel:
    m = ViewerModel(run_now, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(toy_model))
    return m


def test_each_event_belongs_to_one_part():
    """The parts' events keep the names the views listen to, each owned by one part (the recorder relies on it)."""
    m = ViewerModel(run_now, store=MemoryStore(), labelling=True)
    owners = [(name, part) for part, obj in [("model", m)] + list(m.parts().items()) for name in obj.events.names]
    names = [name for name, _ in owners]
    assert len(names) == len(set(names))
    owner = dict(owners)
    assert (owner["slide"], owner["result"], owner["selection"], owner["domain"], owner["explanation"],
            owner["status"], owner["picked"]) == ("slide", "analysis", "selection", "overlay", "explain", "model",
                                                  "labels")
    assert list(m.parts()) == list(ViewerModel.PARTS)
    assert "labels" not in ViewerModel(run_now, store=MemoryStore()).parts()


def test_open_analyse_select_and_step(model, synthetic_slide):
    rec = Recorder(model)
    model.analysis.auto_analyse = True
    model.open(synthetic_slide)
    assert model.slide.opened is not None and model.slide.opened.info.name == "synthetic"
    result = model.analysis.result
    assert result is not None and result.status == "complete" and result.n_done == 56
    kinds = [t for t, _ in rec.events]
    # opening → the slide → the run (model loaded, progress streaming) → the result
    assert kinds.index("slide") < kinds.index("model_ready") < kinds.index("result")
    assert [p.phase for p in rec.of("progress")][0] == "preparing" and rec.of("progress")[-1].phase == "done"
    assert rec.of("running") == [True, False] and len(rec.of("tiles")) >= 1
    r0, _, c0, _ = SYNTH_BLOCKS["malignant"]
    i = model.selection.select_at(c0 * SYNTH_TILE + 5, r0 * SYNTH_TILE + 5)
    assert i >= 0 and model.selection.index == i and rec.of("selection")[-1] == i
    j = model.selection.step(0, 1)
    g = result.grid
    assert (g.grid_row[j], g.grid_col[j]) == (r0, c0 + 1)


def test_a_bad_file_never_replaces_the_open_slide(model, synthetic_slide, tmp_path):
    model.analysis.auto_analyse = True
    model.open(synthetic_slide)
    slide, result = model.slide.opened, model.analysis.result
    rec = Recorder(model)
    bad = tmp_path / "x.svs"
    bad.write_bytes(b"")
    model.open(bad)
    assert model.slide.opened is slide and model.analysis.result is result  # nothing lost
    (title, error), = rec.of("error")
    assert title == "Cannot open slide" and "x.svs is empty" in error.message
    assert rec.of("slide") == [] and rec.of("result") == [] and rec.of("open_failed")[0][0] == str(bad)
    assert model.slide.opening is None and model.analysis.can_analyse


def test_nothing_open_means_nothing_to_analyse(model, synthetic_slide):
    assert not model.analysis.can_analyse and not model.analysis.start()
    model.open(synthetic_slide)
    assert model.analysis.can_analyse
    model.close_slide()
    assert model.slide.opened is None and not model.analysis.can_analyse and model.analysis.result is None


def test_switching_the_model_clears_or_reruns(model, synthetic_slide, tmp_path):
    other = make_toy_model(tmp_path / "other", patch_px=64, spacing_um=1.0, name="toy-other")
    model.open(synthetic_slide)
    assert model.analysis.start() and model.analysis.result.model.name == "toy-colour"
    rec = Recorder(model)
    model.set_model(str(other))  # auto-analyse off: the old result goes, nothing runs
    assert model.analysis.result is None and rec.of("result") == [None] and rec.of("running") == []
    assert model.analysis.progress.phase == "idle"
    model.analysis.start()
    assert model.analysis.result.model.name == "toy-other"
    model.analysis.auto_analyse = True
    rec = Recorder(model)
    model.set_model(str(tmp_path / "missing.onnx"))
    # with auto-analyse on the slide is run again; a model file that does not exist says why
    assert model.analysis.result is None and rec.of("result")[0] is None and rec.of("running") == [True, False]
    assert [title for title, _ in rec.of("error")] == ["Analysis failed"]


def test_auto_analyse_reruns_with_the_new_model(model, synthetic_slide, tmp_path):
    other = make_toy_model(tmp_path / "other", patch_px=64, spacing_um=1.0, name="toy-other")
    model.analysis.auto_analyse = True
    model.open(synthetic_slide)
    assert model.analysis.result.model.name == "toy-colour"
    rec = Recorder(model)
    model.set_model(str(other))
    assert rec.of("result")[0] is None  # the old model's result is gone before the new one arrives
    assert model.analysis.result.model.name == "toy-other" and model.analysis.result_model_path == str(other)


def test_changed_settings_mark_the_result_stale(model, synthetic_slide):
    model.open(synthetic_slide)
    model.analysis.start()
    assert not model.analysis.stale
    model.settings.set(tissue_threshold=0.6)
    assert model.analysis.stale and model.analysis.result is not None  # kept on screen until Analyse
    model.analysis.start()
    assert not model.analysis.stale and model.analysis.result.params.tissue_threshold == 0.6


def test_unknown_scale_is_asked_and_remembered(model, tmp_path):
    from cellview.testing.synthetic import synthetic_slide_rgb, write_pyramid_tiff

    path = write_pyramid_tiff(tmp_path / "nompp.tiff", synthetic_slide_rgb(), None)
    asked = []
    model.slide.ask_scale = lambda opened: asked.append(opened.path) or 0.5
    model.open(path)
    assert model.analysis.start() and asked and model.analysis.result.slide.mpp.source == "user"
    model.slide.ask_scale = lambda opened: pytest.fail("asked again")
    model.open(path)
    assert model.slide.opened.info.mpp.um == 0.5 and model.analysis.start()
    model.slide.ask_scale = None  # the kiosk: nobody to ask; the pipeline's own message fails the run
    model.store.mpp.clear()
    model.open(path)
    errors = []
    model.events.error.connect(lambda e: errors.append(e.value[1].message))
    model.analysis.start()
    assert model.analysis.result is None
    assert "does not say how many µm a pixel is" in errors[0] and "--mpp" not in errors[0]
    model.slide.set_scale(WHOLE_IMAGE)
    assert model.slide.mpp_choice == WHOLE_IMAGE and model.settings.current().whole_image


def test_cancel_keeps_finished_tiles(model, synthetic_slide, toy_model):
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec

    classifier = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")

    def source(request, cancel):  # the kiosk's way: a preloaded classifier; cancel after two batches
        for event in analyze(request.path, classifier, request.params.__class__(batch_size=8, workers=1), cancel):
            if isinstance(event, BatchDone) and event.done >= 16:
                cancel.cancel()
            yield event

    model.open(synthetic_slide)
    partial_seen = []
    model.analysis.events.tiles.connect(lambda e: partial_seen.append(model.analysis.shown_result().n_done))
    assert model.analysis.start(source=source, spec=classifier.spec)
    assert model.analysis.result.status == "cancelled" and 16 <= model.analysis.result.n_done < 56
    assert partial_seen[:2] == [8, 16]


def test_overlay_settings_drive_regions(model, synthetic_slide):
    model.open(synthetic_slide)
    model.analysis.start()
    rec = Recorder(model)
    model.overlay.set(show_regions=True)
    regions = model.regions.shown
    assert len(regions) == 1 and regions[0].n_tiles == 16 and rec.of("regions")[-1] == regions
    model.overlay.set(min_confidence=0.99)  # the threshold drives them: computed again
    assert len(rec.of("regions")) == 2 and model.regions.confidence == 0.99
    model.overlay.set(opacity=0.2, style="fill")  # cannot change regions: no recomputation
    assert rec.of("overlay")[-1].opacity == 0.2 and len(rec.of("regions")) == 2
    model.overlay.set(show_regions=False)
    assert model.regions.shown == [] and rec.of("regions")[-1] == []


def test_export_never_takes_the_regions_of_an_earlier_result(toy_model):
    """While the new result's regions job runs, the regions on screen belong to the old one: not exported."""
    from cellview.testing.synthetic import grid_result

    held = []

    def runner(job):  # regions jobs wait until released, as a slow worker would
        if job.name == "regions" and hold[0]:
            held.append(job)

            class Pending:
                def cancel(self):
                    pass
            return Pending()
        return run_now(job)

    hold = [False]
    m = ViewerModel(runner, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(toy_model))
    first, second = grid_result(["MM.", "MM.", "..."]), grid_result(["...", ".MM", ".MM"])
    m.analysis.set_result(first)
    m.overlay.set(show_regions=True)
    assert [r.bbox for r in m.regions.shown] == [(0, 0, 200, 200)]
    hold[0] = True
    m.analysis.set_result(second)
    m.regions.update()
    assert held, "the second result's regions job should still be running"
    regions, _ = m.regions.for_export(second)
    assert [r.bbox for r in regions] == [(100, 100, 200, 200)]


def test_viewer_exports_go_through_the_cli_renderer(model, synthetic_slide, tmp_path, capsys):
    """One export path: the viewer's GeoJSON has the CLI's region annotations; CSV bytes are equal."""
    from cellview.cli import main

    model.open(synthetic_slide)
    model.analysis.start()
    model.overlay.set(min_confidence=0.5)  # the CLI's default region confidence
    out = model.exports.export_all(tmp_path / "viewer")
    assert sorted(out) == ["csv", "geojson", "json", "png"]
    assert main(["analyze", str(synthetic_slide), "--model", model.settings.model_path, "--out", str(tmp_path / "cli"),
                 "-q", "--no-cache"]) == 0
    capsys.readouterr()
    cli = {k: tmp_path / "cli" / f"synthetic{s}" for k, s in (("csv", ".csv"), ("geojson", ".geojson"))}
    assert out["csv"].read_bytes() == cli["csv"].read_bytes()
    mine, theirs = (json.loads(p.read_text()) for p in (out["geojson"], cli["geojson"]))
    assert mine["features"] == theirs["features"]
    assert [f["properties"]["objectType"] for f in mine["features"]].count("annotation") == 1
    meta = json.loads(out["json"].read_text())
    assert meta["export_options"]["display"]["min_confidence"] == 0.5 and meta["malignant_regions"]["regions"]
    single = model.exports.export_file("geojson", tmp_path / "one.geojson")
    assert json.loads(single.read_text())["features"] == mine["features"]


def test_png_export_shows_what_the_screen_shows(model, synthetic_slide, tmp_path):
    from PIL import Image

    model.open(synthetic_slide)
    model.analysis.start()
    thumb = model.slide.opened.thumbnail
    k = thumb.shape[1] / model.analysis.result.grid.slide_w_l0

    def png(**overlay) -> np.ndarray:
        model.overlay.set(**overlay)
        path = model.exports.export_file("png", tmp_path / "x.png")
        return np.asarray(Image.open(path).convert("RGB"))[:thumb.shape[0], :thumb.shape[1]].astype(int)

    def at(img, row, col):  # a pixel in tile (row, col), an eighth of a tile in from its top-left corner
        return img[int((row + 0.125) * SYNTH_TILE * k), int((col + 0.125) * SYNTH_TILE * k)]

    def centre(img, row, col):
        return img[int((row + 0.5) * SYNTH_TILE * k), int((col + 0.5) * SYNTH_TILE * k)]

    r0, r1, c0, c1 = SYNTH_BLOCKS["malignant"]
    red = np.array(hex_to_rgb(CATEGORY_COLORS["malignant"]))
    fill = png(style="fill", opacity=1.0)
    assert np.abs(centre(fill, r0 + 1, c0 + 1) - red).max() <= 3  # painted, as on screen
    outline = png(style="outline")
    assert np.abs(centre(outline, r0 + 1, c0 + 1) - thumb[int((r0 + 1.5) * SYNTH_TILE * k),
                                                          int((c0 + 1.5) * SYNTH_TILE * k)]).max() <= 3
    edge = outline[int(r0 * SYNTH_TILE * k), int((c0 + 1.5) * SYNTH_TILE * k)]
    assert np.abs(edge - red).max() <= 3  # the block's top border is drawn in its colour
    hidden = png(style="fill", categories=("benign", "normal"))
    assert np.abs(at(hidden, r0, c0) - at(png(style="outline", categories=()), r0, c0)).max() <= 3


def test_export_folder_falls_back_when_the_slide_folder_is_read_only(model, synthetic_slide, monkeypatch, tmp_path):
    import cellview.base.files as files

    model.open(synthetic_slide)
    model.analysis.start()
    path, note = model.exports.suggest_path("csv")
    assert path == Path(synthetic_slide).parent / "synthetic.csv" and note == ""
    slide_dir = Path(synthetic_slide).parent
    monkeypatch.setattr(files, "_can_write", lambda folder: Path(folder) != slide_dir)
    monkeypatch.setattr(files, "default_export_dir", lambda: tmp_path / "Documents" / "CellView")
    path, note = model.exports.suggest_path("csv")
    assert path == tmp_path / "Documents" / "CellView" / "synthetic.csv" and path.parent.is_dir()
    assert "cannot be written" in note and str(path.parent) in note


def test_open_dialog_starts_where_slides_are_not_in_the_export_folder(model, synthetic_slide, tmp_path):
    model.open(synthetic_slide)
    model.analysis.start()
    model.exports.export_file("csv", tmp_path / "exports" / "a.csv")
    assert model.slide.open_dialog_dir() == str(Path(synthetic_slide).parent)  # the newest recent slide's folder
    model.slide.remember_open_dir(tmp_path / "somewhere" / "b.svs")
    (tmp_path / "somewhere").mkdir()
    assert model.slide.open_dialog_dir() == str(tmp_path / "somewhere")


def test_recent_slides_name_a_dicom_slide_by_its_folder(model, tmp_path):
    dicom = tmp_path / "CMU-1-dicom" / "1.2.826.0.1.3680043.8.498.1.dcm"
    dicom.parent.mkdir()
    dicom.write_bytes(b"x")
    model.store.add_recent_file(str(dicom))
    (recent,) = model.slide.recent()
    assert recent.name == "CMU-1-dicom" and recent.path == str(dicom)


def test_tissue_preview(model, synthetic_slide):
    model.open(synthetic_slide)
    masks = []
    model.tissue.events.tissue.connect(lambda e: masks.append(e.value))
    model.settings.set_tissue(method="od")
    model.tissue.preview()
    assert masks and masks[0].method == "od" and 0 < masks[0].fraction < 1


def test_job_items_the_model_does_not_know_reach_the_view(model, synthetic_slide, toy_model):
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec

    classifier = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")

    def source(request, cancel):
        yield from analyze(request.path, classifier, request.params, cancel)
        yield "exported"

    items = []
    model.analysis.events.job_item.connect(lambda e: items.append(e.value))
    model.open(synthetic_slide, analyse=True, source=source, spec=classifier.spec)
    assert items == ["exported"] and model.analysis.result.n_done == 56


def test_a_failing_callback_source_is_reported(model, synthetic_slide):
    def broken(request, cancel):
        yield Started(request.path, None, None, "CPU", 3)  # no ModelReady and no spec: a contract error

    errors = []
    model.events.error.connect(lambda e: errors.append(e.value[1]))
    model.open(synthetic_slide)
    assert model.analysis.start(source=broken)
    assert isinstance(errors[0], CellviewError) and "ModelReady" in errors[0].message
    assert not model.analysis.running and model.analysis.result is None and model.analysis.progress.phase == "failed"


def test_counts_and_shares_follow_the_confidence_filter():
    from cellview.outputs.overlay import OverlaySettings, count_lines, counted_text
    from cellview.testing.synthetic import grid_result

    conf = np.array([0.9, 0.55, 0.6, 0.95, 0.7, 0.8], np.float32)
    result = grid_result(["MMB", "BNN"], conf)
    rows = count_lines(result, OverlaySettings())
    assert rows == [("malignant", 2, 34), ("benign", 2, 33), ("normal", 2, 33)]  # add up to 100, ties in order
    rows = count_lines(result, OverlaySettings(min_confidence=0.65))
    assert rows == [("malignant", 1, 25), ("benign", 1, 25), ("normal", 2, 50)]
    assert counted_text(result, OverlaySettings(min_confidence=0.65)) == "4 of 6 tiles ≥ 65% confident"
    assert counted_text(grid_result(["M"]), OverlaySettings()) == "1 tile classified"


def test_single_file_exports_parse(model, synthetic_slide, tmp_path):
    model.open(synthetic_slide)
    model.analysis.start()
    rows = list(csv.DictReader(io.StringIO(model.exports.export_file("csv", tmp_path / "t.csv").read_text())))
    assert len(rows) == 56 and {r["pred_category"] for r in rows} == set(CATEGORIES)
    assert all(int(r["minx"]) + int(r["width"]) <= 2048 for r in rows)
    meta = json.loads(model.exports.export_file("json", tmp_path / "t.json").read_text())
    assert meta["tiles"]["done"] == 56 and meta["grid"]["tiling_rule"]


def test_params_from_settings_reach_the_run(model, synthetic_slide):
    model.settings.set(tissue_threshold=0.3, nuclei=False)
    model.open(synthetic_slide)
    model.analysis.start()
    assert model.analysis.result.params.tissue_threshold == 0.3
    assert isinstance(model.analysis.result.params, AnalysisParams)


def test_finished_event_without_a_slide_is_ignored(model, synthetic_slide, toy_model):
    """A run whose slide was closed meanwhile delivers nothing (its id no longer matches)."""
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_spec import ModelSpec

    classifier = OnnxClassifier(ModelSpec.load(toy_model), device="cpu")

    def source(request, cancel):
        for event in analyze(request.path, classifier, request.params, cancel):
            if isinstance(event, Finished):
                model.close_slide()  # the user closes the slide as the run ends
            yield event

    model.open(synthetic_slide)
    model.analysis.start(source=source, spec=classifier.spec)
    assert model.slide.opened is None and model.analysis.result is None and not model.analysis.running


# ----------------------------------------------------------------------------- issue 19: nothing may mislead


def test_a_new_slide_starts_safe_and_forgets_the_last_ones_view(model, synthetic_slide, tmp_path):
    """'Show calls anyway', hidden categories, the confidence filter, the hover text and the region note
    belong to one slide: the next one starts without them (and the views hear it)."""
    import shutil

    model.open(synthetic_slide, analyse=True)
    model.overlay.set(show_out_of_domain=True, min_confidence=0.7, categories=("benign",), show_regions=True,
                      style="fill")
    r0, _, c0, _ = SYNTH_BLOCKS["malignant"]
    assert model.selection.hover_at(c0 * SYNTH_TILE + 5, r0 * SYNTH_TILE + 5).startswith("malignant ")
    assert model.regions.note().startswith("1 region of tiles malignant at ≥ 70% confidence")
    rec = Recorder(model)
    other = tmp_path / "other.tiff"
    shutil.copy(synthetic_slide, other)
    model.open(other, analyse=False)
    ov = model.overlay.settings
    assert (ov.show_out_of_domain, ov.min_confidence, ov.categories) == (False, 0.0, CATEGORIES)
    assert (ov.style, ov.show_regions) == ("fill", True)  # the look is the user's, not the slide's
    assert rec.of("overlay")[-1] == ov and rec.of("hover") == [""] and model.selection.hover == ""
    assert model.regions.note() == "" and model.selection.index == -1 and not model.overlay.domain.shown_anyway


def test_hover_says_nothing_off_the_tiles(model, synthetic_slide):
    model.open(synthetic_slide, analyse=True)
    rec = Recorder(model)
    assert model.selection.hover_at(3, 3) == "" and rec.of("hover") == []  # nothing shown, nothing to clear
    r0, _, c0, _ = SYNTH_BLOCKS["malignant"]
    model.selection.hover_at(c0 * SYNTH_TILE + 5, r0 * SYNTH_TILE + 5)
    model.selection.hover_at(10**6, 5)
    assert rec.of("hover")[-1] == "" and len(rec.of("hover")) == 2


def test_analyse_after_cancel_goes_on_from_the_finished_tiles(model, synthetic_slide):
    from cellview.viewer.analysis import model_file_analysis

    requests = []

    def source(request, cancel):  # the desktop's own source, cancelled after 16 tiles the first time
        requests.append(request)
        for event in model_file_analysis(request, cancel):
            if isinstance(event, BatchDone) and event.done >= 16 and len(requests) == 1:
                cancel.cancel()
            yield event

    model.analysis.source = source
    model.settings.set(batch_size=8, workers=1)
    model.open(synthetic_slide)
    assert model.analysis.start()
    cancelled = model.analysis.result
    assert cancelled.status == "cancelled" and 16 <= cancelled.n_done < 56
    tiles = []
    model.analysis.events.tiles.connect(lambda e: tiles.append(len(e.value)))
    assert model.analysis.start()
    assert requests[1].resume is cancelled and requests[0].resume is None
    assert model.analysis.result.status == "complete" and model.analysis.result.n_done == 56
    assert tiles[0] == cancelled.n_done  # the kept tiles come back first, then only the others are run
    assert model.analysis.result.timings["resumed_tiles"] == cancelled.n_done
    model.settings.set(tissue_threshold=0.5)  # other settings: a new run from scratch
    model.analysis.start()
    assert requests[2].resume is None


def test_the_inspector_patch_is_normalised_as_the_model_was_fed(stain_model, he_slide):
    from cellview.analysis.tiling import read_tile
    from cellview.gui.canvas.loaders import PatchRequest, load_patch
    from cellview.slides.opening import open_slide

    m = ViewerModel(run_now, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(stain_model))
    m.settings.set(stain_normalize="macenko")
    m.open(he_slide, analyse=True)
    m.selection.select(3)
    assert m.explain.stain_pending and m.explain.patch_stain() is None
    rec = Recorder(m)
    m.explain.request_stain()
    transform = m.explain.patch_stain()
    assert transform is not None and rec.of("stain") == [transform] and not m.explain.stain_pending
    with open_slide(he_slide) as slide:
        scanned = read_tile(slide, m.analysis.result.grid, 3)
        shown = load_patch(slide, PatchRequest(3, m.analysis.result.grid, m.slide.mpp_um(), 0, transform)).rgb
    assert np.array_equal(shown, transform.apply(scanned)) and not np.array_equal(shown, scanned)
