"""The headless commands and the parser they make together (each command module adds its own sub-parser)."""

from __future__ import annotations

import argparse

from cellview import __version__
from cellview.cli import adapt, analyze, domain, evaluate, explain, export, info, models, serve, train

COMMANDS = (analyze, info, models, explain, adapt, domain, train, evaluate, export, serve)
SUBCOMMANDS = ("analyze", "info", "train", "evaluate", "export", "models", "explain", "domain", "adapt", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellview", description="Tile-level malignant / benign / normal "
                                     "classification of histology slides and images.")
    parser.add_argument("--version", action="version", version=f"cellview {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show technical details of errors")
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser
