"""Metrics on hand-made curves, and the files and report a backtest leaves."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import metrics
import reporting

HOUR = 3_600_000
DAY = 24 * HOUR
NAMES = ("stop_loss", "take_profit")


def daily_curve():
    # Daily bars over 3 days: equity 11,000, 9,900, 10,890 from 10,000.
    ts = np.array([0, DAY, 2 * DAY], dtype=np.int64)
    equity = np.array([11_000.0, 9_900.0, 10_890.0])
    position = np.array([1.0, 0.0, -2.0])
    return ts, equity, position


def test_curve_metrics_by_hand():
    ts, equity, position = daily_curve()
    pnl = np.array([300.0, -100.0, -50.0, 740.0])
    m = metrics.compute_metrics(ts, DAY, equity, position, pnl, np.array([1.0, 2.0, 3.0, 4.0]),
                                np.array([0.5, 0.0, -0.25, 0.0]), np.zeros(4, np.int64),
                                np.array([HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR]), np.array([1, 0, 0, 1]),
                                10_000.0, NAMES)
    # daily returns +10%, -10%, +10%; mean 1/30, sample std 0.11547; Sharpe = 0.2887 * sqrt(365)
    returns = np.array([0.1, -0.1, 0.1])
    assert m["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(365))
    # downside deviation sqrt(0.01 / 3)
    assert m["sortino"] == pytest.approx(returns.mean() / math.sqrt(0.01 / 3) * math.sqrt(365))
    assert m["max_drawdown"] == pytest.approx(9_900 / 11_000 - 1)  # -10%
    assert m["total_return"] == pytest.approx(0.089)
    assert m["cagr"] == pytest.approx(1.089 ** (365.25 / 3) - 1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    assert m["profit_factor"] == pytest.approx(1040 / 150)
    assert m["win_rate"] == 0.5
    assert m["expectancy"] == pytest.approx(222.5)
    assert m["exposure"] == pytest.approx(2 / 3)
    assert m["avg_hold_hours"] == pytest.approx(3.0)
    assert (m["total_fees"], m["total_funding"]) == (10.0, 0.25)
    assert m["exit_reasons"] == {"stop_loss": 2, "take_profit": 2}


def test_profit_factor_without_losses_is_inf_and_null_in_json(tmp_path):
    ts, equity, position = daily_curve()
    m = metrics.compute_metrics(ts, DAY, equity, position, np.array([5.0]), np.zeros(1), np.zeros(1),
                                np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(1, np.int64), 10_000.0, NAMES)
    assert m["profit_factor"] == math.inf
    reporting.write_metrics_json(tmp_path / "m.json", m)
    assert json.loads((tmp_path / "m.json").read_text())["profit_factor"] is None
    none = np.zeros(0, np.int64)
    empty = metrics.compute_metrics(ts, DAY, equity, position, np.zeros(0), np.zeros(0), np.zeros(0), none, none,
                                    none, 10_000.0, NAMES)
    assert (empty["profit_factor"], empty["num_trades"], empty["win_rate"]) == (0.0, 0, 0.0)


def test_hourly_bars_group_into_utc_days():
    # 48 hourly bars, equity 10,000 through the first day's last close, 10,500 after: returns 0, +5%.
    ts = np.arange(48, dtype=np.int64) * HOUR
    equity = np.where(np.arange(48) < 23, 10_000.0, 10_500.0)
    _, _, sharpe, _ = metrics.curve_stats(ts, equity, np.zeros(48), 10_000.0, HOUR)
    # the bar opening 23:00 closes at 24:00, the first day's last close: day 1 = +5%, day 2 = 0
    returns = np.array([0.05, 0.0])
    assert sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(365))


def test_backtest_files_and_report(tmp_path):
    ts, equity, position = daily_curve()
    equity_df = metrics.equity_frame(ts, DAY, equity, position, 10_000.0)
    assert equity_df["drawdown"].tolist() == pytest.approx([0.0, -0.1, -0.01])
    trades = metrics.trades_frame(np.array([0]), np.array([DAY]), np.array([1]), np.array([2.0]), np.array([100.0]),
                                  np.array([110.0]), np.array([0.3]), np.array([0.1]), np.array([19.6]),
                                  np.array([1]), NAMES)
    candles = pd.DataFrame({"open": [100.0, 110, 105], "high": [111.0, 112, 110], "low": [99.0, 104, 100],
                            "close": [110.0, 105, 108], "volume": [1.0, 1, 1]},
                           index=pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True), name="time"))
    m = metrics.compute_metrics(ts, DAY, equity, position, np.array([19.6]), np.array([0.3]), np.array([0.1]),
                                np.array([0]), np.array([DAY]), np.array([1]), 10_000.0, NAMES)
    paths = reporting.write_backtest_outputs(tmp_path / "out", trades, equity_df, m, candles, "Test <run> & co")
    rows = pd.read_csv(paths["trades"])
    assert list(rows.columns) == ["entry_time", "exit_time", "side", "qty", "entry_price", "exit_price", "fees",
                                  "funding", "pnl", "exit_reason"]
    assert rows.iloc[0]["entry_time"] == "1970-01-01T00:00:00Z" and rows.iloc[0]["exit_reason"] == "take_profit"
    curve = pd.read_csv(paths["equity"])
    assert list(curve.columns[:3]) == ["time", "equity", "drawdown"]
    assert curve.iloc[0]["time"] == "1970-01-02T00:00:00Z"  # the first bar's close
    page = paths["report"].read_text()
    assert "Test &lt;run&gt; &amp; co" in page and "plotly" in page.lower()
    assert '<script src="http' not in page and "<script src='http" not in page


def test_summary_prints_key_figures():
    console = Console(record=True, width=100)
    ts, equity, position = daily_curve()
    m = metrics.compute_metrics(ts, DAY, equity, position, np.array([5.0, -2.0]), np.zeros(2), np.zeros(2),
                                np.zeros(2, np.int64), np.ones(2, np.int64), np.array([0, 1]), 10_000.0, NAMES)
    reporting.print_summary(m, "Summary", console)
    text = console.export_text()
    assert "8.90%" in text and "-10.00%" in text and "stop_loss 1, take_profit 1" in text
