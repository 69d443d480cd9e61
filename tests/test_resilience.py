"""Trader resilience on bybit_sim with the real pybit clients: each retry class, idempotent orders,
crash between an entry and its record, fills that are late or only on one channel, partial fills,
exchange takeovers, reconciliation repairs, rescue, staleness and the tick guard."""

from __future__ import annotations

import argparse
import queue
import random
import time

import numpy as np
import pybit._helpers
import pytest
from pybit.exceptions import InvalidRequestError

import backtester
import core
import run_live
import trader as trader_module
import trader_utils
from bybit_sim import Behaviour, FaultConfig, SimExchange
from data_fetcher import load_sample
from exchange import FillsPending
from live_helpers import HISTORY, events, prod_params, start_trader
from market_feed import MarketFeed
from trader import SideConfig
from trader_store import Store
from trader_utils import ExchangeUnavailable, RetryPolicy, api_retry_wrapper

LONG = [SideConfig("long", prod_params("LONG"))]


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:HISTORY + 700]


def recording_policy(attempts=5):
    """A policy whose backoff is long (10 s base) but only recorded, so a short wait stands out."""
    sleeps: list[float] = []
    return RetryPolicy(attempts=attempts, base_seconds=10.0, max_seconds=60.0, sleep=sleeps.append,
                       rng=random.Random(3), ip_ban_seconds=600.0), sleeps


def session_for(sim, monkeypatch, timeout=5.0):
    monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
    return trader_utils.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, timeout=timeout)


# --- retry classes ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["http_500", "http_502", "http_429", "http_403", "busy", "server_timeout",
                                  "rate_limit", "timeout"])
def test_each_transient_failure_is_retried_until_the_answer(candles, monkeypatch, kind):
    faults = FaultConfig(rate=1.0, kinds=(kind,), max_faults=2, timeout_seconds=0.6)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, faults=faults) as sim:
        session = session_for(sim, monkeypatch, timeout=0.25)
        policy, sleeps = recording_policy()
        answer = api_retry_wrapper(lambda: session.get_tickers(category="linear", symbol="BTCUSDT"), "tickers", policy)
        assert float(answer["result"]["list"][0]["lastPrice"]) == sim.engine.last_price()
        assert sim.stats()["faults"] == {kind: 2}
        assert sim.stats()["requests"]["market/tickers"] == 3
    assert len(sleeps) == 2
    if kind == "rate_limit":
        assert max(sleeps) < 0.2  # waited for the reset time the exchange sent (50 ms), not the 5-10 s backoff
    elif kind == "http_403":
        assert sleeps == [600.0, 600.0]  # the IP ban: 10 minutes, docs: v5/rate-limit/rate-limit.mdx
    else:
        assert 5.0 <= sleeps[0] <= 10.0 and 10.0 <= sleeps[1] <= 20.0  # exponential, jittered 50-100 %


def test_a_403_with_no_ban_pause_gives_up_at_once(candles, monkeypatch):
    """A preflight (ip_ban_seconds 0) reports the ban in one line instead of waiting 10 minutes."""
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY,
                     faults=FaultConfig(rate=1.0, kinds=("http_403",))) as sim:
        session = session_for(sim, monkeypatch)
        policy = RetryPolicy(attempts=5, sleep=lambda s: None, ip_ban_seconds=0.0)
        with pytest.raises(ExchangeUnavailable, match="HTTP 403: the IP is banned"):
            api_retry_wrapper(lambda: session.get_positions(category="linear", symbol="BTCUSDT"), "positions", policy)
        assert sim.stats()["requests"]["position/list"] == 1


def test_business_errors_are_raised_at_once(candles, monkeypatch):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        session = session_for(sim, monkeypatch)
        policy, sleeps = recording_policy()
        with pytest.raises(InvalidRequestError) as info:
            api_retry_wrapper(lambda: session.place_order(category="linear", symbol="BTCUSDT", side="Buy",
                                                          orderType="Market", qty="100000"), "entry", policy)
        assert info.value.status_code == 110007  # insufficient balance: the caller handles it
        assert sim.stats()["requests"]["order/create"] == 1 and sleeps == []


def test_spent_retries_raise_exchange_unavailable(candles, monkeypatch, caplog):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY,
                     faults=FaultConfig(rate=1.0, kinds=("http_502",))) as sim:
        session = session_for(sim, monkeypatch)
        policy, sleeps = recording_policy(attempts=3)
        with caplog.at_level("WARNING", "grtr.api"), \
                pytest.raises(ExchangeUnavailable, match="after 3 attempts.*HTTP 502"):
            api_retry_wrapper(lambda: session.get_positions(category="linear", symbol="BTCUSDT"), "positions", policy)
        assert sim.stats()["requests"]["position/list"] == 3 and len(sleeps) == 2
    # each attempt counted out of the 3 made (it said "retry 3/2" of the last one), the last one waits for nothing
    lines = [r.getMessage() for r in caplog.records if r.name == "grtr.api"]
    assert [line.split("), ", 1)[1] for line in lines] == [f"attempt 1/3; next in {sleeps[0]:.2f} s",
                                                           f"attempt 2/3; next in {sleeps[1]:.2f} s",
                                                           "attempt 3/3; no attempt left"]
    assert all(line.startswith("positions failed (HTTP 502") for line in lines), lines


