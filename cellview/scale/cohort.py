"""Cohorts: many slides, one task per slide, in this process or on a dask.distributed cluster.

The client plans the run (slides whose outputs are up to date are skipped before any task is
sent), each task analyses one slide and writes its outputs atomically into the output folder,
and the client keeps ``cohort.csv`` / ``.json`` / ``.html`` current as slides finish. On Dask every
slide runs in a worker *process*: a native crash in a decoder (OpenSlide, libtiff, libjpeg) or
an out-of-memory kill loses only that slide, which the scheduler retries on another worker
(``distributed.scheduler.allowed-failures``) before reporting ``KilledWorker``, recorded as failed.
Dask is imported only for ``--cluster`` / ``--scheduler-file`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cellview.analysis.callrule import CallThresholds
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import CellviewError, ModelError, MppError
from cellview.outputs.cohort_report import (
    THUMBS_DIR,
    CohortTables,
    SlideOutcome,
    process_label,
    read_outcome_from_metadata,
    shares_from_counts,
)
from cellview.slides.slide import SUPPORTED_SUFFIXES, file_fingerprint, slide_display_name, slide_stem

log = logging.getLogger(__name__)

FAULT_ENV = "CELLVIEW_TEST_FAULTS"
"""Test hook: a folder where ``<stem>.exit-once`` / ``<stem>.exit-always`` make a Dask worker
process exit (``os._exit``) in the middle of that slide, and ``<stem>.hold`` pauses it there while
the file exists (at most 2 minutes). Inert unless set, and outside Dask workers."""

PROGRESS_TOPIC = "cellview-progress"

ANALYZE_MPP_ADVICE = ("Pass it with --mpp (e.g. --mpp 0.5 for a 20x scan), or use --whole-image to classify a small "
                      "image as one tile (scale unknown).")
"""How `cellview analyze` is told a slide's pixel size (added to the core's MppError message)."""


# ----------------------------------------------------------------------------- planning


def discover_slides(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders into slides (a folder of .dcm files is one DICOM slide).

    Returns (slides, problems): a path that does not exist or a folder with no slides is a
    problem for the final report, not a reason to stop.
    """
    slides: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append((str(path), f"{path} does not exist."))
            continue
        if path.is_file():
            slides.append(path)
            continue
        found: list[Path] = []
        dicom_dirs: set[Path] = set()
        for f in sorted(path.rglob("*")):
            if not f.is_file() or f.name.startswith(".") or f.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if f.suffix.lower() == ".dcm":
                if f.parent in dicom_dirs:
                    continue
                dicom_dirs.add(f.parent)
            found.append(f)
        if not found:
            problems.append((str(path), f"No slides or images found in {path}."))
        slides.extend(found)
    seen: set[Path] = set()
    unique = []
    for s in slides:
        key = s.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique, problems


