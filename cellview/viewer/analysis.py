"""The analysis run: one at a time, streamed batch by batch into a result that views draw as it grows.

A run is a job over an ``AnalysisSource`` (the model file by default, the kiosk's loaded classifier
otherwise); its progress, result and whether that result is still current (``stale``) live here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from cellview.analysis.cache import ResultCache
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_lookup import user_models_dir
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, Started, analyze
from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileNuclei, TileState
from cellview.analysis.tissue import TissueMask
from cellview.base.errors import CellviewError, ModelError
from cellview.viewer.analysis_settings import AnalysisSettings, ModelOptions
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import Job, JobHandle, Runner, nothing
from cellview.viewer.slide import SlideState


@dataclass(frozen=True)
class ModelReady:
    """The classifier is loaded: views can say which model runs on what."""

    spec: ModelSpec
    description: str  # the whole sentence: "colon-he 2.0.0 on CPU (no usable GPU); INT8 copy not used (…)"
    fallback_message: str | None  # a GPU was asked for and is not used: why
    warn: bool  # CPU only, or a GPU asked for and not used
    provider: str = ""  # what it runs on, in a word or two: "CPU", "TensorRT (FP16)"

    @property
    def short(self) -> str:
        """The model and what it runs on, for a status bar: 'colon-he 2.0.0 on CPU'."""
        name = f"{self.spec.name} {self.spec.version}".strip()
        return f"{name} on {self.provider}" if self.provider else self.description


@dataclass(frozen=True)
class AnalysisRequest:
    """One run as the model set it up: the views and sources never build it themselves."""

    path: str
    params: AnalysisParams
    model_path: str | None
    use_cache: bool
    resume: AnalysisResult | None = None  # a cancelled run of this slide, model and settings: go on from its tiles


AnalysisSource = Callable[[AnalysisRequest, CancelToken], Iterator[object]]
"""Yields pipeline events (``Started``, ``BatchDone``, ``Finished``), optionally a ``ModelReady``
first, and any other item the source's view wants (``events.job_item``)."""


def model_file_analysis(request: AnalysisRequest, cancel: CancelToken) -> Iterator[object]:
    """The desktop's source: load the model file (seconds with TensorRT), then stream the pipeline."""
    if not request.model_path:
        raise ModelError("No model is selected.", f"Put a model into {user_models_dir() / '<name>'} or open one.")
    spec = ModelSpec.load(request.model_path)
    threads = max(1, (os.cpu_count() or 2) - 1)  # leave one core to the UI thread on small machines
    classifier = OnnxClassifier(spec, device=request.params.device, intra_op_threads=threads,
                                precision=request.params.precision)
    yield ModelReady(spec, classifier.describe(), classifier.fallback_message, classifier.needs_attention,
                     classifier.provider_label)
    yield from analyze(request.path, classifier, request.params, cancel,
                       ResultCache() if request.use_cache else None, resume=request.resume)


@dataclass(frozen=True)
class Progress:
    """Where the run is, for a progress bar and a rate line."""

    phase: str  # "preparing", "running", "done", "cancelled", "failed"
    done: int = 0
    total: int = 0
    tiles_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    from_cache: bool = False


@dataclass
class _Run:
    """The live arrays of a streaming run (written only on the thread that owns the model)."""

    request: AnalysisRequest
    spec: ModelSpec | None = None
    started: Started | None = None
    probs: np.ndarray | None = None
    state: np.ndarray | None = None
    nuclei: TileNuclei | None = None
    domain_score: np.ndarray | None = None  # when the model has domain statistics
    partial: AnalysisResult | None = None


class AnalysisSourceError(CellviewError):
    """An analysis source broke its contract (a programming error, reported like any other)."""


