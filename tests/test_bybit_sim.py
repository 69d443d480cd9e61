"""bybit_sim with pybit's own clients, held to Bybit's V5 docs: every endpoint, signatures, errors, WebSockets,
fills and their asynchronous delivery, windows and pages, partial fills, mark price, liquidation, faults."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests
import websocket
from pybit.exceptions import FailedRequestError, InvalidRequestError

import core
import trader_utils
from bybit_sim import WEEK_MS, Behaviour, FaultConfig, SimExchange
from data_fetcher import load_sample

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_577_836_800_000  # 2020-01-01 00:00 UTC
KEY, SECRET = "sim-key", "sim-secret"
COSTS = {"capital": 10_000.0, "taker_fee": 0.001, "maker_fee": 0.0005, "slippage": 0.001, "funding_rate": 0.0,
         "maintenance_margin_rate": 0.005}
INSTRUMENT = {"qty_step": 0.01, "min_qty": 0.01, "tick_size": 0.01, "min_notional": 1.0, "max_leverage": 100.0}
FLAT = (100.0, 100.5, 99.5, 100.0)
NOW = Behaviour.delivery("sync")  # both channels at once, for the tests of other things


def frame(bars):
    arr = np.array(bars, dtype=float)
    index = pd.DatetimeIndex(pd.to_datetime(T0 + np.arange(len(bars)) * HOUR, unit="ms", utc=True), name="time")
    return pd.DataFrame({"open": arr[:, 0], "high": arr[:, 1], "low": arr[:, 2], "close": arr[:, 3],
                         "volume": np.ones(len(bars))}, index=index).astype("float64")


def test_sim(bars, history=1, **kwargs):
    """A sim of TESTUSDT over ``bars`` with the test costs and instrument."""
    kwargs.setdefault("behaviour", NOW)
    return SimExchange(frame(bars), "TESTUSDT", "1h", history_bars=history, costs=COSTS, instrument=INSTRUMENT,
                       **kwargs)


test_sim.__test__ = False  # a helper, not a test


@pytest.fixture
def env(monkeypatch):
    def point(sim):
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        monkeypatch.setenv("BYBIT_WS_URL", sim.ws_url)
        return trader_utils.make_http(api_key=KEY, api_secret=SECRET, retry_delay=0)
    return point


@pytest.fixture(scope="module")
def btc():
    return load_sample("BTCUSDT", "1h").iloc[:600]


def order(http, side="Buy", qty="1", symbol="TESTUSDT", **kw):
    return http.place_order(category="linear", symbol=symbol, side=side, orderType=kw.pop("orderType", "Market"),
                            qty=qty, **kw)["result"]


def code_of(call, *args, **kwargs):
    with pytest.raises(InvalidRequestError) as info:
        call(*args, **kwargs)
    return info.value.status_code, info.value.message


def test_market_endpoints(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500) as sim:
        http = env(sim)
        assert int(http.get_server_time()["result"]["timeSecond"]) * 1000 == btc.index[500].value // 10**6
        klines = http.get_kline(category="linear", symbol="BTCUSDT", interval="60", limit=3)["result"]["list"]
        times = [int(k[0]) for k in klines]
        assert times == sorted(times, reverse=True) and len(klines) == 3  # newest first
        closed = klines[1]
        assert float(closed[4]) == btc["close"].iloc[499]
        window = http.get_kline(category="linear", symbol="BTCUSDT", interval="60", start=times[2],
                                end=times[1])["result"]["list"]
        assert [int(k[0]) for k in window] == times[1:]
        four_hours = http.get_kline(category="linear", symbol="BTCUSDT", interval="240", limit=2)["result"]["list"]
        assert int(four_hours[0][0]) % (4 * HOUR) == 0
        ticker = http.get_tickers(category="linear", symbol="BTCUSDT")["result"]["list"][0]
        assert float(ticker["lastPrice"]) == btc["open"].iloc[500] == float(ticker["markPrice"])
        info = http.get_instruments_info(category="linear", symbol="BTCUSDT")["result"]["list"][0]
        assert info["lotSizeFilter"]["qtyStep"] == "0.001" and info["priceFilter"]["tickSize"] == "0.1"
        assert info["status"] == "Trading"
        funding = http.get_funding_rate_history(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert all(int(f["fundingRateTimestamp"]) % (8 * HOUR) == 0 for f in funding)
        unknown = code_of(http.get_kline, category="linear", symbol="NOPEUSDT", interval="60")
        assert unknown[1].endswith("Symbol Invalid")
        assert "Invalid period" in code_of(http.get_kline, category="linear", symbol="BTCUSDT", interval="7")[1]


@pytest.mark.parametrize(("page", "expected"), [("end", range(290, 300)), ("start", range(0, 10))])
def test_a_kline_page_of_a_longer_range_holds_either_end(env, page, expected):
    """docs: v5/market/kline.mdx is silent on which ``limit`` bars of a longer start..end a page holds."""
    with test_sim([FLAT] * 400, history=350, behaviour=Behaviour(kline_page=page)) as sim:
        http = env(sim)
        rows = http.get_kline(category="linear", symbol="TESTUSDT", interval="60", start=T0,
                              end=T0 + 299 * HOUR, limit=10)["result"]["list"]
        assert [int(r[0]) for r in rows] == [T0 + k * HOUR for k in reversed(expected)]  # always newest first


def test_signatures_keys_and_timestamps(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500) as sim:
        env(sim)
        bad_secret = trader_utils.make_http(api_key=KEY, api_secret="wrong")
        with pytest.raises(InvalidRequestError, match="error sign") as info:
            bad_secret.get_positions(category="linear", symbol="BTCUSDT")
        assert info.value.status_code == 10004
        with pytest.raises(InvalidRequestError) as info:
            trader_utils.make_http(api_key="other", api_secret=SECRET).get_positions(category="linear",
                                                                                    symbol="BTCUSDT")
        assert info.value.status_code == 10003
        stale = requests.get(f"{sim.rest_url}/v5/position/list?category=linear&symbol=BTCUSDT",
                             headers={"X-BAPI-API-KEY": KEY, "X-BAPI-TIMESTAMP": str(int(time.time() * 1000) - 60_000),
                                      "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN": "x"}, timeout=5).json()
        assert stale["retCode"] == 10002 and set(stale) == {"retCode", "retMsg", "result", "retExtInfo", "time"}


def test_trading_endpoints_and_business_errors(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500, behaviour=NOW) as sim:
        http = env(sim)
        price = btc["open"].iloc[500]
        wallet = http.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
        assert wallet["totalWalletBalance"] == "10000" and wallet["coin"][0]["coin"] == "USDT"
        http.set_leverage(category="linear", symbol="BTCUSDT", buyLeverage="5", sellLeverage="5")
        assert code_of(http.set_leverage, category="linear", symbol="BTCUSDT", buyLeverage="5",
                       sellLeverage="5")[0] == 110043  # docs: v5/error.mdx: leverage not modified
        http.switch_position_mode(category="linear", symbol="BTCUSDT", mode=3)
        assert code_of(http.switch_position_mode, category="linear", symbol="BTCUSDT", mode=3)[0] == 110025
        assert "position idx" in code_of(order, http, qty="0.01", symbol="BTCUSDT", positionIdx=0)[1]
        assert code_of(order, http, "Sell", "0.01", "BTCUSDT", positionIdx=2, reduceOnly=True)[0] == 110017
        assert code_of(order, http, "Buy", "100", "BTCUSDT", positionIdx=1)[0] == 110007
        assert code_of(order, http, "Buy", "abc", "BTCUSDT", positionIdx=1)[0] == 10001
        assert code_of(order, http, "Buy", "0.01", "BTCUSDT", positionIdx=1, orderLinkId="x" * 37)[0] == 10001
        assert code_of(order, http, "Sell", "0.01", "BTCUSDT", positionIdx=1, reduceOnly=True,
                       stopLoss=str(round(price * 0.9, 1)))[0] == 10001  # reduce-only orders carry no TP/SL
        # a stop on the wrong side of the trigger price: 10001, Bybit's message
        wrong = code_of(order, http, "Buy", "0.01", "BTCUSDT", positionIdx=1, stopLoss=str(round(price * 1.1, 1)))
        assert wrong[0] == 10001 and "should lower base_price" in wrong[1]
        long_order = order(http, "Buy", "0.1", "BTCUSDT", positionIdx=1, stopLoss=str(round(price * 0.9, 1)),
                           orderLinkId="long-1")
        assert set(long_order) == {"orderId", "orderLinkId"}  # the answer says nothing of the fill
        order(http, "Sell", "0.05", "BTCUSDT", positionIdx=2, orderLinkId="short-1")
        assert code_of(order, http, "Buy", "0.1", "BTCUSDT", positionIdx=1, orderLinkId="long-1")[0] == 110072
        positions = {p["positionIdx"]: p for p in http.get_positions(category="linear",
                                                                     symbol="BTCUSDT")["result"]["list"]}
        assert positions[1]["side"] == "Buy" and positions[1]["size"] == "0.1"
        assert positions[2]["side"] == "Sell" and float(positions[2]["avgPrice"]) == pytest.approx(price * 0.9995)
        stop = str(round(price * 1.1))
        http.set_trading_stop(category="linear", symbol="BTCUSDT", positionIdx=2, stopLoss=stop, tpslMode="Full",
                              slTriggerBy="LastPrice")
        assert code_of(http.set_trading_stop, category="linear", symbol="BTCUSDT", positionIdx=2, stopLoss=stop,
                       tpslMode="Full")[0] == 34040  # docs: v5/error.mdx: not modified
        assert "should greater base_price" in code_of(
            http.set_trading_stop, category="linear", symbol="BTCUSDT", positionIdx=2,
            stopLoss=str(round(price * 0.9)), tpslMode="Full")[1]
        tp = order(http, "Sell", "0.1", "BTCUSDT", orderType="Limit", price=str(round(price * 1.5)), reduceOnly=True,
                   positionIdx=1, orderLinkId="tp-1")
        live = http.get_open_orders(category="linear", symbol="BTCUSDT")["result"]["list"]
        # the positions' stop-losses rest as conditional orders of the exchange (no orderLinkId)
        assert sorted((o["orderLinkId"], o["stopOrderType"]) for o in live) == [("", "StopLoss"), ("", "StopLoss"),
                                                                                ("tp-1", "UNKNOWN")]
        http.cancel_order(category="linear", symbol="BTCUSDT", orderId=tp["orderId"])
        assert code_of(http.cancel_order, category="linear", symbol="BTCUSDT", orderId=tp["orderId"])[0] == 110001
        order(http, "Sell", "0.1", "BTCUSDT", orderType="Limit", price=str(round(price * 1.5)), reduceOnly=True,
              positionIdx=1, orderLinkId="tp-2")
        assert len(http.cancel_all_orders(category="linear", symbol="BTCUSDT")["result"]["list"]) == 1
        history = http.get_order_history(category="linear", symbol="BTCUSDT", orderLinkId="long-1")["result"]["list"]
        assert history[0]["orderStatus"] == "Filled" and history[0]["orderId"] == long_order["orderId"]
        assert history[0]["timeInForce"] == "IOC"  # docs: v5/order/create-order.mdx: market orders are IOC
        fills = http.get_executions(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert {f["orderLinkId"] for f in fills} == {"long-1", "short-1"}
        assert all("positionIdx" not in f for f in fills)  # docs: v5/order/execution.mdx
        # docs: v5/error.mdx: 110024 with a position open, 110028 with open orders
        assert code_of(http.switch_position_mode, category="linear", symbol="BTCUSDT", mode=0)[0] == 110024
        order(http, "Sell", "0.1", "BTCUSDT", positionIdx=1, reduceOnly=True)
        order(http, "Buy", "0.05", "BTCUSDT", positionIdx=2, reduceOnly=True)
        order(http, "Buy", "0.01", "BTCUSDT", orderType="Limit", price=str(round(price * 0.5)), positionIdx=1)
        assert code_of(http.switch_position_mode, category="linear", symbol="BTCUSDT", mode=0)[0] == 110028
        assert http.get_api_key_information()["result"]["permissions"]["Wallet"] == []


def test_writes_need_the_keys_permissions(btc, env):
    """docs: v5/error.mdx 10005 (permission denied): orders need ContractTrade Order, stops Position."""
    no_order = {"ContractTrade": ["Position"]}
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500, api_permissions=no_order) as sim:
        http = env(sim)
        assert code_of(order, http, qty="0.01", symbol="BTCUSDT")[0] == 10005
        http.get_positions(category="linear", symbol="BTCUSDT")  # reading is fine
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500, api_read_only=True) as sim:
        http = env(sim)
        assert code_of(http.set_leverage, category="linear", symbol="BTCUSDT", buyLeverage="3",
                       sellLeverage="3")[0] == 10005


def test_websockets_public_and_private(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500, behaviour=Behaviour(mark_offset=0.01)) as sim:
        http = env(sim)
        klines, tickers, private = [], [], []
        got_kline = threading.Event()
        got_fill = threading.Event()
        public = trader_utils.make_ws("linear")
        public.kline_stream(interval=60, symbol="BTCUSDT", callback=lambda m: (klines.append(m), got_kline.set()))
        public.ticker_stream(symbol="BTCUSDT", callback=tickers.append)
        own = trader_utils.make_ws("private", api_key=KEY, api_secret=SECRET)
        own.execution_stream(callback=lambda m: (private.append(m), got_fill.set()))
        deadline = time.monotonic() + 10
        # every subscription must be live before the order and the bar (auth alone is not enough)
        while not any("execution" in topics for topics in sim.private.values()) \
                or not any("kline.60.BTCUSDT" in topics for topics in sim.public.values()) or not tickers:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        order(http, qty="0.01", symbol="BTCUSDT")
        assert got_fill.wait(10)
        row = private[0]["data"][0]
        assert row["execType"] == "Trade" and "positionIdx" not in row  # docs: v5/websocket/private/execution.mdx
        sim.advance()
        assert got_kline.wait(10)
        bar = klines[0]["data"][0]
        assert bar["confirm"] is True and float(bar["close"]) == btc["close"].iloc[500]
        assert tickers[0]["type"] == "snapshot"
        last, mark = float(tickers[0]["data"]["lastPrice"]), float(tickers[0]["data"]["markPrice"])
        assert mark == pytest.approx(last * 1.01)  # the test's mark offset
        public.exit()
        own.exit()
        raw = websocket.create_connection(f"{sim.ws_url}/v5/public/linear", timeout=5)
        raw.send(json.dumps({"op": "ping", "req_id": "p1"}))
        pong = json.loads(raw.recv())
        assert pong["ret_msg"] == "pong" and pong["req_id"] == "p1"
        raw.send(json.dumps({"op": "subscribe", "req_id": "s1", "args": ["kline.60.BTCUSDT"]}))
        assert json.loads(raw.recv())["req_id"] == "s1"
        raw.close()
        bad = websocket.create_connection(f"{sim.ws_url}/v5/private", timeout=5)
        bad.send(json.dumps({"op": "auth", "args": [KEY, int(time.time() * 1000) + 10_000, "nope"]}))
        assert json.loads(bad.recv())["success"] is False
        bad.close()


def backtest_rows(bars, stop_mult=2.0, tp_mult=0.0):
    """The backtester on the same candles: entry decided at bar 0's close (25 units, stop 4 away)."""
    p = core.params_vector({"risk_per_trade": 0.01, "leverage": 10, "atr_stop_multiplier": stop_mult,
                            "trail_atr_multiplier": 50, "trail_early_activation_atr_multiplier": 50,
                            "aggressive_trail_atr_multiplier": 50, "tp_atr_multiplier": tp_mult,
                            "taker_fee": COSTS["taker_fee"], "maker_fee": COSTS["maker_fee"],
                            "slippage": COSTS["slippage"], "maintenance_margin_rate": 0.005,
                            "qty_step": 0.01, "min_qty": 0.01, "min_notional": 1.0, "tick_size": 0.01,
                            "capital": 10_000.0, "bar_ms": HOUR})
    arr = np.array(bars, dtype=float)
    n = len(bars)
    state = core.new_state(10_000.0)
    signal = np.zeros(n, dtype=np.int8)
    signal[0] = 1
    ts = T0 + np.arange(n, dtype=np.int64) * HOUR
    rows = core.run_loop(ts, arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy(), np.full(n, 2.0),
                         signal, *core.funding_schedule(ts, HOUR), p, state, np.empty(n), np.empty(n), False)
    return rows


