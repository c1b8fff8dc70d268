"""The viewer's state in one Qt-free object, in the spirit of napari's ``ViewerModel``.

``ViewerModel`` holds the open slide, the selected model, the analysis settings, the result
(streaming, finished or cleared) and whether it is still current, the selected tile, the
overlay settings, the malignant regions and the export settings. It changes only through its
methods and says so through plain events (``model.events.result.connect(callback)``; a
callback gets an ``Event`` with ``type`` and ``value``). The desktop window and the kiosk are
thin views: they turn widget input into method calls and events into widget updates, so two
widgets can no longer disagree about the state.

It also decides what the views say about the model's domain (``domain_notice``: a banner when
most of the tissue is unlike the training data, a quieter note when some tiles are, or that the
model has no domain statistics) and explains the selected tile (``set_explain``: the class
activation map on the exact patch the model saw, computed as a job).

Slow work (opening a slide, an analysis, regions, a tissue preview, a tile's explanation) is a ``Job``: a generator
plus callbacks, handed to a ``runner``. The GUI's runner runs it on a worker thread and calls
back on the main thread; ``run_now`` runs it in the calling thread, so tests and scripts drive
the whole viewer without Qt.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from cellview.analysis.cache import ResultCache
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.domain import NOT_AVAILABLE
from cellview.analysis.explain import TileExplanation, explain_tile
from cellview.analysis.model_lookup import user_models_dir
from cellview.analysis.model_spec import CATEGORIES, ModelSpec, copy_with_sha, sidecar_for
from cellview.analysis.morphology import Region, malignant_regions
from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, Started, analyze, slide_stain_transform
from cellview.analysis.results import (
    AnalysisParams,
    AnalysisResult,
    ModelInfo,
    TileNuclei,
    TileState,
    domain_banner,
    plural,
)
from cellview.analysis.stain import StainReference, TileStainTransform
from cellview.analysis.tissue import TissueMask, TissueParams, detect_tissue
from cellview.base.errors import CellviewError, ExportError, ModelError
from cellview.base.files import writable_dir
from cellview.outputs.export import FORMATS, export_slide_result, render
from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS, TTA_VIEWS, describe_run_options  # noqa: F401 - re-exported
from cellview.outputs.overlay import OverlaySettings
from cellview.slides.opening import open_slide
from cellview.slides.slide import Mpp, SlideInfo, slide_display_name, slide_stem

log = logging.getLogger(__name__)

WHOLE_IMAGE = "whole-image"
"""``ViewerModel.mpp_choice`` when a slide of unknown scale is classified as one image."""

THUMBNAIL_PX = 2048
"""Longest side of the base image drawn under the pyramid tiles (and used for PNG export)."""

OVERVIEW_PX = 200


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """What a callback receives: the event's name and its new value."""

    type: str
    value: Any = None


class EventEmitter:
    """One named event: ``connect(callback)``, ``disconnect(callback)``, ``emit(value)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[Event], Any]] = []

    def connect(self, callback: Callable[[Event], Any]) -> Callable[[Event], Any]:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[Event], Any] | None = None) -> None:
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, value: Any = None) -> None:
        event = Event(self.name, value)
        for callback in list(self._callbacks):
            callback(event)

    __call__ = emit


class EmitterGroup:
    """The model's events by name (``events.slide``, ``events.result``…)."""

    def __init__(self, *names: str) -> None:
        self.names = names
        for name in names:
            setattr(self, name, EventEmitter(name))

    def __getattr__(self, name: str) -> EventEmitter:  # for type checkers; real ones are set in __init__
        raise AttributeError(name)


# ----------------------------------------------------------------------------- jobs


def _nothing(*_args: Any) -> None:
    return None


@dataclass
class Job:
    """Slow work: ``run(cancel)`` yields items; the callbacks run where the runner delivers them."""

    name: str
    run: Callable[[CancelToken], Iterator[Any]]
    on_item: Callable[[Any], None]
    on_failed: Callable[[CellviewError], None] = _nothing
    on_done: Callable[[], None] = _nothing


class JobHandle(Protocol):
    def cancel(self) -> None: ...


Runner = Callable[[Job], JobHandle]


class _Finished:
    """The handle of a job run to its end in the calling thread."""

    def __init__(self, token: CancelToken) -> None:
        self.cancel_token = token

    def cancel(self) -> None:
        self.cancel_token.cancel()


def run_now(job: Job) -> JobHandle:
    """Run a job to its end in the calling thread (tests, scripts): the same contract as the GUI's worker."""
    token = CancelToken()
    try:
        for item in job.run(token):
            job.on_item(item)
    except CellviewError as exc:
        job.on_failed(exc)
    except Exception as exc:  # noqa: BLE001 - as the GUI worker: a bug becomes a message, not a crash
        job.on_failed(CellviewError(f"Unexpected error: {exc}", traceback.format_exc()))
    finally:
        job.on_done()
    return _Finished(token)


# ----------------------------------------------------------------------------- persistent settings


class SettingsStore(Protocol):
    """Where the viewer remembers things between sessions (QSettings in the GUI)."""

    def get(self, key: str, default: object = None) -> object: ...
    def put(self, key: str, value: object) -> None: ...
    def recent_files(self) -> list[str]: ...
    def add_recent_file(self, path: str) -> list[str]: ...
    def recorded_mpp(self, fingerprint: str) -> float | None: ...
    def record_mpp(self, fingerprint: str, mpp_um: float) -> None: ...


