"""Strategy files: the built-in three, a user's own, the checks at load, the signal cache, exit rules.

The user strategy of the README ("Write your own strategy") is copied from the README itself, so
the example and what is tested cannot drift apart.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import backtester
import config
import core
import gates
import interactive_tester as it
import main
import optimizer
import run_live
import strategy_loader
from data_fetcher import load_sample

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3_600_000
# 2020-01-01 01:00 UTC: no funding time falls in the first hours of these scenarios
T0 = pd.Timestamp("2020-01-01 01:00", tz="UTC")
FLAT_COSTS = {"taker_fee": 0.001, "maker_fee": 0.0005, "slippage": 0.0, "funding_rate": 0.0}
FINE = {"qty_step": 0.01, "min_qty": 0.01, "tick_size": 0.01, "min_notional": 1.0, "max_leverage": 100.0}


def write_strategy(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def candles(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    index = pd.DatetimeIndex([T0 + pd.Timedelta(hours=k) for k in range(len(rows))], name="time").as_unit("ms")
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close"], index=index)
    return frame.assign(volume=1.0)


# ----------------------------------------------------------------------------------------------
# The built-in strategies
# ----------------------------------------------------------------------------------------------
def test_builtin_library_maps_keys_to_files():
    for key, name, side in (("LONG", "long_only", "long"), ("SHORT", "short_only", "short"),
                            ("SCALP", "short_scalp", "both")):
        strategy = config.strategy(key)
        assert (strategy.name, strategy.side) == (name, side)
        assert strategy.path == ROOT / config.STRATEGY_LIBRARY[key]
        assert config.fixed_params(key)["mode"] == name
        assert config.strategy(name) is strategy  # a NAME resolves too
    assert config.fixed_params("LONG")["signal_exit_after_breakeven"] is True
    assert config.fixed_params("SCALP")["signal_exit_after_breakeven"] is False


def test_scalp_goes_long_where_the_long_rule_holds():
    # medium EMA period 2 (alpha 2/3, seeded with the first close), Bollinger period 2 at 0.5 deviations
    # (with two bars the close sits exactly one population sd from the middle, beyond a 0.5 sd band).
    # closes 100, 110, 120, 130, 128, 118, 105, 100, 102
    # EMA: 100, 106.667, 115.556, 125.185, 127.062, 121.021, 110.340, 103.447, 102.482
    # bar 3: middle (120 + 130)/2 = 125, close 130 above it (and above the EMA 125.185: no short rule)
    #        -> SIG_EXIT_LONG
    # bar 4: middle 129, sd 1, lower 128.5: close 128 below the lower band and above the EMA 127.062 ->
    #        the long rule -> SIG_LONG (the old code wrote SIG_EXIT_SHORT over it, as 128 < middle)
    # bar 6: middle 111.5, close 105 below it, above no band -> SIG_EXIT_SHORT
    # bar 8: middle 101, sd 1, upper 101.5: close 102 above the upper band and below the EMA 102.482 ->
    #        the short rule -> SIG_SHORT
    closes = [100, 110, 120, 130, 128, 118, 105, 100, 102]
    data = backtester.MarketData(candles([(c, c, c, c) for c in closes]), "BTCUSDT", "1h")
    params = config.validate_params({"medium_ema_period": 2, "bb_period": 2, "bb_dev": 0.5},
                                    base=config.fixed_params("SCALP"))
    signal = data.signals(params)
    assert signal[3] == core.SIG_EXIT_LONG
    assert signal[4] == core.SIG_LONG
    assert signal[6] == core.SIG_EXIT_SHORT
    assert signal[8] == core.SIG_SHORT


def test_scalp_trades_both_ways_on_the_sample():
    data = backtester.MarketData(load_sample("BTCUSDT", "30m"), "BTCUSDT", "30m")
    params = config.fixed_params("SCALP")
    signal = data.signals(params)
    close = data.close
    ema = data.indicator("ema", params["medium_ema_period"])
    _, _, lower = data.indicator("bollinger", params["bb_period"], params["bb_dev"])
    meets_long_rule = (close > ema) & (close < lower)
    assert meets_long_rule.sum() > 10
    assert np.array_equal(signal == core.SIG_LONG, meets_long_rule)
    sides = backtester.backtest(data, params).trades["side"]
    assert (sides == "long").sum() > 5 and (sides == "short").sum() > 5


# ----------------------------------------------------------------------------------------------
# A strategy decides its own exits
# ----------------------------------------------------------------------------------------------
RSI_REVERSAL = '''
    import numpy as np

    import core
    from config import ParamSpec

    NAME = "rsi_reversal"
    SIDE = "long"
    SIGNAL_EXIT_AFTER_BREAKEVEN = False
    PARAMS = {
        "rsi_period": ParamSpec("int", 2, 2, 50, doc="Wilder RSI period"),
        "entry_rsi": ParamSpec("float", 30.0, 0.0, 100.0, doc="enter when RSI is below"),
        "exit_rsi": ParamSpec("float", 75.0, 0.0, 100.0, doc="exit when RSI is above"),
    }
    FIXED_PARAMS = {"timeframe": "1h", "risk_per_trade": 0.01, "atr_period": 2, "atr_stop_multiplier": 2.0,
                    "breakeven_atr_multiplier": 0.0, "tp_atr_multiplier": 0.0, "trail_atr_multiplier": 50.0,
                    "trail_early_activation_atr_multiplier": 50.0, "aggressive_trail_atr_multiplier": 49.0,
                    "profit_lock_trigger_pct": 0.0, "partial_take_profit": False, "max_hold_hours": 0,
                    "stagnation_atr_threshold": 0.0}
    PARAM_GRID = {"exit_rsi": (60.0, 90.0)}


    def signals(data, params):
        rsi = data.indicator("rsi", params["rsi_period"])
        signal = np.zeros(len(data), dtype=np.int8)
        signal[rsi > params["exit_rsi"]] = core.SIG_EXIT_LONG
        signal[rsi < params["entry_rsi"]] = core.SIG_LONG
        return signal
'''

RSI_BARS = [(100.0, 100.5, 99.5, 100.0), (100.0, 100.2, 97.8, 98.0), (98.5, 99.2, 98.3, 99.0),
            (99.0, 101.2, 98.9, 101.0), (101.5, 101.8, 100.9, 101.2), (101.2, 101.6, 100.8, 101.3)]


@pytest.fixture(scope="module")
def rsi_reversal(tmp_path_factory):
    return strategy_loader.load_file(write_strategy(tmp_path_factory.mktemp("rsi"), "rsi_reversal", RSI_REVERSAL))


@pytest.mark.parametrize("after_breakeven", [False, True])
def test_exit_when_rsi_above_75_with_breakeven_off(rsi_reversal, after_breakeven):
    # RSI(2), Wilder alpha 1/2, the first bar counting as no change:
    #   bar 1: loss 2 -> up 0, down 1 -> RSI 0 < 30: long signal, entry at bar 2's open 98.5
    #   bar 2: gain 1 -> up 0.5, down 0.5 -> RSI 50
    #   bar 3: gain 2 -> up 1.25, down 0.25 -> RS 5 -> RSI 100 - 100/6 = 83.3 > 75: exit signal
    # ATR(2) at bar 1 = mean(1.0, 2.4) = 1.7; stop 2 ATR = 3.4 below 98 -> 94.6; qty 100 / 3.4 = 29.41.
    # Breakeven is off (multiplier 0). With the exit signal free of breakeven the trade closes at bar
    # 4's open 101.5: gross 3.0 * 29.41 = 88.23, fees 29.41 * (98.5 + 101.5) * 0.001 = 5.882, pnl 82.348.
    # With it tied to breakeven it never fires: the trade runs to the end (closed at the last close 101.3).
    data = backtester.MarketData(candles(RSI_BARS), "BTCUSDT", "1h")
    params = config.validate_params({"signal_exit_after_breakeven": after_breakeven}, base=rsi_reversal.fixed_params())
    trades = backtester.backtest(data, params, cost_overrides=FLAT_COSTS, instrument=FINE).trades
    assert len(trades) == 1
    trade = trades.iloc[0]
    assert trade["qty"] == pytest.approx(29.41) and trade["entry_price"] == pytest.approx(98.5)
    if after_breakeven:
        assert trade["exit_reason"] == "end_of_data" and trade["exit_price"] == pytest.approx(101.3)
    else:
        assert trade["exit_reason"] == "signal_exit" and trade["exit_price"] == pytest.approx(101.5)
        assert trade["pnl"] == pytest.approx(82.348)


# ----------------------------------------------------------------------------------------------
# The signal cache and what a strategy's signals may read
# ----------------------------------------------------------------------------------------------
def test_two_values_of_a_new_param_give_two_signal_arrays(rsi_reversal):
    # The trap of the old SIGNAL_KEYS: a param left out of the cache key got the other value's signals.
    data = backtester.MarketData(load_sample("BTCUSDT", "1h").iloc[:3000], "BTCUSDT", "1h")
    low = config.validate_params({"exit_rsi": 60.0}, base=rsi_reversal.fixed_params())
    high = config.validate_params({"exit_rsi": 90.0}, base=rsi_reversal.fixed_params())
    first, second = data.signals(low), data.signals(high)
    assert not np.array_equal(first, second)
    assert np.array_equal(first, rsi_reversal.compute(data, low))
    assert np.array_equal(second, rsi_reversal.compute(data, high))
    assert data.signals({**low, "risk_per_trade": 0.3}) is first  # a management param does not recompute


def test_reading_an_undeclared_param_is_refused(tmp_path, capsys):
    write_strategy(tmp_path, "sneaky", '''
        import numpy as np

        NAME = "sneaky"
        SIDE = "long"
        SIGNAL_EXIT_AFTER_BREAKEVEN = False


        def signals(data, params):
            return np.zeros(len(data), dtype=np.int8) + (params["atr_period"] > 100)
    ''')
    assert main.main(["backtest", "--strategy-path", str(tmp_path), "--strategy", "sneaky"]) == 2
    err = capsys.readouterr().err
    assert "strategy 'sneaky' reads parameter 'atr_period' without declaring it" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Checks at load: the look-ahead guard and the declarations
# ----------------------------------------------------------------------------------------------
PEEKS = {
    "peek_next_bar": "np.where(np.roll(data.close, -1) > data.close, core.SIG_LONG, 0)",
    "peek_rarely": "np.where(pd.Series(data.close).shift(-3).to_numpy() > data.close * 1.03, core.SIG_LONG, 0)",
    "peek_centered": "np.where(data.close > pd.Series(data.close).rolling(21, center=True).mean().to_numpy(), "
                     "core.SIG_LONG, 0)",
}


@pytest.mark.parametrize("name", sorted(PEEKS))
def test_look_ahead_guard_refuses_a_strategy_that_reads_the_future(tmp_path, capsys, name):
    write_strategy(tmp_path, name, f'''
        import numpy as np
        import pandas as pd

        import core

        NAME = "{name}"
        SIDE = "long"
        SIGNAL_EXIT_AFTER_BREAKEVEN = False


        def signals(data, params):
            return {PEEKS[name]}
    ''')
    assert main.main(["backtest", "--strategy-path", str(tmp_path), "--strategy", name]) == 2
    err = capsys.readouterr().err
    assert f"strategy '{name}'" in err and "reads the future" in err and err.count("\n") == 1
    assert name not in strategy_loader.loaded()


def shifted_strategy(folder: Path, name: str, grid: str) -> Path:
    """A strategy whose ``lag`` (declared -10..50, fixed 0) is how many bars back the close it compares with
    lies, and whose ``price`` choice is the close or the next bar's: a negative lag or "next" reads the future."""
    return write_strategy(folder, name, f'''
        import numpy as np
        import pandas as pd

        import core
        from config import ParamSpec

        NAME = "{name}"
        SIDE = "long"
        SIGNAL_EXIT_AFTER_BREAKEVEN = False
        PARAMS = {{"lag": ParamSpec("int", 0, -10, 50, doc="bars back"),
                  "price": ParamSpec("choice", "close", choices=("close", "next"), doc="the price compared")}}
        FIXED_PARAMS = {{"lag": 1}}
        PARAM_GRID = {grid}


        def signals(data, params):
            close = pd.Series(data.close)
            price = close.shift(-1) if params["price"] == "next" else close
            return np.where(price > close.shift(params["lag"]), core.SIG_LONG, 0)


        def lookback(params):
            return abs(params["lag"])
    ''')


