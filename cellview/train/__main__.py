"""``python -m cellview.train {train,evaluate,export} ...`` until the main CLI wires these in."""

from __future__ import annotations

import argparse
import sys

from cellview.train.cli import add_parsers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cellview", description="CellView model training")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
