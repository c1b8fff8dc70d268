"""Jobs: one uploaded slide analysed by one model, held for the person who uploaded it and whoever has its link.

A job's id is 128 random bits (``secrets``): the link is the capability, and a session lists only its own
jobs. Jobs queue for one inference worker thread (the engine's ``analyze`` generator, as the CLI and the
desktop run it) or for a Dask cluster (``cluster``); results are cached by slide content and model in the
CLI's result cache. A job's folder holds the stored upload and its outputs; it goes when the job fails, when
its owner removes it, when it expires, and with the server.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, Started
from cellview.analysis.results import AnalysisParams, AnalysisResult, ModelInfo, TileState
from cellview.base.errors import CellviewError, MppError
from cellview.serve.uploads import WEB_MPP_ADVICE, shown_error

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "exporting")
ENDED = ("done", "cancelled", "failed")
OUT_DIR = "out"
OUTPUT_STEM = "result"
PNG_SIZE_PX = 2048  # as `cellview analyze` writes it
REGION_CONFIDENCE = 0.5


def new_id() -> str:
    """128 random bits, URL-safe: a job's link cannot be guessed from another's."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Progress:
    done: int = 0
    total: int = 0
    tiles_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    from_cache: bool = False


@dataclass
class Job:
    """One slide and its analysis; fields change under ``lock`` and bump ``version`` (what the page polls)."""

    id: str
    owner: str
    name: str  # the safe display name (uploads.safe_name), never a path
    folder: Path
    model: str
    params: AnalysisParams
    slide_path: Path | None = None
    state: str = "queued"
    error: str = ""
    details: str = ""
    created_unix: float = field(default_factory=time.time)
    ended_unix: float | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    progress: Progress = field(default_factory=Progress)
    provider: str = ""
    fallback: str = ""
    result: AnalysisResult | None = None  # the finished (complete or cancelled) result
    outputs: dict[str, Path] = field(default_factory=dict)
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # the run as it streams in (the pipeline's events)
    started: Started | None = None
    model_info: ModelInfo | None = None
    slide_info: Any = None
    probs: np.ndarray | None = None
    tile_state: np.ndarray | None = None
    domain_score: np.ndarray | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def touch(self) -> None:
        self.version += 1

    def set_state(self, state: str, error: str = "", details: str = "") -> None:
        with self.lock:
            self.state, self.error, self.details = state, error, details
            if state in ENDED:
                self.ended_unix = time.time()
            self.touch()

    def apply(self, event: Any, spec: Any) -> None:
        """Take in one pipeline event (``Started``, ``BatchDone``, ``Finished``)."""
        with self.lock:
            if isinstance(event, Started):
                n = event.total
                self.started, self.provider = event, event.provider
                self.model_info = ModelInfo.from_spec(spec)
                self.probs = np.full((n, spec.num_classes), np.nan, np.float32)
                self.tile_state = np.zeros(n, np.uint8)
                self.domain_score = np.full(n, np.nan, np.float32) if spec.domain is not None else None
                self.progress = Progress(0, n, from_cache=event.from_cache)
            elif isinstance(event, BatchDone) and self.probs is not None and self.tile_state is not None:
                self.probs[event.indices] = event.probs
                self.tile_state[event.indices] = np.where(event.failed, TileState.FAILED, TileState.DONE)
                if event.domain_score is not None and self.domain_score is not None:
                    self.domain_score[event.indices] = event.domain_score
                self.progress = Progress(event.done, event.total, event.tiles_per_s, event.eta_s, event.elapsed_s)
            elif isinstance(event, Finished):
                r = event.result
                self.result, self.provider = r, r.provider
                self.progress = Progress(r.n_done + r.n_failed, r.n_tiles, float(r.timings.get("tiles_per_s", 0.0)),
                                         None, float(r.timings.get("total_s", 0.0)), r.from_cache)
            self.touch()

    def shown_result(self) -> AnalysisResult | None:
        """The finished result, or the streaming one as it stands (a copy: the worker goes on writing)."""
        with self.lock:
            if self.result is not None:
                return self.result
            if self.started is None or self.probs is None or self.tile_state is None or self.slide_info is None:
                return None
            assert self.model_info is not None
            return AnalysisResult(
                slide=self.slide_info, model=self.model_info, params=self.params, grid=self.started.grid,
                probs=self.probs.copy(), state=self.tile_state.copy(), provider=self.provider, status="running",
                tissue=self.started.tissue,
                domain_score=None if self.domain_score is None else self.domain_score.copy())

    def remove_files(self) -> None:
        """The job's folder goes: the stored upload and the files made from it."""
        shutil.rmtree(self.folder, ignore_errors=True)