@pytest.mark.parametrize(("name", "bars", "tp"), [
    ("gap-through stop", [FLAT, FLAT, (93, 94, 92, 93), FLAT], 0.0),
    ("intrabar stop", [FLAT, FLAT, (100, 101, 95, 97), FLAT], 0.0),
    ("limit take-profit", [FLAT, FLAT, (100, 105, 97, 104), FLAT], 2.0),
    ("stop before take-profit", [FLAT, FLAT, (100, 105, 95, 100), FLAT], 2.0),
    ("take-profit crossed at the open before a later stop", [FLAT, FLAT, (106, 107, 95, 100), FLAT], 2.0),
])
def test_replay_fills_equal_the_backtester(env, name, bars, tp):
    expected = backtest_rows(bars, tp_mult=tp)
    assert len(expected) == 1
    with test_sim(bars) as sim:
        http = env(sim)
        entry = order(http, qty="25", stopLoss="96", orderLinkId="e")
        fill = http.get_executions(category="linear", symbol="TESTUSDT", orderLinkId="e")["result"]["list"][0]
        assert float(fill["execPrice"]) == pytest.approx(expected[0][4])  # entry at bar 1's open + slippage
        if tp:
            order(http, "Sell", "25", orderType="Limit", price="104.1", reduceOnly=True, orderLinkId="tp")
        sim.advance()
        sim.advance()
        fills = http.get_executions(category="linear", symbol="TESTUSDT")["result"]["list"]
        exit_fill = next(f for f in fills if f["orderId"] != entry["orderId"])
        assert float(exit_fill["execPrice"]) == pytest.approx(expected[0][5]), name
        entry_fee = float(fill["execFee"])
        assert float(exit_fill["execFee"]) == pytest.approx(expected[0][6] - entry_fee), name
        wallet = float(http.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]["totalWalletBalance"])
        assert wallet == pytest.approx(10_000.0 + expected[0][8])


