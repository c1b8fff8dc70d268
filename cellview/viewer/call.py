"""The slide's call for the shown result (``analysis.call.slide_call``), as ``model.call``: the words every screen
shows, the same as the files'.

Finding regions takes seconds on a large, noisy result, so the call is computed as a job, one at a time, once per
finished result and at most every ``STREAM_INTERVAL_S`` while a run streams in (the latest state follows the job
that is running). It does not follow the display's filters or "Show calls anyway": it is the slide's call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

from cellview.analysis.call import SlideCall, slide_call
from cellview.analysis.results import AnalysisResult
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import LatestJob, Runner

STREAM_INTERVAL_S = 1.0
"""While a run streams in, the call so far is worked out again at most this often (each run takes a core)."""


def call_task(result: AnalysisResult) -> Iterator[SlideCall]:
    """The call off the main thread; ``result`` must be a snapshot nobody writes to any more."""
    yield slide_call(result)


class CallState:
    """``current`` is the call of the shown result (None without one). Event: ``call`` (the new ``SlideCall``,
    or None when the result went)."""

    EVENTS = ("call",)

    def __init__(self, analysis: AnalysisRun, runner: Runner, messages: Messages) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.analysis, self.runner, self.messages = analysis, runner, messages
        self.current: SlideCall | None = None
        self.current_key: tuple | None = None  # (id(result), n_done, status) of ``current``
        self._key: tuple | None = None  # what the running (or the last) job computes
        self._last_start = 0.0
        self.job = LatestJob(runner)

    @property
    def busy(self) -> bool:
        return self.job.busy

    def update(self, streaming: bool = False) -> None:
        """The call of the shown result, as a job; ``streaming``: a batch arrived (rate-limited, see the module)."""
        result = self.analysis.shown_result()
        if result is None:
            self.clear()
            return
        key = (id(result), result.n_done, result.status)
        if key == self._key:
            return
        if self.job.busy:
            self.job.again = True
            return
        if streaming and time.monotonic() - self._last_start < STREAM_INTERVAL_S:
            return  # the next batch, or the finished result, asks again
        self._key = key
        self._last_start = time.monotonic()
        snapshot = result if result.status != "running" else replace(result, probs=result.probs.copy(),
                                                                      state=result.state.copy())

        def on_item(call: SlideCall) -> None:
            self.current, self.current_key = call, key
            self.events.call(call)

        self.job.start("call", lambda cancel: call_task(snapshot), on_item,
                       lambda exc: self.messages.status(f"The slide's call failed: {exc.message}"), self.update)

    def clear(self, emit: bool = True) -> None:
        """No call (``events.call(None)`` when ``emit`` and there was one); a job still running is ignored."""
        had = self.current is not None or self.job.busy
        self._key = None
        self.job.forget()
        self.current, self.current_key = None, None
        if emit and had:
            self.events.call(None)

    def cancel(self) -> None:
        """Stop the job (its slide closed) and forget the call, silently."""
        self.job.cancel()
        self.clear(emit=False)
