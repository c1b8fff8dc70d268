"""Whether the adapted head is better: an estimate with its uncertainty, not a comparison of two noisy figures.

The before / after check (``check.cross_validate``) calls every labelled image or region with the base
head and with a head fitted without it. Each one is then right or wrong before and after: a *paired*
comparison. The estimate is the change in category balanced accuracy; its interval is a bootstrap over
the labelled images or regions, drawn within each category (every category keeps as many as it has, so
the balanced accuracy stays defined). The words follow the interval:

- ``better``: the whole interval lies above zero — "better by 0.12 (0.03–0.20)";
- ``worse``: the whole interval lies below zero — "worse by 0.10 (0.02–0.18)";
- ``not distinguishable``: the interval holds zero — the labels cannot tell the two heads apart; both
  figures are shown and the person chooses.

With a dozen labels the interval is wide: three images per category cannot show a gain of 0.1. That
is what the labels say, and saying it is the point (issue 26: the old rule, "after > before", refused
clearly better heads and wrote worse ones by chance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

VERDICTS = ("better", "not distinguishable", "worse")
WRITE_POLICY = "unless-worse"
"""When ``cellview adapt`` writes without being told: unless the interval lies below zero — a model that is not
shown better is written marked so, with exit status 3 (``--if-uncertain keep-base``: only when better, as the
viewer does until the person chooses)."""
MEASURES = {"items": "balanced accuracy of the labelled images / regions (each called by the vote of its tiles)",
            "tiles": "balanced accuracy of the labelled images / regions, each scored by the share of its tiles "
                     "called right"}


@dataclass(frozen=True)
class Decision:
    """The change from base to adapted head on the lab's labels, with its bootstrap interval, and its verdict."""

    verdict: str  # one of VERDICTS
    estimate: float  # after − before
    low: float
    high: float
    interval: float  # e.g. 0.9: the 5th and 95th percentiles
    measure: str  # a key of MEASURES
    units: int  # labelled images / regions (or blocks) the estimate rests on
    draws: int = 0
    note: str = ""  # why the verdict is weaker than the interval alone would say

    @property
    def better(self) -> bool:
        return self.verdict == "better"

    @property
    def worse(self) -> bool:
        return self.verdict == "worse"

    @property
    def uncertain(self) -> bool:
        return self.verdict == "not distinguishable"

    def phrase(self) -> str:
        """'better by 0.12 (0.03–0.20)', 'not distinguishable (+0.05; −0.10 to +0.20)', 'worse by 0.10 (0.02–0.18)'."""
        if self.verdict == "better":
            return f"better by {self.estimate:.2f} ({self.low:.2f}–{self.high:.2f})"
        if self.verdict == "worse":
            return f"worse by {-self.estimate:.2f} ({-self.high:.2f}–{-self.low:.2f})"
        if not self.units:
            return "not distinguishable (nothing could be held out)"
        if self.estimate == self.low == self.high == 0:
            return "not distinguishable (no labelled image or region changed its call)"
        return f"not distinguishable ({_signed(self.estimate)}; {_signed(self.low)} to {_signed(self.high)})"

    def measure_text_short(self) -> str:
        return ("the balanced accuracy of the labelled images / regions" if self.measure == "items"
                else "the balanced share of each labelled image's / region's tiles called right")

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "estimate": round(self.estimate, 4), "low": round(self.low, 4),
                "high": round(self.high, 4), "interval": self.interval, "measure": self.measure,
                "measure_text": MEASURES.get(self.measure, self.measure), "units": self.units,
                "bootstrap_draws": self.draws, "phrase": self.phrase(), "note": self.note}


def _signed(v: float) -> str:
    return f"{'+' if v >= 0 else '−'}{abs(v):.2f}"


def balanced_change(before: np.ndarray, after: np.ndarray, category: np.ndarray) -> float:
    """after − before of the mean over categories of the mean score of their units."""
    cats = np.unique(category)
    return float(np.mean([after[category == c].mean() - before[category == c].mean() for c in cats]))


def bootstrap_change(before: np.ndarray, after: np.ndarray, category: np.ndarray, draws: int = 2000,
                     seed: int = 0) -> np.ndarray:
    """The balanced change on ``draws`` resamples of the units, each category resampled within itself (paired)."""
    diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    category = np.asarray(category)
    rng = np.random.default_rng(seed)
    cats = np.unique(category)
    out = np.zeros(draws)
    for c in cats:
        d = diff[category == c]
        picks = rng.integers(0, len(d), size=(draws, len(d)))
        out += d[picks].mean(axis=1)
    return out / len(cats)


def decide(before: np.ndarray, after: np.ndarray, category: np.ndarray, measure: str = "items",
           interval: float = 0.9, draws: int = 2000, seed: int = 0) -> Decision:
    """The verdict from per-unit scores (1 right, 0 wrong, or a share) before and after, paired by unit."""
    before = np.asarray(before, np.float64)
    after = np.asarray(after, np.float64)
    category = np.asarray(category)
    if not len(before):
        return Decision("not distinguishable", 0.0, 0.0, 0.0, interval, measure, 0, 0)
    estimate = balanced_change(before, after, category)
    boot = bootstrap_change(before, after, category, draws, seed)
    tail = (1.0 - interval) / 2.0
    low, high = (float(v) for v in np.quantile(boot, [tail, 1.0 - tail]))
    eps = 1e-9
    verdict = "better" if low > eps else "worse" if high < -eps else "not distinguishable"
    return Decision(verdict, estimate, low, high, interval, measure, int(len(before)), draws)
