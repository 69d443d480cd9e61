"""Processes: work spread over forked children, and the guard that turns SIGINT/SIGTERM into a clean stop.

Children are forked (not spawned), so the loaded datasets and their indicator caches are shared
copy-on-write and nothing is pickled on the way in; only results travel back.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any


class StopOnSignals:
    """While a search runs (main thread only): SIGINT and SIGTERM set ``stop`` (and reach the workers),
    so the search ends after the current trial with every finished trial stored."""

    def __init__(self, stop: threading.Event, children: list[multiprocessing.Process]) -> None:
        self.stop = stop
        self.children = children
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            print(f"\n{signal.Signals(signum).name}: stopping after the current trials; storing every finished "
                  "trial first", flush=True)
        self.stop.set()
        for child in self.children:
            if child.is_alive() and child.pid:
                try:
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def stop_when_parent_dies() -> None:
    """Linux: a worker gets SIGTERM (store and stop) when the process that forked it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_TASK: Callable[[int], Any] | None = None


def _run_task(index: int) -> Any:
    assert _TASK is not None
    return _TASK(index)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], jobs: int,
                 on_done: Callable[[], None] | None = None) -> list[Any]:
    """``[fn(x) for x in items]`` on up to ``jobs`` forked processes (results must pickle); ``on_done`` is
    called in this process as each result arrives (a progress bar)."""
    global _TASK
    done = on_done or (lambda: None)
    if jobs <= 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(fn(item))
            done()
        return results
    _TASK = lambda k: fn(items[k])  # noqa: E731 - read by the forked children
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(items)), initializer=_ignore_sigint) as pool:
            results = []
            for result in pool.imap(_run_task, range(len(items)), chunksize=max(1, len(items) // (4 * jobs))):
                results.append(result)
                done()
            return results
    finally:
        _TASK = None