def test_a_clock_behind_the_exchange_is_resynced_on_10002(candles, monkeypatch):
    monkeypatch.setattr(trader_utils, "_clock_offset_ms", -20_000)  # this machine's clock 20 s behind
    monkeypatch.setattr(pybit._helpers, "generate_timestamp", trader_utils._synced_timestamp)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        session = session_for(sim, monkeypatch)
        policy, sleeps = recording_policy()
        answer = api_retry_wrapper(lambda: session.get_positions(category="linear", symbol="BTCUSDT"), "positions",
                                   policy)
    assert answer["retCode"] == 0 and len(sleeps) == 1
    assert abs(trader_utils._clock_offset_ms) < 1_000


def test_an_order_whose_answer_timed_out_is_looked_up_not_sent_again(candles, monkeypatch):
    faults = FaultConfig(rate=1.0, kinds=("timeout",), max_faults=1, timeout_seconds=0.8, acted_timeout_share=1.0)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, faults=faults) as sim:
        session = session_for(sim, monkeypatch, timeout=0.25)
        policy, _ = recording_policy()
        order = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01",
                 "orderLinkId": "long-1-open"}

        def lookup():
            for method in (session.get_open_orders, session.get_order_history):
                rows = method(category="linear", symbol="BTCUSDT", orderLinkId="long-1-open")["result"]["list"]
                if rows:
                    return rows[0]
            return None

        answer = api_retry_wrapper(lambda: session.place_order(**order), "entry", policy, lookup)
        assert answer["recovered"] and answer["result"]["orderLinkId"] == "long-1-open"
        assert sim.stats()["requests"]["order/create"] == 1  # the timeout was not followed by a second send
        again = api_retry_wrapper(lambda: session.place_order(**order), "entry", policy, lookup)
        assert again["recovered"]  # 110072, duplicate orderLinkId: it went through before
        assert [o.link_id for o in sim.engine.orders.values()] == ["long-1-open"]
        assert sim.engine.positions[0].size == 0.01


# --- crash between an entry and its record ---------------------------------------------------------
def backtest_rows(candles, bars):
    """The backtest's trade rows over the replay (the last may be end_of_data: still open for the trader)."""
    data = backtester.MarketData(candles.iloc[:HISTORY + bars], "BTCUSDT", "1h")
    return backtester.simulate(data, prod_params("LONG"), start=HISTORY).rows


