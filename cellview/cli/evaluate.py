"""`cellview evaluate`: leave-one-source-out and grouped cross-validation of a training run."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.train import fail, need_torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate", help="leave-one-source-out + grouped cross-validation of a run's recipe (and its test split)",
        description="Retrain the run's recipe on cached features per fold: leave-one-source-out (train on the other "
                    "sources, test on each) and patient/source-group grouped k-fold CV; per source category balanced "
                    "accuracy, per-class recall, confusion matrices and ECE for the confidence-weighted tile vote and "
                    "the mean of tile probabilities. A run with a held-out test split is also evaluated on it.")
    e.add_argument("run", type=Path, help="run folder written by cellview train")
    e.add_argument("--out", type=Path, help="output folder (default RUN/eval)")
    e.add_argument("--protocol", default="loso,cv",
                   help="comma-separated: loso, cv (default both); 'none' for the test split only")
    e.add_argument("--cv-folds", type=int, default=5)
    e.add_argument("--variants", default="",
                   help="also test the fold models with stain normalisation / test-time augmentation: comma-separated "
                        "macenko, reinhard, flips, d4")
    e.add_argument("--quick", action="store_true", help="test split: skip the leakage / shortcut checks")
    e.add_argument("--group", choices=("column", "runs", "near-duplicates", "images"),
                   help="regroup the images by this rule before the folds, to compare groupings on the same features "
                        "(written to RUN/eval-group-RULE unless --out)")
    e.add_argument("--adaptation", action="store_true",
                   help="also the adaptation curve: each leave-one-source-out fold adapted (as cellview adapt does) "
                        "with k = 1, 3, 5, 10 labelled images per category of the held-out source, tested on the rest")
    e.add_argument("--adaptation-draws", type=int, default=10, help="random draws of the labelled images per k")
    e.add_argument("--adaptation-methods", default="prior",
                   help="comma-separated: prior (the shipped one), bank (replay training features) to compare")
    e.add_argument("--card", type=Path, metavar="MODEL_DIR",
                   help="write the adaptation curve into this model folder's MODEL_CARD.md and protocol.json")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if msg := need_torch():
        return fail(msg)
    from cellview.train.evaluate import evaluate_protocols, evaluate_run
    from cellview.train.protocol import PROTOCOLS
    from cellview.train.train import Run

    if not (args.run / "model.pt").exists():
        return fail(f"{args.run} is not a finished training run (no model.pt)")
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip() and p.strip() != "none")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        return fail(f"unknown protocol {bad[0]!r}; use {', '.join(PROTOCOLS)} or none")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    try:
        _, split = Run(args.run).samples()
        if (split == 2).any():
            evaluate_run(args.run, args.out, extra_checks=not args.quick, cv_folds=args.cv_folds)
        if protocols:
            evaluate_protocols(args.run, args.out, protocols, args.cv_folds, variants, group=args.group)
        if args.adaptation:
            _adaptation(args)
    except (CellviewError, ValueError) as exc:  # a damaged run folder, results that cannot be written, bad variant
        return fail(str(exc))
    return 0


def _adaptation(args: argparse.Namespace) -> None:
    """The adaptation curve into RUN/eval (and, with --card, into the model folder's card and protocol.json)."""
    from cellview.train.adaptation import adaptation_curve, write_to_card

    methods = tuple(m.strip() for m in args.adaptation_methods.split(",") if m.strip())
    report = adaptation_curve(args.run, args.out, draws=args.adaptation_draws, methods=methods)
    if args.card:
        command = (f"cellview evaluate {args.run} --adaptation --adaptation-draws {args.adaptation_draws}"
                   + (f" --adaptation-methods {','.join(methods)}" if methods != ("prior",) else ""))
        write_to_card(args.card, report, command)
