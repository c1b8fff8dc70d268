"""The web app: the page, the job API the page uses, and ``POST /api/analyze`` for scripts (Starlette).

Handlers stay thin: uploads (``uploads``), the queue and the worker (``jobs``, ``cluster``), the slide's tiles
(``deepzoom``) and what is said about a result (``readouts``). Heavy handlers are plain functions, which
Starlette runs in its thread pool, so the event loop keeps receiving uploads while a tile is encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cellview import __version__
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import CellviewError
from cellview.serve import readouts
from cellview.serve.deepzoom import SlideViews
from cellview.serve.jobs import ENDED, OUT_DIR, InferenceWorker, Job, JobStore, RunSettings, failure_text
from cellview.serve.security import Guard
from cellview.serve.uploads import (
    UploadError,
    check_slide,
    display_stem,
    parse_flag,
    parse_mpp,
    receive_upload,
    safe_name,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MEDIA = {"csv": "text/csv; charset=utf-8", "geojson": "application/geo+json", "png": "image/png",
         "json": "application/json"}
SUFFIX = {"csv": ".csv", "geojson": ".geojson", "png": ".png", "json": ".json"}
EXPIRE_EVERY_S = 60.0
SSE_POLL_S = 0.25
SSE_PING_S = 15.0


@functools.lru_cache(maxsize=32)
def model_decides_scale(model_path: str) -> bool:
    """Whether the model's sidecar says how to read an image that states no pixel size (blood-all reads a smear as
    a field of known width), so the page does not ask for one, as `cellview analyze` and the viewer do not."""
    from cellview.analysis.model_spec import ModelSpec
    from cellview.base.errors import CellviewError

    try:
        return ModelSpec.load(model_path).reading.unstated.read != "ask"
    except CellviewError:
        return False  # the job itself will say what is wrong with the model


@dataclass(frozen=True)
class ServeConfig:
    """Everything `cellview serve` was told. ``models``: name → model.onnx, the only models a request may name."""

    models: dict[str, Path]
    default_model: str
    root: Path  # the server's own folder for uploads and outputs (removed when it stops)
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_upload_bytes: int = 4 << 30
    keep_s: float = 24 * 3600.0
    max_active: int = 200
    params: AnalysisParams = field(default_factory=AnalysisParams)
    run: RunSettings = field(default_factory=RunSettings)
    cluster: str | None = None
    scheduler_file: str | None = None

    @property
    def local_only(self) -> bool:
        from cellview.serve.security import is_loopback

        return is_loopback(self.host)


class Server:
    """The app's state: the job store, the runner (worker or cluster), the open slide views."""

    def __init__(self, config: ServeConfig, runner: Any = None) -> None:
        self.config = config
        self.store = JobStore(config.root, config.keep_s, config.max_active)
        self.views = SlideViews()
        self.store.on_remove.append(lambda job: self.views.forget(job.id))
        self.runner = runner
        self._expiry: asyncio.Task | None = None

    def start(self) -> None:
        if self.runner is None:
            if self.config.cluster or self.config.scheduler_file:
                from cellview.serve.cluster import ClusterRunner

                self.runner = ClusterRunner(self.store, self.config.models, self.config.run, self.config.cluster,
                                            self.config.scheduler_file)
            else:
                self.runner = InferenceWorker(self.store, self.config.models, self.config.run)

    def stop(self) -> None:
        for job in self.store.all():
            job.cancel.cancel()
        if self.runner is not None:
            self.runner.close()
        self.views.close()
        self.store.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.start)
        self._expiry = asyncio.create_task(self._expire_loop())
        try:
            yield
        finally:
            self._expiry.cancel()
            await anyio.to_thread.run_sync(self.stop)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            await anyio.to_thread.run_sync(self.store.expire)

    # ------------------------------------------------------------------------------ helpers

    def job_or_404(self, request: Request) -> Job:
        job = self.store.get(request.path_params["job_id"])
        if job is None:
            raise UploadError(404, "No such job: it was removed, it expired, or the link is wrong.")
        return job

    def result_or_409(self, job: Job) -> Any:
        result = job.shown_result()
        if result is None:
            raise UploadError(409, "The slide has no tiles to show yet.")
        return result

    # ------------------------------------------------------------------------------ uploads

    async def accept(self, request: Request) -> Job:
        """Receive one upload, check it as `cellview analyze` would, and queue it (4xx on bad input)."""
        if self.store.busy():
            raise UploadError(503, "The server has as many slides queued as it holds; try again in a few minutes.")
        cfg = self.config
        session = request.scope.get("state", {}).get("session", "")
        job = self.store.reserve(session, cfg.default_model, cfg.params)
        try:
            upload = await receive_upload(request.headers.get("content-type", ""),
                                          request.headers.get("content-length"), request.stream(), job.folder,
                                          cfg.max_upload_bytes)
            model = upload.fields.get("model") or cfg.default_model
            if model not in cfg.models:
                raise UploadError(400, f"No model named {safe_name(model)!r}; available: "
                                       f"{', '.join(sorted(cfg.models))}.")
            mpp = parse_mpp(upload.fields.get("mpp"))
            whole = parse_flag(upload.fields.get("whole_image"))
            decides = await anyio.to_thread.run_sync(model_decides_scale, str(cfg.models[model]))
            checked = await anyio.to_thread.run_sync(check_slide, upload.path, upload.name, mpp, whole, decides)
        except BaseException:
            job.remove_files()
            raise
        job.name, job.model, job.slide_path, job.slide_info = upload.name, model, upload.path, checked.info
        job.params = replace(cfg.params, mpp_um=mpp, whole_image=whole)
        job.set_state("queued")
        self.store.add(job)
        self.runner.submit(job)
        return job

    async def post_job(self, request: Request) -> Response:
        job = await self.accept(request)
        return JSONResponse(readouts.status_dict(job, self.store), status_code=202)

    async def post_analyze(self, request: Request) -> Response:
        """For scripts: upload, wait for the analysis, answer with the call, the shares and the files' URLs."""
        job = await self.accept(request)
        while not job.ended:
            await asyncio.sleep(0.1)
        body = readouts.status_dict(job, self.store)
        if job.state == "failed":
            return JSONResponse({"error": job.error, "details": job.details, "job": body}, status_code=422)
        return JSONResponse(body)

    # ------------------------------------------------------------------------------ jobs

    async def info(self, request: Request) -> Response:
        cfg = self.config
        models = [cfg.default_model] + sorted(m for m in cfg.models if m != cfg.default_model)
        body = readouts.page_info(models, cfg.default_model, cfg.max_upload_bytes, __version__, cfg.token is not None)
        body["runner"] = getattr(self.runner, "description", "")
        return JSONResponse(body)

    async def list_jobs(self, request: Request) -> Response:
        session = request.scope.get("state", {}).get("session", "")
        return JSONResponse({"jobs": [readouts.status_dict(j, self.store) for j in self.store.owned_by(session)]})

    async def get_job(self, request: Request) -> Response:
        return JSONResponse(readouts.status_dict(self.job_or_404(request), self.store))

    async def cancel_job(self, request: Request) -> Response:
        job = self.job_or_404(request)
        if not job.ended:
            job.cancel.cancel()
        return JSONResponse(readouts.status_dict(job, self.store))

    async def delete_job(self, request: Request) -> Response:
        job = self.job_or_404(request)
        await anyio.to_thread.run_sync(self.store.remove, job.id)
        return JSONResponse({"removed": job.id})

    async def events(self, request: Request) -> Response:
        """Server-sent events: the job's status whenever it changes, then ``end``."""
        job = self.job_or_404(request)

        async def stream() -> AsyncIterator[str]:
            last: tuple[int, int] | None = None
            quiet = 0.0
            while True:
                key = (job.version, self.store.queue_position(job))
                if key != last:
                    last, quiet = key, 0.0
                    yield f"event: status\ndata: {json.dumps(readouts.status_dict(job, self.store))}\n\n"
                    if job.state in ENDED:
                        yield "event: end\ndata: {}\n\n"
                        return
                elif quiet >= SSE_PING_S:
                    quiet = 0.0
                    yield ": ping\n\n"
                await asyncio.sleep(SSE_POLL_S)
                quiet += SSE_POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    # ------------------------------------------------------------------------------ the view

    def overlay(self, request: Request) -> Response:
        job = self.job_or_404(request)
        result = self.result_or_409(job)
        q = request.query_params
        try:
            min_conf = min(1.0, max(0.0, float(q.get("min_confidence", "0") or 0)))
        except ValueError:
            raise UploadError(400, "min_confidence must be a number between 0 and 1.") from None
        settings = readouts.overlay_settings(q.get("style"), parse_flag(q.get("anyway")), min_conf)
        return JSONResponse(readouts.overlay_dict(job, result, settings))

    def tile(self, request: Request) -> Response:
        job = self.job_or_404(request)
        result = self.result_or_409(job)
        q = request.query_params
        try:
            if "index" in q:
                index = int(q["index"])
            else:
                x, y = float(q.get("x", "nan")), float(q.get("y", "nan"))
                index = result.grid.tile_at(x, y) if math.isfinite(x) and math.isfinite(y) else -1
        except ValueError:
            raise UploadError(400, "Give the point as x and y in level-0 pixels, or a tile index.") from None
        if not 0 <= index < result.n_tiles:
            raise UploadError(404, "No tile there: only tissue is tiled.")
        return JSONResponse(readouts.tile_dict(job, result, index))

    def _view(self, job: Job) -> Any:
        if job.slide_path is None or not job.slide_path.exists():
            raise UploadError(410, "The slide of this job is no longer on the server.")
        try:
            return self.views.get(job.id, job.slide_path, job.params.mpp_um)
        except CellviewError as exc:
            raise UploadError(422, *failure_text(exc, job)) from None

    def patch(self, request: Request) -> Response:
        job = self.job_or_404(request)
        result = self.result_or_409(job)
        index = request.path_params["index"]
        if not 0 <= index < result.n_tiles:
            raise UploadError(404, "No such tile.")
        data = self._view(job).patch_png(result.grid, index)
        return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    def dzi(self, request: Request) -> Response:
        job = self.job_or_404(request)
        return Response(self._view(job).dzi(), media_type="application/xml")

    def dz_tile(self, request: Request) -> Response:
        job = self.job_or_404(request)
        p = request.path_params
        data = self._view(job).tile_jpeg(p["level"], p["col"], p["row"])
        if data is None:
            raise UploadError(404, "No such tile in the slide's pyramid.")
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    def file(self, request: Request) -> Response:
        job = self.job_or_404(request)
        kind = request.path_params["kind"]
        path = job.outputs.get(kind)
        if kind not in MEDIA or path is None or not path.exists():
            raise UploadError(404, "That file is not ready (the analysis has not finished) or does not exist.")
        assert path.parent == job.folder / OUT_DIR
        return FileResponse(path, media_type=MEDIA[kind], filename=f"{display_stem(job.name)}{SUFFIX[kind]}")

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-store"})


