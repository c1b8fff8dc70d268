"""The kiosk's cases: the watch folder polled, a queue of slides, one case at a time, the recent cases.

A case is ``model.open(path, analyse=True, source=…)`` with the kiosk's preloaded classifier as the source
(``viewer.kiosk.cases.iter_case``: analyse, then export to the outbox), so the overlay streams exactly as on
the desktop and no run set-up is repeated here. The rules that must hold without an operator (half-copied
files are never opened, a bad file never stops the station, the outbox never overwrites a case) are the
Qt-free ``cellview.viewer.kiosk``'s; this controller drives the kiosk's pages with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from cellview.analysis.cache import ResultCache
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.pipeline import CancelToken, analyze
from cellview.analysis.results import AnalysisResult, plural
from cellview.slides.slide import slide_display_name
from cellview.viewer.analysis import AnalysisRequest
from cellview.viewer.events import Event
from cellview.viewer.kiosk.cases import CaseResult, RecentCases, analysed_in_outbox, iter_case
from cellview.viewer.kiosk.watch import WatchFolder


def same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class Cases(QObject):
    """``classifier`` (once prepared), ``watcher``, ``queue``, ``current`` (the case being analysed), ``recent``
    and ``case_mpp`` (µm per pixel chosen on screen for a slide that does not say it, ``ScaleSheet``).
    ``started`` fires with a case's path, ``finished`` with its ``CaseResult`` once its run is over."""

    started = Signal(object)  # Path
    finished = Signal(object)  # CaseResult

    def __init__(self, kiosk: Any) -> None:
        super().__init__(kiosk)
        self.kiosk = kiosk
        self.model = kiosk.model
        self.classifier: OnnxClassifier | None = None
        self.recent = RecentCases.for_settings(kiosk.settings)
        self.watcher: WatchFolder | None = None
        self.queue: list[Path] = []
        self.current: Path | None = None
        self.case_mpp: dict[Path, float] = {}
        self._export = False
        self._last: CaseResult | None = None
        self._results: dict[Path, AnalysisResult] = {}
        self.poll_timer = QTimer(self, interval=max(50, int(kiosk.settings.poll_s * 1000)))
        self.poll_timer.timeout.connect(self.poll_watch_folder)

    def connect_model(self) -> None:
        """Follow the model's runs (after the panels do: they show a case before it is reported)."""
        ev = self.model.analysis.events
        ev.job_item.connect(self._on_item)
        ev.result.connect(self._on_result_shown)
        ev.run_ended.connect(lambda e: self._on_done())
        self.model.slide.events.open_failed.connect(self._on_open_failed)

    # ------------------------------------------------------------------------------ watch folder, queue

    def start_watching(self) -> None:
        """Watch the folder; what is already there and not yet in the outbox (dropped while the kiosk was off,
        or before a crash) is analysed too, oldest first, and the screen says so. A slide the kiosk stopped
        on (it may have crashed on it) is not retried on its own: it is listed as failed, to retry by touch."""
        settings = self.kiosk.settings
        stopped_on = self.recent.interrupted()
        done = analysed_in_outbox(settings.outbox())

        def skip(path: Path) -> bool:
            return done(path) or (stopped_on is not None and same_file(path, stopped_on))

        self.watcher = WatchFolder.for_settings(settings, include_existing=True, skip_existing=skip)
        if stopped_on is not None:
            self.recent.add(CaseResult(
                stopped_on, "failed", f"The kiosk stopped while analysing {stopped_on.name} (it may have crashed on "
                "this file), so it is not analysed again on its own. Tap it in Recent cases to try again.",
                provider=""))
            self.show_recent()
        backlog = self.watcher.backlog
        if backlog:
            names = ", ".join(slide_display_name(p) for p in backlog[:3]) + ("…" if len(backlog) > 3 else "")
            self.kiosk.show_info(f"{plural(len(backlog), 'slide')} already in the watch folder "
                                 f"{'is' if len(backlog) == 1 else 'are'} not in the outbox yet: analysing "
                                 f"{'it' if len(backlog) == 1 else 'them, oldest first'} ({names}).")
        self.poll_timer.start()
        self.poll_watch_folder()

    def poll_watch_folder(self) -> None:
        """One look at the watch folder: queue what has settled, say what is still arriving."""
        if self.watcher is None:
            return
        try:
            ready = self.watcher.poll()
        except OSError as exc:  # a share that vanished mid-scan: report, try again next poll
            ready = []
            self.watcher.problem = f"The watch folder cannot be read ({exc.strerror or exc})."
        self.kiosk.waiting.show_receiving(self.watcher.waiting)
        self.kiosk.cards.show_watch_problem(self.watcher.problem)
        for path in ready:
            self.enqueue(path)

    def enqueue(self, path: str | Path) -> None:
        """Analyse ``path`` (and export it to the outbox) once the model is ready and earlier cases are done."""
        self.queue.append(Path(path))
        self.kiosk.update_state()
        self.next_case()

    def next_case(self) -> None:
        if self.current is not None or self.classifier is None or not self.queue:
            return
        self._begin(self.queue.pop(0), export=True)

    def _begin(self, path: Path, export: bool) -> None:
        """Open the slide and stream its analysis; ``export`` runs the full case (outbox, recent list).

        The model runs it: ``open`` keeps the last slide until this one has opened, then analyses
        with the kiosk's classifier as the source (no run set-up of the kiosk's own).
        """
        kiosk = self.kiosk
        classifier, settings, settings_file = self.classifier, kiosk.settings, kiosk.settings_file
        assert classifier is not None
        kiosk.waiting.done_card.hide()
        self.current = path
        self._export = export
        self._last = None
        kiosk.case_page.case_title.setText(slide_display_name(path))
        kiosk.show_case_page()
        mpp = self.case_mpp.get(path)
        params = settings.analysis_params(classifier.spec.patch_size_pixels, mpp_um=mpp)
        if export:
            self.recent.begin(path)

        def source(request: AnalysisRequest, cancel: CancelToken) -> Iterator[object]:
            if export:
                yield from iter_case(path, classifier, settings, cancel, mpp_um=mpp, settings_file=settings_file)
            else:
                yield from analyze(path, classifier, params, cancel, ResultCache())

        kiosk.case_page.analyse_btn2.setEnabled(False)
        self.started.emit(path)
        kiosk.update_state()
        self.model.open(path, mpp_um=mpp or settings.mpp_um, analyse=True, source=source, spec=classifier.spec,
                        params=params)

    def analyse_current(self) -> None:
        """The Analyse button: run the open slide again as a new case (exports get a fresh name)."""
        if self.model.slide.opened is not None:
            self.enqueue(self.model.slide.opened.path)

    def analyse_with_scale(self, path: str, mpp_um: float) -> None:
        """The scale sheet's answer: analyse the slide again as a new case at this µm per pixel."""
        self.case_mpp[Path(path)] = float(mpp_um)
        self.enqueue(path)

    # ------------------------------------------------------------------------------ a case's run

    def _on_item(self, event: Event) -> None:
        if isinstance(event.value, CaseResult):
            self._on_case(event.value)

    def _on_result_shown(self, event: Event) -> None:
        result = event.value
        if result is not None and result.status == "complete" and self.current is not None:
            self._results[self.current] = result

    def _on_case(self, case: CaseResult) -> None:
        kiosk = self.kiosk
        self.recent.add(case)
        self.show_recent()
        if case.needs_scale:
            kiosk.scale_sheet.ask(case.path, case.message)
            if kiosk.idle:  # asked for whoever touches the screen next
                kiosk.idle_screen.raise_()
        if case.ok:
            kiosk.waiting.show_done(case, kiosk.settings.outbox())
            kiosk.viewer.run_status.rate_label.setText("Results saved to the outbox.")  # the path: waiting page
        self._last = case

    def _on_open_failed(self, event: Event) -> None:
        """The case's file did not open: a failed case (recent list, outbox untouched), the kiosk goes on."""
        path, exc = event.value
        if self.current is None or str(path) != str(self.current):
            return
        if self._export:
            case = CaseResult(self.current, "failed", exc.message, details=exc.details,
                              provider=self.classifier.provider_label if self.classifier else "")
            self.recent.add(case)
            self.show_recent()
            self._last = case
        self._on_done()

    def _fail(self, message: str, show: bool = True) -> None:
        """The error on screen, the slide closed, back to waiting; the watcher never stopped."""
        self.model.close_slide()
        if show:
            self.kiosk.show_message(message)
        self.kiosk.set_page("waiting")

    def _on_done(self) -> None:
        """The case's run (or its failed open) is over: report it, then take the next one."""
        kiosk = self.kiosk
        if self.current is None:
            return
        self.current = None
        kiosk.case_page.analyse_btn2.setEnabled(True)
        case, self._last = self._last, None
        if case is not None and case.status == "failed":
            self._fail(case.message, show=not case.needs_scale)  # the scale sheet says it and offers the fix
        elif self.model.slide.opened is None and kiosk.page == "case":
            kiosk.set_page("waiting")
        if case is not None:
            kiosk.idle_screen.case_finished(case)
        kiosk.update_state()
        if case is not None:
            self.finished.emit(case)  # after the run is over: listeners see an idle kiosk
        self.next_case()

    # ------------------------------------------------------------------------------ recent cases

    def show_recent(self) -> None:
        self.kiosk.waiting.show_recent(self.recent.items)

    def open_case(self, case: CaseResult) -> None:
        """Show a past case: its result from this session, else re-analysed (from the result cache when it can)."""
        kiosk = self.kiosk
        if self.current is not None:
            kiosk.show_message("Please wait: a case is being analysed.")
            return
        if not case.path.exists():
            kiosk.show_message(f"{case.name} is no longer in {case.path.parent}.")
            return
        if case.needs_scale and case.path not in self.case_mpp:
            kiosk.scale_sheet.ask(case.path, case.message)
            return
        if not case.ok and case.path not in self._results:  # a failed case is tried again as a new case
            self.enqueue(case.path)
            return
        result = self._results.get(case.path)
        if result is None and self.classifier is not None:
            self._begin(case.path, export=False)
            return
        self.model.open(case.path, mpp_um=self.case_mpp.get(case.path) or kiosk.settings.mpp_um, analyse=False,
                        show=result)
        kiosk.case_page.case_title.setText(case.name)
        kiosk.show_case_page()
