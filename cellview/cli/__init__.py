"""The `cellview` command line: one module per command, each adding its own sub-parser.

``commands`` builds the parser from the command modules (``analyze``, ``info``, ``models``, ``explain``,
``adapt``, ``domain``, ``train``, ``evaluate``, ``export``) and ``program.main`` runs one; ``viewer`` starts the desktop
viewer or the kiosk after ``qtcheck`` has made sure Qt can start. Commands import the engine, the
lab's tools, scale-out, training or the GUI only when they run, so this is the top layer and nothing
imports it but the tests.
"""

from cellview.cli.commands import build_parser
from cellview.cli.program import main

__all__ = ["build_parser", "main"]
