"""Explaining the selected tile: its class activation map on the exact patch the model saw.

One explanation job at a time (the latest selection next); the run's stain transform is fitted once per
result, so the inspector shows the patch stain-normalised as the model was fed it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.explain import TileExplanation, explain_tile
from cellview.analysis.model_spec import ModelSpec, copy_with_sha
from cellview.analysis.pipeline import slide_stain_transform
from cellview.analysis.results import AnalysisResult
from cellview.analysis.stain import TileStainTransform
from cellview.base.errors import CellviewError, ModelError
from cellview.slides.opening import open_slide
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import Job, JobHandle, LatestJob, Pending, Runner
from cellview.viewer.selection import Selection
from cellview.viewer.slide import SlideState


@dataclass(frozen=True)
class ExplainerReady:
    """The classifier an explanation job loaded (kept for the next tile)."""

    classifier: OnnxClassifier
    model_path: str


@dataclass(frozen=True)
class ExplainState:
    """The inspector's class-activation-map state.

    ``state``: "off", "idle" (on, no tile selected), "busy", "ready" (``explanation`` holds the
    tile, its maps and the class shown) or "failed" (``message`` says why, e.g. a model without maps).
    """

    state: str
    explanation: TileExplanation | None = None
    message: str = ""
    index: int = -1


@dataclass(frozen=True)
class ExplainStain:
    """The slide's stain transform an explanation job fitted (kept for the result's next tiles)."""

    key: tuple
    transform: TileStainTransform


def explain_task(path: str, mpp_um: float | None, grid: Any, index: int, classifier: OnnxClassifier | None,
                 model_path: str | None, model_sha256: str, stain_method: str = "none",
                 stain: ExplainStain | None = None, stain_key: tuple = ()
                 ) -> Iterator[ExplainerReady | ExplainStain | TileExplanation]:
    """Explain one tile off the main thread: load the classifier the first time (CPU: one patch is
    cheap, and the GPU stays with the analysis), then read the exact patch and run it — stain-normalised
    as the analysis did, with the slide's transform fitted once per result (``stain_key``) as analyze fits it."""
    if classifier is None:
        if not model_path:
            raise ModelError("No model is loaded to explain the tile with.")
        spec = ModelSpec.load(model_path)
        spec = copy_with_sha(spec, model_sha256) or spec  # the copy of the weights (FP32, INT8…) that made it
        classifier = OnnxClassifier(spec, device="cpu", intra_op_threads=1, precision=spec.precision)
        yield ExplainerReady(classifier, model_path)
    if classifier.spec.onnx_sha256 != model_sha256:
        raise ModelError("The result on screen was made by another model than the one loaded; analyse again "
                         "to explain its tiles.")
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        if stain_method != "none" and (stain is None or stain.key != stain_key):
            stain = ExplainStain(stain_key, slide_stain_transform(slide, grid, classifier.spec, stain_method))
            yield stain
        yield explain_tile(slide, grid, index, classifier,
                           stain=stain.transform if stain_method != "none" and stain is not None else None)
    finally:
        slide.close()


def stain_task(path: str, mpp_um: float | None, grid: Any, spec: ModelSpec,
               method: str) -> Iterator[TileStainTransform]:
    """The slide's stain transform for a result's grid, fitted off the main thread as analyze fits it."""
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield slide_stain_transform(slide, grid, spec, method)
    finally:
        slide.close()


