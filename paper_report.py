"""What went wrong in a paper replay, from its own logs: rejected orders, errors and warnings, which of them
are the documented behaviour of the exchange, and which touched a trade that --compare compared.

During a replay every event of ``logs/events.jsonl`` carries ``bar_ts`` and every line of
``logs/trader.log`` starts with ``bar <time>:``, naming the bar at whose close it happened
(:class:`BarTags`). The summary then reads the two files back, as a user would.

The one refusal a correct trader meets in normal trading: at the close of bar t the decision core
moves the stop (breakeven, trailing, profit lock) just inside that close, and the next open has
already passed it. Bybit refuses a stop-loss on the wrong side of the price it triggers by
(retCode 10001, "StopLoss:... set for Buy position should lower base_price:..."; docs:
v5/position/trading-stop.mdx, v5/error.mdx 10001; bybit_sim answers the same), and the trader then
closes the position at market at that open: exactly the fill the backtest gives a stop the open
gaps through (the open, less slippage, taker fee). Such a refusal is reported as that, with its
bar, the new stop and the open, and never as an unexplained error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import core

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR|CRITICAL) (.*)$")
BAR_PREFIX = re.compile(r"^bar (\d{4}-\d\d-\d\dT\d\d:\d\dZ): (.*)$")
REJECTION_LINE = re.compile(r"^(long|short) \w+ (to \S+ )?rejected\b.* \(retCode -?\d+\)")  # _try's, _set_stop's
PASSED_LINE = re.compile(r"^(long|short) (\w+) to \S+ not set: the market has passed it$")  # trader._set_stop's
REJECTED_EVENTS = ("order_rejected", "stop_rejected")
SIDE_FIRST = re.compile(r"^(long|short)\b")
DOCUMENTED = ("a stop move the market had already passed: Bybit refuses a stop on the wrong side of the price it "
              "triggers by (retCode 10001; docs v5/position/trading-stop.mdx, v5/error.mdx), and the trader closed "
              "at market at that open, as the backtest fills a stop the open gaps through")
SHOWN = 5  # lines listed per kind


def iso(ms: float) -> str:
    """A bar time as 2019-06-01T10:00Z."""
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="m") + "Z"


class BarTags(logging.Filter):
    """While a paper replay runs: each event gets ``bar_ts`` and each trader.log line a ``bar <time>:`` prefix,
    the bar whose close the trader was handling (wrapping the trader's ``on_closed_bar`` and ``events.emit``,
    and filtering the handlers of the ``grtr`` logger)."""

    def __init__(self, trader: Any) -> None:
        super().__init__()
        self.bar: int | None = None
        self.handlers = list(logging.getLogger("grtr").handlers)
        handle, emit = trader.on_closed_bar, trader.events.emit

        def on_closed_bar(bar: dict[str, Any], latest: bool = True) -> None:
            self.bar = int(bar["start"])
            handle(bar, latest)

        def tagged_emit(event: str, side: str | None = None, **figures: Any) -> None:
            emit(event, side, **({"bar_ts": self.bar, **figures} if self.bar is not None else figures))

        trader.on_closed_bar, trader.events.emit = on_closed_bar, tagged_emit
        for handler in self.handlers:
            handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.bar is not None and not getattr(record, "bar_tagged", False):
            record.msg, record.args, record.bar_tagged = f"bar {iso(self.bar)}: {record.getMessage()}", (), True
        return True

    def close(self) -> None:
        """Stop tagging (the replay is over)."""
        for handler in self.handlers:
            handler.removeFilter(self)


@dataclass
class Problem:
    """One rejected order, error or warning of the paper log."""

    kind: str  # "rejected order", "error" or "warning"
    side: str | None
    bar_ts: int | None  # the bar at whose close it happened (None: before the replay's first bar)
    text: str
    action: str = ""  # a rejected order's call (stop_moved, open, add, close, tp1...)
    explained: str = ""  # what documented behaviour it is, when it is one

    def line(self) -> str:
        when = f"at the close of {iso(self.bar_ts)}" if self.bar_ts is not None else "before the first bar"
        return f"{self.side + ' ' if self.side else ''}{self.kind} {when}: {self.text}" + \
            (f" -> {self.explained}" if self.explained else "")


def read_problems(out: Path) -> list[Problem]:
    """The rejected orders (order_rejected and stop_rejected events, and the stop moves the trader's log says the
    market had passed) and the other errors and the warnings (trader.log) of a run."""
    problems = []
    events = out / "logs" / "events.jsonl"
    for line in events.read_text().splitlines() if events.exists() else []:
        event = json.loads(line)
        if event.get("event") in REJECTED_EVENTS:
            problems.append(Problem("rejected order", event.get("side"), event.get("bar_ts"),
                                    f"{event.get('action')} refused: {event.get('ret_msg')} (retCode "
                                    f"{event.get('ret_code')})", action=str(event.get("action"))))
    log = out / "logs" / "trader.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        match = LOG_LINE.match(line)
        if not match:
            continue
        level, message = match.groups()
        tagged = BAR_PREFIX.match(message)
        bar_ts = int(pd.Timestamp(tagged.group(1)).value // 10**6) if tagged else None
        message = tagged.group(2) if tagged else message
        passed = PASSED_LINE.match(message)
        if passed:  # refused by the exchange, handled by the trader (closed at that open): checked by explain()
            problems.append(Problem("rejected order", passed.group(1), bar_ts, message, action=passed.group(2)))
            continue
        if level == "INFO" or (level != "WARNING" and REJECTION_LINE.match(message)):
            continue  # an ordinary line, or the log line of a rejected order: counted from its event
        side = SIDE_FIRST.match(message)
        problems.append(Problem("warning" if level == "WARNING" else "error", side.group(1) if side else None, bar_ts,
                                message))
    return problems


def explain(problems: list[Problem], store: Any, candles: pd.DataFrame, bar_ms: int) -> None:
    """Mark the stop moves refused because the next open had already passed the new stop, and after which the
    trader closed the side at that open (the documented exchange behaviour, see the module docstring)."""
    opens = dict(zip(candles.index.as_unit("ms").asi8.tolist(), candles["open"].tolist(), strict=True))
    trades = store.trade_rows()
    for problem in problems:
        if problem.kind != "rejected order" or problem.action != "stop_moved" or problem.bar_ts is None:
            continue
        decided = store.state_before(problem.side, problem.bar_ts + 1)
        next_open = opens.get(problem.bar_ts + bar_ms)
        if decided is None or decided[0] != problem.bar_ts or next_open is None:
            continue
        state = decided[1]
        direction, stop = state[core.STATE_NAMES.index("dir")], state[core.STATE_NAMES.index("stop")]
        closed = trades[(trades[:, 2] == (1.0 if problem.side == "long" else -1.0))
                        & (trades[:, 1] == problem.bar_ts + bar_ms)]
        if direction and (next_open - stop) * direction <= 0 and len(closed):
            problem.explained = (f"documented: the new stop {stop:.10g} was already passed by the next open "
                                 f"{next_open:.10g}; closed at market at that open")


def summary_lines(problems: list[Problem]) -> list[str]:
    """The counts, what the documented refusals are, and the first lines of each other kind."""
    count = {kind: [p for p in problems if p.kind == kind] for kind in ("rejected order", "error", "warning")}
    documented = [p for p in count["rejected order"] if p.explained]
    head = (f"paper log (logs/events.jsonl, logs/trader.log): {len(count['rejected order'])} rejected order(s), "
            f"{len(count['error'])} error(s), {len(count['warning'])} warning(s)")
    if not problems:
        return [head]
    lines = [head]
    if documented:
        lines.append(f"  {len(documented)} of the rejected orders are the documented exchange behaviour: {DOCUMENTED}")
        lines += [f"    {p.line()}" for p in documented[:SHOWN]]
    for kind, found in count.items():
        unexplained = [p for p in found if not p.explained]
        if unexplained:
            lines.append(f"  {kind}s, not explained:" if kind != "rejected order" else
                         "  rejected orders, not explained (look at these):")
            lines += [f"    {p.line()}" for p in unexplained[:SHOWN]]
            if len(unexplained) > SHOWN:
                lines.append(f"    ... and {len(unexplained) - SHOWN} more in the logs")
    return lines


def touching_lines(problems: list[Problem], trades: dict[str, np.ndarray], bar_ms: int) -> list[str]:
    """Whether a problem touched a compared trade: the same side (or no side named) and its decision's fill, the
    open after its bar, inside the trade's entry..exit. ``trades``: each side's compared trade rows."""
    touched = []
    for problem in problems:
        if problem.bar_ts is None:
            continue
        acts = problem.bar_ts + bar_ms
        for side, rows in trades.items():
            if problem.side not in (None, side):
                continue
            for k, row in enumerate(rows):
                if row[0] <= acts <= row[1]:
                    what = "the documented refusal above" if problem.explained else problem.text
                    touched.append((bool(problem.explained), f"  {side} trade {k} (entry {iso(row[0])}, exit "
                                                             f"{iso(row[1])}): {problem.kind} at the close of "
                                                             f"{iso(problem.bar_ts)}: {what}"))
    if not touched:
        return ["paper log vs the compared trades: none of its rejected orders, errors or warnings touched one"
                if problems else "paper log vs the compared trades: nothing to report"]
    documented = sum(explained for explained, _ in touched)
    return [f"paper log vs the compared trades: {len(touched)} touched a compared trade ({documented} of them the "
            "documented exchange behaviour)", *[line for _, line in touched[:2 * SHOWN]]]
