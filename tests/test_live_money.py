"""The live trader's money and stops tell the truth (issue 13): sizes from the exchange's wallet, entries the margin
cannot carry skipped (not refused by the exchange), the stop the exchange holds reported, refused stop moves
alerted and, after N in a row, the position closed; execution/list pages that repeat a row; a wallet that changes
under the trader. Scenarios on bybit_sim with the real pybit clients, and the watchdog on the fake Telegram."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backtester
import config
import core
import run_live
import trader_capital
from bybit_sim import Behaviour, FaultConfig, SimExchange
from data_fetcher import load_sample
from exchange import Wallet
from fake_telegram import FakeTelegram, html_to_plain
from live_helpers import HISTORY, events, prod_params, start_trader
from trader import NO_MARGIN, SideConfig
from trader_store import Store
from watchdog import Settings, Watchdog

LONG = [SideConfig("long", prod_params("LONG"))]
TOKEN, CHAT = "123:money", 4242


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:HISTORY + 700]


def play_until(trader, sim, bars, condition, most=700):
    """Play bars one by one (lockstep) until ``condition()`` holds; False when the replay ended first."""
    for _ in range(most):
        if condition():
            return True
        if run_live.drive_lockstep(trader, sim, bars, max_bars=1):
            return condition()
    return condition()


def first_entry(sim):
    return next((o for o in sim.engine.orders.values() if o.link_id.endswith("-open")), None)


# ----------------------------------------------------------------------------------------------
# Sizing from the exchange
# ----------------------------------------------------------------------------------------------
def test_with_2500_usdt_the_first_entry_risks_the_params_share_of_2500(candles, tmp_path, monkeypatch):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, balance=2_500.0) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        assert play_until(trader, sim, bars, lambda: first_entry(sim) is not None)
        feed.close()
        order = first_entry(sim)
    bar_ts = int(order.link_id.split("-")[1])
    data = backtester.MarketData(candles, "BTCUSDT", "1h")
    i = int(np.searchsorted(data.ts, bar_ts))
    atr = data.indicator("atr", 23)[i]  # the LONG params: atr_period 23, atr_stop_multiplier 3.83, risk 0.051
    # risk 5.1 % of 2,500 = 127.50 USDT; the stop 3.83 ATR below the close: qty = 127.5 / (3.83 ATR), down to 0.001
    expected = np.floor(2_500.0 * 0.051 / (3.83 * atr) / 0.001 + 1e-9) * 0.001
    # the margin cap (99 % of 2,500 at leverage 10 plus the taker fee) is far above it
    assert expected * data.close[i] * (0.1 + config.TAKER_FEE) < 0.99 * 2_500
    assert order.qty == pytest.approx(expected, abs=1e-9)
    risked = order.qty * (data.close[i] - order.stop_loss)
    assert 127.5 - 3.83 * atr * 0.001 <= risked <= 127.5 + 0.1  # what 5.1 % of 2,500 risks, to a step and a tick
    assert order.qty < 0.3 * np.floor(10_000.0 * 0.051 / (3.83 * atr) / 0.001) * 0.001  # not 10,000's size
    beat = json.loads((tmp_path / "heartbeat.json").read_text())
    assert beat["equity"] == pytest.approx(sim.engine.equity(), abs=1e-6)  # the exchange's equity


def watchdog_on(folder, tg) -> Watchdog:
    """A watchdog on ``folder`` sending to the fake Telegram, repeats within 300 s merged (config's window)."""
    settings = Settings.from_config(poll_interval_s=0.05, min_send_interval_s=0.0, retry_base_s=0.01, retry_max_s=0.05,
                                    updates_timeout_s=0, request_timeout_s=5.0, daily_summary_hour_utc=None,
                                    merge_window_s=300.0, merge_edit_interval_s=0.0)
    dog = Watchdog(folder, TOKEN, CHAT, tg.url, settings=settings)
    return dog


def test_with_300_usdt_entries_without_margin_are_skipped_not_refused_one_message(candles, tmp_path, monkeypatch):
    """300 USDT, of which 280 are held as margin by a position on another symbol: the entries the core sizes from
    300 need more than the 20 left. None is sent (no 110007 from the exchange); each is one entry_skipped event
    with the reason, and the watchdog sends one message with their count."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.jsonl").write_text("")
    with FakeTelegram(TOKEN, (CHAT,)) as tg:
        dog = watchdog_on(tmp_path, tg)  # watching before the trader writes: its events are news
        with SimExchange(candles.iloc[:HISTORY + 300], "BTCUSDT", "1h", history_bars=HISTORY, balance=300.0,
                         other_margin=280.0) as sim:
            trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
            run_live.drive_lockstep(trader, sim, bars)
            feed.close()
            stats = sim.stats()
        skipped = [e for e in events(tmp_path) if e["event"] == "entry_skipped"]
        dog.poll()
        for _ in range(200):
            if not dog.store.pending():
                break
            dog.sender.step()
        texts = [m["plain"] for m in tg.messages]
        dog.close()
    # nothing the margin cannot carry reached the exchange: every order/create was accepted, none refused (110007)
    assert stats["requests"].get("order/create", 0) == stats["orders"]
    assert not [e for e in events(tmp_path) if e["event"] == "order_rejected"]
    assert len(skipped) >= 3 and all(e["reason"] == NO_MARGIN and "retCode" not in e["detail"] for e in skipped)
    assert all(e["needed_margin"] > e["available"] for e in skipped)
    assert "USDT of margin, 20.00 available" in skipped[0]["detail"]  # 300 - 280 held elsewhere
    alerts = [t for t in texts if "Entry skipped" in t]
    assert len(alerts) == 1 and f"×{len(skipped)}" in alerts[0], texts
    assert NO_MARGIN in alerts[0]


def test_the_books_follow_a_wallet_that_changes_under_the_trader(candles, tmp_path, monkeypatch):
    """A withdrawal of half the wallet while flat: at the next close the side's wallet, high-water mark and risk
    base are halved (one factor: the governor's drawdown is unchanged), with a wallet_sync event."""
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        assert play_until(trader, sim, bars, lambda: any(e["event"] == "exit" for e in events(tmp_path)))
        assert play_until(trader, sim, bars, lambda: not trader.sides[0].state[core.S_DIR])
        before = trader.sides[0].state.copy()
        sim.call(lambda: setattr(sim.engine, "balance", sim.engine.balance / 2))
        run_live.drive_lockstep(trader, sim, bars, max_bars=1)
        feed.close()
        after = trader.sides[0].state
    for slot in (core.S_HWM, core.S_RISK_BASE):  # (the wallet itself may have paid an entry's fee since)
        assert after[slot] == pytest.approx(before[slot] / 2, rel=1e-9)
    (synced,) = [e for e in events(tmp_path) if e["event"] == "wallet_sync"]
    assert synced["factor"] == pytest.approx(0.5, rel=1e-9)
    assert synced["books"] == pytest.approx(before[core.S_WALLET], rel=1e-12)
    assert synced["capital"] == pytest.approx(before[core.S_WALLET] / 2, rel=1e-9)


def test_hedge_sides_share_the_wallet_by_their_own_books():
    """Two sides start from half the capital each; afterwards each keeps the share its own trades made."""
    wallet = Wallet(equity=2_600.0, wallet_balance=2_500.0, available=2_000.0, unrealised=100.0)
    assert trader_capital.strategy_capital(wallet, None) == 2_500.0  # the equity less its unrealised PnL
    assert trader_capital.strategy_capital(wallet, 1_000.0) == 1_000.0
    long, short = trader_capital.new_states(2_500.0, 2)
    assert long[core.S_WALLET] == short[core.S_WALLET] == long[core.S_RISK_BASE] == 1_250.0
    long[core.S_WALLET] = 1_500.0  # long made 250; short lost 250 from its mark of 1,250
    short[core.S_WALLET] = 1_000.0
    short[core.S_HWM] = short[core.S_RISK_BASE] = 1_250.0
    assert trader_capital.within_rounding([long, short], 2_500.0)
    # a deposit of 2,500: factor 2, shares 60/40 kept, short's drawdown (1,250 - 1,000) / 1,250 = 20 % kept
    assert trader_capital.rescale([long, short], 5_000.0) == 2.0
    assert long[core.S_WALLET] == 3_000.0 and short[core.S_WALLET] == 2_000.0
    assert (short[core.S_HWM] - short[core.S_WALLET]) / short[core.S_HWM] == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------
# Stops: what the exchange holds, refusals alerted, closed after N
# ----------------------------------------------------------------------------------------------
def test_refused_stop_moves_show_the_exchanges_stop_alert_and_close_after_n(candles, tmp_path, monkeypatch):
    """The exchange refuses every stop move: the heartbeat and /status show the stop it holds (the entry's), each
    refusal is a stop_rejected alert, and after STOP_REJECTIONS_TO_CLOSE (3) in a row the position is closed at
    market (reduce-only), its trade booked as stop_rejected."""
    limit = config.STOP_REJECTIONS_TO_CLOSE
    assert limit == 3
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, faults=FaultConfig(reject_stops=True)) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)

        def refused():
            return [e for e in events(tmp_path) if e["event"] == "stop_rejected"]

        assert play_until(trader, sim, bars, lambda: len(refused()) >= 1)
        held = sim.engine.positions[0].stop_loss
        wanted = trader.sides[0].state[core.S_STOP]
        assert held > 0 and wanted > held  # the trader wants a tighter stop than the one the exchange holds
        beat = json.loads((tmp_path / "heartbeat.json").read_text())
        (position,) = beat["positions"]
        assert position["stop"] == held and position["wanted_stop"] == wanted and position["stop_rejections"] == 1
        with FakeTelegram(TOKEN, (CHAT,)) as tg:
            status = html_to_plain(watchdog_on(tmp_path, tg).command("/status"))
        assert f"stop {held:g} (the trader wants {wanted:g}: not on the exchange, 1 refused in a row)" in status
        assert play_until(trader, sim, bars, lambda: Store(tmp_path / "state.sqlite").trade_rows().shape[0] > 0
                          and any(r[9] == core.R_STOP_REJECTED for r in Store(tmp_path / "state.sqlite").trade_rows()))
        feed.close()
        engine_flat = sim.engine.positions[0].size == 0
        closes = [o for o in sim.engine.orders.values() if o.link_id.endswith(f"-close{core.R_STOP_REJECTED}")]
    log = events(tmp_path)
    first_close = next(k for k, e in enumerate(log) if e["event"] == "exit" and e["reason"] == "stop_rejected")
    before = [e for e in log[:first_close] if e["event"] in ("stop_rejected", "stop_moved", "entry")]
    assert [e["event"] for e in before[-limit:]] == ["stop_rejected"] * limit
    assert [e["rejections"] for e in before[-limit:]] == list(range(1, limit + 1))
    assert all(e["exchange_stop"] == e["exchange_stop"] for e in before[-limit:])
    assert engine_flat and closes and all(o.reduce_only for o in closes)
    assert not [e for e in log if e["event"] == "order_rejected"]  # the refusals are stop_rejected, not generic


