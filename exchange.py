"""exchange: the Bybit adapter. Every pybit request of the trader and the downloader goes through it.

The trader decides and this module speaks Bybit (V5, linear USDT perpetuals): small typed methods
(an entry with its stop, a stop move, a take-profit, a close, fills since T, the positions, the
wallet equity, the instrument, a page of klines) over pybit's HTTP session, with the retries of
trader_utils.api_retry_wrapper. What Bybit really does, as its V5 docs say, is handled here:

* Executions carry no positionIdx (docs: v5/order/execution.mdx). A fill is matched to the position
  it belongs to by our own orderLinkId (the trader's ids start with the side's name) or orderId;
  for orders the exchange creates itself (the position's stop-loss, a liquidation BustTrade, an ADL
  AdlTrade) by its side and closedSize, and a Funding row by its side, which is the position's
  (docs: v5/account/transaction-log.mdx: for side=Buy the funding feeRate is the market rate, for
  side=Sell its negative).
* Executions are read in windows of at most 7 days with startTime and endTime, every page by
  ``cursor`` (docs: v5/order/execution.mdx: only startTime gives [start, start + 7 days], neither
  the last 7 days, a longer window is an error).
* A fill is asynchronous: it may reach the private stream first, execution/list first, or
  execution/list much later. The stream's rows are kept (:meth:`Bybit.on_stream`) and merged with
  REST by execId; :meth:`Bybit.await_order_fills` waits, bounded, until an order's fills add up
  to its executed quantity (docs: v5/order/open-order.mdx: order/realtime is real-time, and a
  query by orderLinkId also finds closed orders).
* A position's open time is ``openTime`` (docs: v5/position/position.mdx; ``createdTime`` is the first
  time any position was created on the symbol), or else the fill that opened it. Its ``seq`` is the
  cross sequence that associates fills with position updates (docs: the same page and
  v5/order/execution.mdx): the executions up to it are in the size the list reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pybit.exceptions import InvalidRequestError

from trader_utils import ExchangeUnavailable, RetryPolicy, UnknownSymbol, api_retry_wrapper, redact

WEEK_MS = 7 * 86_400_000
WINDOW_SLACK_MS = 60_000  # the last execution window ends this far after the server's now
OPEN_STATUSES = ("New", "PartiallyFilled", "Untriggered")  # docs: v5/enum.mdx orderStatus
OWN_PREFIXES = {"long-": 1.0, "short-": -1.0}  # the trader's orderLinkIds start with the side's name
ORDER_GONE = 110001  # docs: v5/error.mdx: Order does not exist (filled or cancelled meanwhile)
NOT_MODIFIED = 34040  # docs: v5/error.mdx: the TP/SL already has this value
LEVERAGE_UNCHANGED = 110043
MODE_UNCHANGED = 110025
MODE_BLOCKED = {110024: "an open position", 110028: "open orders"}


class ExchangeRefused(ValueError):
    """Bybit refused a request with a business retCode (bad key, permission, parameters...): one clear line."""

    def __init__(self, what: str, code: int, message: str) -> None:
        super().__init__(f"Bybit refused {what}: {redact(str(message))} (retCode {code})")
        self.what = what
        self.code = code
        self.message = message


class FillsPending(ExchangeUnavailable):
    """Fills the exchange has made are not visible yet (stream and execution/list) after the bounded wait."""


@dataclass(frozen=True)
class Instrument:
    """What an order must respect (docs: v5/market/instrument.mdx)."""

    symbol: str
    status: str
    qty_step: float
    min_qty: float
    min_notional: float
    tick_size: float
    max_leverage: float

    def spec(self) -> dict[str, float]:
        """The instrument as config.instrument_for / core's params name it."""
        return {"qty_step": self.qty_step, "min_qty": self.min_qty, "min_notional": self.min_notional,
                "tick_size": self.tick_size, "max_leverage": self.max_leverage}


@dataclass(frozen=True)
class Fill:
    """One execution, with the position it belongs to (+1 the long one, -1 the short one)."""

    exec_id: str
    order_id: str
    link_id: str
    side: str
    price: float
    qty: float
    fee: float
    exec_type: str
    closed_size: float
    time_ms: int
    seq: int
    stop_order_type: str
    position_direction: float
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def closing(self) -> bool:
        """True when it reduced a position (docs: closedSize, the closed position size)."""
        return self.closed_size > 0

    @property
    def funding(self) -> bool:
        """A funding payment (docs: v5/enum.mdx execType Funding): execFee > 0 is paid."""
        return self.exec_type == "Funding"


