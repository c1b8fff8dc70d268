"""`cellview suggest`: the images, or the tiles of slides, whose labels would teach the model's head most.

Writes them ranked as the ``image,label`` CSV that ``cellview adapt --labels`` reads, with the label
empty: fill in the label of the ones you can (a category or a class of the model; leave a row empty to
skip it) and adapt on the file. The choice (``cellview.lab.suggest``): diversity over the lab's tissue,
weighted by the model's doubt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.options import add_analysis_options, params_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suggest", help="the images (or slide tiles) whose labels would teach the model most: a CSV "
                                       "to fill in for cellview adapt --labels",
                       description="Runs the model over a lab's images and slides and picks the N whose labels would "
                                   "teach its head most: different kinds of tissue first (k-means over the model's "
                                   "features), the model's doubt weighing in. Writes them ranked as image,label rows "
                                   "with an empty label (for a slide's tile, also x,y,width,height in level-0 "
                                   "pixels), ready to fill in and pass to cellview adapt --labels.")
    p.add_argument("inputs", nargs="+", metavar="FOLDER_OR_SLIDES", help="images, slides or folders of them")
    p.add_argument("-n", type=int, default=15, help="how many to suggest (default 15)")
    p.add_argument("--out", "-o", default="to_label.csv", help="the CSV to write (default to_label.csv)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the clustering (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_analysis_options(p, tiles_only=True)
    p.set_defaults(func=cmd_suggest)


def cmd_suggest(args: argparse.Namespace) -> int:
    """0: written; 1: written, some inputs could not be read (listed); 2: nothing to suggest from."""
    from tqdm import tqdm

    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.lab.suggest import SuggestResult, suggest, write_suggestions
    from cellview.scale.cohort import discover_slides

    if args.n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    bar = None
    result = None
    try:
        paths, problems = discover_slides(args.inputs)
        for path, why in problems:
            print(f"could not use {path}: {why}", file=sys.stderr)
        if not paths:
            print("error: no images or slides to choose from", file=sys.stderr)
            return 2
        spec = ModelSpec.load(resolve_model(args.model))
        params = params_from_args(args)
        classifier = OnnxClassifier(spec, device=params.device, max_batch=params.batch_size, precision="fp32")
        for item in suggest(paths, classifier, params, args.n, seed=args.seed):
            if isinstance(item, SuggestResult):
                result = item
            elif not args.quiet:
                if bar is None:
                    bar = tqdm(total=item.total, desc="reading", unit="file", leave=False, file=sys.stderr)
                bar.n = item.done
                bar.refresh()
    except CellviewError as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    assert result is not None
    for path, why in result.unreadable:
        print(f"could not use {path}: {why}", file=sys.stderr)
    out = write_suggestions(Path(args.out), result.suggestions)
    kinds = "tiles" if any(s.rect is not None for s in result.suggestions) else "images"
    print(f"{len(result.suggestions)} of {result.candidates} {kinds} suggested, best first, in {out}. Fill in the "
          f"label column (a category: {', '.join(c for c in ('malignant', 'benign', 'normal') if c in spec.class_categories)}"
          f", or a class of {spec.name}; leave a row empty to skip it), then: cellview adapt --model {args.model or spec.name} "
          f"--labels {out}" + (f" --mpp {args.mpp}" if args.mpp else "") + " --out DIR")
    return 1 if result.unreadable or problems else 0