def test_stop_rejected_alert_names_the_stop_held_and_the_count():
    from telegram_outbox import event_alert

    event = {"event": "stop_rejected", "symbol": "BTCUSDT", "side": "long", "stop": 9851.0, "exchange_stop": 9025.0,
             "ret_code": 10001, "ret_msg": "refused", "rejections": 3, "limit": 3}
    alert = event_alert(event, [])
    assert alert.kind == "stop_rejected" and config.WATCHDOG_ALERT_LEVELS["stop_rejected"] == "on"
    text = html_to_plain(alert.text)
    assert "Stop move refused LONG BTCUSDT: 9851, the exchange holds 9025" in text
    assert "3 of 3 in a row; closing the position at market" in text


# ----------------------------------------------------------------------------------------------
# Duplicate execution rows
# ----------------------------------------------------------------------------------------------
def test_pages_that_repeat_execution_rows_are_booked_once_and_equal_the_backtest(candles, tmp_path, monkeypatch):
    """Half of the execution/list pages carry a row twice (a row of the same query repeated): every execution is
    booked once, nothing is fatal or rolled back, and the trades equal the backtest's."""
    replay = candles.iloc[:HISTORY + 400]
    with SimExchange(replay, "BTCUSDT", "1h", history_bars=HISTORY, behaviour=Behaviour(repeat_rows=0.5)) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        run_live.drive_lockstep(trader, sim, bars)
        feed.close()
        stats = sim.stats()
        executions = sorted(e["execId"] for e in sim.engine.executions)
    store = Store(tmp_path / "state.sqlite")
    booked = sorted(r[0] for r in store.db.execute("SELECT exec_id FROM executions").fetchall())
    assert stats["repeated_rows"] > 20 and len(executions) > 10
    assert booked == executions
    assert not [e for e in events(tmp_path) if e["event"] in ("error", "fatal", "desync")]
    data = backtester.MarketData(replay, "BTCUSDT", "1h")
    expected = backtester.simulate(data, prod_params("LONG"), start=HISTORY).rows
    assert run_live.trade_differences(store.trade_rows(), expected[expected[:, 9] != core.R_END], 0.1) == []


