"""Slow work as a ``Job`` the viewer hands to a runner, so the viewer's state never needs a thread or Qt.

A job is a generator plus callbacks. The GUI's runner (``gui.worker.QtRunner``) runs it on a worker thread
and calls back on the main thread; ``run_now`` runs it in the calling thread, so tests and scripts drive the
whole viewer without Qt. Every part that starts work (opening, the analysis, regions, tissue previews,
explanations) goes through this one contract.
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cellview.analysis.pipeline import CancelToken
from cellview.base.errors import CellviewError


def nothing(*_args: Any) -> None:
    """A callback that does nothing: the default of a job's callbacks and of the parts' hooks."""
    return None


@dataclass
class Job:
    """Slow work: ``run(cancel)`` yields items; the callbacks run where the runner delivers them."""

    name: str
    run: Callable[[CancelToken], Iterator[Any]]
    on_item: Callable[[Any], None]
    on_failed: Callable[[CellviewError], None] = nothing
    on_done: Callable[[], None] = nothing


class JobHandle(Protocol):
    def cancel(self) -> None: ...


Runner = Callable[[Job], JobHandle]


class _Finished:
    """The handle of a job run to its end in the calling thread."""

    def __init__(self, token: CancelToken) -> None:
        self.cancel_token = token

    def cancel(self) -> None:
        self.cancel_token.cancel()


def run_now(job: Job) -> JobHandle:
    """Run a job to its end in the calling thread (tests, scripts): the same contract as the GUI's worker."""
    token = CancelToken()
    try:
        for item in job.run(token):
            job.on_item(item)
    except CellviewError as exc:
        job.on_failed(exc)
    except Exception as exc:  # noqa: BLE001 - as the GUI worker: a bug becomes a message, not a crash
        job.on_failed(CellviewError(f"Unexpected error: {exc}", traceback.format_exc()))
    finally:
        job.on_done()
    return _Finished(token)


class Pending:
    """Stands for a job's handle while the runner starts it (a synchronous runner may finish it first)."""

    def cancel(self) -> None:
        pass


class LatestJob:
    """One job at a time for a part of the viewer whose results only count while they are the newest.

    ``start`` runs a job whose callbacks are dropped once a newer one starts or ``forget`` is called (a slide
    closed, a result replaced); ``again`` marks a request made while one runs, and the part's ``rerun`` is called
    when it ends. The call, the regions, the cells and the explanations share this rule.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.handle: JobHandle | None = None
        self.again = False
        self._ids = itertools.count(1)
        self._id = 0

    @property
    def busy(self) -> bool:
        return self.handle is not None

    def start(self, name: str, run: Callable[[CancelToken], Iterator[Any]], on_item: Callable[[Any], None],
              on_failed: Callable[[CellviewError], None] = nothing, rerun: Callable[[], None] = nothing) -> None:
        self._id = job_id = next(self._ids)

        def item(value: Any) -> None:
            if job_id == self._id:
                on_item(value)

        def failed(exc: CellviewError) -> None:
            if job_id == self._id:
                on_failed(exc)

        def done() -> None:
            if job_id != self._id:
                return
            self.handle = None
            if self.again:
                self.again = False
                rerun()

        self.handle = Pending()
        handle = self.runner(Job(name, run, item, failed, done))
        if job_id == self._id and self.handle is not None:  # a synchronous runner has finished it already
            self.handle = handle

    def forget(self) -> None:
        """What the running job still delivers is ignored from now on."""
        self._id = next(self._ids)
        self.handle, self.again = None, False

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.forget()
