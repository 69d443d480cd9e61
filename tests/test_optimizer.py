"""The search space, every filter tier, the hold-out cut, determinism, resume, deduplication, worker
processes and seeds, the samplers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import config
import main
import optimizer
import study_store
from data_fetcher import load_candles

ROOT = Path(__file__).resolve().parent.parent


def test_grid_to_space_mapping():
    space, fixed = optimizer.grid_to_space({"atr_period": (10, 25), "risk_per_trade": (0.01, 0.2),
                                            "max_hold_hours": [36, 48], "leverage": [10], "tp_atr_multiplier": 9.0})
    assert space["atr_period"] == IntDistribution(10, 25)
    assert space["risk_per_trade"] == FloatDistribution(0.01, 0.2)
    assert space["max_hold_hours"] == CategoricalDistribution([36, 48])
    assert fixed == {"leverage": 10, "tp_atr_multiplier": 9.0}


@pytest.mark.parametrize(("grid", "fragment"), [
    ({"atr_period": (10, 25, 30)}, "2-tuple"),
    ({"atr_period": (25, 10)}, "low is above high"),
    ({"atr_period": (10.5, 20)}, "whole number"),
    ({"risk_per_trade": (0.01, 0.9)}, "outside the allowed range"),
    ({"atr_perod": (10, 20)}, "unknown parameter 'atr_perod'"),
    ({"max_hold_hours": []}, "empty list"),
    ({"mode": ("a", "b")}, "2-tuple of numbers"),
])
def test_bad_grid_entries_are_named(grid, fragment):
    with pytest.raises(config.ConfigError, match=fragment):
        optimizer.grid_to_space(grid)


def test_constraints_reject_before_backtesting():
    params = config.fixed_params("LONG")
    assert optimizer.check_constraints(params) is None
    assert "aggressive trail" in optimizer.check_constraints({**params, "aggressive_trail_atr_multiplier": 9.0})
    assert "take-profit" in optimizer.check_constraints({**params, "tp_atr_multiplier": 3.0})
    assert "breakeven" in optimizer.check_constraints({**params, "breakeven_atr_multiplier": 20.0})


PASSING = {"num_trades": 50, "profit_factor": 1.5, "sharpe": 1.5, "max_drawdown": -0.2, "cagr": 0.3, "calmar": 1.5,
           "exit_reasons": {"take_profit": 2, "stop_loss": 1, "time_exit": 1}}


@pytest.mark.parametrize(("tier", "train", "test", "prefix"), [
    (1, {"num_trades": 10}, {}, "trades"),
    (2, {}, {"profit_factor": 0.8}, "profitability"),
    (3, {"sharpe": 2.0}, {"sharpe": 0.4}, "robustness"),
    (4, {"max_drawdown": -0.6}, {}, "risk"),
    (5, {}, {"cagr": -0.05}, "annual_return"),
    (6, {}, {"calmar": 0.1}, "calmar"),
    (7, {}, {"num_trades": 40}, "frequency"),  # 40 trades in 24 months: 1.67 a month < 2
    (8, {"sharpe": 7.0}, {"sharpe": 7.5}, "realism"),
])
def test_each_filter_tier(tier, train, test, prefix):
    score, reason, reached = optimizer.evaluate_filters({**PASSING, **train}, {**PASSING, **test}, test_months=24.0)
    assert reached == tier and reason.startswith(prefix)
    assert -100 + 10 * (tier - 1) <= score <= -100 + 10 * (tier - 1) + 5


def test_passing_score_is_test_sharpe_minus_gap_with_exit_mix():
    score, reason, tier = optimizer.evaluate_filters({**PASSING, "sharpe": 1.8}, PASSING, test_months=12.0)
    # 1.5 - |1.8 - 1.5| + 0.25 * 2/4 (take-profits) - 0.5 * 1/4 (time exit) = 1.2 + 0.125 - 0.125
    assert (reason, tier) == ("", 9)
    assert score == pytest.approx(1.2)


@pytest.fixture(scope="module")
def datasets():
    return optimizer.Datasets(lambda tf: load_candles("sample", "BTCUSDT", tf, start="2018-01-01",
                                                      end="2019-06-30"), "BTCUSDT")


def search(datasets, tmp_path, name, seed=3, storage=None):
    return optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name=name,
                            storage=storage or f"journal:{tmp_path / 's.journal'}", seed=seed, jobs=1)


def test_same_seed_same_best(datasets, tmp_path):
    first = search(datasets, tmp_path, "a").run(30)
    second = search(datasets, tmp_path, "b").run(30)
    assert first.best.params == second.best.params
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    assert search(datasets, tmp_path, "c", seed=4).run(30).best.params != first.best.params


def test_resume_continues_the_trial_count(datasets, tmp_path):
    first = search(datasets, tmp_path, "resume").run(12)
    again = search(datasets, tmp_path, "resume")
    assert len(again.known) == 12
    result = again.run(8)
    assert sorted(t.number for t in result.trials) == list(range(20))  # none repeated, none lost
    keys = {optimizer.params_key(t.params) for t in result.trials}
    assert len(keys) == 20  # the resumed worker draws a new sequence, not the first run's again
    assert {optimizer.params_key(t.params) for t in first.trials} <= keys
    attrs = next(t.user_attrs for t in result.trials if t.user_attrs["tier"] > 0)
    assert {"fail_reason", "tier", "train_sharpe", "test_sharpe", "test_num_trades"} <= set(attrs)


def test_two_processes_share_one_sqlite_study(tmp_path):
    # Two machines on one study: each has its own worker id (a live process's id is refused).
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code = ("import optimizer, config; from data_fetcher import load_candles;"
            "d = optimizer.Datasets(lambda tf: load_candles('sample', 'BTCUSDT', tf, start='2019-01-01'), 'BTCUSDT');"
            f"optimizer.Search(d, config.fixed_params('LONG'), config.param_grid('LONG'), study_name='shared',"
            f" storage='{url}', seed=int(__import__('sys').argv[1]), worker_id=int(__import__('sys').argv[1])).run(6)")
    import optuna

    optuna.create_study(study_name="shared", storage=url, direction="maximize")  # the first machine sets it up
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)], cwd=ROOT) for seed in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 12


def test_tier_pass_rates_by_hand():
    # Tiers reached by 7 trials: 0 (constraint, left out), 1, 1, 2, 4, 9, 9 -> six backtested.
    rows = optimizer.tier_pass_rates([0, 1, 1, 2, 4, 9, 9])
    by_tier = {r["tier"]: (r["reached"], r["passed"]) for r in rows}
    # Tier 1: all 6 reached it, 4 passed (tier > 1); tier 2: 4 reached, 3 passed; tier 3: 3 reached, 3
    # passed; tier 4: 3 reached, 2 passed; tiers 5..8: 2 reached, 2 passed.
    assert by_tier == {1: (6, 4), 2: (4, 3), 3: (3, 3), 4: (3, 2), 5: (2, 2), 6: (2, 2), 7: (2, 2), 8: (2, 2)}
    assert rows[0]["pass_rate"] == pytest.approx(4 / 6)


def test_holdout_is_cut_off_before_the_search_can_read_it():
    raw = load_candles("sample", "BTCUSDT", "1h", start="2018-01-01", end="2019-06-30")
    data = optimizer.Datasets(lambda tf: raw, "BTCUSDT", holdout_fraction=0.2)
    inside, full = data.get("1h"), data.full("1h")
    # The cut: the bar 80% of the way, moved back to its UTC midnight; the in-sample part ends before it.
    first = len(raw) - round(len(raw) * 0.2)
    assert data.cut == raw.index[first].floor("D")
    assert inside.candles.index[-1] < data.cut <= full.candles.index[data.holdout_bars("1h")[0]]
    assert len(inside) + (data.holdout_bars("1h")[1] - data.holdout_bars("1h")[0]) == len(full)
    # Indicators look back only: on the in-sample bars they equal the full history's.
    for name, args in (("ema", (200,)), ("rsi", (14,)), ("atr", (14,)), ("adx", (14,))):
        np.testing.assert_array_equal(inside.indicator(name, *args), full.indicator(name, *args)[:len(inside)])
    # A window view restricts the bars, keeps the data (indicators stay warm from the first bar).
    start_ms, stop_ms = int(inside.ts[100]), int(inside.ts[500])
    view = data.window(start_ms, stop_ms)
    assert view.bars("1h") == (100, 500) and view.get("1h") is inside and data.bars("1h") == (0, len(inside))
    none = optimizer.Datasets(lambda tf: raw, "BTCUSDT", holdout_fraction=0.0)
    assert none.cut is None or len(none.get("1h")) == len(raw)
    assert none.holdout_bars("1h") == (len(raw), len(raw))


def test_a_poisoned_holdout_changes_no_trial():
    raw = load_candles("sample", "BTCUSDT", "1h", start="2018-01-01", end="2019-06-30")
    clean = optimizer.Datasets(lambda tf: raw, "BTCUSDT", holdout_fraction=0.25)
    clean.get("1h")
    poisoned_raw = raw.copy()
    held = poisoned_raw.index >= clean.cut
    rng = np.random.default_rng(5)
    path = raw["close"].iloc[0] * np.exp(np.cumsum(rng.normal(0, 0.03, held.sum())))  # another market entirely
    for column in ("open", "close"):
        poisoned_raw.loc[held, column] = path
    poisoned_raw.loc[held, "high"] = path * 1.05
    poisoned_raw.loc[held, "low"] = path * 0.95
    poisoned = optimizer.Datasets(lambda tf: poisoned_raw, "BTCUSDT", holdout_fraction=0.25)
    runs = []
    for data in (clean, poisoned):
        found = optimizer.Search(data, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="p",
                                 storage=":memory:", seed=9).run(40)
        runs.append([(t.params, t.value, t.user_attrs) for t in sorted(found.trials, key=lambda t: t.number)])
    assert runs[0] == runs[1]
    params = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    import holdout
    assert holdout.holdout_sharpe(clean, params) != holdout.holdout_sharpe(poisoned, params)  # the poison is real


def test_repeated_params_are_looked_up_not_run_again(monkeypatch):
    data = optimizer.Datasets(lambda tf: load_candles("sample", "BTCUSDT", tf, start="2019-01-01"), "BTCUSDT")
    calls = []
    real = optimizer.evaluate
    monkeypatch.setattr(optimizer, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    grid = {**config.param_grid("LONG")}
    grid = {k: (v[0] if isinstance(v, tuple) else v) for k, v in grid.items()}  # ranges fixed at their low end
    grid.update(max_hold_hours=[36, 48, 72], position_scaling=[True, False], partial_take_profit=[False])  # 3 x 2
    result = optimizer.Search(data, config.fixed_params("LONG"), grid, study_name="d", storage=":memory:",
                              seed=1).run(30)
    assert len(result.trials) == result.stored == len(calls) == 6
    assert len({optimizer.params_key(t.params) for t in result.trials}) == 6
    assert sorted(t.number for t in result.trials) == list(range(6))
    assert result.duplicates >= optimizer.MAX_DUPLICATE_STREAK and "exhausted" in result.notes[0]


def test_worker_processes_share_one_study_and_never_share_a_seed(datasets, tmp_path):
    assert len({study_store.worker_seed(42, w, k, 0) for w in range(3) for k in range(3)}) == 9
    assert study_store.worker_seed(42, 0, 0, 0) != study_store.worker_seed(42, 0, 0, 12)  # a resume draws anew
    found = optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="jobs",
                             storage=f"journal:{tmp_path / 'j.journal'}", seed=2, jobs=2)
    stored = []
    result = found.run(24, on_trial=stored.append)
    assert sorted(t.number for t in result.trials) == list(range(24)) == sorted(t.number for t in stored)
    assert {t.system_attrs["grtr_worker"] for t in result.trials} == {"0.0", "0.1"}
    assert len({optimizer.params_key(t.params) for t in result.trials}) == 24
    assert result.backtest_seconds > 0 and not result.interrupted


def test_a_worker_id_held_by_a_live_process_is_refused(datasets, tmp_path):
    url = f"journal:{tmp_path / 'w.journal'}"
    first = optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="w",
                             storage=url, seed=1)
    first.run(2)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first.storage.set_study_system_attr(first.study_id, "grtr_worker:0.0",
                                            {"host": socket.gethostname(), "pid": holder.pid, "beat": 0})
        with pytest.raises(config.ConfigError, match="worker id 0 of this study is in use"):
            first.run(2)
        other = optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="w",
                                 storage=url, seed=1, worker_id=1)
        assert other.run(2).stored == 2
    finally:
        holder.kill()
        holder.wait()
    assert first.run(1).stored == 1  # the holder is gone: the id is free again


def test_samplers(datasets, tmp_path):
    for kind in config.SAMPLER_CHOICES:
        result = optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name=kind,
                                  storage=":memory:", seed=1, sampler=kind).run(45)
        assert result.stored == 45 and all(t.value is not None for t in result.trials)
    # CMA-ES on a study that already holds trials starts from them (warm start on CMA-ES's numeric space).
    url = f"journal:{tmp_path / 'c.journal'}"
    for more, total in ((30, 30), (10, 40)):  # the second run warm-starts from the first run's 30 trials
        resumed = optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="c",
                                   storage=url, seed=1, sampler="cmaes").run(more)
        assert len(resumed.trials) == total
    with pytest.raises(config.ConfigError, match="unknown sampler 'nope'; accepted: tpe, cmaes, random"):
        optimizer.make_sampler(1, "nope")
    with pytest.raises(config.ConfigError, match="needs a storage the worker processes share"):
        optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="m",
                         storage=":memory:", jobs=2)
    with pytest.raises(config.ConfigError, match="--trials must be at least 1"):
        optimizer.Search(datasets, config.fixed_params("LONG"), config.param_grid("LONG"), study_name="m",
                         storage=":memory:").run(0)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["optimize", "--trials", "0"], "argument --trials: 0 is refused; accepted: a whole number in [1, 100000000]"),
    (["optimize", "--baseline-draws", "0"], "argument --baseline-draws: 0 is refused; accepted: a whole number in "
                                            "[1, 100000000]"),
    (["optimize", "--worker-id", "-1"], "argument --worker-id: -1 is refused; accepted: a whole number in [0, "
                                        "1000000]"),
    (["validate", "--fold-trials", "0"], "argument --fold-trials: 0 is refused; accepted: a whole number in [1, "
                                         "1000000]"),
    (["optimize", "--storage", "results/x.db"], "is not a storage URL; accepted: journal:PATH"),
    (["optimize", "--strategy", "NOPE"], "unknown strategy 'NOPE'"),
    (["validate", "--folds", "9", "--start", "2019-09-01"], "too few for 9 folds"),
])
def test_optimize_and_validate_errors(argv, fragment, capsys, tmp_path):
    try:
        code = main.main([*argv, "--out", str(tmp_path)])
    except SystemExit as stopped:  # a flag out of range: refused as it is parsed
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("error: ") == 1, err


def test_a_storage_that_cannot_be_opened_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/studies.db"  # SQLAlchemy adds a "(Background on this error at: ...)" line
    assert main.main(["optimize", "--trials", "2", "--storage", url, "--out", str(tmp_path / "o")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the sample's own note on its gaps
    assert last == f"error: cannot open study storage '{url}': (sqlite3.OperationalError) unable to open database " \
                   f"file; accepted: {study_store.ACCEPTED_STORAGE}, on a file this user can write or a server that " \
                   "answers"


def test_export_writes_importable_config_and_keeps_backup(tmp_path):
    import importlib.util

    import gates

    params = {**config.fixed_params("LONG"), "symbol": "SOLUSDT"}
    first = gates.export_prod_config(params, {"score": 1.0, "dsr": {"dsr": float("nan")}}, tmp_path)
    assert first.name == "prod_config_long.py"
    gates.export_prod_config({**params, "risk_per_trade": 0.02}, {"score": 2.0}, tmp_path)
    assert len(list(tmp_path.glob("prod_config_long.*.bak.py"))) == 1
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left
    spec = importlib.util.spec_from_file_location("prod", first)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS["risk_per_trade"] == 0.02 and module.SYMBOL == "SOLUSDT"
    assert module.STRATEGY_FILE == str(config.strategy("LONG").path)
    assert module.STRATEGY_SHA256 == config.strategy("LONG").sha256
    assert config.validate_params(module.PARAMS)["partial_tp_levels"] == (1.0, 2.0, 3.0)
    with pytest.raises(config.ConfigError, match="trades both ways"):
        gates.export_prod_config(config.fixed_params("SCALP"), {}, tmp_path)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["optimize", "--sampler", "cma"], "argument --sampler: invalid choice: 'cma'"),
    (["optimize", "--search-symbols", "all"], "argument --search-symbols: invalid choice: 'all'"),
    (["validate", "--trials", "5"], "unrecognized arguments: --trials 5"),
])
def test_a_bad_flag_is_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as stopped:
        main.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