def test_killed_between_the_entrys_acceptance_and_its_record(candles, tmp_path, monkeypatch):
    with SimExchange(candles.iloc[:HISTORY + 300], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        first, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        record_order = first.store.record_order

        def dies_after_sending_the_entry(link_id, *args):
            if link_id.endswith("-open"):
                raise SystemExit("killed")  # after place_order answered, before anything was committed
            record_order(link_id, *args)

        first.store.record_order = dies_after_sending_the_entry
        with pytest.raises(SystemExit):
            run_live.drive_lockstep(first, sim, bars)
        feed.close()
        assert sim.engine.positions[0].size > 0 and first.sides[0].state[core.S_DIR] == 0  # rolled back
        first.store.close()
        second, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        assert second.sides[0].state[core.S_DIR] == 1  # the bar was handled again and the fill booked
        run_live.drive_lockstep(second, sim, bars)
        feed.close()
        entries = [o for o in sim.engine.orders.values() if o.link_id.endswith("-open")]
    paper = Store(tmp_path / "state.sqlite").trade_rows()
    rows = backtest_rows(candles, 300)
    assert run_live.trade_differences(paper, rows[rows[:, 9] != core.R_END], 0.1) == []
    assert len(entries) == len({row[0] for row in rows})  # one entry order per trade: none sent twice


# --- reconciliation -------------------------------------------------------------------------------
def drive_until_in_position(trader, sim, bars):
    for _ in range(300):
        if trader.sides[0].state[core.S_DIR]:
            return
        run_live.drive_lockstep(trader, sim, bars, max_bars=1)
    raise AssertionError("no entry within 300 bars")


@pytest.fixture
def in_position(candles, tmp_path, monkeypatch):
    """A long trader holding a position on the sim (its feed closed: bars are driven by hand)."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.5)
        drive_until_in_position(trader, sim, bars)
        yield trader, sim, feed, bars
        feed.close()


def test_reconcile_sets_a_missing_stop_at_once(in_position, tmp_path):
    trader, sim, _, _ = in_position
    trader.http.set_trading_stop(category="linear", symbol="BTCUSDT", positionIdx=0, stopLoss="0", tpslMode="Full")
    assert sim.engine.positions[0].stop_loss == 0
    trader.reconcile()
    assert sim.engine.positions[0].stop_loss == pytest.approx(trader.sides[0].state[core.S_STOP])
    restored = [e for e in events(tmp_path) if e["event"] == "stop_restored"]
    assert restored and restored[-1]["exchange_stop"] is None


def test_a_size_no_execution_explains_is_awaited_never_adopted(in_position, tmp_path):
    """The state holds 0.5 more than the exchange and no execution says why: the side awaits the execution; its size
    is not overwritten (a late fill booked after that would count twice), nothing is booked or sent."""
    trader, sim, _, _ = in_position
    state = trader.sides[0].state
    state[core.S_QTY] += 0.5
    booked = state[core.S_QTY]
    orders, trades = sim.stats()["orders"], len(trader.store.trade_rows())
    trader.reconcile()
    assert state[core.S_QTY] == booked and state[core.S_QTY] == sim.engine.positions[0].size + 0.5
    assert "long" in trader.awaiting and len(trader.store.trade_rows()) == trades
    assert sim.stats()["orders"] == orders
    assert sim.engine.positions[0].stop_loss > 0  # what the exchange still holds keeps its stop
    assert not any(e["event"] == "desync" for e in events(tmp_path))  # within the bound: waiting is normal


def test_a_position_gone_without_an_execution_is_reported_loudly_never_closed_at_a_guess(in_position, tmp_path,
                                                                                         caplog):
    """The position is gone on the exchange and no execution ever shows: the state is not closed at the last price
    (the guess this replaced); two bars of exchange time later it is an error line and a desync event, once per
    such period, and the side still awaits its execution."""
    trader, sim, _, _ = in_position
    state = trader.sides[0].state
    trades = len(trader.store.trade_rows())
    sim.engine.positions[0].size = 0.0  # gone on the exchange, and no execution tells how
    trader.reconcile()
    assert state[core.S_DIR] == 1 and "long" in trader.awaiting
    sim.advance()
    trader.reconcile()  # one bar later: still within the bound
    assert not any(e["event"] == "desync" for e in events(tmp_path))
    sim.advance()
    trader.reconcile()  # two bars after the position went: overdue
    trader.reconcile()  # reported once per period, not at every pass
    loud = [e for e in events(tmp_path) if e["event"] == "desync"]
    assert len(loud) == 1 and "no execution explains it" in loud[0]["detail"] and "still awaits" in loud[0]["detail"]
    assert any(r.levelname == "ERROR" and "no execution explains it" in r.getMessage() for r in caplog.records)
    assert state[core.S_DIR] == 1 and len(trader.store.trade_rows()) == trades  # no price invented
    assert Store(tmp_path / "state.sqlite").get("awaiting")["long"]["reported_ms"] == sim.engine.now_ms()


def test_rescue_of_a_position_opened_by_hand(candles, tmp_path, monkeypatch):
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        trader.http.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.05")
        entry = sim.engine.positions[0].avg_price
        trader.reconcile()
        state, p = trader.sides[0].state, trader.sides[0].p
        atr = backtester.MarketData(trader.candles, "BTCUSDT", "1h").indicator("atr", LONG[0].params["atr_period"])
        assert state[core.S_DIR] == 1 and state[core.S_QTY] == 0.05 and state[core.S_INITIAL_QTY] == 0.05
        assert state[core.S_ENTRY] == entry and state[core.S_ATR_ENTRY] == atr[-1]
        assert state[core.S_STOP] == core.round_price(entry - atr[-1] * p[core.P_STOP_ATR], p[core.P_TICK])
        assert sim.engine.positions[0].stop_loss == pytest.approx(state[core.S_STOP])  # protected at once
        run_live.drive_lockstep(trader, sim, bars)
        feed.close()
    first = Store(tmp_path / "state.sqlite").trade_rows()[0]
    assert first[4] == entry and core.EXIT_REASONS[int(first[9])] != "end_of_data"  # the rules managed it to an exit
    assert any(e["event"] == "rescue" for e in events(tmp_path))


def test_rescue_of_a_position_left_by_a_lost_database(in_position, tmp_path, monkeypatch):
    trader, sim, _, _ = in_position
    held = trader.sides[0].state.copy()
    fresh = tmp_path / "new-folder"
    other, feed, _ = start_trader(sim, monkeypatch, fresh, LONG)  # knows nothing: reconcile at start rescues
    feed.close()
    state = other.sides[0].state
    assert state[core.S_DIR] == 1 and state[core.S_QTY] == held[core.S_QTY]
    assert state[core.S_ENTRY] == pytest.approx(held[core.S_ENTRY])
    assert state[core.S_STOP] >= held[core.S_STOP] - 1e-9  # the stop on the exchange is never loosened
    assert [e["event"] for e in events(fresh)].count("rescue") == 1


# --- market feed and tick guard --------------------------------------------------------------------
def test_a_stale_price_is_never_handed_out_and_a_silent_feed_reconnects(candles, monkeypatch):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        monkeypatch.setenv("BYBIT_WS_URL", sim.ws_url)
        now = [0.0]
        feed = MarketFeed("BTCUSDT", "1h", stale_seconds=5.0, clock=lambda: now[0])
        deadline = time.monotonic() + 10
        while np.isnan(feed.last_price):  # the ticker snapshot sent on subscription
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert feed.price(max_age_seconds=10) == sim.engine.last_price()
        now[0] += 11
        assert feed.price(max_age_seconds=10) is None and feed.stale()
        assert feed.check() and feed.reconnects == 1
        wait_for_kline_subscription(sim)
        k = sim.advance()
        assert int(feed.bars.get(timeout=10)["start"]) == sim.engine.ts[k]
        feed.close()


def wait_for_kline_subscription(sim):
    deadline = time.monotonic() + 10
    while not any(t.startswith("kline.") for topics in sim.public.values() for t in topics):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_closes_missed_while_the_socket_was_down_are_caught_up_in_order(candles, tmp_path, monkeypatch):
    with SimExchange(candles.iloc[:HISTORY + 12], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        feed.ws.exit()  # the socket is down ...
        for _ in range(3):
            sim.advance()  # ... while three bars close
        assert feed.stale() and feed.check() and feed.reconnects == 1 and feed.ws.is_connected()
        assert trader.catch_up() == 3  # from REST, in order
        assert trader.last_bar_ts == sim.engine.ts[HISTORY + 2]
        wait_for_kline_subscription(sim)
        sim.advance()
        trader.on_bar_message(bars.get(timeout=10))  # the new socket delivers the next close
        assert trader.last_bar_ts == sim.engine.ts[HISTORY + 3]
        feed.close()


def test_tick_guard_closes_a_position_whose_exchange_stop_is_missing(in_position, tmp_path):
    trader, sim, _, _ = in_position
    state = trader.sides[0].state
    trader.http.set_trading_stop(category="linear", symbol="BTCUSDT", positionIdx=0, stopLoss="0", tpslMode="Full")
    sim.faults.reject_stops = True  # and it cannot be set again
    price = sim.engine.last_price()
    state[core.S_STOP] = price + 50.0  # the trader's stop (moved up) is crossed; no stop rests on the exchange
    trader.tick_guard(price, now=100.0, grace_seconds=5.0)
    assert sim.engine.positions[0].size > 0  # within the grace period the exchange's stop may still act
    trader.tick_guard(price, now=105.0, grace_seconds=5.0)
    assert sim.engine.positions[0].size == 0 and state[core.S_DIR] == 0
    last = Store(tmp_path / "state.sqlite").trade_rows()[-1]
    assert core.EXIT_REASONS[int(last[9])] == "stop_loss"
    assert any(e["event"] == "tick_guard" for e in events(tmp_path))


def test_a_fill_announced_on_the_private_socket_is_booked_at_once(candles, tmp_path, monkeypatch):
    """execution/list shows the fill only a bar late (rest_late): it is booked from the stream's message."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("rest_late")) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        drive_until_in_position(trader, sim, bars)
        feed.fills.take()  # the entry's announcement: booked already
        size = sim.engine.positions[0].size
        trader.http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market",
                                qty=str(size), reduceOnly=True)
        assert feed.fills.pending.wait(10) and feed.fills.take()
        rest = trader.http.get_executions(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert not [r for r in rest if r["orderLinkId"] == ""]  # not on execution/list yet
        trader.book_fills()  # between two bar closes, without waiting for the next one
        assert trader.sides[0].state[core.S_DIR] == 0
        assert Store(tmp_path / "state.sqlite").trade_rows()[-1][3] == size
        feed.close()


def stop_out_in_the_next_bar(sim, trader):
    """Set the exchange's stop between the forming bar's open and its low, so that bar stops the position out."""
    engine = sim.engine
    tick = engine.instrument["tick_size"]
    for _ in range(200):
        k = engine.cursor
        if engine.open_[k] - engine.low[k] > 20 * tick and trader.sides[0].state[core.S_STOP] < engine.low[k]:
            stop = core.round_price((engine.open_[k] + engine.low[k]) / 2, tick)
            sim.call(lambda s=stop: engine.set_trading_stop(0, s, None, None))
            return stop
        played = sim.advance()
        trader.on_bar_message({"start": int(engine.ts[played]), "open": engine.open_[played],
                               "high": engine.high[played], "low": engine.low[played],
                               "close": engine.close[played], "volume": engine.volume[played]})
        assert trader.sides[0].state[core.S_DIR], "the position closed before a suitable bar came"
    raise AssertionError("no bar with room for a stop below its open")


def test_a_stop_out_not_visible_yet_blocks_the_bar_until_it_is(candles, tmp_path, monkeypatch):
    """The position list says flat but neither channel shows the stop's execution yet (no stream, REST a bar
    late): the bar is rolled back, nothing is sent; a bar later the real fill is booked at its real price."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.3, stream=False)
        feed.close()
        drive_until_in_position_by_hand(trader, sim)
        stop = stop_out_in_the_next_bar(sim, trader)
        sim.behaviour = Behaviour(ws_fills="never", rest_fills="bar")
        orders = sim.stats()["orders"]
        k = sim.advance()
        bar = {"start": int(sim.engine.ts[k]), "open": sim.engine.open_[k], "high": sim.engine.high[k],
               "low": sim.engine.low[k], "close": sim.engine.close[k], "volume": sim.engine.volume[k]}
        assert sim.engine.positions[0].size == 0  # stopped out on the exchange
        with pytest.raises(FillsPending, match="the exchange holds 0"):
            trader.on_bar_message(bar)
        assert trader.sides[0].state[core.S_DIR] == 1 and trader.last_bar_ts < bar["start"]  # rolled back
        assert sim.stats()["orders"] == orders  # no add, no entry, nothing sent on a side that may be flat
        sim.behaviour = Behaviour.delivery("sync")
        k = sim.advance()  # now execution/list shows the stop's fill
        trader.catch_up()
        assert trader.last_bar_ts == int(sim.engine.ts[k])
        last = Store(tmp_path / "state.sqlite").trade_rows()[-1]
        assert core.EXIT_REASONS[int(last[9])] == "stop_loss"
        assert last[5] == pytest.approx(stop * (1 - sim.engine.costs["slippage"]))  # the real fill, not a guess


def drive_until_in_position_by_hand(trader, sim):
    """Drive bars without a market feed (the sim's bars handed over directly) until the trader holds a position."""
    engine = sim.engine
    for _ in range(300):
        if trader.sides[0].state[core.S_DIR]:
            return
        k = sim.advance()
        trader.on_bar_message({"start": int(engine.ts[k]), "open": engine.open_[k], "high": engine.high[k],
                               "low": engine.low[k], "close": engine.close[k], "volume": engine.volume[k]})
    raise AssertionError("no entry within 300 bars")


def bar_of(sim, k):
    """The sim's bar ``k`` as the kline the trader handles."""
    engine = sim.engine
    return {"start": int(engine.ts[k]), "open": engine.open_[k], "high": engine.high[k], "low": engine.low[k],
            "close": engine.close[k], "volume": engine.volume[k]}


LATE_STOP_FILL = {  # the stop's execution shows a whole bar after the position went flat, first on ...
    "ws_first": Behaviour(ws_fills="bar", rest_fills="lag", rest_lag=10**9),  # ... the stream (REST: not here)
    "rest_first": Behaviour(ws_fills="bar", rest_fills="bar"),  # ... execution/list, then the stream
    "rest_late": Behaviour.delivery("rest_late"),  # ... execution/list: the stream's message is lost
}


@pytest.mark.parametrize("mode", list(LATE_STOP_FILL))
def test_a_stop_out_whose_execution_is_late_is_booked_once_at_its_own_price(candles, tmp_path, monkeypatch, mode):
    """The exchange's stop closes the position and its execution shows a bar later: reconcile does not close the
    state at the last price (the guess this replaced), the bar close sends nothing on the side, and once the
    execution shows it is booked once, at its price: PnL = (exit - entry) x qty - entry and exit fees - funding."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.3)
        drive_until_in_position_by_hand(trader, sim)
        stop = stop_out_in_the_next_bar(sim, trader)
        state, held = trader.sides[0].state, trader.sides[0].state.copy()
        sim.behaviour = LATE_STOP_FILL[mode]
        if mode == "rest_late":
            feed.fills.close()  # the private socket is down when the stop fills
        feed.fills.take()
        orders, trades, seen = sim.stats()["orders"], len(trader.store.trade_rows()), len(sim.engine.executions)
        k = sim.advance()
        execution = next(e for e in sim.engine.executions[seen:] if e["stopOrderType"] == "StopLoss")
        assert sim.engine.positions[0].size == 0  # stopped out on the exchange
        trader.reconcile()
        assert state[core.S_DIR] == 1 and len(trader.store.trade_rows()) == trades  # not closed at a guess
        assert "long" in trader.awaiting
        with pytest.raises(FillsPending, match="the exchange holds 0"):
            trader.on_bar_message(bar_of(sim, k))
        assert sim.stats()["orders"] == orders  # no entry, no add: nothing sent on the side
        sim.advance()  # the execution shows
        sim.behaviour = Behaviour.delivery("sync")  # what the trader sends from now on is visible at once
        if mode == "ws_first":
            assert feed.fills.pending.wait(10)  # the stream's message has arrived
        trader.catch_up()
        assert "long" not in trader.awaiting
        for _ in range(2):  # the stream's copy (rest_first) and later bars book nothing more
            trader.on_bar_message(bar_of(sim, sim.advance()))
        feed.close()
        funding = sum(e["execFee"] for e in sim.engine.executions[seen:] if e["execType"] == "Funding"
                      and e["execTime"] <= execution["execTime"])
    rows = Store(tmp_path / "state.sqlite").trade_rows()
    assert [r[1] for r in rows[trades:]].count(execution["execTime"]) == 1  # booked once
    row = rows[trades]
    price, qty = execution["execPrice"], held[core.S_QTY]
    assert price == pytest.approx(stop * (1 - sim.engine.costs["slippage"]))
    assert (row[1], row[3], row[5]) == (execution["execTime"], qty, price)
    assert core.EXIT_REASONS[int(row[9])] == "stop_loss"
    assert row[6] == pytest.approx(held[core.S_ACC_FEES] + execution["execFee"], abs=1e-9)
    assert row[8] == pytest.approx((price - held[core.S_ENTRY]) * qty - held[core.S_ACC_FEES] - execution["execFee"]
                                   - held[core.S_ACC_FUNDING] - funding, abs=1e-9)


def test_a_restart_while_a_side_awaits_its_execution_starts_and_books_it_when_it_shows(candles, tmp_path,
                                                                                     monkeypatch):
    """Killed while the stop-out's execution is invisible, the trader restarts into the same wait: start() reports
    the rolled-back bar (an error event) instead of dying, so the watchdog does not restart it in a loop; once the
    execution shows, the next catch-up books it once at its own price."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.3)
        drive_until_in_position_by_hand(trader, sim)
        stop = stop_out_in_the_next_bar(sim, trader)
        sim.behaviour = Behaviour(ws_fills="never", rest_fills="bar")  # execution/list a bar late, no stream
        trades, seen = len(trader.store.trade_rows()), len(sim.engine.executions)
        k = sim.advance()
        with pytest.raises(FillsPending):
            trader.on_bar_message(bar_of(sim, k))
        feed.close()
        trader.store.close()  # killed
        second, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.3)
        assert "long" in second.awaiting and second.sides[0].state[core.S_DIR] == 1
        log = events(tmp_path)
        assert log[-1]["event"] == "error" and log[-1]["error"] == "FillsPending"
        sim.advance()  # a bar later the execution shows on execution/list
        sim.behaviour = Behaviour.delivery("sync")  # what the trader sends from now on is visible at once
        second.catch_up()
        assert "long" not in second.awaiting  # booked (the side may have entered again on the newest bar)
        execution = next(e for e in sim.engine.executions[seen:] if e["stopOrderType"] == "StopLoss")
        feed.close()
    rows = Store(tmp_path / "state.sqlite").trade_rows()
    assert len(rows) == trades + 1 and rows[-1][1] == execution["execTime"]
    assert rows[-1][5] == execution["execPrice"] == pytest.approx(stop * (1 - sim.engine.costs["slippage"]))


def test_the_live_loop_keeps_reconciling_and_beating_while_a_side_awaits_its_execution(candles, tmp_path,
                                                                                      monkeypatch):
    """A bar stays rolled back while a side awaits its execution: the live loop's periodic catch-up keeps meeting
    FillsPending, yet reconcile still runs (every position keeps its stop, the awaiting state is saved) and the
    heartbeat is still written, so the watchdog does not take the waiting trader for dead and restart it."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.2)
        drive_until_in_position_by_hand(trader, sim)
        stop_out_in_the_next_bar(sim, trader)
        sim.behaviour = Behaviour(ws_fills="never", rest_fills="lag", rest_lag=10**9)  # on neither channel
        with pytest.raises(FillsPending):
            trader.on_bar_message(bar_of(sim, sim.advance()))
        (tmp_path / "heartbeat.json").unlink()
        stopping, reconciles, reconcile = [], [], trader.reconcile

        def counted(rescue=True):
            reconcile(rescue)
            reconciles.append(rescue)
            if len(reconciles) == 2:
                stopping.append("test")

        trader.reconcile = counted
        settings = argparse.Namespace(reconcile_seconds=0.01, price_max_age=5.0, tick_grace_seconds=5.0)
        run_live.live_loop(trader, feed, feed.fills, settings, stopping)
        feed.close()
    assert reconciles == [False, False]  # ran, without rescuing (the pending bar's entry may be unbooked)
    assert (tmp_path / "heartbeat.json").exists()
    assert "long" in Store(tmp_path / "state.sqlite").get("awaiting")  # saved, so a restart keeps its age
    assert [e["error"] for e in events(tmp_path) if e["event"] == "error"].count("FillsPending") >= 2


def test_an_own_order_whose_record_was_rolled_back_is_known_from_its_fill(candles, tmp_path, monkeypatch):
    """A close the trader sent in a bar that then rolled back (killed before the commit, and handled again on a
    market that no longer asks for it) has no record: its fill names it, it is recorded from the fill, so the
    trader knows every order of its own on the exchange and never sends that orderLinkId again."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG)
        drive_until_in_position_by_hand(trader, sim)
        link_id = f"long-{int(sim.engine.ts[sim.engine.cursor - 1])}-close{core.R_TRAILING}"
        trader.http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market",
                                qty=f"{trader.sides[0].state[core.S_QTY]:g}", reduceOnly=True, orderLinkId=link_id)
        trades = len(trader.store.trade_rows())
        trader.on_bar_message(bar_of(sim, sim.advance()))  # the bar close books the fill first
        feed.close()
        assert len(trader.store.trade_rows()) == trades + 1
        assert trader.store.order(link_id)["status"] == "filled"
        assert not trader._order(trader.sides[0], link_id, "close", trader.exchange.place_close)  # not sent again


