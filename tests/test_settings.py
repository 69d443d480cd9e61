"""Every setting of config.py and every flag of run_live.py and watchdog.py has a type and a range: a bad value
is one line naming it, the value and what is accepted, with exit code 2 — including a value edited into
config.py, whichever command imports it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import config
import run_live
import watchdog

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def run(script: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": "1:x", "TELEGRAM_CHAT_ID": "1", "TELEGRAM_API_URL": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("flag", "value", "accepted"), [
    ("--reconcile-seconds", "-1", "a number of seconds in [1, 86400]"),   # made 858 REST calls in 40 s
    ("--stale-seconds", "-5", "a number of seconds in [1, 3600]"),        # made 186 reconnects in 30 s
    ("--price-max-age", "-1", "a number of seconds in (0, 3600]"),        # switched the tick guard off
    ("--tick-grace-seconds", "0", "a number of seconds in (0, 3600]"),
    ("--http-timeout", "nan", "a number of seconds in (0, 300]"),
    ("--history-bars", "0", "a whole number in [1, 10000000]"),
    ("--max-capital", "-100", "a number of USDT > 0"),
])
def test_run_live_flags_out_of_range_are_one_line(flag, value, accepted, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_live.main([flag, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: run_live.py: argument {flag}: {value} is refused; accepted: {accepted} (--help lists the " \
                  "flags)\n"


def test_the_flags_the_issue_names_are_refused_by_the_real_command():
    line = one_error_line(run(ROOT / "run_live.py", "--side", "long", "--reconcile-seconds", "-1"))
    assert "argument --reconcile-seconds: -1 is refused; accepted: a number of seconds in [1, 86400]" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--compare"], "--compare only work with --paper"),
    (["--paper", "--replay", "x.csv", "--mainnet"], "--mainnet and --fresh-state do not apply"),
    (["--paper", "--replay", "x.csv", "--max-capital", "500"], "--max-capital does not apply to --paper"),
    (["--symbol", "btc/usdt"], "--symbol: parameter 'symbol' = 'btc/usdt' is not a Bybit symbol"),
    (["--side", "sideways"], "argument --side: invalid choice: 'sideways'"),
])
def test_run_live_flag_values_and_combinations_are_one_line(args, expected, tmp_path, capsys):
    params = tmp_path / "long.json"
    params.write_text('{"mode": "long_only"}')
    try:
        code = run_live.main(["--params", str(params), "--side", "long", *args])
    except SystemExit as stopped:
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(("args", "expected"), [
    (["--bogus"], "watchdog.py: unrecognized arguments: --bogus"),
    (["--", "--side", "long"], "flags after -- are the restarted trader's: they need --restart"),
    (["--restart", "--", "--dir", "elsewhere"], "--dir cannot be a restarted trader's flag"),
    (["--restart", "--", "--mainnet"], "cannot be asked to type its confirmation: give -- --mainnet --yes"),
    (["--restart", "--", "--mainnet", "--yes"], "--mainnet --yes needs GRTR_CONFIRM_MAINNET=<account UID>"),
    (["--dir", "no-such-folder"], "--dir no-such-folder is not a folder"),
])
def test_watchdog_flags_are_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, value in (("TELEGRAM_BOT_TOKEN", "1:x"), ("TELEGRAM_CHAT_ID", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GRTR_CONFIRM_MAINNET", raising=False)
    try:
        code = watchdog.main(args)
    except SystemExit as stopped:
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


# ----------------------------------------------------------------------------------------------
# config.py edited by hand
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the code (not of data or results): its config.py is edited by each test."""
    folder = tmp_path_factory.mktemp("checkout")
    for path in ROOT.glob("*.py"):
        shutil.copy(path, folder)
    shutil.copytree(ROOT / "strategies", folder / "strategies")
    return folder


