"""`cellview [SLIDE]`: start the viewer with the command line's analysis options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.analysis.results import AnalysisParams, plural
from cellview.analysis.tissue import TissueParams
from cellview.gui.qtapp import make_app

__all__ = ["make_app", "params_from_args", "run_gui", "smoke_test"]


def params_from_args(args: argparse.Namespace) -> AnalysisParams:
    return AnalysisParams(
        tissue=TissueParams(method=getattr(args, "tissue_method", "saturation") or "saturation"),
        tissue_threshold=getattr(args, "tissue_threshold", 0.25),
        overlap=getattr(args, "overlap", 0.0) or 0.0,
        whole_image=bool(getattr(args, "whole_image", False)),
        mpp_um=getattr(args, "mpp", None),
        batch_size=getattr(args, "batch_size", 32) or 32,
        workers=getattr(args, "workers", 2) or 2,
        device=getattr(args, "device", "auto") or "auto",
        stain_normalize=getattr(args, "stain_normalize", "none") or "none",
        tta=getattr(args, "tta", "none") or "none",
        precision=getattr(args, "precision", "auto") or "auto",
    )


def smoke_test(slide: str, timeout_s: float = 120.0) -> int:
    """`cellview --smoke-test SLIDE`: prove a bundle is complete (Qt plugins, OpenSlide, ONNX Runtime, models).

    Starts offscreen with throw-away settings, opens the slide in the viewer, waits until its
    pixels are painted, loads the model a new viewer starts with (the default, else the first) on CPU, prints what it
    saw and exits 0.
    """
    import os
    import tempfile
    import time

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    tmp = tempfile.TemporaryDirectory(prefix="cellview-smoke-")
    os.environ["CELLVIEW_SETTINGS_FILE"] = str(Path(tmp.name) / "settings.ini")
    from PySide6.QtCore import QTimer

    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import DEFAULT_MODEL, available_models
    from cellview.analysis.model_spec import ModelSpec
    from cellview.gui.desktop.window import MainWindow

    t0 = time.perf_counter()
    app = make_app()
    window = MainWindow()
    window.run_controls.auto_box.setChecked(False)
    failures: list[str] = []
    window.show_error = lambda exc, title="": (failures.append(f"{title}: {exc.message}"), app.exit(1))
    window.view.firstPaint.connect(lambda: QTimer.singleShot(500, app.quit))
    QTimer.singleShot(int(timeout_s * 1000), lambda: (failures.append("timed out"), app.exit(1)))
    window.show()
    window.open_path(slide)
    app.exec()
    if failures or window.opened is None:
        print(f"smoke test FAILED: {'; '.join(failures) or 'slide not opened'}", file=sys.stderr)
        return 1
    info = window.opened.info
    shot = window.view.grab().toImage()
    print(f"smoke test: opened {info.name} ({window.opened.vendor}) {info.dimensions[0]:,} x {info.dimensions[1]:,} px, "
          f"{plural(len(info.level_dimensions), 'level')}; painted {shot.width()} x {shot.height()} px view "
          f"in {time.perf_counter() - t0:.1f} s")
    models = available_models()
    print(f"smoke test: models: {', '.join(models) or 'none'}")
    if models:
        first = models.get(DEFAULT_MODEL) or next(iter(models.values()))
        print(f"smoke test: {OnnxClassifier(ModelSpec.load(first), device='cpu').describe()}")
    window.shutdown()
    window.close()
    tmp.cleanup()
    print("smoke test: OK")
    return 0


def run_gui(args: argparse.Namespace) -> int:
    if getattr(args, "smoke_test", None):
        return smoke_test(args.smoke_test)
    if getattr(args, "kiosk", False):
        from cellview.gui.kiosk import run_kiosk

        return run_kiosk(args)
    app = make_app()
    from cellview.analysis.model_lookup import resolve_model
    from cellview.base.errors import CellviewError
    from cellview.gui.desktop.window import MainWindow

    window = MainWindow(analysis_defaults=params_from_args(args))
    window.show()
    if getattr(args, "model", None):
        try:
            window.add_model(resolve_model(args.model))
        except CellviewError as exc:
            window.show_error(exc, "Model not usable")
    if getattr(args, "slide", None):
        window.open_path(str(Path(args.slide)), mpp_um=getattr(args, "mpp", None))
    return int(app.exec())
