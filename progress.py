"""What a user sees while long work runs: one progress-bar style (tqdm on stderr, with a rate and an ETA),
and the one line that says the numba core is being compiled when its on-disk cache is cold.

Bars go to stderr so that a command's stdout (tables, a benchmark's last-line JSON) stays clean.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

from numba.core import event as numba_event
from numba.core.event import Listener
from tqdm import tqdm

COMPILE_NOTICE = "compiling the numba core (first run only, ~30 s)"
CORE_MODULES = ("core",)  # its decision core and bar loop hold the compile time (the indicators: about 1 s)


def bar(total: int, desc: str, unit: str = "it", disable: bool = False) -> tqdm:
    """A progress bar on stderr: done/total, rate, elapsed and ETA."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, file=sys.stderr)


class _CompileNotice(Listener):
    """Numba's "numba:compile" event starts only when a function is compiled, never when its code comes from
    the on-disk cache: the first such start for a function of ``modules`` prints COMPILE_NOTICE, once for
    this process and every process forked from it (the flag lives in shared memory)."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules
        self.shown = multiprocessing.get_context("fork").Value("b", 0)

    def on_start(self, event: Any) -> None:
        function = getattr(event.data.get("dispatcher"), "py_func", None)
        if getattr(function, "__module__", None) not in self.modules:
            return
        with self.shown.get_lock():
            if self.shown.value:
                return
            self.shown.value = 1
        print(f"{COMPILE_NOTICE}...", file=sys.stderr, flush=True)

    def on_end(self, event: Any) -> None:
        pass


_installed: list[_CompileNotice] = []


def announce_compiles(modules: tuple[str, ...] = CORE_MODULES) -> None:
    """From now on: when numba has to compile the core (its cache is cold: a fresh checkout, an edited core.py,
    another numba or CPU), one line on stderr says so as the compile starts; with a warm cache, nothing.

    Called once by each command line before its work; the listener uses numba's documented event API.
    """
    if not _installed:
        _installed.append(_CompileNotice(modules))
        numba_event.register("numba:compile", _installed[0])
