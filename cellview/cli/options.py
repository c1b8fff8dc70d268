"""The options shared by the commands that analyse (analyze, adapt, the viewer) and what they make."""

from __future__ import annotations

import argparse

from cellview.analysis.classifier import DEVICES, TTA_MODES
from cellview.analysis.model_spec import PRECISIONS
from cellview.analysis.stain import STAIN_METHODS


def add_analysis_options(p: argparse.ArgumentParser, tiles_only: bool = False) -> None:
    """The options that shape a run; ``tiles_only``: those that decide which tiles are cut and how (adapt)."""
    p.add_argument("--model", help="model name (`cellview models` lists them) or path to an .onnx with its .json sidecar "
                                   "(default: colon-he)")
    p.add_argument("--mpp", type=float, help="µm per pixel at level 0, for slides/images that do not say")
    if not tiles_only:
        p.add_argument("--whole-image", action="store_true",
                       help="classify each image as one tile resized to the model input (scale unknown)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs: auto takes the best available (TensorRT, then CUDA, then CPU); "
                        "the run says which one it got, and plainly when a GPU asked for is not usable")
    if not tiles_only:  # adapt reads the trained (FP32) weights' features: its head is fitted on them
        add_precision_option(p)
    p.add_argument("--batch-size", type=int, default=32,
                   help="tiles per model call (default 32): larger is faster on a GPU and needs more memory; "
                        "results do not depend on it")
    p.add_argument("--workers", type=int, default=2, help="tile reader threads")
    p.add_argument("--tissue-threshold", type=float, default=0.25,
                   help="minimum tissue fraction for a tile to be analysed (0–1)")
    p.add_argument("--tissue-method", choices=("saturation", "od"), default="saturation")
    p.add_argument("--stain-normalize", choices=STAIN_METHODS, default="none",
                   help="map each slide's stain onto the model's training stain before classifying "
                        "(Macenko or Reinhard; needs a model whose sidecar stores its reference stain)")
    if tiles_only:
        return
    p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction (0 to <0.9)")
    p.add_argument("--nuclei", action="store_true",
                   help="also measure nuclei per tile (count, density/mm², area µm², shape); adds CSV columns")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: average each tile's probabilities over its 4 flips or all 8 "
                        "flips/rotations (4× / 8× the inference time)")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="weights to run: auto = the model's validated INT8 copy on a CPU (else FP32), FP16 on a GPU; "
                        "fp32 = the trained weights; int8 / fp16 = that copy (the status line says which ran)")


def params_from_args(args: argparse.Namespace):
    from cellview.analysis.results import AnalysisParams
    from cellview.analysis.tissue import TissueParams

    return AnalysisParams(
        tissue=TissueParams(method=args.tissue_method),
        tissue_threshold=args.tissue_threshold,
        overlap=getattr(args, "overlap", 0.0),
        whole_image=getattr(args, "whole_image", False),
        mpp_um=args.mpp,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        nuclei=getattr(args, "nuclei", False),
        stain_normalize=args.stain_normalize,
        tta=getattr(args, "tta", "none"),
        precision=getattr(args, "precision", "fp32"),
    )
