"""Backtests on the bundled real candles, and the command line around them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import backtester
import config
import core
import main
from data_fetcher import load_sample


@pytest.fixture(scope="module")
def hourly():
    return backtester.MarketData(load_sample("BTCUSDT", "1h"), "BTCUSDT", "1h")


@pytest.mark.parametrize("key", ["LONG", "SHORT", "SCALP"])
def test_accounting_identity_on_real_candles(hourly, key):
    params = {**config.fixed_params(key), "timeframe": "1h", "partial_take_profit": True, "position_scaling": True}
    result = backtester.backtest(hourly, params)
    m = result.metrics
    assert m["num_trades"] > 0
    assert m["final_equity"] == pytest.approx(config.CAPITAL + result.trades["pnl"].sum(), rel=1e-9)
    assert m["final_equity"] == pytest.approx(result.equity["equity"].iloc[-1], rel=1e-12)
    assert m["total_fees"] == pytest.approx(result.trades["fees"].sum())
    assert set(result.trades["side"]) <= {"long", "short"}
    assert (result.trades["exit_time"] >= result.trades["entry_time"]).all()
    assert m["exit_reasons"]["end_of_data"] <= 1


def test_folds_use_indicators_from_the_whole_history(hourly):
    params = {**config.fixed_params("LONG"), "timeframe": "1h"}
    full_signal = hourly.signals(params)
    part = backtester.simulate(hourly, params, start=5000, stop=8000)
    assert part.equity.shape == (3000,)
    assert hourly.signals(params) is full_signal  # served from the cache, not recomputed for the slice
    rows = part.rows
    assert rows[:, 10].min() >= 5000 and rows[:, 11].max() <= 7999


def test_funding_history_becomes_the_events_the_loop_charges(hourly):
    ts = hourly.ts
    series = pd.Series([0.001, -0.002], index=[ts[8], ts[16] + 1])  # the second between two bar opens
    data = backtester.MarketData(hourly.candles, "BTCUSDT", "1h", funding=series)
    span = (data.funding_ts >= ts[8]) & (data.funding_ts <= ts[16] + 1)
    assert data.funding_ts[span].tolist() == [ts[8], ts[16] + 1]  # inside the history's span: its own events
    assert data.funding_rates[span].tolist() == [0.001, -0.002]
    assert np.isnan(data.funding_rates[data.funding_ts > ts[16] + 1]).all()  # after it: the 8h grid
    assert (hourly.funding_ts % (8 * 3_600_000) == 0).all() and np.isnan(hourly.funding_rates).all()


def test_params_vector_carries_instrument_and_costs():
    params = config.fixed_params("LONG")
    p = backtester.build_core_params(params, 3_600_000, "SOLUSDT")
    assert p[core.P_QTY_STEP] == 0.1 and p[core.P_TAKER] == config.TAKER_FEE and p[core.P_N_LEVELS] == 3
    with pytest.raises(config.ConfigError, match="exceeds SOLUSDT's maximum"):
        backtester.build_core_params({**params, "leverage": 100.0}, 3_600_000, "SOLUSDT",
                                     instrument={**config.INSTRUMENTS["SOLUSDT"], "max_leverage": 50.0})


def test_cli_backtest_writes_the_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main.main(["backtest", "--strategy", "LONG", "--start", "2018-01-01", "--end", "2018-06-30",
                      "--timeframe", "1h", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    trades = pd.read_csv(out / "trades.csv")
    assert metrics["num_trades"] == len(trades)
    assert metrics["final_equity"] == pytest.approx(config.CAPITAL + trades["pnl"].sum(), rel=1e-9)
    assert "Return" in capsys.readouterr().out


def test_cli_params_file_and_csv_source(tmp_path):
    frame = load_sample("ETHUSDT", "1h").iloc[:3000]
    csv = tmp_path / "eth.csv"
    frame.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(csv, index=False)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"risk_per_trade": 0.01, "macro_ema_period": 100}))
    code = main.main(["backtest", "--source", f"csv:{csv}", "--symbol", "ETHUSDT", "--timeframe", "1h",
                      "--params", str(params), "--out", str(tmp_path / "o")])
    assert code == 0


@pytest.mark.parametrize(("argv", "fragment"), [
    (["backtest", "--strategy", "NOPE"], "unknown strategy 'NOPE'; accepted: LONG, SHORT, SCALP"),
    (["backtest", "--symbol", "SOLUSDT"], "the bundled sample has no 'SOLUSDT'"),
    (["backtest", "--source", "csv:/nonexistent.csv"], "CSV file not found"),
    (["backtest", "--start", "2025-01-01"], "no candles between 2025-01-01"),
    (["backtest", "--params", "/nonexistent.json"], "params file not found"),
])
def test_cli_user_errors_exit_2_with_one_line(argv, fragment, capsys):
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_cli_bad_params_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for content, fragment in (({"risk_per_trade": 2.0}, "outside the allowed range"),
                              ({"risk_per_trade": "high"}, "must be a number"),
                              ({"min_amount_precision": 0.1}, "no longer used"),
                              ({"riskk": 0.1}, "unknown parameter 'riskk'")):
        bad.write_text(json.dumps(content))
        assert main.main(["backtest", "--params", str(bad)]) == 2
        assert fragment in capsys.readouterr().err
    bad.write_text("{not json")
    assert main.main(["backtest", "--params", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_unknown_timeframe_exits_2():
    with pytest.raises(SystemExit) as info:
        main.main(["backtest", "--timeframe", "7m"])
    assert info.value.code == 2


@pytest.fixture(scope="module")
def micro_coin_csv(tmp_path_factory):
    """The ETH sample's shape scaled to a coin priced around 1e-6 USDT, as a CSV of an unknown symbol."""
    frame = load_sample("ETHUSDT", "1h").iloc[:4000]
    scale = 1e-6 / frame["close"].iloc[0]
    scaled = frame.assign(**{k: frame[k] * scale for k in ("open", "high", "low", "close")})
    path = tmp_path_factory.mktemp("micro") / "micro.csv"
    scaled.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(path, index=False)
    return path


