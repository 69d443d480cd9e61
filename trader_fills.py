"""Booking the exchange's executions into the sides' core states (a mixin of trader.Trader).

Every execution (the private stream and execution/list, merged by execId in exchange.py) is booked
exactly once, in the exchange's order, with the core's own functions: ``core.open_fill`` for an entry
or add, ``core.close_fill`` for what closes quantity (its trade row recorded), ``core.book_funding``
for a funding payment. A fill is matched to its side by the position it belongs to (hedge mode) and
to its exit reason by our orderLinkIds, the exchange's stopOrderType, or its execType (a takeover
liquidation or an ADL). An execution already booked (a page that repeats a row, a row seen on both
channels) is skipped, never booked twice; so is one that a rescued position already accounts for (its ``seq`` at
or before the rescued position's).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

import backtester
import core
from exchange import Fill

if TYPE_CHECKING:
    from trader import Side

logger = logging.getLogger("grtr.trader")
EXCHANGE_STOPS = ("StopLoss", "PartialStopLoss", "TrailingStop")  # docs: v5/enum.mdx stopOrderType
FORCED = {"BustTrade": "liquidation", "AdlTrade": "adl"}  # docs: v5/enum.mdx execType


class Bookkeeping:
    """Fills into states; mixed into trader.Trader, whose store, exchange, sides, events, symbol, awaiting sides and
    helpers (rescue, _sync_targets, _forget_position, _data, _read_wallet) it uses."""

    exchange: Any
    store: Any
    events: Any
    sides: list[Side]
    symbol: str
    bar_ms: int
    hedge: bool
    last_bar_ts: int
    awaiting: dict[str, dict[str, int]]

    def _lookback_ms(self) -> int:
        """How far before the last booked execution execution/list is read again: a fill that showed on
        REST late (after a later one was booked from the stream) is still found."""
        return 2 * self.bar_ms

    def _unbooked(self, until_ms: int | None = None) -> list[Fill]:
        """Executions not booked yet (before ``until_ms``), oldest first, less those a rescue accounts for.

        A side awaiting a missing execution (reconcile.py) has it looked for from its position's entry on, however
        long ago the lookback's window moved past it.
        """
        since = max(0, self.store.get("exec_since_ms", 0) - self._lookback_ms())
        for side in self.sides:
            if side.name in self.awaiting and side.state[core.S_DIR]:
                since = min(since, int(side.state[core.S_ENTRY_TS]))
        fills = [f for f in self.exchange.fills_since(since, until_ms) if not self.store.seen_execution(f.exec_id)
                 and (until_ms is None or f.time_ms < until_ms)]
        return [f for f in fills if not self._absorbed_by_rescue(f)]

    def _absorbed_by_rescue(self, fill: Fill) -> bool:
        """True (the execution recorded as seen, not booked) when ``fill`` is in a position the trader rescued.

        A rescue adopts the exchange's position as position/list reports it; every execution of that position up to
        the list's ``seq`` (the cross sequence that associates fills with position updates, docs:
        v5/position/position.mdx, v5/order/execution.mdx) is in the adopted size, its fee in the wallet the books
        follow. One that shows only later (an opening fill late on both channels) is not booked again as an add.
        """
        side = self._side_of(fill)
        cut = self.store.get(f"rescue_seq_{side.name}", 0) if side is not None else 0
        if not (cut > 0 and 0 < fill.seq <= cut):
            return False
        logger.info("%s: execution %s (%s %g at %g, seq %d) is in the position rescued at seq %d: not booked again",
                    side.name, fill.exec_id, fill.side, fill.qty, fill.price, fill.seq, cut)
        self.store.record_execution(fill.exec_id, side.name, fill.raw, fill.time_ms)
        self.exchange.forget([fill.exec_id])
        return True

    def _forming_close(self) -> int:
        """The close time of the bar forming now: executions from then on belong to the next bar close."""
        return self.last_bar_ts + 2 * self.bar_ms

    def book_fills(self) -> None:
        """Book the executions of the forming bar now (the private WebSocket announced one)."""
        with self.store.transaction():
            self.sync_executions(self._data(), until_ms=self._forming_close())
            for side in self.sides:
                self.store.save_state(side.name, side.state, int(time.time() * 1000))

    def sync_executions(self, data: backtester.MarketData, until_ms: int | None = None) -> None:
        """Book every execution not booked yet (before ``until_ms``), in exchange order, into its side's state.

        At a bar close only what happened up to that close is booked: funding due at the next open
        belongs to the next bar, as in the backtester.
        """
        self._book_all(self._unbooked(until_ms), data)

    def _book_all(self, fills: list[Fill], data: backtester.MarketData) -> None:
        """Book ``fills`` in order, each with its record; then rest the targets the fills changed."""
        booked = []
        for fill in fills:
            if fill.exec_id in booked or self.store.seen_execution(fill.exec_id):
                logger.info("execution %s seen again (a repeated row); booked once already", fill.exec_id)
                continue
            side = self._side_of(fill)
            with self.store.transaction():
                self._book(side, fill, data)
                self.store.record_execution(fill.exec_id, side.name if side else "", fill.raw, fill.time_ms)
                if side and fill.link_id.startswith(f"{side.name}-") and self.store.order(fill.link_id) is None:
                    # the trader's own order, its record lost with a bar rolled back after it was sent (a kill,
                    # a refusal that changed the bar's course): known from its fill, never sent again
                    self.store.record_order(fill.link_id, side.name, "recovered", {}, "filled", fill.order_id,
                                            fill.time_ms)
                if side:
                    self.store.save_state(side.name, side.state, fill.time_ms)
                self.store.set("exec_since_ms", max(fill.time_ms, self.store.get("exec_since_ms", 0)))
            booked.append(fill.exec_id)
        self.exchange.forget(booked)
        if booked:
            self._read_wallet()  # the heartbeat's equity is the exchange's after every fill
        for side in self.sides:
            if side.resync:
                side.resync = False
                if side.state[core.S_DIR]:
                    self._sync_targets(side)  # after all of this pass's fills: the next levels rest at once

    def _side_of(self, fill: Fill) -> Side | None:
        """The side a fill belongs to: in hedge mode by its position's direction; one-way has one side."""
        if not self.hedge:
            return self.sides[0]
        return next((s for s in self.sides if s.direction == fill.position_direction), None)

    def _bar_index(self, data: backtester.MarketData, ms: int) -> int:
        """The history index of the bar an execution happened in (a fill at the next open: the next bar)."""
        if ms >= data.ts[-1] + self.bar_ms:
            return len(data.ts)
        return int(np.searchsorted(data.ts, ms, side="right") - 1)

    def _ours(self, side: Side, fill: Fill) -> bool:
        """A fill of the side's own orders, or of the exchange's orders on its position (its stop, a takeover)."""
        return fill.link_id.startswith(f"{side.name}-") or fill.stop_order_type in EXCHANGE_STOPS \
            or fill.exec_type in FORCED

    def _book(self, side: Side | None, fill: Fill, data: backtester.MarketData) -> None:
        if side is None:
            self.events.emit("desync", None, detail=f"execution {fill.exec_id} on an unmanaged position")
            return
        state, p = side.state, side.p
        if fill.funding:
            if state[core.S_DIR]:
                core.book_funding(state, fill.fee)
            return
        ms, bar = fill.time_ms, self._bar_index(data, fill.time_ms)
        d = 1.0 if fill.side == "Buy" else -1.0
        ours = self._ours(side, fill)
        if not fill.closing:
            if state[core.S_DIR] == 0 and not ours:
                self.rescue(side, d, fill.qty, fill.price, ms, 0.0, data, fee=fill.fee)  # a position opened by hand
                return
            if state[core.S_DIR] not in (0.0, d):
                self.events.emit("desync", side.name, detail=f"an opening {fill.side} fill of {fill.qty:g} on the "
                                                             "other side's position; left to reconcile")
                return
            if not ours:
                self.events.emit("desync", side.name, detail=f"{fill.qty:g} added to the position by hand at "
                                                             f"{fill.price:g}")
                side.resync = True
            core.open_fill(state, p, d, fill.qty, fill.price, fill.fee, float(ms), float(bar))
            return
        if state[core.S_DIR] == 0:
            self.events.emit("desync", side.name, detail=f"a closing fill of {fill.qty:g} at {fill.price:g} "
                                                         f"({fill.exec_type}) of a position already closed in the "
                                                         "state; not booked")
            return
        reason = self._exit_reason(state, fill) if ours else core.R_SIGNAL
        if fill.exec_type in FORCED:
            self.events.emit(FORCED[fill.exec_type], side.name, qty=fill.qty, price=fill.price)
        if not ours:
            self.events.emit("desync", side.name, detail=f"{fill.qty:g} closed by hand at {fill.price:g}")
        if reason == core.R_PARTIAL:
            level = int(fill.link_id.split("-tp")[1].split("-")[0])
            state[core.S_LEVELS_DONE] = level + 1
        row = np.zeros(core.N_TRADE_COLS)
        row[1] = ms
        remaining_before = state[core.S_QTY]
        flat = core.close_fill(state, p, fill.qty, fill.price, fill.fee, reason, float(bar), row)
        self.store.record_trade(self.symbol, row)
        if flat:
            self._forget_position(side)
            hold = (row[1] - row[0]) / 3_600_000
            self.events.emit("exit", side.name, reason=core.EXIT_REASONS[reason], qty=float(row[3]),
                             price=float(fill.price), pnl=float(row[8]),
                             pnl_pct=float(row[8] / max(state[core.S_WALLET] - row[8], 1e-9) * 100),
                             hold_hours=float(hold), entry_price=float(row[4]))
        else:
            self.events.emit("partial_exit", side.name, qty=float(fill.qty), price=float(fill.price),
                             pnl=float(row[8]), remaining_qty=float(remaining_before - fill.qty))
            if reason == core.R_PARTIAL:
                side.resync = True

    @staticmethod
    def _exit_reason(state: np.ndarray, fill: Fill) -> int:
        """Why our fill closed quantity: a takeover by its execType, the exchange's stop by its stopOrderType,
        our own orders by their orderLinkId."""
        link = fill.link_id
        if fill.exec_type in FORCED:
            return core.R_LIQUIDATION  # BustTrade (takeover liquidation) or AdlTrade (auto-deleveraging)
        if fill.stop_order_type in EXCHANGE_STOPS or "-guard" in link:
            return int(state[core.S_STOP_KIND])  # the exchange's stop, or the tick guard in its place
        if "-tpf-" in link:
            return core.R_TAKE_PROFIT
        if "-tp" in link:
            return core.R_PARTIAL
        if "-close" in link:
            return int(link.rsplit("-close", 1)[1].split("-")[0])
        return core.R_SIGNAL
