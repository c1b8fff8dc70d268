"""The viewer's domain decisions and tile explanations, Qt-free (ViewerModel driven as the GUI drives it)."""

from __future__ import annotations

import numpy as np
import pytest

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import NOT_AVAILABLE
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import run_analysis
from cellview.analysis.results import AnalysisParams
from cellview.outputs.overlay import OverlaySettings, count_lines, describe_domain, fill_rgba, out_of_domain_runs
from cellview.testing.synthetic import (
    SQUARE_AT,
    SQUARE_BLOCK,
    SYNTH_TILE,
    hatch_stripes,
)
from cellview.viewer.jobs import Job, run_now
from cellview.viewer.model import ViewerModel
from cellview.viewer.overlay import domain_notice
from cellview.viewer.settings import MemoryStore


def make_model(model_path, runner=run_now) -> ViewerModel:
    m = ViewerModel(runner, store=MemoryStore())
    m.analysis.use_cache = False
    m.set_model(str(model_path))
    return m


def square_tile_index(result, row: int, col: int) -> int:
    return int(result.grid.index_grid()[row, col])


def in_square(xy: tuple[int, int]) -> bool:
    x, y, side = SQUARE_AT
    return x <= xy[0] < x + side and y <= xy[1] < y + side


# ----------------------------------------------------------------------------- the domain notice


def test_banner_when_most_of_the_tissue_is_out_of_domain_and_show_anyway_counts_it(cam_domain_model, square_slide):
    model = make_model(cam_domain_model)
    notices = []
    model.overlay.events.domain.connect(lambda e: notices.append(e.value))
    model.open(square_slide, analyse=True)
    result = model.analysis.result
    n = result.n_done
    assert n == 24 and result.out_of_domain.all()
    notice = model.overlay.domain
    assert notices[-1] is notice and notice.kind == "most" and notice.banner
    assert notice.headline == ("This tissue does not look like red, blue and green test tiles; "
                               "the calls are unreliable.")
    assert "100% of the tissue tiles" in notice.detail and "left out of the counts" in notice.detail
    # Not counted, drawn grey: the toy calls every pink tile malignant from its red square.
    assert count_lines(result, model.overlay.settings)[0] == ("malignant", 0, 0)
    assert (out_of_domain_runs(result, model.overlay.settings)[:, 2].sum()
            == (SQUARE_BLOCK[3] - SQUARE_BLOCK[2]) * (SQUARE_BLOCK[1] - SQUARE_BLOCK[0]) * SYNTH_TILE)
    grey = fill_rgba(result, model.overlay.settings)
    model.overlay.show_calls_anyway(True)
    assert model.overlay.settings.show_out_of_domain and model.overlay.domain.shown_anyway and notices[-1].shown_anyway
    assert "shown in category colours and counted anyway" in model.overlay.domain.detail
    assert count_lines(result, model.overlay.settings)[0] == ("malignant", n, 100)
    assert len(out_of_domain_runs(result, model.overlay.settings)) == 0
    assert not np.array_equal(fill_rgba(result, model.overlay.settings), grey)
    model.overlay.show_calls_anyway(False)
    assert not model.overlay.domain.shown_anyway and count_lines(result, model.overlay.settings)[0][1] == 0


def test_a_quieter_note_when_some_tiles_are_out_of_domain(cam_domain_model, odd_slide):
    model = make_model(cam_domain_model)
    model.open(odd_slide, analyse=True)
    notice = model.overlay.domain
    n_out = int(model.analysis.result.out_of_domain.sum())
    assert notice.kind == "some" and not notice.banner and notice.note and n_out >= 12
    assert notice.headline == f"{n_out} of 68 tiles ({n_out / 68:.0%}) are out of the model's domain,"
    assert notice.detail == "drawn hatched grey and left out of the counts."


def test_models_without_statistics_say_so(toy_model, synthetic_slide):
    model = make_model(toy_model)
    assert model.overlay.domain.kind == "none"
    model.open(synthetic_slide, analyse=True)
    notice = model.overlay.domain
    assert notice.kind == "unavailable" and not notice.banner and not notice.note
    assert notice.headline == "Domain score: not available for this model."
    assert (describe_domain(model.analysis.result, model.overlay.settings)
            == "Domain score: not available for this model.")
    assert NOT_AVAILABLE in notice.headline.lower()
    model.close_slide()
    assert model.overlay.domain.kind == "none"


