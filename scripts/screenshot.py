"""Render the viewer (or the kiosk) with a real slide, its heatmap and a tile in the inspector.

    python scripts/screenshot.py [--slide PATH] [--model colon-he|PATH.onnx] [--out docs/screenshot.png]
    python scripts/screenshot.py --regions            # → docs/screenshot_nuclei.png
    python scripts/screenshot.py --kiosk --size 1024x600   # → docs/kiosk-1024x600.png
    python scripts/screenshot.py --cam --out docs/screenshot_domain_cam.png   # the class activation map
    python scripts/screenshot.py --kiosk --cam --size 1024x600 --out docs/kiosk-1024x600-domain.png
    python scripts/screenshot.py --kiosk --show tile      # the kiosk's tile sheet over the slide
    python scripts/screenshot.py --kiosk --show waiting|open|scale|pin|idle   # its pages and sheets
    python scripts/screenshot.py --show shortcuts|mpp|open  # the desktop's dialogs

``--regions`` outlines malignant regions (at ``--threshold``) and picks, inside the largest one,
the tile with the most well-formed nuclei, so the inspector shows its nucleus contours.
``--kiosk`` runs the kiosk on a watch folder, drops the slide in and shoots its case page.
``--cam`` turns the inspector's class activation map on for the picked tile (and scrolls the panel to it).
When the model's domain statistics say the slide is unlike its training data (CMU-1 with
colon-he), the banner and the hatched out-of-domain tiles are in the picture as a user sees them.
Uses colon-he when models/colon-he exists, else lung-he, else a toy 224-px model (and says so).

On a (virtual) X display (``DISPLAY=:93``, see shared/notes/gui-under-xvfb.md) the picture is a
capture of the whole screen, as a user sees it; without one it is rendered offscreen.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--model", default=None, help="default: colon-he, else lung-he")
    ap.add_argument("--out", default=None, help="default: docs/screenshot.png (docs/screenshot_nuclei.png with --regions)")
    ap.add_argument("--size", default=None, help="default 1600x1000 (1600x1080 with --regions)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--regions", action="store_true", help="outline malignant regions and show nuclei in the inspector")
    ap.add_argument("--threshold", type=int, default=50, help="with --regions: min. confidence in percent")
    ap.add_argument("--kiosk", action="store_true", help="the kiosk's case page instead of the desktop viewer")
    ap.add_argument("--style", default=None, help="overlay style: outline, fill or fill+outline (default: the viewer's)")
    ap.add_argument("--cam", action="store_true", help="show the picked tile's class activation map in the inspector")
    ap.add_argument("--show", default="case",
                    help="kiosk: case (default), tile (the tapped tile's sheet), waiting, open (the file picker), "
                         "scale (a slide without a pixel size), pin (the exit PIN pad), idle (a case finished "
                         "while idle); desktop: shortcuts, mpp (the pixel-size dialog), open (the file dialog)")
    args = ap.parse_args()

    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = Path(tempfile.mkdtemp(prefix="cellview-shot-"))
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(tmp / "settings.ini")
    os.environ.setdefault("CELLVIEW_CACHE_DIR", str(tmp / "cache"))

    import numpy as np

    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import CATEGORIES
    from cellview.analysis.results import AnalysisParams
    from cellview.base.errors import CellviewError
    from cellview.gui.app import make_app
    from cellview.gui.desktop.window import MainWindow
    from cellview.gui.headless import settle, wait_for

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
        from cellview.testing.synthetic import make_toy_model

        model_path = make_toy_model(tmp / "toy224", patch_px=224, spacing_um=0.5)
        print("no colon-he or lung-he in models/: rendered with the toy 224-px model.")

    app = make_app()
    if args.kiosk:
        return shoot_kiosk(app, args, model_path, tmp)
    window = MainWindow(analysis_defaults=AnalysisParams(device=args.device))
    w, h = (int(v) for v in (args.size or ("1600x1080" if args.regions else "1600x1000")).split("x"))
    window.move(0, 0)
    window.resize(w, h)
    window.show()
    if not window.add_model(model_path):
        return 2
    if args.style:
        window.model.overlay.set(style=args.style)
    window.open_path(args.slide)
    if not wait_for(window.viewer.analysisFinished, 900):
        print("analysis did not finish", file=sys.stderr)
        return 1
    result = window.result
    if args.regions:
        window.colours.threshold.setValue(args.threshold)
        window.viewer.heatmap.show_regions.setChecked(True)
        while window.model.regions.busy:  # regions are computed in a worker
            settle(app, 0.05)
        from cellview.analysis.morphology import measure_tile
        from cellview.slides.opening import open_slide

        regions = window.model.regions.shown
        tiles = regions[0].tile_indices if regions else np.flatnonzero(result.done)
        with open_slide(args.slide) as slide:
            found = [measure_tile(slide, result.grid, int(i), want_contours=False)[0] for i in tiles]
        # Round nuclei on average: epithelium rather than stroma.
        score = [m.count * (np.nan_to_num(m.mean_circularity) >= 0.65) + 1e-3 * m.count for m in found]
        pick = int(tiles[int(np.argmax(score))])
    else:
        # A confidently malignant tile full of tissue if there is one, else the most confident tile.
        conf = np.nan_to_num(result.confidence, nan=-1.0) - (result.grid.tissue_fraction < 0.9)
        malignant = result.pred_category == CATEGORIES.index("malignant")
        pick = int(np.argmax(np.where(malignant, conf, -1.0))) if malignant.any() else int(np.argmax(conf))
    window.select_tile(pick)
    wait_for(window.viewer.patchShown, 10)
    if args.cam:
        show_cam(app, window)
    if args.regions or args.cam:
        settle(app, 0.5)  # the panel's layout grows with the nuclei rows first
        bar = window.side.dock.widget().verticalScrollBar()
        bar.setValue(bar.maximum())  # the inspector is at the bottom of the panel
    else:
        window.viewer.canvas.hover_at(*[v + result.grid.tile_l0_w / 2 for v in result.grid.rect(pick)[:2]])
    settle(app, 1.0)
    out = Path(args.out or REPO / "docs" / ("screenshot_nuclei.png" if args.regions else "screenshot.png"))
    dialog = desktop_dialog(window, args.show)
    if dialog is not None:
        settle(app, 1.0)
    capture(app, window, out)
    if dialog is not None:
        dialog.close()
    print(f"wrote {out} ({window.status.provider_label.text()}; {result.summary()})")
    window.shutdown()
    return 0


def desktop_dialog(window, show: str):
    """Open one of the desktop's dialogs without blocking (for the picture); None for the plain window."""
    from PySide6.QtWidgets import QFileDialog

    from cellview.gui.desktop.dialogs import MppDialog
    from cellview.gui.desktop.shortcuts import ShortcutsDialog

    if show == "shortcuts":
        dialog = ShortcutsDialog(window.menuBar(), window)
    elif show == "mpp":
        dialog = MppDialog("head-and-neck.png", True, window)
    elif show == "open":
        dialog = QFileDialog(window, "Open slide or image", str(DEFAULT_SLIDE.parent))
    else:
        return None
    dialog.open()
    return dialog


