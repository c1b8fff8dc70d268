"""The ``train``, ``evaluate`` and ``export`` sub-commands; torch is imported only when one runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"


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
    p.add_argument("--arch", default="efficientnet-lite0", help="efficientnet-lite0 (default) or a torchvision model")
    p.add_argument("--patch", type=int, help="tile size in px (default: recipe's, else 224)")
    p.add_argument("--views", type=int, default=8, help="augmented views per 224 px of image area (default 8)")
    p.add_argument("--head-epochs", type=int, default=40)
    p.add_argument("--finetune-blocks", type=int, default=0, help="last blocks to fine-tune (0 = linear head only)")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (smoke tests)")
    p.add_argument("--no-pretrained", action="store_true", help="random initial weights (tests only)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation that follows training")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("evaluate", help="evaluate a training run on its grouped test split")
    e.add_argument("run", type=Path, help="run folder written by cellview train")
    e.add_argument("--out", type=Path, help="output folder (default RUN/eval)")
    e.add_argument("--quick", action="store_true", help="skip the leakage / shortcut checks")
    e.add_argument("--cv-folds", type=int, default=5)
    e.set_defaults(func=cmd_evaluate)

    x = subparsers.add_parser("export", help="export a run as ONNX + sidecar + model card (+ TorchScript/WSInfer)")
    x.add_argument("run", type=Path, help="run folder written by cellview train")
    x.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/colon-he")
    x.add_argument("--version", default="1.0.0")
    x.add_argument("--no-wsinfer", action="store_true")
    x.add_argument("--no-fp16", action="store_true", help="skip the half-precision GPU copy")
    x.add_argument("--no-domain", action="store_true", help="skip fitting the out-of-domain statistics")
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
    from cellview.errors import CellviewError
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
                          pretrained=not args.no_pretrained)
        run = run_training(recipe, args.out, cfg, command_line())
        if not args.no_eval:
            from cellview.train.evaluate import evaluate_run

            evaluate_run(run)
    except (D.DataError, BackboneError, CellviewError) as exc:  # e.g. the run folder cannot be written or is damaged
        return _fail(str(exc))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if msg := _need_torch():
        return _fail(msg)
    from cellview.errors import CellviewError
    from cellview.train.evaluate import evaluate_run

    if not (args.run / "model.pt").exists():
        return _fail(f"{args.run} is not a finished training run (no model.pt)")
    try:
        evaluate_run(args.run, args.out, extra_checks=not args.quick, cv_folds=args.cv_folds)
    except CellviewError as exc:  # a damaged run folder, or results that cannot be written
        return _fail(str(exc))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if msg := _need_torch():
        return _fail(msg)
    from cellview.errors import CellviewError
    from cellview.train.export import export_run

    if not (args.run / "model.pt").exists():
        return _fail(f"{args.run} is not a finished training run (no model.pt)")
    try:
        export_run(args.run, args.out, args.version, wsinfer=not args.no_wsinfer, fp16=not args.no_fp16,
                   domain=not args.no_domain)
    except (CellviewError, RuntimeError) as exc:
        return _fail(str(exc))
    return 0
