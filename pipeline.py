"""The optimize, validate and default-pipeline runs: search, walk-forward, statistics, files, export.

``optimizer.py`` holds the machinery (search, filters, folds, DSR, PBO); this module runs it for
the command line and writes what a run leaves: best_params.json, trials.csv, trades_train.csv,
trades_test.csv, validation.json and report.html.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

import backtester
import config
import optimizer
import reporting
from data_fetcher import load_candles
from metrics import json_safe
from reporting import fold_table_html, history_figure, importance_figure

console = Console(width=120) if not Console().is_terminal else Console()


@dataclass
class RunSpec:
    """What to run on: strategy, data source and symbol, and where outputs go."""

    strategy: str
    source: str
    symbol: str
    out: Path
    start: str | None = None
    end: str | None = None
    params_file: str | None = None
    timeframe: str | None = None
    export_dir: Path | None = None  # where an export writes prod_config_*.py (default: the repository)
    tick: float | None = None      # --tick / --qty-step: the instrument's precision when no info is cached
    qty_step: float | None = None


def base_params(spec: RunSpec) -> dict[str, Any]:
    """The strategy's fixed params with --params, --timeframe and --symbol applied."""
    params = config.fixed_params(spec.strategy)
    if spec.params_file:
        params = config.load_params_file(spec.params_file, base=params)
    if spec.timeframe:
        params["timeframe"] = spec.timeframe
    params["symbol"] = spec.symbol
    return params


def datasets_for(spec: RunSpec) -> optimizer.Datasets:
    """Datasets of the run's symbol, loaded once per timeframe."""
    def load(timeframe: str) -> pd.DataFrame:
        candles = load_candles(spec.source, spec.symbol, timeframe, start=spec.start, end=spec.end)
        if datasets.instrument is None:  # after the candles: a Bybit download caches the instrument info
            datasets.instrument = config.instrument_for(spec.symbol, spec.tick, spec.qty_step)
        return candles

    datasets = optimizer.Datasets(load, spec.symbol)
    if spec.source != "bybit":
        datasets.instrument = config.instrument_for(spec.symbol, spec.tick, spec.qty_step)  # fail before loading
    return datasets


# ----------------------------------------------------------------------------------------------
# Walk-forward validation
# ----------------------------------------------------------------------------------------------
def print_folds(result: dict[str, Any], title: str) -> None:
    """The per-fold table and the aggregate."""
    table = Table(title=title)
    for column in ("fold", "test period", "train ret", "train Sharpe", "test ret", "test Sharpe", "test DD",
                   "test trades", "test PF"):
        table.add_column(column, justify="right")
    for row in result["folds"]:
        table.add_row(str(row["fold"]), f"{row['test_start'][:10]} .. {row['test_end'][:10]}",
                      f"{row['train_total_return']:+.1%}", f"{row['train_sharpe']:.2f}",
                      f"{row['test_total_return']:+.1%}", f"{row['test_sharpe']:.2f}",
                      f"{row['test_max_drawdown']:.1%}", str(row["test_num_trades"]),
                      reporting.format_metric("profit_factor", row["test_profit_factor"]))
    console.print(table)
    agg = result["aggregate"]
    console.print(f"aggregate: {agg['profitable_folds']}/{agg['folds']} profitable test folds, mean test return "
                  f"{agg['mean_test_return']:+.1%}, compounded {agg['compounded_test_return']:+.1%}, mean test "
                  f"Sharpe {agg['mean_test_sharpe']:.2f}, worst test drawdown {agg['worst_test_drawdown']:.1%}, "
                  f"purge gap {agg['purge_bars']} bars -> {'PASSED' if agg['passed'] else 'not passed'}")