class LateQueue(queue.Queue):
    """The market feed's bar queue, with each kline arriving 0.2 s after the sim sent it (network latency)."""

    def put(self, item, block=True, timeout=None):
        time.sleep(0.2)
        super().put(item, block, timeout)


def test_a_lockstep_replay_waits_for_the_last_bars_kline(candles, tmp_path, monkeypatch):
    """The ack that plays the sim's last bar answers "finished" before that bar's kline has reached the trader:
    the replay still hands it over (it once ended there, one bar short, now and then under load)."""
    with SimExchange(candles.iloc[:HISTORY + 5], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG)
        feed.bars = LateQueue()
        assert run_live.drive_lockstep(trader, sim, feed.bars)
        feed.close()
        assert trader.last_bar_ts == int(sim.engine.ts[-1])


def test_a_stop_refused_as_passed_counts_as_passed_even_if_the_price_came_back(candles, tmp_path, monkeypatch):
    """Bybit refuses a stop on the wrong side of the price it triggers by and names that price (base_price); the
    trader judges the refusal by it, not by a price read after it, which may have come back (a race seen at 10
    bars a second): the refusal is the gap the backtest fills at the open, not a stop_rejected alert."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour.delivery("sync")) as sim:
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG)
        drive_until_in_position_by_hand(trader, sim)
        side, tick = trader.sides[0], sim.engine.instrument["tick_size"]
        last = sim.engine.last_price()
        side.state[core.S_STOP] = core.round_price(last + 10 * tick, tick)  # above the price: refused (10001)
        monkeypatch.setattr(trader.exchange, "prices", lambda: (last + 20 * tick,) * 2)  # read later: came back
        assert not trader._send_stop(side, "stop_moved")
        assert side.stop_passed and sim.engine.positions[0].size > 0
        trader._move_stop(side, int(sim.engine.ts[sim.engine.cursor - 1]), trader._data())  # as at a bar close
        closed = sim.engine.positions[0].size == 0  # at market, as the backtest fills a stop the open has passed
        feed.close()
    assert closed
    assert side.stop_rejections == 0 and not [e for e in events(tmp_path) if e["event"] == "stop_rejected"]
    assert trader_module.refused_as_passed("StopLoss:9025 set for Buy position should lower base_price:9020.5"
                                           "??LastPrice")
    assert trader_module.refused_as_passed("sl:257970000 set for Sell position should greater base_price:259477000"
                                           "??LastPrice")  # Bybit's scaled figures (ccxt/ccxt#19089)
    assert not trader_module.refused_as_passed("Request parameter error")


@pytest.mark.parametrize("link_id", ["", "long-1700000000000-open"])
def test_a_rescued_positions_late_opening_fill_is_not_booked_again(candles, tmp_path, monkeypatch, link_id):
    """A position whose opening execution is on neither channel yet (an order by hand, or the trader's own entry
    after its database was lost) is rescued from position/list at start. When its execution shows, a bar later, it
    is known by its seq as part of the rescued position, not booked again as an add: the size stays the
    exchange's; closed by hand, the trade's PnL is (exit - entry) x qty - the exit fee - funding (the opening fee
    was paid before the rescue, in the wallet the books start from)."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY,
                     behaviour=Behaviour(ws_fills="never", rest_fills="bar")) as sim:
        order = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.05",
                 **({"orderLinkId": link_id} if link_id else {})}
        sim.call(lambda: sim.engine.create_order(order))
        opening = sim.engine.executions[-1]
        trader, feed, _ = start_trader(sim, monkeypatch, tmp_path, LONG, fill_wait=0.3)
        state = trader.sides[0].state
        assert state[core.S_DIR] == 1 and state[core.S_QTY] == 0.05 and state[core.S_ENTRY] == opening["execPrice"]
        assert not trader.store.seen_execution(opening["execId"])  # not visible when it was rescued
        sim.behaviour = Behaviour.delivery("sync")
        seen = len(sim.engine.executions)
        trader.on_bar_message(bar_of(sim, sim.advance()))  # the opening execution shows on execution/list
        assert trader.store.seen_execution(opening["execId"])
        assert state[core.S_QTY] == 0.05 == sim.engine.positions[0].size  # not 0.1
        trader.http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.05",
                                reduceOnly=True)
        trader.reconcile()
        feed.close()
        closing = sim.engine.executions[-1]
        funding = sum(e["execFee"] for e in sim.engine.executions[seen:] if e["execType"] == "Funding")
    assert not [e for e in events(tmp_path) if e["event"] == "desync" and "by hand at" in e["detail"]
                and "added" in e["detail"]]
    rows = Store(tmp_path / "state.sqlite").trade_rows()
    assert len(rows) == 1 and rows[0][3] == 0.05 and rows[0][5] == closing["execPrice"]
    assert rows[0][8] == pytest.approx((closing["execPrice"] - opening["execPrice"]) * 0.05 - closing["execFee"]
                                       - funding, abs=1e-9)


