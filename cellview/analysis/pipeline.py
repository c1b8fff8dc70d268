"""analyze(): slide → tissue → tiles → reader threads → batches → ONNX → streamed results.

A generator, so the CLI drives it in a plain loop and the GUI in one worker thread; a
cancel token is checked between batches and everything finished so far is kept.
Memory is bounded by the queue of read batches, whatever the slide size.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.cache import ResultCache, cache_key
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import QUALITY_CHECKS, tile_quality
from cellview.analysis.foreground import Foreground, choose_scale, foreground_mask, tile_threshold
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.morphology import measure_nuclei, patch_mpp
from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileNuclei, TileState
from cellview.analysis.stain import TileStainTransform, fit_transform, sample_tile_indices
from cellview.analysis.tiling import TileGrid, build_grid, read_order, read_tile
from cellview.analysis.tissue import TissueMask
from cellview.base.errors import AnalysisError, CellviewError, SlideError
from cellview.slides.opening import open_slide
from cellview.slides.slide import Slide

log = logging.getLogger(__name__)


class CancelToken:
    """Set from any thread; the pipeline stops at the next batch boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class Started:
    """The grid is known: the GUI can size its overlay, the CLI its progress bar."""

    slide_path: str
    grid: TileGrid
    tissue: TissueMask | None
    provider: str
    total: int
    from_cache: bool = False


@dataclass(frozen=True)
class BatchDone:
    """One batch classified. ``indices`` are tile indices into the grid."""

    indices: np.ndarray
    probs: np.ndarray
    failed: np.ndarray
    done: int
    total: int
    elapsed_s: float
    tiles_per_s: float
    eta_s: float | None
    nuclei: np.ndarray | None = None  # (len(indices), len(TileNuclei.FIELDS)) when measuring nuclei
    domain_score: np.ndarray | None = None  # (len(indices),) 0–1 when the model has domain statistics


@dataclass(frozen=True)
class Finished:
    result: AnalysisResult


Event = Started | BatchDone | Finished


@dataclass
class _Batch:
    number: int
    indices: np.ndarray
    tiles: np.ndarray
    failed: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    read_s: float = 0.0
    nuclei: np.ndarray | None = None
    nuclei_s: float = 0.0
    quality: np.ndarray | None = None  # domain.tile_quality per tile, when the model scores the domain
    read_cpu_s: float = 0.0  # CPU time of the reader thread: decoding and resizing the tiles
    checks_cpu_s: float = 0.0  # CPU time of the reader thread: pixel checks, nuclei, stain


READ_CACHE_BYTES = 64 << 20
"""Decoded-tile cache the reader threads' handles share (OpenSlide's default is 32 MiB per handle)."""


