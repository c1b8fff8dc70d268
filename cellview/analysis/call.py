"""The call for a whole slide or image: the worst finding first, with its evidence, in one set of words.

``slide_call(result)`` is the one rule every surface uses (the console line of ``cellview analyze``, the
metadata JSON, cohort.csv / .html, the PNG legend, the viewer and the kiosk); ``SlideCall.text`` is the
one sentence they print, made by ``describe_call`` only. The rule, in order:

1. no result, or no tile classified → ``not_analysed``;
2. no tissue tile in the grid → ``too_little_tissue``;
3. most tissue tiles out of the model's domain (``results.mostly_out_of_domain``) → ``out_of_domain``
   (no trustworthy call; malignant tissue among the in-domain tiles is still named);
4. fewer counted (in-domain) tiles than ``min_tissue_tiles`` → ``too_little_tissue``;
5. malignant when the counted tiles predicted malignant with at least the threshold's confidence make
   ``min_share`` of the counted tiles, or (pixel size known) their largest connected region
   (``morphology.malignant_regions``) reaches ``min_area_mm2``, or malignant is the largest share;
6. else benign on the same kind of threshold (or as the largest share); 7. else normal.

The largest share alone hid a malignant minority behind a normal majority (17 of 48 tiles malignant called
"normal 55 %"): a screening tool must not. The thresholds are per model (``callrule.CallThresholds``, from
the sidecar), chosen for the bundled models by leave-one-source-out (colon-he) or grouped CV (lung-he, one
source) in bench/slide_call.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cellview.analysis.callrule import CALLED, RULE_VERSION, CallThresholds
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import AnalysisResult, mostly_out_of_domain, plural, tissue_tile_fraction

CALL_STATES = ("malignant", "benign", "normal", "out_of_domain", "too_little_tissue", "not_analysed")
"""``SlideCall.category``: the three findings, worst first, then the states that make no finding."""

HEADLINES = {
    "malignant": "Malignant",
    "benign": "Benign",
    "normal": "Normal",
    "out_of_domain": "No call: out of domain",
    "too_little_tissue": "No call: too little tissue",
    "not_analysed": "Not analysed",
}
"""The headline word(s) of each state: what a kiosk shows big, what cohort tables sort by."""


@dataclass(frozen=True)
class Finding:
    """The tiles of one category that count for the call (counted, predicted it, confidence ≥ the threshold)."""

    category: str
    tiles: int
    share: float  # of the counted tiles
    regions: int  # connected regions of those tiles
    largest_mm2: float | None  # the largest region's area; None when the pixel size is unknown (or no region)
    largest_tiles: int  # tiles in the largest region
    passed: bool  # the threshold is met (share, or area when the pixel size is known)
    largest_share: bool = False  # the category has the most counted tiles (worse categories win ties)

    @property
    def called(self) -> bool:
        """The category makes the call unless a worse one does: its threshold is met, or it is the largest share."""
        return self.passed or self.largest_share

    def to_dict(self) -> dict[str, Any]:
        return {"tiles": self.tiles, "share": round(self.share, 4), "regions": self.regions,
                "largest_region_mm2": None if self.largest_mm2 is None else round(self.largest_mm2, 5),
                "largest_region_tiles": self.largest_tiles, "passes_threshold": self.passed,
                "largest_share": self.largest_share}


@dataclass(frozen=True)
class SlideCall:
    """The call for one slide or image: a state (``CALL_STATES``), its words and the figures behind them."""

    category: str
    headline: str  # HEADLINES[category]
    evidence: str  # the figures in words: "2 regions, largest 0.10 mm², 35 % of tiles (confidence ≥ 0.9)"
    findings: tuple[Finding, ...] = ()  # malignant, benign (empty when no call could be made)
    shares_percent: dict[str, int] = field(default_factory=dict)  # every category's whole % of the counted tiles
    counted_tiles: int = 0  # the tiles shares are of (in domain, classified)
    analysed_tiles: int = 0
    total_tiles: int = 0
    out_of_domain_fraction: float | None = None  # of the tissue tiles; None without domain statistics
    area_known: bool = False  # the pixel size is known, so region areas could be used
    partial: bool = False  # a cancelled run: the call covers the tiles done so far
    thresholds: CallThresholds = field(default_factory=CallThresholds)
    rule_version: int = RULE_VERSION

    @property
    def text(self) -> str:
        """The one sentence every surface prints: 'Malignant: 2 regions, largest 0.10 mm², 35 % of tiles (confidence ≥
        0.9)'."""
        return f"{self.headline}: {self.evidence}" if self.evidence else self.headline

    @property
    def is_finding(self) -> bool:
        """malignant, benign or normal: a call was made (not out of domain, too little tissue or not analysed)."""
        return self.category in CATEGORIES

    @property
    def shares_text(self) -> str:
        """Every share, largest first: 'normal 55 % · malignant 35 % · benign 10 %' ('' with no counted tile)."""
        if not self.counted_tiles:
            return ""
        pct = self.shares_percent
        return " · ".join(f"{c} {pct[c]} %" for c in sorted(CATEGORIES, key=lambda c: -pct.get(c, 0)))

    def finding(self, category: str) -> Finding | None:
        return next((f for f in self.findings if f.category == category), None)

    def to_dict(self) -> dict[str, Any]:
        """The metadata JSON's ``call`` object (cohort tables read ``category`` and ``text``)."""
        t = self.thresholds
        return {
            "category": self.category, "headline": self.headline, "evidence": self.evidence, "text": self.text,
            "shares_percent": dict(self.shares_percent), "counted_tiles": self.counted_tiles,
            "analysed_tiles": self.analysed_tiles, "total_tiles": self.total_tiles,
            "out_of_domain_fraction": None if self.out_of_domain_fraction is None
            else round(self.out_of_domain_fraction, 4),
            "area_known": self.area_known, "partial": self.partial,
            "findings": {f.category: f.to_dict() for f in self.findings},
            "rule_version": self.rule_version,
            "thresholds": thresholds_dict(t),
            "thresholds_chosen_by": t.chosen_by or "default (not validated for this model)",
        }