@pytest.mark.parametrize(("exec_type", "event"), [("AdlTrade", "adl"), ("BustTrade", "liquidation")])
def test_takeovers_are_recognised_by_their_exec_type(in_position, tmp_path, exec_type, event):
    """docs: v5/enum.mdx execType: an ADL (AdlTrade) or a takeover liquidation (BustTrade) closes the position:
    booked as a liquidation exit at its price, with its event."""
    trader, sim, _, _ = in_position
    size = sim.engine.positions[0].size
    price = sim.engine.mark_price()
    sim.call(lambda: sim.engine.take_over(0, size, exec_type))
    trader.reconcile()
    assert trader.sides[0].state[core.S_DIR] == 0
    last = Store(tmp_path / "state.sqlite").trade_rows()[-1]
    assert core.EXIT_REASONS[int(last[9])] == "liquidation" and last[5] == price and last[3] == size
    assert any(e["event"] == event for e in events(tmp_path))


def test_partial_fills_are_booked_and_the_position_stays_protected(candles, tmp_path, monkeypatch):
    """Half the market orders fill only half (IOC): the trader books what filled, the rest of a close is sent
    again, the stop covers whatever is held, and the books agree with the exchange throughout."""
    behaviour = Behaviour(partial_rate=0.5, partial_share=0.5)
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY, behaviour=behaviour,
                     seed=4) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        run_live.drive_lockstep(trader, sim, bars)
        feed.close()
        stats = sim.stats()
        partial = [o for o in sim.engine.orders.values() if o.status == "Cancelled" and 0 < o.filled < o.qty]
        resent = [o for o in sim.engine.orders.values() if "-close" in o.link_id and o.link_id.endswith("-r1")]
        executions = {e["execId"] for e in sim.engine.executions}
        held = sim.engine.positions[0].size
    assert partial, "no market order filled partly: the test proves nothing"
    assert stats["longest_unprotected_bars"] == 0
    store = Store(tmp_path / "state.sqlite")
    assert {r[0] for r in store.db.execute("SELECT exec_id FROM executions").fetchall()} >= executions
    assert store.load_state("long")[core.S_QTY] == pytest.approx(held)
    if any("-close" in o.link_id and o.status == "Cancelled" and o.filled for o in partial):
        assert resent  # a close that filled partly had its rest sent again


