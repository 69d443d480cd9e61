"""Overfitting statistics of a search, on the in-sample daily returns of every distinct trial.

* **Deflated Sharpe Ratio** (Bailey & López de Prado, 2014): the probability that the exported
  trial's Sharpe ratio beats the best of N skill-less trials, where N is the number of distinct
  parameter sets the study backtested and the spread of their Sharpe ratios sets how lucky the
  best of N can be; corrected for the skewness and fat tails of the returns.
* **Probability of Backtest Overfitting** (Bailey, Borwein, López de Prado & Zhu, 2015) by
  combinatorially symmetric cross-validation: the days are cut into S blocks; for each of the
  C(S, S/2) ways to call half of them in-sample, the in-sample best trial is ranked out of sample
  (ties by average rank); PBO is the share of splits where it lands at or below the median.
  Identical return series are counted once (ten copies of one strategy are one strategy).

Sharpe ratios here are per day (not annualised), as the formulas want.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial
from scipy.stats import kurtosis, norm, skew

import backtester
import config
import optimizer
import progress
import workers
from metrics import DAY_MS, daily_returns

EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum Sharpe of ``n_trials`` skill-less trials whose Sharpes have ``sharpe_variance``."""
    if n_trials < 2 or sharpe_variance <= 0:
        return 0.0
    return math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials)
                                         + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e)))


def deflated_sharpe_ratio(sharpe: float, sharpe0: float, periods: int, skewness: float, kurt: float) -> float:
    """DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)); kurt not in excess."""
    denominator = math.sqrt(max(1 - skewness * sharpe + (kurt - 1) / 4 * sharpe * sharpe, 1e-12))
    return float(norm.cdf((sharpe - sharpe0) * math.sqrt(periods - 1) / denominator))


def deflated_sharpe(returns: np.ndarray, n_trials: int, sharpe_variance: float) -> dict[str, float]:
    """DSR of a daily return series chosen as the best of ``n_trials`` (1 = no selection: the PSR against 0)."""
    returns = np.asarray(returns, dtype=float)
    t = returns.size
    sd = returns.std(ddof=1) if t > 1 else 0.0
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    if t < 3 or sd == 0:
        return {"dsr": 0.0, "sharpe": 0.0, "sharpe0": sr0, "n_trials": int(n_trials), "periods": int(t)}
    sr = float(returns.mean() / sd)
    g3, g4 = float(skew(returns)), float(kurtosis(returns, fisher=False))
    return {"dsr": deflated_sharpe_ratio(sr, sr0, t, g3, g4), "sharpe": sr, "sharpe0": sr0, "n_trials": int(n_trials),
            "periods": int(t), "skew": g3, "kurtosis": g4}


