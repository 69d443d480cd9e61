"""What a user sees while long work runs: one progress-bar style (tqdm on stderr, with a rate and an ETA),
and the one line that says the numba core is being compiled when its on-disk cache is cold.

Bars go to stderr so that a command's stdout (tables, a benchmark's last-line JSON) stays clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

COMPILE_NOTICE = "compiling the numba core (first run only, ~30 s)"


def bar(total: int, desc: str, unit: str = "it", disable: bool = False) -> tqdm:
    """A progress bar on stderr: done/total, rate, elapsed and ETA."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, file=sys.stderr)


def cold(dispatchers: Iterable[Any]) -> bool:
    """True when one of these numba functions (``@njit(cache=True)``) has no compiled code on disk for this
    machine: its cache index is missing, from another numba version, stale (the source changed since),
    or holds no entry for this CPU (numba's own key: target triple, CPU name and features).

    Read from numba's cache files, as numba itself reads them; nothing is compiled. A dispatcher without a
    file cache, or a numba whose internals differ, counts as warm (no notice rather than a false one).
    """
    try:
        from numba.core.registry import cpu_target

        magic = cpu_target.target_context.codegen().magic_tuple()
        for dispatcher in dispatchers:
            cache = getattr(dispatcher, "_cache", None)
            index_file = getattr(cache, "_cache_file", None)
            if index_file is None:
                continue
            if not any(key[1] == magic for key in index_file._load_index()):
                return True
    except Exception:  # noqa: BLE001 - numba's private cache API moved: say nothing rather than something wrong
        return False
    return False


def compile_notice(dispatchers: Iterable[Any]) -> bool:
    """Print COMPILE_NOTICE on stderr when :func:`cold`; True when printed."""
    if cold(dispatchers):
        print(f"{COMPILE_NOTICE}...", file=sys.stderr, flush=True)
        return True
    return False


def core_dispatchers(*extra: str) -> list[Any]:
    """The jitted functions every backtest compiles (core.run_loop, which holds most of the compile time, the
    ATR and EMA every strategy reads, the metrics), and ``extra`` names of core's functions another command
    calls from Python (the trader's core.decide, open_fill, close_fill). Indicators only some strategies read are
    left out: a strategy that never reads one would otherwise be told of a compile on every run."""
    import core
    import indicators
    import metrics

    return [core.run_loop, *(getattr(core, name) for name in extra), indicators.atr_nb, indicators.ema_nb,
            metrics.daily_returns, metrics.curve_stats]