class Explanations:
    """The inspector's class activation maps and patch stain as ``model.explain`` (module docstring).

    ``on``: maps are shown; ``class_index``: the class whose map is shown (None: the tile's predicted one);
    ``current``: the ``ExplainState``; ``classifier``: runs explanations (a view with a loaded classifier,
    the kiosk, sets it, else the first explanation loads the result's model on CPU). Events: ``explanation``
    (the new ``ExplainState``) and ``stain`` (the run's stain transform, once fitted).
    """

    EVENTS = ("explanation", "stain")

    def __init__(self, slide: SlideState, settings: AnalysisSettings, analysis: AnalysisRun, selection: Selection,
                 runner: Runner, messages: Messages) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.slide, self.settings, self.analysis, self.selection = slide, settings, analysis, selection
        self.runner, self.messages = runner, messages
        self.on = False
        self.class_index: int | None = None
        self.current = ExplainState("off")
        self.classifier: OnnxClassifier | None = None
        self._loaded_for: str | None = None  # the model path of a classifier loaded here
        self._stain: ExplainStain | None = None  # the slide's stain transform, fitted for one result
        self._ids = itertools.count(1)
        self._id = 0
        self._job: JobHandle | None = None
        self._stain_job = LatestJob(runner)
        self._again = False
        self._key: tuple[int, int] | None = None

    # -- the map ----------------------------------------------------------------------------------

    def set_on(self, on: bool) -> None:
        """Show the class activation map of the selected tile (computed off the UI thread)."""
        on = bool(on)
        if on == self.on:
            return
        self.on = on
        if not on:
            self.forget()
            return
        self.request(force=True)

    def set_class(self, class_index: int | None) -> None:
        """The class whose map is shown (None: the predicted one). Every class's map came with the tile."""
        result = self.analysis.shown_result()
        if class_index is not None and result is not None and not 0 <= class_index < len(result.model.class_names):
            raise ModelError(f"Class index {class_index} is out of range.")
        self.class_index = class_index
        ex = self.current.explanation
        if self.current.state == "ready" and ex is not None:
            self._set(replace(self.current, explanation=self._shown_class(ex)))

    def _shown_class(self, ex: TileExplanation) -> TileExplanation:
        k = ex.pred_class if self.class_index is None else self.class_index
        return ex if ex.explained_class == k else replace(ex, explained_class=k)

    def _set(self, state: ExplainState) -> None:
        self.current = state
        self.events.explanation(state)

    def model_changed(self) -> None:
        """Another model was selected: a classifier loaded here for the last one goes (a view's stays)."""
        if self._loaded_for is not None:
            self.classifier = self._loaded_for = None

    def forget(self) -> None:
        """The tile, the result or the slide went away: a job still running is ignored."""
        self._id = next(self._ids)
        self._job, self._again, self._key = None, False, None
        if self.current.state != ("idle" if self.on else "off"):
            self._set(ExplainState("idle" if self.on else "off"))

    def request(self, force: bool = False) -> None:
        """Explain the selected tile when maps are on: one job at a time, the latest selection next."""
        if not self.on:
            return
        result, index, opened = self.analysis.shown_result(), self.selection.index, self.slide.opened
        if result is None or opened is None or not 0 <= index < result.n_tiles:
            self.forget()
            return
        if not result.done[index]:
            self._set(ExplainState("failed", message="This tile has not been classified.", index=index))
            return
        key = (id(result.grid), index)
        if not force and key == self._key and self.current.state in ("busy", "ready"):
            return
        self._set(ExplainState("busy", index=index))
        if self._job is not None:
            self._again, self._key = True, None
            return
        self._key = key
        self._id = job_id = next(self._ids)
        grid, path, mpp = result.grid, opened.path, self.slide.mpp_um()
        classifier, model_path = self.classifier, self.analysis.result_model_path or self.settings.model_path
        sha = result.model.sha256
        if classifier is not None and classifier.spec.onnx_sha256 != sha and copy_with_sha(classifier.spec, sha):
            classifier = None  # another copy of the same model (--precision) made the result: load that one
        stain_method, stain_key, stain = result.params.stain_normalize, self._stain_key(result), self._stain

        def on_item(item: ExplainerReady | ExplainStain | TileExplanation) -> None:
            if isinstance(item, ExplainStain):
                self._stain = item
                self.events.stain(item.transform)
                return
            if isinstance(item, ExplainerReady):
                # kept for the next tile unless the model changed meanwhile
                if self.classifier is None and item.model_path in (self.settings.model_path,
                                                                   self.analysis.result_model_path):
                    self.classifier, self._loaded_for = item.classifier, item.model_path
                return
            if job_id == self._id and not self._again:
                self._set(ExplainState("ready", self._shown_class(item), index=index))

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._id and not self._again:
                self._key = None  # a later selection of this tile tries again
                self._set(ExplainState("failed", message=exc.message, index=index))

        def on_done() -> None:
            if job_id != self._id:
                return
            self._job = None
            if self._again:
                self._again = False
                self.request()

        self._job = Pending()
        handle = self.runner(Job("explain", lambda cancel: explain_task(path, mpp, grid, index, classifier, model_path,
                                                                        sha, stain_method, stain, stain_key),
                                 on_item, on_failed, on_done))
        if job_id == self._id and self._job is not None:
            self._job = handle

    # -- the run's stain transform ----------------------------------------------------------------

    def _stain_key(self, result: AnalysisResult) -> tuple:
        """One fit per result's tiles (a streaming result keeps its grid) and slide."""
        opened = self.slide.opened
        return (id(result.grid), opened.path if opened is not None else "", result.params.stain_normalize)

    def patch_stain(self) -> TileStainTransform | None:
        """The stain transform the shown result's tiles went through before the model, when it is fitted
        (None: the run normalised nothing, or the fit is pending: ``request_stain``, then ``events.stain``)."""
        result = self.analysis.shown_result()
        if result is None or result.params.stain_normalize == "none":
            return None
        fitted = self._stain
        return fitted.transform if fitted is not None and fitted.key == self._stain_key(result) else None

    @property
    def stain_pending(self) -> bool:
        """The shown result normalised stains and its transform is not fitted yet."""
        result = self.analysis.shown_result()
        return result is not None and result.params.stain_normalize != "none" and self.patch_stain() is None

    def request_stain(self) -> None:
        """Fit the slide's stain transform for the shown result, as analyze fits it (a job; ``events.stain``),
        so the inspector shows the patch the model was fed, not the one scanned."""
        result, opened = self.analysis.shown_result(), self.slide.opened
        spec = self.analysis.spec
        if not self.stain_pending or self._stain_job.busy or result is None or opened is None:
            return
        if spec is None or spec.onnx_sha256 != result.model.sha256:
            return
        key, path, mpp, grid = self._stain_key(result), opened.path, self.slide.mpp_um(), result.grid
        method = result.params.stain_normalize

        def on_item(transform: TileStainTransform) -> None:
            self._stain = ExplainStain(key, transform)
            self.events.stain(transform)

        self._stain_job.start("stain", lambda cancel: stain_task(path, mpp, grid, spec, method), on_item,
                              lambda exc: self.messages.status(f"The stain transform could not be fitted: {exc.message}"))

    def forget_stain(self) -> None:
        """The slide closed: a stain fit still running is ignored."""
        self._stain_job.forget()
