"""`cellview` command line: the viewer, `analyze`, `info`, and the training commands.

`analyze` is the core pipeline in a plain loop: one bad slide never stops a batch; failures
are listed at the end and make the exit code non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cellview import __version__
from cellview.errors import CellviewError, SlideError

log = logging.getLogger("cellview")

SUBCOMMANDS = ("analyze", "info", "train", "evaluate", "export", "models")


def __getattr__(name: str):
    """``discover_slides`` and ``output_stem`` moved to cellview.cohort; imported lazily (start-up time)."""
    if name in ("discover_slides", "output_stem"):
        from cellview import cohort

        return getattr(cohort, name)
    raise AttributeError(name)


# ----------------------------------------------------------------------------- analyze


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name in models/ or path to an .onnx with its .json sidecar "
                                   "(default: colon-he)")
    p.add_argument("--mpp", type=float, help="µm per pixel at level 0, for slides/images that do not say")
    p.add_argument("--whole-image", action="store_true",
                   help="classify each image as one tile resized to the model input (scale unknown)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="tile reader threads")
    p.add_argument("--tissue-threshold", type=float, default=0.25,
                   help="minimum tissue fraction for a tile to be analysed (0–1)")
    p.add_argument("--tissue-method", choices=("saturation", "od"), default="saturation")
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction (0 to <0.9)")
    p.add_argument("--nuclei", action="store_true",
                   help="also measure nuclei per tile (count, density/mm², area µm², shape); adds CSV columns")


def _params_from_args(args: argparse.Namespace):
    from cellview.results import AnalysisParams
    from cellview.tissue import TissueParams

    return AnalysisParams(
        tissue=TissueParams(method=args.tissue_method),
        tissue_threshold=args.tissue_threshold,
        overlap=args.overlap,
        whole_image=args.whole_image,
        mpp_um=args.mpp,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        nuclei=args.nuclei,
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    """Plan the cohort, run it in this process or on Dask, keep cohort.csv/json/html current."""
    from dataclasses import replace

    from cellview.cohort import (
        CohortSettings,
        Console,
        plan_cohort,
        report_outcome,
        run_in_process,
        run_info,
        run_on_dask,
    )
    from cellview.cohort_report import CohortTables
    from cellview.export import FORMATS, export_options
    from cellview.model import ModelSpec, OnnxClassifier, resolve_model

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
                                    intra_op_threads=1 if on_cluster else None)
    except CellviewError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details:
            print(f"  details: {exc.details}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    region_confidence = None if args.no_regions else args.region_confidence
    options = export_options(formats, args.png_size, region_confidence)
    settings = CohortSettings(
        model_path=str(spec.onnx_path.resolve()), model_sha256=spec.onnx_sha256, device=args.device,
        params=_params_from_args(args), formats=tuple(formats), png_size_px=args.png_size,
        region_confidence=region_confidence, use_cache=not args.no_cache,
    )
    jobs, known, n_slides = plan_cohort(args.paths, out_dir, settings, options, force=args.force)
    console = Console(sys.stdout, sys.stderr, quiet=args.quiet, model_name=spec.name)
    session = None
    if on_cluster:
        try:
            from cellview.cohort import DaskSession
        except ImportError as exc:  # pragma: no cover - depends on the install
            print(f"error: --cluster needs dask.distributed ({exc}); install it with pip install 'cellview[cluster]'",
                  file=sys.stderr)
            return 2
        try:
            session = DaskSession(args.cluster, args.scheduler_file, args.retries) if jobs else None
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
    if n_slides > 1 or on_cluster:
        settings = replace(settings, thumb_px=320)
        retries = (session.allowed_failures if session is not None else args.retries) if on_cluster else None
        where = session.description if session is not None else ("Dask" if on_cluster else "in process")
        tables = CohortTables(out_dir, run_info(settings, spec, options, where, retries), n_slides)
    for position, outcome in known:
        report_outcome(outcome, console)
        if tables is not None:
            tables.add(outcome, position)
    outcomes = [o for _, o in known]
    try:
        if session is not None:
            outcomes += run_on_dask(session, jobs, settings, tables, console)
        elif jobs:
            outcomes += run_in_process(jobs, settings, classifier, tables, console)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if tables is not None:
            tables.write("interrupted", force=True)
        return 130
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


def cmd_info(args: argparse.Namespace) -> int:
    from cellview.slide import describe, open_slide

    status = 0
    for p in args.paths:
        try:
            with open_slide(p, mpp_um=args.mpp) as slide:
                print(describe(slide))
        except SlideError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            status = 1
    return status


def cmd_models(args: argparse.Namespace) -> int:
    from cellview.model import DEFAULT_MODEL, ModelSpec, available_models, models_dir

    models = available_models()
    if not models:
        print(f"No models in {models_dir()}.")
        return 1
    for name, path in models.items():
        try:
            spec = ModelSpec.load(path)
            mark = " (default)" if name == DEFAULT_MODEL else ""
            print(f"{name}{mark}: {len(spec.class_names)} classes {', '.join(spec.class_names)}; "
                  f"{spec.patch_size_pixels} px at {spec.spacing_um_px} µm/px")
        except CellviewError as exc:
            print(f"{name}: INVALID: {exc.message}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellview", description="Tile-level malignant / benign / normal "
                                     "classification of histology slides and images.")
    parser.add_argument("--version", action="version", version=f"cellview {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show technical details of errors")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("analyze", help="analyse slides or folders of slides headlessly")
    p.add_argument("paths", nargs="+", help="slides, images or folders")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _add_analysis_options(p)
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
    p.add_argument("--retries", type=int, default=2,
                   help="on a local cluster: times a slide is retried after its worker process dies (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("info", help="print vendor, levels, dimensions and mpp of slides")
    p.add_argument("paths", nargs="+")
    p.add_argument("--mpp", type=float)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the models in models/")
    p.set_defaults(func=cmd_models)

    try:
        from cellview.train.cli import add_parsers
    except ImportError:
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    return parser


def build_gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellview", description="Open the CellView viewer. Sub-commands: "
                                + ", ".join(SUBCOMMANDS) + " (cellview COMMAND --help).")
    p.add_argument("--version", action="version", version=f"cellview {__version__}")
    p.add_argument("slide", nargs="?", help="slide or image to open")
    p.add_argument("--kiosk", action="store_true", help="full-screen kiosk mode")
    p.add_argument("--watch", help="kiosk: folder to watch for new slides")
    p.add_argument("--outbox", help="kiosk: folder for exported results")
    p.add_argument("--kiosk-config", help="kiosk: settings file")
    # Packaging check (bundles): start offscreen, open the slide, wait for it to paint, exit 0.
    p.add_argument("--smoke-test", metavar="SLIDE", help=argparse.SUPPRESS)
    _add_analysis_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="cellview: %(message)s")
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in SUBCOMMANDS or any(a in ("-h", "--help") for a in argv[:1]):
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        return int(args.func(args) or 0)
    args = build_gui_parser().parse_args(argv)
    try:
        from cellview.gui.app import run_gui
    except ImportError as exc:
        print(f"The viewer is not available ({exc}). Headless analysis: cellview analyze SLIDE --out DIR",
              file=sys.stderr)
        return 2
    return int(run_gui(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
