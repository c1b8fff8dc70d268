"""The fonts every drawn figure uses (exports, explanation figures): shipped, so µ and other symbols render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_FONT_DIR = Path(__file__).parent / "resources" / "fonts"


def font(size: int, bold: bool = False) -> Any:
    """DejaVu Sans (shipped: it has µ and other symbols Pillow's default font lacks)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(_FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)
    except OSError:
        return ImageFont.load_default(size=size)
