"""What the overlay shows: its settings (style, filters, confidence), and what it says about the model's domain.

``DomainNotice`` is the banner (most of the tissue is unlike the training data), a quieter note, or that the
model has no domain statistics; "Show calls anyway" is an overlay setting, so it lives here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cellview.analysis.domain import NOT_AVAILABLE
from cellview.analysis.results import (
    AnalysisResult,
    domain_banner,
    plural,
)
from cellview.outputs.overlay import OverlaySettings
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.events import EmitterGroup
from cellview.viewer.jobs import nothing


@dataclass(frozen=True)
class DomainNotice:
    """What the views say about the model's domain for the shown result.

    ``kind``: "none" (no result), "unavailable" (the model has no domain statistics: say so where
    the score would be), "in" (no tile out of domain), "some" (a quieter note) or "most" (the
    banner: most of the tissue is unlike the training data). ``shown_anyway``: the user chose to
    see and count the out-of-domain tiles' calls (``OverlaySettings.show_out_of_domain``).
    """

    kind: str
    headline: str = ""
    detail: str = ""
    n_out: int = 0
    n_done: int = 0
    tissue_in_fraction: float | None = None
    shown_anyway: bool = False

    @property
    def banner(self) -> bool:
        return self.kind == "most"

    @property
    def note(self) -> bool:
        return self.kind == "some"

    @property
    def text(self) -> str:
        return f"{self.headline} {self.detail}".strip()


def domain_notice(result: AnalysisResult | None, shown_anyway: bool = False) -> DomainNotice:
    """Banner, note or nothing for a (possibly streaming) result; the banner rule is ``results.domain_banner``."""
    if result is None:
        return DomainNotice("none", shown_anyway=shown_anyway)
    if result.model.domain is None or result.domain_score is None:
        return DomainNotice("unavailable", NOT_AVAILABLE[0].upper() + NOT_AVAILABLE[1:] + ".",
                            "Nothing tells whether this tissue is like the model's training data.",
                            n_done=result.n_done, shown_anyway=shown_anyway)
    n_out, n_done = int(result.out_of_domain.sum()), result.n_done
    banner = domain_banner(result)
    drawn = ("shown in category colours and counted anyway." if shown_anyway
             else "drawn hatched grey and left out of the counts.")
    if banner.show:
        assert banner.in_domain_fraction is not None
        return DomainNotice(
            "most", banner.headline,
            f"{1 - banner.in_domain_fraction:.0%} of the tissue tiles are out of the model's domain, {drawn}",
            n_out, n_done, banner.in_domain_fraction, shown_anyway)
    if n_out == 0:
        text = f"Every classified tile is in the model's domain ({plural(n_done, 'tile')})." if n_done else ""
        return DomainNotice("in", text, "", 0, n_done, banner.in_domain_fraction, shown_anyway)
    return DomainNotice(
        "some", f"{n_out:,} of {plural(n_done, 'tile')} ({n_out / n_done:.0%}) are out of the model's domain,",
        drawn, n_out, n_done, banner.in_domain_fraction, shown_anyway)


class OverlayState:
    """What the overlay shows, as ``model.overlay`` (module docstring).

    Events: ``overlay`` (the new ``OverlaySettings``) and ``domain`` (the new ``DomainNotice``). The viewer
    recomputes the regions through ``on_regions_settings`` when their switch or the confidence threshold
    changed.
    """

    EVENTS = ("overlay", "domain")

    def __init__(self, analysis: AnalysisRun) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.analysis = analysis
        self.settings = OverlaySettings()
        self.domain = DomainNotice("none")
        """What the views say about the model's domain for the shown result (``update_domain`` keeps it)."""
        self.on_regions_settings: Callable[[], None] = nothing

    def set(self, **changes: Any) -> None:
        """Change the overlay's settings (``OverlaySettings`` fields: style, opacity, categories, mode…)."""
        new = replace(self.settings, **changes)
        if new == self.settings:
            return
        old, self.settings = self.settings, new
        self.events.overlay(new)
        if new.show_out_of_domain != old.show_out_of_domain:
            self.update_domain()
        if (new.show_regions, new.min_confidence) != (old.show_regions, old.min_confidence):
            self.on_regions_settings()

    def show_calls_anyway(self, on: bool) -> None:
        """Draw and count out-of-domain tiles like the others (the banner's toggle)."""
        self.set(show_out_of_domain=bool(on))

    def for_new_slide(self) -> None:
        """Drop the display settings that belong to one slide (``overlay.PER_SLIDE``: the domain override and the
        filters); the look stays the user's."""
        settings = self.settings.for_new_slide()
        if settings != self.settings:
            self.settings = settings
            self.events.overlay(settings)

    def notice(self) -> DomainNotice:
        """The domain notice of the shown result as the overlay draws it now."""
        return domain_notice(self.analysis.shown_result(), self.settings.show_out_of_domain)

    def update_domain(self) -> None:
        notice = self.notice()
        if notice != self.domain:
            self.domain = notice
            self.events.domain(notice)
