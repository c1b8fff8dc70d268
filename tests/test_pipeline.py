"""End-to-end analysis on a synthetic slide with known answers; cancel, cache and failed tiles."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from cellview.analysis.cache import ResultCache
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import CATEGORIES, ModelSpec
from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, Started, analyze, run_analysis
from cellview.analysis.results import AnalysisParams, TileState
from cellview.base.errors import SlideError
from cellview.outputs.export import csv_text
from cellview.testing.synthetic import expected_synthetic_tiles

GOLDEN = Path(__file__).parent / "golden" / "synthetic.csv"


@pytest.fixture(scope="module")
def classifier(toy_model):
    return OnnxClassifier(ModelSpec.load(toy_model), device="cpu")


def test_synthetic_slide_exact_classes(synthetic_slide, classifier):
    result = run_analysis(synthetic_slide, classifier, AnalysisParams(batch_size=7, workers=2))
    assert result.status == "complete" and result.n_done == result.n_tiles == 56
    got = {(int(r), int(c)): result.model.class_names[k]
           for r, c, k in zip(result.grid.grid_row, result.grid.grid_col, result.pred_class)}
    assert got == expected_synthetic_tiles()
    assert (result.confidence > 0.9).all()
    assert result.category_counts() == {"malignant": 16, "benign": 24, "normal": 16}


def test_csv_matches_golden_file(synthetic_slide, classifier):
    result = run_analysis(synthetic_slide, classifier, AnalysisParams(batch_size=16))
    rows = list(csv.DictReader(io.StringIO(csv_text(result))))
    golden = list(csv.DictReader(GOLDEN.open()))
    assert [r.keys() for r in rows][:1] == [golden[0].keys()]
    assert len(rows) == len(golden)
    for got, want in zip(rows, golden):
        for key, value in want.items():
            if key.startswith("prob_") or key == "confidence":
                assert float(got[key]) == pytest.approx(float(value), abs=1e-4), key
            else:
                assert got[key] == value, key


def test_events_stream_in_order(synthetic_slide, classifier):
    events = list(analyze(synthetic_slide, classifier, AnalysisParams(batch_size=10)))
    assert isinstance(events[0], Started) and events[0].total == 56
    batches = [e for e in events if isinstance(e, BatchDone)]
    assert len(batches) == 6 and batches[-1].done == 56 and batches[-1].eta_s == 0
    assert sorted(np.concatenate([b.indices for b in batches]).tolist()) == list(range(56))
    assert isinstance(events[-1], Finished)


def test_cancel_keeps_finished_tiles(synthetic_slide, classifier):
    cancel = CancelToken()
    seen = []
    result = None
    for event in analyze(synthetic_slide, classifier, AnalysisParams(batch_size=8), cancel):
        if isinstance(event, BatchDone):
            seen.append(event)
            if len(seen) == 3:
                cancel.cancel()
        if isinstance(event, Finished):
            result = event.result
    assert result is not None and result.status == "cancelled"
    assert result.n_done == 24
    done_idx = np.concatenate([b.indices for b in seen])
    assert (result.state[done_idx] == TileState.DONE).all()
    assert np.isnan(result.probs[result.state == TileState.PENDING]).all()
    for b in seen:  # every finished tile keeps exactly the probabilities streamed for it
        assert np.array_equal(result.probs[b.indices], b.probs)


def test_second_run_hits_the_cache(synthetic_slide, classifier, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    first = run_analysis(synthetic_slide, classifier, AnalysisParams(), cache=cache)
    second = run_analysis(synthetic_slide, classifier, AnalysisParams(batch_size=5, workers=1), cache=cache)
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.probs, second.probs)
    assert np.array_equal(first.grid.l0_x, second.grid.l0_x)
    assert np.array_equal(first.tissue.mask, second.tissue.mask)
    # Different analysis parameters are a different result.
    third = run_analysis(synthetic_slide, classifier, AnalysisParams(tissue_threshold=0.5), cache=cache)
    assert not third.from_cache


def test_cancelled_run_is_not_cached(synthetic_slide, classifier, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    cancel = CancelToken()
    cancel.cancel()
    result = run_analysis(synthetic_slide, classifier, AnalysisParams(), cancel=cancel, cache=cache)
    assert result.status == "cancelled" and result.n_done == 0
    assert not list((tmp_path / "cache").glob("*.npz"))


def test_corrupt_cache_entry_is_discarded(synthetic_slide, classifier, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    run_analysis(synthetic_slide, classifier, AnalysisParams(), cache=cache)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    again = run_analysis(synthetic_slide, classifier, AnalysisParams(), cache=cache)
    assert not again.from_cache and again.n_done == 56
    assert entry.exists() and entry.stat().st_size > 100  # recomputed and stored again


def test_failed_tile_reads_are_recorded_and_run_goes_on(synthetic_slide, classifier, monkeypatch):
    import cellview.analysis.pipeline as pipeline

    real = pipeline.read_tile

    def flaky(slide, grid, index, out=None):
        if index % 10 == 3:
            raise SlideError("simulated read failure", "bad JPEG tile")
        return real(slide, grid, index, out)

    monkeypatch.setattr(pipeline, "read_tile", flaky)
    result = run_analysis(synthetic_slide, classifier, AnalysisParams(batch_size=8))
    failed = np.flatnonzero(result.state == TileState.FAILED)
    assert failed.tolist() == [i for i in range(56) if i % 10 == 3]
    assert result.n_done == 56 - len(failed) and result.status == "complete"
    assert np.isnan(result.probs[failed]).all()
    assert "simulated read failure" in result.tile_errors[3]


def test_heatmaps_and_category_map(synthetic_slide, classifier):
    result = run_analysis(synthetic_slide, classifier, AnalysisParams())
    heat = result.heatmap(0)
    assert heat.shape == (12, 16)
    assert np.isnan(heat[0, 0]) and heat[2, 2] > 0.9
    rgba = result.category_rgba()
    assert rgba[0, 0, 3] == 0
    assert tuple(rgba[2, 2, :3]) == (0xD6, 0x27, 0x28) and rgba[2, 2, 3] > 230
    only_benign = result.category_rgba(categories=("benign",))
    assert only_benign[2, 2, 3] == 0 and only_benign[8, 5, 3] > 0
    assert result.category_rgba(min_confidence=1.01)[..., 3].max() == 0
    assert set(result.category_shares()) == set(CATEGORIES)


def test_whole_image_mode_and_image_level_mean(tmp_path, classifier):
    import cv2

    img = np.full((90, 140, 3), (220, 30, 40), np.uint8)
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    result = run_analysis(path, classifier, AnalysisParams(whole_image=True))
    assert result.scale_unknown and result.grid.whole_image and result.n_done == 1
    level = result.image_level()
    assert level["pred_class"] == "malignant" and level["confidence"] > 0.9


def test_image_level_is_mean_of_tiles(synthetic_slide, classifier):
    result = run_analysis(synthetic_slide, classifier, AnalysisParams())
    level = result.image_level()
    assert level["probs"]["benign"] == pytest.approx(float(result.probs[:, 1].mean()), abs=1e-6)
    assert level["pred_category"] == "benign"


def test_memory_stays_bounded_by_the_queue(synthetic_slide, classifier):
    """Readers never run more than the queue's capacity ahead of inference."""
    gen = analyze(synthetic_slide, classifier, AnalysisParams(batch_size=2, workers=2))
    assert isinstance(next(gen), Started)
    import time

    time.sleep(0.3)  # give readers time to fill the queue while the consumer is paused
    frame = gen.gi_frame
    readers = frame.f_locals.get("readers") if frame else None
    if readers is not None:
        assert readers.queue.qsize() <= readers.queue.maxsize
        assert readers._next <= readers.queue.maxsize + len(readers.threads) + 1
    gen.close()


