"""`cellview info`: vendor, levels, dimensions and µm per pixel of slides, and where each came from."""

from __future__ import annotations

import argparse
import sys

from cellview.base.errors import SlideError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print vendor, levels, dimensions and mpp of slides")
    p.add_argument("paths", nargs="+")
    p.add_argument("--mpp", type=float)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from cellview.slides.opening import describe, open_slide

    status = 0
    for p in args.paths:
        try:
            with open_slide(p, mpp_um=args.mpp) as slide:
                print(describe(slide))
        except SlideError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            if exc.details and getattr(args, "verbose", False):
                print(f"  details: {exc.details}", file=sys.stderr)
            status = 1
    return status