class AnalysisRun:
    """The analysis of the open slide as ``model.analysis`` (module docstring).

    Events: ``model_ready`` (a ``ModelReady``), ``running`` (True/False), ``progress`` (a ``Progress``),
    ``tiles`` (the indices a batch classified), ``result`` (the finished ``AnalysisResult``; None when it
    went), ``job_item`` (an item of the source the viewer does not know, e.g. the kiosk's case) and
    ``run_ended`` (the ``AnalysisRequest`` whose job ended). The viewer wires what follows a run in the other
    parts through the hooks: ``before_start`` (the last result goes), ``on_tissue`` (the run's tissue mask),
    ``on_batch`` (after a batch's progress, before ``tiles``) and ``on_shown`` (after ``result``; True when a
    run finished).
    """

    EVENTS = ("model_ready", "running", "progress", "tiles", "result", "job_item", "run_ended")

    def __init__(self, slide: SlideState, settings: AnalysisSettings, runner: Runner, messages: Messages,
                 source: AnalysisSource = model_file_analysis) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.slide, self.settings, self.runner, self.messages = slide, settings, runner, messages
        self.source = source
        """Runs the pipeline for a request (default: loads the selected model file)."""
        self.use_cache = True
        self.auto_analyse = False
        self.model_ready: ModelReady | None = None
        self.spec: ModelSpec | None = None
        """The model of the last run (from its ModelReady, or the spec a source was started with)."""
        self.result: AnalysisResult | None = None
        self.result_model_path: str | None = None
        self.progress = Progress("idle")
        self.before_start: Callable[[], None] = nothing
        self.on_tissue: Callable[[TissueMask], None] = nothing
        self.on_batch: Callable[[], None] = nothing
        self.on_shown: Callable[[bool], None] = nothing
        self._run: _Run | None = None
        self._ids = itertools.count(1)
        self._run_id = 0
        self._run_job: JobHandle | None = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def can_analyse(self) -> bool:
        """A slide is open and nothing runs: what enables "Analyse"."""
        return self.slide.opened is not None and not self.running

    def shown_result(self) -> AnalysisResult | None:
        """The finished result, or one built from the batches so far (rebuilt once per batch)."""
        if self.result is not None:
            return self.result
        run = self._run
        if run is None or run.started is None or run.spec is None or self.slide.opened is None:
            return None
        if run.partial is None:
            assert run.probs is not None and run.state is not None
            run.partial = AnalysisResult(
                slide=self.slide.opened.info, model=ModelInfo.from_spec(run.spec), params=run.request.params,
                grid=run.started.grid, probs=run.probs, state=run.state, provider=run.started.provider,
                status="running", tissue=run.started.tissue, nuclei=run.nuclei, domain_score=run.domain_score)
        return run.partial

    @property
    def stale(self) -> bool:
        """The result was made with other analysis settings than the current ones (Analyse to apply)."""
        if self.result is None:
            return False
        current = self.settings.current()
        return (self.result.params.cache_dict() != current.cache_dict()
                or self.result.params.precision != current.precision)

    # -- running ----------------------------------------------------------------------------------

    def start(self, source: AnalysisSource | None = None, spec: ModelSpec | None = None,
              params: AnalysisParams | None = None) -> bool:
        """Analyse the open slide (one run at a time). ``source``/``spec``: another runner of the pipeline
        (the kiosk's preloaded classifier); ``params``: other run parameters. False when nothing started."""
        opened = self.slide.opened
        if opened is None:
            self.messages.status("Open a slide first.")
            return False
        if self.running:
            return False
        source = source or self.source
        if source is model_file_analysis and not self.settings.model_path:
            where = user_models_dir() / "<name>"
            self.messages.error(ModelError("No model is selected.",
                                           f"Put a model into {where} or use Open… next to the model list."), "No model")
            return False
        model_decides = (spec.reading if spec is not None else self.settings.options.reading).unstated.read != "ask"
        if not self.slide.resolve_scale(model_decides):
            return False
        params = params or self.settings.current()
        resume = self.result if self._can_resume(params) else None
        request = AnalysisRequest(opened.path, params, self.settings.model_path, self.use_cache, resume)
        self.before_start()
        self._run_id = run_id = next(self._ids)
        self._run = _Run(request, spec=spec)
        self.model_ready = None
        if spec is not None:
            self.spec = spec
        self.progress = Progress("preparing")
        self.events.running(True)
        self.events.progress(self.progress)

        def mine() -> bool:
            return run_id == self._run_id

        def on_item(item: object) -> None:
            if mine():
                self._on_item(item)

        def on_failed(exc: CellviewError) -> None:
            if mine():
                self.messages.error(exc, "Analysis failed")

        def on_done() -> None:
            if mine():
                self._run_job = None
                self._end_run()
                self.events.run_ended(request)

        self._run_job = self.runner(Job("analysis", lambda cancel: source(request, cancel), on_item, on_failed,
                                        on_done))
        return True

    def _can_resume(self, params: AnalysisParams) -> bool:
        """The shown result is a cancelled run of this slide with this model and these settings: Analyse goes
        on from its finished tiles (the pipeline checks the rest: ``pipeline.resumable``)."""
        result, opened = self.result, self.slide.opened
        return (result is not None and result.status == "cancelled" and opened is not None
                and result.slide.path == opened.path and self.result_model_path == self.settings.model_path
                and result.params.cache_dict() == params.cache_dict())

    def cancel(self) -> None:
        """Stop after the current batch; finished tiles are kept (the pipeline's Finished says so)."""
        if self._run_job is not None and self._run is not None:
            self._run_job.cancel()
            self.messages.status("Cancelling: finished tiles are kept.")

    def abandon(self) -> None:
        """Cancel the run and ignore whatever it still delivers (its thread stops at the next batch)."""
        if self._run_job is not None:
            self._run_job.cancel()
        self._run_id = next(self._ids)
        self._run_job = None
        if self._run is not None:
            self._run = None
            self.events.running(False)

    def _on_item(self, item: object) -> None:
        run = self._run
        if not isinstance(item, (ModelReady, Started, BatchDone, Finished)):
            self.events.job_item(item)  # e.g. the kiosk's CaseResult, which follows Finished
            return
        if run is None:
            return
        if isinstance(item, ModelReady):
            run.spec = self.spec = item.spec
            self.model_ready = item
            self.settings.set_model_options(ModelOptions.from_spec(item.spec))  # the loaded model has the last word
            self.events.model_ready(item)
        elif isinstance(item, Started):
            n = item.total
            if run.spec is None:
                raise AnalysisSourceError("An analysis source must yield ModelReady (or be given the spec) "
                                          "before the pipeline starts.")
            run.started = item
            run.probs = np.full((n, run.spec.num_classes), np.nan, np.float32)
            run.state = np.zeros(n, np.uint8)
            run.nuclei = (TileNuclei.empty(n, "px2" if self.slide.mpp_um() is None else "um2")
                          if run.request.params.nuclei else None)
            run.domain_score = np.full(n, np.nan, np.float32) if run.spec.domain is not None else None
            run.partial = None
            self.progress = Progress("running", 0, n, from_cache=item.from_cache)
            self.events.progress(self.progress)
            if item.tissue is not None:
                self.on_tissue(item.tissue)
        elif isinstance(item, BatchDone) and run.started is not None:
            assert run.probs is not None and run.state is not None
            run.probs[item.indices] = item.probs
            run.state[item.indices] = np.where(item.failed, TileState.FAILED, TileState.DONE)
            if item.nuclei is not None and run.nuclei is not None:
                run.nuclei.values[item.indices] = item.nuclei
            if item.domain_score is not None and run.domain_score is not None:
                run.domain_score[item.indices] = item.domain_score
            run.partial = None
            self.progress = Progress("running", item.done, item.total, item.tiles_per_s, item.eta_s, item.elapsed_s)
            self.events.progress(self.progress)
            self.on_batch()
            self.events.tiles(item.indices)
        elif isinstance(item, Finished):
            self._finish(item.result)

    def _finish(self, result: AnalysisResult) -> None:
        opened = self.slide.opened
        if result.slide.mpp is None and opened is not None and opened.info.mpp is not None:
            result = replace(result, slide=replace(result.slide, mpp=opened.info.mpp))
        run = self._run
        self._run = None  # the job may still deliver items of its own (and then closes its slide); a re-run may start
        self.result_model_path = run.request.model_path if run else self.settings.model_path
        self.result = result
        phase = {"complete": "done", "cancelled": "cancelled"}.get(result.status, result.status)
        self.progress = Progress(phase, result.n_done + result.n_failed, result.n_tiles,
                                 float(result.timings.get("tiles_per_s", 0.0)), None,
                                 float(result.timings.get("total_s", 0.0)), result.from_cache)
        self.events.running(False)
        self.events.progress(self.progress)
        self.events.result(result)
        self.on_shown(True)

    def _end_run(self) -> None:
        """The run's job ended without a Finished (failed, or stopped early)."""
        if self._run is None:
            return
        self._run = None
        self._run_job = None
        self.progress = Progress("failed")
        self.events.running(False)
        self.events.progress(self.progress)
        self.events.result(None)
        self.on_shown(False)

    # -- results made elsewhere, and none --------------------------------------------------------

    def set_result(self, result: AnalysisResult, model_path: str | None = None) -> None:
        """Show a result made elsewhere (the kiosk's earlier case, a script)."""
        self.result = result
        self.result_model_path = model_path or self.settings.model_path
        self.progress = Progress("done", result.n_done + result.n_failed, result.n_tiles, from_cache=True)
        self.events.progress(self.progress)
        self.events.result(result)
        self.on_shown(False)

    def forget(self, emit: bool = True) -> None:
        """No result (``events.result(None)`` and an idle ``events.progress`` when ``emit``); a run goes on."""
        self.result = self.result_model_path = None
        self.progress = Progress("idle")
        if emit:
            self.events.result(None)
            self.events.progress(self.progress)
