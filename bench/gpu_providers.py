"""Which execution provider runs, how fast, and how close to CPU: CPU vs CUDA vs TensorRT.

    python bench/gpu_providers.py [--model colon-he] [--slide SLIDE] [--workers 8] [--batch-size 64]

For each provider: the line the app shows (`describe()`), inference-only tiles/s at several
batch sizes on real tiles, the largest probability difference from the CPU provider, and (with
--slide) end-to-end tiles/s on the slide with GPU utilisation sampled by nvidia-smi. Figures
only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.classifier import OnnxClassifier  # noqa: E402
from cellview.analysis.model_lookup import resolve_model  # noqa: E402
from cellview.analysis.model_spec import ModelSpec  # noqa: E402
from cellview.analysis.pipeline import run_analysis  # noqa: E402
from cellview.analysis.results import AnalysisParams  # noqa: E402


class GpuSampler:
    """nvidia-smi utilisation samples while a block runs (empty when there is no nvidia-smi)."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._period_s = period_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self._stop.is_set():
            out = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            try:
                self.samples.append(float(out.stdout.split()[0]))
            except (IndexError, ValueError):
                pass
            time.sleep(self._period_s)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "n/a"
        s = np.array(self.samples)
        return f"mean {s.mean():.0f}%, median {np.median(s):.0f}%, max {s.max():.0f}% ({len(s)} samples)"


def tiles_from(slide: Path | None, spec: ModelSpec, n: int) -> np.ndarray:
    if slide is None:
        return np.random.default_rng(0).integers(0, 256, (n, spec.patch_size_pixels, spec.patch_size_pixels, 3),
                                                 dtype=np.uint8)
    from cellview.analysis.pipeline import plan_tiles
    from cellview.analysis.tiling import read_tile
    from cellview.slides.opening import open_slide

    with open_slide(slide) as s:
        s.require_mpp()
        _, grid = plan_tiles(s, spec, AnalysisParams())
        idx = np.linspace(0, grid.n_tiles - 1, min(n, grid.n_tiles)).astype(int)
        tiles = np.stack([read_tile(s, grid, int(i)) for i in idx])
    return np.concatenate([tiles] * (n // len(tiles) + 1))[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--slide", type=Path, help="slide for real tiles and an end-to-end run")
    ap.add_argument("--tiles-slide", type=Path, help="slide to take real tiles from (default --slide)")
    ap.add_argument("--devices", default="cpu,cuda,tensorrt")
    ap.add_argument("--batches", default="16,64,128")
    ap.add_argument("--batch-size", type=int, default=64, help="end-to-end batch size")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0, help="time per inference measurement")
    args = ap.parse_args()

    spec = ModelSpec.load(resolve_model(args.model))
    batches = [int(b) for b in args.batches.split(",")]
    tiles = tiles_from(args.tiles_slide or args.slide, spec, max(batches))
    reference = None
    for device in args.devices.split(","):
        t0 = time.perf_counter()
        clf = OnnxClassifier(spec, device=device, max_batch=max(max(batches), args.batch_size))
        first = clf.predict(tiles[:8])
        setup_s = time.perf_counter() - t0
        probs = clf.predict(tiles[:64])
        if reference is None:
            reference = probs
        diff = float(np.abs(probs - reference).max())
        agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        print(f"[{device}] {clf.describe()}")
        print(f"  session + first batch: {setup_s:.1f} s; max |p - p_cpu| {diff:.4f}; same top class {agree:.1%}")
        del first
        for b in batches:
            clf.predict(tiles[:b])
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                clf.predict(tiles[:b])
                n += b
            print(f"  inference-only batch {b:>4}: {n / (time.perf_counter() - t0):9.1f} tiles/s")
        if args.slide and device != "cpu":
            params = AnalysisParams(batch_size=args.batch_size, workers=args.workers, device=device)
            with GpuSampler() as gpu:
                t0 = time.perf_counter()
                result = run_analysis(args.slide, clf, params)
                wall = time.perf_counter() - t0
            t = result.timings
            print(f"  end-to-end {args.slide.name}: {result.n_done} tiles in {wall:.1f} s wall "
                  f"({t['tissue_s']:.1f} s tissue), {result.n_done / t['tiles_s']:.1f} tiles/s; "
                  f"reader threads busy {t['read_thread_s']:.1f} s total over {args.workers}, "
                  f"inference {t['inference_s']:.1f} s; GPU util {gpu.describe()}")
            bound = "inference" if t["inference_s"] > 0.8 * t["tiles_s"] else "read"
            print(f"  bound by: {bound} (inference busy {t['inference_s'] / t['tiles_s']:.0%} of the tile phase)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