def test_hedge_positions_walk_their_own_pessimistic_paths(env):
    """Long and short open together: each meets its adverse extreme first, as each would alone in a backtest.

    Bar 2 spans 95..105: the long's stop 96 and the short's stop 104 are both hit, before either take-profit
    (the long's sell limit at 104.5, the short's buy limit at 95.5).
    """
    with test_sim([FLAT, FLAT, (100, 105, 95, 100), FLAT]) as sim:
        http = env(sim)
        http.switch_position_mode(category="linear", symbol="TESTUSDT", mode=3)
        order(http, "Buy", "10", positionIdx=1, stopLoss="96")
        order(http, "Sell", "10", positionIdx=2, stopLoss="104")
        order(http, "Sell", "10", orderType="Limit", price="104.5", reduceOnly=True, positionIdx=1, orderLinkId="a")
        order(http, "Buy", "10", orderType="Limit", price="95.5", reduceOnly=True, positionIdx=2, orderLinkId="b")
        sim.advance()
        sim.advance()
        fills = http.get_executions(category="linear", symbol="TESTUSDT", execType="Trade")["result"]["list"]
    stops = {f["side"]: float(f["execPrice"]) for f in fills if f["stopOrderType"] == "StopLoss"}
    assert stops == {"Sell": pytest.approx(96 * 0.999), "Buy": pytest.approx(104 * 1.001)}  # stop less slippage
    assert not [f for f in fills if f["orderLinkId"] in ("a", "b")]


