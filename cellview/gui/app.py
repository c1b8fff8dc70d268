"""`cellview [SLIDE]`: start the viewer with the command line's analysis options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellview.results import AnalysisParams
from cellview.tissue import TissueParams


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
    )


def make_app(argv: list[str] | None = None):
    """The QApplication with CellView's theme (reused by tests, benchmarks and the screenshot script)."""
    from PySide6.QtWidgets import QApplication

    from cellview.gui.style import apply_theme

    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    # Worker threads run Python between their GIL-free calls (OpenSlide, ONNX Runtime, OpenCV); a
    # shorter switch interval bounds how long the UI thread waits for the GIL (default 5 ms).
    sys.setswitchinterval(0.001)
    if not app.property("cellview_themed"):  # restyling a live application can crash Qt
        app.setApplicationName("CellView")
        app.setOrganizationName("cellview")
        apply_theme(app)
        app.setProperty("cellview_themed", True)
    return app


def run_gui(args: argparse.Namespace) -> int:
    if getattr(args, "kiosk", False):
        print("cellview: kiosk mode is not implemented yet.", file=sys.stderr)
        return 2
    app = make_app()
    from cellview.errors import CellviewError
    from cellview.gui.mainwindow import MainWindow
    from cellview.model import resolve_model

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
