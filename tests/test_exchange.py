"""The Bybit adapter (exchange.py) on bybit_sim: fills matched to sides without positionIdx, 7-day windows
followed to the last page, bounded waits for asynchronous fills, the open time of a position, mode
switches, refusals in one line, and the demo environment's hosts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import trader_utils
from bybit_sim import Behaviour, SimExchange
from exchange import WEEK_MS, Bybit, ExchangeRefused, FillsPending, PositionInfo

HOUR = 3_600_000
T0 = 1_577_836_800_000
COSTS = {"capital": 10_000.0, "taker_fee": 0.001, "maker_fee": 0.0005, "slippage": 0.001, "funding_rate": 0.0001,
         "maintenance_margin_rate": 0.005}
INSTRUMENT = {"qty_step": 0.01, "min_qty": 0.01, "tick_size": 0.01, "min_notional": 1.0, "max_leverage": 100.0}


def flat(n):
    index = pd.DatetimeIndex(pd.to_datetime(T0 + np.arange(n) * HOUR, unit="ms", utc=True), name="time")
    return pd.DataFrame({"open": 100.0, "high": 100.5, "low": 99.5, "close": 100.0, "volume": 1.0}, index=index)


@pytest.fixture
def adapter(monkeypatch):
    """An adapter on a sim of ``bars`` flat hourly bars (``behaviour`` as given)."""
    opened = []

    def make(bars=50, behaviour=None, **kwargs):
        sim = SimExchange(flat(bars), "TESTUSDT", "1h", history_bars=1, costs=COSTS, instrument=INSTRUMENT,
                          behaviour=behaviour or Behaviour.delivery("sync"), **kwargs).__enter__()
        opened.append(sim)
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        http = trader_utils.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret)
        return sim, Bybit(http, "TESTUSDT", trader_utils.RetryPolicy(attempts=2, base_seconds=0.01))

    yield make
    for sim in opened:
        sim.__exit__(None, None, None)


def test_fills_are_matched_to_their_side_without_a_position_idx(adapter):
    """Hedge mode: our orders by their orderLinkId; the exchange's stop-loss (no orderLinkId) and a close by
    hand by side and closedSize; funding by its side (the position's)."""
    sim, ex = adapter()
    ex.set_position_mode(True)
    ex.place_entry("long-1-open", "Buy", "1", "90", 1, "LastPrice", 1.0)
    ex.place_entry("short-1-open", "Sell", "1", "110", 2, "LastPrice", -1.0)
    http = ex.http
    http.place_order(category="linear", symbol="TESTUSDT", side="Sell", orderType="Market", qty="0.5",
                     positionIdx=2)  # a short added by hand: opening, no orderLinkId
    http.place_order(category="linear", symbol="TESTUSDT", side="Sell", orderType="Market", qty="0.4",
                     positionIdx=1, reduceOnly=True)  # part of the long closed by hand
    for _ in range(8):
        sim.advance()  # funding at 08:00
    sim.call(lambda: sim.engine.set_trading_stop(1, 99.8, None, None))  # the long's stop just below the price
    fills = ex.fills_since(T0)
    assert all("positionIdx" not in f.raw for f in fills)
    got = {(f.link_id or f.exec_type, f.side, f.closing): f.position_direction for f in fills}
    assert got == {("long-1-open", "Buy", False): 1.0, ("short-1-open", "Sell", False): -1.0,
                   ("Trade", "Sell", False): -1.0, ("Trade", "Sell", True): 1.0,
                   ("Funding", "Buy", False): 1.0, ("Funding", "Sell", False): -1.0}
    sim.advance()  # the bar's low 99.5 reaches the long's stop at 99.8
    stop = [f for f in ex.fills_since(T0) if f.stop_order_type == "StopLoss"]
    assert len(stop) == 1 and stop[0].link_id == "" and stop[0].position_direction == 1.0


def test_fills_are_read_in_windows_of_seven_days_to_the_last_page(adapter):
    """20 days of funding (every 8 hours) and one trade: 61 executions; read from the start with windows of at
    most 7 days, each to its last page (limit 100 per page). Only a startTime would have given the first 7 days."""
    sim, ex = adapter(bars=500)
    ex.place_entry("long-1-open", "Buy", "1", "90", 0, "LastPrice", 1.0)
    for _ in range(480):
        sim.advance()
    asked = []
    get_executions = ex.http.get_executions

    def recorded(**kwargs):
        asked.append(kwargs)
        return get_executions(**kwargs)

    ex.http.get_executions = recorded
    fills = ex.fills_since(T0)
    assert len(fills) == 61 == len(sim.engine.executions)
    assert [f.time_ms for f in fills] == sorted(f.time_ms for f in fills)  # oldest first for booking
    windows = {(a["startTime"], a["endTime"]) for a in asked}
    assert len(windows) == 3 and all(0 < end - start <= WEEK_MS for start, end in windows)
    only_start = get_executions(category="linear", symbol="TESTUSDT", startTime=T0, limit=100)["result"]["list"]
    assert len(only_start) == 22  # the trade and 21 fundings of the first 7 days: what the old reader booked


def test_pages_are_followed_by_cursor(adapter):
    sim, ex = adapter(bars=500)
    ex.place_entry("long-1-open", "Buy", "1", "90", 0, "LastPrice", 1.0)
    for _ in range(480):
        sim.advance()
    rows = ex._pages("executions", ex.http.get_executions, category="linear", symbol="TESTUSDT", startTime=T0,
                     endTime=T0 + WEEK_MS, limit=5)
    assert len(rows) == 22 == len({r["execId"] for r in rows})  # 5 pages of 5 and one of 2, none repeated


def test_an_orders_fills_are_awaited_then_reported_missing(adapter):
    """An order's fills: from the stream when it has them, else execution/list; FillsPending when neither
    shows them within the bound (here: no stream, execution/list a bar late)."""
    sim, ex = adapter(behaviour=Behaviour(ws_fills="never", rest_fills="lag", rest_lag=3))
    ex.place_entry("long-1-open", "Buy", "1", "90", 0, "LastPrice", 1.0)
    order, fills = ex.await_order_fills("long-1-open", timeout=5.0)
    assert order.final and order.filled == 1.0 and [f.qty for f in fills] == [1.0]
    sim.behaviour = Behaviour(ws_fills="never", rest_fills="bar")
    ex.place_close("long-2-close5", "Sell", "1", 0, 1.0)
    with pytest.raises(FillsPending, match="Filled, 1 executed, fills of 0 visible"):
        ex.await_order_fills("long-2-close5", timeout=0.2)
    sim.advance()
    assert [f.qty for f in ex.await_order_fills("long-2-close5", timeout=1.0)[1]] == [1.0]


def test_the_open_time_comes_from_open_time_or_else_the_opening_fill(adapter):
    """openTime when Bybit gives it; without it (0), the fill after which the size was last zero: bought 1 at
    bar 2 and closed, bought 1 at bar 4, 2 more at bar 5, sold 1 at bar 6: the 2 held opened at bar 4."""
    sim, ex = adapter()
    plan = {2: ("Buy", "1", False), 3: ("Sell", "1", True), 4: ("Buy", "1", False), 5: ("Buy", "2", False),
            6: ("Sell", "1", True)}
    for bar in range(1, 8):
        if bar in plan:
            side, qty, reduce = plan[bar]
            ex.http.place_order(category="linear", symbol="TESTUSDT", side=side, orderType="Market", qty=qty,
                                reduceOnly=reduce)
        sim.advance()
    position = ex.positions()[0]
    assert position.size == 2.0 and position.open_time_ms == T0 + 4 * HOUR  # openTime: bar 4's open
    assert position.created_ms == T0 + 2 * HOUR  # createdTime: the first position ever
    without = PositionInfo(**{**position.__dict__, "open_time_ms": 0})
    assert ex.position_open_time(without) == T0 + 4 * HOUR


def test_mode_switches_and_refusals_in_one_line(adapter):
    sim, ex = adapter()
    ex.set_position_mode(False)  # already one-way: nothing sent
    assert sim.requests.get("position/switch-mode", 0) == 0
    ex.place_entry("long-1-open", "Buy", "1", "90", 0, "LastPrice", 1.0)
    with pytest.raises(ExchangeRefused, match=r"cannot switch to hedge mode while it has an open position.*110024"):
        ex.set_position_mode(True)
    ex.set_leverage(10)  # unchanged (110043) is fine
    ex.move_stop(0, "90", "LastPrice")  # unchanged (34040) is fine
    assert not ex.cancel(link_id="nope")  # 110001: gone
    with pytest.raises(ExchangeRefused) as info:
        ex.place_entry("long-2-open", "Buy", "1000000", "90", 0, "LastPrice", 1.0)
    assert str(info.value) == "Bybit refused long-2-open entry: Available balance is insufficient (retCode 110007)"


def test_demo_uses_the_demo_rest_host_and_mainnets_public_stream(monkeypatch):
    """docs: v5/demo.mdx: REST api-demo.bybit.com; the demo stream serves private topics only, public data
    is mainnet's."""
    monkeypatch.delenv("BYBIT_REST_URL", raising=False)
    assert trader_utils.make_http(env="demo").endpoint == "https://api-demo.bybit.com"
    assert trader_utils.make_http(env="testnet").endpoint == "https://api-testnet.bybit.com"
    assert trader_utils.ws_hosts("demo", "linear") == {"testnet": False, "demo": False}  # stream.bybit.com
    assert trader_utils.ws_hosts("demo", "private") == {"testnet": False, "demo": True}  # stream-demo.bybit.com
    assert trader_utils.ws_hosts("testnet", "linear") == {"testnet": True, "demo": False}
