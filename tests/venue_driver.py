"""A fast in-process stand-in for trader.py on sim_engine's Engine, for the differential tests.

At each bar close it does what ``Trader._handle_bar`` does, without HTTP, SQLite or a candle
frame: it books the engine's executions into a core state (``core.open_fill``, ``close_fill``,
``book_funding``, exit reasons from the order link ids and stop order types, as ``Trader._book``
does), re-places the take-profit orders after a partial fill, runs ``core.decide``, and places the
orders ``Trader._act`` would place: an entry market order with its stop attached, a pyramid add,
a reduce-only close, stop moves through ``set_trading_stop`` (a stop the market has passed is a
close at market), the ``core.resting_targets`` limits. Prices and quantities go through
``trader.fmt`` as the trader's requests do, so the engine sees the same numbers. Every rule comes
from core.py; this file only routes orders.
"""

from __future__ import annotations

import numpy as np

import core
from exchange import Fill
from sim_engine import Engine, ExchangeError
from trader import Trader, fmt

SYMBOL = "TESTUSDT"


class VenueDriver:
    """One strategy side traded on a fresh Engine over the given bars."""

    def __init__(self, ts: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                 atr: np.ndarray, signal: np.ndarray, p: np.ndarray, funding_ts: np.ndarray,
                 funding_rates: np.ndarray) -> None:
        self.ts, self.high, self.low, self.close, self.atr, self.signal, self.p = ts, high, low, close, atr, signal, p
        self.bar_ms = int(p[core.P_BAR_MS])
        costs = {"taker_fee": p[core.P_TAKER], "maker_fee": p[core.P_MAKER], "slippage": p[core.P_SLIPPAGE],
                 "funding_rate": p[core.P_FUNDING_RATE], "maintenance_margin_rate": p[core.P_MMR]}
        self.instrument = {"qty_step": p[core.P_QTY_STEP], "min_qty": p[core.P_MIN_QTY],
                           "tick_size": p[core.P_TICK], "min_notional": p[core.P_MIN_NOTIONAL], "max_leverage": 200.0}
        self.engine = Engine(ts, open_, high, low, close, np.zeros(len(ts)), self.bar_ms, SYMBOL, p[core.P_CAPITAL],
                             costs, self.instrument, 0, leverage=p[core.P_LEVERAGE], funding_ts=funding_ts,
                             funding_rates=funding_rates)
        self.state = core.new_state(p[core.P_CAPITAL])
        self.rows: list[np.ndarray] = []
        self.booked = 0
        self.sent_stop = 0.0
        self.targets: list[str] = []
        self.version = 0
        self.resync = False
        self.closed = -1  # index of the last closed bar

    # --- the bar loop -----------------------------------------------------------------------
    def run(self) -> np.ndarray:
        """Play every bar; returns the trade rows (core.TRADE_COLUMNS)."""
        for i in range(len(self.ts)):
            self.engine.play_bar()
            self.closed = i
            self.sync(until_ms=int(self.ts[i]) + self.bar_ms)
            s = self.state
            core.decide(s, self.p, i, float(self.ts[i]), self.high[i], self.low[i], self.close[i], self.atr[i],
                        int(self.signal[i]), self.high[i - 1] if i else np.nan, self.low[i - 1] if i else np.nan)
            if i + 1 < len(self.ts):
                self.act(i)
            s[core.S_ORDER_ACTION] = core.A_NONE
        return np.array(self.rows).reshape(-1, core.N_TRADE_COLS)

    def act(self, i: int) -> None:
        """Trader._act: the order the core left, then the stop move."""
        s, bar_ts = self.state, int(self.ts[i])
        action = int(s[core.S_ORDER_ACTION])
        side = "Buy" if s[core.S_ORDER_DIR] > 0 else "Sell"
        if action == core.A_OPEN:
            self.order(f"{bar_ts}-open", side=side, orderType="Market", qty=fmt(s[core.S_ORDER_QTY], self.step),
                       stopLoss=fmt(s[core.S_ORDER_STOP], self.tick))
            self.sync()
            if s[core.S_DIR]:
                self.sent_stop = s[core.S_STOP]
                self.sync_targets()
        elif action == core.A_ADD:
            self.order(f"{bar_ts}-add", side=side, orderType="Market", qty=fmt(s[core.S_ORDER_QTY], self.step))
            self.sync()
            self.sync_targets()
        elif action == core.A_CLOSE:
            self.close_position(f"{bar_ts}-close{int(s[core.S_ORDER_REASON])}")
        d = s[core.S_DIR]
        if d and s[core.S_STOP] != self.sent_stop and (s[core.S_STOP] - self.sent_stop) * d > 0:
            try:
                self.engine.set_trading_stop(0, float(fmt(s[core.S_STOP], self.tick)), None, None)
                self.sent_stop = s[core.S_STOP]
            except ExchangeError:  # the market has passed the new stop: closed at market, as the trader does
                price = self.engine.last_price()
                if core.protective_exit(s[core.S_STOP], s[core.S_LIQ], d, price, price) == core.EXIT_STOP:
                    self.close_position(f"{bar_ts}-close{int(s[core.S_STOP_KIND])}")

    # --- orders -----------------------------------------------------------------------------
    @property
    def step(self) -> float:
        return self.instrument["qty_step"]

    @property
    def tick(self) -> float:
        return self.instrument["tick_size"]

    def order(self, tag: str, **request: str) -> bool:
        """Trader._order: one request; a business error is a refused order."""
        # unique per trade and tag, within Bybit's 36 characters (the trade's entry in seconds)
        link = f"s-{int(self.state[core.S_ENTRY_TS]) // 1000 if self.state[core.S_DIR] else 0}-{tag}"
        try:
            self.engine.create_order({"category": "linear", "symbol": SYMBOL, "positionIdx": 0, "orderLinkId": link,
                                      **request})
            return True
        except ExchangeError:
            return False

    def close_position(self, tag: str) -> None:
        exit_side = "Sell" if self.state[core.S_DIR] > 0 else "Buy"
        self.order(tag, side=exit_side, orderType="Market", qty=fmt(self.state[core.S_QTY], self.step),
                   reduceOnly=True)
        self.sync()

    def sync_targets(self) -> None:
        """Trader._sync_targets: cancel the resting targets, place core.resting_targets."""
        live = {o.link_id for o in self.engine.open_orders()}
        for link in self.targets:
            if link in live:
                self.engine.cancel_order(None, link)
        self.targets = []
        out = np.zeros((core.MAX_LEVELS + 1, 3))
        count = core.resting_targets(self.state, self.p, out)
        self.version += 1
        exit_side = "Sell" if self.state[core.S_DIR] > 0 else "Buy"
        for level, price, qty in out[:count]:
            tag = "tpf" if level < 0 else f"tp{int(level)}"
            full = f"{tag}-v{self.version}"
            if self.order(full, side=exit_side, orderType="Limit", qty=fmt(qty, self.step),
                          price=fmt(price, self.tick), reduceOnly=True):
                self.targets.append(f"s-{int(self.state[core.S_ENTRY_TS]) // 1000}-{full}")

    # --- fills ------------------------------------------------------------------------------
    def sync(self, until_ms: int | None = None) -> None:
        """Trader.sync_executions: book the executions not booked yet (before ``until_ms``), in order."""
        executions = self.engine.executions
        while self.booked < len(executions) and (until_ms is None or executions[self.booked]["execTime"] < until_ms):
            self.book(executions[self.booked])
            self.booked += 1
        if self.resync:
            self.resync = False
            if self.state[core.S_DIR]:
                self.sync_targets()

    def book(self, execution: dict) -> None:
        """Trader._book for the side's own orders and the exchange's stop and liquidation orders."""
        s, p = self.state, self.p
        fee = float(execution["execFee"])
        if execution["execType"] == "Funding":
            if s[core.S_DIR]:
                core.book_funding(s, fee)
            return
        price, qty, ms = float(execution["execPrice"]), float(execution["execQty"]), int(execution["execTime"])
        bar = self.closed + 1 if ms >= self.ts[self.closed] + self.bar_ms else int(
            np.searchsorted(self.ts[:self.closed + 1], ms, side="right") - 1)
        d = 1.0 if execution["side"] == "Buy" else -1.0
        if s[core.S_DIR] == 0 or s[core.S_DIR] == d:
            core.open_fill(s, p, d, qty, price, fee, float(ms), float(bar))
            return
        reason = Trader._exit_reason(s, as_fill(execution))  # the trader's own mapping of link ids, stops, execTypes
        if reason == core.R_PARTIAL:
            s[core.S_LEVELS_DONE] = int(execution["orderLinkId"].split("-tp")[1].split("-")[0]) + 1
        row = np.zeros(core.N_TRADE_COLS)
        row[1] = ms
        if core.close_fill(s, p, qty, price, fee, reason, float(bar), row):
            self.targets = []
            self.sent_stop = 0.0
        elif reason == core.R_PARTIAL:
            self.resync = True
        self.rows.append(row)


def as_fill(execution: dict) -> Fill:
    """The engine's execution record (Python numbers) as the adapter hands it to the trader."""
    return Fill(exec_id=execution["execId"], order_id=execution["orderId"], link_id=execution["orderLinkId"],
                side=execution["side"], price=float(execution["execPrice"]), qty=float(execution["execQty"]),
                fee=float(execution["execFee"]), exec_type=execution["execType"],
                closed_size=float(execution["closedSize"]), time_ms=int(execution["execTime"]),
                seq=int(execution["seq"]), stop_order_type=execution["stopOrderType"], position_direction=0.0,
                raw=execution)