def test_a_port_in_use_is_raised_at_once():
    """It was a traceback in the server's thread and a 30 s wait for a start that could not come."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sim = test_sim([FLAT] * 3, port=taken.getsockname()[1])
        with pytest.raises(OSError, match="address already in use"):
            sim.__enter__()
    assert not sim._thread.is_alive()


def test_lockstep_ack_and_funding_at_the_open(env):
    bars = [FLAT] * 10
    costs = {**COSTS, "funding_rate": 0.0001}
    with SimExchange(frame(bars), "TESTUSDT", "1h", history_bars=7, costs=costs, instrument=INSTRUMENT,
                     behaviour=NOW) as sim:
        http = env(sim)
        http.switch_position_mode(category="linear", symbol="TESTUSDT", mode=3)
        order(http, "Buy", "10", positionIdx=1)
        order(http, "Sell", "4", positionIdx=2)
        status = requests.get(f"{sim.rest_url}/sim/status", timeout=5).json()
        assert status["cursor"] == 7
        ack = requests.post(f"{sim.rest_url}/sim/ack", timeout=5).json()
        assert ack["closed_bar"] == 7
        # bar 8 opens at 08:00: the long pays 10 * 100 * 0.0001 = 0.1, the short receives 4 * 100 * 0.0001 = 0.04
        funding = http.get_executions(category="linear", symbol="TESTUSDT", execType="Funding")["result"]["list"]
        by_side = {f["side"]: f for f in funding}
        assert set(by_side) == {"Buy", "Sell"}  # side: the position's own side (docs: v5/account/transaction-log.mdx)
        assert float(by_side["Buy"]["execFee"]) == pytest.approx(0.1)
        assert float(by_side["Sell"]["execFee"]) == pytest.approx(-0.04)
        assert by_side["Sell"]["feeRate"] == "-0.0001" and by_side["Buy"]["feeRate"] == "0.0001"
        assert all(f["orderType"] == "UNKNOWN" and f["orderLinkId"] == "" for f in funding)  # docs: v5/enum.mdx
        assert requests.get(f"{sim.rest_url}/sim/stats", timeout=5).json()["longest_unprotected_bars"] == 1


def test_execution_list_windows_pages_and_order(env):
    """docs: v5/order/execution.mdx: neither bound: the last 7 days; only startTime: [start, start + 7 days];
    a window over 7 days is an error; newest first; limit [1, 100] (default 50) and cursor pages."""
    costs = {**COSTS, "funding_rate": 0.0001}
    with SimExchange(frame([FLAT] * 500), "TESTUSDT", "1h", history_bars=1, costs=costs, instrument=INSTRUMENT,
                     behaviour=NOW) as sim:
        http = env(sim)
        order(http, qty="1")
        for _ in range(20 * 24):  # 20 days held: a funding execution every 8 hours
            sim.advance()
        now = sim.engine.now_ms()
        times = sorted(e["execTime"] for e in sim.engine.executions)

        def listed(**params):
            rows, cursor = [], ""
            while True:
                page = http.get_executions(category="linear", symbol="TESTUSDT", limit=7, **params,
                                           **({"cursor": cursor} if cursor else {}))["result"]
                assert len(page["list"]) <= 7
                rows += page["list"]
                cursor = page["nextPageCursor"]
                if not cursor:
                    return [int(r["execTime"]) for r in rows]

        last_week = listed()
        assert last_week == sorted(last_week, reverse=True)  # newest first, across pages
        assert last_week == [t for t in reversed(times) if now - WEEK_MS <= t <= now]
        start = T0 + 2 * DAY
        assert listed(startTime=start) == [t for t in reversed(times) if start <= t <= start + WEEK_MS]
        assert listed(startTime=start, endTime=start + DAY) == [t for t in reversed(times) if start <= t <= start + DAY]
        assert listed(endTime=start + DAY) == [t for t in reversed(times) if start + DAY - WEEK_MS <= t <= start + DAY]
        assert code_of(http.get_executions, category="linear", symbol="TESTUSDT", startTime=start,
                       endTime=start + WEEK_MS + 1)[0] == 10001
        default = http.get_executions(category="linear", symbol="TESTUSDT")["result"]["list"]
        assert len(default) == 21  # 7 days x 3 fundings, under the default limit of 50
        for bad in (0, 101):
            assert code_of(http.get_executions, category="linear", symbol="TESTUSDT", limit=bad)[0] == 10001


def test_order_history_window_and_cancelled_orders(env):
    """docs: v5/order/order-list.mdx: a 7-day window; fully cancelled (and rejected, deactivated) orders only
    within the last 24 hours; orders with fills also later."""
    with test_sim([FLAT] * 300) as sim:
        http = env(sim)
        resting = order(http, orderType="Limit", price="50", orderLinkId="far")
        http.cancel_order(category="linear", symbol="TESTUSDT", orderId=resting["orderId"])
        order(http, qty="1", orderLinkId="filled")

        def history(**params):
            rows = http.get_order_history(category="linear", symbol="TESTUSDT", **params)["result"]["list"]
            return [r["orderLinkId"] for r in rows]

        assert history() == ["filled", "far"]  # newest first
        for _ in range(25):
            sim.advance()
        assert history() == ["filled"]  # the cancelled one is gone after 24 hours
        for _ in range(7 * 24):
            sim.advance()
        assert history() == []  # beyond the default 7 days
        assert history(startTime=T0, endTime=T0 + DAY) == ["filled"]
        assert code_of(http.get_order_history, category="linear", symbol="TESTUSDT", startTime=T0,
                       endTime=T0 + 8 * DAY)[0] == 10001


def test_position_created_time_is_the_first_ever_and_open_time_this_ones(env):
    """docs: v5/position/position.mdx: createdTime is the first time a position was created on the symbol,
    openTime the current position's open (0 when flat)."""
    with test_sim([FLAT] * 20) as sim:
        http = env(sim)

        def position():
            return http.get_positions(category="linear", symbol="TESTUSDT")["result"]["list"][0]

        order(http, qty="1")
        first = sim.engine.now_ms()
        order(http, "Sell", "1", reduceOnly=True)
        assert position()["openTime"] == 0 and position()["createdTime"] == str(first)
        for _ in range(5):
            sim.advance()
        order(http, qty="2")
        assert position()["openTime"] == first + 5 * HOUR and position()["createdTime"] == str(first)


