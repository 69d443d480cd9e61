"""Walk-forward validation on the in-sample bars (never on the hold-out).

* **Re-optimizing walk-forward** (``validate --reoptimize``, the pipeline's default): for each
  fold a fresh search runs on the fold's train window only, and its winner trades the next
  window, which that search never saw. The test windows, stitched one after the other, are an
  honest out-of-sample record of the whole procedure (grid, objective, filters, sampler,
  budget); their Sharpe, probabilistic Sharpe and drawdown judge it. A fold whose winner fails
  the filters trades nothing in its test window, as the pipeline would export nothing.
* **Stability across periods**: one fixed params set backtested on each fold's train and test
  windows (the check the interactive tester and ``validate`` without ``--reoptimize`` run).
  Every window was in-sample for a search, so this measures consistency, not out-of-sample skill.

Folds come from scikit-learn's ``TimeSeriesSplit``: ``folds`` test windows at the end of the
bars, each after a full train window of ``WF_TRAIN_RATIO`` times its length and a purge gap of
the longest indicator look-back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import TimeSeriesSplit

import backtester
import config
import optimizer
import progress
import strategy_loader
import study_store
import workers
from metrics import DAY_MS
from overfitting import daily_series, deflated_sharpe

FOLD_KEYS = ("total_return", "sharpe", "max_drawdown", "num_trades", "profit_factor")


def lookback_bars(params: dict[str, Any]) -> int:
    """The longest look-back of ``params`` in bars: the ATR's and the strategy's (its file declares it)."""
    return int(max(params["atr_period"], strategy_loader.get(params["mode"]).lookback(params)))


def fold_ranges(n: int, folds: int, train_ratio: float, purge: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Walk-forward (train, test) bar ranges of [0, n): every train window ``train_ratio`` test windows long."""
    if folds < 2:
        raise config.ConfigError(f"--folds must be at least 2, got {folds}")
    test_size = int((n - purge) // (folds + train_ratio))
    if test_size < 50:
        raise config.ConfigError(f"{n} bars are too few for {folds} folds with a {purge}-bar purge gap "
                                 f"(each test fold would hold {test_size} bars; need at least 50)")
    max_train = max(int(test_size * train_ratio), 50)
    splitter = TimeSeriesSplit(n_splits=folds, max_train_size=max_train, test_size=test_size, gap=purge)
    return [((int(tr[0]), int(tr[-1]) + 1), (int(te[0]), int(te[-1]) + 1))
            for tr, te in splitter.split(np.arange(n))]


def stability_across_periods(data: backtester.MarketData, params: dict[str, Any], folds: int,
                             train_ratio: float | None = None) -> dict[str, Any]:
    """One params set on every fold's train and test window: per-fold figures and their aggregate."""
    train_ratio = train_ratio or config.WF_TRAIN_RATIO
    purge = lookback_bars(params)
    rows = []
    for k, (train, test) in enumerate(fold_ranges(len(data), folds, train_ratio, purge), start=1):
        m_train = backtester.simulate(data, params, *train).metrics
        m_test = backtester.simulate(data, params, *test).metrics
        rows.append({"fold": k, "train_bars": list(train), "test_bars": list(test),
                     "train_start": str(data.candles.index[train[0]]), "test_start": str(data.candles.index[test[0]]),
                     "test_end": str(data.candles.index[test[1] - 1]),
                     **{f"train_{key}": m_train[key] for key in FOLD_KEYS},
                     **{f"test_{key}": m_test[key] for key in FOLD_KEYS}})
    test_returns = np.array([r["test_total_return"] for r in rows])
    aggregate = {
        "folds": len(rows), "purge_bars": purge,
        "mean_test_return": float(test_returns.mean()),
        "compounded_test_return": float(np.prod(1 + test_returns) - 1),
        "mean_test_sharpe": float(np.mean([r["test_sharpe"] for r in rows])),
        "worst_test_drawdown": float(min(r["test_max_drawdown"] for r in rows)),
        "test_trades": int(sum(r["test_num_trades"] for r in rows)),
        "profitable_folds": int((test_returns > 0).sum()),
    }
    aggregate["passed"] = bool(aggregate["profitable_folds"] / len(rows) >= config.WF_MIN_PROFITABLE_FOLDS
                               and aggregate["mean_test_sharpe"] > 0)
    return {"kind": "stability across periods", "folds": rows, "aggregate": aggregate}


def reoptimizing_walk_forward(datasets: optimizer.Datasets, base_params: dict[str, Any], grid: dict[str, Any],
                              folds: int, fold_trials: int, *, seed: int, jobs: int = 1, sampler: str | None = None,
                              train_ratio: float | None = None) -> dict[str, Any]:
    """A search on each fold's train window, its winner tested on the next window; stitched OOS figures.

    Folds run in parallel on ``jobs`` processes. An interrupted fold search raises KeyboardInterrupt:
    a partial walk-forward must never pass for a complete one.
    """
    if fold_trials < 1:
        raise config.ConfigError(f"--fold-trials must be at least 1, got {fold_trials}")
    timeframe = base_params["timeframe"]
    data = datasets.get(timeframe)
    start, stop = datasets.bars(timeframe)
    ranges = [((a + start, b + start), (c + start, d + start)) for (a, b), (c, d) in
              fold_ranges(stop - start, folds, train_ratio or config.WF_TRAIN_RATIO, lookback_bars(base_params))]

    def run_fold(k: int) -> dict[str, Any]:
        (train0, train1), (test0, test1) = ranges[k]
        train_view = datasets.window(int(data.ts[train0]), int(data.ts[train1 - 1]) + data.bar_ms)
        test_view = datasets.window(int(data.ts[test0]), int(data.ts[test1 - 1]) + data.bar_ms)
        search = optimizer.Search(train_view, base_params, grid, study_name=f"fold-{k + 1}", storage=":memory:",
                                  seed=study_store.worker_seed(seed, 0, k, 0), sampler=sampler)
        result = search.run(fold_trials)
        if result.interrupted:
            raise KeyboardInterrupt
        best = result.best
        params = search.params_of(best.params)
        passed = best.user_attrs.get("fail_reason", "x") == ""
        test_data = test_view.get(params["timeframe"])
        lo, hi = test_view.bars(params["timeframe"])
        try:
            run = backtester.simulate(test_data, params, lo, hi)
        except backtester.TickSizeError as exc:  # its stops round onto the entry there: it cannot trade it
            passed, refusal = False, str(exc)
            run = backtester.SimResult(np.empty((0, 0)), test_data.ts[lo:hi], np.full(hi - lo, config.CAPITAL),
                                       np.zeros(hi - lo), test_data.bar_ms, config.CAPITAL)
        else:
            refusal = ""
        days, returns = daily_series(run)
        metrics = run.metrics if passed else {**run.metrics, "total_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0,
                                              "num_trades": 0, "profit_factor": 0.0}
        return {"fold": k + 1, "train_start": str(data.candles.index[train0]),
                "train_end": str(data.candles.index[train1 - 1]), "test_start": str(data.candles.index[test0]),
                "test_end": str(data.candles.index[test1 - 1]), "trials": len(result.trials),
                "winner_score": float(best.value), "winner_passed": passed,
                "winner_fail_reason": refusal or best.user_attrs.get("fail_reason", ""), "winner_params": params,
                **{f"test_{key}": metrics[key] for key in FOLD_KEYS},
                "days": days, "returns": returns if passed else np.zeros_like(returns)}

    shown = progress.bar(len(ranges), f"re-optimizing walk-forward ({fold_trials} trials a fold)", "fold")
    rows = workers.parallel_map(run_fold, list(range(len(ranges))), jobs, shown.update)
    shown.close()
    days = np.concatenate([r.pop("days") for r in rows])
    returns = np.concatenate([r.pop("returns") for r in rows])
    return {"kind": "re-optimizing walk-forward", "fold_trials": fold_trials, "folds": rows,
            "aggregate": stitched_aggregate(rows, days, returns), "complete": True,
            "stitched": {"time": [str(pd.Timestamp(int(d) * DAY_MS, unit="ms", tz="UTC")) for d in days],
                         "equity": list(config.CAPITAL * np.cumprod(1 + returns))}}


def stitched_aggregate(rows: list[dict[str, Any]], days: np.ndarray, returns: np.ndarray) -> dict[str, Any]:
    """Figures of the stitched out-of-sample daily returns, and whether they pass."""
    equity = np.cumprod(1 + returns)
    peak = np.maximum.accumulate(np.maximum(equity, 1.0))
    sd = returns.std(ddof=1) if returns.size > 1 else 0.0
    sharpe = float(returns.mean() / sd * math.sqrt(365)) if sd > 0 else 0.0
    psr = deflated_sharpe(returns, 1, 0.0)
    profitable = sum(1 for r in rows if r["test_total_return"] > 0)
    aggregate = {"folds": len(rows), "days": int(days.size),
                 "total_return": float(equity[-1] - 1) if equity.size else 0.0,
                 "sharpe": sharpe, "max_drawdown": float((equity / peak - 1).min()) if equity.size else 0.0,
                 "dsr": psr["dsr"], "profitable_folds": profitable,
                 "folds_with_a_passing_winner": sum(1 for r in rows if r["winner_passed"]),
                 "test_trades": int(sum(r["test_num_trades"] for r in rows))}
    aggregate["passed"] = bool(sharpe > 0 and profitable / max(len(rows), 1) >= config.WF_MIN_PROFITABLE_FOLDS)
    return aggregate