def _sharpe_from_sums(count: np.ndarray, total: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Per-row, per-column Sharpe (sample sd) from counts, sums and sums of squares; 0 without dispersion."""
    count = count[:, None]
    mean = total / count
    variance = (squares - count * mean * mean) / np.maximum(count - 1, 1)
    ok = variance > 1e-24
    return np.where(ok, mean / np.sqrt(np.where(ok, variance, 1.0)), 0.0)


def probability_of_backtest_overfitting(returns: np.ndarray, blocks: int | None = None) -> dict[str, Any]:
    """PBO by CSCV over the columns (strategies) of ``returns`` (periods x strategies).

    Duplicate columns are dropped first. For each combination, w = (average OOS rank of the IS
    best) / (N + 1), lambda = ln(w / (1 - w)); PBO = share of lambda <= 0 (in-sample winners that
    tie share the combination equally). NaN when fewer than two distinct strategies or fewer
    periods than blocks.
    """
    blocks = blocks or config.PBO_BLOCKS
    returns = np.asarray(returns, dtype=float)
    if returns.ndim != 2:
        raise ValueError("returns must be a periods x strategies matrix")
    distinct = np.unique(returns, axis=1) if returns.shape[1] else returns
    periods, n = distinct.shape
    out: dict[str, Any] = {"pbo": float("nan"), "combinations": 0, "strategies": int(n),
                           "duplicates_dropped": int(returns.shape[1] - n), "blocks": int(blocks)}
    if n < 2 or periods < blocks or blocks % 2 or blocks < 2:
        return out
    edges = np.linspace(0, periods, blocks + 1).astype(int)
    count = np.diff(edges).astype(float)
    total = np.add.reduceat(distinct, edges[:-1], axis=0)
    squares = np.add.reduceat(distinct * distinct, edges[:-1], axis=0)
    combos = np.array([[k in chosen for k in range(blocks)] for chosen in
                       itertools.combinations(range(blocks), blocks // 2)], dtype=float)
    logits, overfit = [], []
    step = max(1, 2_000_000 // n)
    for lo in range(0, len(combos), step):
        ins, outs = combos[lo:lo + step], 1.0 - combos[lo:lo + step]
        is_sharpe = _sharpe_from_sums(ins @ count, ins @ total, ins @ squares)
        oos_sharpe = _sharpe_from_sums(outs @ count, outs @ total, outs @ squares)
        winners = is_sharpe == is_sharpe.max(axis=1, keepdims=True)
        for row in range(len(is_sharpe)):
            # Tied in-sample winners are equally likely picks: average over them.
            lam = np.array([_logit(oos_sharpe[row], k, n) for k in np.flatnonzero(winners[row])])
            logits.append(float(lam.mean()))
            overfit.append(float((lam <= 0).mean()))
    out.update(pbo=float(np.mean(overfit)), combinations=len(overfit), median_logit=float(np.median(logits)))
    return out


def _logit(oos: np.ndarray, chosen: int, n: int) -> float:
    """lambda = ln(w / (1 - w)) of the chosen strategy's average out-of-sample rank w * (n + 1)."""
    value = oos[chosen]
    rank = (oos < value).sum() + ((oos == value).sum() + 1) / 2.0  # average rank among ties, 1 = worst
    w = rank / (n + 1)
    return math.log(w / (1 - w))


def daily_series(run: backtester.SimResult) -> tuple[np.ndarray, np.ndarray]:
    """(UTC day numbers, daily returns) of a backtest's mark-to-market equity."""
    returns = daily_returns(run.ts, run.equity, run.initial_capital, run.bar_ms)
    close_day = (run.ts + run.bar_ms - 1) // DAY_MS
    last_of_day = np.r_[close_day[1:] != close_day[:-1], True]
    return close_day[last_of_day], returns


def trial_return_matrix(datasets: Any, trials: Sequence[FrozenTrial], params_of: Callable[[dict], dict],
                        jobs: int = 1) -> tuple[np.ndarray, list[int]]:
    """In-sample daily returns (days x trials) of every distinct backtested trial on ``datasets`` (one
    symbol's), and their numbers.

    Constraint rejections (never backtested) are left out, and so is a trial whose run over the
    whole in-sample span meets an entry its tick refuses; days are those every timeframe shares.
    """
    chosen: dict[tuple, FrozenTrial] = {}
    for trial in trials:
        if trial.user_attrs.get("tier", 0) > 0:
            chosen.setdefault(optimizer.params_key(trial.params), trial)
    picked = sorted(chosen.values(), key=lambda t: t.number)

    def run(trial: FrozenTrial) -> tuple[np.ndarray, np.ndarray] | None:
        params = {**params_of(trial.params), "symbol": datasets.symbol}
        start, stop = datasets.bars(params["timeframe"])
        try:
            return daily_series(backtester.simulate(datasets.get(params["timeframe"]), params, start, stop,
                                                    with_metrics=False))
        except backtester.TickSizeError:  # untradable at the tick over the whole in-sample span: left out
            return None

    shown = progress.bar(len(picked), "daily returns of every distinct trial (DSR, PBO)", "trial")
    runs = workers.parallel_map(run, picked, jobs, shown.update)
    shown.close()
    picked = [t for t, r in zip(picked, runs, strict=True) if r is not None]
    series = [r for r in runs if r is not None]
    if not series:
        return np.empty((0, 0)), []
    days = series[0][0]
    if any(len(d) != len(days) or not np.array_equal(d, days) for d, _ in series):
        common = series[0][0]
        for d, _ in series[1:]:
            common = np.intersect1d(common, d)
        columns = [r[np.isin(d, common)] for d, r in series]
    else:
        columns = [r for _, r in series]
    return np.column_stack(columns), [t.number for t in picked]


def search_statistics(matrix: np.ndarray, numbers: list[int], chosen_number: int) -> dict[str, Any]:
    """DSR of the chosen trial (N = distinct parameter sets) and PBO over every distinct trial."""
    if chosen_number not in numbers:
        return {}
    sharpes = np.array([_column_sharpe(matrix[:, k]) for k in range(matrix.shape[1])])
    variance = float(np.var(sharpes, ddof=1)) if sharpes.size > 1 else 0.0
    dsr = deflated_sharpe(matrix[:, numbers.index(chosen_number)], len(numbers), variance)
    dsr["sharpe_variance"] = variance
    pbo = probability_of_backtest_overfitting(matrix)
    return {"deflated_sharpe": dsr, "pbo": pbo,
            "meaning": (f"DSR {dsr['dsr']:.2f}: the probability that the exported trial's in-sample Sharpe "
                        f"({dsr['sharpe'] * math.sqrt(365):.2f} a year) is more than the luck of the best of "
                        f"{dsr['n_trials']} skill-less trials ({dsr['sharpe0'] * math.sqrt(365):.2f} a year); "
                        f"PBO {pbo['pbo']:.2f}: the share of {pbo['combinations']} in/out-of-sample splits of the "
                        f"days where the in-sample best of {pbo['strategies']} distinct trials ranked at or below "
                        "the median out of sample.")}


def _column_sharpe(returns: np.ndarray) -> float:
    sd = returns.std(ddof=1) if returns.size > 1 else 0.0
    return float(returns.mean() / sd) if sd > 0 else 0.0
