"""UI responsiveness of the viewer: open → first painted view, and main-thread stalls during analysis.

Runs the real window offscreen on a slide with a model. A 5 ms QTimer on the main thread
records how late each tick fires while the analysis streams in (and, with --interact, while the
view pans and zooms so pyramid tiles load); the worst and 99th-percentile stall are printed.
Target: worst stall < 50 ms.

    python bench/ui_latency.py [--slide PATH] [--model colon-he|PATH.onnx] [--device auto] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
TICK_MS = 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--model", default="colon-he", help="model name in models/ or .onnx path (default colon-he)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="analyses of the same slide (result cache off)")
    ap.add_argument("--no-interact", action="store_true", help="do not pan/zoom during the analysis")
    ap.add_argument("--size", default="1600x1000")
    args = ap.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="cellview-bench-"))
    os.environ["CELLVIEW_CACHE_DIR"] = str(tmp / "cache")
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(tmp / "settings.ini")

    import numpy as np
    from PySide6.QtCore import QElapsedTimer, QTimer

    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.results import AnalysisParams
    from cellview.base.errors import CellviewError
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow
    from cellview.gui.headless import wait_for

    model_note = ""
    try:
        model_path = resolve_model(args.model)
    except CellviewError as exc:
        if args.model != "colon-he":
            print(f"model: {exc.message}", file=sys.stderr)
            return 2
        from cellview.testing.synthetic import make_toy_model

        model_path = make_toy_model(tmp / "toy224", patch_px=224, spacing_um=0.5)
        model_note = " (colon-he absent: toy 224-px model)"

    app = make_app()
    w, h = (int(v) for v in args.size.split("x"))
    window = MainWindow(analysis_defaults=AnalysisParams(batch_size=args.batch_size, device=args.device))
    window.run_controls.auto_box.setChecked(False)
    window.use_cache = False  # every run really analyses
    window.resize(w, h)
    window.show()
    if not window.add_model(model_path):
        return 2
    errors: list[str] = []
    window.viewer.errorShown.connect(lambda m, d: errors.append(m))

    clock = QElapsedTimer()
    clock.start()
    t_open = clock.nsecsElapsed()
    first_paint: list[int] = []
    window.view.firstPaint.connect(lambda: first_paint.append(clock.nsecsElapsed()))
    opened_at: list[int] = []
    window.viewer.slideOpened.connect(lambda o: opened_at.append(clock.nsecsElapsed()))
    window.open_path(args.slide)
    if not first_paint and not wait_for(window.view.firstPaint, 60):
        print(f"open failed: {errors}", file=sys.stderr)
        return 1
    open_ms = (opened_at[0] - t_open) / 1e6
    paint_ms = (first_paint[0] - t_open) / 1e6

    ticks: list[int] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed()))
    rng = np.random.default_rng(0)
    slide_w, slide_h = window.opened.info.dimensions

    def interact() -> None:
        view = window.view
        if rng.random() < 0.25:
            view.fit()
            return
        span = slide_w / rng.choice([2.0, 4.0, 8.0])
        cx, cy = rng.uniform(0, slide_w), rng.uniform(0, slide_h)
        view.vb.setRange(xRange=(cx - span / 2, cx + span / 2), yRange=(cy - span / 2, cy + span / 2), padding=0)

    mover = QTimer()
    mover.setInterval(150)
    mover.timeout.connect(interact)

    stalls: list[float] = []
    tiles = tiles_s = 0.0
    describe = ""
    for _ in range(args.runs):
        ticks.clear()
        timer.start()
        if not args.no_interact:
            mover.start()
        t0 = time.perf_counter()
        window.start_analysis()
        if not wait_for(window.viewer.analysisFinished, 600):
            print(f"analysis did not finish: {errors}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - t0
        timer.stop()
        mover.stop()
        gaps = np.diff(np.array(ticks, dtype=np.int64)) / 1e6
        stalls.extend(np.maximum(gaps - TICK_MS, 0.0).tolist())
        tiles += window.result.n_done
        tiles_s += elapsed
        describe = window.status.provider_label.text()
    window.shutdown()
    s = np.array(stalls) if stalls else np.zeros(1)
    print(f"slide:                 {Path(args.slide).name}")
    print(f"model:                 {describe}{model_note}")
    print(f"open → slide shown:    {open_ms:.0f} ms")
    print(f"open → first paint:    {paint_ms:.0f} ms")
    print(f"analysis:              {tiles:.0f} tiles in {tiles_s:.1f} s ({tiles / max(tiles_s, 1e-9):.1f} tiles/s, "
          f"{args.runs} run(s), interact={'no' if args.no_interact else 'yes'})")
    print(f"main-thread ticks:     {len(s)} at {TICK_MS} ms")
    print(f"stall worst:           {s.max():.1f} ms")
    print(f"stall p99:             {np.percentile(s, 99):.1f} ms")
    print(f"stall p50:             {np.percentile(s, 50):.1f} ms")
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
