"""The live trader against bybit_sim with the real pybit clients: parity, orders, restart, hedge, rejections."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backtester
import config
import core
import run_live
from bybit_sim import Behaviour, SimExchange
from data_fetcher import load_sample
from trader import SideConfig
from trader_store import Store

from live_helpers import HISTORY, events, params_file, prod_params, start_trader


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:HISTORY + 3100]


def write_replay(candles, path):
    candles.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def replay_file(candles, tmp_path_factory):
    return write_replay(candles, tmp_path_factory.mktemp("replay") / "btc1h.csv")


@pytest.fixture(scope="module")
def short_replay(candles, tmp_path_factory):
    """400 bars after the history: a few trades of each side."""
    return write_replay(candles.iloc[:HISTORY + 400], tmp_path_factory.mktemp("replay") / "btc1h-short.csv")


def paper(replay_file, tmp_path, sides, behaviour=None, bars=None):
    """A paper replay (the real trader on bybit_sim, lockstep) compared with the backtest; (exit code, printed, out)."""
    out = tmp_path / "paper"
    argv = ["--paper", "--replay", str(replay_file), "--side", sides, "--out", str(out), "--history-bars",
            str(HISTORY), "--compare"]
    args = run_live.build_parser().parse_args(argv)
    configs = [SideConfig(side, prod_params(side.upper())) for side in (["long", "short"] if sides == "both"
                                                                        else [sides])]
    return run_live.run_paper(args, configs, behaviour), out


def test_paper_run_in_hedge_mode_equals_the_backtest_trade_for_trade(replay_file, tmp_path, capsys):
    """3,100 bars, long and short together in hedge mode, fills asynchronous (stream first, execution/list a
    request late), executions without positionIdx: each side equals its backtest trade for trade."""
    code, out = paper(replay_file, tmp_path, "both")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "long: " in printed and "short: " in printed and printed.count("EQUAL") == 2
    kinds = [e["event"] for e in events(out)]
    # partial take-profits and pyramiding really happened: the comparison covers them
    assert kinds.count("partial_exit") > 10 and kinds.count("stop_moved") > 10 and kinds.count("add") > 0
    trades = (out / "trades.csv").read_text().splitlines()
    assert len(trades) > 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_trades"] == len(trades) - 1


def test_the_cli_paper_run_of_one_side_equals_the_backtest(short_replay, tmp_path, capsys):
    out = tmp_path / "cli"
    code = run_live.main(["--paper", "--replay", str(short_replay), "--side", "short", "--params",
                          str(params_file(tmp_path, "SHORT")), "--out", str(out), "--history-bars", str(HISTORY),
                          "--compare"])
    printed = capsys.readouterr().out
    assert code == 0 and "short: " in printed and "EQUAL" in printed, printed


@pytest.mark.parametrize("mode", ["ws_first", "rest_first", "rest_late"])
@pytest.mark.parametrize("sides", ["long", "both"])
def test_every_fill_delivery_equals_the_backtest(short_replay, tmp_path, capsys, mode, sides):
    """One-way and hedge mode, under each order in which a fill reaches the stream and execution/list."""
    code, out = paper(short_replay, tmp_path, sides, Behaviour.delivery(mode))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("EQUAL") == (2 if sides == "both" else 1)
    booked = Store(out / "state.sqlite").execution_count()
    assert booked > 10  # trades happened in the window: the comparison proves something


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
    assert all(o.sl_trigger_by == "LastPrice" for o in entries)  # as the exchange received the entries
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
    monkeypatch.delenv("BYBIT_ENV")
    import gates

    gates.export_prod_config(config.fixed_params("SHORT"), {}, tmp_path).rename(tmp_path / "prod_config_long.py")
    assert run_live.main(["--side", "long"]) == 2  # a short strategy edited into the long side's file
    assert "prod_config_long.py holds the short strategy short_only; accepted: a long strategy (SIDE = \"long\")" \
        in capsys.readouterr().err


def test_a_side_runs_only_a_strategy_of_its_own_direction(tmp_path):
    """The trader never sends an entry against its side (the core's entries follow the strategy's SIDE)."""
    from trader import Trader

    with pytest.raises(ValueError, match="the long side cannot run short_only, a strategy whose entries are short; "
                                         "accepted: a long strategy"):
        Trader(None, "BTCUSDT", "1h", [SideConfig("long", config.fixed_params("SHORT"))], tmp_path, env="paper")
    with pytest.raises(ValueError, match="the short side cannot run short_scalp, a strategy whose entries are both"):
        Trader(None, "BTCUSDT", "1h", [SideConfig("short", config.fixed_params("SCALP"))], tmp_path, env="paper")
    assert list(tmp_path.iterdir()) == []  # refused before any file is made
