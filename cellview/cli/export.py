"""`cellview export`: a training run as a model folder (ONNX, sidecar, card, precision copies)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.base.errors import CellviewError
from cellview.cli.train import fail, need_torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="export a run as ONNX + sidecar + model card (+ TorchScript/WSInfer)")
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
    x.add_argument("--int8-validate", choices=("auto", "run", "data-folder", "skip"), default="auto",
                   help="where the INT8 copy is checked against FP32: the run's own images (auto for your models), "
                        "every labelled set of the data folder (auto for the bundled H&E models), or not at all "
                        "(the copy is then not used by --precision auto)")
    x.add_argument("--int8-only-validated", action="store_true",
                   help="keep the INT8 copy only when it validates (else the folder ships FP32 and FP16, and the "
                        "card gives the copy's figures)")
    x.add_argument("--data-root", type=Path,
                   help="data folder for --int8-validate data-folder (default ../shared/data)")
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if msg := need_torch():
        return fail(msg)
    from cellview.train.export import export_int8, export_run

    if not (args.run / "model.pt").exists():
        return fail(f"{args.run} is not a finished training run (no model.pt)")
    if args.int8_only and args.no_int8:
        return fail("--int8-only and --no-int8 contradict each other")
    try:
        out = args.out
        if out is None:
            from cellview.analysis.model_lookup import user_models_dir
            from cellview.train.train import Run

            out = user_models_dir() / Run(args.run).recipe().name
        if args.int8_only:
            export_int8(args.run, out, args.data_root, args.int8_validate, only_validated=args.int8_only_validated)
        else:
            export_run(args.run, out, args.version, wsinfer=not args.no_wsinfer, fp16=not args.no_fp16,
                       domain=not args.no_domain, int8=not args.no_int8, data_root=args.data_root,
                       int8_validate=args.int8_validate, int8_only_validated=args.int8_only_validated)
    except (CellviewError, RuntimeError) as exc:
        return fail(str(exc))
    print(f"exported to {out}", file=sys.stderr)
    return 0
