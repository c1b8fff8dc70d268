"""`cellview adapt`: refit a model's head on a lab's labels; prints before / after, writes a new model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.options import add_analysis_options, params_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    add_analysis_options(p, tiles_only=True)
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    """Read the labels, adapt, print before / after; one unreadable file is listed and the rest go on."""
    from tqdm import tqdm

    from cellview.analysis.model_lookup import resolve_model, user_models_dir
    from cellview.analysis.model_spec import ModelSpec
    from cellview.lab.adapt import AdaptProgress, AdaptReport, adapt, default_command
    from cellview.lab.labels import read_labels

    bar = None
    try:
        spec = ModelSpec.load(resolve_model(args.model))
        sources, notes = read_labels(args.labels)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        params = params_from_args(args)
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
