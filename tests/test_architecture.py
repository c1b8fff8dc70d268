"""The core stays Qt-free (habit 1) and the code stays ruff-clean (habit 10)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cellview"
QT = re.compile(r"^\s*(from|import)\s+(PySide6|PySide2|PyQt5|PyQt6|pyqtgraph|superqt|qtpy)\b", re.M)


def test_no_qt_import_outside_gui_statically():
    offenders = [
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if "gui" not in p.relative_to(PKG).parts and QT.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_importing_the_core_loads_no_qt_and_no_torch():
    code = (
        "import sys, cellview.slide, cellview.tissue, cellview.tiling, cellview.model, cellview.pipeline, "
        "cellview.results, cellview.export, cellview.cache, cellview.cli\n"
        "cellview.cli.build_parser()\n"
        "bad = [m for m in ('PySide6', 'pyqtgraph', 'torch', 'torchvision') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    root = PKG.parent
    proc = subprocess.run([ruff, "check", "cellview", "tests", "bench"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