def test_dicom_false_colour_levels_are_skipped_and_every_tile_is_read(data_dir, classifier):
    # This DICOM conversion's levels 1-4 are YCbCr labelled RGB (and have malformed edge frames); a
    # 1.0 µm/px model would read level 1: it reads level 0 instead.
    dicom = data_dir / "slides" / "derived" / "CMU-1-Small-Region-dicom"
    result = run_analysis(dicom, classifier, AnalysisParams())
    assert [s.level for s in result.slide.skipped_levels] == [1, 2, 3, 4]
    assert result.grid.read_level == 0
    assert result.n_failed == 0 and result.n_done == result.n_tiles > 0


class CountingClassifier:
    """The classifier, counting the tiles it classifies; ``cancel_on_call`` cancels from inside a batch."""

    def __init__(self, inner, cancel: CancelToken | None = None, cancel_on_call: int = 0) -> None:
        self.inner, self.cancel, self.cancel_on_call = inner, cancel, cancel_on_call
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def classify(self, tiles, quality=None, tta="none"):
        self.calls.append(len(tiles))
        if self.cancel is not None and len(self.calls) == self.cancel_on_call:
            self.cancel.cancel()  # as a click on Cancel while this batch is being classified
        return self.inner.classify(tiles, quality, tta)


def test_cancel_stops_inside_a_batch_at_the_next_step(synthetic_slide, classifier):
    """Issue 19: Cancel took seconds (a whole 32-tile batch on a CPU); a batch is classified in short steps."""
    cancel = CancelToken()
    counting = CountingClassifier(classifier, cancel, cancel_on_call=1)
    events = list(analyze(synthetic_slide, counting, AnalysisParams(batch_size=56, workers=1), cancel))
    result = events[-1].result
    assert result.status == "cancelled" and len(counting.calls) == 1  # nothing classified after the cancel
    assert result.n_done == counting.calls[0] < 56
    (batch,) = [e for e in events if isinstance(e, BatchDone)]
    assert batch.done == len(batch.indices) == result.n_done  # the steps done are kept and streamed


def test_analyse_after_cancel_resumes_from_the_tiles_done(synthetic_slide, classifier):
    cancel = CancelToken()
    first = CountingClassifier(classifier, cancel, cancel_on_call=3)
    params = AnalysisParams(batch_size=8, workers=1)
    cancelled = list(analyze(synthetic_slide, first, params, cancel))[-1].result
    assert cancelled.status == "cancelled" and 0 < cancelled.n_done < 56
    again = CountingClassifier(classifier)
    events = list(analyze(synthetic_slide, again, params, resume=cancelled))
    result = events[-1].result
    assert result.status == "complete" and result.n_done == 56
    assert sum(again.calls) == 56 - cancelled.n_done  # only the tiles not done before
    resumed = events[1]
    assert isinstance(resumed, BatchDone) and resumed.done == cancelled.n_done  # streamed first, for the overlay
    kept = cancelled.state == TileState.DONE
    assert np.array_equal(result.probs[kept], cancelled.probs[kept])
    whole = run_analysis(synthetic_slide, classifier, params)
    assert np.allclose(result.probs, whole.probs, atol=1e-6)
    # another setting is another result: nothing is resumed
    other = CountingClassifier(classifier)
    list(analyze(synthetic_slide, other, AnalysisParams(batch_size=8, workers=1, tissue_threshold=0.5),
                 resume=cancelled))
    assert sum(other.calls) == run_analysis(synthetic_slide, classifier,
                                            AnalysisParams(tissue_threshold=0.5)).n_tiles
