"""Walk-forward: fold layout, stability across periods, and the re-optimizing walk-forward (each fold's
search sees its train window only; the stitched out-of-sample figures by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import backtester
import config
import optimizer
import walkforward
from data_fetcher import load_candles


@pytest.fixture(scope="module")
def datasets():
    return optimizer.Datasets(lambda tf: load_candles("sample", "BTCUSDT", tf, start="2018-06-01",
                                                      end="2019-06-30"), "BTCUSDT")


def test_folds_have_full_train_windows_and_a_purge_gap():
    params = config.fixed_params("LONG")
    purge = walkforward.lookback_bars(params)
    assert purge == params["macro_ema_period"]
    folds = walkforward.fold_ranges(10_000, 5, 3.0, purge)
    # test size = (10000 - 231) // (5 + 3) = 1221; train windows 3 x 1221 = 3663; the tests tile the end.
    assert len(folds) == 5 and folds[-1][1][1] == 10_000
    for (train_start, train_stop), (test_start, test_stop) in folds:
        assert test_stop - test_start == 1221 and train_stop - train_start == 3663
        assert test_start - train_stop == purge
    assert all(folds[k][1][1] == folds[k + 1][1][0] for k in range(4))
    with pytest.raises(config.ConfigError, match="too few for 5 folds"):
        walkforward.fold_ranges(400, 5, 3.0, purge)


def test_stability_across_periods_on_the_sample(datasets):
    params = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    result = walkforward.stability_across_periods(datasets.get("1h"), params, 4)
    assert result["kind"] == "stability across periods" and len(result["folds"]) == 4
    agg = result["aggregate"]
    assert agg["test_trades"] == sum(f["test_num_trades"] for f in result["folds"])
    assert agg["compounded_test_return"] == pytest.approx(np.prod([1 + f["test_total_return"]
                                                                   for f in result["folds"]]) - 1)


def test_stitched_figures_by_hand():
    rows = [{"test_total_return": 0.155, "winner_passed": True, "test_num_trades": 3},
            {"test_total_return": -0.0312, "winner_passed": True, "test_num_trades": 2}]
    returns = np.array([0.1, 0.05, -0.05, 0.02])
    agg = walkforward.stitched_aggregate(rows, np.arange(4), returns)
    # equity 1.1, 1.155, 1.09725, 1.119195; peak 1.155 -> drawdown 1.09725 / 1.155 - 1 = -0.05
    assert agg["total_return"] == pytest.approx(0.119195)
    assert agg["max_drawdown"] == pytest.approx(-0.05)
    assert agg["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(365))
    assert agg["profitable_folds"] == 1 and agg["test_trades"] == 5
    assert not agg["passed"]  # 1 of 2 profitable folds < 60%


LENIENT = {"min_trades_train": 0, "min_trades_test": 0, "min_profit_factor": 0.0, "min_sharpe_ratio": -math.inf,
           "max_sharpe_ratio": math.inf, "max_drawdown": -1.01, "min_cagr": -1.01, "min_calmar": -math.inf,
           "min_trades_per_month": 0.0, "max_sharpe": math.inf, "max_profit_factor": math.inf}


@pytest.mark.parametrize("lenient", [True, False], ids=["winners-pass", "default-filters"])
def test_reoptimizing_walk_forward_searches_each_train_window_only(datasets, monkeypatch, lenient):
    if lenient:  # every trial passes: each fold's winner trades its test window
        for key, value in LENIENT.items():
            monkeypatch.setitem(config.OBJECTIVE_FILTERS, key, value)
    base = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    data = datasets.get("1h")
    seen: list[tuple[int, int]] = []
    real = optimizer.evaluate

    def spy(view, params, split, filters=None):
        seen.append(view.bars(params["timeframe"]))
        return real(view, params, split, filters)

    monkeypatch.setattr(optimizer, "evaluate", spy)
    result = walkforward.reoptimizing_walk_forward(datasets, base, config.param_grid("LONG"), 3, 12, seed=5, jobs=1)
    ranges = walkforward.fold_ranges(len(data), 3, config.WF_TRAIN_RATIO, walkforward.lookback_bars(base))
    assert sorted(set(seen)) == sorted({train for train, _ in ranges})  # only the train windows were scored
    assert len(seen) == 3 * 12 and result["kind"] == "re-optimizing walk-forward"
    returns = []
    for row, (_, (test0, test1)) in zip(result["folds"], ranges, strict=True):
        assert row["test_start"] == str(data.candles.index[test0])
        if row["winner_passed"]:  # the winner, traded on the window its search never saw
            run = backtester.simulate(data, row["winner_params"], test0, test1)
            assert row["test_total_return"] == pytest.approx(run.metrics["total_return"])
        else:  # nothing passed the filters: nothing is traded in the test window
            assert row["test_total_return"] == 0.0 and row["test_num_trades"] == 0
        returns.append(row["test_total_return"])
    if lenient:
        assert all(row["winner_passed"] for row in result["folds"])
    agg = result["aggregate"]
    assert agg["total_return"] == pytest.approx(np.prod([1 + r for r in returns]) - 1)
    assert len(result["stitched"]["equity"]) == agg["days"]


def test_holdout_percentile_and_random_baseline(datasets, monkeypatch):
    import holdout

    sample = [0.1 * k for k in range(1, 11)]  # 0.1 .. 1.0
    # 0.55 is above 5 of 10 -> 50; 0.5 ties one (counts half) and is above 4 -> 45; below all -> 0.
    assert holdout.percentile(0.55, sample) == 50.0 and holdout.percentile(0.5, sample) == pytest.approx(45.0)
    assert holdout.percentile(-1.0, sample) == 0.0 and math.isnan(holdout.percentile(1.0, sample[:9]))
    for key, value in LENIENT.items():
        monkeypatch.setitem(config.OBJECTIVE_FILTERS, key, value)
    search = optimizer.Search(datasets, {**config.fixed_params("LONG"), "symbol": "BTCUSDT"},
                              config.param_grid("LONG"), study_name="b", storage=":memory:")
    base = holdout.random_baseline(search, 30, seed=4, passing=5)
    backtested = base["tier_pass_rates"][0]["reached"]  # constraint rejections are drawn but not backtested
    assert base["draws"] == 30 and base["passing"] == backtested == len(base["holdout_sharpes"])
    params = search.params_of({})  # the fixed params with the grid's fixed values
    assert holdout.holdout_check(datasets, params)["holdout"]["sharpe"] == holdout.holdout_sharpe(datasets, params)


def test_a_params_set_its_tick_refuses_is_left_out_not_a_crash(datasets, monkeypatch):
    """TickSizeError (a stop rounding onto the entry at the instrument's tick) met outside the search's own
    windows: a fold winner on its test window trades nothing, a trial over the whole in-sample span leaves
    the DSR/PBO matrix, a random set on the hold-out leaves the baseline; nothing stops the run."""
    import holdout
    import overfitting

    for key, value in LENIENT.items():
        monkeypatch.setitem(config.OBJECTIVE_FILTERS, key, value)
    base = {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}
    data = datasets.get("1h")
    ranges = walkforward.fold_ranges(len(data), 3, config.WF_TRAIN_RATIO, walkforward.lookback_bars(base))
    refused = {ranges[0][1], (0, len(data))}  # fold 1's test window; the whole in-sample span
    real = backtester.simulate

    def simulate(market, params, start=0, stop=None, *args, **kwargs):
        stop = len(market) if stop is None else stop
        if (market is data and (start, stop) in refused) or (market is not data and params["atr_period"] % 2):
            raise backtester.TickSizeError("BTCUSDT: 1 entry refused (forced by the test)")
        return real(market, params, start, stop, *args, **kwargs)

    monkeypatch.setattr(backtester, "simulate", simulate)
    result = walkforward.reoptimizing_walk_forward(datasets, base, config.param_grid("LONG"), 3, 6, seed=5, jobs=1)
    first = result["folds"][0]
    assert not first["winner_passed"] and "forced by the test" in first["winner_fail_reason"]
    assert first["test_total_return"] == 0.0 and first["test_num_trades"] == 0
    assert result["folds"][1]["winner_passed"]  # the other folds trade as before
    search = optimizer.Search(datasets, base, config.param_grid("LONG"), study_name="t", storage=":memory:", seed=2)
    found = search.run(12)
    matrix, numbers = overfitting.trial_return_matrix(datasets, found.trials, search.params_of)
    assert numbers == [] and matrix.size == 0  # every trial's whole-span run was refused
    baseline = holdout.random_baseline(search, 40, seed=3, passing=40)
    backtested = baseline["tier_pass_rates"][0]["reached"]  # with lenient filters every backtested set passes
    # the hold-out (another MarketData) refuses the sets with an odd ATR period: only the even ones are ranked
    assert 0 < baseline["passing"] < backtested and len(baseline["holdout_sharpes"]) == baseline["passing"]
