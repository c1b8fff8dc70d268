"""`cellview domain upgrade|fit|evaluate`: a model's out-of-domain statistics (the work is in train.domain)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def cmd_domain(args: argparse.Namespace) -> int:
    from cellview.train.domain import cmd_domain as run

    return run(args)
