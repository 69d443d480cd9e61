"""The search space, every filter tier, determinism, resume, shared storage, folds, DSR, PBO, export."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from scipy.stats import norm

import config
import main
import optimizer
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
    (7, {}, {"num_trades": 11}, "frequency"),
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
    search(datasets, tmp_path, "resume").run(12)
    again = search(datasets, tmp_path, "resume")
    assert len(again.known) == 12
    result = again.run(8)
    assert len(result.trials) == 20
    attrs = next(t.user_attrs for t in result.trials if t.user_attrs["tier"] > 0)
    assert {"fail_reason", "tier", "train_sharpe", "test_sharpe", "test_num_trades"} <= set(attrs)


def test_two_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code = ("import optimizer, config; from data_fetcher import load_candles;"
            "d = optimizer.Datasets(lambda tf: load_candles('sample', 'BTCUSDT', tf, start='2019-01-01'), 'BTCUSDT');"
            f"optimizer.Search(d, config.fixed_params('LONG'), config.param_grid('LONG'), study_name='shared',"
            f" storage='{url}', seed=int(__import__('sys').argv[1])).run(6)")
    import optuna

    optuna.create_study(study_name="shared", storage=url, direction="maximize")  # the first machine sets it up
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)], cwd=ROOT) for seed in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 12


def test_bad_storage_and_trial_count(datasets, tmp_path):
    with pytest.raises(config.ConfigError, match="cannot open study storage 'postgresql://nobody"):
        search(datasets, tmp_path, "x", storage="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(config.ConfigError, match="--trials must be at least 1"):
        search(datasets, tmp_path, "x").run(0)


def test_purge_gap_separates_train_and_test():
    params = config.fixed_params("LONG")
    purge = optimizer.lookback_bars(params)
    assert purge == params["macro_ema_period"]
    folds = optimizer.fold_ranges(10_000, 5, 3.0, purge)
    assert len(folds) == 5
    for (train_start, train_stop), (test_start, test_stop) in folds:
        assert test_start - train_stop >= purge
        assert train_stop - train_start <= 3 * (test_stop - test_start)
    with pytest.raises(config.ConfigError, match="too few for 5 folds"):
        optimizer.fold_ranges(400, 5, 3.0, purge)


def test_walk_forward_on_the_sample(datasets):
    params = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    result = optimizer.walk_forward(datasets.get("1h"), params, 4)
    assert len(result["folds"]) == 4
    agg = result["aggregate"]
    assert agg["test_trades"] == sum(f["test_num_trades"] for f in result["folds"])
    assert agg["compounded_test_return"] == pytest.approx(np.prod([1 + f["test_total_return"]
                                                                   for f in result["folds"]]) - 1)


def test_deflated_sharpe_by_hand():
    # Returns 2%, 0%, 2%, 0%: mean 0.01, sample sd sqrt(4e-4 / 3) = 0.011547, SR = 0.8660;
    # a two-point series has skew 0 and kurtosis 1, so the denominator is 1.
    returns = np.array([0.02, 0.0, 0.02, 0.0])
    one = optimizer.deflated_sharpe(returns, np.array([0.4]))
    # One trial: SR0 = 0 and DSR = Phi(0.8660 * sqrt(3)) = Phi(1.5) = 0.93319.
    assert one["sharpe"] == pytest.approx(0.8660254)
    assert one["dsr"] == pytest.approx(0.9331928, abs=1e-6)
    # Two trials with Sharpes 0 and 0.2: V = 0.02, SR0 = sqrt(0.02) * (0.4228 * Phi^-1(0.5) + 0.5772 *
    # Phi^-1(1 - 1/(2e))) = 0.14142 * 0.5772 * 0.90045 = 0.07350; DSR = Phi((0.8660 - 0.0735) * sqrt(3)).
    two = optimizer.deflated_sharpe(returns, np.array([0.0, 0.2]))
    sr0 = math.sqrt(0.02) * 0.5772156649 * norm.ppf(1 - 1 / (2 * math.e))
    assert two["sharpe0"] == pytest.approx(sr0) and sr0 == pytest.approx(0.0735, abs=1e-4)
    assert two["dsr"] == pytest.approx(norm.cdf((0.8660254 - sr0) * math.sqrt(3)))


def test_pbo_by_hand():
    good, bad = [0.02, 0.01], [-0.01, 0.0]
    # A wins the first half, B the second: whichever half is in-sample, its winner is the
    # out-of-sample loser (rank 1 of 2, w = 1/3, logit < 0): PBO = 1 over the 2 combinations.
    a = np.array(good + bad)
    b = np.array(bad + good)
    result = optimizer.probability_of_backtest_overfitting(np.column_stack([a, b]), blocks=2)
    assert result == {"pbo": 1.0, "combinations": 2, "strategies": 2}
    # A better than B in every block: the in-sample best is the out-of-sample best: PBO = 0.
    steady = np.column_stack([np.tile([0.02, 0.01], 4), np.tile([0.02, 0.0], 4)])
    result = optimizer.probability_of_backtest_overfitting(steady, blocks=4)
    assert result["pbo"] == 0.0 and result["combinations"] == 6


def test_export_writes_importable_config_and_keeps_backup(tmp_path):
    params = {**config.fixed_params("LONG"), "symbol": "SOLUSDT"}
    first = optimizer.export_prod_config(params, {"score": 1.0}, tmp_path)
    assert first.name == "prod_config_long.py"
    optimizer.export_prod_config({**params, "risk_per_trade": 0.02}, {"score": 2.0}, tmp_path)
    assert len(list(tmp_path.glob("prod_config_long.*.bak.py"))) == 1
    spec = importlib.util.spec_from_file_location("prod", first)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS["risk_per_trade"] == 0.02 and module.SYMBOL == "SOLUSDT"
    assert config.validate_params(module.PARAMS)["partial_tp_levels"] == (1.0, 2.0, 3.0)
    with pytest.raises(config.ConfigError, match="trades both ways"):
        optimizer.export_prod_config(config.fixed_params("SCALP"), {}, tmp_path)


def test_default_pipeline_finishes_on_the_sample(tmp_path, capsys):
    code = main.main(["--trials", "25", "--out", str(tmp_path / "run"), "--storage",
                      f"journal:{tmp_path / 'p.journal'}", "--no-export", "--start", "2018-06-01"])
    assert code == 0
    out = tmp_path / "run" / "optuna"
    for name in ("best_params.json", "trials.csv", "trades_train.csv", "trades_test.csv", "validation.json",
                 "report.html"):
        assert (out / name).exists(), name
    validation = json.loads((out / "validation.json").read_text())
    assert "deflated_sharpe" in validation["overfitting"] and "pbo" in validation["overfitting"]
    assert (tmp_path / "run" / "fixed" / "validation.json").exists()
    best = config.load_params_file(out / "best_params.json")
    assert best["mode"] == "long_only"
    assert "Deflated Sharpe Ratio" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "fragment"), [
    (["optimize", "--trials", "0"], "--trials must be at least 1"),
    (["optimize", "--strategy", "NOPE"], "unknown strategy 'NOPE'"),
    (["validate", "--folds", "9", "--start", "2019-09-01"], "too few for 9 folds"),
])
def test_optimize_and_validate_errors(argv, fragment, capsys, tmp_path):
    assert main.main([*argv, "--out", str(tmp_path)]) == 2
    assert fragment in capsys.readouterr().err
