"""`cellview` command line: the viewer, `analyze`, `info`, and the training commands.

`analyze` is the core pipeline in a plain loop: one bad slide never stops a batch; failures
are listed at the end and make the exit code non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cellview import __version__
from cellview.analysis.model import DEVICES, PRECISIONS, TTA_MODES
from cellview.analysis.stain import STAIN_METHODS
from cellview.base.errors import CellviewError, MppError, SlideError

log = logging.getLogger("cellview")

SUBCOMMANDS = ("analyze", "info", "train", "evaluate", "export", "models", "explain", "domain", "adapt")


def __getattr__(name: str):
    """``discover_slides`` and ``output_stem`` moved to cellview.scale.cohort; imported lazily (start-up time)."""
    if name in ("discover_slides", "output_stem"):
        from cellview.scale import cohort

        return getattr(cohort, name)
    raise AttributeError(name)


# ----------------------------------------------------------------------------- analyze


def _add_analysis_options(p: argparse.ArgumentParser, tiles_only: bool = False) -> None:
    """The options that shape a run; ``tiles_only``: those that decide which tiles are cut and how (adapt)."""
    p.add_argument("--model", help="model name (`cellview models` lists them) or path to an .onnx with its .json sidecar "
                                   "(default: colon-he)")
    p.add_argument("--mpp", type=float, help="µm per pixel at level 0, for slides/images that do not say")
    if not tiles_only:
        p.add_argument("--whole-image", action="store_true",
                       help="classify each image as one tile resized to the model input (scale unknown)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs: auto takes the best available (TensorRT, then CUDA, then CPU); "
                        "the run says which one it got, and plainly when a GPU asked for is not usable")
    if not tiles_only:  # adapt reads the trained (FP32) weights' features: its head is fitted on them
        _add_precision_option(p)
    p.add_argument("--batch-size", type=int, default=32,
                   help="tiles per model call (default 32): larger is faster on a GPU and needs more memory; "
                        "results do not depend on it")
    p.add_argument("--workers", type=int, default=2, help="tile reader threads")
    p.add_argument("--tissue-threshold", type=float, default=0.25,
                   help="minimum tissue fraction for a tile to be analysed (0–1)")
    p.add_argument("--tissue-method", choices=("saturation", "od"), default="saturation")
    p.add_argument("--stain-normalize", choices=STAIN_METHODS, default="none",
                   help="map each slide's stain onto the model's training stain before classifying "
                        "(Macenko or Reinhard; needs a model whose sidecar stores its reference stain)")
    if tiles_only:
        return
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction (0 to <0.9)")
    p.add_argument("--nuclei", action="store_true",
                   help="also measure nuclei per tile (count, density/mm², area µm², shape); adds CSV columns")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: average each tile's probabilities over its 4 flips or all 8 "
                        "flips/rotations (4× / 8× the inference time)")


def _add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="weights to run: auto = the model's validated INT8 copy on a CPU (else FP32), FP16 on a GPU; "
                        "fp32 = the trained weights; int8 / fp16 = that copy (the status line says which ran)")


def _params_from_args(args: argparse.Namespace):
    from cellview.analysis.results import AnalysisParams
    from cellview.analysis.tissue import TissueParams

    return AnalysisParams(
        tissue=TissueParams(method=args.tissue_method),
        tissue_threshold=args.tissue_threshold,
        overlap=getattr(args, "overlap", 0.0),
        whole_image=getattr(args, "whole_image", False),
        mpp_um=args.mpp,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        nuclei=getattr(args, "nuclei", False),
        stain_normalize=args.stain_normalize,
        tta=getattr(args, "tta", "none"),
        precision=getattr(args, "precision", "fp32"),
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    """Plan the cohort, run it in this process or on Dask, keep cohort.csv/json/html current."""
    from dataclasses import replace

    from cellview.analysis.model import ModelSpec, OnnxClassifier, resolve_model
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
    out_dir = Path(args.out)
    region_confidence = None if args.no_regions else args.region_confidence
    options = export_options(formats, args.png_size, region_confidence)
    settings = CohortSettings(
        model_path=str(spec.onnx_path.resolve()), model_sha256=spec.onnx_sha256,
        run_sha256=classifier.spec.onnx_sha256, domain_sha256=spec.domain_sha256 or "", device=args.device,
        params=_params_from_args(args), formats=tuple(formats), png_size_px=args.png_size,
        region_confidence=region_confidence, use_cache=not args.no_cache,
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


def cmd_info(args: argparse.Namespace) -> int:
    from cellview.slides.slide import describe, open_slide

    status = 0
    for p in args.paths:
        try:
            with open_slide(p, mpp_um=args.mpp) as slide:
                print(describe(slide))
        except SlideError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            if exc.details and getattr(args, "verbose", False):
                print(f"  details: {exc.details}", file=sys.stderr)
            status = 1
    return status


def model_lookup_lines() -> list[str]:
    """The model lookup order with this machine's folders (model.model_roots documents the rule)."""
    from cellview.analysis.model import ORIGINS, model_roots

    roots = {r.origin: r.path for r in model_roots(keep_duplicates=True)}
    rows = [("--model PATH", "a model file or folder named on the command line")]
    seen: set[Path] = set()
    for origin, label in ORIGINS.items():
        path = roots.get(origin)
        if path is None:
            note = "not set" if origin == "env" else "none in this install"
        else:
            note = str(path) + ("" if path.is_dir() else " (absent)")
            note += " (the same folder as above)" if path.resolve() in seen else ""
            note += "  ← cellview export / adapt save here" if origin == "user" else ""
            seen.add(path.resolve())
        rows.append((label, note))
    lines = ["Model lookup (a name is taken from the first place that has it):"]
    lines += [f"  {i}. {label:<23} {note}" for i, (label, note) in enumerate(rows, start=1)]
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    from cellview.analysis.model import DEFAULT_MODEL, ORIGINS, ModelSpec, model_entries

    print("\n".join(model_lookup_lines()))
    entries = model_entries(include_hidden=True)
    print()
    if not entries:
        print("No models found in these folders.")
        return 1
    for e in entries:
        marks = [ORIGINS[e.origin]] + (["default"] if e.name == DEFAULT_MODEL and not e.hidden_by else [])
        head = f"{e.name} ({', '.join(marks)})"
        if e.hidden_by:
            print(f"{head}: hidden by the {e.name} in {ORIGINS[e.hidden_by]}; {e.path.parent}")
            continue
        try:
            spec = ModelSpec.load(e.path)
            domain = "domain score" if spec.domain is not None else "no domain score"
            adapted = spec.raw.get("adaptation") if isinstance(spec.raw.get("adaptation"), dict) else None
            origin = (f"; adapted from {adapted['base']['name']} {adapted['base']['version']} on {adapted['date']}"
                      if adapted else "")
            print(f"{head}: {len(spec.class_names)} classes {', '.join(spec.class_names)}; "
                  f"{spec.patch_size_pixels} px at {spec.spacing_um_px} µm/px; {domain}{origin}")
        except CellviewError as exc:
            print(f"{head}: INVALID: {exc.message}")
    return 0


