"""report.html and its figures: size, offline plotly.js, markers, folds, history, importances, the
console's PNG, and the page as a real headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import optuna
import pandas as pd
import plotly.offline
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

import backtester
import config
import reporting
from data_fetcher import load_candles

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2024-01-01", tz="UTC")


@pytest.fixture(scope="module")
def sample_run():
    """LONG's fixed params on the hourly sample: 17,514 bars and 1,173 trade rows."""
    data = backtester.MarketData(load_candles("sample", "BTCUSDT", "1h"), "BTCUSDT", "1h")
    return backtester.backtest(data, {**config.fixed_params("LONG"), "symbol": "BTCUSDT", "timeframe": "1h"})


def fold_result():
    fold = {"fold": 1, "train_bars": [0, 10], "test_bars": [12, 20], "train_start": "2017-10-01 00:00:00+00:00",
            "test_start": "2018-02-07 18:00:00+00:00", "test_end": "2018-06-07 17:00:00+00:00",
            "train_total_return": 0.14397, "train_sharpe": 0.9503, "train_max_drawdown": -0.34002,
            "train_num_trades": 249, "train_profit_factor": 1.0773, "test_total_return": -0.26007,
            "test_sharpe": -1.8584, "test_max_drawdown": -0.36278, "test_num_trades": 153,
            "test_profit_factor": 0.7267}
    aggregate = {"folds": 1, "purge_bars": 231, "mean_test_return": -0.26007, "compounded_test_return": -0.26007,
                 "mean_test_sharpe": -1.8584, "worst_test_drawdown": -0.36278, "test_trades": 153,
                 "profitable_folds": 0, "passed": False}
    return {"folds": [fold], "aggregate": aggregate}


def search_trials(count: int = 40):
    """Trials as the search leaves them: passing ones score around 1, failed ones carry their tier."""
    rng = np.random.default_rng(7)
    space = {"a": FloatDistribution(0.0, 1.0), "b": IntDistribution(1, 50), "c": FloatDistribution(1.0, 5.0),
             "d": IntDistribution(2, 9)}
    trials = []
    for k in range(count):
        params = {"a": float(rng.uniform()), "b": int(rng.integers(1, 51)), "c": float(rng.uniform(1, 5)),
                  "d": int(rng.integers(2, 10))}
        if k % 3 == 0:
            value, attrs = 1.0 + params["a"], {"fail_reason": "", "tier": 9}
        elif k % 3 == 1:
            value, attrs = -98.0, {"fail_reason": "trades: train 3 / test 1, need 30 / 10", "tier": 1}
        else:
            value, attrs = -200.0, {"fail_reason": "constraint: tp below stop", "tier": 0}
        trials.append(optuna.trial.create_trial(params=params, distributions=space, value=value, user_attrs=attrs))
    return trials, space


def test_report_is_small_and_offline(sample_run, tmp_path, monkeypatch):
    page = reporting.write_report_html(tmp_path / "report.html", sample_run.equity, sample_run.trades,
                                       sample_run.metrics, sample_run.candles, "sample")
    # the page was 6.6 MB with plotly.js (4.8 MB) and every bar's time as a string inside it
    assert page.stat().st_size < 2_000_000
    text = page.read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in text and "http" not in text.split("<body>")[0]
    assert (tmp_path / "plotly.min.js").read_text() == plotly.offline.get_plotlyjs()
    assert "drawn at" in text  # the thinned equity curve says so
    monkeypatch.setattr(config, "REPORT_PLOTLYJS", "inline")
    (tmp_path / "one").mkdir()
    inline = reporting.write_report_html(tmp_path / "one" / "report.html", sample_run.equity, sample_run.trades,
                                         sample_run.metrics, sample_run.candles, "sample")
    assert not (tmp_path / "one" / "plotly.min.js").exists()
    assert plotly.offline.get_plotlyjs()[:2000] in inline.read_text()


def test_envelope_keeps_every_peak_and_trough():
    values = np.sin(np.arange(10_000) / 50.0)
    values[1234], values[8765] = 5.0, -5.0
    keep = reporting.envelope(values, 400)
    assert len(keep) <= 402 and keep[0] == 0 and keep[-1] == 9_999
    assert {1234, 8765} <= set(keep.tolist())
    assert values[keep].max() == 5.0 and values[keep].min() == -5.0
    assert reporting.envelope(values[:300], 400).tolist() == list(range(300))


def test_many_trades_open_on_the_summary_with_a_toggle(sample_run):
    trades = sample_run.trades
    assert len(trades) > reporting.MAX_TRADE_MARKERS
    fig, note = reporting.candles_figure(sample_run.candles, trades)
    names = [trace.name for trace in fig.data]
    assert names[:3] == ["price", "entry", "exit"] and names[3].startswith("trades per period")
    assert [trace.visible for trace in fig.data[1:]] == ["legendonly", "legendonly", None]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["trades per period", "every entry and exit"]
    assert all(len(b.args[0]["visible"]) == len(fig.data) for b in buttons)
    assert buttons[1].args[0]["visible"][1:3] == [True, True]
    summary = reporting.trade_summary(trades, sample_run.candles)
    assert summary["exits"].sum() == len(trades)
    assert summary["entries"].sum() == len(trades.drop_duplicates(["side", "entry_time"]))
    assert summary["pnl"].sum() == pytest.approx(trades["pnl"].sum())
    assert len(fig.data[3].x) == len(summary) <= reporting.SUMMARY_BUCKETS
    assert "every entry and exit" in note
    few, _ = reporting.candles_figure(sample_run.candles, trades.iloc[:50])
    assert len(few.data) == 3 and not few.layout.updatemenus and few.data[1].visible in (None, True)