def show_cam(app, window) -> None:
    """Turn the inspector's activation map on and wait until it is drawn (computed on a worker)."""
    from cellview.gui.headless import settle

    window.viewer.inspector.cam_box.setChecked(True)
    while window.model.explain.current.state == "busy":
        settle(app, 0.05)
    if window.model.explain.current.state != "ready":
        print(f"activation map: {window.model.explain.current.message}", file=sys.stderr)
    settle(app, 0.5)


def capture(app, window, out: Path) -> None:
    """The whole (virtual) screen on X, else the window rendered offscreen."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if app.platformName() == "xcb":
        app.primaryScreen().grabWindow(0).save(str(out))
    else:
        window.grab().save(str(out))


def shoot_kiosk(app, args, model_path: Path, tmp: Path) -> int:
    """The kiosk full screen: a slide dropped into its watch folder, analysed, a malignant tile inspected."""
    import shutil

    import numpy as np

    from cellview.analysis.model_spec import CATEGORIES
    from cellview.gui.headless import settle, wait_for
    from cellview.gui.kiosk import KioskWindow
    from cellview.viewer.kiosk.settings import KioskSettings

    (tmp / "watch").mkdir()
    settings = KioskSettings(watch_dir=tmp / "watch", outbox_dir=tmp / "outbox", model=str(model_path),
                             device=args.device, idle_s=0, settle_s=0.5, poll_s=0.2,
                             pin="2468" if args.show == "pin" else None)
    window = KioskWindow(settings)
    if args.size and app.platformName() != "xcb":
        w, h = (int(v) for v in args.size.split("x"))
        window.setGeometry(0, 0, w, h)
    window.start()
    if args.size and app.platformName() != "xcb":
        window.setGeometry(0, 0, w, h)
    if not wait_for(window.modelReady, 900):
        print("the kiosk's model did not load", file=sys.stderr)
        return 1
    if args.style:
        window.model.overlay.set(style=args.style)
    shutil.copy(args.slide, tmp / "watch" / Path(args.slide).name)
    if not wait_for(window.caseFinished, 900):
        print("the case did not finish", file=sys.stderr)
        return 1
    result = window.result
    malignant = result.pred_category == CATEGORIES.index("malignant")
    conf = np.nan_to_num(result.confidence, nan=-1.0) - (result.grid.tissue_fraction < 0.9)
    pick = int(np.argmax(np.where(malignant, conf, -1.0))) if malignant.any() else int(np.argmax(conf))
    if args.show == "tile":  # a tap on the tile: its call in a sheet over the slide
        x, y, w, h = result.grid.rect(pick)
        window.case_page.tap(x + w / 2, y + h / 2)
    else:
        window.select_tile(pick)
    wait_for(window.viewer.patchShown, 10)
    kiosk_view(app, window, args.show, tmp, args.slide)
    if args.cam:
        show_cam(app, window)
        panel = window.case_page.side_scroll
        top = window.viewer.inspector.mapTo(panel.widget(), window.viewer.inspector.rect().topLeft()).y()
        panel.verticalScrollBar().setValue(max(0, top - 8))  # the patch with its map and colour scale in view
    settle(app, 1.0)
    size = args.size or f"{window.width()}x{window.height()}"
    suffix = "" if args.show == "case" else f"-{args.show}"
    out = Path(args.out or REPO / "docs" / f"kiosk-{size}{suffix}.png")
    capture(app, window, out)
    print(f"wrote {out} ({window.header.provider_badge.text()}; {result.summary()})")
    window.exit_kiosk()
    return 0


def kiosk_view(app, window, show: str, tmp: Path, slide: str) -> None:
    """Bring up the kiosk page or sheet ``show`` after the case (see --show)."""
    from cellview.gui.headless import settle, wait_for

    if show == "waiting":
        window.case_page.home_btn.click()
    elif show == "open":
        window.choose_case()
        window.file_sheet.show_folder(Path(slide).parent)
    elif show == "scale":  # the same pixels as a PNG, which records no pixel size
        import cv2

        from cellview.slides.opening import open_slide

        with open_slide(slide) as s:
            rgb = s.thumbnail(1200)
        cv2.imwrite(str(tmp / "watch" / "head-and-neck.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        wait_for(window.caseFinished, 120)
    elif show == "pin":
        window.request_exit()
    elif show == "idle":  # nobody touched the screen since the case finished
        window.idle_screen.last_activity = 0.0
        window.idle_screen.show_idle()
    settle(app, 0.5)


if __name__ == "__main__":
    sys.exit(main())
