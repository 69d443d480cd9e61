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
import progress
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
                    passing: int | None = None, show: bool = True) -> dict[str, Any]:
    """Uniformly random params sets of the search's grid, scored by its objective on the in-sample bars,
    drawn in rounds until ``passing`` of them pass every filter or ``max_draws`` are drawn; the hold-out
    Sharpe of each one that passes, per symbol (``by_symbol``; ``holdout_sharpes`` for a one-symbol search).

    A search over several symbols (a DatasetGroup) judges a set by its aggregate objective, as it
    judged its own trials, and ranks it on each symbol's hold-out. A set that cannot trade a hold-out
    at the instrument's tick (TickSizeError) is left out, as a constraint rejection would be. ``show``: a
    progress bar of the draws on stderr (the passing count beside it).
    """
    passing = config.HOLDOUT_RANDOM_PASSING if passing is None else passing
    members = search.datasets.members
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))

    def one(trial_params: dict[str, Any]) -> tuple[int, list[float] | None]:
        params = search.params_of(trial_params)
        result = optimizer.evaluate(search.datasets, params, search.split, search.filters)
        if result.tier != len(optimizer.FILTER_TIERS) + 1:
            return result.tier, None
        try:
            return result.tier, [holdout_sharpe(m, {**params, "symbol": m.symbol}) for m in members]
        except backtester.TickSizeError:
            return result.tier, None

    results: list[tuple[int, list[float] | None]] = []
    shown = progress.bar(max_draws, "random baseline (hold-out percentile)", "draw", disable=not show)
    while len(results) < max_draws and sum(s is not None for _, s in results) < passing:
        drawn = []
        for _ in range(min(ROUND, max_draws - len(results))):
            trial = study.ask(search.space)
            drawn.append(trial.params)
            study.tell(trial, 0.0)
        results += workers.parallel_map(one, drawn, jobs, shown.update)
        shown.set_postfix(passing=sum(s is not None for _, s in results))
    shown.close()
    passed = [s for _, s in results if s is not None]
    by_symbol = {m.symbol: sorted(s[k] for s in passed) for k, m in enumerate(members)}
    out: dict[str, Any] = {"draws": len(results), "passing": len(passed), "by_symbol": by_symbol,
                           "tier_pass_rates": optimizer.tier_pass_rates([tier for tier, _ in results])}
    if len(members) == 1:
        out["holdout_sharpes"] = by_symbol[members[0].symbol]
    return out


def baseline_of(baseline: dict[str, Any], symbol: str) -> dict[str, Any]:
    """One symbol's view of a random baseline: its hold-out Sharpes as ``holdout_sharpes``."""
    return {**{k: v for k, v in baseline.items() if k != "by_symbol"}, "holdout_sharpes": baseline["by_symbol"][symbol]}


def percentile(value: float, sample: list[float]) -> float:
    """Percentile rank of ``value`` in ``sample`` (ties count half); NaN for fewer than MIN_SAMPLE values."""
    if len(sample) < MIN_SAMPLE:
        return float("nan")
    values = np.asarray(sample, dtype=float)
    return float(100.0 * ((values < value).sum() + 0.5 * (values == value).sum()) / values.size)