def edited(checkout: Path, old: str, new: str, name: str = "config.py") -> Path:
    """The checkout with one edit in ``name`` (config.py or a strategy file); the other files as they are."""
    for path in ("config.py", "strategies/long_only.py"):
        text = (ROOT / path).read_text()
        if path == name:
            assert old in text
            text = text.replace(old, new, 1)
        (checkout / path).write_text(text)
    return checkout


TAKER_LINE = next(n for n, line in enumerate((ROOT / "config.py").read_text().splitlines(), 1)
                  if line.startswith("TAKER_FEE = 0.00055"))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("TAKER_FEE = 0.00055", "TAKER_FEE = -0.05", "config.py: TAKER_FEE = -0.05 is refused; accepted: a number in [0, "
                                                 "0.05]"),
    ("CAPITAL = 10_000.0", "CAPITAL = -10000", "config.py: CAPITAL = -10000 is refused; accepted: a number > 0"),
    ('"leverage": _f(10.0,', '"leverage": _f(500.0,', "config.py: PARAM_SPECS default: parameter 'leverage' = 500.0 "
                                                     "is outside the allowed range [1.0, 100.0]"),
    ('"reconcile_seconds": 60.0,', '"reconcile_seconds": -1,',
     "config.py: TRADER_SETTINGS['reconcile_seconds'] = -1 is refused; accepted: a number of seconds in [1, 86400]"),
    ("TAKER_FEE = 0.00055", "TAKER_FEE = 0.00055.1",
     f"config.py line {TAKER_LINE}: invalid syntax: fix the edit there"),
    ("TAKER_FEE = 0.00055", "TAKER_FEE = taker",
     f"config.py line {TAKER_LINE}: NameError: name 'taker' is not defined"),
], ids=["taker-fee", "capital", "param", "trader-setting", "syntax", "name"])
def test_a_bad_edit_of_config_py_is_one_line_in_every_command(checkout, old, new, expected):
    folder = edited(checkout, old, new)
    commands = [("main.py", "backtest"), ("run_live.py",), ("watchdog.py",), ("interactive_tester.py",)]
    if new not in ("CAPITAL = -10000",):
        commands = commands[:1]  # one command per edit; CAPITAL goes through all four
    for script, *args in commands:
        line = one_error_line(run(folder / script, *args, cwd=folder))
        assert line.startswith(f"error: {expected}"), (script, line)


def test_a_bad_edit_of_a_strategy_file_is_one_line(checkout):
    folder = edited(checkout, '"atr_period": 23,', '"atr_period": -5,', "strategies/long_only.py")
    line = one_error_line(run(folder / "main.py", "backtest", cwd=folder))
    assert line.startswith("error: ") and "long_only.py" in line and "'atr_period' = -5" in line, line


# ----------------------------------------------------------------------------------------------
# Every setting has its range (in-process: each value just outside is refused, naming the setting)
# ----------------------------------------------------------------------------------------------
def bound_tables():
    yield from ((name, bound, None) for name, bound in config._MONEY_BOUNDS.items())
    yield from ((name, bound, None) for name, bound in config._SEARCH_BOUNDS.items())
    yield from (("OPTUNA_SETTINGS", bound, key) for key, bound in config._OPTUNA_BOUNDS.items())
    yield from (("OBJECTIVE_FILTERS", bound, key) for key, bound in config._FILTER_BOUNDS.items())
    yield from (("TRADER_SETTINGS", bound, key) for key, bound in config.TRADER_SETTING_BOUNDS.items())
    yield from (("INSTRUMENT_DEFAULT", bound, key) for key, bound in config._INSTRUMENT_DEFAULT_BOUNDS.items())
    yield "STOP_REJECTIONS_TO_CLOSE", config.STOP_REJECTIONS_BOUND, None


def outside(bound: config.Bound) -> list:
    values = ["10", None, True, float("nan")]
    if bound.low is not None:
        values.append(bound.low if bound.low_open else bound.low - 1)
    if bound.high is not None:
        values.append(bound.high if bound.high_open else bound.high + 1)
    if bound.whole:
        values.append((bound.low or 0) + 1.5)
    return values