@pytest.mark.parametrize(("name", "grid", "fragment"), [
    ("lag_grid", "{'lag': (-5, 20)}", "reads the future with lag = -5, the low end of PARAM_GRID['lag'] = (-5, 20)"),
    ("price_grid", "{'price': ['close', 'next']}",
     "reads the future with price = 'next', a choice of PARAM_GRID['price'] = ['close', 'next']"),
])
def test_look_ahead_guard_checks_every_end_of_the_grid(tmp_path, capsys, name, grid, fragment):
    """The fixed params (lag 1, the close) read the past only; the search could pick a value that reads the
    future, so the file is refused naming the param, the value and what is accepted."""
    shifted_strategy(tmp_path, name, grid)
    assert main.main(["backtest", "--strategy-path", str(tmp_path), "--strategy", name]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "when the history ends at bar" in err and err.count("\n") == 1, err
    assert "accepted: a grid whose every value keeps the signal of bar t on bars <= t" in err
    assert name not in strategy_loader.loaded()


def test_look_ahead_guard_checks_params_files_and_prod_configs(tmp_path, capsys, monkeypatch):
    """A grid of lags 0..20 passes at load; a params file or prod config with lag -3 (inside the declared range)
    is refused by every command that loads one, a lag of 7 is not."""
    folder = tmp_path / "strategies"
    shifted_strategy(folder, "lag_file", "{'lag': (0, 20), 'price': ['close']}")
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text(json.dumps({"mode": "lag_file", "lag": -3}))
    good.write_text(json.dumps({"mode": "lag_file", "lag": 7}))
    refusal = (f"{bad}: parameter 'lag' = -3 makes strategy 'lag_file' read the future: its signal at bar ")
    accepted = "accepted: values of 'lag' that keep the signal of bar t on bars <= t, as its fixed 1 does"
    flags = ["--strategy-path", str(folder)]
    assert main.main(["backtest", *flags, "--strategy", "lag_file", "--params", str(bad),
                      "--out", str(tmp_path / "bt")]) == 2
    err = capsys.readouterr().err
    assert refusal in err and accepted in err and err.count("\n") == 1, err
    assert run_live.main(["--paper", "--replay", "sample", "--side", "long", *flags, "--params", str(bad),
                          "--out", str(tmp_path / "paper")]) == 2
    err = capsys.readouterr().err
    assert refusal in err and accepted in err and err.count("\n") == 1, err
    assert config.load_params_file(good)["lag"] == 7
    (tmp_path / "prod_config_long.py").write_text(
        f"PARAMS = {{**{config.fixed_params('lag_file')!r}, 'lag': -3}}\n")
    monkeypatch.setattr(config, "BASE_DIR", tmp_path)
    with pytest.raises(config.ConfigError, match=r"prod_config_long.py: parameter 'lag' = -3 makes strategy"):
        run_live.load_prod_params("long")
    # the tester's set refuses it too, and keeps the params it had
    data = backtester.MarketData(load_sample("BTCUSDT", "1h").iloc[:500], "BTCUSDT", "1h")
    session = it.Session(data, {**config.fixed_params("lag_file"), "symbol": "BTCUSDT"}, 3, tmp_path / "tester",
                         tmp_path / "prod", Console(record=True, width=300, color_system=None))
    it.run_lines(session, ["set lag -3", "set lag 7"])
    text = session.console.export_text()
    assert "set: parameter 'lag' = -3 makes strategy 'lag_file' read the future" in text and "lag = 7" in text
    assert session.history[-1]["lag"] == 1 and session.params["lag"] == 7


BAD_FILES = [
    ("NAME = 'no side'\n", "NAME = 'no side' must be a name"),
    ("NAME = 'x1'\nSIDE = 'up'\n", "SIDE = 'up'; accepted: long, short, both"),
    ("NAME = 'x2'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = 'yes'\n", "SIGNAL_EXIT_AFTER_BREAKEVEN = 'yes'"),
    ("from config import ParamSpec\nNAME = 'x3'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "PARAMS = {'atr_period': ParamSpec('int', 5, 1, 9, doc='d')}\n", "declares 'atr_period', a common parameter"),
    ("from config import ParamSpec\nNAME = 'x4'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "PARAMS = {'width': ParamSpec('int', 50, 1, 9, doc='d')}\n", "'width' = 50 is outside the allowed range"),
    ("NAME = 'x5'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n", "no function signals(data, params)"),
    ("NAME = 'x6'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\nFIXED_PARAMS = {'risk_per_trade': 3}\n"
     "def signals(data, params):\n    return 0\n", "'risk_per_trade' = 3.0 is outside the allowed range"),
    ("import numpy as np\nNAME = 'x7'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "def signals(data, params):\n    return np.full(len(data), -1)\n", "signal code -1 at bar 0 is not one a long"),
    ("import numpy as np\nNAME = 'x8'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "def signals(data, params):\n    return np.zeros(len(data))\n", "returned float64 values"),
    ("NAME = 'x9'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "def signals(data, params):\n    return data.nothing\n",
     "AttributeError: 'MarketData' object has no attribute 'nothing' (line 5)"),
    ("NAME = 'x10'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\nPARAM_GRID = {'bb_dev': (1.0, 2.0)}\n"
     "def signals(data, params):\n    return 0\n", "parameter 'bb_dev' belongs to strategy short_scalp, not to x10"),
    ("NAME = 'long_only'\nSIDE = 'long'\nSIGNAL_EXIT_AFTER_BREAKEVEN = True\n"
     "def signals(data, params):\n    return 0\n", "NAME 'long_only' is already the strategy of"),
    ("def broken(:\n", "could not be loaded: SyntaxError"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES)
def test_a_bad_strategy_file_is_refused_in_one_line(tmp_path, capsys, content, fragment):
    (tmp_path / "bad.py").write_text(content)
    assert main.main(["backtest", "--strategy-path", str(tmp_path / "bad.py")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(tmp_path / "bad.py") in err and err.count("\n") == 1, err


def test_params_of_one_strategy_are_not_anothers():
    with pytest.raises(config.ConfigError, match="'bb_dev' belongs to strategy short_scalp, not to long_only"):
        config.validate_params({"bb_dev": 2.0}, base=config.fixed_params("LONG"))
    short = config.validate_params({"mode": "short_only"}, base=config.fixed_params("LONG"))
    assert short == config.fixed_params("SHORT")  # a params set naming another strategy lands on its fixed params
    with pytest.raises(config.ConfigError, match="unknown strategy 'nope'; loaded: "):
        config.validate_params({"mode": "nope"})


def test_a_params_file_names_the_strategy_file_it_needs(tmp_path):
    # A fresh strategy that nothing loaded yet: the params file's strategy_file brings it in.
    path = write_strategy(tmp_path / "elsewhere", "always_long", '''
        import numpy as np

        import core

        NAME = "always_long"
        SIDE = "long"
        SIGNAL_EXIT_AFTER_BREAKEVEN = True


        def signals(data, params):
            return np.full(len(data), core.SIG_LONG)
    ''')
    doc = tmp_path / "best_params.json"
    doc.write_text(json.dumps({"strategy_file": str(path), "params": {"mode": "always_long", "risk_per_trade": 0.01}}))
    assert "always_long" not in strategy_loader.loaded()
    assert config.load_params_file(doc)["mode"] == "always_long"
    doc.write_text(json.dumps({"strategy_file": str(tmp_path / "gone.py"), "params": {"mode": "gone"}}))
    with pytest.raises(config.ConfigError, match="strategy 'gone' is not loaded and its file .*gone.py does not"):
        config.load_params_file(doc)


# ----------------------------------------------------------------------------------------------
# The README's own example through every command
# ----------------------------------------------------------------------------------------------
def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"```python\n(# my_strategies/donchian_breakout\.py\n.*?)```", text, re.S)
    assert found, "the README lost its 'write your own strategy' example"
    return found.group(1)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("my_strategies")
    (folder / "donchian_breakout.py").write_text(readme_example())
    return folder


def test_readme_example_is_about_40_lines():
    assert 30 <= len(readme_example().splitlines()) <= 50


@pytest.mark.slow
def test_user_strategy_through_every_command(user_folder, tmp_path, capsys):
    """Backtest, a 50-trial optimize, validate, the tester and its export, and a paper replay --compare."""
    flags = ["--strategy-path", str(user_folder), "--strategy", "donchian_breakout", "--symbol", "BTCUSDT"]
    assert main.main(["backtest", *flags, "--out", str(tmp_path / "bt")]) == 0
    metrics = json.loads((tmp_path / "bt" / "metrics.json").read_text())
    assert metrics["num_trades"] > 50 and metrics["exit_reasons"]["signal_exit"] > 0

    # the re-optimizing walk-forward and the hold-out's random baseline on small budgets (their defaults: 200 a
    # fold and up to 20,000 draws)
    assert main.main(["optimize", *flags, "--trials", "50", "--start", "2018-06-01", "--out", str(tmp_path / "opt"),
                      "--storage", f"journal:{tmp_path / 's.journal'}", "--no-export", "--fold-trials", "10",
                      "--baseline-draws", "100"]) == 0
    best_path = tmp_path / "opt" / "best_params.json"
    best = json.loads(best_path.read_text())
    assert best["params"]["mode"] == "donchian_breakout"
    assert best["strategy_file"] == str(user_folder / "donchian_breakout.py")
    trials = pd.read_csv(tmp_path / "opt" / "trials.csv")
    assert len(trials) == 50 and trials["param_entry_period"].nunique() > 10

    assert main.main(["validate", *flags, "--params", str(best_path), "--out", str(tmp_path / "val")]) == 0
    assert json.loads((tmp_path / "val" / "validation.json").read_text())["params"]["mode"] == "donchian_breakout"

    data = backtester.MarketData(load_sample("BTCUSDT", "1h"), "BTCUSDT", "1h")
    session = it.Session(data, {**config.fixed_params("donchian_breakout"), "symbol": "BTCUSDT"}, 3,
                         tmp_path / "tester", tmp_path / "prod", Console(record=True, width=200, color_system=None))
    it.run_lines(session, ["set entry_period 30", "set bb_dev 2", "run", "save long"])
    text = session.console.export_text()
    assert "entry_period = 30" in text and "'bb_dev' belongs to strategy short_scalp" in text
    exported = (tmp_path / "prod" / "prod_config_long.py").read_text()
    assert f"STRATEGY_FILE = {str(user_folder / 'donchian_breakout.py')!r}" in exported
    capsys.readouterr()

    # the paper replay runs in a fresh process without --strategy-path: best_params.json names the file
    replay = tmp_path / "replay.csv"
    frame = load_sample("BTCUSDT", "1h").loc["2018-06-01":].iloc[:1800]
    frame.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(replay, index=False)
    result = subprocess.run([sys.executable, "run_live.py", "--paper", "--replay", str(replay), "--side", "long",
                             "--symbol", "BTCUSDT", "--timeframe", "1h", "--params", str(best_path),
                             "--out", str(tmp_path / "paper"), "--history-bars", "600", "--compare"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"long: (\d+) paper trades, (\d+) backtest trades: EQUAL", result.stdout)
    assert found and int(found.group(1)) > 3, result.stdout


def test_prod_config_of_a_user_strategy_loads_for_the_live_trader(user_folder, tmp_path, monkeypatch, capsys):
    strategy = strategy_loader.add_path(str(user_folder))[0]
    params = {**strategy.fixed_params(), "symbol": "BTCUSDT"}
    gates.export_prod_config(params, {"score": 1.0}, tmp_path)
    monkeypatch.setattr(config, "BASE_DIR", tmp_path)
    assert run_live.load_prod_params("long") == params
    assert capsys.readouterr().err == ""
    path = tmp_path / "prod_config_long.py"
    path.write_text(path.read_text().replace(strategy.sha256, "0" * 64))
    run_live.load_prod_params("long")
    assert "changed since the export" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Many symbols
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    """AAAUSDT and BBBUSDT from the sample; CCCUSDT a file with an impossible candle."""
    folder = tmp_path_factory.mktemp("csv")
    for symbol, source in (("AAAUSDT", "BTCUSDT"), ("BBBUSDT", "ETHUSDT")):
        frame = load_sample(source, "1h").loc["2018-06-01":]
        frame.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(
            folder / f"{symbol}.csv", index=False)
    bad = pd.read_csv(folder / "AAAUSDT.csv")
    bad.loc[10, "high"] = bad.loc[10, "low"] - 1.0
    bad.to_csv(folder / "CCCUSDT.csv", index=False)
    return f"csv:{folder}/{{symbol}}.csv"


@pytest.mark.slow
def test_three_symbols_with_one_bad_source(user_folder, three_sources, tmp_path, capsys):
    flags = ["--strategy-path", str(user_folder), "--strategy", "donchian_breakout", "--symbols",
             "AAAUSDT,BBBUSDT,CCCUSDT", "--source", three_sources, "--tick", "0.01", "--qty-step", "0.001"]
    # validation in two worker processes (they load the user's strategy folder too)
    assert main.main(["validate", *flags, "--folds", "3", "--jobs", "2", "--out", str(tmp_path / "val")]) == 2
    rows = pd.read_csv(tmp_path / "val" / "summary.csv").set_index("symbol")
    assert list(rows.index) == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    assert list(rows["status"]) == ["ok", "ok", "failed"]
    assert "high below open/close" in rows.loc["CCCUSDT", "error"]
    for symbol in ("AAAUSDT", "BBBUSDT"):
        validation = json.loads((tmp_path / "val" / symbol / "validation.json").read_text())
        assert rows.loc[symbol, "trades"] == validation["aggregate"]["test_trades"]
        assert rows.loc[symbol, "sharpe"] == pytest.approx(validation["aggregate"]["mean_test_sharpe"])
    err = capsys.readouterr().err
    assert "error: CCCUSDT (validate): " in err

    # the default pipeline, one params set searched for the symbols that load (the worst symbol's score)
    assert main.main([*flags, "--trials", "12", "--folds", "3", "--jobs", "1", "--out", str(tmp_path / "run"),
                      "--storage", f"journal:{tmp_path / 'p.journal'}", "--fold-trials", "6",
                      "--baseline-draws", "60"]) == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["search_symbols"] == "together" and summary["searched"] == ["AAAUSDT", "BBBUSDT"]
    stages = {(r["symbol"], r["stage"]): r for r in summary["rows"]}
    assert stages[("CCCUSDT", "fixed")]["status"] == stages[("CCCUSDT", "optimize")]["status"] == "failed"
    for symbol in ("AAAUSDT", "BBBUSDT"):
        assert stages[(symbol, "optimize")]["status"] == "ok" and stages[(symbol, "optimize")]["dsr"] is not None
        assert (tmp_path / "run" / "optuna" / symbol / "validation.json").exists()
        assert (tmp_path / "run" / "fixed" / symbol / "report.html").exists()
    best = json.loads((tmp_path / "run" / "optuna" / "best_params.json").read_text())
    assert best["symbols"] == ["AAAUSDT", "BBBUSDT"] and best["aggregate"] == "min"
    assert not (config.BASE_DIR / "prod_config_long.py").exists() or "AAAUSDT" not in \
        (config.BASE_DIR / "prod_config_long.py").read_text()


def test_aggregate_objective_is_the_worst_symbols_score():
    # Two symbols scoring 1.5 and -80 (tier 3): the group scores min = -80 and names the failing symbol.
    class Member:
        def __init__(self, symbol):
            self.symbol = symbol

    group = optimizer.DatasetGroup([Member("AAA"), Member("BBB")])
    ok = optimizer.Evaluation(1.5, "", 9, {"sharpe": 1.0}, {"sharpe": 1.2})
    bad = optimizer.Evaluation(-80.0, "robustness: test/train Sharpe 0.10", 3, {"sharpe": 2.0}, {"sharpe": 0.2})
    combined = group.combine([ok, bad])
    assert (combined.score, combined.tier) == (-80.0, 3)
    assert combined.fail_reason == "BBB: robustness: test/train Sharpe 0.10"
    assert combined.test == {"sharpe": 0.2}
    assert optimizer.DatasetGroup([Member("A"), Member("B")], "mean").combine([ok, bad]).score == pytest.approx(-39.25)
    with pytest.raises(config.ConfigError, match="aggregate objective 'max'"):
        optimizer.DatasetGroup([Member("A")], "max")


def test_config_symbols_is_the_default_list(monkeypatch, tmp_path, user_folder):
    monkeypatch.setattr(config, "SYMBOLS", ["BTCUSDT", "XRPUSDT"])
    example = str(user_folder / "donchian_breakout.py")  # --strategy also takes a strategy file's path
    assert main.main(["backtest", "--strategy", example, "--start", "2019-01-01", "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "summary.csv")
    assert list(rows["symbol"]) == ["BTCUSDT", "XRPUSDT"] and set(rows["status"]) == {"ok"}
    for symbol in ("BTCUSDT", "XRPUSDT"):
        metrics = json.loads((tmp_path / symbol / "metrics.json").read_text())
        assert rows.set_index("symbol").loc[symbol, "trades"] == metrics["num_trades"]


@pytest.mark.parametrize(("argv", "fragment"), [
    (["backtest", "--symbol", "BTCUSDT", "--symbols", "ETHUSDT"], "give --symbol or --symbols, not both"),
    (["backtest", "--symbols", "BTCUSDT,,ETHUSDT"], "expected symbols separated by commas"),
    (["backtest", "--symbols", "BTCUSDT,BTCUSDT"], "names BTCUSDT more than once"),
    (["backtest", "--symbols", "BTCUSDT,ETHUSDT", "--source", "csv:/x.csv"], "put {symbol} in the path"),
    (["backtest", "--strategy-path", "/nonexistent-folder"], "--strategy-path /nonexistent-folder: no such file"),
])
def test_symbol_and_strategy_flag_errors(argv, fragment, capsys):
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
