"""The matching engine of bybit_sim: one account on one linear symbol, replayed bar by bar.

It knows nothing of HTTP or WebSockets (bybit_sim.py serves it) and re-implements no fill rule:
prices come from core.py's functions, so a trader fed by the sim and a backtest fed the same
candles fill alike. Within a bar each position meets the path the backtest gives it: first the
open (every resting order the open has crossed fills there), then the extreme against that
position (low for a long, high for a short; low for a flat slot), then the other extreme. The stop
and the liquidation are decided by core.protective_exit; a liquidated position is taken over at
core.bankruptcy_price without a fee. Once a bar has closed the price is the next bar's open: the
funding events due by that open are charged first (each at its own rate), and a market order
placed between two bars fills at once at that open.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import core

HEDGE_IDX = {1: "Buy", 2: "Sell"}


class ExchangeError(Exception):
    """A business error answered with Bybit's retCode and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (ErrCode: {code})")
        self.code = code
        self.message = message


@dataclass
class Position:
    """A position slot: positionIdx 0 (one-way) or 1/2 (hedge buy/sell)."""

    idx: int
    side: str = ""  # Buy, Sell or "" when flat
    size: float = 0.0
    avg_price: float = 0.0
    stop_loss: float = 0.0
    take_profit: float = 0.0
    trailing_stop: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    realised: float = 0.0

    @property
    def direction(self) -> float:
        """+1 long, -1 short, 0 flat."""
        return 0.0 if self.size == 0 else (1.0 if self.side == "Buy" else -1.0)


@dataclass
class Order:
    """A live or finished order."""

    order_id: str
    link_id: str
    side: str
    order_type: str
    qty: float
    price: float
    reduce_only: bool
    position_idx: int
    trigger_price: float = 0.0
    trigger_direction: int = 0
    stop_loss: float = 0.0
    take_profit: float = 0.0
    status: str = "New"
    filled: float = 0.0
    avg_price: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    stop_order_type: str = ""
    reject_reason: str = "EC_NoError"