# ----------------------------------------------------------------------------------------------
# The market moves on: races the speed clock showed
# ----------------------------------------------------------------------------------------------
def test_an_add_that_finds_the_position_stopped_out_opens_a_protected_position(candles, tmp_path, monkeypatch):
    """The position is taken away (an ADL) between the bar close that decided a pyramid add and the add's arrival:
    the add then opens a new position, which must carry the stop from its first fill (a trader killed before its
    next stop move would otherwise leave it unprotected until its restart: the reported 3.0 s)."""
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        engine = sim.engine
        create = engine.create_order
        raced: list[str] = []

        def gone_before_the_add(request):
            if str(request.get("orderLinkId", "")).endswith("-add") and not raced:
                raced.append(request["orderLinkId"])
                engine.take_over(0, engine.positions[0].size)  # the position closed a moment before the add
                order = create(request)
                raced.append(engine.positions[0].stop_loss)  # the stop of the position the add opened, at its fill
                return order
            return create(request)

        monkeypatch.setattr(engine, "create_order", gone_before_the_add)
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        assert play_until(trader, sim, bars, lambda: bool(raced))
        assert engine.positions[0].size > 0 and raced[1] > 0  # the add's position has its stop from its fill
        run_live.drive_lockstep(trader, sim, bars, max_bars=3)
        feed.close()
        assert sim.stats()["longest_unprotected_bars"] == 0


