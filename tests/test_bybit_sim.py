"""bybit_sim with pybit's own clients: every endpoint, signatures, errors, WebSockets, fills, faults."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests
import websocket
from pybit.exceptions import InvalidRequestError

import core
import trader_utils
from bybit_sim import FaultConfig, SimExchange
from data_fetcher import load_sample

HOUR = 3_600_000
T0 = 1_577_836_800_000
KEY, SECRET = "sim-key", "sim-secret"
COSTS = {"capital": 10_000.0, "taker_fee": 0.001, "maker_fee": 0.0005, "slippage": 0.001, "funding_rate": 0.0,
         "maintenance_margin_rate": 0.005}
INSTRUMENT = {"qty_step": 0.01, "min_qty": 0.01, "tick_size": 0.01, "min_notional": 1.0, "max_leverage": 100.0}
FLAT = (100.0, 100.5, 99.5, 100.0)


def frame(bars):
    arr = np.array(bars, dtype=float)
    index = pd.DatetimeIndex(pd.to_datetime(T0 + np.arange(len(bars)) * HOUR, unit="ms", utc=True), name="time")
    return pd.DataFrame({"open": arr[:, 0], "high": arr[:, 1], "low": arr[:, 2], "close": arr[:, 3],
                         "volume": np.ones(len(bars))}, index=index).astype("float64")


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
        assert float(ticker["lastPrice"]) == btc["open"].iloc[500]
        info = http.get_instruments_info(category="linear", symbol="BTCUSDT")["result"]["list"][0]
        assert info["lotSizeFilter"]["qtyStep"] == "0.001" and info["priceFilter"]["tickSize"] == "0.1"
        funding = http.get_funding_rate_history(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert all(int(f["fundingRateTimestamp"]) % (8 * HOUR) == 0 for f in funding)
        with pytest.raises(InvalidRequestError, match="Symbol Invalid"):
            http.get_kline(category="linear", symbol="NOPEUSDT", interval="60")
        with pytest.raises(InvalidRequestError, match="Invalid period"):
            http.get_kline(category="linear", symbol="BTCUSDT", interval="7")


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
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500) as sim:
        http = env(sim)
        price = btc["open"].iloc[500]
        assert http.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]["totalWalletBalance"] == "10000"
        http.set_leverage(category="linear", symbol="BTCUSDT", buyLeverage="5", sellLeverage="5")
        with pytest.raises(InvalidRequestError) as info:
            http.set_leverage(category="linear", symbol="BTCUSDT", buyLeverage="5", sellLeverage="5")
        assert info.value.status_code == 110043
        http.switch_position_mode(category="linear", symbol="BTCUSDT", mode=3)
        with pytest.raises(InvalidRequestError, match="position idx"):
            http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.01",
                             positionIdx=0)
        with pytest.raises(InvalidRequestError) as info:
            http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.01",
                             positionIdx=2, reduceOnly=True)
        assert info.value.status_code == 110017
        with pytest.raises(InvalidRequestError) as info:
            http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="100",
                             positionIdx=1)
        assert info.value.status_code == 110007
        with pytest.raises(InvalidRequestError) as info:
            http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="abc",
                             positionIdx=1)
        assert info.value.status_code == 10001
        long_order = http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market",
                                      qty="0.1", positionIdx=1, stopLoss=str(round(price * 0.9, 1)),
                                      orderLinkId="long-1")["result"]
        http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.05",
                         positionIdx=2, orderLinkId="short-1")
        with pytest.raises(InvalidRequestError) as info:
            http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.1",
                             positionIdx=1, orderLinkId="long-1")
        assert info.value.status_code == 110072
        positions = {p["positionIdx"]: p for p in http.get_positions(category="linear",
                                                                     symbol="BTCUSDT")["result"]["list"]}
        assert positions[1]["side"] == "Buy" and positions[1]["size"] == "0.1"
        assert positions[2]["side"] == "Sell" and float(positions[2]["avgPrice"]) == pytest.approx(price * 0.9995)
        http.set_trading_stop(category="linear", symbol="BTCUSDT", positionIdx=2, stopLoss=str(round(price * 1.1)),
                              tpslMode="Full", slTriggerBy="LastPrice")
        tp = http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Limit", qty="0.1",
                              price=str(round(price * 1.5)), reduceOnly=True, positionIdx=1,
                              orderLinkId="tp-1")["result"]
        live = http.get_open_orders(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert [o["orderLinkId"] for o in live] == ["tp-1"]
        http.cancel_order(category="linear", symbol="BTCUSDT", orderId=tp["orderId"])
        with pytest.raises(InvalidRequestError) as info:
            http.cancel_order(category="linear", symbol="BTCUSDT", orderId=tp["orderId"])
        assert info.value.status_code == 110001
        http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Limit", qty="0.1",
                         price=str(round(price * 1.5)), reduceOnly=True, positionIdx=1, orderLinkId="tp-2")
        assert len(http.cancel_all_orders(category="linear", symbol="BTCUSDT")["result"]["list"]) == 1
        history = http.get_order_history(category="linear", symbol="BTCUSDT", orderLinkId="long-1")["result"]["list"]
        assert history[0]["orderStatus"] == "Filled" and history[0]["orderId"] == long_order["orderId"]
        fills = http.get_executions(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert {f["orderLinkId"] for f in fills} == {"long-1", "short-1"}
        assert http.get_api_key_information()["result"]["permissions"]["Wallet"] == []


def test_websockets_public_and_private(btc, env):
    with SimExchange(btc, "BTCUSDT", "1h", history_bars=500) as sim:
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
        http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.01")
        assert got_fill.wait(10)
        assert private[0]["data"][0]["execType"] == "Trade"
        sim.advance()
        assert got_kline.wait(10)
        bar = klines[0]["data"][0]
        assert bar["confirm"] is True and float(bar["close"]) == btc["close"].iloc[500]
        assert tickers[0]["type"] == "snapshot"
        public.exit()
        own.exit()
        raw = websocket.create_connection(f"{sim.ws_url}/v5/public/linear", timeout=5)
        raw.send(json.dumps({"op": "ping", "req_id": "p1"}))
        pong = json.loads(raw.recv())
        assert pong["ret_msg"] == "pong" and pong["req_id"] == "p1"
        raw.send(json.dumps({"op": "subscribe", "req_id": "s1", "args": ["publicTrade.BTCUSDT"]}))
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
    with SimExchange(frame(bars), "TESTUSDT", "1h", history_bars=1, costs=COSTS, instrument=INSTRUMENT) as sim:
        monkey_http = env(sim)
        entry = monkey_http.place_order(category="linear", symbol="TESTUSDT", side="Buy", orderType="Market",
                                        qty="25", stopLoss="96", orderLinkId="e")["result"]
        fill = monkey_http.get_executions(category="linear", symbol="TESTUSDT",
                                          orderLinkId="e")["result"]["list"][0]
        assert float(fill["execPrice"]) == pytest.approx(expected[0][4])  # entry at bar 1's open + slippage
        if tp:
            monkey_http.place_order(category="linear", symbol="TESTUSDT", side="Sell", orderType="Limit", qty="25",
                                    price="104.1", reduceOnly=True, orderLinkId="tp")
        sim.advance()
        sim.advance()
        fills = monkey_http.get_executions(category="linear", symbol="TESTUSDT")["result"]["list"]
        exit_fill = next(f for f in fills if f["orderId"] != entry["orderId"])
        assert float(exit_fill["execPrice"]) == pytest.approx(expected[0][5]), name
        entry_fee = float(fill["execFee"])
        assert float(exit_fill["execFee"]) == pytest.approx(expected[0][6] - entry_fee), name
        wallet = float(monkey_http.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]["totalWalletBalance"])
        assert wallet == pytest.approx(10_000.0 + expected[0][8])


def test_lockstep_ack_and_funding_at_the_open(env):
    bars = [FLAT] * 10
    costs = {**COSTS, "funding_rate": 0.0001}
    with SimExchange(frame(bars), "TESTUSDT", "1h", history_bars=7, costs=costs, instrument=INSTRUMENT) as sim:
        http = env(sim)
        http.place_order(category="linear", symbol="TESTUSDT", side="Buy", orderType="Market", qty="10")
        status = requests.get(f"{sim.rest_url}/sim/status", timeout=5).json()
        assert status["cursor"] == 7
        ack = requests.post(f"{sim.rest_url}/sim/ack", timeout=5).json()
        assert ack["closed_bar"] == 7
        # bar 8 opens at 08:00: funding 10 * 100 * 0.0001 = 0.1 is charged as the price becomes its open
        funding = http.get_executions(category="linear", symbol="TESTUSDT", execType="Funding")["result"]["list"]
        assert len(funding) == 1 and float(funding[0]["execFee"]) == pytest.approx(0.1)
        assert requests.get(f"{sim.rest_url}/sim/stats", timeout=5).json()["longest_unprotected_bars"] == 1


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
