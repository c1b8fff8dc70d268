"""The kiosk's cases: one slide analysed and exported to the outbox, and the recent-cases list.

A case never raises for a bad file (it ends as a failed CaseResult the screen shows), never
overwrites an earlier case in the outbox, and is remembered while it runs so a crash on it is
known at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_lookup import resolve_model
from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import CancelToken, Event, Finished, analyze
from cellview.analysis.results import domain_banner, whole_percentages
from cellview.base.errors import CellviewError, MppError
from cellview.base.files import atomic_write_text
from cellview.outputs.export import FORMATS, export_slide_result, output_paths
from cellview.slides.slide import slide_display_name, slide_stem
from cellview.viewer.kiosk.settings import KioskSettings, default_settings_path

log = logging.getLogger(__name__)

RECENT_FILE = ".cellview-recent-cases.json"
CURRENT_FILE = ".cellview-current-case"
"""In the outbox while a case runs: left behind, it names the slide the kiosk stopped on (a crash)."""


def load_classifier(settings: KioskSettings) -> OnnxClassifier:
    """The kiosk's model on its device; slow on a first TensorRT start (engine build), so call it
    from a worker thread behind a "preparing model" screen. Raises ModelError with a plain message.
    """
    return OnnxClassifier(ModelSpec.load(resolve_model(settings.model)), device=settings.device,
                          precision=settings.precision)


@dataclass(frozen=True)
class CaseResult:
    """What the kiosk shows for one case and keeps in its recent-cases list.

    ``status``: "done", "failed" (``message`` says why, in words for the person at the screen)
    or "cancelled". ``outputs`` maps format → file written in the outbox.
    """

    path: Path
    status: str
    message: str
    outputs: dict[str, Path] = field(default_factory=dict)
    summary: str = ""
    details: str = ""
    provider: str = ""
    category_counts: dict[str, int] = field(default_factory=dict)
    started_unix: float = 0.0
    finished_unix: float = field(default_factory=time.time)
    domain_warning: str = ""  # the tissue is mostly unlike the model's training data (``results.domain_banner``)
    needs_scale: bool = False  # failed because the slide does not say its pixel size: the screen can give it

    @property
    def headline(self) -> str:
        """A one-line status for the recent-cases list (the whole message is on the case's card)."""
        if self.ok:
            return self.call or self.message.removeprefix(f"{self.path.name}: ")
        if self.needs_scale:
            return "pixel size unknown: tap to choose the magnification"
        first = self.message.split(". ")[0].rstrip(".")
        return first if len(first) <= 90 else first[:89].rstrip() + "…"

    @property
    def ok(self) -> bool:
        return self.status == "done"

    @property
    def call(self) -> str:
        """'malignant 62% · benign 19% · normal 19%' (shares that add up to 100), or '' without tiles."""
        if not self.category_counts or sum(self.category_counts.values()) <= 0:
            return ""
        pct = whole_percentages(self.category_counts)
        return " · ".join(f"{c} {pct[c]}%" for c in sorted(pct, key=lambda c: -pct[c]))

    @property
    def name(self) -> str:
        """Display name: the file name, or the folder's for a DICOM slide."""
        return slide_display_name(self.path)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["outputs"] = {k: str(v) for k, v in self.outputs.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        data["path"] = Path(data["path"])
        data["outputs"] = {k: Path(v) for k, v in data.get("outputs", {}).items()}
        return cls(**data)


def free_stem(outbox: Path, path: Path, formats: Iterable[str] = FORMATS) -> str:
    """Output stem for a case that overwrites no earlier case in the outbox (``name``, ``name_2``…)."""
    base = slide_stem(path)
    candidate, n = base, 2
    while any(p.exists() for p in output_paths(outbox, candidate, formats).values()):
        candidate = f"{base}_{n}"
        n += 1
    return candidate


def scale_advice(settings_file: Path | None = None) -> str:
    """What the kiosk says about a slide that does not record its pixel size (no command-line advice)."""
    where = settings_file if settings_file is not None else default_settings_path()
    return (f"Choose the magnification it was scanned at on the screen (40×, 20×, 10× or a value), or, for a "
            f"scanner whose files never say, set \"mpp_um\" (µm per pixel) in {where}.")


def iter_case(
    path: str | os.PathLike[str],
    classifier: OnnxClassifier,
    settings: KioskSettings,
    cancel: CancelToken | None = None,
    available_bytes: int | None = None,
    mpp_um: float | None = None,
    settings_file: Path | None = None,
) -> Iterator[Event | CaseResult]:
    """One case as a stream: the pipeline's events as they come, then the ``CaseResult`` (last item).

    Analyse the slide and write its exports to the outbox; never raises for a bad file. Bad
    input (unreadable, truncated, no pixel size) and failed exports end as ``status="failed"``
    with the error's message, so the kiosk shows it and keeps watching. Unexpected exceptions
    are caught too (and logged with their traceback): an unattended kiosk must survive them. A
    cancelled run writes nothing. ``mpp_um``: the pixel size chosen on screen for this case; a slide
    without one fails with ``needs_scale`` and the kiosk's advice (``scale_advice``).
    """
    path = Path(path)
    started = time.time()
    outbox = settings.outbox()

    def failed(message: str, details: str = "", needs_scale: bool = False) -> CaseResult:
        return CaseResult(path, "failed", message, details=details, provider=classifier.provider_label,
                          started_unix=started, needs_scale=needs_scale)

    try:
        params = settings.analysis_params(classifier.spec.patch_size_pixels, available_bytes, mpp_um)
        result = None
        for event in analyze(path, classifier, params, cancel=cancel):
            yield event
            if isinstance(event, Finished):
                result = event.result
        if result is None or result.status != "complete":
            yield CaseResult(path, "cancelled", f"Analysis of {path.name} was cancelled.",
                             provider=classifier.provider_label, started_unix=started)
            return
        extra: dict[str, Any] = {"kiosk": {"source": str(path), "received_unix": started}}
        if classifier.fallback_message:
            extra["fallback"] = classifier.fallback_message
        stem = free_stem(outbox, path, settings.formats)
        outputs, _ = export_slide_result(result, outbox, stem, settings.formats, settings.png_size_px,
                                         settings.region_confidence if settings.regions else None, extra,
                                         source="the kiosk")
    except MppError as exc:
        log.warning("kiosk case %s needs its pixel size: %s", path, exc)
        yield failed(exc.advise(scale_advice(settings_file)).message, exc.details, needs_scale=True)
        return
    except CellviewError as exc:
        log.warning("kiosk case %s failed: %s", path, exc)
        yield failed(exc.message, exc.details)
        return
    except Exception as exc:  # noqa: BLE001 - an unattended kiosk reports and carries on
        log.exception("kiosk case %s failed unexpectedly", path)
        yield failed(f"{path.name} could not be analysed (unexpected error).", repr(exc))
        return
    banner = domain_banner(result)
    yield CaseResult(path, "done", f"{path.name}: {result.call()}", outputs=outputs, summary=result.summary(),
                     provider=result.provider, category_counts=result.category_counts(), started_unix=started,
                     domain_warning=banner.text if banner.show else "")


def process_case(
    path: str | os.PathLike[str],
    classifier: OnnxClassifier,
    settings: KioskSettings,
    cancel: CancelToken | None = None,
    on_event: Callable[[Event], None] | None = None,
    available_bytes: int | None = None,
    mpp_um: float | None = None,
) -> CaseResult:
    """``iter_case`` driven to its end: ``on_event`` gets each pipeline event; returns the ``CaseResult``."""
    case = None
    for item in iter_case(path, classifier, settings, cancel, available_bytes, mpp_um):
        if isinstance(item, CaseResult):
            case = item
        elif on_event is not None:
            on_event(item)
    assert case is not None
    return case


class RecentCases:
    """Newest-first list of finished cases, persisted as JSON so a restart keeps it.

    A case run again (same path) replaces its older entry. A damaged file starts an empty
    list instead of stopping the kiosk. Thread-safe: the worker adds, the GUI reads.
    """

    def __init__(self, path: Path | None, max_items: int = 20) -> None:
        self.path = None if path is None else Path(path)
        self.max_items = int(max_items)
        self._lock = threading.Lock()
        self._items: list[CaseResult] = []
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._items = [CaseResult.from_dict(d) for d in data.get("cases", [])][: self.max_items]
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("ignoring unreadable recent-cases file %s: %s", self.path, exc)

    @classmethod
    def for_settings(cls, settings: KioskSettings) -> RecentCases:
        """The list kept beside the results, in the outbox (a hidden file the watcher never picks up)."""
        return cls(settings.outbox() / RECENT_FILE, settings.recent_cases_max)

    @property
    def items(self) -> tuple[CaseResult, ...]:
        with self._lock:
            return tuple(self._items)

    def add(self, case: CaseResult) -> None:
        with self._lock:
            self._items = [case, *(c for c in self._items if c.path != case.path)][: self.max_items]
            items = list(self._items)
        if self.path is not None:
            try:
                atomic_write_text(self.path, json.dumps({"cases": [c.to_dict() for c in items]}, indent=2))
            except CellviewError as exc:
                log.warning("cannot save recent cases: %s", exc)
            if self.interrupted() == case.path:
                self._current_file().unlink(missing_ok=True)

    def _current_file(self) -> Path:
        assert self.path is not None
        return self.path.parent / CURRENT_FILE

    def begin(self, path: Path) -> None:
        """A case starts: remembered until its result is added, so a crash on it is known at the next start."""
        if self.path is not None:
            try:
                atomic_write_text(self._current_file(), str(Path(path)))
            except CellviewError as exc:
                log.warning("cannot note the current case: %s", exc)

    def interrupted(self) -> Path | None:
        """The slide a case was running on when the kiosk stopped without finishing it, if any."""
        if self.path is None:
            return None
        try:
            text = self._current_file().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return Path(text) if text else None


def analysed_in_outbox(outbox: Path) -> Callable[[Path], bool]:
    """For the kiosk's start: has this slide been analysed into the outbox since it last changed?

    Every case's metadata JSON names its source and when the case began (``kiosk.source``,
    ``kiosk.received_unix``); a slide replaced after that is not done.
    """
    began: dict[str, float] = {}
    try:
        files = [f for f in Path(outbox).glob("*.json") if not f.name.startswith(".")]
    except OSError:
        files = []
    for file in files:
        try:
            kiosk = json.loads(file.read_text(encoding="utf-8")).get("kiosk") or {}
            source, when = str(Path(kiosk["source"]).resolve()), float(kiosk.get("received_unix", 0.0))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        began[source] = max(began.get(source, 0.0), when)

    def done(path: Path) -> bool:
        try:
            changed = Path(path).stat().st_mtime
            key = str(Path(path).resolve())
        except OSError:
            return False
        return key in began and began[key] >= changed

    return done
