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
    (["--paper", "--replay", "x.csv", "--mainnet"], "--mainnet does not apply"),
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


# ----------------------------------------------------------------------------------------------
# main.py, bybit_sim.py, interactive_tester.py: every flag in range, every --out usable, before any work
# ----------------------------------------------------------------------------------------------
def refused(entry, argv: list[str], capsys) -> str:
    """The one line a command's main(argv) prints when it refuses ``argv`` with exit code 2."""
    try:
        code = entry(argv)
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, captured.err)
    assert captured.out == "", captured.out  # refused before any work: nothing loaded, nothing printed
    return lines[0]


@pytest.mark.parametrize(("argv", "expected"), [
    (["backtest", "--days", "0"], "argument --days: 0 is refused; accepted: a whole number of days in [1, 36500]"),
    (["backtest", "--tick", "-1"], "argument --tick: -1 is refused; accepted: a number in (0, 1000000]"),
    (["backtest", "--qty-step", "nan"], "argument --qty-step: nan is refused; accepted: a number in (0, 1000000]"),
    (["backtest", "--jobs", "0"], "argument --jobs: 0 is refused; accepted: a whole number in [1, 1024]"),
    (["optimize", "--seed", "-1"], "argument --seed: -1 is refused; accepted: a whole number in [0, 4294967295]"),
    (["optimize", "--folds", "1"], "argument --folds: 1 is refused; accepted: a whole number in [2, 1000]"),
    (["validate", "--jobs", "2.5"], "argument --jobs: 2.5 is refused; accepted: a whole number in [1, 1024]"),
    (["export-candles", "--days", "-5"], "argument --days: -5 is refused"),
    (["download", "--days", "0"], "argument --days: 0 is refused"),
    (["--symbols", ""], "main.py: argument --symbols: '' is refused; accepted: a non-empty value"),  # ran BTCUSDT
    (["backtest", "--symbol", ""], "main.py backtest: argument --symbol: '' is refused; accepted: a non-empty value"),
    (["backtest", "--out="], "argument --out: '' is refused"),
    (["backtest", "--symbols", "btc/usdt,ETHUSDT"], "--symbols btc/usdt,ETHUSDT: parameter 'symbol' = 'btc/usdt' is "
                                                    "not a Bybit symbol"),  # was one failed symbol among the runs
])
def test_main_flags_out_of_range_are_one_line(argv, expected, capsys):
    import main

    assert expected in refused(main.main, argv, capsys)


def a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


@pytest.mark.parametrize("command", [["backtest"], ["optimize", "--trials", "2"], ["validate"], []])
def test_an_out_with_a_file_in_its_path_is_refused_before_any_work(command, tmp_path, capsys):
    import main

    out = a_file(tmp_path) / "x"  # was NotADirectoryError's traceback once the run wrote its files
    line = refused(main.main, [*command, "--out", str(out)], capsys)
    assert line == f"error: --out {out} is refused: {out.parent} exists and is not a folder; accepted: a folder, " \
                   "or a path where one can be made, that this user can write"


def test_an_unusable_prod_dir_is_refused_before_the_search(tmp_path, capsys):
    import main

    prod = a_file(tmp_path) / "prod"
    line = refused(main.main, ["optimize", "--out", str(tmp_path / "o"), "--prod-dir", str(prod)], capsys)
    assert f"--prod-dir {prod} is refused: {prod.parent} exists and is not a folder" in line
    assert not (tmp_path / "o").exists()


def test_an_out_that_cannot_be_written_is_refused(tmp_path, capsys):
    import main
    from live_helpers import read_only_folder

    with read_only_folder(tmp_path / "locked") as locked:
        line = refused(main.main, ["backtest", "--out", str(locked / "x")], capsys)
    assert line == f"error: --out {locked / 'x'} is refused: {locked} cannot be written here (its permissions, or " \
                   "a read-only file system); accepted: a folder, or a path where one can be made, that this user " \
                   "can write"


def test_the_real_commands_refuse_an_unusable_out_in_one_line(tmp_path):
    out = a_file(tmp_path) / "x"
    line = one_error_line(run(ROOT / "main.py", "backtest", "--out", str(out)))
    assert line.startswith(f"error: --out {out} is refused: {out.parent} exists and is not a folder")
    params = tmp_path / "long.json"
    params.write_text('{"mode": "long_only"}')
    line = one_error_line(run(ROOT / "run_live.py", "--paper", "--replay", "sample", "--params", str(params),
                              "--out", str(out)))
    assert line.startswith(f"error: --out {out} is refused: {out.parent} exists and is not a folder")


