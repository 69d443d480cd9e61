"""A scripted session of the interactive tester, checked against direct calls."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import backtester
import config
import interactive_tester as it
import walkforward
from data_fetcher import load_candles

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data():
    return backtester.MarketData(load_candles("sample", "BTCUSDT", "1h", start="2018-01-01"), "BTCUSDT", "1h")


def new_session(data, tmp_path):
    params = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    console = Console(record=True, width=200, color_system=None)
    return it.Session(data, params, 4, tmp_path / "out", tmp_path / "prod", console)


def test_scripted_session(data, tmp_path):
    session = new_session(data, tmp_path)
    it.run_lines(session, ["set risk_per_trade 0.02", "run", "set risk_per_trade 0.9", "set riskk 1",
                           "set atr_period 30", "undo", "sweep atr_stop_multiplier 3 4 2", "save long", "exit",
                           "run"])
    text = session.console.export_text()
    expected = walkforward.stability_across_periods(data, {**session.start, "risk_per_trade": 0.02}, 4)["aggregate"]
    row = next(line for line in text.splitlines() if "│" in line and line.split("│")[1].strip() == "test Sharpe")
    assert row.split("│")[2].strip() == f"{expected['mean_test_sharpe']:.2f}"
    assert f"{expected['compounded_test_return']:+.1%}" in text
    assert "new best" in text
    assert "outside the allowed range [0.0005, 0.5]" in text
    assert "unknown parameter 'riskk'" in text
    assert session.params["atr_period"] == session.start["atr_period"]  # undone
    assert session.params["risk_per_trade"] == 0.02
    for value in (3.0, 4.0):
        params = {**session.params, "atr_stop_multiplier": value}
        agg = walkforward.stability_across_periods(data, params, 4)["aggregate"]
        assert f"{agg['compounded_test_return']:+.1%}" in text
    assert "best test Sharpe" in text
    assert text.count("> run") == 1  # nothing after exit
    saved = tmp_path / "prod" / "prod_config_long.py"
    spec = importlib.util.spec_from_file_location("saved", saved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS["risk_per_trade"] == 0.02 and module.PARAMS["mode"] == "long_only"


def test_undo_reset_and_refusals(data, tmp_path):
    session = new_session(data, tmp_path)
    it.run_lines(session, ["undo", "reset", "set breakeven_atr_multiplier 2", "run",
                           "set breakeven_atr_multiplier 2.5", "reset best", "set tp_atr_multiplier x",
                           "save short", "set position_scaling maybe"])
    text = session.console.export_text()
    assert "nothing to undo" in text and "no run yet: nothing is best" in text
    assert session.params["breakeven_atr_multiplier"] == 2.0  # reset to the best run
    assert "takes a number" in text and "use save long" in text and "takes true or false" in text
    it.run_lines(session, ["reset start"])
    assert session.params == session.start


def test_stdin_session_without_prompts(tmp_path):
    script = "set macro_ema_period 150\nrun\nbest\nexit\n"
    result = subprocess.run([sys.executable, "interactive_tester.py", "--folds", "3", "--prod-dir", str(tmp_path),
                             "--out", str(tmp_path / "o")], input=script, capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "> set macro_ema_period 150" in result.stdout and "grtr>" not in result.stdout
    assert "walk-forward" in result.stdout and "best: test Sharpe" in result.stdout