@pytest.mark.parametrize("mode", ["ws_first", "rest_first", "rest_late"])
def test_fill_delivery_modes(env, mode):
    """Placing an order returns before its execution is visible; each channel gets it when the test says."""
    with test_sim([FLAT] * 10, behaviour=Behaviour.delivery(mode)) as sim:
        http = env(sim)
        streamed = []
        own = trader_utils.make_ws("private", api_key=KEY, api_secret=SECRET)
        own.execution_stream(callback=lambda m: streamed.extend(m["data"]))
        deadline = time.monotonic() + 10
        while not any("execution" in topics for topics in sim.private.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)

        def rest():
            return http.get_executions(category="linear", symbol="TESTUSDT", orderLinkId="e")["result"]["list"]

        def stream_after(seconds):
            until = time.monotonic() + seconds
            while not streamed and time.monotonic() < until:
                time.sleep(0.005)
            return len(streamed)

        order(http, qty="1", orderLinkId="e")
        if mode == "ws_first":  # the stream at once; execution/list from its second request on
            assert stream_after(10) == 1 and rest() == [] and len(rest()) == 1
        elif mode == "rest_first":  # execution/list at once; the stream with the next bar close
            assert len(rest()) == 1 and stream_after(0.3) == 0
            sim.advance()
            assert stream_after(10) == 1
        else:  # rest_late: the stream at once; execution/list a whole bar late
            assert stream_after(10) == 1 and rest() == [] and rest() == []
            sim.advance()
            assert len(rest()) == 1
        own.exit()