def test_streaming_results_carry_their_domain_scores(cam_domain_model, square_slide):
    """While batches arrive, the partial result is already scored: tiles turn grey as they come, not at the end."""
    model = make_model(cam_domain_model)
    model.settings.set(batch_size=6)
    seen = []

    def on_tiles(event):
        partial = model.analysis.shown_result()
        seen.append((partial.status, partial.has_domain, int(partial.out_of_domain.sum()), model.overlay.domain.kind))

    model.analysis.events.tiles.connect(on_tiles)
    model.open(square_slide, analyse=True)
    assert len(seen) == 4
    assert all(status == "running" and scored for status, scored, _, _ in seen)
    assert [n for _, _, n, _ in seen] == [6, 12, 18, 24]
    assert all(kind == "most" for *_, kind in seen)


def test_notice_follows_the_result(cam_domain_model, square_slide):
    assert domain_notice(None).kind == "none"
    result = run_analysis(square_slide, OnnxClassifier(ModelSpec.load(cam_domain_model), device="cpu"))
    assert domain_notice(result).banner and domain_notice(result, shown_anyway=True).shown_anyway
    settings = OverlaySettings()
    assert describe_domain(result, settings).endswith("hatched grey and left out of the counts.")
    assert "counted anyway" in describe_domain(result, OverlaySettings(show_out_of_domain=True))


# ----------------------------------------------------------------------------- explaining the selected tile


def test_activation_map_of_the_selected_tile_peaks_on_its_square(cam_domain_model, square_slide):
    model = make_model(cam_domain_model)
    states = []
    model.explain.events.explanation.connect(lambda e: states.append(e.value.state))
    model.open(square_slide, analyse=True)
    model.explain.set_on(True)
    assert model.explain.current.state == "idle"
    i = square_tile_index(model.analysis.result, 2, 3)
    model.selection.select(i)
    state = model.explain.current
    assert state.state == "ready" and state.index == i and states[-2:] == ["busy", "ready"]
    ex = state.explanation
    assert ex.rect_l0 == model.analysis.result.grid.rect(i) and ex.patch.shape == (64, 64, 3)
    assert ex.explained_class == ex.pred_class == 0 == int(model.analysis.result.pred_class[i])
    assert in_square(ex.peak_px())
    assert ex.domain_score == pytest.approx(float(model.analysis.result.domain_score[i])) and ex.in_domain is False
    # Another class's map comes with the same tile: no new job.
    jobs_before = len(states)
    model.explain.set_class(1)
    assert model.explain.current.explanation.explained_class == 1 and model.explain.current.state == "ready"
    assert states[jobs_before:] == ["ready"]
    assert not in_square(model.explain.current.explanation.peak_px())  # the benign map: no blue anywhere
    model.explain.set_class(None)
    assert model.explain.current.explanation.explained_class == 0
    j = square_tile_index(model.analysis.result, 4, 6)
    model.selection.select(j)
    assert model.explain.current.index == j
    assert model.explain.current.explanation.rect_l0 == model.analysis.result.grid.rect(j)
    assert model.explain.classifier is not None  # loaded once (CPU), kept for the next tile
    model.explain.set_on(False)
    assert model.explain.current.state == "off"
    model.close_slide()
    assert model.explain.current.state == "off" and model.explain.current.explanation is None


def test_a_model_without_maps_says_why(toy_model, synthetic_slide):
    model = make_model(toy_model)
    model.open(synthetic_slide, analyse=True)
    model.explain.set_on(True)
    model.selection.select(0)
    assert model.explain.current.state == "failed"
    assert "exposes no class activation maps" in model.explain.current.message and "cellview domain upgrade" in \
        model.explain.current.message