def test_a_rescued_position_keeps_its_own_open_time(candles, tmp_path, monkeypatch):
    """createdTime is the first position ever on the symbol (docs: v5/position/position.mdx); a position
    opened 60 hours later, found by a trader that never saw its fill, is rescued with its openTime, so the
    48-hour time exit does not close it at once."""
    with SimExchange(candles.iloc[:HISTORY + 400], "BTCUSDT", "1h", history_bars=HISTORY - 100,
                     behaviour=Behaviour.delivery("sync")) as sim:
        sim.call(lambda: sim.engine.open_position_by_hand("Buy", 0.01))
        sim.call(lambda: sim.engine.create_order({"category": "linear", "symbol": "BTCUSDT", "side": "Sell",
                                                  "orderType": "Market", "qty": "0.01", "reduceOnly": True}))
        first = sim.engine.first_position_ms
        for _ in range(60):
            sim.advance()
        sim.call(lambda: sim.engine.open_position_by_hand("Buy", 0.01))
        opened = sim.engine.now_ms()
        sim.advance()
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)  # rescues it at start
        state = trader.sides[0].state
        assert first == opened - 60 * 3_600_000
        assert state[core.S_DIR] == 1 and state[core.S_ENTRY_TS] == opened
        run_live.drive_lockstep(trader, sim, bars, max_bars=2)
        feed.close()
        assert state[core.S_DIR] == 1  # not time-exited
    assert [e["event"] for e in events(tmp_path)].count("rescue") == 1


def test_exchange_refusals_stop_with_one_line(candles, tmp_path, monkeypatch):
    """A key without Order permission: the entry is refused with 10005; the trader logs it in one line,
    reports the event, and goes on (no traceback)."""
    with SimExchange(candles.iloc[:HISTORY + 200], "BTCUSDT", "1h", history_bars=HISTORY,
                     api_permissions={"ContractTrade": ["Order", "Position"]}) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        sim.api_permissions = {"ContractTrade": ["Position"]}  # revoked after the start
        run_live.drive_lockstep(trader, sim, bars)
        feed.close()
    rejected = [e for e in events(tmp_path) if e["event"] == "order_rejected"]
    assert rejected and {e["ret_code"] for e in rejected} == {10005}
    assert all("Permission denied" in e["ret_msg"] for e in rejected)
