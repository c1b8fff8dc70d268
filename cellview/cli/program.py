"""``main``: a headless command when one is named, else the viewer (or the kiosk) with its own parser.

Commands import their work only when they run, so ``cellview --help`` and the viewer start without torch or Dask.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from cellview.cli import viewer
from cellview.cli.commands import SUBCOMMANDS, build_parser

log = logging.getLogger("cellview")

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="cellview: %(message)s")
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in SUBCOMMANDS:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:  # e.g. a second Ctrl-C while a cohort shuts down: no traceback
            print("interrupted", file=sys.stderr)
            return 130
    return viewer.launch(viewer.build_gui_parser().parse_args(argv))