def output_stem(slide: Path, taken: set[str]) -> str:
    """File stem for a slide's outputs: its name (the folder's for DICOM), made unique in the batch."""
    stem = slide_stem(slide)
    candidate, n = stem, 2
    while candidate in taken:
        candidate = f"{stem}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def up_to_date_metadata(slide: Path, outputs: dict[str, Path], model_sha: str, params: AnalysisParams,
                        options: dict[str, Any], domain_sha: str = "",
                        call: CallThresholds | None = None) -> dict[str, Any] | None:
    """The metadata of the slide's earlier run when its outputs are what this run would write (``call``: the
    model's slide-call thresholds now; outputs made under other ones, or before the call existed, are not)."""
    meta_path = outputs["json"]
    if not meta_path.exists() or not all(p.exists() for p in outputs.values()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        old_params = AnalysisParams.from_dict(meta["parameters"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        fingerprint = file_fingerprint(slide)
    except OSError:
        return None
    from cellview.analysis.tiling import TILING_RULE

    ok = (
        meta.get("status") == "complete"
        and meta.get("grid", {}).get("tiling_rule") == TILING_RULE
        and meta.get("slide", {}).get("fingerprint") == fingerprint
        and meta.get("model", {}).get("sha256") == model_sha
        and ((meta.get("domain") or {}).get("statistics_sha256") or "") == domain_sha
        and old_params.cache_dict() == params.cache_dict()
        and meta.get("export_options") == options
        and (call is None or _same_call_rule(meta.get("call"), call))
    )
    return meta if ok else None


def _same_call_rule(recorded: Any, call: CallThresholds) -> bool:
    from cellview.analysis.call import thresholds_dict
    from cellview.analysis.callrule import RULE_VERSION

    return (isinstance(recorded, dict) and recorded.get("rule_version") == RULE_VERSION
            and recorded.get("thresholds") == json.loads(json.dumps(thresholds_dict(call))))


@dataclass(frozen=True)
class CohortSettings:
    """Everything a task needs besides its slide (pickled to the workers)."""

    model_path: str
    model_sha256: str
    device: str
    params: AnalysisParams
    formats: tuple[str, ...]
    png_size_px: int
    region_confidence: float | None
    use_cache: bool = True
    domain_sha256: str = ""  # the model's in-domain statistics ("" when it has none)
    ort_threads: int | None = None  # None: ONNX Runtime's default (all cores of this process)
    thumb_px: int = 0  # heatmap thumbnail for cohort.html (longest side); 0: none
    run_sha256: str = ""  # the copy of the weights that runs (``--precision``), what outputs record; "": model_sha256
    call: CallThresholds | None = None  # the model's slide-call thresholds (outputs made under others are redone)

    @property
    def result_sha256(self) -> str:
        return self.run_sha256 or self.model_sha256


@dataclass(frozen=True)
class SlideJob:
    path: str  # what is opened (for DICOM, one file of the slide's folder)
    name: str
    stem: str
    out_dir: str
    position: int

    @property
    def shown_path(self) -> str:
        return slide_path_shown(self.path)


def slide_path_shown(path: str | Path) -> str:
    """The path a person knows the slide by: the folder of a DICOM slide, the file otherwise."""
    p = Path(path)
    return str(p.parent) if p.suffix.lower() == ".dcm" else str(p)


def plan_cohort(paths: Iterable[str | Path], out_dir: Path, settings: CohortSettings, options: dict[str, Any],
                force: bool = False) -> tuple[list[SlideJob], list[tuple[int, SlideOutcome]], int]:
    """(jobs to run, (position, outcome) known without running: skipped and missing inputs, slides in all)."""
    from cellview.outputs.export import output_paths

    slides, problems = discover_slides(paths)
    known: list[tuple[int, SlideOutcome]] = []
    for position, (where, why) in enumerate(problems):
        known.append((position, SlideOutcome(path=where, name=Path(where).name, stem=f"?{where}", status="failed",
                                             error=why)))
    jobs: list[SlideJob] = []
    taken: set[str] = set()
    for position, path in enumerate(slides, start=len(problems)):
        stem = output_stem(path, taken)
        name = slide_display_name(path)
        meta = None
        if not force:
            meta = up_to_date_metadata(path, output_paths(out_dir, stem, settings.formats), settings.result_sha256,
                                       settings.params, options, settings.domain_sha256, settings.call)
        if meta is not None:
            known.append((position, read_outcome_from_metadata(meta, slide_path_shown(path), name, stem, out_dir)))
        else:
            jobs.append(SlideJob(str(path), name, stem, str(out_dir), position))
    return jobs, known, len(slides) + len(problems)


# ----------------------------------------------------------------------------- the task (runs on a worker)

_classifiers: dict[tuple[Any, ...], Any] = {}
_classifier_lock = threading.Lock()


def worker_classifier(settings: CohortSettings, seed: Any = None) -> Any:
    """This process's classifier for the settings: loaded once per worker, not per slide."""
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec

    key = (settings.model_path, settings.model_sha256, settings.device, settings.params.batch_size,
           settings.ort_threads, settings.params.precision)
    with _classifier_lock:
        if seed is not None:
            _classifiers.clear()
            _classifiers[key] = seed
        clf = _classifiers.get(key)
        if clf is None:
            spec = ModelSpec.load(resolve_model(settings.model_path))
            if spec.onnx_sha256 != settings.model_sha256:
                raise ModelError(f"The model at {settings.model_path} on this worker is not the one the run "
                                 "was started with (sha256 differs).")
            clf = OnnxClassifier(spec, device=settings.device, intra_op_threads=settings.ort_threads,
                                 max_batch=settings.params.batch_size, precision=settings.params.precision)
            _classifiers.clear()  # one model per process
            _classifiers[key] = clf
        return clf


def _dask_worker() -> Any:
    """The Dask worker running this code, or None (never imports distributed itself)."""
    mod = sys.modules.get("distributed")
    if mod is None:
        return None
    try:
        return mod.get_worker()
    except ValueError:
        return None


def _fault_hook(stem: str) -> None:
    """Test hook (see FAULT_ENV): end this worker process abruptly in the middle of a slide."""
    folder = os.environ.get(FAULT_ENV)
    if not folder or _dask_worker() is None:
        return
    hold = Path(folder) / f"{stem}.hold"
    deadline = time.monotonic() + 120
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if (Path(folder) / f"{stem}.exit-always").exists():
        os._exit(70)
    try:
        (Path(folder) / f"{stem}.exit-once").unlink()
    except FileNotFoundError:
        return
    os._exit(70)


def _worker_label() -> str:
    w = _dask_worker()
    if w is None:
        return process_label()
    return str(w.name) if not isinstance(w.name, int) else w.address


class _Progress:
    """Tile progress of the running slide, sent to the client as Dask events (throttled)."""

    def __init__(self, stem: str, on_batch: Callable[[int, int, float | None], None] | None) -> None:
        self.stem = stem
        self.on_batch = on_batch
        self.worker = _dask_worker()
        self.last = 0.0

    def __call__(self, done: int, total: int, final: bool = False, rate: float | None = None) -> None:
        if self.on_batch is not None:
            self.on_batch(done, total, rate)
        if self.worker is None:
            return
        now = time.monotonic()
        if final or now - self.last >= 0.5:
            self.last = now
            self.worker.log_event(PROGRESS_TOPIC, {"stem": self.stem, "done": done, "total": total})


def _write_thumbnail(result: Any, out_dir: Path, stem: str, max_px: int) -> str:
    """The heatmap over a small slide thumbnail, for cohort.html; '' when it cannot be made."""
    import cv2

    from cellview.base.files import atomic_write_bytes
    from cellview.outputs.export import overlay_on_thumbnail
    from cellview.slides.opening import open_slide

    try:
        with open_slide(result.slide.path, mpp_um=result.params.mpp_um) as slide:
            thumb = slide.thumbnail(max_px)
        img = overlay_on_thumbnail(result, thumb)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return ""
        rel = Path(THUMBS_DIR) / f"{stem}.jpg"
        atomic_write_bytes(out_dir / rel, buf.tobytes())
        return rel.as_posix()
    except CellviewError as exc:
        log.warning("No thumbnail for %s: %s", stem, exc)
        return ""


def analyze_slide(job: SlideJob, settings: CohortSettings,
                  on_batch: Callable[[int, int, float | None], None] | None = None) -> SlideOutcome:
    """Analyse one slide and write its outputs; every error becomes a failed outcome.

    Runs in a Dask worker (or in the client for runs without a cluster). Bad input is a
    CellviewError with a plain message; anything else is a bug, reported with its traceback.
    """
    from cellview.analysis.cache import ResultCache
    from cellview.analysis.pipeline import BatchDone, Finished, analyze
    from cellview.outputs.export import export_slide_result, output_paths

    t0 = time.perf_counter()
    out_dir = Path(job.out_dir)
    worker = _worker_label()
    progress = _Progress(job.stem, on_batch)

    def failed(error: str, details: str = "", tb: str = "") -> SlideOutcome:
        return SlideOutcome(path=job.shown_path, name=job.name, stem=job.stem, status="failed",
                            seconds=time.perf_counter() - t0, worker=worker, attempts=1,
                            error=error + (f" ({details})" if details else ""), traceback=tb)

    try:
        classifier = worker_classifier(settings)
        cache = ResultCache() if settings.use_cache else None
        result = None
        first = True
        progress(0, 0)
        for event in analyze(job.path, classifier, settings.params, cache=cache):
            if isinstance(event, BatchDone):
                if first:
                    first = False
                    _fault_hook(job.stem)
                progress(event.done, event.total, rate=event.tiles_per_s)
            elif isinstance(event, Finished):
                result = event.result
        if result is None:
            return failed("The analysis ended without a result.")
        progress(result.n_done, result.n_tiles, final=True,
                 rate=None if result.from_cache else result.timings.get("tiles_per_s"))
        paths = output_paths(out_dir, job.stem, settings.formats)
        # Stale metadata would vouch for files about to be replaced: it goes first, and comes back last.
        paths["json"].unlink(missing_ok=True)
        _, regions = export_slide_result(
            result, out_dir, job.stem, settings.formats, settings.png_size_px, settings.region_confidence,
            extra_meta={"fallback": classifier.fallback_message} if classifier.fallback_message else None,
        )
        thumbnail = _write_thumbnail(result, out_dir, job.stem, settings.thumb_px) if settings.thumb_px else ""
    except MppError as exc:
        return failed(exc.advise(ANALYZE_MPP_ADVICE).message, exc.details)
    except CellviewError as exc:
        return failed(exc.message, exc.details)
    except Exception as exc:  # noqa: BLE001 - a bug: report it with its traceback, keep the batch going
        return failed(f"Internal error ({type(exc).__name__}: {exc}); please report it.", tb=traceback.format_exc())

    from cellview.analysis.call import slide_call
    from cellview.analysis.results import plural

    call = slide_call(result)
    summary = [f"{job.name}: {result.summary()}", f"  call: {call.text}"]
    if result.reading.get("pixel_size"):
        summary.append(f"  {result.reading['pixel_size']}")
    if regions:
        top = regions[0]
        # every malignant tile from the outlines' confidence on: not the call's figures, which count surer tiles only
        summary.append(f"  malignant regions at confidence ≥ {settings.region_confidence:g}: {len(regions)}; largest "
                       f"{top.label()} ({plural(top.n_tiles, 'tile')})")
    level = result.image_level()
    if (result.grid.whole_image or Path(job.path).suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}) \
            and level["pred_class"]:  # the most probable class on average: a detail, not the call
        summary.append(f"  most probable class (mean of {plural(level['n_tiles'], 'tile')}, {level['based_on']}): "
                       f"{level['pred_class']} ({level['pred_category']}, {level['confidence']:.0%})")
    frac = getattr(result, "in_domain_fraction", None)
    return SlideOutcome(
        path=job.shown_path, name=job.name, stem=job.stem, status="ok", tiles=result.n_done,
        shares=shares_from_counts(result.category_counts()),
        in_domain_fraction=float(frac) if isinstance(frac, (int, float)) else None,
        provider=result.provider, seconds=time.perf_counter() - t0, worker=worker, attempts=1,
        summary=tuple(summary), outputs=tuple(p.name for p in paths.values()), thumbnail=thumbnail,
        call=call.category, call_text=call.text,
    )


# ----------------------------------------------------------------------------- running a cohort


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) and SIGTERM stop a cohort run the same way: KeyboardInterrupt in the main thread, so the
    slides in flight are cancelled, the tables are written as 'interrupted' and the cluster is closed.

    SIGINT is set explicitly because a process started in the background by a non-interactive shell (a
    script's ``cmd &``, a CI runner) inherits SIGINT *ignored*, and Python keeps it ignored: Ctrl-C or
    ``kill -INT`` then did nothing, and the run went on to its end. Yields a list that receives the number
    of the signal that stopped the run.
    """
    got: list[int] = []

    def stop(signum: int, frame: Any) -> None:  # noqa: ARG001 - the handler's signature
        got.append(signum)
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread (cellview used as a library): leave the process's handlers alone
        pass
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Console:
    """Where the run reports: results to ``out``, progress and problems to ``err``."""

    out: IO[str]
    err: IO[str]
    quiet: bool = False
    model_name: str = ""
    bar: Any = None

    def line(self, text: str, err: bool = False) -> None:
        stream = self.err if err else self.out
        if self.bar is not None:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream)


def report_outcome(o: SlideOutcome, console: Console) -> None:
    if o.status == "ok":
        for line in o.summary:
            console.line(line)
    elif o.status == "skipped":
        console.line(f"{o.name}: up to date with {console.model_name or 'this model'}, skipped", err=True)
    else:
        console.line(f"{o.name}: FAILED: {o.error}", err=True)
        if o.traceback:
            console.line(o.traceback.rstrip(), err=True)


PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
"""A slide's tile bar: tqdm's own rate and time left are left out (see ``progress_rate``)."""


def progress_rate(tiles_per_s: float | None, done: int) -> str:
    """The rate a slide's bar shows: the pipeline's measure (tiles since classification began / its seconds);
    'cached' when the result came from the cache, nothing before the first batch."""
    if tiles_per_s is None:
        return "cached" if done else ""
    return f"{tiles_per_s:.1f} tiles/s" if tiles_per_s > 0 else ""


def run_in_process(jobs: list[SlideJob], settings: CohortSettings, classifier: Any, tables: CohortTables | None,
                   console: Console) -> list[SlideOutcome]:
    """The cohort in a plain loop in this process, with a tile progress bar per slide."""
    from tqdm import tqdm

    worker_classifier(settings, seed=classifier)
    outcomes = []
    for job in jobs:
        bar = None

        def on_batch(done: int, total: int, rate: float | None, job: SlideJob = job) -> None:
            nonlocal bar
            if bar is None and total:
                bar = tqdm(total=total, desc=job.name[:30], unit="tile", leave=False, disable=console.quiet,
                           dynamic_ncols=True, file=console.err, bar_format=PROGRESS_FORMAT)
            if bar is not None:
                bar.n = done
                # tqdm's own rate counts from the bar's creation, at the first batch (or a cache hit): absurd
                # figures; the pipeline measures the rate from the start of classification.
                bar.set_postfix_str(progress_rate(rate, done), refresh=False)
                bar.refresh()
            if tables is not None:
                tables.flush()

        try:
            outcome = analyze_slide(job, settings, on_batch)
        finally:
            if bar is not None:
                bar.close()
        outcomes.append(outcome)
        report_outcome(outcome, console)
        if tables is not None:
            tables.add(outcome, job.position)
            tables.write()
    return outcomes


def parse_cluster(spec: str) -> tuple[str, int | None]:
    """'local' / 'local:N' → ('local', N or None); 'tcp://host:port' etc. → ('address', None)."""
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2]
        if n and (not n.isdigit() or int(n) < 1):
            raise ValueError(f"--cluster {spec}: N must be a positive number of worker processes.")
        return "local", int(n) if n else None
    if "://" in spec or ":" in spec:
        return "address", None
    raise ValueError(f"--cluster {spec!r}: use local, local:N, or a scheduler address like tcp://host:8786.")


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


DASHBOARD_ADDRESS = "127.0.0.1:0"
"""A local cluster's dashboard: this machine only, on a free port (never collides with another cluster)."""


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


class DaskSession:
    """A Client on a LocalCluster we start (and stop) or on an existing scheduler."""

    def __init__(self, cluster: str | None, scheduler_file: str | None, retries: int,
                 dashboard: str = DASHBOARD_ADDRESS) -> None:
        """``dashboard``: where a local cluster's dashboard listens (HOST:PORT, port 0 = a free one); slide
        names (often patient identifiers) go by on it, so only this machine by default."""
        import dask
        from distributed import Client, LocalCluster

        # The scheduler and nannies log every connection and every lost task; the run reports those itself.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        self.cluster = None
        self.n_workers = 0
        self.n_local = 0  # worker processes of the local cluster we started (0: not ours)
        self._last_heal = 0.0
        self._threads_read = time.monotonic()
        if scheduler_file:
            self.client = Client(scheduler_file=scheduler_file, timeout="60s")
            self.description = f"Dask scheduler from {scheduler_file}"
        else:
            kind, n = parse_cluster(cluster or "local")
            if kind == "local":
                n = n or usable_cores()
                # allowed-failures: how many worker deaths a slide may cause before KilledWorker.
                # worker-saturation 1.0: a worker holds only the slide it runs, so a death marks
                # only that slide as suspicious.
                with dask.config.set({"distributed.scheduler.allowed-failures": int(retries),
                                      "distributed.scheduler.worker-saturation": 1.0}):
                    self.cluster = LocalCluster(
                        n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=dashboard,
                        silence_logs=logging.CRITICAL,  # a worker's errors reach the run as its slide's failure
                        preload=["cellview.scale.dask_worker"],  # Ctrl-C is the client's (see there)
                    )
                self.client = Client(self.cluster)
                self.n_local = n
                self.description = f"local Dask cluster, {n} worker process{'es' if n > 1 else ''}"
            else:
                self.client = Client(cluster, timeout="60s")
                self.description = f"Dask scheduler {cluster}"
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        self.n_workers = len(workers)
        self.threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        try:
            self.allowed_failures = int(self.client.run_on_scheduler(_scheduler_allowed_failures))
        except Exception:  # noqa: BLE001 - informational
            self.allowed_failures = None
        self.dashboard = self.client.dashboard_link if (self.cluster is None or _has_dashboard()) else None

    def worker_threads(self) -> int:
        """Threads across the cluster's workers now (re-read at most every 2 s; workers come and go)."""
        now = time.monotonic()
        if now - self._threads_read >= 2.0:
            self._threads_read = now
            try:
                workers = self.client.scheduler_info().get("workers", {})
                self.threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
            except Exception as exc:  # noqa: BLE001 - keep the last figure
                log.debug("scheduler_info: %s", exc)
        return self.threads

    def heal(self) -> None:
        """Bring a local cluster back to its size (checked at most every 5 s).

        A nanny whose worker dies again while it is being restarted can give up and leave the
        cluster; after a few crashing slides a local:2 run could go on with one worker, or none.
        Scaling back to N starts a new nanny for every one that left.
        """
        now = time.monotonic()
        if self.cluster is None or now - self._last_heal < 5.0:
            return
        self._last_heal = now
        if len(self.cluster.workers) < self.n_local:
            log.info("Restarting %d lost worker process(es).", self.n_local - len(self.cluster.workers))
            self.cluster.scale(self.n_local)

    def ort_threads(self) -> int | None:
        """ONNX Runtime threads per task: the cores shared by this machine's worker threads."""
        if self.cluster is None:
            return None  # remote workers: their own default
        return max(1, usable_cores() // max(1, self.threads))

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.debug("client close: %s", exc)
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=20)
            except Exception as exc:  # noqa: BLE001
                log.debug("cluster close: %s", exc)


def _scheduler_allowed_failures(dask_scheduler: Any = None) -> int:
    return int(dask_scheduler.allowed_failures)


def _killed_reason(exc: BaseException, tries: int | None) -> str:
    n = f" on each of {tries} tries" if tries else ""
    return (f"The worker process analysing this slide died{n} (a crash in a slide decoder, out of memory, "
            f"or killed); the other slides went on.")


LOST_TASK_RETRIES = 3
"""How often a slide whose task the cluster dropped without an error (cancelled, lost) is submitted again."""


def run_on_dask(session: DaskSession, jobs: list[SlideJob], settings: CohortSettings, tables: CohortTables | None,
                console: Console) -> list[SlideOutcome]:
    """One task per slide on the cluster; one bar over slides (done / failed / running, tiles/s, ETA)."""
    from distributed import as_completed
    from tqdm import tqdm

    client = session.client
    lock = threading.Lock()
    live: dict[str, tuple[int, int]] = {}  # stem → (done, total) of running slides
    finished: set[str] = set()  # events can arrive after their slide's result

    def on_event(event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if isinstance(msg, dict) and "stem" in msg:
            with lock:
                if msg["stem"] not in finished:
                    live[msg["stem"]] = (int(msg.get("done", 0)), int(msg.get("total", 0)))

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    token = uuid.uuid4().hex[:8]
    futures: dict[Any, SlideJob] = {}
    waiting = list(reversed(jobs))
    ac = as_completed()

    def top_up() -> None:
        """Keep one slide in flight per worker thread, no more.

        When a worker process dies, the scheduler counts a failure against every task it holds;
        a worker holding only the slide it runs cannot take an innocent slide down with it
        (Dask's own queuing does not apply to a handful of differently named tasks).
        """
        limit = max(1, session.worker_threads())
        while waiting and len(futures) < limit:
            job = waiting.pop()
            fut = client.submit(analyze_slide, job, settings, key=f"cellview-slide-{job.stem}-{token}", pure=False)
            futures[fut] = job
            ac.add(fut)

    top_up()
    outcomes: list[SlideOutcome] = []
    counts = {"ok": 0, "failed": 0}
    tiles_finished = 0
    t0 = time.monotonic()
    bar = tqdm(total=len(jobs), unit="slide", desc="slides", disable=console.quiet, dynamic_ncols=True,
               file=console.err)
    console.bar = bar
    tries = (session.allowed_failures + 1) if session.allowed_failures is not None else None
    lost: dict[str, int] = {}  # stem → times the cluster dropped its task without an error
    try:
        while futures or waiting:
            batch = ac.next_batch(block=False)
            for fut in batch:
                job = futures.pop(fut)
                exc = None
                if fut.status != "finished":
                    try:
                        exc = fut.exception()
                    except Exception as err:  # noqa: BLE001 - a cancelled future raises instead of returning
                        exc = err if type(err).__name__ != "CancelledError" else None
                if fut.status != "finished" and exc is None and lost.get(job.stem, 0) < LOST_TASK_RETRIES:
                    # The cluster dropped the task (cancelled or lost while workers restarted): not the
                    # slide's doing, so it goes again rather than counting as failed.
                    lost[job.stem] = lost.get(job.stem, 0) + 1
                    fut.release()
                    waiting.append(job)
                    continue
                if fut.status == "finished":
                    outcome = fut.result()
                else:
                    if type(exc).__name__ == "KilledWorker":
                        error = _killed_reason(exc, tries)
                    elif exc is None:
                        error = (f"The cluster lost this slide's task {lost.get(job.stem, 0) + 1} times "
                                 f"(status {fut.status}); the other slides went on.")
                    else:
                        error = f"The task failed on the cluster ({type(exc).__name__}: {exc})."
                    outcome = SlideOutcome(path=job.shown_path, name=job.name, stem=job.stem, status="failed",
                                           attempts=tries or 0, error=error)
                fut.release()
                outcomes.append(outcome)
                counts["ok" if outcome.status == "ok" else "failed"] += 1
                tiles_finished += outcome.tiles
                with lock:
                    live.pop(job.stem, None)
                    finished.add(job.stem)
                report_outcome(outcome, console)
                if tables is not None:
                    tables.add(outcome, job.position)
                    tables.write()
                bar.update(1)
            with lock:
                running = len(live)
                tiles_live = sum(d for d, _ in live.values())
            elapsed = time.monotonic() - t0
            rate = (tiles_finished + tiles_live) / elapsed if elapsed > 0 else 0.0
            bar.set_postfix_str(f"ok {counts['ok']}, failed {counts['failed']}, running {running}, "
                                f"{rate:.1f} tiles/s", refresh=True)
            if tables is not None:
                tables.flush()
            session.heal()
            top_up()
            if not batch:
                time.sleep(0.2)
    except BaseException:
        for fut in list(futures):
            fut.cancel()
        raise
    finally:
        bar.close()
        console.bar = None
        try:
            client.unsubscribe_topic(PROGRESS_TOPIC)
        except Exception as exc:  # noqa: BLE001 - the client may be going away
            log.debug("unsubscribe: %s", exc)
    return outcomes


def run_info(settings: CohortSettings, spec: Any, options: dict[str, Any], cluster: str,
             retries: int | None) -> dict[str, Any]:
    from cellview.outputs.export import versions

    info_versions = versions()
    for mod in ("dask", "distributed"):
        m = sys.modules.get(mod)
        if m is not None:
            info_versions[mod] = getattr(m, "__version__", "")
    return {
        "cluster": cluster,
        "retries": retries,
        "model": {"name": spec.name, "version": spec.version, "sha256": spec.onnx_sha256,
                  "path": str(spec.onnx_path), "precision_requested": settings.params.precision,
                  "run_sha256": settings.result_sha256},
        "parameters": settings.params.to_dict(),
        "export_options": options,
        "versions": info_versions,
        "command": sys.argv[:1] + [a for a in sys.argv[1:]],
    }
