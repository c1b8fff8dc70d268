"""Render the viewer with a real slide, its heatmap and a tile in the inspector to docs/screenshot.png.

    python scripts/screenshot.py [--slide PATH] [--model colon-he|PATH.onnx] [--out docs/screenshot.png]

Uses colon-he when models/colon-he exists, else a toy 224-px model (and says so).
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
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    ap.add_argument("--size", default="1600x1000")
    ap.add_argument("--device", default="auto")
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
    from cellview.model import CATEGORIES, resolve_model
    from cellview.results import AnalysisParams

    try:
        model_path = resolve_model(args.model)
    except CellviewError as exc:
        if args.model != "colon-he":
            print(exc.message, file=sys.stderr)
            return 2
        from cellview.testing import make_toy_model

        model_path = make_toy_model(tmp / "toy224", patch_px=224, spacing_um=0.5)
        print("colon-he is not in models/ yet: rendered with the toy 224-px model; re-run when it exists.")

    app = make_app()
    window = MainWindow(analysis_defaults=AnalysisParams(device=args.device))
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

    window.open_path(args.slide)
    if not wait_for(window.analysisFinished, 900):
        print("analysis did not finish", file=sys.stderr)
        return 1
    result = window.result
    # Inspect a confidently malignant tile if there is one, else the most confident tile.
    conf = np.nan_to_num(result.confidence, nan=-1.0)
    malignant = result.pred_category == CATEGORIES.index("malignant")
    pick = int(np.argmax(np.where(malignant, conf, -1.0))) if malignant.any() else int(np.argmax(conf))
    window.select_tile(pick)
    wait_for(window.patchShown, 10)
    window._view_hovered(*[v + result.grid.tile_l0_w / 2 for v in result.grid.rect(pick)[:2]])
    settle(1.0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(out))
    print(f"wrote {out} ({window.provider_label.text()}; {result.summary()})")
    window.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