def test_trade_summary_by_hand():
    candles = pd.DataFrame({"open": [9.0, 10, 10, 11], "high": [10.0, 12, 11, 15], "low": [8.0, 9, 9, 10],
                            "close": [10.0, 10, 11, 14], "volume": 1.0},
                           index=pd.DatetimeIndex([T0 + k * HOUR for k in range(4)], name="time"))
    # trade A: entry 0h, exits 1h (+5) and a partial at 2h (+3); trade B: entry 2h, exit 3h (-4)
    trades = pd.DataFrame({"entry_time": [T0, T0, T0 + 2 * HOUR],
                           "exit_time": [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR], "side": "long",
                           "pnl": [5.0, 3.0, -4.0]})
    summary = reporting.trade_summary(trades, candles, buckets=2)
    # two periods: bars 0h-1h (high 12) and 2h-3h (high 15)
    assert summary["entries"].tolist() == [1, 1]
    assert summary["exits"].tolist() == [1, 2]
    assert summary["won"].tolist() == [1, 1]
    assert summary["pnl"].tolist() == pytest.approx([5.0, -1.0])
    assert summary["high"].tolist() == [12.0, 15.0]


def test_fold_table_in_percent_with_human_names():
    table = reporting.fold_table_html(fold_result())
    assert "train_total_return" not in table and "test_profit_factor" not in table and "+00:00" not in table
    for text in ("Return", "Sharpe", "Max DD", "Trades", "PF", "2018-02-07 – 2018-06-07", "+14.4%", "-26.0%",
                 "-34.0%", "-36.3%", "0.95", "-1.86", "1.077", "0.727", "249", "153", "0 of 1 test folds profitable"):
        assert text in table, text


def test_history_puts_failed_trials_in_their_own_band():
    trials, _ = search_trials()
    fig = reporting.history_figure(trials)
    passing, best, failed = fig.data
    assert list(passing.x) == list(range(0, 40, 3))
    assert list(passing.y) == [trials[k].value for k in range(0, 40, 3)]  # their own scale: no -200 on it
    assert list(best.y) == list(np.maximum.accumulate(passing.y))
    assert passing.yaxis == "y" and failed.yaxis == "y2"
    assert set(failed.y) == {"trades", "constraint"} and len(failed.x) == 40 - len(passing.x)
    assert list(fig.layout.yaxis2.categoryarray) == ["constraint", "trades"]  # in filter order, first at the bottom


def test_every_importance_bar_is_named_and_labelled():
    trials, space = search_trials()
    fig = reporting.importance_figure(trials, space)
    bar = fig.data[0]
    assert sorted(bar.y) == sorted(space)
    assert list(fig.layout.yaxis.tickvals) == list(bar.y)  # a tick per bar, none skipped
    assert all(re.fullmatch(r"\d+\.\d%", text) for text in bar.text) and len(bar.text) == len(space)
    assert fig.layout.height >= 20 * len(space) + 100


def test_equity_png_has_title_strategy_and_drawdown(sample_run, tmp_path):
    fig = reporting.equity_png_figure(sample_run.equity, "LONG BTCUSDT 1h")
    top, bottom = fig.axes
    deepest = (sample_run.equity["equity"] / sample_run.equity["equity"].cummax() - 1).min()
    assert top.get_title().startswith("LONG BTCUSDT 1h") and f"max drawdown {deepest:.1%}" in top.get_title()
    assert bottom.get_ylabel() == "drawdown %" and bottom.collections  # the filled drawdown
    path = reporting.write_equity_png(tmp_path / "equity.png", sample_run.equity, "LONG BTCUSDT 1h")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>window.addEventListener('load', () => setTimeout(() => {"
         "document.body.dataset.overflow = document.documentElement.scrollWidth - window.innerWidth;"
         "document.body.dataset.drawn = document.querySelectorAll('.js-plotly-plot .main-svg').length;"
         "}, 500));</script></body>")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium); .ci/run "
                                               "installs it")
def test_report_renders_in_headless_chromium(sample_run, tmp_path):
    """The optimize report's sections as a browser shows them: every plot drawn, nothing wider than the window."""
    trials, space = search_trials()
    sections = [reporting.fold_table_html(fold_result()), reporting.history_figure(trials),
                reporting.importance_figure(trials, space)]
    page = reporting.write_report_html(tmp_path / "report.html", sample_run.equity, sample_run.trades,
                                       sample_run.metrics, sample_run.candles, "browser check", sections)
    page.write_text(page.read_text().replace("</body>", PROBE))
    profile = tmp_path / "profile"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--window-size=1400,2400", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert "<body" in dom, result.stderr[-2000:]
    plots = len(re.findall(r'class="plot-container plotly"', dom))
    assert plots == 5  # equity, price, exit reasons, history, importances
    assert dom.count('class="plotly-graph-div') == 5
    drawn = int(re.search(r'data-drawn="(\d+)"', dom).group(1))
    assert drawn >= plots  # each plot has its svg layers
    assert int(re.search(r'data-overflow="(-?\d+)"', dom).group(1)) <= 0  # no horizontal scroll (was 1,400 px+)
    assert "updatemenu-button" in dom  # the markers' toggle