def test_a_restart_after_a_stop_out_sends_nothing_for_the_closed_position(candles, tmp_path, monkeypatch):
    """The trader is down while its position is stopped out: catching up the missed closes it does not move the
    stop or rest targets of the position the exchange no longer holds (the "zero position" refusals)."""
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)
        assert play_until(trader, sim, bars, lambda: trader.sides[0].state[core.S_DIR] != 0)  # just entered
        feed.close()
        trader.store.close()
        trades_before, down = len(sim.engine.executions), 0
        while sim.engine.positions[0].size:  # down: the market goes on until the stop (or a target) closes it
            sim.advance()
            down += 1
        assert down >= 3  # closes the trader missed with the position still open: it would have moved the stop
        for _ in range(5):
            sim.advance()
        assert len(sim.engine.executions) > trades_before
        stops_before = sim.requests.get("position/trading-stop", 0)
        again, feed, bars = start_trader(sim, monkeypatch, tmp_path, LONG)  # catches the missed closes up
        feed.close()
        assert again.sides[0].state[core.S_QTY] == sim.engine.positions[0].size  # the stop-out is booked
        # no stop move for the zero position (a new entry on the newest close carries its stop in the order)
        assert sim.requests.get("position/trading-stop", 0) == stops_before
    assert not [e for e in events(tmp_path) if e["event"] in ("order_rejected", "stop_rejected", "desync")]