def test_run_live_refuses_an_unusable_folder_before_any_work(tmp_path, monkeypatch, capsys):
    params = tmp_path / "long.json"
    params.write_text('{"mode": "long_only"}')
    folder = a_file(tmp_path) / "x"
    line = refused(run_live.main, ["--paper", "--replay", "sample", "--params", str(params), "--dir", str(folder)],
                   capsys)
    assert line.startswith(f"error: --dir {folder} is refused: {folder.parent} exists and is not a folder")
    monkeypatch.setenv("BYBIT_API_KEY", "k")
    monkeypatch.setenv("BYBIT_API_SECRET", "s")
    monkeypatch.setenv("BYBIT_REST_URL", "http://127.0.0.1:9")  # never asked: the folder is refused first
    line = refused(run_live.main, ["--params", str(params), "--side", "long", "--dir", str(folder)], capsys)
    assert line.startswith(f"error: --dir {folder} is refused")


@pytest.mark.parametrize(("args", "expected"), [
    (["--yes"], "--yes is refused without --mainnet: it only skips the typed confirmation of mainnet"),
    (["--tick", "0.1"], "--tick only work with --paper"),
    (["--paper", "--replay", "x.csv", "--check"], "--check does not apply"),
    (["--paper", "--replay", "x.csv", "--dry-run", "--fresh-state"], "--fresh-state and --dry-run do not apply"),
    (["--paper", "--replay", "x.csv", "--qty-step", "-1"], "argument --qty-step: -1 is refused; accepted: a number "
                                                           "in (0, 1000000]"),
    (["--symbol", ""], "argument --symbol: '' is refused"),  # was taken for the prod config's symbol
])
def test_run_live_refuses_flags_that_would_be_ignored(args, expected, tmp_path, capsys):
    params = tmp_path / "long.json"
    params.write_text('{"mode": "long_only"}')
    assert expected in refused(run_live.main, ["--params", str(params), "--side", "long", *args], capsys)


@pytest.mark.parametrize("side", [[], ["--side", "long"]])
def test_a_params_file_of_a_strategy_trading_both_ways_says_so(side, tmp_path, capsys):
    params = tmp_path / "scalp.json"
    params.write_text('{"mode": "short_scalp"}')  # with --side both it said "give --params FILE"
    line = refused(run_live.main, ["--paper", "--replay", "sample", "--params", str(params), *side], capsys)
    assert line == f"error: {params} holds short_scalp, a strategy that trades both ways (SIDE = \"both\"): it runs " \
                   "in backtests only; accepted: a params file of a long or a short strategy (SIDE = \"long\" or " \
                   "\"short\")"


def test_a_watchdog_restart_refuses_yes_without_mainnet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, value in (("TELEGRAM_BOT_TOKEN", "1:x"), ("TELEGRAM_CHAT_ID", "1")):
        monkeypatch.setenv(name, value)
    line = refused(watchdog.main, ["--restart", "--", "--side", "long", "--yes"], capsys)
    assert "--yes is refused without --mainnet" in line


@pytest.fixture(scope="module")
def foo_candles(tmp_path_factory):
    """40 hourly bars of FOOUSDT, a symbol with no instrument info (the sample's bars under another name)."""
    from data_fetcher import load_sample, write_candles

    return write_candles(load_sample("BTCUSDT", "1h").iloc[:40], tmp_path_factory.mktemp("foo") / "FOOUSDT_1h.csv")


def sim_parse(argv: list[str]) -> None:
    """bybit_sim's own parser (main parses with it first): a refused flag never reaches the serving loop."""
    import bybit_sim

    bybit_sim.build_parser().parse_args(argv)


@pytest.mark.parametrize(("flag", "value", "accepted"), [
    ("--faults", "2", "a number in [0, 1]"),
    ("--partial-rate", "5", "a number in [0, 1]"),
    ("--mark-offset", "nan", "a number in (-1, 1)"),
    ("--ws-drop-every", "-3", "a whole number of bars in [0, 1000000000]"),
    ("--speed", "-1", "a number of bars a second in (0, 1000000]"),
    ("--speed", "0", "a number of bars a second in (0, 1000000]"),
    ("--port", "99999", "a whole number in [0, 65535]"),  # was a thread's traceback and a 30 s wait
    ("--balance", "-1", "a number of USDT in [0, 1000000000000]"),
    ("--history-bars", "0", "a whole number in [1, 10000000]"),
    ("--seed", "-1", "a whole number in [0, 4294967295]"),
    ("--tick", "0", "a number in (0, 1000000]"),
    ("--qty-step", "-0.1", "a number in (0, 1000000]"),
])
def test_bybit_sim_flags_out_of_range_are_one_line(flag, value, accepted, capsys):
    line = refused(sim_parse, ["--replay", "sample", flag, value], capsys)
    assert line == f"error: bybit_sim.py: argument {flag}: {value} is refused; accepted: {accepted} (--help lists " \
                   "the flags)"