class TileReaders:
    """Reader threads, each with its own slide handle, filling a bounded queue with batches.

    Levels read through OpenSlide share one cache of decoded tiles: consecutive batches go to different
    threads and overlap in the stored tiles they need (see ``tiling.read_order``). Levels of JPEG tiles
    read directly (``direct_tiff``) keep their own cache per handle.
    """

    def __init__(self, slide: Slide, grid: TileGrid, batches: list[np.ndarray], workers: int,
                 nuclei: bool = False, nuclei_mpp_um: float | None = None, quality: bool = False,
                 stain: TileStainTransform | None = None) -> None:
        """``nuclei``: also measure each tile's nuclei (``nuclei_mpp_um`` = µm per patch pixel).

        ``quality``: also compute the domain score's pixel checks, in these threads rather than
        the one that runs the model. Both look at the tile as read; ``stain``: then normalise the
        tile's stain before it goes to the model.
        """
        self.grid = grid
        self.nuclei = nuclei
        self.nuclei_mpp_um = nuclei_mpp_um
        self.quality = quality
        self.stain = stain if stain is not None and stain.method != "none" else None
        self.batches = batches
        self.queue: queue.Queue[_Batch | BaseException] = queue.Queue(maxsize=max(2, workers * 2))
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self._cache = slide.tile_cache(READ_CACHE_BYTES)
        self.threads = [
            threading.Thread(target=self._run, args=(slide if i == 0 else None, slide), daemon=True,
                             name=f"cellview-reader-{i}")
            for i in range(max(1, min(workers, len(batches))))
        ]
        for t in self.threads:
            t.start()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.batches) or self.stop.is_set():
                return None
            n = self._next
            self._next += 1
            return n

    def _put(self, item: _Batch | BaseException) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, own: Slide | None, template: Slide) -> None:
        slide: Slide | None = own
        try:
            if slide is None:
                slide = template.reopen()
                slide.use_tile_cache(self._cache)
            tile = self.grid.tile_px
            while (n := self._take()) is not None:
                idx = self.batches[n]
                t0, c0 = time.perf_counter(), time.thread_time()
                tiles = np.empty((len(idx), tile, tile, 3), dtype=np.uint8)
                failed = np.zeros(len(idx), dtype=bool)
                errors: dict[int, str] = {}
                for j, i in enumerate(idx):
                    if self.stop.is_set():  # cancelled: the consumer waits for this thread, so stop now
                        return
                    try:
                        read_tile(slide, self.grid, int(i), out=tiles[j])
                    except SlideError as exc:
                        # The handle was replaced inside the slide object; record and go on.
                        failed[j] = True
                        errors[int(i)] = str(exc)
                        tiles[j] = 255
                read_s = time.perf_counter() - t0
                c1 = time.thread_time()
                nuclei = None
                if self.nuclei:
                    nuclei = np.full((len(idx), len(TileNuclei.FIELDS)), np.nan, dtype=np.float32)
                    for j in np.flatnonzero(~failed):
                        if self.stop.is_set():
                            return
                        nuclei[j] = measure_nuclei(tiles[j], self.nuclei_mpp_um).as_row()
                quality = None
                if self.quality:
                    quality = np.zeros((len(idx), len(QUALITY_CHECKS)), np.float32)
                    if (~failed).any():
                        quality[~failed] = tile_quality(tiles[~failed])
                if self.stain is not None:
                    for j in np.flatnonzero(~failed):
                        tiles[j] = self.stain.apply(tiles[j])
                batch = _Batch(n, idx, tiles, failed, errors, read_s, nuclei, time.perf_counter() - t0 - read_s,
                               quality, c1 - c0, time.thread_time() - c1)
                if not self._put(batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._put(exc)
        finally:
            if slide is not None and slide is not own and slide is not template:
                slide.close()  # this thread's own handle (its file descriptors), not the caller's

    def close(self) -> None:
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        for t in self.threads:
            t.join(timeout=10)


def plan_tiles(slide: Slide, spec: ModelSpec, params: AnalysisParams) -> tuple[TissueMask, TileGrid]:
    """The tiles analyze() classifies: the model's foreground mask (tissue, for H&E), then the grid at its spacing."""
    return plan_grid(slide, spec.patch_size_pixels, spec.spacing_um_px, params, spec.reading.foreground)


def apply_reading(slide: Slide, spec: ModelSpec, params: AnalysisParams) -> tuple[AnalysisParams, dict[str, str]]:
    """The model's rule for an image that states no pixel size, applied to ``slide`` (an assumed pixel size is
    set on it) and to the run's ``params`` (read whole); returns those params and what the result records
    (``AnalysisResult.reading``: the foreground rule and what was assumed; nothing for an H&E model's run)."""
    info = slide.info()
    choice = choose_scale(spec.reading, info.mpp, params.whole_image, spec.name, spec.patch_size_pixels,
                          info.dimensions)
    if choice.mpp is not None and info.mpp is None:
        slide.mpp = choice.mpp
    if choice.whole_image and not params.whole_image:
        params = replace(params, whole_image=True)
    record: dict[str, str] = {}
    if spec.reading.foreground.rule != "tissue":
        record["foreground"] = spec.reading.foreground.describe()
    if choice.note:
        record["pixel_size"] = choice.note
    return params, record


def plan_grid(slide: Slide, tile_px: int, model_mpp_um: float, params: AnalysisParams,
              foreground: Foreground | None = None) -> tuple[TissueMask, TileGrid]:
    """``plan_tiles`` for a tile size, spacing and foreground rule without a model (training evaluates on these
    tiles). The tissue rule (the default) is the mask and threshold of ``params``, as it always was."""
    fg = foreground or Foreground()
    mpp_um = slide.mpp.um if slide.mpp else None
    tissue = foreground_mask(slide, fg, params.tissue, mpp_um)
    grid = build_grid(
        slide, tile_px, model_mpp_um, tissue,
        tissue_threshold=tile_threshold(fg, params.tissue_threshold), overlap=params.overlap,
        whole_image=params.whole_image,
    )
    if grid.n_tiles == 0 and fg.fallback == "whole-field":  # no stained cell anywhere: read the whole field
        tissue = replace(tissue, method=f"{tissue.method}, none found: whole field read")
        grid = build_grid(slide, tile_px, model_mpp_um, tissue, tissue_threshold=0.0, overlap=params.overlap,
                          whole_image=params.whole_image)
    return tissue, grid


def slide_stain_transform(slide: Slide, grid: TileGrid, spec: ModelSpec, method: str) -> TileStainTransform:
    """The slide's stain, estimated once from tissue tiles sampled over the grid, mapped onto the model's.

    Raises AnalysisError when the model has no reference stain (a sidecar from before stain
    normalisation): the user asked for something this model cannot do.
    """
    if method == "none":
        return TileStainTransform("none")
    if spec.stain_reference is None:
        raise AnalysisError(
            f"Stain normalisation is unavailable for the model {spec.name}: its sidecar has no reference stain "
            "(re-export it with a current cellview, or analyse with stain normalisation 'none').")
    picked = sample_tile_indices(grid.n_tiles, grid.tissue_fraction)
    tiles = []
    for i in picked:
        try:
            tiles.append(read_tile(slide, grid, int(i)))
        except SlideError:
            continue
    if not tiles:
        return TileStainTransform("none", note=f"{method} stain normalisation skipped: no readable tissue tile")
    return fit_transform(method, np.stack(tiles), spec.stain_reference)


def batch_indices(n_tiles: int, batch_size: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """Tile indices in ``order`` (default: grid order), cut into batches (the last may be shorter)."""
    size = max(1, int(batch_size))
    order = np.arange(n_tiles) if order is None else np.asarray(order, np.int64)
    return [order[s:s + size] for s in range(0, len(order), size)]


CANCEL_STEP_S = 0.3
"""A batch is classified in steps of about this long, with the cancel token checked between them, so
Cancel answers within a fraction of a second however slow the device (a 32-tile batch takes seconds on
a CPU); on a GPU a step is the whole batch."""


class _Steps:
    """How many tiles to classify per step: as many as take ``CANCEL_STEP_S``, measured as the run goes."""

    def __init__(self) -> None:
        self.tile_s: float | None = None

    def size(self, n: int) -> int:
        if self.tile_s is None:
            return min(n, 4)  # the first step measures the device
        fits = max(1, int(CANCEL_STEP_S / max(self.tile_s, 1e-6)))
        return min(n, 1 << (fits.bit_length() - 1))  # a power of two: few distinct shapes for TensorRT

    def took(self, n_tiles: int, seconds: float) -> None:
        per = seconds / max(1, n_tiles)
        self.tile_s = per if self.tile_s is None else 0.5 * self.tile_s + 0.5 * per


def resumable(resume: AnalysisResult | None, info: Any, spec: ModelSpec, params: AnalysisParams) -> bool:
    """A cancelled result of this slide, model and settings: the run can go on from its finished tiles."""
    if resume is None or resume.status != "cancelled":
        return False
    m, mpp = resume.model, resume.slide.mpp
    same_mpp = (mpp is None and info.mpp is None) or (
        mpp is not None and info.mpp is not None and (mpp.x_um, mpp.y_um) == (info.mpp.x_um, info.mpp.y_um))
    domain_sha = m.domain.sha256 if m.domain is not None else ""
    return (resume.slide.fingerprint == info.fingerprint and m.sha256 == spec.onnx_sha256 and same_mpp
            and domain_sha == (spec.domain_sha256 or "") and resume.params.cache_dict() == params.cache_dict())


def analyze(
    slide_path: str | Path,
    classifier: OnnxClassifier,
    params: AnalysisParams | None = None,
    cancel: CancelToken | None = None,
    cache: ResultCache | None = None,
    resume: AnalysisResult | None = None,
) -> Iterator[Event]:
    """Stream the analysis of one slide: Started, then BatchDone per batch, then Finished.

    Raises CellviewError subclasses for bad input (before any tile is read) and keeps every
    finished tile when cancelled (``Finished.result.status == "cancelled"``). ``resume``: a cancelled
    result of the same slide, model and settings (``resumable``); its tiles come back as the first
    BatchDone and only the others are classified. Anything else in ``resume`` is ignored.
    """
    params = params or AnalysisParams()
    cancel = cancel or CancelToken()
    spec = classifier.spec
    t_start = time.perf_counter()
    slide = open_slide(slide_path, mpp_um=params.mpp_um)
    readers: TileReaders | None = None
    try:
        run_params, reading = apply_reading(slide, spec, params)  # the user's params stay in the result
        info = slide.info()
        model = ModelInfo.from_spec(spec)
        if not run_params.whole_image:
            slide.require_mpp()
        key = cache_key(info.fingerprint, spec.result_sha256, params, info.mpp, spec.precision)
        if cache is not None:
            cached = cache.load(key)
            if cached is not None:
                # the thresholds of the slide call live in the sidecar, not in the cache key: today's apply
                cached = replace(cached.with_slide(info), model=replace(cached.model, call=model.call))
                yield Started(str(slide.path), cached.grid, cached.tissue, cached.provider, cached.n_tiles, True)
                yield Finished(cached)
                return

        t0 = time.perf_counter()
        mpp_um = info.mpp.um if info.mpp else None
        if not resumable(resume, info, spec, params):
            resume = None
        if resume is not None:
            tissue, grid = resume.tissue, resume.grid
        else:
            tissue, grid = plan_tiles(slide, spec, run_params)
        t_tissue = time.perf_counter() - t0
        t0 = time.perf_counter()
        stain = slide_stain_transform(slide, grid, spec, params.stain_normalize)
        t_stain = time.perf_counter() - t0
        stain_info = {} if params.stain_normalize == "none" else {
            "requested": params.stain_normalize, "applied": stain.method, "note": stain.note}
        n = grid.n_tiles
        probs = np.full((n, spec.num_classes), np.nan, dtype=np.float32)
        state = np.zeros(n, dtype=np.uint8)
        tile_errors: dict[int, str] = {}
        nuclei_mpp = patch_mpp(grid, mpp_um)
        nuclei = TileNuclei.empty(n, "um2" if nuclei_mpp is not None else "px2") if params.nuclei else None
        domain_score = np.full(n, np.nan, dtype=np.float32) if classifier.has_domain else None
        yield Started(str(slide.path), grid, tissue, classifier.describe(), n)

        done = 0
        t_run = time.perf_counter()
        read_cpu_s = checks_cpu_s = 0.0
        domain_cpu_0 = classifier.domain_cpu_s
        cpu_0 = time.process_time()
        if resume is not None:
            kept = np.flatnonzero(resume.state != TileState.PENDING)
            probs[kept], state[kept] = resume.probs[kept], resume.state[kept]
            tile_errors.update({i: e for i, e in resume.tile_errors.items() if state[i] == TileState.FAILED})
            if nuclei is not None and resume.nuclei is not None:
                nuclei.values[kept] = resume.nuclei.values[kept]
            if domain_score is not None and resume.domain_score is not None:
                domain_score[kept] = resume.domain_score[kept]
            done = len(kept)
            if done:
                yield BatchDone(kept, probs[kept], state[kept] == TileState.FAILED, done, n, 0.0, 0.0, None,
                                None if nuclei is None else nuclei.values[kept],
                                None if domain_score is None else domain_score[kept])
        resumed = done
        order = read_order(grid)
        batches = batch_indices(n, params.batch_size, order[state[order] == TileState.PENDING])
        infer_s = read_s = nuclei_s = 0.0
        status = "complete"
        steps = _Steps()
        if batches:
            readers = TileReaders(slide, grid, batches, params.workers, nuclei=params.nuclei, nuclei_mpp_um=nuclei_mpp,
                                  quality=classifier.has_domain, stain=stain)
            for _ in range(len(batches)):
                if cancel.cancelled:
                    status = "cancelled"
                    break
                item = readers.queue.get()
                if isinstance(item, BaseException):
                    if isinstance(item, CellviewError):
                        raise item
                    raise AnalysisError("Reading tiles failed unexpectedly.", repr(item)) from item
                read_s += item.read_s
                nuclei_s += item.nuclei_s
                read_cpu_s += item.read_cpu_s
                checks_cpu_s += item.checks_cpu_s
                ok = ~item.failed
                batch_probs = np.full((len(item.indices), spec.num_classes), np.nan, dtype=np.float32)
                batch_domain = np.full(len(item.indices), np.nan, np.float32) if domain_score is not None else None
                end = 0
                while end < len(item.indices) and not (end and cancel.cancelled):
                    start, end = end, end + steps.size(len(item.indices) - end)
                    use: slice | np.ndarray = slice(start, end)  # the usual case: no copy of the tiles
                    if not ok[start:end].all():
                        use = np.flatnonzero(ok[start:end]) + start
                        if not len(use):
                            continue
                    t_inf = time.perf_counter()
                    quality = item.quality[use] if item.quality is not None else None
                    batch_probs[use], part = classifier.classify(item.tiles[use], quality, params.tta)
                    if batch_domain is not None and part is not None:
                        batch_domain[use] = part
                    took = time.perf_counter() - t_inf
                    steps.took(end - start if isinstance(use, slice) else len(use), took)
                    infer_s += took
                indices, failed = item.indices[:end], item.failed[:end]  # a cancelled batch keeps its steps done
                batch_probs = batch_probs[:end]
                batch_domain = None if batch_domain is None else batch_domain[:end]
                probs[indices] = batch_probs
                if domain_score is not None and batch_domain is not None:
                    domain_score[indices] = batch_domain
                state[indices] = np.where(~failed, TileState.DONE, TileState.FAILED)
                kept = set(indices.tolist())
                tile_errors.update({i: e for i, e in item.errors.items() if i in kept})
                batch_nuclei = None if item.nuclei is None else item.nuclei[:end]
                if nuclei is not None and batch_nuclei is not None:
                    nuclei.values[indices] = batch_nuclei
                done += len(indices)
                elapsed = time.perf_counter() - t_run
                rate = (done - resumed) / elapsed if elapsed > 0 else 0.0
                eta = (n - done) / rate if rate > 0 else None
                yield BatchDone(indices, batch_probs, failed, done, n, elapsed, rate, eta, batch_nuclei, batch_domain)
                if end < len(item.indices):
                    break
            if cancel.cancelled and done < n:
                status = "cancelled"
        run_s = time.perf_counter() - t_run
        timings = {
            "tissue_s": t_tissue,
            "tiles_s": run_s,
            "read_thread_s": read_s,
            "inference_s": infer_s,
            "total_s": time.perf_counter() - t_start,
            "tiles_per_s": (done - resumed) / run_s if run_s > 0 else 0.0,
            # CPU seconds while the tiles ran: the whole process, the readers' decoding + resizing and pixel
            # checks, and the domain score's maths after each batch (bench/throughput.py prints them per tile)
            "process_cpu_s": time.process_time() - cpu_0,
            "read_cpu_s": read_cpu_s,
            "checks_cpu_s": checks_cpu_s,
            "domain_cpu_s": classifier.domain_cpu_s - domain_cpu_0,
        }
        if resumed:
            timings["resumed_tiles"] = float(resumed)
        if nuclei is not None:
            timings["nuclei_thread_s"] = nuclei_s
        if stain_info:
            timings["stain_estimate_s"] = t_stain
        result = AnalysisResult(
            slide=info, model=model, params=params, grid=grid, probs=probs, state=state,
            provider=classifier.provider_label, status=status, tissue=tissue, tile_errors=tile_errors,
            timings=timings, nuclei=nuclei, domain_score=domain_score, stain=stain_info, reading=reading,
        )
        if cache is not None and status == "complete":
            cache.store(key, result)
        yield Finished(result)
    finally:
        if readers is not None:
            readers.close()
        slide.close()


def run_analysis(
    slide_path: str | Path,
    classifier: OnnxClassifier,
    params: AnalysisParams | None = None,
    cancel: CancelToken | None = None,
    cache: ResultCache | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> AnalysisResult:
    """Drive analyze() to the end and return its result."""
    result: AnalysisResult | None = None
    for event in analyze(slide_path, classifier, params, cancel, cache):
        if on_event is not None:
            on_event(event)
        if isinstance(event, Finished):
            result = event.result
    assert result is not None
    return result
