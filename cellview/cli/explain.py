"""`cellview explain`: one picture of what the model looked at for one tile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.analysis.classifier import DEVICES
from cellview.analysis.stain import STAIN_METHODS
from cellview.base.errors import CellviewError, MppError
from cellview.cli.options import add_precision_option


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    add_precision_option(p)
    p.add_argument("--tissue-threshold", type=float, default=0.25, help="as for analyze: which tiles the grid keeps")
    p.add_argument("--stain-normalize", choices=STAIN_METHODS, default="none",
                   help="as for analyze: explain the tile as the model saw it after stain normalisation")
    p.set_defaults(func=cmd_explain)


def _parse_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise CellviewError(f"--at must be two level-0 pixel coordinates like 1200,800, got {text!r}.") from exc
    return x, y


def cmd_explain(args: argparse.Namespace) -> int:
    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.explain import explain_at, explanation_png, resolve_class
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
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
