"""One params set searched for several symbols, under the rules of a search you can trust: each symbol's
hold-out is cut off before the search and never read by it, the pick is the best aggregate score, and each
symbol gets its own stability, walk-forward, DSR/PBO, hold-out check, gates and (only when every gate
passes) export."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

import config
import gates
import holdout
import main
import optimizer
from data_fetcher import load_candles


def poisoned(frame: pd.DataFrame, cut: pd.Timestamp) -> pd.DataFrame:
    """``frame`` with every bar from ``cut`` on replaced by another market (a random walk)."""
    out = frame.copy()
    held = out.index >= cut
    path = frame["close"].iloc[0] * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.03, held.sum())))
    out.loc[held, ["open", "close"]] = np.column_stack([path, path])
    out.loc[held, "high"], out.loc[held, "low"] = path * 1.05, path * 0.95
    return out


LENIENT = {"min_trades_train": 0, "min_trades_test": 0, "min_profit_factor": 0.0, "min_sharpe_ratio": -math.inf,
           "max_sharpe_ratio": math.inf, "max_drawdown": -1.01, "min_cagr": -1.01, "min_calmar": -math.inf,
           "min_trades_per_month": 0.0, "max_sharpe": math.inf, "max_profit_factor": math.inf}


def together_trials(btc, eth, holdout_fraction=None):
    """The trials of a 30-trial search of one params set for BTC and ETH, scored by the mean."""
    group = optimizer.DatasetGroup([optimizer.Datasets(lambda tf: btc, "BTCUSDT"),
                                    optimizer.Datasets(lambda tf: eth, "ETHUSDT", holdout_fraction=holdout_fraction)],
                                   "mean")
    search = optimizer.Search(group, {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}, config.param_grid("LONG"),
                              study_name="g", storage=":memory:", seed=4)
    found = search.run(30)
    return [(t.params, t.value, t.user_attrs) for t in sorted(found.trials, key=lambda t: t.number)], group


def test_a_poisoned_holdout_of_one_member_changes_nothing_of_the_together_search(monkeypatch):
    # Filters that let most trials through to the score, so that ETH's test-period Sharpe enters every
    # backtested trial's mean score (with the defaults most trials fail early on their train figures).
    for key, value in LENIENT.items():
        monkeypatch.setitem(config.OBJECTIVE_FILTERS, key, value)
    btc = load_candles("sample", "BTCUSDT", "1h", start="2018-06-01", end="2019-06-30")
    eth = load_candles("sample", "ETHUSDT", "1h", start="2018-06-01", end="2019-06-30")
    clean_eth = optimizer.Datasets(lambda tf: eth, "ETHUSDT")
    clean_eth.get("1h")
    dirty = poisoned(eth, clean_eth.cut)
    (clean, clean_group), (dirty_run, dirty_group) = together_trials(btc, eth), together_trials(btc, dirty)
    assert clean == dirty_run  # same params, scores and metrics: no trial read an ETH hold-out bar
    params = {**config.fixed_params("LONG"), "symbol": "ETHUSDT"}
    assert holdout.holdout_sharpe(clean_group.members[1], params) != holdout.holdout_sharpe(dirty_group.members[1],
                                                                                            params)  # it is real
    # The control: without a hold-out the same poison reaches the search's test periods and changes its trials.
    assert together_trials(btc, eth, 0.0)[0] != together_trials(btc, dirty, 0.0)[0]


def all_pass(**_kwargs):
    return [gates.Gate(name, True, "forced by the test") for name in ("run complete", "filters", "walk-forward",
                                                                       "stability across periods", "PBO", "DSR",
                                                                       "hold-out")]


SMALL = ["--symbols", "BTCUSDT,ETHUSDT", "--trials", "16", "--folds", "3", "--fold-trials", "4",
         "--baseline-draws", "40", "--jobs", "1", "--start", "2018-10-01"]


@pytest.mark.slow
def test_together_picks_the_best_aggregate_and_checks_and_gates_each_symbol(tmp_path, monkeypatch, capsys):
    out, prod = tmp_path / "run", tmp_path / "prod"
    argv = ["optimize", *SMALL, "--out", str(out), "--storage", f"journal:{tmp_path / 's.journal'}",
            "--prod-dir", str(prod)]
    assert main.main([*argv, "--study-name", "refused"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    best = json.loads((out / "best_params.json").read_text())
    # the pick is the best aggregate score, nothing else: no choice among the top trials on seen data
    assert best["trial"] == int(trials.loc[trials["score"].idxmax(), "trial"])
    assert best["symbols"] == ["BTCUSDT", "ETHUSDT"] and best["aggregate"] == "min"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search_symbols"] == "together" and summary["trial"] == best["trial"]
    for row in summary["rows"]:
        symbol = row["symbol"]
        validation = json.loads((out / symbol / "validation.json").read_text())
        assert validation["chosen_trial"] == best["trial"] and validation["data"]["symbol"] == symbol
        assert validation["walk_forward"]["kind"] == "re-optimizing walk-forward"
        assert validation["searched"] == {"symbols": ["BTCUSDT", "ETHUSDT"], "aggregate": "min"}
        held = validation["holdout"]
        assert held["available"] and held["start"] > validation["data"]["in_sample_end"]
        assert row["holdout_sharpe"] == pytest.approx(held["holdout"]["sharpe"])
        # the baseline is drawn once for both symbols (same draws), ranked on each symbol's own hold-out
        assert validation["random_baseline"]["draws"] == 40
        assert row["dsr"] == pytest.approx(validation["overfitting"]["deflated_sharpe"]["dsr"])
        assert row["pbo"] == validation["overfitting"]["pbo"]["pbo"]  # both null when PBO could not be computed
        failed = [g["name"] for g in validation["gates"] if not g["passed"]]
        assert row["passed"] is False and row["gate"] == failed[0]  # the sample's data passes no gate set
    assert not prod.exists()  # a refused gate: nothing exported
    capsys.readouterr()

    monkeypatch.setattr(gates, "export_gates", all_pass)  # every gate passes: each symbol exports into its folder
    assert main.main([*argv, "--study-name", "passing"]) == 0
    for symbol in ("BTCUSDT", "ETHUSDT"):
        path = prod / symbol / "prod_config_long.py"
        spec = importlib.util.spec_from_file_location(f"prod_{symbol}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.SYMBOL == symbol == module.METADATA["symbol"] and module.PARAMS["symbol"] == symbol
        assert module.METADATA["symbols"] == ["BTCUSDT", "ETHUSDT"] and "holdout" in module.METADATA
        assert module.STRATEGY_FILE == str(config.strategy("LONG").path)
    rows = pd.read_csv(out / "summary.csv")
    assert list(rows["gate"]) == ["all passed", "all passed"] and rows["passed"].all()
    assert not (config.BASE_DIR / "prod_config_long.py").exists() or "passing" not in \
        (config.BASE_DIR / "prod_config_long.py").read_text()