@dataclass
class Engine:
    """Account, positions, orders and the replay cursor."""

    ts: np.ndarray
    open_: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    bar_ms: int
    symbol: str
    balance: float
    costs: dict[str, float]
    instrument: dict[str, float]
    cursor: int
    leverage: float = 10.0
    hedge: bool = False
    funding_ts: np.ndarray | None = None     # funding events (core.funding_schedule); None: the 8-hourly grid
    funding_rates: np.ndarray | None = None  # their rates, NaN = costs["funding_rate"]
    positions: dict[int, Position] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    link_ids: set[str] = field(default_factory=set)
    executions: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    funding_history: list[tuple[int, float]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: {"orders": 0, "executions": 0, "duplicates": 0})
    unprotected_bars: int = 0
    longest_unprotected_bars: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        for idx in (0, 1, 2):
            self.positions[idx] = Position(idx)
        if self.funding_ts is None:
            self.funding_ts, self.funding_rates = core.funding_schedule(self.ts, self.bar_ms)
        self._next_event = int(np.searchsorted(self.funding_ts, self.ts[min(self.cursor, len(self.ts) - 1)],
                                               side="right"))

    def funding_rate(self, k: int) -> float:
        """The rate of funding event ``k`` (the constant of the costs where the history has none)."""
        rate = float(self.funding_rates[k])
        return rate if rate == rate else self.costs["funding_rate"]

    # --- clock ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the last bar has closed."""
        return self.cursor >= len(self.ts)

    def now_ms(self) -> int:
        """Exchange time: the open of the forming bar (or the last close at the end)."""
        return int(self.ts[self.cursor]) if not self.finished else int(self.ts[-1] + self.bar_ms)

    def last_price(self) -> float:
        """Between bars the price is the forming bar's open."""
        return float(self.open_[self.cursor]) if not self.finished else float(self.close[-1])

    # --- account ----------------------------------------------------------------------------
    def position_slots(self) -> list[Position]:
        """The slots in use for the current position mode."""
        return [self.positions[1], self.positions[2]] if self.hedge else [self.positions[0]]

    def unrealised(self, price: float | None = None) -> float:
        """Unrealised PnL of all positions at ``price`` (default: the last price)."""
        price = self.last_price() if price is None else price
        return sum((price - p.avg_price) * p.size * p.direction for p in self.position_slots())

    def used_margin(self) -> float:
        """Initial margin of the open positions."""
        return sum(p.size * p.avg_price / self.leverage for p in self.position_slots())

    def equity(self) -> float:
        """Wallet balance plus unrealised PnL."""
        return self.balance + self.unrealised()

    def _slot_for(self, side: str, position_idx: int, reduce_only: bool) -> Position:
        if self.hedge:
            if position_idx not in (1, 2):
                raise ExchangeError(10001, "params error: position idx not match position mode")
            return self.positions[position_idx]
        if position_idx != 0:
            raise ExchangeError(10001, "params error: position idx not match position mode")
        return self.positions[0]

    def _record(self, kind: str, payload: Any) -> None:
        self.events.append((kind, payload))

    # --- orders -----------------------------------------------------------------------------
    def create_order(self, req: dict[str, Any]) -> Order:
        """order/create: market orders fill at once at the current price; others rest."""
        if req.get("category") != "linear":
            raise ExchangeError(10001, "params error: category only support linear")
        if req.get("symbol") != self.symbol:
            raise ExchangeError(10001, "params error: symbol invalid")
        side = req.get("side")
        if side not in ("Buy", "Sell"):
            raise ExchangeError(10001, "params error: side invalid")
        order_type = req.get("orderType")
        if order_type not in ("Market", "Limit"):
            raise ExchangeError(10001, "params error: orderType invalid")
        try:
            qty = float(req.get("qty"))
            price = float(req.get("price") or 0)
            trigger = float(req.get("triggerPrice") or 0)
            stop_loss = float(req.get("stopLoss") or 0)
            take_profit = float(req.get("takeProfit") or 0)
        except (TypeError, ValueError):
            raise ExchangeError(10001, "params error: qty, price, triggerPrice, stopLoss and takeProfit must be "
                                       "numbers") from None
        step, min_qty = self.instrument["qty_step"], self.instrument["min_qty"]
        if qty < min_qty or abs(qty / step - round(qty / step)) > 1e-6:
            raise ExchangeError(10001, f"params error: qty {qty:g} must be a multiple of {step:g} and at least "
                                       f"{min_qty:g}")
        if order_type == "Limit" and price <= 0:
            raise ExchangeError(10001, "params error: price is required for a Limit order")
        link_id = str(req.get("orderLinkId") or "")
        if link_id and link_id in self.link_ids:
            self.counters["duplicates"] += 1
            raise ExchangeError(110072, "OrderLinkedID is duplicate")
        reduce_only = bool(req.get("reduceOnly", False))
        position_idx = int(req.get("positionIdx", 0))
        slot = self._slot_for(side, position_idx, reduce_only)
        if reduce_only and (slot.size == 0 or slot.side == side):
            raise ExchangeError(110017, "current position is zero, cannot fix reduce-only order qty")
        d = 1.0 if side == "Buy" else -1.0
        reference = price if order_type == "Limit" else self.last_price()
        if stop_loss and (reference - stop_loss) * d <= 0:
            raise ExchangeError(10001, f"params error: StopLoss:{stop_loss:g} set for {side} position should be "
                                       f"{'lower' if d > 0 else 'higher'} than base_price:{reference:g}")
        if not reduce_only and not (self.hedge and slot.side and slot.side != side):
            needed = core.required_margin(qty, reference, self.leverage, self.costs["taker_fee"])
            if needed > self.equity() - self.used_margin():
                raise ExchangeError(110007, "ab not enough for new order")
        now = self.now_ms()
        order = Order(order_id=f"sim-{next(self._ids):08d}", link_id=link_id, side=side, order_type=order_type,
                      qty=qty, price=price, reduce_only=reduce_only, position_idx=position_idx, trigger_price=trigger,
                      trigger_direction=int(req.get("triggerDirection", 0) or 0), stop_loss=stop_loss,
                      take_profit=take_profit, created_ms=now, updated_ms=now,
                      status="Untriggered" if trigger else "New")
        if link_id:
            self.link_ids.add(link_id)
        self.orders[order.order_id] = order
        self.counters["orders"] += 1
        if order_type == "Market" and not trigger:
            self._fill(order, core.market_fill_price(self.last_price(), d, self.costs["slippage"]), taker=True)
        else:
            self._record("order", order)
        return order

    def cancel_order(self, order_id: str | None, link_id: str | None) -> Order:
        """order/cancel of a resting order."""
        for order in self.orders.values():
            if (order_id and order.order_id == order_id) or (link_id and order.link_id == link_id):
                if order.status in ("New", "Untriggered", "PartiallyFilled"):
                    order.status = "Cancelled"
                    order.updated_ms = self.now_ms()
                    self._record("order", order)
                    return order
        raise ExchangeError(110001, "order not exists or too late to cancel")

    def cancel_all(self) -> list[Order]:
        """order/cancel-all."""
        cancelled = []
        for order in self.open_orders():
            order.status = "Cancelled"
            order.updated_ms = self.now_ms()
            self._record("order", order)
            cancelled.append(order)
        return cancelled

    def open_orders(self) -> list[Order]:
        """Orders still resting."""
        return [o for o in self.orders.values() if o.status in ("New", "Untriggered", "PartiallyFilled")]

    def set_trading_stop(self, position_idx: int, stop_loss: float | None, take_profit: float | None,
                         trailing_stop: float | None) -> Position:
        """position/trading-stop (Full mode) on an open position."""
        slot = self.positions[position_idx] if position_idx in self.positions else None
        if slot is None or (self.hedge and position_idx == 0) or (not self.hedge and position_idx != 0):
            raise ExchangeError(10001, "params error: position idx not match position mode")
        if slot.size == 0:
            raise ExchangeError(10001, "can not set tp/sl/ts for zero position")
        d = slot.direction
        price = self.last_price()
        if stop_loss is not None:
            if stop_loss and (price - stop_loss) * d <= 0:
                raise ExchangeError(10001, f"StopLoss:{stop_loss:g} set for {slot.side} position should be "
                                           f"{'lower' if d > 0 else 'higher'} than base_price:{price:g}")
            slot.stop_loss = stop_loss
        if take_profit is not None:
            slot.take_profit = take_profit
        if trailing_stop is not None:
            slot.trailing_stop = trailing_stop
        slot.updated_ms = self.now_ms()
        self._record("position", slot)
        return slot

    # --- fills ------------------------------------------------------------------------------
    def _fill(self, order: Order, price: float, taker: bool, qty: float | None = None,
              fee_rate: float | None = None) -> None:
        """Execute ``order`` (or ``qty`` of it) at ``price``: position, wallet, execution, events.

        The fee is the taker or maker fee, or ``fee_rate`` when given (a liquidation pays none).
        """
        slot = self._slot_for(order.side, order.position_idx, order.reduce_only)
        qty = order.qty - order.filled if qty is None else qty
        d_order = 1.0 if order.side == "Buy" else -1.0
        closing = slot.size > 0 and slot.direction != d_order
        if order.reduce_only or closing:
            qty = min(qty, slot.size) if closing else 0.0
        if qty <= 0:
            order.status = "Cancelled"
            self._record("order", order)
            return
        if fee_rate is None:
            fee_rate = self.costs["taker_fee"] if taker else self.costs["maker_fee"]
        fee = qty * price * fee_rate
        closed = 0.0
        pnl = 0.0
        if closing:
            closed = qty
            pnl = (price - slot.avg_price) * qty * slot.direction
            slot.size = round(slot.size - qty, 12)
            if slot.size <= self.instrument["qty_step"] * 1e-6:
                slot.size, slot.side, slot.avg_price = 0.0, "", 0.0
                slot.stop_loss = slot.take_profit = slot.trailing_stop = 0.0
        else:
            total = slot.size + qty
            slot.avg_price = (slot.avg_price * slot.size + price * qty) / total
            if slot.size == 0:
                slot.created_ms = self.now_ms()
            slot.size, slot.side = total, order.side
            if order.stop_loss:
                slot.stop_loss = order.stop_loss
            if order.take_profit:
                slot.take_profit = order.take_profit
        slot.realised += pnl - fee
        slot.updated_ms = self.now_ms()
        self.balance += pnl - fee
        order.filled += qty
        order.avg_price = price
        order.status = "Filled" if order.filled >= order.qty - 1e-12 or closing else "PartiallyFilled"
        order.updated_ms = self.now_ms()
        execution = {"execId": f"exe-{next(self._ids):08d}", "orderId": order.order_id, "orderLinkId": order.link_id,
                     "side": order.side, "execPrice": price, "execQty": qty, "execFee": fee, "execType": "Trade",
                     "closedSize": closed, "execPnl": pnl, "isMaker": not taker, "orderType": order.order_type,
                     "stopOrderType": order.stop_order_type, "execTime": self.now_ms(), "positionIdx": slot.idx,
                     "orderPrice": order.price, "orderQty": order.qty}
        self.executions.append(execution)
        self.counters["executions"] += 1
        self._record("execution", execution)
        self._record("order", order)
        self._record("position", slot)
        self._record("wallet", None)
        if slot.size == 0:
            for other in self.open_orders():
                if other.reduce_only and other.position_idx == slot.idx:
                    other.status = "Cancelled"
                    self._record("order", other)

    def _position_stop_order(self, slot: Position, kind: str) -> Order:
        side = "Sell" if slot.side == "Buy" else "Buy"
        order = Order(order_id=f"sim-{next(self._ids):08d}", link_id="", side=side, order_type="Market",
                      qty=slot.size, price=0.0, reduce_only=True, position_idx=slot.idx, status="Triggered",
                      created_ms=self.now_ms(), updated_ms=self.now_ms(), stop_order_type=kind)
        self.orders[order.order_id] = order
        return order

    def _walk_point(self, slot: Position, open_: float, extreme: float, mine: list[Order]) -> None:
        """Fill what the price crosses from the open to ``extreme`` for ``slot`` and its orders ``mine``."""
        slip = self.costs["slippage"]
        d = slot.direction
        if d != 0 and (extreme - open_) * d <= 0:
            liq = core.liquidation_price(slot.avg_price, d, self.leverage, self.costs["maintenance_margin_rate"])
            kind = core.protective_exit(slot.stop_loss, liq, d, open_, extreme)
            if kind == core.EXIT_LIQUIDATION:  # docs: v5/enum.mdx (taken over, closed at the bankruptcy price)
                self._fill(self._position_stop_order(slot, "Liquidation"),
                           core.bankruptcy_price(slot.avg_price, d, self.leverage), taker=True, fee_rate=0.0)
            elif kind == core.EXIT_STOP:
                self._fill(self._position_stop_order(slot, "StopLoss"),
                           core.stop_fill_price(slot.stop_loss, d, open_, slip), taker=True)
        # conditional orders in the order the price meets them; limits by price priority (the lowest
        # sell, the highest buy first: all fill at the open when it has crossed several)
        triggers = sorted((o for o in mine if o.trigger_price), key=lambda o: abs(o.trigger_price - open_))
        limits = sorted((o for o in mine if not o.trigger_price),
                        key=lambda o: o.price if o.side == "Sell" else -o.price)
        for order in triggers + limits:
            if order.status not in ("New", "Untriggered"):
                continue
            d_order = 1.0 if order.side == "Buy" else -1.0
            if order.trigger_price:
                rising = order.trigger_direction == 1
                if (extreme >= order.trigger_price) if rising else (extreme <= order.trigger_price):
                    order.status = "Triggered"
                    # a stop order closing a position of direction -d_order
                    fill = core.stop_fill_price(order.trigger_price, -d_order, open_, slip)
                    self._fill(order, fill, taker=True)
            elif order.order_type == "Limit" and (extreme - order.price) * d_order <= 0:
                # a sell limit fills when the price rises to it, a buy limit when it falls to it
                self._fill(order, core.limit_fill_price(order.price, -d_order, open_), taker=False)

    def _charge_funding(self) -> None:
        """The funding events due by the open of the forming bar, on the positions held at that instant."""
        now = int(self.ts[self.cursor])
        price = float(self.open_[self.cursor])
        while self._next_event < len(self.funding_ts) and self.funding_ts[self._next_event] <= now:
            rate = self.funding_rate(self._next_event)
            self.funding_history.append((int(self.funding_ts[self._next_event]), rate))
            self._next_event += 1
            for slot in self.position_slots():
                if slot.size == 0:
                    continue
                cost = slot.size * price * rate * slot.direction
                self.balance -= cost
                slot.realised -= cost
                execution = {"execId": f"fund-{next(self._ids):08d}", "orderId": "", "orderLinkId": "",
                             "side": slot.side, "execPrice": price, "execQty": slot.size, "execFee": cost,
                             "execType": "Funding", "closedSize": 0.0, "execPnl": 0.0, "isMaker": False,
                             "orderType": "UNKNOWN", "stopOrderType": "", "execTime": self.now_ms(),
                             "positionIdx": slot.idx, "orderPrice": 0.0, "orderQty": 0.0, "feeRate": rate}
                self.executions.append(execution)
                self.counters["executions"] += 1
                self._record("execution", execution)
                self._record("wallet", None)

    def play_bar(self) -> int:
        """Walk the forming bar's path for each position, close it, move to the next open; returns the closed bar."""
        k = self.cursor
        o, h, lo = float(self.open_[k]), float(self.high[k]), float(self.low[k])
        for slot in self.position_slots():
            adverse, favourable = (h, lo) if slot.direction < 0 else (lo, h)
            mine = [order for order in self.open_orders() if order.position_idx == slot.idx]
            for point in (o, adverse, favourable):
                self._walk_point(slot, o, point, mine)
        exposed = any(s.size and not s.stop_loss for s in self.position_slots())
        self.unprotected_bars = self.unprotected_bars + 1 if exposed else 0
        self.longest_unprotected_bars = max(self.longest_unprotected_bars, self.unprotected_bars)
        self.cursor += 1
        if not self.finished:
            self._charge_funding()
        return k

    def open_position_by_hand(self, side: str, qty: float, position_idx: int = 0) -> None:
        """A position opened outside GrTr (for rescue tests): a market order without a link id."""
        self.create_order({"category": "linear", "symbol": self.symbol, "side": side, "orderType": "Market",
                           "qty": str(qty), "positionIdx": position_idx})