def test_market_orders_are_ioc_and_may_fill_partly(env):
    """Half of a 1.0 market order fills, in two executions of 0.25; the rest is cancelled (IOC)."""
    behaviour = Behaviour.delivery("sync", partial_rate=1.0, partial_share=0.5, split_fills=2)
    with test_sim([FLAT] * 5, behaviour=behaviour) as sim:
        http = env(sim)
        order(http, qty="1", orderLinkId="half", stopLoss="95")
        row = http.get_open_orders(category="linear", symbol="TESTUSDT", orderLinkId="half")["result"]["list"][0]
        assert (row["orderStatus"], row["cumExecQty"], row["timeInForce"]) == ("Cancelled", "0.5", "IOC")
        fills = http.get_executions(category="linear", symbol="TESTUSDT", orderLinkId="half")["result"]["list"]
        assert [f["execQty"] for f in fills] == ["0.25", "0.25"]
        position = http.get_positions(category="linear", symbol="TESTUSDT")["result"]["list"][0]
        assert position["size"] == "0.5" and position["stopLoss"] == "95"  # protected from its first fill


@pytest.mark.parametrize(("trigger_by", "low", "stopped_at"), [
    ("LastPrice", 99.4, 99.5 * 0.999),  # the last price reaches 99.5: stop-market less 0.1 % slippage
    ("MarkPrice", 99.4, None),  # the mark (1 % above the last) never falls to 99.5: 99.4 x 1.01 = 100.394
    ("MarkPrice", 98.0, 99.5 / 1.01 * 0.999),  # the mark reaches 99.5 when the last is 99.5 / 1.01 = 98.515
])
def test_stops_trigger_by_their_price_type(env, trigger_by, low, stopped_at):
    behaviour = Behaviour.delivery("sync", mark_offset=0.01)
    with test_sim([FLAT, (100, 100.5, 99.8, 100), (100, 100.2, low, 100), FLAT], behaviour=behaviour) as sim:
        http = env(sim)
        order(http, qty="1", stopLoss="99.5", slTriggerBy=trigger_by)
        position = http.get_positions(category="linear", symbol="TESTUSDT")["result"]["list"][0]
        assert float(position["markPrice"]) == pytest.approx(100 * 1.01)
        sim.advance()
        sim.advance()
        stops = [f for f in http.get_executions(category="linear", symbol="TESTUSDT")["result"]["list"]
                 if f["stopOrderType"] == "StopLoss"]
    assert [float(f["execPrice"]) for f in stops] == ([] if stopped_at is None else [pytest.approx(stopped_at)])


