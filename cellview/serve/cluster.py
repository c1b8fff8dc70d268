"""Jobs on a Dask cluster (``cellview serve --cluster``), through the cohort's session and worker classifier.

``cellview.scale.cohort`` starts or reaches the cluster (``DaskSession``) and keeps one classifier per worker
process (``worker_classifier``); each job is one task that runs the engine's ``analyze`` on the worker,
reports its progress as Dask events and returns the result in the result cache's format. The export is done
here, as for a job of the in-process worker. Cancel sets a Dask ``Event`` the task checks between batches,
so the finished tiles are kept. The workers read the stored upload, so a remote scheduler's workers must see
this server's folder (a shared file system); a local cluster always does. This module imports no web
framework: the workers import it to run the task.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from cellview.base.errors import CellviewError, MppError
from cellview.serve.jobs import Exporter

log = logging.getLogger(__name__)

TOPIC = "cellview-serve"
CANCEL_PREFIX = "cellview-serve-cancel-"
PROGRESS_EVERY_S = 0.5


def run_on_worker(job_id: str, slide_path: str, settings: Any) -> dict[str, Any]:
    """The task: analyse one slide on this worker; {"result": bytes} or {"error", "details", "mpp"}."""
    from distributed import Event, get_worker

    from cellview.analysis.cache import ResultCache, result_to_bytes
    from cellview.analysis.pipeline import BatchDone, CancelToken, Finished, Started, analyze
    from cellview.scale.cohort import worker_classifier

    worker = get_worker()
    cancel = CancelToken()
    stop = Event(CANCEL_PREFIX + job_id)
    last = 0.0
    try:
        classifier = worker_classifier(settings)
        cache = ResultCache() if settings.use_cache else None
        result = None
        for event in analyze(slide_path, classifier, settings.params, cancel, cache):
            now = time.monotonic()
            if isinstance(event, Started):
                worker.log_event(TOPIC, {"job": job_id, "kind": "started", "done": 0, "total": event.total,
                                         "provider": event.provider, "from_cache": event.from_cache})
            elif isinstance(event, BatchDone) and now - last >= PROGRESS_EVERY_S:
                last = now
                worker.log_event(TOPIC, {"job": job_id, "kind": "batch", "done": event.done, "total": event.total,
                                         "tiles_per_s": event.tiles_per_s, "eta_s": event.eta_s})
                if stop.is_set():
                    cancel.cancel()
            elif isinstance(event, Finished):
                result = event.result
        if result is None:
            return {"error": "The analysis ended without a result.", "details": ""}
        return {"result": result_to_bytes(result), "fallback": classifier.fallback_message or ""}
    except CellviewError as exc:
        return {"error": exc.message, "details": exc.details, "mpp": isinstance(exc, MppError)}
    except Exception as exc:  # noqa: BLE001 - a bug: the job says so, the worker goes on
        return {"error": f"Internal error ({type(exc).__name__}); please report it.",
                "details": traceback.format_exc(limit=5)}


class ClusterRunner:
    """Submits each job as one task; a thread follows the futures and the jobs' cancel tokens."""

    def __init__(self, store: Any, models: dict[str, Path], run: Any, cluster: str | None,
                 scheduler_file: str | None) -> None:
        from cellview.scale.cohort import DaskSession

        self.store = store
        self.models = models
        self.run = run
        self.session = DaskSession(cluster, scheduler_file, retries=2)
        self.client = self.session.client
        self.exporter = Exporter(store)
        self.description = f"{self.session.description} ({self.session.n_workers} workers)"
        self._specs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Any, Any]] = {}  # job id → (future, job)
        self._cancelled: set[str] = set()
        self._closed = threading.Event()
        self.client.subscribe_topic(TOPIC, self._on_event)
        self._thread = threading.Thread(target=self._follow, name="cellview-cluster", daemon=True)
        self._thread.start()

    def _settings(self, job: Any) -> Any:
        from cellview.analysis.model_spec import ModelSpec
        from cellview.scale.cohort import CohortSettings

        spec = self._specs.get(job.model)
        if spec is None:
            spec = self._specs[job.model] = ModelSpec.load(self.models[job.model])
        return CohortSettings(model_path=str(spec.onnx_path.resolve()), model_sha256=spec.onnx_sha256,
                              device=self.run.device, params=job.params, formats=(), png_size_px=0,
                              region_confidence=None, use_cache=self.run.use_cache,
                              domain_sha256=spec.domain_sha256 or "", ort_threads=self.session.ort_threads())

    def submit(self, job: Any) -> None:
        try:
            settings = self._settings(job)
        except CellviewError as exc:
            from cellview.serve.jobs import end_failed

            end_failed(job, exc.message, exc.details)
            return
        fut = self.client.submit(run_on_worker, job.id, str(job.slide_path), settings,
                                 key=f"cellview-serve-{uuid.uuid4().hex}", pure=False)
        with self._lock:
            self._running[job.id] = (fut, job)

    def _on_event(self, event: Any) -> None:
        from cellview.serve.jobs import Progress

        msg = event[1] if isinstance(event, tuple) else event
        if not isinstance(msg, dict):
            return
        with self._lock:
            entry = self._running.get(str(msg.get("job")))
        if entry is None:
            return
        job = entry[1]
        if job.state == "queued":
            job.set_state("running")
        with job.lock:
            if msg.get("provider"):
                job.provider = str(msg["provider"])
            job.progress = Progress(int(msg.get("done", 0)), int(msg.get("total", 0)),
                                    float(msg.get("tiles_per_s") or 0.0), msg.get("eta_s"),
                                    from_cache=bool(msg.get("from_cache")))
            job.touch()

    def _follow(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                entries = list(self._running.items())
            for job_id, (fut, job) in entries:
                if job.cancel.cancelled and job_id not in self._cancelled:
                    self._cancelled.add(job_id)
                    self._cancel(job_id, fut, job)
                if fut.done():
                    with self._lock:
                        self._running.pop(job_id, None)
                    try:
                        self._finished(job, fut)
                    except Exception:  # noqa: BLE001 - one job's bug must not stop the others
                        from cellview.serve.jobs import end_failed

                        log.error("Job %s failed:\n%s", job_id[:6], traceback.format_exc())
                        end_failed(job, "Internal error; please report it.")
            self._closed.wait(0.2)

    def _cancel(self, job_id: str, fut: Any, job: Any) -> None:
        if job.state == "queued":
            fut.cancel()
            return
        try:
            from distributed import Event

            Event(CANCEL_PREFIX + job_id, client=self.client).set()
        except Exception as exc:  # noqa: BLE001 - the task runs to its end instead
            log.warning("Could not cancel job %s on the cluster: %s", job_id[:6], exc)

    def _finished(self, job: Any, fut: Any) -> None:
        from cellview.analysis.cache import result_from_bytes
        from cellview.analysis.pipeline import Finished
        from cellview.serve.jobs import end_failed, failure_text

        if fut.status == "cancelled" or fut.cancelled():
            job.set_state("cancelled", "Cancelled before it started.")
            job.remove_files()
            return
        if fut.status != "finished":
            end_failed(job, f"The task failed on the cluster ({fut.status}).")
            return
        out = fut.result()
        fut.release()
        if "error" in out:
            exc: CellviewError = MppError(out["error"], out["details"]) if out.get("mpp") else \
                CellviewError(out["error"], out["details"])
            end_failed(job, *failure_text(exc, job))
            return
        result = result_from_bytes(out["result"])
        job.apply(Finished(result), None)
        job.fallback = out.get("fallback", "")
        self.exporter.submit(job, result, {"fallback": job.fallback} if job.fallback else None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)
        with self._lock:
            futures = [f for f, _ in self._running.values()]
        for f in futures:
            f.cancel()
        try:
            self.client.unsubscribe_topic(TOPIC)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.debug("unsubscribe: %s", exc)
        self.session.close()
        self.exporter.close()