@dataclass(frozen=True)
class PositionInfo:
    """One row of position/list."""

    idx: int
    side: str
    size: float
    avg_price: float
    stop_loss: float
    leverage: float
    open_time_ms: int
    created_ms: int
    mark_price: float
    seq: int = 0  # the cross sequence of its last update: executions up to it are in this size (docs: position.mdx)

    @property
    def direction(self) -> float:
        """+1 long, -1 short, 0 flat."""
        return 0.0 if self.size == 0 else (1.0 if self.side == "Buy" else -1.0)


@dataclass(frozen=True)
class OrderInfo:
    """One order of order/realtime or order/history."""

    order_id: str
    link_id: str
    side: str
    status: str
    qty: float
    filled: float
    price: float
    position_idx: int
    reduce_only: bool
    stop_order_type: str

    @property
    def final(self) -> bool:
        """Done: nothing more will fill (docs: v5/enum.mdx closed statuses)."""
        return self.status not in OPEN_STATUSES


@dataclass(frozen=True)
class Wallet:
    """The UNIFIED account's USDT coin (docs: v5/account/wallet-balance.mdx)."""

    equity: float
    wallet_balance: float
    available: float
    unrealised: float = 0.0  # unrealisedPnl: of every open USDT perpetual position

    @property
    def realised(self) -> float:
        """The equity less the unrealised PnL: the money the core's wallet stands for (it marks its positions
        itself); the walletBalance (less spotBorrow, plus option value) of docs: v5/account/wallet-balance.mdx."""
        return self.equity - self.unrealised


def _number(value: Any) -> float:
    """Bybit's string numbers, "" read as 0."""
    return float(value) if value not in (None, "") else 0.0


def _order(row: dict[str, Any]) -> OrderInfo:
    return OrderInfo(order_id=str(row.get("orderId", "")), link_id=str(row.get("orderLinkId", "")),
                     side=str(row.get("side", "")), status=str(row.get("orderStatus", "")),
                     qty=_number(row.get("qty")), filled=_number(row.get("cumExecQty")),
                     price=_number(row.get("price")), position_idx=int(row.get("positionIdx") or 0),
                     reduce_only=bool(row.get("reduceOnly")), stop_order_type=str(row.get("stopOrderType", "")))