def _parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise CellviewError(f"--at must be two level-0 pixel coordinates like 1200,800, got {text!r}.") from exc
    return x, y


def cmd_explain(args: argparse.Namespace) -> int:
    from cellview.analysis.explain import explain_at, explanation_png, resolve_class
    from cellview.analysis.model import ModelSpec, OnnxClassifier, resolve_model
    from cellview.analysis.results import AnalysisParams
    from cellview.base.files import atomic_write_bytes

    try:
        x, y = _parse_point(args.at)
        spec = ModelSpec.load(resolve_model(args.model))
        classifier = OnnxClassifier(spec, device=args.device, precision=args.precision)
        params = AnalysisParams(mpp_um=args.mpp, tissue_threshold=args.tissue_threshold, device=args.device,
                                 stain_normalize=args.stain_normalize, precision=args.precision)
        try:
            ex = explain_at(args.slide, classifier, x, y, params, resolve_class(args.class_name, spec.class_names))
        except MppError as exc:  # explain has no --whole-image: a single tile is explained at the model's scale
            raise exc.advise("Pass it with --mpp (e.g. --mpp 0.5 for a 20x scan).") from exc
        atomic_write_bytes(Path(args.out), explanation_png(ex))
    except CellviewError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details and args.verbose:
            print(f"  details: {exc.details}", file=sys.stderr)
        return 2
    tx, ty, tw, th = ex.rect_l0
    domain = ("domain score: not available for this model" if ex.domain_score is None
              else f"domain score {ex.domain_score:.3f} ({'in domain' if ex.in_domain else 'OUT OF DOMAIN'})")
    call = f"{ex.class_names[ex.pred_class]} {ex.probs[ex.pred_class]:.0%}"
    if not ex.analysed:  # as the picture says: a tile the analysis skips has no call worth reading
        call = f"too little tissue to be analysed (the model would say {call}, which means nothing here)"
    print(f"tile ({tx}, {ty}, {tw}×{th} level-0 px): {call}; map of {ex.class_names[ex.explained_class]}; "
          f"{domain} → {args.out}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Read the labels, adapt, print before / after; one unreadable file is listed and the rest go on."""
    from tqdm import tqdm

    from cellview.analysis.model import ModelSpec, resolve_model, user_models_dir
    from cellview.lab.adapt import AdaptProgress, AdaptReport, adapt, default_command
    from cellview.lab.labels import read_labels

    bar = None
    try:
        spec = ModelSpec.load(resolve_model(args.model))
        sources, notes = read_labels(args.labels)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        params = _params_from_args(args)
        name = args.name or f"{spec.name}-adapted"
        out = Path(args.out) if args.out else user_models_dir() / name
        report = None
        for item in adapt(sources, spec, out, params, name=name, force=args.force,
                          command=default_command()):
            if isinstance(item, AdaptReport):
                report = item
            elif isinstance(item, AdaptProgress) and not args.quiet:
                if bar is None or bar.desc != item.stage:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=item.total, desc=item.stage, unit="file" if item.stage == "reading" else "fit",
                               leave=False, file=sys.stderr, dynamic_ncols=True)
                bar.n = item.done
                bar.set_postfix_str(item.message[:40])
                bar.refresh()
    except CellviewError as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details and args.verbose:
            print(f"  details: {exc.details}", file=sys.stderr)
        return 1 if exc.__class__.__name__ == "AdaptError" else 2
    if bar is not None:
        bar.close()
    assert report is not None
    for path, why in report.lab.unreadable:
        print(f"could not use {path}: {why}", file=sys.stderr)
    for note in report.lab.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    if not report.improved:
        print("warning: the adapted model is NOT better than the base model on your labels; written because of "
              "--force", file=sys.stderr)
    model_arg = name if not args.out else str(report.written)
    print(f"Adapted model written to {report.written.parent} in {report.seconds:.0f} s (model card: "
          f"{report.written.parent / 'MODEL_CARD.md'}). Analyse with: cellview analyze SLIDES --model "
          f"{model_arg}" + (f" --mpp {args.mpp}" if args.mpp else "")
          + (f" --stain-normalize {args.stain_normalize}" if args.stain_normalize != "none" else "") + " --out DIR")
    return 1 if report.lab.unreadable else 0


