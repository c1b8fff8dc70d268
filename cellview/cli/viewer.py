"""`cellview [SLIDE]` and `cellview --kiosk`: the viewer's own parser, and a launch that says what is missing instead of letting Qt abort."""

from __future__ import annotations

import argparse
import sys

from cellview import __version__
from cellview.cli.commands import build_parser
from cellview.cli.options import add_analysis_options


def commands_epilog() -> str:
    """The sub-commands with their one-line help, for the top-level help."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = ["commands (headless; cellview COMMAND --help for their options):"]
    lines += [f"  {name:<10} {helps.get(name, '')}" for name in sub.choices]
    lines += ["", "examples:", "  cellview slide.svs                      open a slide in the viewer",
              "  cellview --kiosk --watch /data/inbox    full-screen kiosk that analyses dropped slides",
              "  cellview analyze slides/ --out results  analyse a folder headlessly"]
    return "\n".join(lines + ["", kiosk_epilog()])


def kiosk_epilog() -> str:
    """How to leave the kiosk and where its settings live (the top-level help's last paragraph)."""
    from cellview.viewer.kiosk.settings import KioskSettings, default_settings_path

    chord = KioskSettings().exit_chord
    return "\n".join([
        "kiosk:",
        f"  leave it with {chord} (the \"exit_chord\" setting), then the PIN if one is set (\"pin\");",
        "  nothing else closes it (no window buttons, Alt+F4 or Esc).",
        f"  settings: {default_settings_path()} (JSON; --kiosk-config FILE reads another),",
        "  e.g. {\"watch_dir\": \"/data/inbox\", \"outbox_dir\": \"/data/outbox\", \"pin\": \"2468\", \"mpp_um\": 0.5};",
        "  every setting is described in the README (section \"Kiosk\").",
    ])


def build_gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cellview", usage="cellview [SLIDE] [--kiosk] [options]\n       cellview COMMAND [options]",
        description="Open the CellView viewer (a slide or image, if given), or with --kiosk the full-screen "
                    "touch kiosk; or run a headless COMMAND.",
        epilog=commands_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cellview {__version__}")
    p.add_argument("slide", nargs="?", help="slide or image to open in the viewer")
    p.add_argument("--kiosk", action="store_true", help="full-screen kiosk mode (watch folder, touch controls)")
    p.add_argument("--watch", help="kiosk: folder to watch for new slides")
    p.add_argument("--outbox", help="kiosk: folder for exported results")
    p.add_argument("--kiosk-config", metavar="FILE",
                   help="kiosk: settings file (default: the kiosk.json named below; when FILE does not exist the "
                        "defaults apply and the kiosk says so)")
    # Packaging check (bundles): start offscreen, open the slide, wait for it to paint, exit 0.
    p.add_argument("--smoke-test", metavar="SLIDE", help=argparse.SUPPRESS)
    add_analysis_options(p)
    return p


def launch(args: argparse.Namespace) -> int:
    """Start the viewer or the kiosk; a missing display or library is said in words, before Qt loads."""
    import os

    if args.smoke_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from cellview.cli.qtcheck import explain_import_error, viewer_problem

    problem = viewer_problem()  # before Qt loads: Qt aborts the process without saying what to install
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        from cellview.gui.app import run_gui
    except ImportError as exc:
        print(explain_import_error(exc), file=sys.stderr)
        return 2
    scale_from_model(args)
    return int(run_gui(args) or 0)


def scale_from_model(args: argparse.Namespace) -> None:
    """`cellview SMEAR.jpg --model M`: when the image states no pixel size and M's sidecar says how it reads such an
    image, the launch says what the run will assume, as ``cellview analyze`` does. The options stay as given: the
    viewer applies the model's rule to each image it opens (a field's pixel size depends on its size, so one
    image's value must not become every later image's ``--mpp``), asks nobody, and shows the assumption beside
    the call. A model without such a rule, or any problem here, says nothing (the viewer asks, or reports)."""
    if not getattr(args, "slide", None) or not getattr(args, "model", None) or args.mpp is not None \
            or getattr(args, "whole_image", False):
        return
    from cellview.analysis.foreground import choose_scale
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.base.errors import CellviewError
    from cellview.slides.opening import open_slide

    try:
        spec = ModelSpec.load(resolve_model(args.model))
        if spec.reading.unstated.read == "ask":
            return
        with open_slide(args.slide) as slide:
            info = slide.info()
    except (CellviewError, OSError):
        return
    choice = choose_scale(spec.reading, info.mpp, False, spec.name, spec.patch_size_pixels, info.dimensions)
    if choice.note:
        print(choice.note, file=sys.stderr)