class Bybit:
    """The adapter for one linear symbol over a pybit HTTP session (``http``)."""

    def __init__(self, http: Any, symbol: str = "", retry: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.symbol = symbol
        self.retry = retry
        self.clock = clock
        self._known: dict[str, Fill] = {}  # fills seen (stream or REST by order) and not booked yet, by execId
        self._own_orders: dict[str, float] = {}  # orderId -> position direction, for orders placed here
        self._arrived = threading.Condition()

    # --- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, method: Callable[..., Any], lookup: Callable[[], Any] | None = None,
              ok: tuple[int, ...] = (), **kwargs: Any) -> dict[str, Any]:
        """One request with retries; a business retCode in ``ok`` is an answer, any other is ExchangeRefused."""
        try:
            return api_retry_wrapper(lambda: method(**kwargs), what, self.retry, lookup)
        except InvalidRequestError as exc:
            if exc.status_code in ok:
                return {"retCode": exc.status_code, "retMsg": exc.message, "result": {}}
            raise ExchangeRefused(what, exc.status_code, exc.message) from None

    def _pages(self, what: str, method: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
        """Every row of a paged list, following nextPageCursor to the last page."""
        rows: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(10_000):
            answer = self._call(what, method, **kwargs, **({"cursor": cursor} if cursor else {}))["result"]
            rows += answer.get("list") or []
            cursor = answer.get("nextPageCursor") or ""
            if not cursor:
                return rows
        raise ExchangeUnavailable(f"{what}: more than 10,000 pages")

    def direction_of(self, row: dict[str, Any]) -> float:
        """The position an execution belongs to: +1 long, -1 short (never from a positionIdx: it has none)."""
        link = str(row.get("orderLinkId") or "")
        for prefix, direction in OWN_PREFIXES.items():
            if link.startswith(prefix):
                return direction
        if row.get("orderId") in self._own_orders:
            return self._own_orders[row["orderId"]]
        fill_direction = 1.0 if row.get("side") == "Buy" else -1.0
        if row.get("execType") == "Funding":
            return fill_direction  # the position's own side
        # the exchange's own orders (stop-loss, BustTrade, AdlTrade) and orders by hand: a fill that
        # closed quantity belongs to the position on the other side of it
        return -fill_direction if _number(row.get("closedSize")) > 0 else fill_direction

    def _fill(self, row: dict[str, Any]) -> Fill:
        return Fill(exec_id=str(row["execId"]), order_id=str(row.get("orderId", "")),
                    link_id=str(row.get("orderLinkId") or ""), side=str(row.get("side", "")),
                    price=_number(row.get("execPrice")), qty=_number(row.get("execQty")),
                    fee=_number(row.get("execFee")), exec_type=str(row.get("execType", "")),
                    closed_size=_number(row.get("closedSize")), time_ms=int(row.get("execTime") or 0),
                    seq=int(row.get("seq") or 0), stop_order_type=str(row.get("stopOrderType") or ""),
                    position_direction=self.direction_of(row), raw=row)

    # --- market -----------------------------------------------------------------------------
    def server_time_ms(self) -> int:
        """Bybit's clock, ms (docs: v5/market/time.mdx timeNano)."""
        result = self._call("market/time", self.http.get_server_time)["result"]
        return int(result["timeNano"]) // 1_000_000 if result.get("timeNano") else int(result["timeSecond"]) * 1000

    def server_time_and_skew_ms(self) -> tuple[int, float]:
        """Bybit's clock (the answer's ``time``, docs: v5/guide.mdx) and how far this machine's clock is from it."""
        before = time.time()
        answer = self._call("market/time", self.http.get_server_time)
        after = time.time()
        server = int(answer.get("time") or int(answer["result"]["timeSecond"]) * 1000)
        return server, (before + after) / 2 * 1000 - server

    def instrument(self) -> Instrument:
        """The symbol's instrument info (docs: v5/market/instrument.mdx)."""
        rows = self._call(f"instruments-info {self.symbol}", self.http.get_instruments_info, category="linear",
                          symbol=self.symbol)["result"].get("list") or []
        if not rows:  # Bybit answers an unknown symbol with an empty list
            raise UnknownSymbol(f"Bybit lists no linear instrument {self.symbol}: check --symbol or the params' "
                                "symbol (a linear USDT perpetual such as BTCUSDT)")
        info = rows[0]
        lots, prices, leverage = info["lotSizeFilter"], info["priceFilter"], info["leverageFilter"]
        return Instrument(symbol=self.symbol, status=str(info.get("status", "")), qty_step=_number(lots["qtyStep"]),
                          min_qty=_number(lots["minOrderQty"]), min_notional=_number(lots.get("minNotionalValue")),
                          tick_size=_number(prices["tickSize"]), max_leverage=_number(leverage["maxLeverage"]))

    def klines(self, interval: str, start_ms: int, end_ms: int, limit: int = 1000) -> list[list[str]]:
        """One page of market/kline for [start, end] (docs: v5/market/kline.mdx: newest first)."""
        return self._call(f"market/kline {self.symbol} {interval}", self.http.get_kline, category="linear",
                          symbol=self.symbol, interval=interval, start=start_ms, end=end_ms,
                          limit=limit)["result"].get("list") or []

    def funding_rates(self, start_ms: int, end_ms: int) -> list[tuple[int, float]]:
        """One page of funding history, newest first (docs: v5/market/history-fund-rate.mdx)."""
        rows = self._call(f"market/funding/history {self.symbol}", self.http.get_funding_rate_history,
                          category="linear", symbol=self.symbol, startTime=start_ms, endTime=end_ms,
                          limit=200)["result"].get("list") or []
        return [(int(r["fundingRateTimestamp"]), float(r["fundingRate"])) for r in rows]

    def prices(self) -> tuple[float, float]:
        """The last and the mark price (docs: v5/market/tickers.mdx)."""
        row = self._call("tickers", self.http.get_tickers, category="linear", symbol=self.symbol)["result"]["list"][0]
        return _number(row["lastPrice"]), _number(row["markPrice"])

    def last_price(self) -> float:
        """The last traded price."""
        return self.prices()[0]

    # --- account ----------------------------------------------------------------------------
    def api_key_info(self) -> dict[str, Any]:
        """The key's permissions, IP binding and expiry (docs: v5/user/apikey-info.mdx)."""
        return self._call("user/query-api", self.http.get_api_key_information)["result"] or {}

    def margin_mode(self) -> str:
        """The account's margin mode: ISOLATED_MARGIN, REGULAR_MARGIN (cross) or PORTFOLIO_MARGIN (docs:
        v5/account/account-info.mdx)."""
        return str((self._call("account/info", self.http.get_account_info)["result"] or {}).get("marginMode", ""))

    def wallet(self) -> Wallet:
        """The UNIFIED account's USDT equity, balance and what is free for new margin."""
        rows = self._call("wallet-balance", self.http.get_wallet_balance, accountType="UNIFIED",
                          coin="USDT")["result"].get("list") or []
        coins = [c for row in rows for c in row.get("coin") or () if c.get("coin") == "USDT"]
        if not coins:
            return Wallet(0.0, 0.0, 0.0)
        coin, account = coins[0], rows[0]
        free = _number(account.get("totalAvailableBalance")) if account.get("totalAvailableBalance") not in (None, "") \
            else _number(coin.get("equity")) - _number(coin.get("totalPositionIM")) - _number(coin.get("totalOrderIM"))
        return Wallet(equity=_number(coin.get("equity")), wallet_balance=_number(coin.get("walletBalance")),
                      available=free, unrealised=_number(coin.get("unrealisedPnl")))

    def positions(self) -> list[PositionInfo]:
        """Every slot of the symbol, open or not (docs: v5/position/position.mdx: a symbol returns all)."""
        rows = self._pages("positions", self.http.get_positions, category="linear", symbol=self.symbol, limit=200)
        return [PositionInfo(idx=int(r.get("positionIdx") or 0), side=str(r.get("side") or ""),
                             size=_number(r.get("size")), avg_price=_number(r.get("avgPrice")),
                             stop_loss=_number(r.get("stopLoss")), leverage=_number(r.get("leverage")),
                             open_time_ms=int(_number(r.get("openTime"))),
                             created_ms=int(_number(r.get("createdTime"))),
                             mark_price=_number(r.get("markPrice")), seq=int(_number(r.get("seq")))) for r in rows]

    def hedge_mode(self) -> bool:
        """True when the symbol is in hedge mode (its positions are positionIdx 1 and 2, docs: v5/enum.mdx)."""
        return any(p.idx in (1, 2) for p in self.positions())

    def set_position_mode(self, hedge: bool) -> None:
        """Switch to hedge (both sides) or one-way mode when needed (docs: v5/position/position-mode.mdx)."""
        if self.hedge_mode() == hedge:
            return
        answer = self._call("position mode", self.http.switch_position_mode, ok=(MODE_UNCHANGED, *MODE_BLOCKED),
                            category="linear", symbol=self.symbol, mode=3 if hedge else 0)
        if answer["retCode"] in MODE_BLOCKED:
            raise ExchangeRefused("position mode", answer["retCode"],
                                  f"{self.symbol} cannot switch to {'hedge' if hedge else 'one-way'} mode while it has "
                                  f"{MODE_BLOCKED[answer['retCode']]}: close them, or run "
                                  f"{'both sides' if not hedge else 'one side'} as the account is set")

    def set_leverage(self, leverage: float) -> None:
        """The leverage of both sides (110043, already set, is fine; docs: v5/position/leverage.mdx)."""
        text = f"{leverage:g}"
        self._call("leverage", self.http.set_leverage, ok=(LEVERAGE_UNCHANGED,), category="linear",
                   symbol=self.symbol, buyLeverage=text, sellLeverage=text)

    # --- orders -----------------------------------------------------------------------------
    def find_order(self, link_id: str) -> OrderInfo | None:
        """The order with this orderLinkId, open or done (realtime by orderLinkId also finds the recent closed
        ones, docs: v5/order/open-order.mdx; older ones are in order/history), or None."""
        for what, method in (("order/realtime", self.http.get_open_orders),
                             ("order/history", self.http.get_order_history)):
            rows = self._call(f"{what} {link_id}", method, category="linear", symbol=self.symbol,
                              orderLinkId=link_id)["result"].get("list") or []
            if rows:
                return _order(rows[0])
        return None

    def open_orders(self) -> list[OrderInfo]:
        """Every resting order of the symbol (a position's stop-loss order included), all pages."""
        return [_order(r) for r in self._pages("open orders", self.http.get_open_orders, category="linear",
                                                symbol=self.symbol, limit=50)]

    def _place(self, what: str, link_id: str, direction: float, **request: Any) -> str:
        """order/create, never twice for one orderLinkId; returns the orderId (docs: v5/order/create-order.mdx)."""
        def lookup() -> dict[str, Any] | None:
            found = self.find_order(link_id)
            return None if found is None else {"orderId": found.order_id, "orderLinkId": link_id}

        answer = self._call(what, self.http.place_order, lookup=lookup, category="linear", symbol=self.symbol,
                            orderLinkId=link_id, **request)
        order_id = str((answer.get("result") or {}).get("orderId") or "")
        if order_id:
            self._own_orders[order_id] = direction
        return order_id

    def place_entry(self, link_id: str, side: str, qty: str, stop: str, position_idx: int, trigger_by: str,
                    direction: float) -> str:
        """A market entry (IOC) with the position's stop-loss attached (Full mode), as one request."""
        return self._place(f"{link_id} entry", link_id, direction, side=side, orderType="Market", qty=qty,
                           positionIdx=position_idx, stopLoss=stop, slTriggerBy=trigger_by, tpslMode="Full")

    def place_add(self, link_id: str, side: str, qty: str, stop: str, position_idx: int, trigger_by: str,
                  direction: float) -> str:
        """A market order adding to the position, with the stop the position holds attached (Full mode): had the
        position been stopped out since the add was decided, the add opens a position that has its stop."""
        return self._place(f"{link_id} add", link_id, direction, side=side, orderType="Market", qty=qty,
                           positionIdx=position_idx, stopLoss=stop, slTriggerBy=trigger_by, tpslMode="Full")

    def place_close(self, link_id: str, side: str, qty: str, position_idx: int, direction: float) -> str:
        """A reduce-only market order."""
        return self._place(f"{link_id} close", link_id, direction, side=side, orderType="Market", qty=qty,
                           positionIdx=position_idx, reduceOnly=True)

    def place_target(self, link_id: str, side: str, qty: str, price: str, position_idx: int,
                     direction: float) -> str:
        """A reduce-only limit order resting at a take-profit level."""
        return self._place(f"{link_id} target", link_id, direction, side=side, orderType="Limit", qty=qty,
                           price=price, positionIdx=position_idx, reduceOnly=True)

    def cancel(self, link_id: str = "", order_id: str = "") -> bool:
        """Cancel a resting order; False when it no longer rests (110001: filled or cancelled meanwhile)."""
        key = {"orderId": order_id} if order_id else {"orderLinkId": link_id}
        answer = self._call(f"cancel {link_id or order_id}", self.http.cancel_order, ok=(ORDER_GONE,),
                            category="linear", symbol=self.symbol, **key)
        return answer["retCode"] == 0

    def move_stop(self, position_idx: int, stop: str, trigger_by: str) -> None:
        """The position's stop-loss (docs: v5/position/trading-stop.mdx; 34040, already that value, is fine)."""
        self._call("trading-stop", self.http.set_trading_stop, ok=(NOT_MODIFIED,), category="linear",
                   symbol=self.symbol, positionIdx=position_idx, stopLoss=stop, tpslMode="Full",
                   slTriggerBy=trigger_by)

    # --- fills ------------------------------------------------------------------------------
    def on_stream(self, message: dict[str, Any]) -> None:
        """A private ``execution`` message (docs: v5/websocket/private/execution.mdx): its rows are kept."""
        rows = [r for r in message.get("data") or () if r.get("symbol") == self.symbol
                and r.get("category", "linear") == "linear" and r.get("execId")]
        with self._arrived:
            for row in rows:
                self._known[str(row["execId"])] = self._fill(row)
            self._arrived.notify_all()

    def wait_for_stream(self, seconds: float) -> None:
        """Wait (at most ``seconds``) for the next private execution message."""
        with self._arrived:
            self._arrived.wait(seconds)

    def execution_rows(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """execution/list's rows of one window of at most 7 days, every page, as Bybit sends them."""
        return self._pages("executions", self.http.get_executions, category="linear", symbol=self.symbol,
                           startTime=start_ms, endTime=end_ms, limit=100)

    def fills_since(self, since_ms: int, until_ms: int | None = None) -> list[Fill]:
        """Every execution from ``since_ms`` to ``until_ms`` (default: Bybit's now), REST and stream merged by
        execId, oldest first (a few after ``until_ms`` may come along).

        execution/list is read in windows of at most 7 days with both bounds, each to its last page.
        """
        end_all = (self.server_time_ms() if until_ms is None else until_ms) + WINDOW_SLACK_MS
        rows: list[dict[str, Any]] = []
        start = since_ms
        while start <= end_all:
            end = min(start + WEEK_MS, end_all)
            rows += self.execution_rows(start, end)
            start = end + 1
        with self._arrived:
            known = [f for f in self._known.values() if f.time_ms >= since_ms]
        merged = {f.exec_id: f for f in known}
        merged.update((f.exec_id, f) for f in (self._fill(r) for r in rows))
        return sorted(merged.values(), key=lambda f: (f.time_ms, f.seq))

    def forget(self, exec_ids: list[str]) -> None:
        """Drop booked fills from the buffer of fills seen."""
        with self._arrived:
            for exec_id in exec_ids:
                self._known.pop(exec_id, None)

    def order_fills(self, link_id: str, rest: bool = True) -> list[Fill]:
        """The fills of one order seen so far: the stream's and (``rest``) execution/list's by orderLinkId;
        the ones read from REST are kept with the stream's until booked."""
        if rest:
            rows = self._call(f"executions {link_id}", self.http.get_executions, category="linear",
                              symbol=self.symbol, orderLinkId=link_id, limit=100)["result"].get("list") or []
            with self._arrived:
                for fill in (self._fill(r) for r in rows):
                    self._known.setdefault(fill.exec_id, fill)
        with self._arrived:
            fills = [f for f in self._known.values() if f.link_id == link_id]
        return sorted(fills, key=lambda f: (f.time_ms, f.seq))

    def await_order_fills(self, link_id: str, timeout: float) -> tuple[OrderInfo | None, list[Fill]]:
        """Wait until the order is done and its fills add up to its executed quantity (bounded by ``timeout``).

        The order's status and cumExecQty come from order/realtime (real-time); its fills from the
        private stream or execution/list, whichever has them first (REST is asked only when the
        stream has not brought them all). Raises FillsPending when they are still incomplete after
        ``timeout`` seconds.
        """
        deadline = self.clock() + timeout
        pause = 0.01
        while True:
            order = self.find_order(link_id)
            done = order is not None and order.final
            fills = self.order_fills(link_id, rest=False)
            if done and sum(f.qty for f in fills) < order.filled - 1e-12:
                fills = self.order_fills(link_id)
            if done and sum(f.qty for f in fills) >= order.filled - 1e-12:
                return order, fills
            if self.clock() >= deadline:
                seen = sum(f.qty for f in fills)
                state = "unknown" if order is None else f"{order.status}, {order.filled:g} executed"
                raise FillsPending(f"order {link_id}: {state}, fills of {seen:g} visible after {timeout:g} s")
            self.wait_for_stream(pause)
            pause = min(pause * 2, 0.5)

    def position_open_time(self, position: PositionInfo, lookback_weeks: int = 4) -> int | None:
        """When the current position opened: ``openTime`` (docs: v5/position/position.mdx), else from the
        fills: walking back from the newest, the fill after which the size was last zero. None when
        neither tells (older than ``lookback_weeks``)."""
        if position.open_time_ms > 0:
            return position.open_time_ms
        now = self.server_time_ms()
        fills = [f for f in self.fills_since(now - lookback_weeks * WEEK_MS)
                 if f.position_direction == position.direction and not f.funding]
        size = position.size
        for fill in reversed(fills):
            size += fill.closed_size if fill.closing else -fill.qty
            if size <= 1e-12:
                return fill.time_ms
        return None