def cmd_domain(args: argparse.Namespace) -> int:
    from cellview.train.domain import cmd_domain as run

    return run(args)


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
    p.add_argument("--dashboard", metavar="HOST:PORT", default="127.0.0.1:0",
                   help="where a --cluster local run's Dask dashboard listens (default 127.0.0.1:0: this machine "
                        "only, a free port; slide names show on it. 0.0.0.0:8787 shares it with the network)")
    p.add_argument("--retries", type=int, default=2,
                   help="on a local cluster: times a slide is retried after its worker process dies (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("info", help="print vendor, levels, dimensions and mpp of slides")
    p.add_argument("paths", nargs="+")
    p.add_argument("--mpp", type=float)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="where models are looked up, and the models found there")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("explain", help="one picture of what the model looked at for one tile: the patch, its class "
                                       "activation map, the class probabilities and the domain score")
    p.add_argument("slide", help="slide or image")
    p.add_argument("--at", required=True, metavar="L0_X,L0_Y", help="a level-0 pixel inside the tile to explain")
    p.add_argument("--out", "-o", required=True, help="PNG file to write")
    p.add_argument("--model", help="model name (`cellview models` lists them) or path to an .onnx with its .json "
                                   "sidecar (default: colon-he)")
    p.add_argument("--mpp", type=float, help="µm per pixel at level 0, for slides/images that do not say")
    p.add_argument("--class", dest="class_name", help="class whose map to show, by name or index (default: predicted)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs, as for analyze")
    _add_precision_option(p)
    p.add_argument("--tissue-threshold", type=float, default=0.25, help="as for analyze: which tiles the grid keeps")
    p.add_argument("--stain-normalize", choices=STAIN_METHODS, default="none",
                   help="as for analyze: explain the tile as the model saw it after stain normalisation")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("adapt", help="refit a model's head on a lab's labelled images or slides; writes a new model "
                                     "with a before / after card", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="LABELS: a CSV with columns image,label (paths relative to the CSV unless absolute; label "
                              "= a class of the model or a category: normal, benign, malignant), optionally an "
                              "annotations column naming a GeoJSON file of that slide; or a slide's GeoJSON "
                              "annotations (QuPath export, or the viewer's SLIDE.labels.geojson) next to the slide. "
                              "Before / after is cross-validated by image or slide; the model is written only "
                              "when it is better, unless --force.")
    p.add_argument("--labels", required=True, action="append", metavar="LABELS",
                   help="labels CSV or GeoJSON (repeatable)")
    p.add_argument("--out", "-o", help="folder for the adapted model (never the base model's; default: your models "
                                       "folder, `cellview models` says where, under --name)")
    p.add_argument("--name", help="name of the adapted model (default: <base>-adapted)")
    p.add_argument("--force", action="store_true", help="write the model even when it is not better than the base")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_analysis_options(p, tiles_only=True)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("domain", help="out-of-domain statistics of a model: add its feature outputs, fit, evaluate")
    dsub = p.add_subparsers(dest="action", required=True)
    u = dsub.add_parser("upgrade", help="add features / feature_map / cam outputs to a GAP + linear ONNX model "
                                        "(and its FP16 copy) in place; logits stay bit-identical (needs onnx)")
    u.add_argument("model", help="model name (`cellview models`), folder or .onnx")
    for action, text in (("fit", "fit the statistics on the training split, calibrate on the validation split, "
                                 "write domain.npz and record it in the sidecar(s); evaluates too when asked"),
                         ("evaluate", "AUROC of the domain score: test split against other data, slides and "
                                      "generated glass / blur / ink / fold tiles")):
        a = dsub.add_parser(action, help=text)
        a.add_argument("model", help="model name (`cellview models`), folder or .onnx")
        a.add_argument("--run", type=Path, help="training run folder (its samples.json holds the split)")
        a.add_argument("--recipe", help="rebuild the split from this recipe as `cellview train` does (no run folder)")
        a.add_argument("--data-root", type=Path, help="root for the recipes' relative paths (default ../shared/data)")
        a.add_argument("--seed", type=int, default=0, help="split seed with --recipe (cellview train's default 0)")
        a.add_argument("--limit-per-class", type=int, default=0, help="as the run was trained, with --recipe")
        a.add_argument("--other", action="append", metavar="RECIPE[@MPP]",
                       help="other-domain images: a recipe's images (at its spacing, or read as MPP); repeatable")
        a.add_argument("--slide", action="append", help="a slide of other tissue: its tissue and glass tiles; repeatable")
        a.add_argument("--max-per-image", type=int, default=2, help="tiles per other-domain image (default 2)")
        a.add_argument("--card", action="store_true", help="write the results into the model card")
        a.add_argument("--out", help="also write the evaluation JSON here")
        a.add_argument("--cache", help="folder for cached features (re-runs are quick)")
        if action == "fit":
            a.add_argument("--components", type=int, help="principal directions to keep (default: chosen by "
                                                          "held-out likelihood)")
            a.add_argument("--describe", help="what the training data is, for the banner (default: from the recipe)")
    p.set_defaults(func=cmd_domain)

    try:
        from cellview.train.cli import add_parsers
    except ImportError:
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    return parser


