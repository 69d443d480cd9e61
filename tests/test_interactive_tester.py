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


def test_square_brackets_in_help_and_usage_survive(data, tmp_path):
    session = new_session(data, tmp_path)
    it.run_lines(session, ["help", "reset sideways", "sweep", "set"])
    text = session.console.export_text()
    assert "reset [best|start]: go back" in text  # rich took [best|start] for markup and dropped it
    assert "error: usage: reset [best|start]" in text
    assert "usage: sweep NAME FROM TO STEPS" in text and "usage: set NAME VALUE" in text


def test_misspelt_names_get_did_you_mean(data, tmp_path):
    session = new_session(data, tmp_path)
    it.run_lines(session, ["set riskk_per_trade 0.01", "sweep atr_perod 10 20 2", "rn", "frobnicate"])
    text = session.console.export_text()
    assert "unknown parameter 'riskk_per_trade'; did you mean risk_per_trade? (show lists them all)" in text
    assert "did you mean atr_period" in text
    assert "unknown command 'rn'; did you mean run?" in text
    assert "unknown command 'frobnicate'; help lists the commands" in text
    assert "accepted:" not in text and "partial_level_4" not in text  # not all 36 names, at most 3 close ones
    assert session.params == session.start


def test_changes_are_in_the_figures_own_unit():
    # a return from +10.0% to +15.0% is +5.0 percentage points (it was printed as +0.05 beside "+15.0%")
    assert it.change(0.15, {"r": 0.10}, "r", "percent") == "[green]+5.0 pp[/]"
    assert it.change(-0.30, {"r": -0.25}, "r", "percent") == "[red]-5.0 pp[/]"  # a deeper drawdown is worse
    assert it.change(1.25, {"s": 1.5}, "s", "ratio") == "[red]-0.25[/]"
    assert it.change(120, {"test_trades": 100}, "test_trades", "count") == "+20"
    assert it.change(0.1, None, "r", "percent") == "-" and it.change(0.1, {"r": 0.1}, "r", "percent") == "="
    assert it.figure(0.1234, "percent") == "+12.3%" and it.figure(1.234, "ratio") == "1.23"


def test_run_table_units_agree(data, tmp_path):
    session = new_session(data, tmp_path)
    it.run_lines(session, ["run", "set atr_stop_multiplier 3.5", "run"])
    rows = [line.split("│") for line in session.console.export_text().splitlines() if "│" in line]
    for label in ("test return", "worst test DD"):
        value, previous, best = (cell.strip() for cell in [r for r in rows if r[1].strip() == label][-1][2:5])
        assert value.endswith("%") and previous.endswith(" pp") or previous == "="
        assert best.endswith(" pp") or best == "="


def test_a_cliff_is_a_drop_never_a_rise():
    # Sharpe 0.0, 1.5, 1.6, -0.5 at 1..4: range 2.1, a cliff falls by >= 1.05 from one value to the next,
    # walking away from the best (3): 2 -> 1 falls 1.5, 3 -> 4 falls 2.1; 1 -> 2 is a rise, not a cliff
    lines = it.robustness([1, 2, 3, 4], [0.0, 1.5, 1.6, -0.5])
    cliff = next(line for line in lines if line.startswith("cliff"))
    assert cliff == "cliff (falls off): 2 -> 1 (1.50 -> 0.00), 3 -> 4 (1.60 -> -0.50)"
    rising = it.robustness([1, 2, 3], [0.0, 0.1, 2.0])  # best at the end: 3 -> 2 falls 1.9 of 2.0
    assert "cliff (falls off): 3 -> 2 (2.00 -> 0.10)" in rising
    assert not any(line.startswith("cliff") for line in it.robustness([1, 2, 3, 4, 5], [0.0, 0.45, 0.9, 1.35, 1.8]))


def test_ctrl_c_cancels_the_line_and_asks_before_leaving(data, tmp_path):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    session = new_session(data, tmp_path)
    with create_pipe_input() as keys:
        keys.send_text("set atr_period 30\x03")   # typed, then Ctrl-C: the line is dropped
        keys.send_text("\x03n\r")                 # a second Ctrl-C asks; "n" stays
        keys.send_text("set atr_period 20\r")
        keys.send_text("\x03\x03y\r")             # twice and "y": leaves
        keys.send_text("set atr_period 40\r")     # never read
        it.run_prompt(session, keys, DummyOutput())
    text = session.console.export_text()
    assert session.params["atr_period"] == 20
    assert text.count("line cancelled") == 2 and "atr_period = 30" not in text