def run_validate(spec: RunSpec, folds: int) -> dict[str, Any]:
    """`main.py validate`: walk-forward validation of one params set, with validation.json and a report."""
    params = base_params(spec)
    data = datasets_for(spec).get(params["timeframe"])
    result = optimizer.walk_forward(data, params, folds)
    print_folds(result, f"walk-forward: {spec.strategy} {spec.symbol} {params['timeframe']}")
    spec.out.mkdir(parents=True, exist_ok=True)
    doc = {"strategy_file": str(config.strategy(params["mode"]).path), "params": params, **result}
    (spec.out / "validation.json").write_text(json.dumps(json_safe(doc), indent=2))
    full = backtester.backtest(data, params)
    reporting.write_report_html(spec.out / "report.html", full.equity, full.trades, full.metrics, full.candles,
                                f"Validation {spec.strategy} {spec.symbol}", [fold_table_html(result)])
    console.print(f"wrote {spec.out / 'validation.json'}, {spec.out / 'report.html'}")
    return result


# ----------------------------------------------------------------------------------------------
# The search with its outputs
# ----------------------------------------------------------------------------------------------
def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """Every trial: params, score, fail_reason, tier, train/test metrics."""
    rows = []
    for number, trial in enumerate(trials):
        rows.append({"trial": number, "score": trial.value, **{f"param_{k}": v for k, v in trial.params.items()},
                     **trial.user_attrs})
    return pd.DataFrame(rows)


class Progress:
    """tqdm bar with trials/s, best score and ETA, and the new-leader report printed above it."""

    def __init__(self, total: int, history: list[FrozenTrial], quiet: bool = False) -> None:
        self.bar = tqdm(total=total, unit="trial", dynamic_ncols=True, disable=quiet)
        self.history = history
        self.best = -math.inf
        self.quiet = quiet

    def __call__(self, trial: FrozenTrial, result: optimizer.Evaluation, is_leader: bool) -> None:
        self.history.append(trial)
        self.bar.update(1)
        if is_leader:
            self.best = trial.value
            self.bar.set_postfix(best=f"{self.best:.3f}")
            if not self.quiet:
                self.bar.write(optimizer.leader_report(trial, result, self.history))

    def close(self) -> None:
        self.bar.close()


def run_optimize(spec: RunSpec, trials: int, jobs: int, folds: int, study_name: str | None, storage: str | None,
                 seed: int, export: bool, quiet: bool = False) -> dict[str, Any]:
    """`main.py optimize`: search, validate the best trials walk-forward, write outputs, maybe export."""
    params = base_params(spec)
    grid = config.param_grid(spec.strategy)
    datasets = datasets_for(spec)
    name = study_name or f"{spec.strategy}-{spec.symbol}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    search = optimizer.Search(datasets, params, grid, study_name=name, storage=storage, seed=seed, jobs=jobs)
    for timeframe in {params["timeframe"], *grid.get("timeframe", [])}:
        data = datasets.get(timeframe)  # load every dataset before the search: errors come before any work
        optimizer.fold_ranges(len(data), folds, config.WF_TRAIN_RATIO, optimizer.lookback_bars(params))
    resumed = len(search.known)
    console.print(f"study '{name}': {resumed} trials so far, running {trials} more on {jobs} job(s)")
    progress = Progress(trials, [], quiet)
    try:
        result = search.run(trials, progress)
    finally:
        progress.close()
    if result.best is None:
        raise config.ConfigError("the search finished no trial")
    console.print(f"{len(result.trials)} trials in the study ({result.seconds:.1f} s for this run: sampler "
                  f"{result.sampler_seconds:.1f} s, backtests {result.backtest_seconds:.1f} s)"
                  + ("  [interrupted: the trials so far are saved]" if result.interrupted else ""))
    return write_search_outputs(spec, search, datasets, result, folds, export)