class MemoryStore:
    """A ``SettingsStore`` that forgets on exit (tests, scripts)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.recent: list[str] = []
        self.mpp: dict[str, float] = {}

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def put(self, key: str, value: object) -> None:
        self.values[key] = value

    def recent_files(self) -> list[str]:
        return [p for p in self.recent if os.path.exists(p)]

    def add_recent_file(self, path: str) -> list[str]:
        path = os.path.abspath(path)
        self.recent = [path] + [p for p in self.recent if p != path][:9]
        return list(self.recent)

    def recorded_mpp(self, fingerprint: str) -> float | None:
        return self.mpp.get(fingerprint)

    def record_mpp(self, fingerprint: str, mpp_um: float) -> None:
        self.mpp[fingerprint] = float(mpp_um)


# ----------------------------------------------------------------------------- opening a slide


@dataclass(frozen=True)
class BaseImage:
    """The thumbnail in the forms a view draws without converting (prepared off the UI thread)."""

    bgra: np.ndarray  # QImage.Format_RGB32 memory layout: a QPixmap copy, no conversion
    overview_rgb: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> BaseImage:
        h, w = rgb.shape[:2]
        k = OVERVIEW_PX / max(h, w)
        small = cv2.resize(rgb, (max(1, int(w * k)), max(1, int(h * k))), interpolation=cv2.INTER_AREA)
        return cls(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)), small)


@dataclass(frozen=True)
class Opened:
    """Everything the viewer needs about a slide, read once off the main thread."""

    path: str
    info: SlideInfo
    thumbnail: np.ndarray
    base: BaseImage
    vendor: str
    is_plain_image: bool

    @property
    def name(self) -> str:
        return slide_display_name(Path(self.path))


@dataclass(frozen=True)
class SharperThumbnail:
    """The full-size base image, after a quick preview was shown."""

    path: str
    thumbnail: np.ndarray
    base: BaseImage


def _quick_preview(slide: Any) -> np.ndarray | None:
    """The scanner's own small thumbnail (no pixel decoding of the pyramid), if it has the slide's shape."""
    get = getattr(slide, "associated_image", None)
    try:
        img = get("thumbnail") if get else None
    except Exception:  # noqa: BLE001 - a broken associated image only costs the preview
        return None
    if img is None:
        return None
    w0, h0 = slide.dimensions
    return img if abs(img.shape[1] / img.shape[0] - w0 / h0) < 0.02 * (w0 / h0) else None


def open_task(path: str, mpp_um: float | None) -> Iterator[Opened | SharperThumbnail]:
    """Opened with the cheapest good preview, then the sharper base image if the preview was small.

    Preview: the scanner's thumbnail, else the whole coarsest usable pyramid level when it is
    small (one read, no resampling of a finer level), else a THUMBNAIL_PX thumbnail.
    """
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        info = slide.info()
        preview = _quick_preview(slide)
        if preview is None:
            coarsest_px = max(slide.level_dimensions[info.usable_levels[-1]])
            preview = slide.thumbnail(min(THUMBNAIL_PX, coarsest_px) if coarsest_px <= 2 * THUMBNAIL_PX else THUMBNAIL_PX)
        yield Opened(str(slide.path), info, preview, BaseImage.from_rgb(preview), slide.vendor, slide.vendor == "image")
        if max(preview.shape[:2]) < 0.75 * min(THUMBNAIL_PX, max(slide.dimensions)):
            sharp = slide.thumbnail(THUMBNAIL_PX)
            yield SharperThumbnail(str(slide.path), sharp, BaseImage.from_rgb(sharp))
    finally:
        slide.close()


# ----------------------------------------------------------------------------- what a model offers


NO_MODEL_SELECTED = "No model is selected."


@dataclass(frozen=True)
class ModelOptions:
    """What the selected model lets the Analysis settings offer, known as soon as it is selected.

    ``stain_unavailable`` says why stain normalisation cannot run ("" when it can: the sidecar
    stores its training data's reference stain). ``default_stain_normalize`` / ``default_tta`` are
    preselected for the model; sidecars name no such default (issue 11: normalisation becomes a
    default only if leave-one-source-out shows it helps, and the CLI's default is "none" too), so
    both are "none" until one does.
    """

    stain_unavailable: str = NO_MODEL_SELECTED
    default_stain_normalize: str = "none"
    default_tta: str = "none"
    default_precision: str = "auto"  # the model's validated INT8 copy on a CPU, FP16 on a GPU (model.choose_precision)

    @property
    def stain_available(self) -> bool:
        return not self.stain_unavailable

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelOptions:
        return cls(stain_unavailable="" if spec.stain_reference is not None else _no_reference(spec.name))

    @classmethod
    def read(cls, model_path: str | os.PathLike[str] | None) -> ModelOptions:
        """From the model's sidecar alone: cheap (no weights hashed), so the UI thread may call it on selection.

        A sidecar that cannot be read leaves normalisation unavailable with the reason; the run
        itself reports the sidecar's problem as usual.
        """
        if not model_path:
            return cls()
        path = Path(model_path)
        onnx_path = path / "model.onnx" if path.is_dir() else path.with_suffix(".onnx")
        sidecar = path if path.suffix.lower() == ".json" else sidecar_for(onnx_path)
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return cls(stain_unavailable=f"The model's sidecar {sidecar.name} cannot be read ({exc}).")
        if not isinstance(data, dict):
            return cls(stain_unavailable=f"The model's sidecar {sidecar.name} is not a JSON object.")
        name = str(data.get("name") or onnx_path.parent.name or onnx_path.stem)
        if data.get("stain_reference") is None:
            return cls(stain_unavailable=_no_reference(name))
        try:
            StainReference.from_dict(data["stain_reference"], f"model sidecar {sidecar.name}")
        except ModelError as exc:
            return cls(stain_unavailable=exc.message)
        return cls(stain_unavailable="")


def _no_reference(model_name: str) -> str:
    return (f"The model {model_name} does not store the reference stain of its training data, so there is "
            "nothing to normalise to (a model exported by a current cellview train stores it).")


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class ModelReady:
    """The classifier is loaded: views can say which model runs on what."""

    spec: ModelSpec
    description: str
    fallback_message: str | None
    warn: bool  # CPU only, or a GPU asked for and not used


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
    yield ModelReady(spec, classifier.describe(), classifier.fallback_message, classifier.needs_attention)
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


# ----------------------------------------------------------------------------- small tasks


@dataclass(frozen=True)
class TissuePreview:
    mask: TissueMask


def tissue_task(path: str, mpp_um: float | None, params: TissueParams) -> Iterator[TissuePreview]:
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield TissuePreview(detect_tissue(slide, params, slide.mpp.um if slide.mpp else None))
    finally:
        slide.close()


def regions_task(result: AnalysisResult, min_confidence: float) -> Iterator[list[Region]]:
    """Malignant regions off the main thread: noisy predictions make thousands of them (seconds).

    ``result`` must be a snapshot nobody writes to any more (its arrays copied).
    """
    yield malignant_regions(result, min_confidence)


def regions_note(result: AnalysisResult, regions: list[Region], min_confidence: float) -> str:
    """The sentence beside the region outlines. Regions join in-domain tiles only, so when none is found
    it says whether out-of-domain tiles were called malignant (the call on tissue the model never saw
    is no finding) instead of claiming that no tile is malignant."""
    where = f"malignant at ≥ {min_confidence:.0%} confidence" if min_confidence > 0 else "malignant"
    malignant = result.pred_category == CATEGORIES.index("malignant")
    sure = np.nan_to_num(result.confidence, nan=-1.0) >= min_confidence
    n_out = int((result.out_of_domain & malignant & sure).sum())
    some_out = result.has_domain and bool(result.out_of_domain.any())
    if regions:
        text = f"{plural(len(regions), 'region')} of tiles {where}; largest {regions[0].label()}."
    elif result.n_done and some_out and not result.in_domain.any():
        text = "No region: every classified tile is out of the model's domain."
    elif n_out:
        text = f"No region: no in-domain tile is {where}."
    else:
        text = f"No region: no tile is {where}."
    if n_out:
        text += f" {plural(n_out, 'out-of-domain tile')} called {where} {'is' if n_out == 1 else 'are'} left out."
    elif some_out:
        text += " Regions join in-domain tiles only."
    return text


# ----------------------------------------------------------------------------- the model's domain


@dataclass(frozen=True)
class DomainNotice:
    """What the views say about the model's domain for the shown result.

    ``kind``: "none" (no result), "unavailable" (the model has no domain statistics: say so where
    the score would be), "in" (no tile out of domain), "some" (a quieter note) or "most" (the
    banner: most of the tissue is unlike the training data). ``shown_anyway``: the user chose to
    see and count the out-of-domain tiles' calls (``OverlaySettings.show_out_of_domain``).
    """

    kind: str
    headline: str = ""
    detail: str = ""
    n_out: int = 0
    n_done: int = 0
    tissue_in_fraction: float | None = None
    shown_anyway: bool = False

    @property
    def banner(self) -> bool:
        return self.kind == "most"

    @property
    def note(self) -> bool:
        return self.kind == "some"

    @property
    def text(self) -> str:
        return f"{self.headline} {self.detail}".strip()


def domain_notice(result: AnalysisResult | None, shown_anyway: bool = False) -> DomainNotice:
    """Banner, note or nothing for a (possibly streaming) result; the banner rule is ``results.domain_banner``."""
    if result is None:
        return DomainNotice("none", shown_anyway=shown_anyway)
    if result.model.domain is None or result.domain_score is None:
        return DomainNotice("unavailable", NOT_AVAILABLE[0].upper() + NOT_AVAILABLE[1:] + ".",
                            "Nothing tells whether this tissue is like the model's training data.",
                            n_done=result.n_done, shown_anyway=shown_anyway)
    n_out, n_done = int(result.out_of_domain.sum()), result.n_done
    banner = domain_banner(result)
    drawn = ("shown in category colours and counted anyway." if shown_anyway
             else "drawn hatched grey and left out of the counts.")
    if banner.show:
        assert banner.in_domain_fraction is not None
        return DomainNotice(
            "most", banner.headline,
            f"{1 - banner.in_domain_fraction:.0%} of the tissue tiles are out of the model's domain, {drawn}",
            n_out, n_done, banner.in_domain_fraction, shown_anyway)
    if n_out == 0:
        text = f"Every classified tile is in the model's domain ({plural(n_done, 'tile')})." if n_done else ""
        return DomainNotice("in", text, "", 0, n_done, banner.in_domain_fraction, shown_anyway)
    return DomainNotice(
        "some", f"{n_out:,} of {plural(n_done, 'tile')} ({n_out / n_done:.0%}) are out of the model's domain,",
        drawn, n_out, n_done, banner.in_domain_fraction, shown_anyway)


# ----------------------------------------------------------------------------- explaining a tile


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


def stain_task(path: str, mpp_um: float | None, grid: Any, spec: ModelSpec, method: str) -> Iterator[TileStainTransform]:
    """The slide's stain transform for a result's grid, fitted off the main thread as analyze fits it."""
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield slide_stain_transform(slide, grid, spec, method)
    finally:
        slide.close()


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ExportSettings:
    """What "Export all" writes besides the overlay: its formats and the PNG's longest side (as `--png-size`)."""

    formats: tuple[str, ...] = FORMATS
    png_size_px: int = THUMBNAIL_PX


EXPORT_KINDS = {"png": "-heatmap.png", "view": "-view.png", "csv": ".csv", "geojson": ".geojson", "json": ".json"}


@dataclass(frozen=True)
class RecentSlide:
    path: str
    name: str  # the file name, or the DICOM folder's name


class ViewerModel:
    """The one viewer state; see the module docstring. All methods run on one (the UI) thread."""

    RUN_OPTIONS = ("stain_normalize", "tta", "precision")
    """Settings that change what the model sees (like choosing another model): with auto-analyse on,
    changing one re-runs the slide; each is the model's default until the user chooses it."""

    EVENTS = ("slide", "slide_image", "opening", "model", "model_options", "model_ready", "settings", "running", "progress",
              "tiles", "result", "selection", "overlay", "regions", "tissue", "status", "error", "job_item",
              "open_failed", "run_ended", "domain", "explanation", "hover", "stain")

    def __init__(self, runner: Runner = run_now, defaults: AnalysisParams | None = None,
                 store: SettingsStore | None = None, analysis_source: AnalysisSource = model_file_analysis) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.runner = runner
        self.store: SettingsStore = store if store is not None else MemoryStore()
        self.defaults = defaults or AnalysisParams()
        self.settings = self.defaults
        self.model_options = ModelOptions()
        """What the selected model offers (``events.model_options`` when it changes)."""
        self._chosen: dict[str, str] = {k: getattr(self.defaults, k) for k in self.RUN_OPTIONS
                                        if getattr(self.defaults, k) != "none"}
        """Run options the user asked for (the command line, the Analysis panel); the rest follow the model."""
        self._apply_model_options(self.model_options)
        self.analysis_source = analysis_source
        self.ask_scale: Callable[[Opened], float | str | None] | None = None
        """Asked for the µm per pixel of a slide that does not say (None: the run fails with the pipeline's message)."""
        self.use_cache = True
        self.auto_analyse = False
        self.slide: Opened | None = None
        self.opening: str | None = None
        self.mpp_choice: float | str | None = None
        self.model_path: str | None = None
        self.model_ready: ModelReady | None = None
        self.spec: ModelSpec | None = None
        """The model of the last run (from its ModelReady, or the spec a source was started with)."""
        self.result: AnalysisResult | None = None
        self.result_model_path: str | None = None
        self.selection = -1
        self.hover = ""
        """What the tile under the pointer is (``hover_at``; "" over none): the status bar's text."""
        self.overlay = OverlaySettings()
        self.regions: list[Region] = []
        self._shown_regions_key: tuple | None = None  # (id(result), n_done, confidence) of self.regions
        self.export_settings = ExportSettings()
        self.tissue: TissueMask | None = None
        self.progress = Progress("idle")
        self._run: _Run | None = None
        self._ids = itertools.count(1)
        self._open_id = self._run_id = self._regions_id = self._tissue_id = 0
        self._open_job: JobHandle | None = None
        self._run_job: JobHandle | None = None
        self._tissue_job: JobHandle | None = None
        self._regions_job: JobHandle | None = None
        self._regions_key: tuple | None = None
        self._regions_again = False
        self._after_open: dict[str, Any] = {}
        self.domain = DomainNotice("none")
        self.explain_on = False
        self.explain_class: int | None = None
        """The class whose activation map is shown; None: the tile's predicted class."""
        self.explain = ExplainState("off")
        self.explain_classifier: OnnxClassifier | None = None
        """Runs explanations; a view with a loaded classifier (the kiosk) sets it, else the first
        explanation loads the result's model (on CPU)."""
        self._explain_stain: ExplainStain | None = None  # the slide's stain transform, fitted for one result
        self._stain_job: JobHandle | None = None
        self._stain_id = 0
        self._explain_loaded_for: str | None = None  # the model path of a classifier loaded here
        self._explain_id = 0
        self._explain_job: JobHandle | None = None
        self._explain_again = False
        self._explain_key: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------ state queries

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def can_analyse(self) -> bool:
        """A slide is open and nothing runs: what enables "Analyse"."""
        return self.slide is not None and not self.running

    @property
    def can_export(self) -> bool:
        return self.result is not None and not self.running

    def shown_result(self) -> AnalysisResult | None:
        """The finished result, or one built from the batches so far (rebuilt once per batch)."""
        if self.result is not None:
            return self.result
        run = self._run
        if run is None or run.started is None or run.spec is None or self.slide is None:
            return None
        if run.partial is None:
            assert run.probs is not None and run.state is not None
            run.partial = AnalysisResult(
                slide=self.slide.info, model=ModelInfo.from_spec(run.spec), params=run.request.params,
                grid=run.started.grid, probs=run.probs, state=run.state, provider=run.started.provider,
                status="running", tissue=run.started.tissue, nuclei=run.nuclei, domain_score=run.domain_score)
        return run.partial

    def mpp_um(self) -> float | None:
        """The slide's µm per level-0 pixel as the viewer knows it (None: unknown or one-image mode)."""
        info = self.slide.info if self.slide else None
        return info.mpp.um if info and info.mpp and self.mpp_choice != WHOLE_IMAGE else None

    def current_params(self) -> AnalysisParams:
        """The analysis settings as a run would use them now (the pixel size choice applied)."""
        d = self.settings
        tissue = replace(d.tissue, max_threshold=max(d.tissue.max_threshold, d.tissue.min_threshold))
        whole = self.mpp_choice == WHOLE_IMAGE or d.whole_image
        mpp = self.mpp_choice if isinstance(self.mpp_choice, float) else d.mpp_um
        return replace(d, tissue=tissue, whole_image=whole, mpp_um=None if whole else mpp)

    @property
    def stale(self) -> bool:
        """The result was made with other analysis settings than the current ones (Analyse to apply)."""
        if self.result is None:
            return False
        current = self.current_params()
        return (self.result.params.cache_dict() != current.cache_dict()
                or self.result.params.precision != current.precision)

    # ------------------------------------------------------------------------------ settings

    def set_settings(self, **changes: Any) -> None:
        """Change analysis settings (``tissue``, ``tissue_threshold``, ``nuclei``, ``device``, …, and any
        field later added to ``AnalysisParams``); the result stays until Analyse, marked stale.

        ``stain_normalize``, ``tta`` and ``precision`` (``RUN_OPTIONS``) are remembered as the user's choice across
        models, and with auto-analyse on re-run the open slide as a new model would. Stain
        normalisation is refused, with the reason, when the model stores no reference stain.
        """
        new = replace(self.settings, **changes)  # AnalysisParams rejects an unknown choice here
        if new.stain_normalize != "none" and not self.model_options.stain_available:
            self.status(f"{STAIN_LABELS[new.stain_normalize]} stain normalisation is unavailable: "
                        f"{self.model_options.stain_unavailable}")
            changes = {k: v for k, v in changes.items() if k != "stain_normalize"}
            new = replace(new, stain_normalize=self.settings.stain_normalize)
        self._chosen.update({k: v for k, v in changes.items() if k in self.RUN_OPTIONS})
        if new == self.settings:
            return
        rerun = any(getattr(new, k) != getattr(self.settings, k) for k in self.RUN_OPTIONS)
        self.settings = new
        self.events.settings(new)
        if rerun and self.auto_analyse and self.slide is not None and self.model_path:
            self._abandon_run()
            self.start_analysis()

    def set_model_options(self, options: ModelOptions) -> None:
        """What the model offers, when known otherwise than from the selected file (the kiosk's classifier)."""
        if options != self.model_options:
            self._apply_model_options(options)

    def _apply_model_options(self, options: ModelOptions) -> None:
        """The run options for this model: the user's choices where it can honour them, else its defaults."""
        self.model_options = options
        self.events.model_options(options)
        wanted = {k: self._chosen.get(k, getattr(options, f"default_{k}")) for k in self.RUN_OPTIONS}
        dropped = wanted["stain_normalize"] if not options.stain_available else "none"
        if dropped != "none":
            wanted["stain_normalize"] = "none"
        new = replace(self.settings, **wanted)
        if new != self.settings:
            self.settings = new
            self.events.settings(new)
        if dropped != "none" and options.stain_unavailable != NO_MODEL_SELECTED:
            self.status(f"{STAIN_LABELS[dropped]} stain normalisation is off for this model: "
                        f"{options.stain_unavailable}")

    def set_tissue(self, **changes: Any) -> None:
        self.set_settings(tissue=replace(self.settings.tissue, **changes))

    def set_model(self, model_path: str | None) -> None:
        """Select a model. A result always belongs to one model: another model's result is cleared,
        and with auto-analyse on the open slide is analysed again with the new one."""
        if model_path == self.model_path:
            return
        self.model_path = model_path
        self.model_ready = None  # the provider and classes of the new model are known once it loads
        if self._explain_loaded_for is not None:  # a classifier this model loaded for explanations
            self.explain_classifier = self._explain_loaded_for = None
        self.events.model(model_path)
        self._apply_model_options(ModelOptions.read(model_path))
        had_result = self.result is not None or self.running
        if had_result:
            self._abandon_run()
            self.clear_result()
        if self.auto_analyse and self.slide is not None and model_path:
            self.start_analysis()
        elif had_result:
            self.status("The model changed: the previous result was cleared (Analyse to run the new model).")

    def set_overlay(self, **changes: Any) -> None:
        new = replace(self.overlay, **changes)
        if new == self.overlay:
            return
        old, self.overlay = self.overlay, new
        self.events.overlay(new)
        if new.show_out_of_domain != old.show_out_of_domain:
            self._update_domain()
        if (new.show_regions, new.min_confidence) != (old.show_regions, old.min_confidence):
            self.update_regions()

    def show_calls_anyway(self, on: bool) -> None:
        """Draw and count out-of-domain tiles like the others (the banner's toggle)."""
        self.set_overlay(show_out_of_domain=bool(on))

    # ------------------------------------------------------------------------------ the model's domain

    def domain_notice(self) -> DomainNotice:
        return domain_notice(self.shown_result(), self.overlay.show_out_of_domain)

    def _update_domain(self) -> None:
        notice = self.domain_notice()
        if notice != self.domain:
            self.domain = notice
            self.events.domain(notice)

    # ------------------------------------------------------------------------------ explaining a tile

    def set_explain(self, on: bool) -> None:
        """Show the class activation map of the selected tile (computed off the UI thread)."""
        on = bool(on)
        if on == self.explain_on:
            return
        self.explain_on = on
        if not on:
            self._forget_explanation()
            return
        self._request_explanation(force=True)

    def set_explain_class(self, class_index: int | None) -> None:
        """The class whose map is shown (None: the predicted one). Every class's map came with the tile."""
        result = self.shown_result()
        if class_index is not None and result is not None and not 0 <= class_index < len(result.model.class_names):
            raise ModelError(f"Class index {class_index} is out of range.")
        self.explain_class = class_index
        ex = self.explain.explanation
        if self.explain.state == "ready" and ex is not None:
            self._set_explain_state(replace(self.explain, explanation=self._shown_class(ex)))

    def _shown_class(self, ex: TileExplanation) -> TileExplanation:
        k = ex.pred_class if self.explain_class is None else self.explain_class
        return ex if ex.explained_class == k else replace(ex, explained_class=k)

    def _set_explain_state(self, state: ExplainState) -> None:
        self.explain = state
        self.events.explanation(state)

    def _forget_explanation(self) -> None:
        """The tile, the result or the slide went away: a job still running is ignored."""
        self._explain_id = next(self._ids)
        self._explain_job, self._explain_again, self._explain_key = None, False, None
        if self.explain.state != ("idle" if self.explain_on else "off"):
            self._set_explain_state(ExplainState("idle" if self.explain_on else "off"))

    def _request_explanation(self, force: bool = False) -> None:
        """Explain the selected tile when maps are on: one job at a time, the latest selection next."""
        if not self.explain_on:
            return
        result, index = self.shown_result(), self.selection
        if result is None or self.slide is None or not 0 <= index < result.n_tiles:
            self._forget_explanation()
            return
        if not result.done[index]:
            self._set_explain_state(ExplainState("failed", message="This tile has not been classified.", index=index))
            return
        key = (id(result.grid), index)
        if not force and key == self._explain_key and self.explain.state in ("busy", "ready"):
            return
        self._set_explain_state(ExplainState("busy", index=index))
        if self._explain_job is not None:
            self._explain_again, self._explain_key = True, None
            return
        self._explain_key = key
        self._explain_id = job_id = next(self._ids)
        grid, path, mpp = result.grid, self.slide.path, self.mpp_um()
        classifier, model_path = self.explain_classifier, self.result_model_path or self.model_path
        sha = result.model.sha256
        if classifier is not None and classifier.spec.onnx_sha256 != sha and copy_with_sha(classifier.spec, sha):
            classifier = None  # another copy of the same model (--precision) made the result: load that one
        stain_method, stain_key, stain = result.params.stain_normalize, self._stain_key(result), self._explain_stain

        def on_item(item: ExplainerReady | ExplainStain | TileExplanation) -> None:
            if isinstance(item, ExplainStain):
                self._explain_stain = item
                self.events.stain(item.transform)
                return
            if isinstance(item, ExplainerReady):
                # kept for the next tile unless the model changed meanwhile
                if self.explain_classifier is None and item.model_path in (self.model_path, self.result_model_path):
                    self.explain_classifier, self._explain_loaded_for = item.classifier, item.model_path
                return
            if job_id == self._explain_id and not self._explain_again:
                self._set_explain_state(ExplainState("ready", self._shown_class(item), index=index))

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._explain_id and not self._explain_again:
                self._explain_key = None  # a later selection of this tile tries again
                self._set_explain_state(ExplainState("failed", message=exc.message, index=index))

        def on_done() -> None:
            if job_id != self._explain_id:
                return
            self._explain_job = None
            if self._explain_again:
                self._explain_again = False
                self._request_explanation()

        self._explain_job = _Pending()
        handle = self.runner(Job("explain", lambda cancel: explain_task(path, mpp, grid, index, classifier, model_path,
                                                                        sha, stain_method, stain, stain_key),
                                 on_item, on_failed, on_done))
        if job_id == self._explain_id and self._explain_job is not None:
            self._explain_job = handle

    # ------------------------------------------------------------------------------ the run's stain transform

    def _stain_key(self, result: AnalysisResult) -> tuple:
        """One fit per result's tiles (a streaming result keeps its grid) and slide."""
        return (id(result.grid), self.slide.path if self.slide is not None else "", result.params.stain_normalize)

    def patch_stain(self) -> TileStainTransform | None:
        """The stain transform the shown result's tiles went through before the model, when it is fitted
        (None: the run normalised nothing, or the fit is pending: ``request_stain``, then ``events.stain``)."""
        result = self.shown_result()
        if result is None or result.params.stain_normalize == "none":
            return None
        fitted = self._explain_stain
        return fitted.transform if fitted is not None and fitted.key == self._stain_key(result) else None

    @property
    def stain_pending(self) -> bool:
        """The shown result normalised stains and its transform is not fitted yet."""
        result = self.shown_result()
        return result is not None and result.params.stain_normalize != "none" and self.patch_stain() is None

    def request_stain(self) -> None:
        """Fit the slide's stain transform for the shown result, as analyze fits it (a job; ``events.stain``),
        so the inspector shows the patch the model was fed, not the one scanned."""
        result = self.shown_result()
        spec = self.spec
        if not self.stain_pending or self._stain_job is not None or result is None or self.slide is None:
            return
        if spec is None or spec.onnx_sha256 != result.model.sha256:
            return
        key, path, mpp, grid = self._stain_key(result), self.slide.path, self.mpp_um(), result.grid
        method = result.params.stain_normalize
        self._stain_id = job_id = next(self._ids)

        def on_item(transform: TileStainTransform) -> None:
            if job_id == self._stain_id:
                self._explain_stain = ExplainStain(key, transform)
                self.events.stain(transform)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._stain_id:
                self.status(f"The stain transform could not be fitted: {exc.message}")

        def on_done() -> None:
            if job_id == self._stain_id:
                self._stain_job = None

        self._stain_job = _Pending()
        handle = self.runner(Job("stain", lambda cancel: stain_task(path, mpp, grid, spec, method), on_item, on_failed,
                                 on_done))
        if job_id == self._stain_id and self._stain_job is not None:
            self._stain_job = handle

    def status(self, message: str) -> None:
        self.events.status(message)

    def error(self, exc: CellviewError, title: str) -> None:
        self.events.error((title, exc))

    # ------------------------------------------------------------------------------ opening

    def open(self, path: str | os.PathLike[str], mpp_um: float | None = None, analyse: bool | None = None,
             source: AnalysisSource | None = None, spec: ModelSpec | None = None,
             show: AnalysisResult | None = None, params: AnalysisParams | None = None) -> None:
        """Open off the UI thread; the current slide stays until the new one opened (a bad file loses nothing).

        Then: ``show`` a known result, or analyse (``analyse``, default ``auto_analyse``) with
        ``source``/``spec`` (default: the selected model file).
        """
        if self._open_job is not None:
            self._open_job.cancel()
        path = str(path)
        self._open_id = job_id = next(self._ids)
        self.opening = path
        self._after_open = {"analyse": self.auto_analyse if analyse is None else analyse, "source": source,
                            "spec": spec, "show": show, "params": params}
        self.events.opening(path)

        def on_item(item: Opened | SharperThumbnail) -> None:
            if job_id == self._open_id:
                self._on_opened(item)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._open_id:
                self.opening = None
                self.events.opening(None)
                self.error(exc, "Cannot open slide")
                self.events.open_failed((path, exc))

        def on_done() -> None:
            if job_id == self._open_id:
                self._open_job = None
                if self.opening is not None:  # finished without a slide (cancelled)
                    self.opening = None
                    self.events.opening(None)

        self._open_job = self.runner(Job("open", lambda cancel: open_task(path, mpp_um), on_item, on_failed, on_done))

    def _on_opened(self, item: Opened | SharperThumbnail) -> None:
        if isinstance(item, SharperThumbnail):
            if self.slide is not None and self.slide.path == item.path:
                self.slide = replace(self.slide, thumbnail=item.thumbnail, base=item.base)
                self.events.slide_image(self.slide)
            return
        self.close_slide(keep_opening=True)
        self.opening = None
        self.events.opening(None)
        info = item.info
        if info.mpp is None:
            recorded = self.store.recorded_mpp(info.fingerprint)
            if recorded is not None:
                self.mpp_choice = recorded
            elif self.defaults.mpp_um:
                self.mpp_choice = self.defaults.mpp_um
            elif self.defaults.whole_image:
                self.mpp_choice = WHOLE_IMAGE
            if isinstance(self.mpp_choice, float):
                item = replace(item, info=replace(info, mpp=Mpp(self.mpp_choice, self.mpp_choice, "user")))
        self.slide = item
        self.store.add_recent_file(item.path)
        self.events.slide(item)
        after, self._after_open = self._after_open, {}
        if after.get("show") is not None:
            self.set_result(after["show"])
        elif after.get("analyse"):
            self.start_analysis(source=after.get("source"), spec=after.get("spec"), params=after.get("params"))

    def _abandon_run(self) -> None:
        """Cancel the run and ignore whatever it still delivers (its thread stops at the next batch)."""
        if self._run_job is not None:
            self._run_job.cancel()
        self._run_id = next(self._ids)
        self._run_job = None
        if self._run is not None:
            self._run = None
            self.events.running(False)

    def close_slide(self, keep_opening: bool = False) -> None:
        """Stop everything that belongs to the current slide; late items of its jobs are ignored."""
        self._abandon_run()
        if not keep_opening and self._open_job is not None:  # a slide still opening must not appear after this
            self._open_job.cancel()
            self._open_id = next(self._ids)
            self._open_job = None
            self.opening = None
        for handle in (self._tissue_job, self._regions_job):
            if handle is not None:
                handle.cancel()
        self._tissue_id = self._regions_id = next(self._ids)
        self._tissue_job = self._regions_job = None
        self._regions_key, self._regions_again = None, False
        had = self.slide is not None
        self.slide, self.mpp_choice, self.tissue = None, None, None
        self.result = self.result_model_path = None
        self.progress = Progress("idle")
        if had:
            self.events.slide(None)
            self.events.result(None)
            self.events.progress(self.progress)
        self._reset_view_state(emit=had)

    def _reset_view_state(self, emit: bool = True) -> None:
        """The view state that belongs to one slide, in one place: selection, hover, regions, explanation,
        and the display settings of ``overlay.PER_SLIDE`` (the domain override and the filters). Called
        whenever a slide closes, so a newly opened slide starts safe."""
        self.regions, self._shown_regions_key = [], None
        self.selection = -1
        self.hover = ""
        self._stain_id, self._stain_job = next(self._ids), None
        self._forget_explanation()
        overlay = self.overlay.for_new_slide()
        changed, self.overlay = overlay != self.overlay, overlay
        if emit:
            self.events.regions([])
            self.events.selection(-1)
            self.events.hover("")
        if changed:
            self.events.overlay(overlay)
        self._update_domain()

    def recent_slides(self) -> list[RecentSlide]:
        """Recently opened slides that still exist, named as a person names them (a DICOM slide by its folder)."""
        return [RecentSlide(p, slide_display_name(Path(p))) for p in self.store.recent_files()]

    def open_dialog_dir(self) -> str:
        """Where File → Open starts: the last folder opened from, else the newest recent slide's, else home.

        Never empty: Qt's file dialog would start in whatever folder any dialog last visited
        (often the last export folder).
        """
        last = str(self.store.get("last_open_dir", "") or "")
        if last and Path(last).is_dir():
            return last
        for recent in self.store.recent_files():
            folder = Path(recent).parent
            if folder.is_dir():
                return str(folder)
        return str(Path.home())

    def remember_open_dir(self, path: str | os.PathLike[str]) -> None:
        self.store.put("last_open_dir", str(Path(path).parent))

    # ------------------------------------------------------------------------------ scale

    def resolve_scale(self) -> bool:
        """The scale is known, one-image mode chosen, or asked for now; False: the run must not start."""
        if self.slide is None:
            return False
        if self.slide.info.mpp is not None or self.mpp_choice == WHOLE_IMAGE or self.ask_scale is None:
            return True
        choice = self.ask_scale(self.slide)
        if choice is None:
            self.status("Analysis needs the pixel size; nothing was run.")
            return False
        self.set_scale(choice)
        return True

    def set_scale(self, choice: float | str) -> None:
        """A user-entered µm per pixel (remembered for this slide) or ``WHOLE_IMAGE``."""
        if self.slide is None:
            return
        self.mpp_choice = choice
        if isinstance(choice, float):
            self.store.record_mpp(self.slide.info.fingerprint, choice)
            self.slide = replace(self.slide, info=replace(self.slide.info, mpp=Mpp(choice, choice, "user")))
        self.events.slide_image(self.slide)

    # ------------------------------------------------------------------------------ analysis

    def start_analysis(self, source: AnalysisSource | None = None, spec: ModelSpec | None = None,
                       params: AnalysisParams | None = None) -> bool:
        """Analyse the open slide (one run at a time). ``source``/``spec``: another runner of the pipeline
        (the kiosk's preloaded classifier); ``params``: other run parameters. False when nothing started."""
        if self.slide is None:
            self.status("Open a slide first.")
            return False
        if self.running:
            return False
        source = source or self.analysis_source
        if source is model_file_analysis and not self.model_path:
            self.error(ModelError("No model is selected.", f"Put a model into {user_models_dir() / '<name>'} or use "
                                                           "Open… next to the model list."), "No model")
            return False
        if not self.resolve_scale():
            return False
        params = params or self.current_params()
        resume = self.result if self._can_resume(params) else None
        request = AnalysisRequest(self.slide.path, params, self.model_path, self.use_cache, resume)
        self.clear_result(emit=True)
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
                self._on_run_item(item)

        def on_failed(exc: CellviewError) -> None:
            if mine():
                self.error(exc, "Analysis failed")

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
        result = self.result
        return (result is not None and result.status == "cancelled" and self.slide is not None
                and result.slide.path == self.slide.path and self.result_model_path == self.model_path
                and result.params.cache_dict() == params.cache_dict())

    def cancel_analysis(self) -> None:
        """Stop after the current batch; finished tiles are kept (the pipeline's Finished says so)."""
        if self._run_job is not None and self._run is not None:
            self._run_job.cancel()
            self.status("Cancelling: finished tiles are kept.")

    def _on_run_item(self, item: object) -> None:
        run = self._run
        if not isinstance(item, (ModelReady, Started, BatchDone, Finished)):
            self.events.job_item(item)  # e.g. the kiosk's CaseResult, which follows Finished
            return
        if run is None:
            return
        if isinstance(item, ModelReady):
            run.spec = self.spec = item.spec
            self.model_ready = item
            self.set_model_options(ModelOptions.from_spec(item.spec))  # the loaded model has the last word
            self.events.model_ready(item)
        elif isinstance(item, Started):
            n = item.total
            if run.spec is None:
                raise AnalysisSourceError("An analysis source must yield ModelReady (or be given the spec) "
                                          "before the pipeline starts.")
            run.started = item
            run.probs = np.full((n, run.spec.num_classes), np.nan, np.float32)
            run.state = np.zeros(n, np.uint8)
            run.nuclei = (TileNuclei.empty(n, "px2" if self.mpp_um() is None else "um2")
                          if run.request.params.nuclei else None)
            run.domain_score = np.full(n, np.nan, np.float32) if run.spec.domain is not None else None
            run.partial = None
            self.progress = Progress("running", 0, n, from_cache=item.from_cache)
            self.events.progress(self.progress)
            if item.tissue is not None:
                self.tissue = item.tissue
                self.events.tissue(item.tissue)
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
            self._update_domain()
            self.events.tiles(item.indices)
        elif isinstance(item, Finished):
            self._finish(item.result)

    def _finish(self, result: AnalysisResult) -> None:
        if result.slide.mpp is None and self.slide is not None and self.slide.info.mpp is not None:
            result = replace(result, slide=replace(result.slide, mpp=self.slide.info.mpp))
        run = self._run
        self._run = None  # the job may still deliver items of its own (and then closes its slide); a re-run may start
        self.result_model_path = run.request.model_path if run else self.model_path
        self.result = result
        phase = {"complete": "done", "cancelled": "cancelled"}.get(result.status, result.status)
        self.progress = Progress(phase, result.n_done + result.n_failed, result.n_tiles,
                                 float(result.timings.get("tiles_per_s", 0.0)), None,
                                 float(result.timings.get("total_s", 0.0)), result.from_cache)
        self.events.running(False)
        self.events.progress(self.progress)
        self.events.result(result)
        self._update_domain()
        self.update_regions()
        if 0 <= self.selection < result.n_tiles:
            self.events.selection(self.selection)
            self._request_explanation()

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
        self._update_domain()
        self.update_regions()

    def set_result(self, result: AnalysisResult, model_path: str | None = None) -> None:
        """Show a result made elsewhere (the kiosk's earlier case, a script)."""
        self.result = result
        self.result_model_path = model_path or self.model_path
        self.progress = Progress("done", result.n_done + result.n_failed, result.n_tiles, from_cache=True)
        self.events.progress(self.progress)
        self.events.result(result)
        self._update_domain()
        self.update_regions()

    def clear_result(self, emit: bool = True) -> None:
        """Forget the result (and what hangs on it: selection, regions); the slide stays."""
        had = self.result is not None or self._run is not None or self.selection >= 0 or bool(self.regions)
        self.result = self.result_model_path = None
        self.selection = -1
        self.regions, self._regions_key, self._shown_regions_key = [], None, None
        self._regions_id = next(self._ids)
        self._regions_job, self._regions_again = None, False
        self.progress = Progress("idle")
        self._forget_explanation()
        if emit and had:
            self.events.result(None)
            self.events.selection(-1)
            self.events.regions([])
            self.events.progress(self.progress)
        if emit:
            self._update_domain()

    # ------------------------------------------------------------------------------ selection

    def select(self, index: int) -> None:
        result = self.shown_result()
        if result is None or not 0 <= index < result.n_tiles:
            return
        self.selection = int(index)
        self.events.selection(self.selection)
        self._request_explanation()

    def select_at(self, l0_x: float, l0_y: float) -> int:
        result = self.shown_result()
        index = result.grid.tile_at(l0_x, l0_y) if result is not None else -1
        if index >= 0:
            self.select(index)
        return index

    def step(self, d_row: int, d_col: int) -> int:
        """Move to the nearest tile in that direction along the row or column; the new index (or -1)."""
        result = self.shown_result()
        if result is None:
            return -1
        g = result.grid
        if self.selection < 0:
            if g.n_tiles:
                self.select(0)
                return 0
            return -1
        ig = g.index_grid()
        r, c = int(g.grid_row[self.selection]), int(g.grid_col[self.selection])
        while True:
            r, c = r + d_row, c + d_col
            if not (0 <= r < g.n_rows and 0 <= c < g.n_cols):
                return -1
            if ig[r, c] >= 0:
                self.select(int(ig[r, c]))
                return int(ig[r, c])

    def hover_at(self, l0_x: float, l0_y: float) -> str:
        """The pointer is at this level-0 point: what its tile is ("" over none), also as ``events.hover``."""
        result = self.shown_result()
        index = result.grid.tile_at(l0_x, l0_y) if result is not None else -1
        text = ""
        if result is not None and index >= 0 and result.done[index]:
            text = f"{result.model.class_names[int(result.pred_class[index])]} {float(result.confidence[index]):.0%}"
            if not result.in_domain[index]:  # a done tile: out of domain (never without statistics)
                text += " · out of domain"
        if text != self.hover:
            self.hover = text
            self.events.hover(text)
        return text

    def regions_note(self) -> str:
        """What the region outlines show, or why there are none ("" without a result or outlines off)."""
        result = self.shown_result()
        if result is None or not self.overlay.show_regions or result.grid.whole_image:
            return ""
        return regions_note(result, self.regions, self.overlay.min_confidence)

    # ------------------------------------------------------------------------------ regions, tissue

    def update_regions(self) -> None:
        """Malignant regions of the shown result at the overlay's confidence, when they are shown.

        Computed as a job, one at a time (a request during one follows it); skipped when neither
        the result, its progress nor the threshold changed.
        """
        result = self.shown_result() if self.overlay.show_regions else None
        if result is None or result.grid.whole_image:
            self._regions_key, self._regions_job, self._regions_again = None, None, False
            self._regions_id = next(self._ids)
            self.regions, self._shown_regions_key = [], None
            self.events.regions([])
            return
        min_conf = self.overlay.min_confidence
        key = (id(result), result.n_done, min_conf)
        if self._regions_key == key:
            return
        if self._regions_job is not None:
            self._regions_again = True
            return
        self._regions_key = key
        snapshot = replace(result, probs=result.probs.copy(), state=result.state.copy())
        self._regions_id = job_id = next(self._ids)

        def on_item(regions: list[Region]) -> None:
            if job_id == self._regions_id:
                self.regions, self._shown_regions_key = regions, key
                self.events.regions(regions)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._regions_id:
                self.status(f"Regions failed: {exc.message}")

        def on_done() -> None:
            if job_id != self._regions_id:
                return
            self._regions_job = None
            if self._regions_again:
                self._regions_again = False
                self.update_regions()

        self._regions_job = _Pending()
        handle = self.runner(Job("regions", lambda cancel: regions_task(snapshot, min_conf), on_item, on_failed,
                                 on_done))
        if job_id == self._regions_id and self._regions_job is not None:
            self._regions_job = handle

    @property
    def regions_busy(self) -> bool:
        return self._regions_job is not None

    def preview_tissue(self) -> None:
        """Compute the tissue mask with the current settings (``events.tissue`` when it is ready)."""
        if self.slide is None:
            return
        if self._tissue_job is not None:
            self._tissue_job.cancel()
        params, mpp, path = self.current_params().tissue, self.mpp_um(), self.slide.path
        self._tissue_id = job_id = next(self._ids)

        def on_item(preview: TissuePreview) -> None:
            if job_id == self._tissue_id:
                self.tissue = preview.mask
                self.events.tissue(preview.mask)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._tissue_id:
                self.error(exc, "Tissue detection failed")

        def on_done() -> None:
            if job_id == self._tissue_id:
                self._tissue_job = None

        self._tissue_job = self.runner(Job("tissue", lambda cancel: tissue_task(path, mpp, params), on_item,
                                           on_failed, on_done))

    # ------------------------------------------------------------------------------ export

    @property
    def regions_confidence(self) -> float | None:
        """The confidence threshold the shown regions were built at (None when none are shown)."""
        return None if self._shown_regions_key is None else self._shown_regions_key[2]

    def _regions_for_export(self, result: AnalysisResult) -> tuple[list[Region], float]:
        """The regions on screen when they are current, else computed now at the overlay's threshold."""
        conf = self.overlay.min_confidence
        if self.overlay.show_regions and self._shown_regions_key == (id(result), result.n_done, conf):
            return self.regions, conf
        return malignant_regions(result, conf), conf

    def suggest_export_path(self, kind: str) -> tuple[Path, str]:
        """Where File → Export proposes to save: the last export folder, else the slide's, falling back to a
        writable folder (``export.default_export_dir``) when that cannot be written; plus a note saying so."""
        if self.slide is None:
            raise ExportError("Nothing to export: no slide is open.")
        name = Path(self.slide.path).name if kind == "folder" else self.slide.info.name + EXPORT_KINDS[kind]
        last = str(self.store.get("last_export_dir", "") or "")
        preferred = Path(last) if last and Path(last).is_dir() else Path(self.slide.path).parent
        folder, note = writable_dir(preferred)
        return (folder if kind == "folder" else folder / name), note

    def export_file(self, kind: str, path: str | os.PathLike[str], source: str = "the viewer") -> Path:
        """Write one export of the shown result as the screen shows it (``csv``, ``geojson``, ``png``, ``json``).

        The same renderer as the CLI and the kiosk (``export.render``): the GeoJSON carries the
        malignant-region annotations, the PNG the overlay style, filters and region outlines on screen.
        """
        result = self._export_result()
        regions, conf = self._regions_for_export(result)
        thumb = self.slide.thumbnail if self.slide is not None else None
        data = render(kind, result, thumb, regions, conf, self.overlay, source,
                      extra_meta={"export_options": self._export_options()}, png_regions=self.overlay.show_regions)
        return self.save_export(path, data)

    def save_export(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """Write an export atomically and remember its folder for the next one (also the GUI's view PNG)."""
        from cellview.base.files import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, data)
        self.store.put("last_export_dir", str(path.parent))
        return path

    def export_all(self, folder: str | os.PathLike[str], stem: str | None = None,
                   source: str = "the viewer") -> dict[str, Path]:
        """Every format into ``folder`` through the CLI's own ``export_slide_result``, with the screen's look."""
        result = self._export_result()
        assert self.slide is not None
        regions, conf = self._regions_for_export(result)
        size = self.export_settings.png_size_px
        thumb = self.slide.thumbnail if max(self.slide.thumbnail.shape[:2]) == size else None  # else read anew
        paths, _ = export_slide_result(
            result, Path(folder), stem or slide_stem(Path(self.slide.path)), self.export_settings.formats, size,
            conf, overlay=self.overlay, thumbnail=thumb, source=source, regions=regions,
            png_regions=self.overlay.show_regions)
        self.store.put("last_export_dir", str(folder))
        return paths

    def _export_options(self) -> dict[str, Any]:
        from cellview.outputs.export import export_options

        size = max(self.slide.thumbnail.shape[:2]) if self.slide is not None else THUMBNAIL_PX
        return export_options(["csv", "geojson", "png", "json"], size, self.overlay.min_confidence, self.overlay)

    def _export_result(self) -> AnalysisResult:
        if self.result is None or self.slide is None:
            raise ExportError("Nothing to export: analyse the slide first.")
        if self.running:
            raise ExportError("Wait until the analysis has finished (or cancel it) to export.")
        return self.result


class _Pending:
    """Stands for a job's handle while the runner starts it (a synchronous runner may finish it first)."""

    def cancel(self) -> None:
        pass


class AnalysisSourceError(CellviewError):
    """An analysis source broke its contract (a programming error, reported like any other)."""