def test_liquidation_is_reported_as_a_bust_trade(env):
    """docs: v5/enum.mdx execType BustTrade. Leverage 10, mmr 0.5 %: a long entered at 100.1 is liquidated when the
    price reaches core.liquidation_price(100.1, +1, 10, 0.005) = 100.1 x (1 - 0.095) = 90.5905 (the bar opens
    above it and dips to 85), and taken over at the bankruptcy price 100.1 x (1 - 1/10) = 90.09, without a fee."""
    with test_sim([FLAT, FLAT, (100, 100.5, 85, 88), FLAT]) as sim:
        http = env(sim)
        order(http, qty="10")
        sim.advance()
        sim.advance()
        rows = http.get_executions(category="linear", symbol="TESTUSDT")["result"]["list"]
        bust = [r for r in rows if r["execType"] == "BustTrade"]
        assert len(bust) == 1 and bust[0]["side"] == "Sell" and bust[0]["closedSize"] == "10"
        assert float(bust[0]["execPrice"]) == pytest.approx(90.09) == core.bankruptcy_price(100.1, 1.0, 10.0)
        assert float(bust[0]["execFee"]) == 0.0
        taken = http.get_order_history(category="linear", symbol="TESTUSDT", orderId=bust[0]["orderId"])
        assert taken["result"]["list"][0]["positionIdx"] == 0  # the order record carries the position


