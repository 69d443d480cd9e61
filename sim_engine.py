"""The matching engine of bybit_sim: one account on one linear symbol, replayed bar by bar.

It knows nothing of HTTP or WebSockets (bybit_sim.py serves it and formats its records as Bybit's
V5 docs specify) and re-implements no fill rule: prices come from core.py's functions, so a trader
fed by the sim and a backtest fed the same candles fill alike. Within a bar each position meets the
path the backtest gives it: first the open (every resting order the open has crossed fills there),
then the extreme against that position (low for a long, high for a short; low for a flat slot), then
the other extreme. The stop and the liquidation are decided by core.protective_exit; a liquidated
position is taken over at core.bankruptcy_price without a fee. Once a bar has closed the price is the
next bar's open: the funding events due by that open are charged first (each at its own rate), and a
market order placed between two bars fills at once at that open.

Records keep Bybit's field names and documented meanings (values as Python numbers; bybit_sim turns
them into Bybit's strings): executions carry no positionIdx (docs: v5/order/execution.mdx), a
position's ``createdTime`` is the first time a position was ever created on the symbol and
``openTime`` the current one's open (docs: v5/position/position.mdx).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import core

HEDGE_IDX = {1: "Buy", 2: "Sell"}
TRIGGER_TYPES = ("LastPrice", "MarkPrice", "IndexPrice")  # docs: v5/enum.mdx triggerBy
OPEN_STATUSES = ("New", "PartiallyFilled", "Untriggered")  # docs: v5/enum.mdx orderStatus (open status)
ACCOUNT_UID = 592334


class ExchangeError(Exception):
    """A business error answered with Bybit's retCode and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (ErrCode: {code})")
        self.code = code
        self.message = message


@dataclass
class Order:
    """A live or finished order, with the fields Bybit reports for it."""

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
    trigger_by: str = "UNKNOWN"
    stop_loss: float = 0.0
    take_profit: float = 0.0
    sl_trigger_by: str = "UNKNOWN"
    status: str = "New"
    filled: float = 0.0
    avg_price: float = 0.0
    cum_value: float = 0.0
    cum_fee: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    stop_order_type: str = "UNKNOWN"
    create_type: str = "CreateByUser"
    time_in_force: str = "GTC"
    close_on_trigger: bool = False
    last_price_on_created: float = 0.0
    reject_reason: str = "EC_NoError"
    cancel_type: str = "UNKNOWN"
    closed_pnl: float = 0.0

    @property
    def is_open(self) -> bool:
        """Still resting (or waiting for its trigger)."""
        return self.status in OPEN_STATUSES


@dataclass
class Position:
    """A position slot: positionIdx 0 (one-way) or 1/2 (hedge buy/sell)."""

    idx: int
    side: str = ""  # Buy, Sell or "" when flat
    size: float = 0.0
    avg_price: float = 0.0
    stop_loss: float = 0.0
    sl_trigger_by: str = "LastPrice"
    take_profit: float = 0.0
    trailing_stop: float = 0.0
    opened_ms: int = 0  # openTime: when the current position opened (0 when flat)
    updated_ms: int = 0
    realised: float = 0.0  # cumRealisedPnl: all time
    current_realised: float = 0.0  # curRealisedPnl: of the current holding position
    seq: int = -1
    stop_order: Order | None = None  # the conditional order Bybit keeps for the position's stop-loss

    @property
    def direction(self) -> float:
        """+1 long, -1 short, 0 flat."""
        return 0.0 if self.size == 0 else (1.0 if self.side == "Buy" else -1.0)


