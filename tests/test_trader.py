"""The live trader against bybit_sim with the real pybit clients: parity, orders, restart, hedge, rejections."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backtester
import config
import core
import run_live
from bybit_sim import FaultConfig, SimExchange
from data_fetcher import load_sample
from trader import SideConfig
from trader_store import Store

from live_helpers import HISTORY, events, params_file, prod_params, start_trader


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:HISTORY + 3100]


@pytest.fixture(scope="module")
def replay_file(candles, tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "btc1h.csv"
    candles.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("key", "side"), [("LONG", "long"), ("SHORT", "short")])
def test_paper_run_equals_the_backtest_trade_for_trade(replay_file, tmp_path, key, side, capsys):
    out = tmp_path / "paper"
    code = run_live.main(["--paper", "--replay", str(replay_file), "--side", side, "--params",
                          str(params_file(tmp_path, key)), "--out", str(out), "--history-bars", str(HISTORY),
                          "--compare"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"{side}: " in printed and "EQUAL" in printed
    kinds = [e["event"] for e in events(out)]
    # partial take-profits (and, for LONG in this window, pyramiding) really happened: the comparison covers them
    assert kinds.count("partial_exit") > 5 and kinds.count("stop_moved") > 5
    if key == "LONG":
        assert kinds.count("add") > 0
    trades = (out / "trades.csv").read_text().splitlines()
    assert len(trades) > 50
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_trades"] == len(trades) - 1


def test_entry_is_protected_from_its_first_fill_and_targets_rest(candles, tmp_path, monkeypatch):
    with SimExchange(candles.iloc[:HISTORY + 600], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, ws, closed = start_trader(sim, monkeypatch, tmp_path, [SideConfig("long", prod_params("LONG"))])
        run_live.drive_lockstep(trader, sim, closed)
        ws.close()
        stats = sim.stats()
        entries = [o for o in sim.engine.orders.values() if o.link_id.endswith("-open")]
        targets = [o for o in sim.engine.orders.values() if "-tp" in o.link_id]
    assert stats["longest_unprotected_bars"] == 0  # never a bar with a position and no stop-loss
    assert entries and all(o.stop_loss > 0 for o in entries)  # the stop travels with the entry order
    # the stop triggers on the last price, as the backtest's stop path on last-price candles does
    assert config.STOP_TRIGGER_BY == "LastPrice"
    sent = trader.store.order(entries[0].link_id)["payload"]
    assert sent["slTriggerBy"] == "LastPrice"
    assert stats["requests"]["position/trading-stop"] > 0
    # after a partial fill the next level is resting: a newer version of the next level exists
    store = trader.store
    fills = [json.loads(r[0]) for r in store.db.execute("SELECT payload FROM executions").fetchall()]
    partial = next(f for f in fills if "-tp0-" in f["orderLinkId"])
    trade = partial["orderLinkId"].split("-tp0-")[0]
    later = [o for o in targets if o.link_id.startswith(trade + "-tp1-") and o.created_ms >= int(partial["execTime"])]
    assert later, "the next level was not placed after the partial fill"
    trader.stop("test")


def test_restart_from_sqlite_mid_trade_continues_the_same_trade(candles, tmp_path, monkeypatch):
    data = backtester.MarketData(candles.iloc[:HISTORY + 900], "BTCUSDT", "1h")
    expected = backtester.simulate(data, prod_params("LONG"), start=HISTORY)
    in_trade = np.nonzero(expected.position[300:] != 0)[0]
    cut = 300 + int(in_trade[0]) + 1  # the trader is stopped while a position is open
    rows = expected.rows[expected.rows[:, 9] != core.R_END]
    with SimExchange(candles.iloc[:HISTORY + 900], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        side = [SideConfig("long", prod_params("LONG"))]
        first, ws, closed = start_trader(sim, monkeypatch, tmp_path, side)
        assert not run_live.drive_lockstep(first, sim, closed, max_bars=cut)
        ws.close()
        assert first.sides[0].state[core.S_DIR] == 1.0
        held = first.sides[0].state.copy()
        first.store.close()
        second, ws, closed = start_trader(sim, monkeypatch, tmp_path, side)
        assert np.array_equal(second.sides[0].state, held)  # resumed, not restarted
        run_live.drive_lockstep(second, sim, closed)
        ws.close()
    paper = Store(tmp_path / "state.sqlite").trade_rows()
    assert run_live.trade_differences(paper, rows, 0.1) == []


def test_hedge_mode_runs_long_and_short_together(candles, tmp_path, monkeypatch):
    with SimExchange(candles.iloc[:HISTORY + 800], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        sides = [SideConfig("long", prod_params("LONG")), SideConfig("short", prod_params("SHORT"))]
        trader, ws, closed = start_trader(sim, monkeypatch, tmp_path, sides)
        run_live.drive_lockstep(trader, sim, closed)
        ws.close()
        assert sim.engine.hedge
        used = {o.position_idx for o in sim.engine.orders.values()}
    assert used == {1, 2}
    sides_traded = {row[2] for row in Store(tmp_path / "state.sqlite").trade_rows()}
    assert sides_traded == {1.0, -1.0}


def test_rejected_stop_moves_are_logged_and_trading_goes_on(candles, tmp_path, monkeypatch):
    faults = FaultConfig(reject_stops=True)
    with SimExchange(candles.iloc[:HISTORY + 300], "BTCUSDT", "1h", history_bars=HISTORY, faults=faults) as sim:
        trader, ws, closed = start_trader(sim, monkeypatch, tmp_path, [SideConfig("long", prod_params("LONG"))])
        assert run_live.drive_lockstep(trader, sim, closed)
        ws.close()
    rejected = [e for e in events(tmp_path) if e["event"] == "order_rejected"]
    assert rejected and all(e["action"] == "stop_moved" and e["ret_code"] == 10001 for e in rejected)
    assert "fault injection" in rejected[0]["ret_msg"]


def test_secrets_never_reach_the_logs(candles, tmp_path, monkeypatch):
    monkeypatch.setenv("BYBIT_API_SECRET", "sim-secret")
    monkeypatch.setenv("BYBIT_API_KEY", "sim-key")
    with SimExchange(candles.iloc[:HISTORY + 100], "BTCUSDT", "1h", history_bars=HISTORY) as sim:
        trader, ws, closed = start_trader(sim, monkeypatch, tmp_path, [SideConfig("long", prod_params("LONG"))])
        run_live.drive_lockstep(trader, sim, closed)
        ws.close()
        trader.stop("test")
    for path in (tmp_path / "logs").iterdir():
        text = path.read_text()
        assert "sim-secret" not in text and "sim-key" not in text


def test_cli_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(config, "BASE_DIR", tmp_path)
    assert run_live.main(["--side", "long"]) == 2
    assert "no prod_config_long.py" in capsys.readouterr().err
    monkeypatch.setenv("BYBIT_ENV", "mainnet")
    assert run_live.main(["--side", "long", "--params", str(params_file(tmp_path, "LONG"))]) == 2
    assert "--mainnet" in capsys.readouterr().err
    assert run_live.main(["--paper", "--side", "long"]) == 2
    assert "--paper needs --replay" in capsys.readouterr().err
