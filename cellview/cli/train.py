"""`cellview train`: train a tile classifier (the `train` extra: torch is imported only when it runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.train import RECIPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a tile classifier (needs the 'train' extra)",
        description="Train a tile classifier: frozen-feature linear head, optionally fine-tuning the last blocks.",
    )
    p.add_argument("--recipe", help=f"recipe JSON, or a bundled name ({', '.join(_recipe_names())})")
    p.add_argument("--data", action="append", default=[],
                   help="folder of class folders, or CSV with path,label[,group] (repeatable); instead of --recipe")
    p.add_argument("--classes", help="JSON file or string: class → category or {category, color}")
    p.add_argument("--spacing", type=float, default=0.5, help="µm/px of --data images and of the model (default 0.5)")
    p.add_argument("--name", default="model", help="model name (with --data)")
    p.add_argument("--foreground", choices=("tissue", "whole-field", "stained-cells"),
                   help="with --data: which tiles are read (default tissue, for H&E; stained-cells: tiles holding a "
                        "nucleus-stained cell, for blood smears; whole-field: every tile); the exported model keeps it")
    p.add_argument("--field-um", type=float, metavar="UM",
                   help="with --data: the images state no pixel size and each is one microscope field UM µm wide "
                        "(its pixel size = UM / its longer side); the exported model reads such images so")
    p.add_argument("--whole-image", action="store_true",
                   help="with --data: each image is read whole, resized to the tile (no pixel size needed); the "
                        "exported model reads images without a pixel size so")
    p.add_argument("--group", choices=("column", "runs", "near-duplicates", "images"),
                   help="what must never straddle a split: the CSV's group column (default), runs of consecutive file "
                        "numbers (fields of one smear or patient), images that look alike, or each image alone; "
                        "data without groups gets a warning and a suggestion")
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


def _recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.json"))


def fail(msg: str) -> int:
    print(f"cellview: {msg}", file=sys.stderr)
    return 2


def need_torch() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "training needs PyTorch: pip install 'cellview[train]'"
    return None


def _reading(args: argparse.Namespace):
    """``--foreground`` / ``--field-um`` / ``--whole-image`` as the model's reading rules (sidecar entries)."""
    from cellview.analysis.foreground import Reading
    from cellview.train import data as D

    if args.field_um is not None and args.whole_image:
        raise D.DataError("--field-um and --whole-image are two ways of reading the same images: give one.")
    raw: dict = {}
    if args.foreground:
        raw["foreground"] = {"rule": args.foreground, **({"fallback": "whole-field"}
                                                       if args.foreground == "stained-cells" else {})}
    if args.field_um is not None:
        raw["unstated_pixel_size"] = {"read": "field", "field_um": args.field_um}
    elif args.whole_image:
        raw["unstated_pixel_size"] = {"read": "whole-image"}
    try:
        return Reading.from_sidecar(raw, "command line")
    except CellviewError as exc:
        raise D.DataError(exc.message) from exc


def _offer_grouping(recipe, data: list[str]) -> str | None:
    """Warn when ``--data`` has no groups and offer the rule its names fit (asked on a terminal, said otherwise)."""
    from cellview.train import data as D
    from cellview.train.grouping import advise

    advice = advise(D.read_samples(recipe))
    if advice.has_groups:
        return None
    print(f"cellview: warning: {advice.warning(', '.join(data))}", file=sys.stderr)
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"Group by {advice.suggestion.replace('-', ' ')}? [Y/n] ").strip().lower()
        if answer in ("", "y", "yes"):
            return advice.suggestion
    print(f"cellview: training without groups (pass --group {advice.suggestion} to group, --group images to "
          "silence this)", file=sys.stderr)
    return None


def cmd_train(args: argparse.Namespace) -> int:
    if msg := need_torch():
        return fail(msg)
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
            recipe = D.recipe_from_args(args.data, args.classes, args.spacing, args.patch or 224, args.name,
                                        _reading(args))
        else:
            return fail("give --recipe or --data")
        if args.patch:
            recipe.patch_size = args.patch
        group = args.group or (_offer_grouping(recipe, args.data) if args.data else None)
        cfg = TrainConfig(arch=args.arch, views=args.views, head_epochs=args.head_epochs,
                          finetune_blocks=args.finetune_blocks, finetune_epochs=args.finetune_epochs,
                          finetune_lr=args.finetune_lr, batch_size=args.batch_size, seed=args.seed,
                          device=args.device, threads=args.threads, limit_per_class=args.limit_per_class,
                          pretrained=not args.no_pretrained, cache_blocks=args.cache_blocks, balance=args.balance,
                          label_smoothing=args.label_smoothing, holdout=args.holdout, group=group)
        run = run_training(recipe, args.out, cfg, command_line())
        if not args.no_eval:
            from cellview.train.evaluate import evaluate_run

            evaluate_run(run)
    except (D.DataError, BackboneError, CellviewError, ValueError) as exc:  # e.g. a damaged run folder
        return fail(str(exc))
    return 0