def test_the_real_bybit_sim_refuses_a_share_above_one():
    line = one_error_line(run(ROOT / "bybit_sim.py", "--replay", "sample", "--faults", "2"))  # it was served
    assert line == "error: bybit_sim.py: argument --faults: 2 is refused; accepted: a number in [0, 1] (--help " \
                   "lists the flags)"


def test_every_number_flag_of_bybit_sim_has_a_bound():
    import bybit_sim

    numbers = {flag for action in bybit_sim.build_parser()._actions for flag in action.option_strings
               if action.type is not None}
    assert numbers == set(bybit_sim.SIM_FLAG_BOUNDS)


def test_bybit_sim_refuses_flags_that_contradict_or_are_empty(foo_candles, capsys):
    import bybit_sim

    quick = ["--replay", str(foo_candles), "--symbol", "FOOUSDT", "--tick", "0.1", "--qty-step", "0.001",
             "--history-bars", "39"]  # one bar to replay: if accepted, the speed clock ends it at once
    line = refused(bybit_sim.main, [*quick, "--lockstep", "--speed", "1000"], capsys)
    assert line == "error: --lockstep and --speed 1000 are refused together; accepted: one of them (lockstep is " \
                   "the default)"
    line = refused(bybit_sim.main, ["--replay", "sample", "--symbol", "btc"], capsys)
    assert line.startswith("error: --symbol: parameter 'symbol' = 'btc' is not a Bybit symbol")
    line = refused(sim_parse, ["--replay", "sample", "--api-secret", ""], capsys)
    assert line.startswith("error: bybit_sim.py: argument --api-secret: '' is refused")


def test_bybit_sims_advice_for_an_unknown_symbol_names_its_own_flags(foo_candles, capsys):
    import bybit_sim

    line = refused(bybit_sim.main, ["--replay", str(foo_candles), "--symbol", "FOOUSDT", "--history-bars", "39"],
                   capsys)
    assert "no instrument info for 'FOOUSDT'" in line
    advised = line.replace("`python main.py download --symbol FOOUSDT`", "")  # main.py's flag, named with main.py
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", advised))
    assert named == {"--tick", "--qty-step"}, line
    assert named <= set(bybit_sim.build_parser()._option_string_actions)  # it named flags bybit_sim lacked


def test_bybit_sim_refuses_history_that_leaves_nothing_to_replay(foo_candles, capsys):
    import bybit_sim

    line = refused(bybit_sim.main, ["--replay", str(foo_candles), "--symbol", "FOOUSDT", "--tick", "0.1",
                                    "--qty-step", "0.001", "--history-bars", "40"], capsys)
    assert line == "error: --history-bars 40 is refused; accepted: 1 to 39 (the candles hold 40 1h bars)"


def test_a_port_in_use_is_one_line_at_once():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(run(ROOT / "bybit_sim.py", "--replay", "sample", "--port", str(port)))
    assert line == f"error: --port {port} is refused: 127.0.0.1:{port} cannot be served (Address already in use); " \
                   "accepted: a free port, or 0 for any free one"


@pytest.mark.parametrize(("args", "expected"), [
    (["--folds", "1"], "argument --folds: 1 is refused; accepted: a whole number in [2, 1000]"),
    (["--bogus"], "interactive_tester.py: unrecognized arguments: --bogus"),  # was argparse's usage block
    (["--symbol", "x"], "--symbol: parameter 'symbol' = 'x' is not a Bybit symbol"),
])
def test_interactive_tester_flags_are_one_line(args, expected, capsys):
    import interactive_tester

    assert expected in refused(interactive_tester.main, args, capsys)


@pytest.mark.parametrize("flag", ["--out", "--prod-dir"])
def test_interactive_tester_refuses_an_unusable_folder_at_start(flag, tmp_path, capsys):
    import interactive_tester

    folder = a_file(tmp_path) / "x"  # was a traceback at the first plot or save
    line = refused(interactive_tester.main, [flag, str(folder)], capsys)
    assert line.startswith(f"error: {flag} {folder} is refused: {folder.parent} exists and is not a folder")
