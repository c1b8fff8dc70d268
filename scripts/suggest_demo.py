"""*Suggest tiles to label* in the real viewer: the picture of the suggest → label → adapt loop for the README.

    DISPLAY=:81 python scripts/suggest_demo.py --glas ../shared/data/glas [--out docs]

The slide is a mosaic of GlaS images (rows malignant, benign, normal, each image from another patient, at
GlaS's 0.62 µm/px), written to ``--work`` as a pyramid TIFF, so its labels file is written there, never
beside the data. The viewer opens it with colon-he, analyses it, runs *Suggest tiles to label* (Labels card),
labels the first suggested tiles with the keys 1–3 as GlaS labels the image each lies in, steps to the next
suggestion with N, and captures the screen as ``screenshot_suggest.png``. User settings and labels go to
``--work``. On a (virtual) X display the picture is a capture of the screen; else it is rendered offscreen.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wait(app, cond, timeout_s: float = 600.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not get there in time")
        app.processEvents()
        time.sleep(0.02)


CELL_W, CELL_H = 768, 512
"""Each GlaS image's crop in the mosaic (the images are about 775 × 522 px)."""


def mosaic(glas: Path, columns: int, out: Path):
    """Rows malignant, benign, normal of ``columns`` GlaS images each, one patient per image within a row; returns
    the slide and ``truth(l0_x, l0_y)`` → the category of the image there."""
    import csv

    import cv2
    import numpy as np

    from cellview.testing.synthetic import write_pyramid_tiff

    rows = list(csv.DictReader(open(glas / "labels.csv", newline="")))
    cats = ("malignant", "benign", "normal")
    rgb = np.full((CELL_H * len(cats), CELL_W * columns, 3), 245, np.uint8)
    for r, cat in enumerate(cats):
        seen: set[str] = set()
        picked = []
        for row in rows:
            if row["class3"] == cat and row["patient_id"] not in seen:
                seen.add(row["patient_id"])
                picked.append(row["image"])
        for c, name in enumerate(picked[:columns]):
            img = cv2.cvtColor(cv2.imread(str(glas / name)), cv2.COLOR_BGR2RGB)[:CELL_H, :CELL_W]
            rgb[r * CELL_H:r * CELL_H + img.shape[0], c * CELL_W:c * CELL_W + img.shape[1]] = img
    write_pyramid_tiff(out, rgb, 0.62, levels=3)

    def truth(x: float, y: float) -> str:
        return cats[min(len(cats) - 1, int(y // CELL_H))]

    return out, truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glas", type=Path, required=True, help="the GlaS folder (images/, labels.csv)")
    ap.add_argument("--columns", type=int, default=4, help="images per row of the mosaic")
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--labelled", type=int, default=2, help="suggested tiles labelled before the capture")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cellview-suggest-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_DATA_HOME"] = str(work / "user-data")
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(work / "settings.ini")
    slide, truth = mosaic(args.glas, args.columns, work / "glas-mosaic.tiff")
    for old in work.glob("*.labels.geojson"):
        old.unlink()

    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.results import AnalysisParams
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow

    app = make_app()
    window = MainWindow(analysis_defaults=AnalysisParams())
    window.show()
    window.fit_to_screen()
    assert window.add_model(resolve_model(args.model))
    window.model.analysis.auto_analyse = True
    window.open_path(slide)
    wait(app, lambda: window.result is not None and not window.model.analysis.running)
    controls, labels = window.suggest_controls, window.labels
    controls.suggest()
    wait(app, lambda: controls.worker is None)
    if not controls.tour.tiles:
        print("no tiles suggested", file=sys.stderr)
        return 1
    keys = {c.label: c.key for c in labels.choices}
    grid = labels.grid
    for _ in range(args.labelled):
        x, y, w, h = grid.rect(controls.tour.tiles[controls.tour.position])
        labels.label_key(keys[truth(x + w / 2, y + h / 2)])
        controls.step(1)
    window.view.fit()  # every suggestion in view; the current one drawn thick
    window.side.scroll.ensureWidgetVisible(window.labels_panel, 0, 0)
    window.side.scroll.verticalScrollBar().setValue(window.side.scroll.verticalScrollBar().maximum())
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    time.sleep(1.0)
    app.processEvents()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "screenshot_suggest.png"
    if app.platformName() == "xcb":
        app.primaryScreen().grabWindow(0).save(str(out))
    else:
        window.grab().save(str(out))
    print(f"{out}: {len(controls.tour.tiles)} suggested of {labels.grid.n_tiles} tiles; {controls.status.text()}")
    window.shutdown(20000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
