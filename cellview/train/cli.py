"""The ``train``, ``evaluate`` and ``export`` sub-commands; torch is imported only when one runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.train import RECIPES


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a tile classifier (needs the 'train' extra)",
        description="Train a tile classifier: frozen-feature linear head, optionally fine-tuning the last blocks.",
    )
    p.add_argument("--recipe", help=f"recipe JSON, or a bundled name ({', '.join(_recipe_names())})")
    p.add_argument("--data", action="append", default=[],
                   help="folder of class folders, or CSV with path,label[,group] (repeatable); instead of --recipe")
    p.add_argument("--classes", help="JSON file or string: class → category or {category, color}")
    p.add_argument("--spacing", type=float, default=0.5, help="µm/px of --data images and of the model (default 0.5)")
    p.add_argument("--name", default="model", help="model name (with --data)")
    p.add_argument("--data-root", type=Path, help="root for a recipe's relative paths (default: ../shared/data)")
    p.add_argument("--out", type=Path, required=True, help="run folder (features, checkpoints, model.pt)")
    p.add_argument("--arch", default="efficientnet-lite0", help="efficientnet-lite0 (default), efficientnet-lite1, efficientnet-lite2 or a torchvision model")
    p.add_argument("--patch", type=int, help="tile size in px (default: recipe's, else 224)")
    p.add_argument("--views", type=int, default=8, help="augmented views per 224 px of image area (default 8); 0: train on the analysis tiles themselves, unaugmented")
    p.add_argument("--head-epochs", type=int, default=40)
    p.add_argument("--finetune-blocks", type=int, default=0, help="last blocks to fine-tune (0 = linear head only)")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--cache-blocks", type=int, default=-1,
                   help="cache the activations entering the last N blocks (≥ --finetune-blocks; default: the same), "
                        "so one cache serves several fine-tuning depths")
    p.add_argument("--balance", default="category_source",
                   choices=("class", "class_source", "category_source", "category_source_sqrt", "source_category"),
                   help="loss weights: categories equal, classes by √size within a category, sources equal within "
                        "a class (default), or the older class-based schemes")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--holdout", choices=("split", "none"), default="split",
                   help="split: grouped train/val/test (70/15/15); none: train on every image with fixed epochs "
                        "(the figures then come from cellview evaluate's cross-validation)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (smoke tests)")
    p.add_argument("--no-pretrained", action="store_true", help="random initial weights (tests only)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation that follows training")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser(
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
    e.add_argument("--adaptation", action="store_true",
                   help="also the adaptation curve: each leave-one-source-out fold adapted (as cellview adapt does) "
                        "with k = 1, 3, 5, 10 labelled images per category of the held-out source, tested on the rest")
    e.add_argument("--adaptation-draws", type=int, default=10, help="random draws of the labelled images per k")
    e.add_argument("--adaptation-methods", default="prior",
                   help="comma-separated: prior (the shipped one), bank (replay training features) to compare")
    e.add_argument("--card", type=Path, metavar="MODEL_DIR",
                   help="write the adaptation curve into this model folder's MODEL_CARD.md and protocol.json")
    e.set_defaults(func=cmd_evaluate)

    x = subparsers.add_parser("export", help="export a run as ONNX + sidecar + model card (+ TorchScript/WSInfer)")
    x.add_argument("run", type=Path, help="run folder written by cellview train")
    x.add_argument("--out", type=Path, help="model folder (default: your models folder / the recipe's name, where "
                                            "`cellview models` finds it; models/NAME in a checkout to ship it)")
    x.add_argument("--version", default="1.0.0")
    x.add_argument("--no-wsinfer", action="store_true")
    x.add_argument("--no-fp16", action="store_true", help="skip the half-precision GPU copy")
    x.add_argument("--no-domain", action="store_true", help="skip fitting the out-of-domain statistics")
    x.add_argument("--no-int8", action="store_true", help="skip the INT8 copy for CPUs")
    x.add_argument("--int8-only", action="store_true",
                   help="only (re)make and validate the INT8 copy of the model already in --out (its model.onnx is "
                        "not touched); RUN gives the calibration images and the protocol's fold heads")
    x.add_argument("--data-root", type=Path, help="data folder the INT8 copy is validated on (default ../shared/data)")
    x.set_defaults(func=cmd_export)


def _recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.json"))


def _fail(msg: str) -> int:
    print(f"cellview: {msg}", file=sys.stderr)
    return 2


def _need_torch() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "training needs PyTorch: pip install 'cellview[train]'"
    return None


def cmd_train(args: argparse.Namespace) -> int:
    if msg := _need_torch():
        return _fail(msg)
    from cellview.base.errors import CellviewError
    from cellview.train import data as D
    from cellview.train import default_data_dir
    from cellview.train.backbone import BackboneError
    from cellview.train.train import TrainConfig, command_line, run_training

    try:
        if args.recipe:
            path = Path(args.recipe)
            if not path.exists() and (RECIPES / f"{args.recipe}.json").exists():
                path = RECIPES / f"{args.recipe}.json"
            recipe = D.load_recipe(path, args.data_root or default_data_dir())
        elif args.data:
            recipe = D.recipe_from_args(args.data, args.classes, args.spacing, args.patch or 224, args.name)
        else:
            return _fail("give --recipe or --data")
        if args.patch:
            recipe.patch_size = args.patch
        cfg = TrainConfig(arch=args.arch, views=args.views, head_epochs=args.head_epochs,
                          finetune_blocks=args.finetune_blocks, finetune_epochs=args.finetune_epochs,
                          finetune_lr=args.finetune_lr, batch_size=args.batch_size, seed=args.seed,
                          device=args.device, threads=args.threads, limit_per_class=args.limit_per_class,
                          pretrained=not args.no_pretrained, cache_blocks=args.cache_blocks, balance=args.balance,
                          label_smoothing=args.label_smoothing, holdout=args.holdout)
        run = run_training(recipe, args.out, cfg, command_line())
        if not args.no_eval:
            from cellview.train.evaluate import evaluate_run

            evaluate_run(run)
    except (D.DataError, BackboneError, CellviewError, ValueError) as exc:  # e.g. a damaged run folder
        return _fail(str(exc))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if msg := _need_torch():
        return _fail(msg)
    from cellview.base.errors import CellviewError
    from cellview.train.evaluate import evaluate_protocols, evaluate_run
    from cellview.train.protocol import PROTOCOLS
    from cellview.train.train import Run

    if not (args.run / "model.pt").exists():
        return _fail(f"{args.run} is not a finished training run (no model.pt)")
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip() and p.strip() != "none")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        return _fail(f"unknown protocol {bad[0]!r}; use {', '.join(PROTOCOLS)} or none")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    try:
        _, split = Run(args.run).samples()
        if (split == 2).any():
            evaluate_run(args.run, args.out, extra_checks=not args.quick, cv_folds=args.cv_folds)
        if protocols:
            evaluate_protocols(args.run, args.out, protocols, args.cv_folds, variants)
        if args.adaptation:
            _adaptation(args)
    except (CellviewError, ValueError) as exc:  # a damaged run folder, results that cannot be written, bad variant
        return _fail(str(exc))
    return 0


def _adaptation(args: argparse.Namespace) -> None:
    """The adaptation curve into RUN/eval (and, with --card, into the model folder's card and protocol.json)."""
    import json

    from cellview.base.files import atomic_write_text
    from cellview.train.adaptation import SECTION, adaptation_curve, markdown
    from cellview.train.domain import update_card

    methods = tuple(m.strip() for m in args.adaptation_methods.split(",") if m.strip())
    report = adaptation_curve(args.run, args.out, draws=args.adaptation_draws, methods=methods)
    if args.card:
        command = (f"cellview evaluate {args.run} --adaptation --adaptation-draws {args.adaptation_draws}"
                   + (f" --adaptation-methods {','.join(methods)}" if methods != ("prior",) else ""))
        update_card(args.card / "MODEL_CARD.md", markdown(report, command), SECTION, after="## Headline")
        protocol = args.card / "protocol.json"
        if protocol.exists():
            data = json.loads(protocol.read_text(encoding="utf-8"))
            data["adaptation"] = report
            atomic_write_text(protocol, json.dumps(data, indent=2) + "\n")


def cmd_export(args: argparse.Namespace) -> int:
    if msg := _need_torch():
        return _fail(msg)
    from cellview.base.errors import CellviewError
    from cellview.train.export import export_int8, export_run

    if not (args.run / "model.pt").exists():
        return _fail(f"{args.run} is not a finished training run (no model.pt)")
    if args.int8_only and args.no_int8:
        return _fail("--int8-only and --no-int8 contradict each other")
    try:
        out = args.out
        if out is None:
            from cellview.analysis.model import user_models_dir
            from cellview.train.train import Run

            out = user_models_dir() / Run(args.run).recipe().name
        if args.int8_only:
            export_int8(args.run, out, args.data_root)
        else:
            export_run(args.run, out, args.version, wsinfer=not args.no_wsinfer, fp16=not args.no_fp16,
                       domain=not args.no_domain, int8=not args.no_int8, data_root=args.data_root)
    except (CellviewError, RuntimeError) as exc:
        return _fail(str(exc))
    print(f"exported to {out}", file=sys.stderr)
    return 0