def commands_epilog() -> str:
    """The sub-commands with their one-line help, for the top-level help."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = ["commands (headless; cellview COMMAND --help for their options):"]
    lines += [f"  {name:<10} {helps.get(name, '')}" for name in sub.choices]
    lines += ["", "examples:", "  cellview slide.svs                      open a slide in the viewer",
              "  cellview --kiosk --watch /data/inbox    full-screen kiosk that analyses dropped slides",
              "  cellview analyze slides/ --out results  analyse a folder headlessly"]
    return "\n".join(lines + ["", kiosk_epilog()])


def kiosk_epilog() -> str:
    """How to leave the kiosk and where its settings live (the top-level help's last paragraph)."""
    from cellview.kiosk.core import KioskSettings, default_settings_path

    chord = KioskSettings().exit_chord
    return "\n".join([
        "kiosk:",
        f"  leave it with {chord} (the \"exit_chord\" setting), then the PIN if one is set (\"pin\");",
        "  nothing else closes it (no window buttons, Alt+F4 or Esc).",
        f"  settings: {default_settings_path()} (JSON; --kiosk-config FILE reads another),",
        "  e.g. {\"watch_dir\": \"/data/inbox\", \"outbox_dir\": \"/data/outbox\", \"pin\": \"2468\", \"mpp_um\": 0.5};",
        "  every setting is described in the README (section \"Kiosk\").",
    ])


def build_gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cellview", usage="cellview [SLIDE] [--kiosk] [options]\n       cellview COMMAND [options]",
        description="Open the CellView viewer (a slide or image, if given), or with --kiosk the full-screen "
                    "touch kiosk; or run a headless COMMAND.",
        epilog=commands_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cellview {__version__}")
    p.add_argument("slide", nargs="?", help="slide or image to open in the viewer")
    p.add_argument("--kiosk", action="store_true", help="full-screen kiosk mode (watch folder, touch controls)")
    p.add_argument("--watch", help="kiosk: folder to watch for new slides")
    p.add_argument("--outbox", help="kiosk: folder for exported results")
    p.add_argument("--kiosk-config", metavar="FILE",
                   help="kiosk: settings file (default: the kiosk.json named below; when FILE does not exist the "
                        "defaults apply and the kiosk says so)")
    # Packaging check (bundles): start offscreen, open the slide, wait for it to paint, exit 0.
    p.add_argument("--smoke-test", metavar="SLIDE", help=argparse.SUPPRESS)
    _add_analysis_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="cellview: %(message)s")
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in SUBCOMMANDS:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:  # e.g. a second Ctrl-C while a cohort shuts down: no traceback
            print("interrupted", file=sys.stderr)
            return 130
    args = build_gui_parser().parse_args(argv)
    if args.smoke_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from cellview.qtcheck import explain_import_error, viewer_problem

    problem = viewer_problem()  # before Qt loads: Qt aborts the process without saying what to install
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        from cellview.gui.app import run_gui
    except ImportError as exc:
        print(explain_import_error(exc), file=sys.stderr)
        return 2
    return int(run_gui(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
