"""The final hold-out: the chosen params run once on bars nothing else has read, judged by the
search's own filters, and ranked against random parameter sets that pass those filters in-sample.

The percentile answers "what did the search add?": a pick at the 50th percentile did no better
on unseen data than a random params set that merely passes the filters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

import backtester
import config
import optimizer
import workers

ROUND = 500  # random params sets drawn per round
MIN_SAMPLE = 10  # fewer random passing sets give no percentile


def holdout_check(datasets: optimizer.Datasets, params: dict[str, Any],
                  filters: dict[str, float] | None = None) -> dict[str, Any]:
    """In-sample and hold-out figures of ``params``; the hold-out passes when it passes the filters
    with the in-sample period in the place of the train period and the hold-out in that of the test."""
    timeframe = params["timeframe"]
    start, stop = datasets.holdout_bars(timeframe)
    if stop - start < 2:
        return {"available": False, "passed": False, "fail_reason": "no hold-out (HOLDOUT_FRACTION is 0)"}
    full = datasets.full(timeframe)
    in_sample = backtester.simulate(datasets.get(timeframe), params, *datasets.bars(timeframe)).metrics
    held = backtester.simulate(full, params, start, stop).metrics
    months = optimizer._months(held, stop - start, full.bar_ms)
    _score, reason, tier = optimizer.evaluate_filters(in_sample, held, months, filters)
    return {"available": True, "start": str(full.candles.index[start]), "end": str(full.candles.index[-1]),
            "bars": stop - start, "in_sample": in_sample, "holdout": held, "passed": reason == "",
            "fail_reason": reason, "tier": tier}


def holdout_sharpe(datasets: optimizer.Datasets, params: dict[str, Any]) -> float:
    """Annualised daily Sharpe of ``params`` on the hold-out bars."""
    start, stop = datasets.holdout_bars(params["timeframe"])
    return float(backtester.simulate(datasets.full(params["timeframe"]), params, start, stop).metrics["sharpe"])


def random_baseline(search: optimizer.Search, max_draws: int, seed: int, jobs: int = 1,
                    passing: int | None = None) -> dict[str, Any]:
    """Uniformly random params sets of the search's grid, scored by its objective on the in-sample bars,
    drawn in rounds until ``passing`` of them pass every filter or ``max_draws`` are drawn; the hold-out
    Sharpe of each one that passes."""
    passing = config.HOLDOUT_RANDOM_PASSING if passing is None else passing
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))

    def one(trial_params: dict[str, Any]) -> tuple[int, float | None]:
        params = search.params_of(trial_params)
        result = optimizer.evaluate(search.datasets, params, search.split, search.filters)
        passed = result.tier == len(optimizer.FILTER_TIERS) + 1
        return result.tier, holdout_sharpe(search.datasets, params) if passed else None

    results: list[tuple[int, float | None]] = []
    while len(results) < max_draws and sum(s is not None for _, s in results) < passing:
        drawn = []
        for _ in range(min(ROUND, max_draws - len(results))):
            trial = study.ask(search.space)
            drawn.append(trial.params)
            study.tell(trial, 0.0)
        results += workers.parallel_map(one, drawn, jobs)
    sharpes = sorted(s for _, s in results if s is not None)
    return {"draws": len(results), "passing": len(sharpes), "holdout_sharpes": sharpes,
            "tier_pass_rates": optimizer.tier_pass_rates([tier for tier, _ in results])}


def percentile(value: float, sample: list[float]) -> float:
    """Percentile rank of ``value`` in ``sample`` (ties count half); NaN for fewer than MIN_SAMPLE values."""
    if len(sample) < MIN_SAMPLE:
        return float("nan")
    values = np.asarray(sample, dtype=float)
    return float(100.0 * ((values < value).sum() + 0.5 * (values == value).sum()) / values.size)