VALIDATORS = (config._validate_basics, config._validate_optimization, config._validate_trader)


@pytest.mark.parametrize(("name", "bound", "key"), list(bound_tables()),
                         ids=[f"{n}[{k}]" if k else n for n, _, k in bound_tables()])
def test_every_setting_refuses_a_value_outside_its_range(monkeypatch, name, bound, key):
    for value in outside(bound):
        if key is None:
            monkeypatch.setattr(config, name, value)
        else:
            monkeypatch.setitem(getattr(config, name), key, value)
        shown = f"{name}['{key}']" if key else name
        with pytest.raises(config.ConfigError, match=re.escape(f"{shown} = {value!r} is refused; accepted: ")):
            for validate in VALIDATORS:
                validate()
    monkeypatch.undo()
    for validate in VALIDATORS:
        validate()  # the shipped values pass


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("ENABLE_OPTUNA", "yes", "ENABLE_OPTUNA = 'yes' is refused; accepted: True or False"),
    ("SYMBOLS", [], "SYMBOLS = [] is refused"),
    ("SYMBOLS", ["btcusdt"], "parameter 'symbol' = 'btcusdt' is not a Bybit symbol"),
    ("DEFAULT_SOURCE", "csv:", "DEFAULT_SOURCE = 'csv:' is refused; accepted: 'sample', 'bybit' or 'csv:PATH'"),
    ("DATA_DIR", "data", "DATA_DIR = 'data' is refused; accepted: a pathlib.Path"),
    ("RISK_GOVERNOR", ((0.1, 0.75), (0.4, 0.25)), "rows from the deepest drawdown down"),
    ("RISK_GOVERNOR", ((0.4, 1.5),), "RISK_GOVERNOR factor = 1.5 is refused"),
    ("STOP_TRIGGER_BY", "Mark", "STOP_TRIGGER_BY = 'Mark' is refused; accepted: LastPrice, MarkPrice, IndexPrice"),
    ("INSTRUMENTS", {"BTCUSDT": {"qty_step": 0.001}}, "INSTRUMENTS['BTCUSDT']['max_leverage'] is missing"),
    ("LEASE_STALE_SECONDS", 0, "LEASE_STALE_SECONDS = 0 is refused"),
    ("PBO_BLOCKS", 15, "PBO_BLOCKS = 15 is refused; accepted: an even whole number in [2, 20]"),
    ("OPTUNA_SETTINGS", {**config.OPTUNA_SETTINGS, "sampler": "cma"},
     "OPTUNA_SETTINGS['sampler'] = 'cma' is refused; accepted: tpe, cmaes, random"),
    ("MAX_CAPITAL", 0, "MAX_CAPITAL = 0 is refused; accepted: a number of USDT > 0"),
    ("MAX_CAPITAL", "5000", "MAX_CAPITAL = '5000' is refused"),
])
def test_settings_of_other_kinds_are_checked(monkeypatch, name, value, expected):
    monkeypatch.setattr(config, name, value)
    with pytest.raises(config.ConfigError, match=re.escape(expected)):
        for validate in VALIDATORS:
            validate()


def test_grids_and_watchdog_settings_are_checked_at_import():
    with pytest.raises(config.ConfigError, match=r"PARAM_GRID of LONG: '?atr_period'? = \(-5, 10\)|atr_period"):
        config.check_grid_entry("atr_period", (-5, 10), "PARAM_GRID of LONG")
    with pytest.raises(config.ConfigError, match="watchdog setting 'merge_edit_interval_s' = -1 is refused"):
        config.validate_watchdog({**config.WATCHDOG_SETTINGS, "merge_edit_interval_s": -1},
                                 config.WATCHDOG_ALERT_LEVELS)