async def _upload_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UploadError)
    headers = {"retry-after": "60"} if exc.status == 503 else None
    return JSONResponse({"error": exc.message, "details": exc.details}, status_code=exc.status, headers=headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("Internal error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": f"Internal error ({type(exc).__name__}); please report it."}, status_code=500)


def create_app(config: ServeConfig, runner: Any = None) -> Any:
    """The ASGI app: the guard in front of the Starlette routes. ``runner``: a job runner to use instead of
    the one the config asks for (tests)."""
    if not config.local_only and not config.token:
        raise ValueError("A server that listens beyond this machine needs an access token.")
    server = Server(config, runner)
    routes = [
        Route("/", server.index),
        Route("/api/info", server.info),
        Route("/api/analyze", server.post_analyze, methods=["POST"]),
        Route("/api/jobs", server.list_jobs, methods=["GET"]),
        Route("/api/jobs", server.post_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", server.get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", server.delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/cancel", server.cancel_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/events", server.events),
        Route("/api/jobs/{job_id}/overlay", server.overlay),
        Route("/api/jobs/{job_id}/tile", server.tile),
        Route("/api/jobs/{job_id}/tiles/{index:int}/patch.png", server.patch),
        Route("/api/jobs/{job_id}/slide.dzi", server.dzi),
        Route("/api/jobs/{job_id}/slide_files/{level:int}/{col:int}_{row:int}.jpeg", server.dz_tile),
        Route("/api/jobs/{job_id}/files/{kind}", server.file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan,
                    exception_handlers={UploadError: _upload_error, Exception: _internal_error})
    app.state.server = server
    guarded = Guard(app, config.token, config.local_only)
    guarded.server = server  # type: ignore[attr-defined] - for tests and the bench
    return guarded
