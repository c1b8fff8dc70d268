"""Render the viewer with malignant regions outlined and a tile's nuclei in the inspector to docs/screenshot_nuclei.png.

    python scripts/screenshot_nuclei.py [--slide PATH] [--model colon-he|lung-he|PATH.onnx] [--out PATH]

Uses colon-he when models/colon-he exists, else lung-he, else a toy 224-px model (and says so).
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshot_nuclei.png"))
    ap.add_argument("--size", default="1600x1080")
    ap.add_argument("--threshold", type=int, default=50, help="min. confidence in percent")
    args = ap.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="cellview-shot-"))
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(tmp / "settings.ini")
    os.environ.setdefault("CELLVIEW_CACHE_DIR", str(tmp / "cache"))

    import numpy as np
    from PySide6.QtCore import QEventLoop, QTimer

    from cellview.errors import CellviewError
    from cellview.gui.app import make_app
    from cellview.gui.mainwindow import MainWindow
    from cellview.model import resolve_model

    model_path = None
    for name in [args.model] if args.model else ["colon-he", "lung-he"]:
        try:
            model_path = resolve_model(name)
            break
        except CellviewError as exc:
            if args.model:
                print(exc.message, file=sys.stderr)
                return 2
    if model_path is None:
        from cellview.testing import make_toy_model

        model_path = make_toy_model(tmp / "toy224", patch_px=224, spacing_um=0.5)
        print("no colon-he or lung-he in models/: rendered with the toy 224-px model.")

    app = make_app()
    window = MainWindow()
    w, h = (int(v) for v in args.size.split("x"))
    window.resize(w, h)
    window.show()
    if not window.add_model(model_path):
        return 2

    def wait_for(signal, timeout_s: float) -> bool:
        loop = QEventLoop()
        fired = []

        def fire(*_args) -> None:
            fired.append(1)
            loop.quit()

        signal.connect(fire)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        signal.disconnect(fire)
        return bool(fired)

    def settle(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    window.threshold.setValue(args.threshold)
    window.show_regions.setChecked(True)
    window.open_path(args.slide)
    if not wait_for(window.analysisFinished, 900):
        print("analysis did not finish", file=sys.stderr)
        return 1
    result = window.result
    while window._regions_worker is not None:  # regions are computed in a worker
        settle(0.05)
    # Inspect the region tile with the most well-formed nuclei (round on average: epithelium, not stroma).
    from cellview.morphology import measure_tile
    from cellview.slide import open_slide

    regions = window.region_list
    tiles = regions[0].tile_indices if regions else np.flatnonzero(result.done)
    with open_slide(args.slide) as slide:
        found = [measure_tile(slide, result.grid, int(i), want_contours=False)[0] for i in tiles]
    score = [m.count * (np.nan_to_num(m.mean_circularity) >= 0.65) + 1e-3 * m.count for m in found]
    pick = int(tiles[int(np.argmax(score))])
    window.select_tile(pick)
    wait_for(window.patchShown, 10)
    settle(0.5)  # the panel's layout grows with the nuclei rows first
    bar = window.dock.widget().verticalScrollBar()
    bar.setValue(bar.maximum())  # the inspector is at the bottom of the panel
    settle(0.5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(out))
    labels = ", ".join(g.text for g in window.view.regions)
    print(f"wrote {out} ({Path(model_path).parent.name}; regions: {labels}; tile {pick}: "
          f"{window.inspector.nuclei.summary() if window.inspector.nuclei else 'no nuclei'})")
    window.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