CONFIDENCE_SLACK = 1e-6
"""Confidences are float32: a tile shown as 90 % (0.8999999762) counts at a 0.9 threshold."""


def thresholds_dict(thresholds: CallThresholds) -> dict[str, Any]:
    """The thresholds a call was made with, as the metadata JSON records them (a re-run compares them)."""
    return {c: thresholds.for_category(c).to_dict() for c in CALLED} | {"min_tissue_tiles": thresholds.min_tissue_tiles}


# ----------------------------------------------------------------------------- the rule


def _finding(result: AnalysisResult, category: str, thresholds: CallThresholds, counted: np.ndarray,
             n_counted: int, counts: dict[str, int]) -> Finding:
    from cellview.analysis.morphology import malignant_regions

    t = thresholds.for_category(category)
    floor = t.min_confidence - CONFIDENCE_SLACK
    hit = counted & (result.pred_category == CATEGORIES.index(category))
    hit &= np.nan_to_num(result.confidence, nan=-1.0) >= floor
    n = int(hit.sum())
    share = n / n_counted if n_counted else 0.0
    regions = malignant_regions(result, floor, category=category) if n else []
    area_known = result.slide.mpp is not None
    largest = regions[0] if regions else None
    largest_mm2 = float(largest.area_mm2) if largest is not None and math.isfinite(largest.area_mm2) else None
    passed = n > 0 and ((t.min_share is not None and share >= t.min_share - 1e-12) or (
        area_known and t.min_area_mm2 is not None and largest_mm2 is not None and largest_mm2 >= t.min_area_mm2 - 1e-12))
    # the largest share (ties to the worse category, as CATEGORIES are ordered): a rule that called "normal" where
    # most tiles are malignant, only because they are less sure than the threshold, would be absurd
    k = CATEGORIES.index(category)
    most = counts[category] > 0 and all(counts[category] > counts[c] if j < k else counts[category] >= counts[c]
                                        for j, c in enumerate(CATEGORIES) if j != k)
    return Finding(category, n, share, len(regions), largest_mm2, largest.n_tiles if largest is not None else 0, passed,
                   most)


def slide_call(result: AnalysisResult | None, thresholds: CallThresholds | None = None) -> SlideCall:
    """The call for ``result`` (None: not analysed) with the model's thresholds (``result.model.call``)."""
    if thresholds is None:
        thresholds = result.model.call if result is not None else CallThresholds()
    if result is None:
        return _make("not_analysed", thresholds)
    base: dict[str, Any] = {"analysed_tiles": result.n_done, "total_tiles": result.n_tiles,
                            "area_known": result.slide.mpp is not None, "partial": result.status != "complete"}
    if result.n_tiles == 0:
        return _make("too_little_tissue", thresholds, **base)
    if result.n_done == 0:
        return _make("not_analysed", thresholds, **base)
    counted = result.counted()
    n_counted = int(counted.sum())
    frac = tissue_tile_fraction(result)
    base["out_of_domain_fraction"] = None if frac is None else 1.0 - frac
    base["counted_tiles"] = n_counted
    base["shares_percent"] = result.category_percentages()
    counts = result.category_counts()
    findings = tuple(_finding(result, c, thresholds, counted, n_counted, counts) for c in CALLED)
    base["findings"] = findings
    training = result.model.domain.training_data if result.model.domain is not None else ""
    if mostly_out_of_domain(result):
        return _make("out_of_domain", thresholds, training_data=training, **base)
    if n_counted < thresholds.min_tissue_tiles:
        return _make("too_little_tissue", thresholds, **base)
    category = next((f.category for f in findings if f.called), "normal")
    return _make(category, thresholds, **base)