def test_unknown_symbol_needs_its_instrument(micro_coin_csv, capsys):
    # Before: a silent 0.01 tick and 0.001 step for any symbol not in config.INSTRUMENTS.
    code = main.main(["backtest", "--source", f"csv:{micro_coin_csv}", "--symbol", "MICROUSDT", "--timeframe", "1h"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no instrument info for 'MICROUSDT'" in err and "--tick and --qty-step" in err


def test_a_tick_too_coarse_for_the_price_is_refused_in_one_line(micro_coin_csv, tmp_path, capsys):
    # With a 0.01 tick every stop of a 1e-6 coin rounds to zero: refused, exit 2, one line.
    argv = ["backtest", "--source", f"csv:{micro_coin_csv}", "--symbol", "MICROUSDT", "--timeframe", "1h",
            "--qty-step", "1", "--out", str(tmp_path / "o")]
    assert main.main([*argv, "--tick", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rounds onto it or to zero on the tick 0.01" in err
    # The instrument's real tick: it trades.
    assert main.main([*argv, "--tick", "1e-10"]) == 0
    trades = pd.read_csv(tmp_path / "o" / "trades.csv")
    assert len(trades) > 10


def test_tick_flags_are_checked(capsys):
    with pytest.raises(SystemExit) as stopped:
        main.main(["backtest", "--tick", "-1"])
    assert stopped.value.code == 2
    assert "argument --tick: -1 is refused; accepted: a number in (0, 1000000]" in capsys.readouterr().err
    with pytest.raises(config.ConfigError, match=r"--qty-step 0 is refused; accepted: a number in \(0, 1000000\]"):
        config.instrument_for("BTCUSDT", qty_step=0)  # the same bound for callers of the library


def test_a_trial_with_stops_finer_than_the_tick_is_a_constraint_not_a_crash():
    import optimizer

    frame = load_sample("BTCUSDT", "1h").iloc[:3000]
    datasets = optimizer.Datasets(lambda tf: frame, "BTCUSDT", {**config.INSTRUMENTS["BTCUSDT"], "tick_size": 1000.0})
    result = optimizer.evaluate(datasets, {**config.fixed_params("LONG"), "timeframe": "1h"}, (0.5, 0.15))
    assert result.score == optimizer.SCORE_CONSTRAINT and "rounds onto it" in result.fail_reason