def test_wallet_balance_in_the_documented_shape(env):
    """docs: v5/account/wallet-balance.mdx: equity = wallet balance + unrealised PnL (at the mark price)."""
    with test_sim([FLAT] * 5, balance=2_500.0, behaviour=Behaviour.delivery("sync", mark_offset=0.01)) as sim:
        http = env(sim)
        order(http, qty="10")  # 10 at 100.1, fee 10 x 100.1 x 0.001 = 1.001
        account = http.get_wallet_balance(accountType="UNIFIED", coin="USDT")["result"]["list"][0]
        coin = account["coin"][0]
        assert account["accountType"] == "UNIFIED" and coin["coin"] == "USDT"
        assert float(coin["walletBalance"]) == pytest.approx(2_500 - 1.001)
        assert float(coin["unrealisedPnl"]) == pytest.approx((101.0 - 100.1) * 10)  # mark 100 x 1.01
        assert float(coin["equity"]) == pytest.approx(2_500 - 1.001 + 9.0)
        assert http.get_wallet_balance(accountType="UNIFIED", coin="BTC")["result"]["list"][0]["coin"] == []


@pytest.mark.parametrize(("kind", "status"), [("http_429", 429), ("http_403", 403), ("server_timeout", 10000),
                                              ("permission_denied", 10005), ("rate_limit", 10006)])
def test_each_documented_failure_can_be_injected(btc, env, kind, status):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500,
                     faults=FaultConfig(rate=1.0, kinds=(kind,), max_faults=1)) as sim:
        http = env(sim)
        error = FailedRequestError if status < 1000 else InvalidRequestError
        with pytest.raises(error) as info:
            http.get_positions(category="linear", symbol="BTCUSDT")
        assert info.value.status_code == status
        http.get_positions(category="linear", symbol="BTCUSDT")  # max_faults reached: the next one answers
        assert sim.stats()["faults"] == {kind: 1}


def test_faults_are_injected_and_counted(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500, faults=FaultConfig(rate=1.0, timeout_seconds=0.2),
                     seed=3) as sim:
        http = env(sim)
        http.max_retries = 1
        outcomes = set()
        for _ in range(12):
            try:
                http.get_tickers(category="linear", symbol="BTCUSDT")
                outcomes.add("ok")
            except Exception as exc:  # noqa: BLE001 - every kind of failure is what this test collects
                outcomes.add(type(exc).__name__)
        stats = sim.stats()
        assert sum(stats["faults"].values()) == 12
        assert "ok" in outcomes or len(stats["faults"]) >= 3
        assert {"FailedRequestError", "InvalidRequestError"} & outcomes


def test_a_reduce_only_order_that_closed_the_position_does_not_rest_for_the_next_one(env):
    """A final take-profit sized for the whole entry (10) that fills the last 6 of a position (4 taken by a partial)
    is spent: its leftover 4 is cancelled with the position (docs: v5/enum.mdx orderStatus "Cancelled: in
    derivatives, orders with this status may have an executed qty"). Before, it kept resting and sold the next
    position at its first bar's open."""
    bars = [FLAT, FLAT, (100, 106, 99.5, 105), FLAT, (100, 107, 99.5, 106), FLAT]
    with test_sim(bars) as sim:
        http = env(sim)
        order(http, qty="10")  # long 10 at 100
        order(http, side="Sell", qty="4", orderType="Limit", price="102", reduceOnly=True, orderLinkId="tp-part")
        order(http, side="Sell", qty="10", orderType="Limit", price="104", reduceOnly=True, orderLinkId="tp-final")
        sim.advance()
        sim.advance()  # the bar to 106: 4 at 102, then the last 6 at 104
        final = http.get_open_orders(category="linear", symbol="TESTUSDT", orderLinkId="tp-final")["result"]["list"][0]
        assert (final["orderStatus"], final["cumExecQty"]) == ("Cancelled", "6")
        order(http, qty="10")  # a new long at 100: nothing of the old targets may sell it
        sim.advance()
        sim.advance()  # the bar to 107 crosses 104 again
        positions = http.get_positions(category="linear", symbol="TESTUSDT")["result"]["list"]
        assert positions[0]["size"] == "10"
