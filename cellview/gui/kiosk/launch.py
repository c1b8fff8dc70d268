"""`cellview --kiosk`: the kiosk window for the command line and its settings file, started and run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cellview.analysis.classifier import OnnxClassifier
from cellview.gui.kiosk.exit import EXIT_LOCKED_MESSAGE
from cellview.gui.kiosk.window import KioskWindow
from cellview.gui.qtapp import make_app
from cellview.viewer.kiosk.cases import load_classifier
from cellview.viewer.kiosk.settings import KioskSettings, SalvagedSettings


def settings_from_args(args: argparse.Namespace) -> SalvagedSettings:
    """The settings file (``--kiosk-config`` or the default one) with --watch/--outbox/--model/--device/
    --stain-normalize/--tta/--precision on top.

    Lenient (:meth:`KioskSettings.load_lenient`): bad values are dropped and reported, never
    raised. ``--device auto``, ``--stain-normalize none``, ``--tta none`` and ``--precision auto`` are the parser's
    defaults, so they cannot be told from "not given": they keep the file's values.
    """
    device = getattr(args, "device", None)
    stain, tta = getattr(args, "stain_normalize", None), getattr(args, "tta", None)
    precision = getattr(args, "precision", None)
    return KioskSettings.load_lenient(
        getattr(args, "kiosk_config", None), watch_dir=getattr(args, "watch", None),
        outbox_dir=getattr(args, "outbox", None), model=getattr(args, "model", None),
        device=None if device == "auto" else device, stain_normalize=None if stain == "none" else stain,
        tta=None if tta == "none" else tta, precision=None if precision == "auto" else precision)


def build_kiosk(args: argparse.Namespace,
                classifier_loader: Callable[[KioskSettings], OnnxClassifier] = load_classifier) -> KioskWindow:
    """The kiosk window for these arguments, not started; settings problems go to stderr (the journal).

    A bad settings file never stops the kiosk: under systemd's ``Restart=on-failure`` that would
    be a restart loop on a blank screen. It starts with what was valid and shows the rest.
    """
    loaded = settings_from_args(args)
    for problem in loaded.problems:
        print(f"cellview: {problem.message}" + (f"\n  {problem.details}" if problem.details else ""), file=sys.stderr)
    if loaded.exit_locked:
        print(f"cellview: {EXIT_LOCKED_MESSAGE}", file=sys.stderr)
    return KioskWindow(loaded.settings, classifier_loader, settings_problems=loaded.problems,
                       exit_locked=loaded.exit_locked, settings_file=loaded.path)


def run_kiosk(args: argparse.Namespace) -> int:
    """`cellview --kiosk`: runs until the operator's exit chord (and PIN), even on a bad settings file."""
    app = make_app()
    window = build_kiosk(args)
    window.start()
    return int(app.exec())