class Runner(Protocol):
    def submit(self, job: Job) -> None: ...
    def close(self) -> None: ...


class JobStore:
    """Every job of this server, by id; ``root`` is the server's own folder (removed by ``close``)."""

    def __init__(self, root: Path, keep_s: float, max_active: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keep_s = keep_s
        self.max_active = max_active
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.on_remove: list[Any] = []  # callbacks(job) when a job goes (slide handles close)

    def reserve(self, owner: str, model: str, params: AnalysisParams, name: str = "upload") -> Job:
        """A new job id and folder for an upload about to be received (not queued yet, not listed)."""
        job_id = new_id()
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return Job(job_id, owner, name, folder, model, params, state="receiving")

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def busy(self) -> bool:
        with self._lock:
            return sum(j.state in ACTIVE for j in self._jobs.values()) >= self.max_active

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def owned_by(self, owner: str) -> list[Job]:
        with self._lock:
            return sorted((j for j in self._jobs.values() if owner and j.owner == owner),
                          key=lambda j: j.created_unix, reverse=True)

    def queue_position(self, job: Job) -> int:
        """1 for the next job to run, 0 when not queued."""
        if job.state != "queued":
            return 0
        with self._lock:
            queued = sorted((j for j in self._jobs.values() if j.state == "queued"), key=lambda j: j.created_unix)
        return next((i for i, j in enumerate(queued, 1) if j is job), 0)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def remove(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.cancel.cancel()
        for callback in self.on_remove:
            callback(job)
        if job.state not in ACTIVE:
            job.remove_files()
        else:  # the worker removes the folder when it lets go of the job
            job.set_state("cancelled", "Removed by its owner.")
        return True

    def expire(self, now: float | None = None) -> int:
        """Remove jobs that ended more than ``keep_s`` ago; the count removed."""
        now = time.time() if now is None else now
        old = [j.id for j in self.all() if j.ended_unix is not None and now - j.ended_unix > self.keep_s]
        return sum(self.remove(i) for i in old)

    def close(self) -> None:
        for job in self.all():
            job.cancel.cancel()
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- running a job


def failure_text(exc: BaseException, job: Job) -> tuple[str, str]:
    """What a failed job says: the core's sentence (naming the upload by its display name), or an internal error."""
    if isinstance(exc, MppError):
        exc = exc.advise(WEB_MPP_ADVICE)
    if isinstance(exc, CellviewError):
        if job.slide_path is not None:
            return shown_error(exc, job.slide_path, job.name)
        return exc.message, exc.details
    return f"Internal error ({type(exc).__name__}); please report it.", ""


def export_job(job: Job, result: AnalysisResult, extra_meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """The files `cellview analyze` writes (CSV, GeoJSON, annotated PNG, metadata JSON), into the job's folder.

    The files name the slide by its display name: the server's paths stay on the server.
    """
    from cellview.outputs.export import FORMATS, export_slide_result
    from cellview.slides.opening import open_slide
    from cellview.slides.slide import slide_stem

    assert job.slide_path is not None
    with open_slide(job.slide_path, mpp_um=result.params.mpp_um) as slide:
        thumb = slide.thumbnail(PNG_SIZE_PX)
    shown = replace(result, slide=replace(result.slide, path=job.name, name=slide_stem(Path(job.name))))
    paths, _ = export_slide_result(shown, job.folder / OUT_DIR, OUTPUT_STEM, FORMATS, PNG_SIZE_PX, REGION_CONFIDENCE,
                                   extra_meta=extra_meta, thumbnail=thumb)
    return paths


def finish_job(job: Job, result: AnalysisResult, extra_meta: dict[str, Any] | None = None,
               store: JobStore | None = None) -> None:
    """Export a finished (complete or cancelled) result and end the job; a failed export fails the job.

    With ``store``: a job removed meanwhile writes nothing, and one removed while it exported loses its folder.
    """
    if store is not None and store.get(job.id) is None:
        job.remove_files()
        return
    job.set_state("exporting")
    try:
        outputs = export_job(job, result, extra_meta)
    except Exception as exc:  # noqa: BLE001 - the job fails with a message; the server goes on
        if not isinstance(exc, CellviewError):
            log.error("Export failed for job %s:\n%s", job.id[:6], traceback.format_exc())
        message, details = failure_text(exc, job)
        end_failed(job, message, details)
        return
    with job.lock:
        job.outputs = outputs
    job.set_state("done" if result.status == "complete" else "cancelled")
    if store is not None and store.get(job.id) is None:
        job.remove_files()


class Exporter:
    """Threads that write the finished jobs' files, so the inference worker goes on to the next slide.

    Writing (the annotated PNG most) costs seconds of CPU per slide; on a machine with cores to spare several
    slides are written at once (``threads``: a quarter of the cores, 1 to 4).
    """

    def __init__(self, store: JobStore, threads: int | None = None) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[Job, AnalysisResult, dict[str, Any] | None] | None] = queue.Queue()
        n = threads or max(1, min(4, (os.cpu_count() or 1) // 4))
        self._threads = [threading.Thread(target=self._loop, name=f"cellview-export-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job, result: AnalysisResult, extra_meta: dict[str, Any] | None = None) -> None:
        job.set_state("exporting")
        self._queue.put((job, result, extra_meta))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=60)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, result, extra = item
            try:
                finish_job(job, result, extra, self.store)
            except Exception:  # noqa: BLE001 - one job's bug must not stop the others
                log.error("Export of job %s failed:\n%s", job.id[:6], traceback.format_exc())
                end_failed(job, "Internal error; please report it.")


def end_failed(job: Job, message: str, details: str = "") -> None:
    """A failed job keeps its message; its stored upload is removed at once."""
    job.set_state("failed", message, details)
    job.remove_files()


@dataclass(frozen=True)
class RunSettings:
    """How the worker runs models: the device, batch size and precision given to `cellview serve`."""

    device: str = "auto"
    batch_size: int = 32
    precision: str = "auto"
    use_cache: bool = True


class Classifiers:
    """The worker's loaded models, one per name (loaded on first use, kept: switching costs seconds)."""

    def __init__(self, models: dict[str, Path], settings: RunSettings) -> None:
        self.models = models
        self.settings = settings
        self._loaded: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        from cellview.analysis.classifier import OnnxClassifier
        from cellview.analysis.model_spec import ModelSpec

        clf = self._loaded.get(name)
        if clf is None:
            spec = ModelSpec.load(self.models[name])
            clf = OnnxClassifier(spec, device=self.settings.device, max_batch=self.settings.batch_size,
                                 precision=self.settings.precision)
            self._loaded[name] = clf
        return clf


class InferenceWorker:
    """One thread that runs the queued jobs one after another, in this process."""

    def __init__(self, store: JobStore, models: dict[str, Path], settings: RunSettings) -> None:
        self.store = store
        self.settings = settings
        self.classifiers = Classifiers(models, settings)
        self.exporter = Exporter(store)
        self.description = "in this process, one job at a time"
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cellview-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.exporter.close()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self.run(job)
            except Exception:  # noqa: BLE001 - one job's bug must not stop the worker
                log.error("Job %s failed:\n%s", job.id[:6], traceback.format_exc())
                end_failed(job, "Internal error; please report it.")

    def run(self, job: Job) -> None:
        from cellview.analysis.cache import ResultCache
        from cellview.analysis.pipeline import analyze

        if job.cancel.cancelled:
            job.set_state("cancelled", "Cancelled before it started.")
            job.remove_files()
            return
        job.set_state("running")
        result = None
        try:
            classifier = self.classifiers.get(job.model)
            with job.lock:
                job.fallback = classifier.fallback_message or ""
            cache = ResultCache() if self.settings.use_cache else None
            for event in analyze(job.slide_path, classifier, job.params, job.cancel, cache):
                job.apply(event, classifier.spec)
                if isinstance(event, Finished):
                    result = event.result
        except Exception as exc:  # noqa: BLE001 - bad input or a bug: the job says which, the worker goes on
            if not isinstance(exc, CellviewError):
                log.error("Job %s failed:\n%s", job.id[:6], traceback.format_exc())
            end_failed(job, *failure_text(exc, job))
            return
        if result is None:
            end_failed(job, "The analysis ended without a result.")
            return
        self.exporter.submit(job, result, {"fallback": job.fallback} if job.fallback else None)
