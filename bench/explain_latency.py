"""The inspector's activation map and the out-of-domain hatching in the real viewer: how long they take.

Opens the slide in the window (offscreen), turns the inspector's activation map on and steps through
tiles: prints the time from selecting a tile to its map on screen (the first includes loading the
model on CPU), the worst main-thread stall meanwhile (a 5 ms QTimer's lateness: the map is computed
on a worker), and the time to paint the whole canvas with the hatching and without it (Show calls
anyway), fitted and zoomed in.

    python bench/explain_latency.py [--slide PATH] [--model colon-he|PATH.onnx] [--tiles 12] [--paints 20]
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
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--tiles", type=int, default=12, help="tiles explained one after the other")
    ap.add_argument("--paints", type=int, default=20, help="canvas paints timed per case")
    ap.add_argument("--size", default="1600x1000")
    args = ap.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="cellview-bench-"))
    os.environ["CELLVIEW_CACHE_DIR"] = str(tmp / "cache")
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(tmp / "settings.ini")

    import numpy as np
    from PySide6.QtCore import QElapsedTimer, QRectF, QTimer

    from cellview.analysis.model_lookup import resolve_model
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow
    from cellview.gui.headless import settle, wait_for

    app = make_app()
    window = MainWindow()
    w, h = (int(v) for v in args.size.split("x"))
    window.resize(w, h)
    window.show()
    if not window.add_model(resolve_model(args.model)):
        return 2
    window.open_path(args.slide)
    if not wait_for(window.viewer.analysisFinished, 900):
        print("analysis did not finish", file=sys.stderr)
        return 1
    result = window.result
    settle(app, 0.5)

    stalls: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:
        now = clock.elapsed()
        stalls.append(now - last[0] - TICK_MS)
        last[0] = now

    timer = QTimer(interval=TICK_MS)
    timer.timeout.connect(tick)

    tiles = [int(i) for i in np.flatnonzero(result.done)[: args.tiles]]
    window.select_tile(tiles[0])
    times = []
    timer.start()
    for n, index in enumerate(tiles):
        t0 = time.perf_counter()
        if n == 0:
            window.viewer.inspector.cam_box.setChecked(True)
        else:
            window.select_tile(index)
        explain = window.model.explain
        while not (explain.current.state in ("ready", "failed") and explain.current.index == index):
            app.processEvents()
            time.sleep(0.001)
        times.append(time.perf_counter() - t0)
        if window.model.explain.current.state == "failed":
            print(f"activation map failed: {window.model.explain.current.message}", file=sys.stderr)
            return 1
    timer.stop()
    later = np.array(times[1:]) * 1000
    print(f"{Path(args.slide).name} with {result.model.name} ({result.provider}); {result.n_done} tiles, "
          f"{int(result.out_of_domain.sum())} out of domain")
    print(f"activation map, first tile (loads the model on CPU): {times[0] * 1000:.0f} ms")
    if len(later):
        print(f"activation map, next {len(later)} tiles: median {np.median(later):.0f} ms, max {later.max():.0f} ms")
    print(f"main-thread stall meanwhile: worst {max(stalls):.0f} ms, 99th percentile {np.percentile(stalls, 99):.0f} ms "
          f"({len(stalls)} ticks)")

    def paint_ms() -> float:
        out = []
        for _ in range(args.paints):
            t0 = time.perf_counter()
            window.view.grab()
            out.append((time.perf_counter() - t0) * 1000)
        return float(np.median(out))

    g = result.grid
    rows = []
    for label, rect in (("fitted", None), ("zoomed in", QRectF(*g.rect(tiles[0])))):
        if rect is None:
            window.view.fit()
        else:
            window.view.vb.setRange(rect, padding=0)
        settle(app, 1.0)
        window.model.overlay.show_calls_anyway(False)
        settle(app, 0.2)
        hatched = paint_ms()
        window.model.overlay.show_calls_anyway(True)
        settle(app, 0.2)
        plain = paint_ms()
        rows.append((label, hatched, plain))
    for label, hatched, plain in rows:
        print(f"canvas paint ({label}, {w}x{h}): hatched {hatched:.1f} ms, shown anyway {plain:.1f} ms "
              f"(median of {args.paints})")
    window.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