def _make(category: str, thresholds: CallThresholds, training_data: str = "", **figures: Any) -> SlideCall:
    call = SlideCall(category, HEADLINES[category], "", thresholds=thresholds, **figures)
    return replace(call, evidence=describe_call(call, training_data))


# ----------------------------------------------------------------------------- the words


def format_mm2(area: float) -> str:
    """'0.10 mm²', '2.4 mm²', '0.004 mm²': two decimals, more only for specks."""
    if area >= 10:
        return f"{area:.0f} mm²"
    if area >= 1:
        return f"{area:.1f} mm²"
    return f"{area:.2f} mm²" if area >= 0.01 else f"{area:.3f} mm²"


def format_share(share: float) -> str:
    """'35 %', '4.5 %', '0 %' (one decimal below 10 %, so a share just under a threshold never reads as it)."""
    pct = share * 100
    if pct == 0 or pct >= 10:
        return f"{math.floor(pct + 0.5) if pct < 100 else 100:.0f} %"
    return f"{math.floor(pct * 10) / 10:.1f} %"


def _regions_words(f: Finding) -> str:
    size = format_mm2(f.largest_mm2) if f.largest_mm2 is not None else plural(f.largest_tiles, "tile")
    if f.regions == 1:
        return f"1 region of {size}"
    return f"{f.regions} regions, largest {size}"


def _finding_words(f: Finding, thresholds: CallThresholds, shares_percent: dict[str, int] | None = None) -> str:
    """'2 regions, largest 0.10 mm², 35 % of tiles (confidence ≥ 0.9)': the figures count only the tiles at least
    that sure, so they never read as the shares of every tile beside them (a viewer showed "malignant 27 %" and
    outlined a 0.22 mm² region under a call of "24 % of tiles, largest 0.19 mm²"). Called as the largest share
    only: 'the largest share, 55 % of tiles' (its tiles are less sure than the threshold's confidence)."""
    if not f.passed and f.largest_share and shares_percent is not None:
        return f"the largest share, {shares_percent.get(f.category, 0)} % of tiles"
    sure = thresholds.for_category(f.category).min_confidence
    return f"{_regions_words(f)}, {format_share(f.share)} of tiles (confidence ≥ {sure:g})"


def describe_call(call: SlideCall, training_data: str = "") -> str:
    """The evidence words of a call: the one place they are made (``SlideCall.text`` puts the headline first)."""
    parts: list[str] = []
    if call.category == "not_analysed":
        return "no tile classified yet" if call.total_tiles else "no result for this slide"
    if call.category == "too_little_tissue":
        if not call.total_tiles:
            parts.append("no tissue tile found")
        else:
            need = call.thresholds.min_tissue_tiles
            parts.append(f"{plural(call.counted_tiles, 'tile')} counted, {need} needed")
    elif call.category == "out_of_domain":
        frac = call.out_of_domain_fraction or 0.0
        what = training_data or "the model's training data"
        parts.append(f"{format_share(frac)} of the tissue tiles are unlike {what}")
        mal = call.finding("malignant")
        if mal is not None and mal.called:
            parts.append(f"malignant tiles among the rest: {_finding_words(mal, call.thresholds, call.shares_percent)}")
    elif call.category in CALLED:
        f = call.finding(call.category)
        assert f is not None
        parts.append(_finding_words(f, call.thresholds, call.shares_percent))
    else:  # normal
        parts.append(f"{call.shares_percent.get('normal', 0)} % of tiles normal")
    if call.category in ("benign", "normal"):
        for c in CALLED:
            f = call.finding(c)
            if c != call.category and f is not None and f.tiles and not f.called:
                parts.append(f"{c} {format_share(f.share)} of tiles, below the threshold")
    t = call.thresholds
    if call.is_finding and not call.area_known and any(t.for_category(c).min_area_mm2 is not None for c in CALLED):
        parts.append("pixel size unknown: areas not used, shares only")
    if call.partial:
        parts.append(f"partial run: {call.analysed_tiles} of {plural(call.total_tiles, 'tile')}")
    if call.is_finding and t.is_default:
        parts.append("default thresholds, not validated for this model")
    return "; ".join(parts)
