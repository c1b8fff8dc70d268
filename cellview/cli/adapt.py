"""`cellview adapt`: refit a model's head on a lab's labels; prints before / after and the decision, writes a new model.

Exit status (the printed words say the same):
  0  better: the adapted model is better on your labels, and written
  1  better and written, but some labelled files could not be used (listed)
  2  nothing adapted: bad input (labels, model, options) — the message says what to change
  3  not distinguishable: your labels cannot tell the two models apart; both figures are printed, and the
     adapted model is written or not as --if-uncertain says (the words say which)
  4  worse: the adapted model is worse on your labels; not written (unless --force)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.options import add_analysis_options, params_from_args

EXIT_BETTER, EXIT_UNREADABLE, EXIT_INPUT, EXIT_UNCERTAIN, EXIT_WORSE = 0, 1, 2, 3, 4
IF_UNCERTAIN = ("write", "keep-base")
DEFAULT_IF_UNCERTAIN = "write"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="refit a model's head on a lab's labelled images or slides; writes a new model "
                                     "with a before / after card", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="LABELS: a CSV with columns image,label (paths relative to the CSV unless absolute; label "
                              "= a class of the model or a category: normal, benign, malignant), optionally an "
                              "annotations column naming a GeoJSON file of that slide, or x,y,width,height (level-0 "
                              "pixels) for a region of a slide (as `cellview suggest` writes them); or a slide's "
                              "GeoJSON annotations (QuPath export, .geojson.gz too, or the viewer's "
                              "SLIDE.labels.geojson) next to the slide.\n\n"
                              "The before / after is cross-validated, and the decision rests on the change's "
                              "bootstrap interval: better (written), not distinguishable (see --if-uncertain) or "
                              "worse (not written unless --force).\n\n"
                              "exit status: 0 better and written; 1 written, some files unusable; 2 bad input; "
                              "3 not distinguishable; 4 worse.")
    p.add_argument("--labels", required=True, action="append", metavar="LABELS",
                   help="labels CSV or GeoJSON (repeatable)")
    p.add_argument("--out", "-o", help="folder for the adapted model (never the base model's; default: your models "
                                       "folder, `cellview models` says where, under --name)")
    p.add_argument("--name", help="name of the adapted model (default: <shipped base>-adapted)")
    p.add_argument("--if-uncertain", choices=IF_UNCERTAIN, default=DEFAULT_IF_UNCERTAIN,
                   help="when your labels cannot tell the adapted model from the base one (exit status 3): write "
                        "it, marked as not shown better, so you can choose which to analyse with (default), or "
                        "keep-base: write nothing")
    p.add_argument("--force", action="store_true", help="write the model whatever the check says (marked as not "
                                                        "better when it is not)")
    p.add_argument("--from-shipped", action="store_true",
                   help="when --model is itself an adapted model, start again from the model it was adapted from")
    p.add_argument("--map", action="append", default=[], metavar="QUPATH_CLASS=LABEL",
                   help="read a QuPath class the model does not know as one of its labels (repeatable; "
                        "LABEL Ignore* leaves it out); classes mapped in the viewer are remembered")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_analysis_options(p, tiles_only=True)
    p.set_defaults(func=cmd_adapt)


def _progress(bar, item, quiet: bool):  # noqa: ANN001, ANN202 - tqdm is imported lazily
    from tqdm import tqdm

    if quiet:
        return bar
    if bar is None or bar.desc != item.stage:
        if bar is not None:
            bar.close()
        bar = tqdm(total=item.total, desc=item.stage, unit="file" if item.stage == "reading" else "fit",
                   leave=False, file=sys.stderr, dynamic_ncols=True)
    bar.n = item.done
    bar.set_postfix_str(item.message[:40])
    bar.refresh()
    return bar


def cmd_adapt(args: argparse.Namespace) -> int:
    """Plan and warn, read the labels, adapt, print before / after and the decision; exit status as the module says."""
    from cellview.analysis.model_lookup import resolve_model, user_models_dir
    from cellview.analysis.model_spec import ModelSpec
    from cellview.lab.adapt import AdaptNotWritten, AdaptPlan, AdaptProgress, AdaptReport, adapt, default_command
    from cellview.lab.classmap import parse_mapping, remembered_mapping
    from cellview.lab.labels import read_labels
    from cellview.lab.modelfolder import describe_base, shipped_base

    bar = None
    report = None
    printed: set[str] = set()  # notes and warnings said before the run are not said again after it
    try:
        spec = ModelSpec.load(resolve_model(args.model))
        if spec.raw.get("adaptation"):
            root = shipped_base(spec)
            if args.from_shipped:
                if root is None:
                    raise CellviewError(f"{spec.name} was adapted from a model that is no longer where it was (or "
                                        "has changed); name that model with --model instead.")
                spec = ModelSpec.load(root)
                print(f"Base: {spec.name} {spec.version} (the shipped model {args.model} was adapted from)",
                      file=sys.stderr)
            else:
                print(f"Base: {describe_base(spec)}."
                      + (f" To start from the shipped {spec.raw['adaptation'].get('shipped_base', {}).get('name')} "
                         "instead: --from-shipped." if root is not None else ""), file=sys.stderr)
        mapping = {**remembered_mapping(), **parse_mapping(args.map)}
        sources, notes = read_labels(args.labels)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        params = params_from_args(args)
        name = args.name or f"{_root_name(spec)}-adapted"
        out = Path(args.out) if args.out else user_models_dir() / name
        writes = "not distinguishable" if args.if_uncertain == "write" else "better"
        for item in adapt(sources, spec, out, params, name=name, force=args.force, command=default_command(),
                          writes=writes, mapping=mapping):
            if isinstance(item, AdaptPlan):
                for note in item.notes:
                    print(f"note: {note}", file=sys.stderr)
                for warning in item.warnings:
                    print(f"warning: {warning}", file=sys.stderr)
                printed.update(item.notes, item.warnings)
            elif isinstance(item, AdaptReport):
                report = item
            elif isinstance(item, AdaptProgress):
                bar = _progress(bar, item, args.quiet)
    except AdaptNotWritten as exc:
        if bar is not None:
            bar.close()
        report = exc.report
        _print_report(report, printed)
        d = report.decision
        print(f"Not written: {exc.message}", file=sys.stderr)
        print("To write it anyway: the same command with --force"
              + ("" if d is not None and d.worse else " (or --if-uncertain write)") + ".", file=sys.stderr)
        return EXIT_WORSE if d is not None and d.worse else EXIT_UNCERTAIN
    except (CellviewError, ValueError) as exc:
        if bar is not None:
            bar.close()
        message = exc.message if isinstance(exc, CellviewError) else str(exc)
        print(f"error: {message}", file=sys.stderr)
        if isinstance(exc, CellviewError) and exc.details and args.verbose:
            print(f"  details: {exc.details}", file=sys.stderr)
        return EXIT_INPUT
    if bar is not None:
        bar.close()
    assert report is not None and report.written is not None
    _print_report(report, printed)
    d = report.decision
    if report.written_because == "chosen":
        print("The adapted model is NOT shown better than the base model: your labels cannot tell them apart "
              f"({d.phrase() if d else ''}). It was written, marked so, and the base model is unchanged: analyse "
              "with either (--if-uncertain keep-base writes nothing in this case).", file=sys.stderr)
    elif report.written_because == "forced" and d is not None:
        print(f"warning: the adapted model is NOT better than the base model on your labels ({d.phrase()}); "
              "written because of --force, and marked so", file=sys.stderr)
    model_arg = name if not args.out else str(report.written)
    print(f"Adapted model written to {report.written.parent} in {report.seconds:.0f} s (model card: "
          f"{report.written.parent / 'MODEL_CARD.md'}). Analyse with: cellview analyze SLIDES --model "
          f"{model_arg}" + (f" --mpp {args.mpp}" if args.mpp else "")
          + (f" --stain-normalize {args.stain_normalize}" if args.stain_normalize != "none" else "") + " --out DIR")
    if d is not None and d.worse:
        return EXIT_WORSE
    if d is not None and not d.better:
        return EXIT_UNCERTAIN
    return EXIT_UNREADABLE if report.lab.unreadable else EXIT_BETTER


def _print_report(report, printed: set[str]) -> None:  # noqa: ANN001 - AdaptReport, imported lazily
    for path, why in report.lab.unreadable:
        print(f"could not use {path}: {why}", file=sys.stderr)
    for note in report.lab.notes:
        if note not in printed:
            print(f"note: {note}", file=sys.stderr)
    for warning in report.warnings:
        if warning not in printed:
            print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    if report.decision is not None:
        print(f"Decision: the adapted model is {report.decision.phrase()}"
              + (f" — {report.decision.note}" if report.decision.note else "") + ".")


def _root_name(spec) -> str:  # noqa: ANN001 - ModelSpec
    """The shipped base's name, so adapting an adapted model does not propose colon-he-adapted-adapted."""
    prov = spec.raw.get("adaptation")
    if isinstance(prov, dict):
        root = prov.get("shipped_base") or prov.get("base") or {}
        if root.get("name"):
            return str(root["name"])
    return spec.name