@dataclass
class FillStyle:
    """How market orders fill where the docs leave it open (docs: v5/order/create-order.mdx: a market
    order is an IOC limit order; with too little liquidity the rest is cancelled)."""

    partial_rate: float = 0.0  # share of market orders (seeded draw) that fill only partly
    partial_share: float = 0.5  # the share of such an order's quantity that fills (down to the qty step)
    split: int = 1  # executions per market fill: one order, several executions (docs: v5/order/execution.mdx)
    seed: int = 0


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
    mark_offset: float = 0.0  # mark price = last price x (1 + mark_offset); the index price follows the mark
    # initial margin held by positions on other symbols of the same unified account: it is part of the account's
    # totalInitialMargin and is not available to new orders (docs: v5/account/wallet-balance.mdx,
    # totalAvailableBalance = totalMarginBalance - Haircut - totalInitialMargin)
    other_margin: float = 0.0
    fill_style: FillStyle = field(default_factory=FillStyle)
    positions: dict[int, Position] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    link_ids: set[str] = field(default_factory=set)
    executions: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    funding_history: list[tuple[int, float]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: {"orders": 0, "executions": 0, "duplicates": 0})
    first_position_ms: int = 0  # createdTime: the first time a position was created on this symbol
    unprotected_bars: int = 0
    longest_unprotected_bars: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1_000_000))
    _rng: random.Random = field(default_factory=random.Random)

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

        self._rng = random.Random(self.fill_style.seed)

    # --- clock and prices -------------------------------------------------------------------
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

    def mark_price(self) -> float:
        """The mark price: the last price moved by the test's offset."""
        return self.last_price() * (1.0 + self.mark_offset)

    def trigger_price(self, trigger_by: str) -> float:
        """The current price of a trigger type (docs: v5/enum.mdx triggerBy)."""
        return self.last_price() if trigger_by == "LastPrice" else self.mark_price()

    def _last_level(self, level: float, trigger_by: str) -> float:
        """The last price at which a level of ``trigger_by`` is reached (mark and index run at an offset)."""
        return level if trigger_by == "LastPrice" else level / (1.0 + self.mark_offset)

    # --- account ----------------------------------------------------------------------------
    def position_slots(self) -> list[Position]:
        """The slots in use for the current position mode."""
        return [self.positions[1], self.positions[2]] if self.hedge else [self.positions[0]]

    def unrealised(self, price: float | None = None) -> float:
        """Unrealised PnL of all positions at ``price`` (default: the mark price, as Bybit computes it)."""
        price = self.mark_price() if price is None else price
        return sum((price - p.avg_price) * p.size * p.direction for p in self.position_slots())

    def used_margin(self) -> float:
        """Initial margin of the open positions (those on other symbols included)."""
        return self.other_margin + sum(p.size * p.avg_price / self.leverage for p in self.position_slots())

    def equity(self) -> float:
        """Wallet balance plus unrealised PnL."""
        return self.balance + self.unrealised()

    def _slot(self, position_idx: int) -> Position:
        if (position_idx in (1, 2)) != self.hedge or position_idx not in self.positions:
            raise ExchangeError(10001, "position idx not match position mode")
        return self.positions[position_idx]

    def _record(self, kind: str, payload: Any) -> None:
        self.events.append((kind, payload))

    def _new_order(self, **fields: Any) -> Order:
        now = self.now_ms()
        order = Order(order_id=f"sim-{next(self._ids):08d}", created_ms=now, updated_ms=now,
                      last_price_on_created=self.last_price(), **fields)
        self.orders[order.order_id] = order
        return order

    # --- orders -----------------------------------------------------------------------------
    def create_order(self, req: dict[str, Any]) -> Order:
        """order/create (docs: v5/order/create-order.mdx): market orders (IOC) match at once; others rest."""
        if req.get("category") != "linear":
            raise ExchangeError(10001, "params error: category only support linear")
        if req.get("symbol") != self.symbol:
            raise ExchangeError(10001, "params error: Symbol Invalid")
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
        # docs: v5/order/create-order.mdx orderLinkId: at most 36 characters, letters, digits, - and _
        if len(link_id) > 36 or not all(c.isalnum() or c in "-_" for c in link_id):
            raise ExchangeError(10001, f"params error: orderLinkId {link_id!r} must be at most 36 characters of "
                                       "letters, digits, dashes and underscores")
        reduce_only = str(req.get("reduceOnly", False)).lower() == "true"
        if reduce_only and (stop_loss or take_profit):
            # docs: v5/order/create-order.mdx reduceOnly: "When reduceOnly is true, take profit/stop loss cannot be set"
            raise ExchangeError(10001, "params error: take profit/stop loss cannot be set on a reduce-only order")
        sl_trigger_by = str(req.get("slTriggerBy") or "LastPrice")
        if sl_trigger_by not in TRIGGER_TYPES:
            raise ExchangeError(10001, f"params error: slTriggerBy {sl_trigger_by} invalid")
        if link_id and link_id in self.link_ids:
            self.counters["duplicates"] += 1
            raise ExchangeError(110072, "OrderLinkedID is duplicate")
        position_idx = int(req.get("positionIdx", 0))
        slot = self._slot(position_idx)
        wrong_way = self.hedge and side != HEDGE_IDX[position_idx]  # a hedge slot's other side only reduces it
        if (reduce_only or wrong_way) and (slot.size == 0 or slot.side == side):
            raise ExchangeError(110017, "orderQty will be truncated to zero")  # docs: v5/error.mdx
        d = 1.0 if side == "Buy" else -1.0
        reference = price if order_type == "Limit" else self.last_price()
        if stop_loss:
            self._check_stop_side(stop_loss, d, sl_trigger_by, side)
        opening = not reduce_only and not (slot.size and slot.side != side)
        if opening and qty * reference < self.instrument.get("min_notional", 0.0):
            raise ExchangeError(110094, "Order notional value below the lower limit")  # docs: v5/error.mdx
        if opening:
            needed = core.required_margin(qty, reference, self.leverage, self.costs["taker_fee"])
            if needed > self.equity() - self.used_margin():
                raise ExchangeError(110007, "Available balance is insufficient")  # docs: v5/error.mdx
        market = order_type == "Market" and not trigger
        order = self._new_order(link_id=link_id, side=side, order_type=order_type, qty=qty, price=price,
                                reduce_only=reduce_only, position_idx=position_idx, trigger_price=trigger,
                                trigger_direction=int(req.get("triggerDirection", 0) or 0),
                                trigger_by=str(req.get("triggerBy") or ("LastPrice" if trigger else "UNKNOWN")),
                                stop_loss=stop_loss, take_profit=take_profit,
                                sl_trigger_by=sl_trigger_by if stop_loss else "UNKNOWN",
                                status="Untriggered" if trigger else "New",
                                time_in_force="IOC" if order_type == "Market" else str(req.get("timeInForce") or "GTC"))
        if link_id:
            self.link_ids.add(link_id)
        self.counters["orders"] += 1
        if market:
            self._fill_market(order, core.market_fill_price(self.last_price(), d, self.costs["slippage"]))
        else:
            self._record("order", order)
        return order

    def _check_stop_side(self, stop: float, d: float, trigger_by: str, side: str) -> None:
        """A stop-loss must lie below the trigger price for a long, above it for a short.

        Bybit answers retCode 10001 with this message shape (docs: v5/error.mdx 10001 "Request
        parameter error"; the message as Bybit sends it, e.g. ccxt/ccxt#19089).
        """
        base = self.trigger_price(trigger_by)
        if (base - stop) * d <= 0:
            word = "lower" if d > 0 else "greater"
            raise ExchangeError(10001, f"StopLoss:{stop:.10g} set for {side} position should {word} "
                                       f"base_price:{base:.10g}??{trigger_by}")

    def _fill_market(self, order: Order, price: float) -> None:
        """An IOC match: all of the order, or (a seeded share of orders) part of it, the rest cancelled."""
        style = self.fill_style
        qty = order.qty
        if style.partial_rate and self._rng.random() < style.partial_rate:
            qty = core.round_qty(order.qty * style.partial_share, self.instrument["qty_step"])
        parts = max(1, min(style.split, int(round(qty / self.instrument["qty_step"]))))
        step = self.instrument["qty_step"]
        chunk = core.round_qty(qty / parts, step)
        for k in range(parts):
            part = chunk if k < parts - 1 else round(qty - chunk * (parts - 1), 12)
            if part > 0 and order.is_open:
                self._fill(order, price, taker=True, qty=part)
        if order.is_open:  # IOC: what did not match is cancelled (docs: v5/enum.mdx orderStatus Cancelled)
            order.status = "Cancelled"
            order.reject_reason = "EC_NoImmediateQtyToFill"
            order.updated_ms = self.now_ms()
            self._record("order", order)

    def cancel_order(self, order_id: str | None, link_id: str | None) -> Order:
        """order/cancel of a resting order (docs: v5/order/cancel-order.mdx)."""
        for order in self.orders.values():
            if (order_id and order.order_id == order_id) or (link_id and order.link_id == link_id):
                if order.is_open and order.stop_order_type == "UNKNOWN":
                    self._cancel(order, "CancelByUser")
                    return order
        raise ExchangeError(110001, "Order does not exist")  # docs: v5/error.mdx

    def _cancel(self, order: Order, cancel_type: str, status: str = "Cancelled") -> None:
        order.status = status
        order.cancel_type = cancel_type
        order.updated_ms = self.now_ms()
        self._record("order", order)

    def cancel_all(self) -> list[Order]:
        """order/cancel-all: every resting order the user placed (a position's stop-loss stays)."""
        cancelled = [o for o in self.open_orders() if o.stop_order_type == "UNKNOWN"]
        for order in cancelled:
            self._cancel(order, "CancelByUser")
        return cancelled

    def open_orders(self) -> list[Order]:
        """Orders still resting, the positions' stop-loss orders included (docs: v5/order/open-order.mdx)."""
        return [o for o in self.orders.values() if o.is_open]

    def set_trading_stop(self, position_idx: int, stop_loss: float | None, take_profit: float | None,
                         trailing_stop: float | None, sl_trigger_by: str | None = None) -> Position:
        """position/trading-stop in Full mode (docs: v5/position/trading-stop.mdx)."""
        slot = self._slot(position_idx)
        if slot.size == 0:
            raise ExchangeError(10001, "can not set tp/sl/ts for zero position")
        trigger_by = sl_trigger_by or slot.sl_trigger_by
        if trigger_by not in TRIGGER_TYPES:
            raise ExchangeError(10001, f"params error: slTriggerBy {trigger_by} invalid")
        unchanged = ((stop_loss is None or stop_loss == slot.stop_loss)
                     and (take_profit is None or take_profit == slot.take_profit)
                     and (trailing_stop is None or trailing_stop == slot.trailing_stop)
                     and (sl_trigger_by is None or sl_trigger_by == slot.sl_trigger_by))
        if unchanged:
            raise ExchangeError(34040, "not modified")  # docs: v5/error.mdx 34040
        if stop_loss:
            self._check_stop_side(stop_loss, slot.direction, trigger_by, slot.side)
        if stop_loss is not None:
            self._set_stop(slot, stop_loss, trigger_by)
        if take_profit is not None:
            slot.take_profit = take_profit
        if trailing_stop is not None:
            slot.trailing_stop = trailing_stop
        slot.updated_ms = self.now_ms()
        self._record("position", slot)
        return slot

    def _set_stop(self, slot: Position, stop: float, trigger_by: str) -> None:
        """The position's stop-loss and the conditional order Bybit keeps for it (0 removes both)."""
        slot.stop_loss, slot.sl_trigger_by = stop, trigger_by
        order = slot.stop_order
        if not stop:
            if order is not None:
                self._cancel(order, "CancelByUser", "Deactivated")
            slot.stop_order = None
            return
        if order is None:
            exit_side = "Sell" if slot.side == "Buy" else "Buy"
            order = self._new_order(link_id="", side=exit_side, order_type="Market", qty=0.0, price=0.0,
                                    reduce_only=True, position_idx=slot.idx, status="Untriggered",
                                    trigger_direction=2 if slot.side == "Buy" else 1, stop_order_type="StopLoss",
                                    create_type="CreateByStopLoss", time_in_force="IOC", close_on_trigger=True)
            slot.stop_order = order
        order.trigger_price, order.trigger_by, order.updated_ms = stop, trigger_by, self.now_ms()
        self._record("order", order)

    def switch_mode(self, hedge: bool) -> None:
        """position/switch-mode (docs: v5/position/position-mode.mdx; codes from v5/error.mdx)."""
        if self.hedge == hedge:
            raise ExchangeError(110025, "Position mode has not been modified.")
        if any(s.size for s in self.positions.values()):
            raise ExchangeError(110024, "You have an existing position, so the position mode cannot be switched.")
        if self.open_orders():
            raise ExchangeError(110028, "You have existing open orders, so the position mode cannot be switched.")
        self.hedge = hedge

    # --- fills ------------------------------------------------------------------------------
    def _fill(self, order: Order, price: float, taker: bool, qty: float | None = None,
              fee_rate: float | None = None, exec_type: str = "Trade") -> None:
        """Execute ``order`` (or ``qty`` of it) at ``price``: position, wallet, execution record, events.

        The fee is the taker or maker fee, or ``fee_rate`` when given (a liquidation pays none).
        """
        slot = self.positions[order.position_idx]
        qty = order.qty - order.filled if qty is None else qty
        d_order = 1.0 if order.side == "Buy" else -1.0
        closing = slot.size > 0 and slot.direction != d_order
        if order.reduce_only or closing:
            qty = min(qty, slot.size) if closing else 0.0
        if qty <= 0:
            self._cancel(order, "UNKNOWN")
            return
        if fee_rate is None:
            fee_rate = self.costs["taker_fee"] if taker else self.costs["maker_fee"]
        fee = qty * price * fee_rate
        closed = 0.0
        pnl = 0.0
        now = self.now_ms()
        if closing:
            closed = qty
            pnl = (price - slot.avg_price) * qty * slot.direction
            slot.size = round(slot.size - qty, 12)
            if slot.size <= self.instrument["qty_step"] * 1e-6:
                self._close_slot(slot, order)
        else:
            total = slot.size + qty
            slot.avg_price = (slot.avg_price * slot.size + price * qty) / total
            if slot.size == 0:
                slot.opened_ms = now
                slot.current_realised = 0.0
                self.first_position_ms = self.first_position_ms or now
            slot.size, slot.side = total, order.side
            if order.stop_loss:
                self._set_stop(slot, order.stop_loss, order.sl_trigger_by)
            if order.take_profit:
                slot.take_profit = order.take_profit
        slot.realised += pnl - fee
        slot.current_realised += pnl - fee
        slot.updated_ms = now
        slot.seq = next(self._seq)
        self.balance += pnl - fee
        order.avg_price = (order.avg_price * order.filled + price * qty) / (order.filled + qty)
        order.filled += qty
        order.cum_value += qty * price
        order.cum_fee += fee
        order.closed_pnl += pnl
        order.status = "Filled" if order.filled >= order.qty - 1e-12 or order.qty == 0 else "PartiallyFilled"
        order.updated_ms = now
        self._execution(order, exec_type, price, qty, fee, fee_rate, closed, pnl, not taker, slot.seq)
        if order.reduce_only and order.is_open and slot.size == 0:
            # the position is gone: what a reduce-only order has left can reduce nothing and is cancelled
            # (docs: v5/enum.mdx orderStatus: "Cancelled: in derivatives, orders with this status may have
            # an executed qty")
            self._cancel(order, "CancelByReduceOnly")
        else:
            self._record("order", order)
        self._record("position", slot)
        self._record("wallet", None)

    def _close_slot(self, slot: Position, closing: Order) -> None:
        """The last quantity is gone (by ``closing``): the slot is flat, its stop and reduce-only orders go with it."""
        slot.size, slot.side, slot.avg_price, slot.opened_ms = 0.0, "", 0.0, 0
        slot.take_profit = slot.trailing_stop = 0.0
        if slot.stop_order is not None and slot.stop_order.is_open:
            self._cancel(slot.stop_order, "UNKNOWN", "Deactivated")
        slot.stop_order, slot.stop_loss = None, 0.0
        for other in self.open_orders():
            if other.reduce_only and other.position_idx == slot.idx and other is not closing:
                self._cancel(other, "CancelByReduceOnly")

    def _execution(self, order: Order, exec_type: str, price: float, qty: float, fee: float, fee_rate: float,
                   closed: float, pnl: float, maker: bool, seq: int) -> None:
        """One execution record (docs: v5/order/execution.mdx, v5/websocket/private/execution.mdx): no positionIdx."""
        record = {"execId": f"exe-{next(self._ids):08d}", "orderId": order.order_id, "orderLinkId": order.link_id,
                  "side": order.side, "orderPrice": order.price, "orderQty": order.qty,
                  "leavesQty": max(0.0, order.qty - order.filled), "createType": order.create_type,
                  "orderType": order.order_type, "stopOrderType": order.stop_order_type, "execFee": fee,
                  "execPrice": price, "execQty": qty, "execType": exec_type, "execValue": qty * price,
                  "execTime": self.now_ms(), "isMaker": maker, "feeRate": fee_rate, "markPrice": self.mark_price(),
                  "closedSize": closed, "execPnl": pnl, "seq": seq}
        self.executions.append(record)
        self.counters["executions"] += 1
        self._record("execution", record)

    def _trigger_stop(self, slot: Position) -> Order:
        """The position's stop-loss order triggers: a reduce-only market order for the whole size."""
        order = slot.stop_order or self._new_order(
            link_id="", side="Sell" if slot.side == "Buy" else "Buy", order_type="Market", qty=0.0, price=0.0,
            reduce_only=True, position_idx=slot.idx, stop_order_type="StopLoss", create_type="CreateByStopLoss",
            time_in_force="IOC", close_on_trigger=True, trigger_price=slot.stop_loss)
        order.status, order.qty, order.updated_ms = "Triggered", slot.size, self.now_ms()
        return order

    def _takeover_order(self, slot: Position, create_type: str) -> Order:
        """The order the liquidation engine (or ADL) creates to take a position over (docs: v5/enum.mdx createType)."""
        return self._new_order(link_id="", side="Sell" if slot.side == "Buy" else "Buy", order_type="Market",
                               qty=slot.size, price=0.0, reduce_only=True, position_idx=slot.idx,
                               create_type=create_type, time_in_force="IOC", status="New")

    def take_over(self, position_idx: int, qty: float, exec_type: str = "AdlTrade") -> None:
        """Tests: ``qty`` of the position closed at the mark price by the exchange itself, as an ADL
        (execType AdlTrade) or a takeover liquidation (BustTrade) (docs: v5/enum.mdx execType, createType)."""
        slot = self.positions[position_idx]
        create = {"AdlTrade": "CreateByAdl_PassThrough", "BustTrade": "CreateByTakeOver_PassThrough"}[exec_type]
        order = self._takeover_order(slot, create)
        order.qty = min(qty, slot.size)
        self._fill(order, self.mark_price(), taker=True, exec_type=exec_type)

    def _walk_point(self, slot: Position, open_: float, extreme: float, mine: list[Order]) -> None:
        """Fill what the price crosses from the open to ``extreme`` for ``slot`` and its orders ``mine``."""
        slip = self.costs["slippage"]
        d = slot.direction
        if d != 0 and (extreme - open_) * d <= 0:
            liq = core.liquidation_price(slot.avg_price, d, self.leverage, self.costs["maintenance_margin_rate"])
            stop = self._last_level(slot.stop_loss, slot.sl_trigger_by) if slot.stop_loss else 0.0
            kind = core.protective_exit(stop, liq, d, open_, extreme)
            if kind == core.EXIT_LIQUIDATION:
                # docs: v5/enum.mdx execType BustTrade (taken over by the liquidation engine, closed at the
                # bankruptcy price), createType CreateByTakeOver_PassThrough
                self._fill(self._takeover_order(slot, "CreateByTakeOver_PassThrough"),
                           core.bankruptcy_price(slot.avg_price, d, self.leverage), taker=True, fee_rate=0.0,
                           exec_type="BustTrade")
            elif kind == core.EXIT_STOP:
                self._fill(self._trigger_stop(slot), core.stop_fill_price(stop, d, open_, slip), taker=True)
        # conditional orders in the order the price meets them; limits by price priority (the lowest
        # sell, the highest buy first: all fill at the open when it has crossed several)
        triggers = sorted((o for o in mine if o.trigger_price), key=lambda o: abs(o.trigger_price - open_))
        limits = sorted((o for o in mine if not o.trigger_price),
                        key=lambda o: o.price if o.side == "Sell" else -o.price)
        for order in triggers + limits:
            if not order.is_open:
                continue
            d_order = 1.0 if order.side == "Buy" else -1.0
            if order.trigger_price:
                level = self._last_level(order.trigger_price, order.trigger_by)
                rising = order.trigger_direction == 1
                if (extreme >= level) if rising else (extreme <= level):
                    order.status = "Triggered"
                    # a stop order closing a position of direction -d_order
                    self._fill(order, core.stop_fill_price(level, -d_order, open_, slip), taker=True)
            elif order.order_type == "Limit" and (extreme - order.price) * d_order <= 0:
                # a sell limit fills when the price rises to it, a buy limit when it falls to it
                self._fill(order, core.limit_fill_price(order.price, -d_order, open_), taker=False)

    def _charge_funding(self) -> None:
        """The funding events due by the open of the forming bar, on the positions held at that instant.

        One execution per position, execType Funding (docs: v5/enum.mdx), orderType UNKNOWN, side the
        position's side (docs: v5/account/transaction-log.mdx: for side=Buy feeRate = the market rate,
        for side=Sell its negative), execFee positive when paid, execPrice the mark price
        (docs: v5/pre-upgrade/execution.mdx example).
        """
        now = self.now_ms()
        price = self.mark_price()
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
                slot.current_realised -= cost
                slot.seq = next(self._seq)
                order = Order(order_id=f"{now // 1000}-{self.symbol}-{ACCOUNT_UID}-{slot.side}", link_id="",
                              side=slot.side, order_type="UNKNOWN", qty=0.0, price=0.0, reduce_only=False,
                              position_idx=slot.idx, create_type="UNKNOWN")
                self._execution(order, "Funding", price, slot.size, cost, rate * slot.direction, 0.0, 0.0, False,
                                slot.seq)
                self._record("wallet", None)

    def play_bar(self) -> int:
        """Walk the forming bar's path for each position, close it, move to the next open; returns the closed bar."""
        k = self.cursor
        o, h, lo = float(self.open_[k]), float(self.high[k]), float(self.low[k])
        for slot in self.position_slots():
            adverse, favourable = (h, lo) if slot.direction < 0 else (lo, h)
            # the slot's own orders; its stop-loss order is the slot's stop above (docs: v5/order/open-order.mdx)
            mine = [order for order in self.open_orders()
                    if order.position_idx == slot.idx and order.stop_order_type == "UNKNOWN"]
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
