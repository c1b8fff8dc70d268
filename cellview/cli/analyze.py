"""`cellview analyze`: the cohort plan run in this process or on Dask; cohort.csv/json/html kept current (for more
than one slide, or any folder of them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.options import add_analysis_options, params_from_args

DEFAULT_OUT = "cellview-results"
"""The output folder of a run given no ``--out`` (``cellview analyze FOLDER --model M`` is a whole command)."""


def default_out_dir() -> tuple[Path, str]:
    """``./cellview-results``, or the documents folder's CellView/cellview-results when the current folder cannot be
    written; and a note saying where the outputs go."""
    from cellview.base.files import default_export_dir, writable_dir

    here, note = writable_dir(Path.cwd(), default_export_dir())
    out = here / DEFAULT_OUT
    return out, note or f"No --out given: outputs in {out}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyse slides or folders of slides headlessly")
    p.add_argument("paths", nargs="+", help="slides, images or folders")
    p.add_argument("--out", "-o", help=f"output folder (default: ./{DEFAULT_OUT} in the current folder, or in your "
                                       "documents folder's CellView when the current one cannot be written)")
    add_analysis_options(p)
    p.add_argument("--formats", default="csv,geojson,png,json", help="comma-separated: csv,geojson,png,json")
    p.add_argument("--png-size", type=int, default=2048, help="longest side of the annotated PNG")
    p.add_argument("--region-confidence", type=float, default=0.5,
                   help="minimum confidence of a malignant tile to join a malignant region (0–1)")
    p.add_argument("--no-regions", action="store_true",
                   help="leave the malignant-region outlines out of the GeoJSON and PNG")
    p.add_argument("--force", action="store_true", help="re-analyse slides whose outputs are up to date")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    p.add_argument("--cluster", metavar="local[:N]|ADDRESS",
                   help="analyse on Dask: local[:N] starts N worker processes (default one per core); "
                        "tcp://HOST:PORT uses a running scheduler (needs the 'cluster' extra)")
    p.add_argument("--scheduler-file", metavar="FILE", help="Dask scheduler file of a running cluster")
    p.add_argument("--dashboard", metavar="HOST:PORT", default="127.0.0.1:0",
                   help="where a --cluster local run's Dask dashboard listens (default 127.0.0.1:0: this machine "
                        "only, a free port; slide names show on it. 0.0.0.0:8787 shares it with the network)")
    p.add_argument("--retries", type=int, default=2,
                   help="on a local cluster: times a slide is retried after its worker process dies (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)


def _is_batch_folder(path: Path) -> bool:
    """A folder of slides or images gets the cohort tables even when it holds one (a DICOM slide's own folder
    is one slide, not a batch)."""
    if not path.is_dir():
        return False
    try:
        return not any(f.suffix.lower() == ".dcm" for f in path.iterdir())
    except OSError:
        return False


def cmd_analyze(args: argparse.Namespace) -> int:
    """Plan the cohort, run it in this process or on Dask, keep cohort.csv/json/html current."""
    from dataclasses import replace

    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.outputs.cohort_report import CohortTables
    from cellview.outputs.export import FORMATS, export_options
    from cellview.scale.cohort import (
        CohortSettings,
        Console,
        plan_cohort,
        report_outcome,
        run_in_process,
        run_info,
        run_on_dask,
        stop_on_signals,
    )

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        print(f"error: unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if "json" not in formats:
        formats.append("json")  # the metadata is what makes re-runs skip finished slides
    on_cluster = bool(args.cluster or args.scheduler_file)
    if args.retries < 0:
        print("error: --retries must be 0 or more", file=sys.stderr)
        return 2
    try:
        spec = ModelSpec.load(resolve_model(args.model))
        # On a cluster the workers load their own copy; here it is only checked that ONNX Runtime takes it.
        classifier = OnnxClassifier(spec, device="cpu" if on_cluster else args.device, max_batch=args.batch_size,
                                    intra_op_threads=1 if on_cluster else None, precision=args.precision)
    except CellviewError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details:
            print(f"  details: {exc.details}", file=sys.stderr)
        return 2
    if args.stain_normalize != "none" and spec.stain_reference is None:
        print(f"error: stain normalisation is unavailable for the model {spec.name}: its sidecar has no reference "
              "stain (use --stain-normalize none, or a model exported with one)", file=sys.stderr)
        return 2
    if args.out:
        out_dir = Path(args.out)
    else:
        out_dir, note = default_out_dir()
        print(note, file=sys.stderr)
    region_confidence = None if args.no_regions else args.region_confidence
    options = export_options(formats, args.png_size, region_confidence)
    settings = CohortSettings(
        model_path=str(spec.onnx_path.resolve()), model_sha256=spec.onnx_sha256,
        run_sha256=classifier.spec.onnx_sha256, domain_sha256=spec.domain_sha256 or "", device=args.device,
        params=params_from_args(args), formats=tuple(formats), png_size_px=args.png_size,
        region_confidence=region_confidence, use_cache=not args.no_cache, call=spec.call,
    )
    jobs, known, n_slides = plan_cohort(args.paths, out_dir, settings, options, force=args.force)
    console = Console(sys.stdout, sys.stderr, quiet=args.quiet, model_name=spec.name)
    session = None
    if on_cluster:
        try:
            from cellview.scale.cohort import DaskSession
        except ImportError as exc:  # pragma: no cover - depends on the install
            print(f"error: --cluster needs dask.distributed ({exc}); install it with pip install 'cellview[cluster]'",
                  file=sys.stderr)
            return 2
        try:
            session = DaskSession(args.cluster, args.scheduler_file, args.retries, args.dashboard) if jobs else None
        except ImportError as exc:
            print(f"error: --cluster needs dask.distributed ({exc}); install it with pip install 'cellview[cluster]'",
                  file=sys.stderr)
            return 2
        except (OSError, TimeoutError, ValueError) as exc:
            print(f"error: cannot start or reach the Dask cluster: {exc}", file=sys.stderr)
            return 2
        if session is not None:
            settings = replace(settings, ort_threads=session.ort_threads())
            print(f"Model {spec.name} {spec.version}".rstrip() + f" on {session.description} "
                  f"({session.n_workers} workers)", file=sys.stderr)
            if session.dashboard:
                print(f"Dask dashboard: {session.dashboard}", file=sys.stderr)
    else:
        print(f"Model {classifier.describe()}", file=sys.stderr)
    tables = None
    if n_slides > 1 or on_cluster or any(_is_batch_folder(Path(p)) for p in args.paths):
        settings = replace(settings, thumb_px=320)
        retries = (session.allowed_failures if session is not None else args.retries) if on_cluster else None
        where = session.description if session is not None else ("Dask" if on_cluster else "in process")
        tables = CohortTables(out_dir, run_info(settings, spec, options, where, retries), n_slides)
    for position, outcome in known:
        report_outcome(outcome, console)
        if tables is not None:
            tables.add(outcome, position)
    outcomes = [o for _, o in known]
    with stop_on_signals() as stopped_by:
        try:
            if session is not None:
                outcomes += run_on_dask(session, jobs, settings, tables, console)
            elif jobs:
                outcomes += run_in_process(jobs, settings, classifier, tables, console)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            if tables is not None:
                tables.write("interrupted", force=True)
            return 128 + (stopped_by[0] if stopped_by else 2)
        finally:
            if session is not None:
                session.close()
    if tables is not None:
        tables.write("complete", force=True)
    n_ok = sum(o.status == "ok" for o in outcomes)
    n_skipped = sum(o.status == "skipped" for o in outcomes)
    failures = [o for o in outcomes if o.status == "failed"]
    print(f"{n_ok} analysed, {n_skipped} up to date, {len(failures)} failed; outputs in {out_dir}", file=sys.stderr)
    if tables is not None:
        print(f"Cohort table: {out_dir / 'cohort.csv'} (and cohort.json, cohort.html)", file=sys.stderr)
    if failures:
        print("Failures:", file=sys.stderr)
        for o in sorted(failures, key=lambda o: o.path):
            print(f"  {o.path}: {o.error}", file=sys.stderr)
        return 1
    return 0
