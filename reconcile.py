"""The live trader's agreement with the exchange: settling, reconciliation, rescue and the tick guard.

A mixin of trader.Trader (it uses the trader's store, sides, events and order helpers). Fills are
asynchronous on Bybit: a position can change before its execution is visible on either channel.
:meth:`Reconciliation.settle` therefore never takes the position list at its word while the
executions disagree with it: it waits (bounded) for the missing fills, and only then reports the
positions. At a bar close an unexplained difference rolls the bar back (FillsPending); it is handled
again, in order, once the executions show.

A side whose state holds a position the exchange no longer holds (or holds at another size) with no
execution to explain it **awaits its fill**: the state is never closed or resized at a guessed price.
The bar closes roll back meanwhile (for both sides: each bar is handled again, in order, once the
execution shows), so no entry or add is sent on it; reconciliation leaves it as it is (a remaining
position keeps a stop); and the execution, whenever it shows on the stream or execution/list (looked
for from the position's entry on), is booked as any fill is, at its own price, quantity and fee.
Waiting was chosen over booking the last price as an estimate to correct later because the estimate
would go into the state the core decides on (its high-water mark and cooldown, the entries and sizes
that follow) while the real row could still arrive, and a later correction could not undo what had
been decided on it; a side that waits takes no new risk, and the stops and targets resting on the
exchange (the other side's too) keep acting while the trader waits. An execution not seen within
``FILL_OVERDUE_BARS`` bars (at least ``FILL_OVERDUE_MIN_MS``) of exchange time is reported loudly (an
error line and a ``desync`` event, again every such period) and still waited for: the operator
checks the account's trade history; a trader restarted with ``--fresh-state`` adopts the exchange's
positions as they are.

A rescue adopts a position the state does not know as position/list reports it; executions up to
that list's ``seq`` are in it, so one that shows only later is not booked again (trader_fills.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import backtester
import core
from exchange import Fill, FillsPending, PositionInfo

if TYPE_CHECKING:
    from trader import Side

logger = logging.getLogger("grtr.trader")
FILL_OVERDUE_BARS = 2  # an awaited execution not seen within this many bars of exchange time is reported loudly ...
FILL_OVERDUE_MIN_MS = 15 * 60_000  # ... and never sooner than this


class Reconciliation:
    """Settle, reconcile, rescue and guard; mixed into trader.Trader, whose store, sides, events and
    helpers (sync_executions, _unbooked, _side_of, _data, _forming_close, _close, _send_stop, _note_stops,
    _sync_targets, _forget_position, _beyond_market, _try) it uses."""

    exchange: Any
    store: Any
    events: Any
    sides: list[Side]
    instrument: dict[str, float]
    symbol: str
    bar_ms: int
    dry_run: bool
    fill_wait_seconds: float
    awaiting: dict[str, dict[str, int]]  # side name -> {since_ms, reported_ms}: sides awaiting a missing execution

    def settle(self, data: backtester.MarketData, until_ms: int,
               repair: bool) -> tuple[dict[int, PositionInfo], dict[str, set[str]]]:
        """The exchange's open positions once every execution before ``until_ms`` is booked and the states
        agree with them; and, by side, the orderLinkIds of visible fills from ``until_ms`` on (they
        belong to a later bar close: no other entry or add for those sides now).

        Executions are booked, positions read, and the states compared with them (allowing for the
        later fills). A difference waits for the stream or execution/list (at most
        ``fill_wait_seconds``); still there, the side awaits its execution (:meth:`_note_awaiting`) and this
        raises FillsPending, or with ``repair`` returns the positions for the caller to repair.
        """
        deadline = time.monotonic() + self.fill_wait_seconds
        pause = 0.01
        while True:
            self.sync_executions(data, until_ms=until_ms)
            positions = {p.idx: p for p in self.exchange.positions() if p.size > 0}
            later: list[Fill] = []
            gaps = self._gaps(positions, later)
            if gaps:  # fills after until_ms may explain it, and one may have landed meanwhile
                later = self._unbooked()
                if any(f.time_ms < until_ms for f in later) and time.monotonic() < deadline:
                    continue  # book it first
                gaps = self._gaps(positions, later)
            busy: dict[str, set[str]] = {}
            for fill in later:
                side = self._side_of(fill)
                if side is not None and not fill.funding:
                    busy.setdefault(side.name, set()).add(fill.link_id)
            if not gaps or time.monotonic() >= deadline:
                self._note_awaiting(gaps)
            if not gaps:
                return positions, busy
            if time.monotonic() >= deadline:
                if repair:
                    return positions, busy
                raise FillsPending("; ".join(gaps.values()) + f" after {self.fill_wait_seconds:g} s")
            self.exchange.wait_for_stream(pause)
            pause = min(2 * pause, 0.5)

    def _exchange_size(self, side: Side, positions: dict[int, PositionInfo]) -> float:
        position = positions.get(side.config.position_idx)
        return position.size if position is not None and position.direction == side.direction else 0.0

    def _gaps(self, positions: dict[int, PositionInfo], later: list[Fill]) -> dict[str, str]:
        """Sides whose state (with the ``later`` fills applied) differs from the exchange's size, with what differs."""
        gaps = {}
        for side in self.sides:
            expected = side.state[core.S_QTY] if side.state[core.S_DIR] else 0.0
            for fill in later:
                if self._side_of(fill) is side and not fill.funding:
                    expected += -fill.closed_size if fill.closing else fill.qty
            held = self._exchange_size(side, positions)
            if abs(expected - held) > self.instrument["qty_step"] / 2:
                gaps[side.name] = f"{side.name}: the exchange holds {held:g}, the booked fills {expected:g}"
        return gaps

    def _fill_overdue_ms(self) -> int:
        return max(FILL_OVERDUE_BARS * self.bar_ms, FILL_OVERDUE_MIN_MS)

    def _note_awaiting(self, gaps: dict[str, str]) -> None:
        """Mark the sides whose position changed on the exchange without a visible execution as awaiting it, report
        one still unseen after the overdue bound (again every such period), and release the sides whose execution
        has been booked. A side with no position in its state is not awaiting: reconcile rescues what it finds."""
        now = None
        for side in self.sides:
            name = side.name
            if name not in gaps or not side.state[core.S_DIR]:
                done = self.awaiting.pop(name, None)
                if done is not None:
                    waited = (self.exchange.server_time_ms() - done["since_ms"]) / 60_000
                    logger.warning("%s: the awaited execution is booked (%.0f min after the position changed)",
                                   name, waited)
                    if done["reported_ms"]:
                        self.events.emit("desync", name, detail=f"the execution awaited for {waited:.0f} min has "
                                                                "shown and is booked at its own price")
                continue
            now = now if now is not None else self.exchange.server_time_ms()
            entry = self.awaiting.get(name)
            if entry is None:
                self.awaiting[name] = {"since_ms": now, "reported_ms": 0}
                logger.warning("%s; its execution is not visible yet: the side awaits it (no entry or add, "
                               "nothing closed at a guessed price)", gaps[name])
            elif now - max(entry["since_ms"], entry["reported_ms"]) >= self._fill_overdue_ms():
                entry["reported_ms"] = now
                since = pd.Timestamp(entry["since_ms"], unit="ms", tz="UTC").isoformat()
                detail = (f"{gaps[name]}, and no execution explains it since {since}: the side still awaits it (no "
                          "entry, nothing closed at a guessed price); check the account's trade history")
                logger.error("%s", detail)
                self.events.emit("desync", name, detail=detail)
        self.store.set("awaiting", self.awaiting)

    def reconcile(self, rescue: bool = True) -> None:
        """Compare each side with the exchange (executions, position/list, open orders) and repair (without
        ``rescue``, a position the state does not know is left for a later reconcile).

        Run at start-up and every few seconds by the live loop. Executions not booked yet are
        booked first (a stop or liquidation fill, a close by hand), missing ones waited for; then a
        side whose position changed on the exchange with no execution to show for it is left awaiting
        that execution (never closed or resized at a guess; a position it still holds keeps a stop), a
        position unknown to the state is rescued, a position without a stop gets one at once, and
        orders left over by a flat side are cancelled. Every repair is an event.
        """
        if self.dry_run:
            return
        with self.store.transaction():
            data = self._data()
            positions, busy = self.settle(data, self._forming_close(), repair=True)
            self._note_stops(positions)
            orders = self.exchange.open_orders()
            for side in self.sides:
                position = positions.pop(side.config.position_idx, None)
                if side.name in busy:
                    logger.info("%s: reconcile postponed: fills of the next bar are pending", side.name)
                    continue
                self._reconcile_side(side, position, orders, data, rescue)
                self.store.save_state(side.name, side.state, int(time.time() * 1000))
            for idx, position in positions.items():
                logger.error("position %s of %s on positionIdx %d is not managed by any side", position.side,
                             position.size, idx)
                self.events.emit("desync", None, detail=f"unmanaged {position.side} position of {position.size:g} "
                                                         f"on positionIdx {idx}")

    def _reconcile_side(self, side: Side, position: PositionInfo | None, orders: list[Any],
                        data: backtester.MarketData, rescue: bool = True) -> None:
        state, tick = side.state, self.instrument["tick_size"]
        if position is not None and position.direction != side.direction:
            self.events.emit("desync", side.name, detail=f"a {position.side} position of {position.size:g} "
                                                         f"is not this side's; left alone")
            position = None
        if side.name in self.awaiting:
            logger.info("%s: awaiting the execution that changed its position; left as it is", side.name)
            if position is not None:
                self._ensure_stop(side, position.stop_loss, tick)
            return
        if not state[core.S_DIR] and position is not None:
            if not rescue:
                logger.info("%s: a position of %g not in the state is left for now: a bar close awaits its "
                            "fills (it may be that bar's own entry)", side.name, position.size)
                return
            opened = self.exchange.position_open_time(position)
            if opened is None:
                opened = self.exchange.server_time_ms()
                self.events.emit("desync", side.name, detail="the position's open time is unknown (no openTime and "
                                                             "no opening fill in 4 weeks): counted from now")
            self.rescue(side, side.direction, position.size, position.avg_price, opened, position.stop_loss, data)
            self.store.set(f"rescue_seq_{side.name}", position.seq)  # its executions up to here are in it
        if state[core.S_DIR]:
            self._ensure_stop(side, position.stop_loss if position else 0.0, tick)
            return
        for order in orders:
            own = order.stop_order_type in ("", "UNKNOWN")  # not the exchange's stop-loss of a position
            if order.position_idx == side.config.position_idx and order.reduce_only and own:
                self._try(side, "cancel_target", order.link_id,
                          lambda o=order: self.exchange.cancel(link_id=o.link_id, order_id=o.order_id))
                self.events.emit("desync", side.name, detail=f"leftover order {order.link_id} of a flat side "
                                                             "cancelled")

    def _ensure_stop(self, side: Side, exchange_stop: float, tick: float) -> None:
        """The exchange must hold the state's stop: set it when missing or looser, adopt a tighter one set by hand."""
        state = side.state
        d = state[core.S_DIR]
        if exchange_stop and (exchange_stop - state[core.S_STOP]) * d > tick / 2:
            self.events.emit("desync", side.name, detail=f"a tighter stop {exchange_stop:g} is on the exchange "
                                                         f"(state {state[core.S_STOP]:g}); adopted")
            state[core.S_STOP] = exchange_stop
            side.sent_stop = side.exchange_stop = exchange_stop
            return
        if exchange_stop and abs(exchange_stop - state[core.S_STOP]) <= tick / 2:
            side.sent_stop = state[core.S_STOP]
            return
        if self._beyond_market(state[core.S_STOP], d):
            self._close(side, f"{side.name}-{int(state[core.S_ENTRY_TS])}-guard-rc", self._data(),
                        self._forming_close())
            return
        if self._send_stop(side, "stop_restored"):
            self.events.emit("stop_restored", side.name, stop=float(state[core.S_STOP]),
                             exchange_stop=exchange_stop or None)

    def rescue(self, side: Side, d: float, qty: float, price: float, entry_ms: int, exchange_stop: float,
               data: backtester.MarketData, fee: float = 0.0) -> None:
        """Adopt a position the state does not know (opened by hand, or left by a lost database).

        It gets the entry price and open time the exchange reports, the ATR of its entry bar
        recomputed from history and initial size = current size, so every rule (breakeven, trailing,
        take-profits, time exit, stagnation) manages it from now on; a tighter stop already on the
        exchange is kept.
        """
        state, p = side.state, side.p
        bar = int(max(0, min(len(data.ts) - 1, np.searchsorted(data.ts, entry_ms, side="right") - 1)))
        atr = data.indicator("atr", side.config.params["atr_period"])
        finite = np.flatnonzero(np.isfinite(atr[:bar + 1]))
        a = float(atr[finite[-1]]) if finite.size else float(data.high[bar] - data.low[bar])
        state[core.S_ORDER_ATR] = a
        state[core.S_ORDER_STOP] = core.round_price(price - d * a * p[core.P_STOP_ATR], p[core.P_TICK])
        core.open_fill(state, p, d, qty, price, fee, float(entry_ms), float(bar))
        if exchange_stop and (exchange_stop - state[core.S_STOP]) * d > 0:
            state[core.S_STOP] = exchange_stop
        side.sent_stop = side.exchange_stop = exchange_stop
        entry_time = pd.Timestamp(entry_ms, unit="ms", tz="UTC").isoformat()
        self.events.emit("rescue", side.name, qty=qty, entry_price=price, stop=float(state[core.S_STOP]), atr=a,
                         entry_time=entry_time,
                         detail=f"adopted: entry {entry_time}, ATR at entry {a:g}, stop {state[core.S_STOP]:g}")
        logger.warning("%s: rescued a position of %g at %g (entry %s); stop %g", side.name, qty, price,
                       pd.Timestamp(entry_ms, unit="ms", tz="UTC"), state[core.S_STOP])
        side.resync = True

    def tick_guard(self, price: float, now: float, grace_seconds: float) -> None:
        """Close a position whose stop a fresh tick has crossed and which is still open after the grace period.

        The exchange-side stop is the protection; this catches the case where it failed or was
        removed. ``price`` must be fresh (the caller never passes a stale one); ``now`` is a
        monotonic time in seconds.
        """
        for side in self.sides:
            state = side.state
            if not state[core.S_DIR] or (price - state[core.S_STOP]) * state[core.S_DIR] > 0:
                side.crossed_at = None
                continue
            side.crossed_at = side.crossed_at if side.crossed_at is not None else now
            if now - side.crossed_at < grace_seconds:
                continue
            side.crossed_at = None
            with self.store.transaction():
                positions, busy = self.settle(self._data(), self._forming_close(), repair=True)
                if side.name in busy:
                    continue  # the next bar's fills are pending: looked at again with the next tick
                if state[core.S_DIR] and self._exchange_size(side, positions) > 0:
                    logger.error("%s: price %g crossed the stop %g and the position is still open: closing it",
                                 side.name, price, state[core.S_STOP])
                    self.events.emit("tick_guard", side.name, price=price, stop=float(state[core.S_STOP]),
                                     qty=float(state[core.S_QTY]))
                    # orderLinkId: at most 36 characters (docs: v5/order/create-order.mdx)
                    self._close(side, f"{side.name}-{int(state[core.S_ENTRY_TS])}-guard{int(now * 1000) % 10**7}",
                                self._data(), self._forming_close())
                self.store.save_state(side.name, state, int(time.time() * 1000))