class DeferredRunner:
    """Keeps jobs until the test runs them: the order of work the GUI's worker threads would see."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, job: Job):
        self.jobs.append(job)
        return self

    def cancel(self) -> None:
        pass

    def run(self, name: str) -> None:
        job = next(j for j in self.jobs if j.name == name)
        self.jobs.remove(job)
        run_now(job)


def test_one_explanation_at_a_time_and_the_latest_selection_next(cam_domain_model, square_slide):
    runner = DeferredRunner()
    model = make_model(cam_domain_model, runner)
    model.open(square_slide, analyse=True)
    runner.run("open")
    runner.run("analysis")
    model.explain.set_on(True)
    a, b, c = (square_tile_index(model.analysis.result, 2, col) for col in (2, 3, 4))
    model.selection.select(a)
    model.selection.select(b)
    model.selection.select(c)  # arrow keys held down: one job runs, the last tile waits
    assert [j.name for j in runner.jobs].count("explain") == 1 and model.explain.current.state == "busy"
    runner.run("explain")
    assert model.explain.current.state == "busy"  # a's map was not shown: c is wanted now
    assert [j.name for j in runner.jobs].count("explain") == 1
    runner.run("explain")
    assert model.explain.current.state == "ready" and model.explain.current.index == c
    assert model.explain.current.explanation.rect_l0 == model.analysis.result.grid.rect(c)
    model.selection.select(c)  # the same tile again: nothing to do
    assert "explain" not in [j.name for j in runner.jobs]


def test_explanations_of_another_models_result_are_refused(cam_domain_model, square_slide):
    import dataclasses

    model = make_model(cam_domain_model)
    model.open(square_slide, analyse=True)
    loaded = OnnxClassifier(ModelSpec.load(cam_domain_model), device="cpu")
    loaded.spec = dataclasses.replace(loaded.spec, onnx_sha256="0" * 64)  # as if another model were loaded
    model.explain.classifier = loaded
    model.explain.set_on(True)
    model.selection.select(0)
    assert model.explain.current.state == "failed" and "another model" in model.explain.current.message


# ----------------------------------------------------------------------------- exports follow the screen


def test_whole_slide_png_is_hatched_and_follows_show_anyway(cam_domain_model, square_slide, tmp_path, monkeypatch):
    from PIL import Image, ImageDraw

    model = make_model(cam_domain_model)
    model.open(square_slide, analyse=True)
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(str(text))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    hatched = np.asarray(Image.open(model.exports.export_file("png", tmp_path / "a.png")))
    legend_a, drawn[:] = list(drawn), []
    model.overlay.show_calls_anyway(True)
    anyway = np.asarray(Image.open(model.exports.export_file("png", tmp_path / "b.png")))
    legend_b = list(drawn)
    # Inside the pink block: grey + hatching (light and dark lines); shown anyway: the stain with outlines only.
    r0, r1, c0, c1 = SQUARE_BLOCK
    k = hatched.shape[1] / model.analysis.result.grid.slide_w_l0
    block = (slice(int((r0 + 1) * SYNTH_TILE * k), int((r0 + 2) * SYNTH_TILE * k)),
             slice(int((c0 + 2) * SYNTH_TILE * k), int((c0 + 3) * SYNTH_TILE * k)))
    a, b = hatched[block][..., :3], anyway[block][..., :3]
    assert hatch_stripes(a) > 2 and hatch_stripes(b) < 1.3
    assert (np.abs(a.astype(int) - b.astype(int)).sum(axis=-1) > 60).mean() > 0.2
    joined_a, joined_b = " ".join(legend_a), " ".join(legend_b)
    assert "out of domain" in legend_a and "hatched grey and left out of the counts." in joined_a
    assert "does not look like red, blue and green test tiles" in joined_a
    assert "counted anyway." in joined_b and "(out-of-domain ones shown anyway)" in joined_b
    meta = model.exports.export_file("json", tmp_path / "m.json").read_text()
    assert '"show_out_of_domain": true' in meta


def test_hatching_covers_exactly_the_out_of_domain_cells(cam_domain_model, odd_slide):
    result = run_analysis(odd_slide, OnnxClassifier(ModelSpec.load(cam_domain_model), device="cpu"),
                          AnalysisParams())
    runs = out_of_domain_runs(result, OverlaySettings())
    g = result.grid
    covered = np.zeros(g.shape, bool)
    for x, y, w, _h in runs:
        r = int(y // g.stride_l0_y)
        covered[r, int(x // g.stride_l0_x):int((x + w) // g.stride_l0_x)] = True
    np.testing.assert_array_equal(covered, result.out_of_domain_grid())
    assert len(runs) < int(result.out_of_domain.sum())  # runs, not one item per tile
    assert len(out_of_domain_runs(result, OverlaySettings(visible=False))) == 0
    assert len(out_of_domain_runs(result, OverlaySettings(show_out_of_domain=True))) == 0


def test_the_region_note_never_says_no_tile_is_malignant_when_the_tiles_are_out_of_domain(cam_domain_model,
                                                                                       square_slide):
    """Issue 19: the toy calls the pink tiles malignant, all out of domain: no region, and the note says why."""
    model = make_model(cam_domain_model)
    model.open(square_slide, analyse=True)
    model.overlay.set(show_regions=True, min_confidence=0.54)
    result = model.analysis.result
    assert model.regions.shown == [] and result.out_of_domain.all()
    note = model.regions.note()
    assert note.startswith("No region: every classified tile is out of the model's domain.")
    n = int((result.pred_category == 0).sum())
    assert f"{n} out-of-domain tiles called malignant at ≥ 54% confidence are left out." in note
    assert "no tile is malignant" not in note
    model.close_slide()
    assert model.regions.note() == ""  # nothing left over for the next slide
