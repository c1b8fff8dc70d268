"""The thresholds of the slide call (``call.slide_call``): one frozen record per model, read from its sidecar.

A model's sidecar may hold a ``call`` section::

    "call": {
      "rule_version": 1,
      "malignant": {"min_confidence": 0.5, "min_share": 0.1, "min_area_mm2": 0.05},
      "benign": {"min_confidence": 0.5, "min_share": 0.25, "min_area_mm2": null},
      "min_tissue_tiles": 1,
      "chosen_by": "how the figures were chosen",
      "validation": {...}
    }

A category is called when the share of counted tiles predicted as it with at least ``min_confidence``
reaches ``min_share``, or (pixel size known) when its largest connected region of such tiles reaches
``min_area_mm2``; ``null`` switches a test off. A sidecar without the section gets ``DEFAULT_THRESHOLDS``,
which are documented as not validated for that model. Kept apart from ``call`` so that ``model`` can
validate sidecars without importing results (no import cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from cellview.base.errors import ModelError

RULE_VERSION = 1
"""The version of the rule in ``call.slide_call``; a sidecar written for a newer rule is refused."""

CALLED = ("malignant", "benign")
"""The categories the rule tests, worst first; anything else in domain is normal."""

_LIMITS = ("min_confidence", "min_share", "min_area_mm2")
_KEYS = {"rule_version", *CALLED, "min_tissue_tiles", "chosen_by", "validation"}


@dataclass(frozen=True)
class CategoryThreshold:
    """When the tiles of one category make the call: a share of the counted tiles and/or a region's area."""

    min_confidence: float = 0.5  # a tile counts for the category from this confidence on (0–1)
    min_share: float | None = 0.1  # of the counted tiles (0–1]; None: shares are not used
    min_area_mm2: float | None = None  # the largest region, when the pixel size is known; None: areas not used

    def to_dict(self) -> dict[str, Any]:
        return {"min_confidence": self.min_confidence, "min_share": self.min_share, "min_area_mm2": self.min_area_mm2}


@dataclass(frozen=True)
class CallThresholds:
    """A model's slide-call thresholds (its sidecar's ``call`` section, or the documented default)."""

    malignant: CategoryThreshold = field(default_factory=lambda: CategoryThreshold(0.9, 0.05, 0.1))
    benign: CategoryThreshold = field(default_factory=lambda: CategoryThreshold(0.9, 0.25, None))
    min_tissue_tiles: int = 1  # fewer counted tiles than this: too little tissue for a call
    chosen_by: str = ""  # how the figures were chosen ("" : the default, not validated for this model)
    rule_version: int = RULE_VERSION
    validation: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def is_default(self) -> bool:
        return not self.chosen_by

    def for_category(self, category: str) -> CategoryThreshold:
        return self.malignant if category == "malignant" else self.benign

    def describe(self, category: str) -> str:
        """'≥ 10 % of tiles or a region ≥ 0.05 mm² at confidence ≥ 50 %' (what makes the category's call)."""
        t = self.for_category(category)
        tests = []
        if t.min_share is not None:
            tests.append(f"≥ {t.min_share * 100:g} % of tiles")
        if t.min_area_mm2 is not None:
            tests.append(f"a region ≥ {t.min_area_mm2:g} mm²")
        what = " or ".join(tests) if tests else "never"
        return f"{what} at confidence ≥ {t.min_confidence * 100:g} %"

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's ``call`` section."""
        out: dict[str, Any] = {"rule_version": self.rule_version, "malignant": self.malignant.to_dict(),
                               "benign": self.benign.to_dict(), "min_tissue_tiles": self.min_tissue_tiles,
                               "chosen_by": self.chosen_by}
        if self.validation:
            out["validation"] = self.validation
        return out

    @classmethod
    def from_sidecar(cls, entry: Any, where: str = "model sidecar") -> CallThresholds:
        """Validate a sidecar's ``call`` section (None: ``DEFAULT_THRESHOLDS``); ModelError says what is wrong."""
        if entry is None:
            return DEFAULT_THRESHOLDS
        if not isinstance(entry, dict):
            raise ModelError(f"The {where}: 'call' must be an object (see the model card format in README.md).")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ModelError(f"The {where}: unknown key {unknown[0]!r} in 'call'; use {', '.join(sorted(_KEYS))}.")
        version = entry.get("rule_version", RULE_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelError(f"The {where}: 'call.rule_version' must be a whole number from 1.")
        if version > RULE_VERSION:
            raise ModelError(f"The {where}: its slide-call thresholds are for rule version {version}; this "
                             f"cellview knows version {RULE_VERSION}. Update cellview, or remove the 'call' section.")
        parts = {c: _category(entry.get(c), f"{where}: 'call.{c}'", getattr(DEFAULT_THRESHOLDS, c)) for c in CALLED}
        tiles = entry.get("min_tissue_tiles", 1)
        if not isinstance(tiles, int) or isinstance(tiles, bool) or tiles < 1:
            raise ModelError(f"The {where}: 'call.min_tissue_tiles' must be a whole number of tiles, at least 1.")
        chosen = entry.get("chosen_by", "")
        if not isinstance(chosen, str):
            raise ModelError(f"The {where}: 'call.chosen_by' must be text.")
        validation = entry.get("validation", {})
        if not isinstance(validation, dict):
            raise ModelError(f"The {where}: 'call.validation' must be an object.")
        return cls(parts["malignant"], parts["benign"], tiles, chosen.strip() or "the model's sidecar", version,
                   validation)


def _number(value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ModelError(f"The {name} must be a number.")
    v = float(value)
    if v > high or v < low or (low_open and v == low):
        raise ModelError(f"The {name} must be {'above' if low_open else 'from'} {low:g}"
                         f"{' and at most' if low_open else ' to'} {high:g}, got {v:g}.")
    return v


def _category(entry: Any, where: str, default: CategoryThreshold) -> CategoryThreshold:
    if entry is None:
        return default
    if not isinstance(entry, dict):
        raise ModelError(f"The {where} must be an object with {', '.join(_LIMITS)}.")
    unknown = sorted(set(entry) - set(_LIMITS))
    if unknown:
        raise ModelError(f"The {where}: unknown key {unknown[0]!r}; use {', '.join(_LIMITS)}.")
    conf = _number(entry.get("min_confidence", default.min_confidence), f"{where}.min_confidence", 0.0, 1.0)
    share = entry.get("min_share", default.min_share)
    area = entry.get("min_area_mm2", default.min_area_mm2)
    share = None if share is None else _number(share, f"{where}.min_share", 0.0, 1.0, low_open=True)
    area = None if area is None else _number(area, f"{where}.min_area_mm2", 0.0, 1e6, low_open=True)
    if share is None and area is None:
        raise ModelError(f"The {where} needs 'min_share' or 'min_area_mm2' (or both); with neither the category "
                         "could never be called.")
    return CategoryThreshold(conf, share, area)


DEFAULT_THRESHOLDS = CallThresholds()
"""For a sidecar without a ``call`` section (a user's own model): what leave-one-source-out chose for the bundled
colon-he — malignant from 5 % of the counted tiles or a region of 0.1 mm², counting tiles at confidence ≥ 90 %; benign
from 25 % of them at ≥ 90 % (either also as the largest share). Not validated for that model:
``SlideCall.thresholds.is_default`` says so and the words name it."""


def with_validation(thresholds: CallThresholds, chosen_by: str, validation: dict[str, Any]) -> CallThresholds:
    """The same thresholds, recording how they were chosen (bench/slide_call.py writes sidecars with it)."""
    return replace(thresholds, chosen_by=chosen_by, validation=validation)