def write_search_outputs(spec: RunSpec, search: optimizer.Search, datasets: optimizer.Datasets,
                         result: optimizer.SearchResult, folds: int, export: bool) -> dict[str, Any]:
    """Validate the best trials, compute the statistics, write every file, export when it passes."""
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    ranked = sorted(result.trials, key=lambda t: t.value, reverse=True)
    validations = []
    for trial in ranked[:config.VALIDATE_TOP]:
        params = search.params_of(trial.params)
        data = datasets.get(params["timeframe"])
        validations.append((trial, params, optimizer.walk_forward(data, params, folds)))
    passing = [v for v in validations if v[2]["aggregate"]["passed"]]
    trial, params, wf = max(passing or validations[:1],
                            key=lambda v: (v[0].user_attrs.get("tier", 0), v[2]["aggregate"]["mean_test_sharpe"]))
    print_folds(wf, f"walk-forward of the chosen trial (score {trial.value:.3f})")
    stats = optimizer.overfitting_statistics(datasets, result.trials, search.params_of, search.split)
    if stats:
        console.print(f"Deflated Sharpe Ratio {stats['deflated_sharpe']['dsr']:.3f}, Probability of Backtest "
                      f"Overfitting {stats['pbo']['pbo']:.3f}\n  {stats['meaning']}")
    passed_filters = trial.user_attrs.get("fail_reason", "x") == ""
    best_doc = {"strategy": spec.strategy, "strategy_file": str(config.strategy(params["mode"]).path),
                "symbol": spec.symbol, "score": trial.value,
                "passed_filters": passed_filters, "passed_validation": wf["aggregate"]["passed"],
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "params": params}
    (out / "best_params.json").write_text(json.dumps(json_safe(best_doc), indent=2))
    trials_frame(result.trials).to_csv(out / "trials.csv", index=False)
    data = datasets.get(params["timeframe"])
    split = optimizer.train_test_split(len(data), *search.split)
    train = backtester.backtest(data, params, *split.train)
    test = backtester.backtest(data, params, *split.test)
    reporting.write_trades_csv(out / "trades_train.csv", train.trades)
    reporting.write_trades_csv(out / "trades_test.csv", test.trades)
    validation = {"chosen_trial_score": trial.value, "walk_forward": wf, "overfitting": stats,
                  "validated_trials": [{"score": t.value, "aggregate": v["aggregate"]} for t, _, v in validations],
                  "train_metrics": train.metrics, "test_metrics": test.metrics}
    (out / "validation.json").write_text(json.dumps(json_safe(validation), indent=2))
    sections: list[Any] = [
        "<h2>Test period</h2>", reporting.metrics_table_html(test.metrics),
        reporting.equity_figure(test.equity, "Test period: equity and drawdown"),
        fold_table_html(wf), history_figure(result.trials), importance_figure(result.trials, search.space),
    ]
    if stats:
        sections.insert(0, f"<h2>Overfitting statistics</h2><p>Deflated Sharpe Ratio "
                           f"{stats['deflated_sharpe']['dsr']:.3f}; Probability of Backtest Overfitting "
                           f"{stats['pbo']['pbo']:.3f}.</p><p>{stats['meaning']}</p>")
    reporting.write_report_html(out / "report.html", train.equity, train.trades, train.metrics, train.candles,
                                f"Optimization {spec.strategy} {spec.symbol}: best trial (train period first)",
                                sections)
    exported = None
    if export and passed_filters and wf["aggregate"]["passed"]:
        exported = optimizer.export_prod_config(params, {"score": trial.value, "source": spec.source,
                                                         "walk_forward": wf["aggregate"],
                                                         "created": best_doc["created"]}, spec.export_dir)
        console.print(f"exported to {exported}")
    elif export:
        console.print("not exported: the chosen trial did not pass every filter and the walk-forward validation")
    reporting.print_summary(test.metrics, "best trial, test period")
    console.print(f"wrote {out}/best_params.json, trials.csv, trades_train.csv, trades_test.csv, validation.json, "
                  "report.html")
    return {"best": best_doc, "validation": validation, "exported": str(exported) if exported else None}


def run_pipeline(spec: RunSpec, trials: int, jobs: int, folds: int, export: bool, seed: int,
                 storage: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """`python main.py`: the switches of config.py on the active strategy."""
    outcome: dict[str, Any] = {}
    if config.ENABLE_FIXED_PARAMS:
        fixed_spec = RunSpec(**{**spec.__dict__, "out": spec.out / "fixed"})
        outcome["fixed"] = run_validate(fixed_spec, folds)
    if config.ENABLE_OPTUNA:
        outcome["optuna"] = run_optimize(RunSpec(**{**spec.__dict__, "out": spec.out / "optuna"}), trials, jobs,
                                         folds, None, storage, seed, export, quiet)
    return outcome

