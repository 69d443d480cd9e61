"""The optimize, validate and default-pipeline runs: search, walk-forward, statistics, hold-out, gates, files.

``optimizer.py`` holds the search, ``walkforward.py`` the folds, ``overfitting.py`` DSR and PBO,
``holdout.py`` the final check and ``gates.py`` the export; this module runs them for the command
line in that order and writes what a run leaves: best_params.json, trials.csv, trades_train.csv,
trades_test.csv, trades_holdout.csv, validation.json and report.html.

The single-symbol entry points ``run_optimize``, ``run_validate`` and ``run_pipeline`` take a
``RunSpec``; multirun.py calls them once per symbol, or, for one params set searched on several
symbols, runs ``validate_and_export`` on each symbol after the shared search.
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
import gates
import holdout
import optimizer
import overfitting
import reporting
import walkforward
from data_fetcher import load_candles
from metrics import json_safe
from reporting import fold_table_html, history_figure, importance_figure, stitched_figure, walk_forward_table_html

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
    prod_dir: Path | None = None  # where prod_config_*.py are exported (default: the repository root)
    tick: float | None = None      # --tick / --qty-step: the instrument's precision when no info is cached
    qty_step: float | None = None


@dataclass
class SearchSettings:
    """How the searches of a run go: sampler, worker id, and the re-optimizing walk-forward's budget."""

    sampler: str | None = None
    worker_id: int = 0
    reoptimize: bool = True
    fold_trials: int | None = None
    baseline_draws: int | None = None  # random params sets for the hold-out percentile (None: config's)


def base_params(spec: RunSpec) -> dict[str, Any]:
    """The strategy's fixed params with --params, --timeframe and --symbol applied."""
    params = config.fixed_params(spec.strategy)
    if spec.params_file:
        params = config.load_params_file(spec.params_file, base=params)
    if spec.timeframe:
        params["timeframe"] = spec.timeframe
    params["symbol"] = spec.symbol
    return params


def search_grid(spec: RunSpec) -> dict[str, Any]:
    """The strategy's grid; --timeframe replaces the grid's timeframes (so a 1h CSV can run any grid)."""
    grid = config.param_grid(spec.strategy)
    if spec.timeframe:
        grid["timeframe"] = [spec.timeframe]
    return grid


def datasets_for(spec: RunSpec) -> optimizer.Datasets:
    """Datasets of the run's symbol, loaded once per timeframe, with the final hold-out cut off, and
    the instrument's precision (--tick/--qty-step over Bybit's cached info over config.INSTRUMENTS)."""
    def load(timeframe: str) -> pd.DataFrame:
        candles = load_candles(spec.source, spec.symbol, timeframe, start=spec.start, end=spec.end)
        if datasets.instrument is None:  # after the candles: a Bybit download caches the instrument info
            datasets.instrument = config.instrument_for(spec.symbol, spec.tick, spec.qty_step)
        return candles

    datasets = optimizer.Datasets(load, spec.symbol)
    if spec.source != "bybit":
        datasets.instrument = config.instrument_for(spec.symbol, spec.tick, spec.qty_step)  # fail before loading
    return datasets


def print_data_range(datasets: optimizer.Datasets, timeframe: str) -> dict[str, Any]:
    """One line: the in-sample bars the search may read and the hold-out it may not."""
    info = datasets.describe(timeframe)
    held = (f"hold-out {info['holdout_start'][:16]} .. {info['holdout_end'][:16]} ({info['holdout_bars']} bars, "
            f"{info['holdout_fraction']:.0%}, read once at the end)" if info["holdout_bars"] else "no hold-out")
    console.print(f"data {info['symbol']} {timeframe}: in-sample {info['in_sample_start'][:16]} .. "
                  f"{info['in_sample_end'][:16]} ({info['in_sample_bars']} bars); {held}")
    return info


# ----------------------------------------------------------------------------------------------
# Walk-forward validation
# ----------------------------------------------------------------------------------------------
def print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A right-aligned console table."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_folds(result: dict[str, Any], title: str) -> None:
    """Stability across periods: the per-fold table and the aggregate."""
    print_table(title, ("fold", "test period", "train ret", "train Sharpe", "test ret", "test Sharpe", "test DD",
                        "test trades", "test PF"),
                [(str(row["fold"]), f"{row['test_start'][:10]} .. {row['test_end'][:10]}",
                  f"{row['train_total_return']:+.1%}", f"{row['train_sharpe']:.2f}", f"{row['test_total_return']:+.1%}",
                  f"{row['test_sharpe']:.2f}", f"{row['test_max_drawdown']:.1%}", str(row["test_num_trades"]),
                  reporting.format_metric("profit_factor", row["test_profit_factor"])) for row in result["folds"]])
    agg = result["aggregate"]
    console.print(f"stability across periods: {agg['profitable_folds']}/{agg['folds']} profitable test windows, mean "
                  f"test return {agg['mean_test_return']:+.1%}, compounded {agg['compounded_test_return']:+.1%}, mean "
                  f"test Sharpe {agg['mean_test_sharpe']:.2f}, worst test drawdown {agg['worst_test_drawdown']:.1%}, "
                  f"purge gap {agg['purge_bars']} bars -> {'PASSED' if agg['passed'] else 'not passed'}")


def print_walk_forward(result: dict[str, Any]) -> None:
    """Re-optimizing walk-forward: each fold's winner on its unseen window, and the stitched figures."""
    print_table(f"re-optimizing walk-forward ({result['fold_trials']} trials a fold, on its train window only)",
                ("fold", "train window", "test window", "winner score", "passed", "test ret", "test Sharpe",
                 "test DD", "test trades"),
                [(str(row["fold"]), f"{row['train_start'][:10]} .. {row['train_end'][:10]}",
                  f"{row['test_start'][:10]} .. {row['test_end'][:10]}", f"{row['winner_score']:.2f}",
                  "yes" if row["winner_passed"] else "no (flat)", f"{row['test_total_return']:+.1%}",
                  f"{row['test_sharpe']:.2f}", f"{row['test_max_drawdown']:.1%}", str(row["test_num_trades"]))
                 for row in result["folds"]])
    agg = result["aggregate"]
    console.print(f"stitched out-of-sample ({agg['days']} days): return {agg['total_return']:+.1%}, Sharpe "
                  f"{agg['sharpe']:.2f}, probabilistic Sharpe (DSR with N = 1) {agg['dsr']:.2f}, max drawdown "
                  f"{agg['max_drawdown']:.1%}, {agg['profitable_folds']}/{agg['folds']} profitable folds -> "
                  f"{'PASSED' if agg['passed'] else 'not passed'}")


def run_validate(spec: RunSpec, folds: int, *, reoptimize: bool = False, fold_trials: int | None = None,
                 seed: int | None = None, jobs: int = 1, sampler: str | None = None) -> dict[str, Any]:
    """`main.py validate`: stability across periods of one params set on the in-sample bars, and with
    ``reoptimize`` the re-optimizing walk-forward of the strategy's grid; validation.json and a report.

    Returns the stability result ("folds", "aggregate"), with "walk_forward" (None without
    ``reoptimize``) and "data" (the in-sample and hold-out ranges).
    """
    params = base_params(spec)
    datasets = datasets_for(spec)
    data = datasets.get(params["timeframe"])
    info = print_data_range(datasets, params["timeframe"])
    result = walkforward.stability_across_periods(data, params, folds)
    print_folds(result, f"stability across periods: {spec.strategy} {spec.symbol} {params['timeframe']}")
    wf = None
    if reoptimize:
        wf = walkforward.reoptimizing_walk_forward(datasets, params, search_grid(spec), folds,
                                                   fold_trials or config.WF_FOLD_TRIALS,
                                                   seed=config.OPTUNA_SETTINGS["seed"] if seed is None else seed,
                                                   jobs=jobs, sampler=sampler)
        print_walk_forward(wf)
    spec.out.mkdir(parents=True, exist_ok=True)
    doc = {"strategy_file": str(config.strategy(params["mode"]).path), "params": params, "data": info, **result,
           "walk_forward": wf}
    (spec.out / "validation.json").write_text(json.dumps(json_safe(doc), indent=2))
    full = backtester.backtest(data, params)
    sections: list[Any] = [fold_table_html(result)]
    if wf:
        sections = [walk_forward_table_html(wf), stitched_figure(wf), *sections]
    reporting.write_report_html(spec.out / "report.html", full.equity, full.trades, full.metrics, full.candles,
                                f"Validation {spec.strategy} {spec.symbol} (in-sample bars)", sections)
    console.print(f"wrote {spec.out / 'validation.json'}, {spec.out / 'report.html'}")
    return {**result, "walk_forward": wf, "data": info}


# ----------------------------------------------------------------------------------------------
# The search with its outputs
# ----------------------------------------------------------------------------------------------
def trials_frame(trials: list[FrozenTrial]) -> pd.DataFrame:
    """Every trial: its study number, params, score, fail_reason, tier, train/test metrics."""
    rows = [{"trial": t.number, "score": t.value, **{f"param_{k}": v for k, v in t.params.items()}, **t.user_attrs}
            for t in sorted(trials, key=lambda t: t.number)]
    return pd.DataFrame(rows)


class Progress:
    """tqdm bar of stored trials with trials/s, best score and ETA; each new leader reported above it."""

    def __init__(self, total: int, history: list[FrozenTrial], quiet: bool = False) -> None:
        self.bar = tqdm(total=total, unit="trial", dynamic_ncols=True, disable=quiet)
        self.history = history
        self.best = max((t.value for t in history), default=-math.inf)
        self.quiet = quiet

    def __call__(self, trial: FrozenTrial) -> None:
        self.history.append(trial)
        self.bar.update(1)
        if trial.value > self.best:
            self.best = trial.value
            self.bar.set_postfix(best=f"{self.best:.3f}")
            if not self.quiet:
                self.bar.write(optimizer.leader_report(trial, self.history))

    def close(self) -> None:
        self.bar.close()


def tier_rates_text(rows: list[dict[str, Any]], what: str) -> str:
    """Pass rate per filter tier as one line."""
    parts = [f"{r['tier']} {r['name']} {r['passed']}/{r['reached']}"
             + (f" ({r['pass_rate']:.0%})" if r["reached"] else "") for r in rows]
    total = rows[0]["reached"] if rows else 0
    passed = rows[-1]["passed"] if rows else 0
    return f"filter tiers, {what}: " + ", ".join(parts) + f"; all tiers {passed}/{total}" + \
        (f" ({passed / total:.1%})" if total else "")


def study_fingerprint(spec: RunSpec, grid: dict[str, Any], infos: list[dict[str, Any]]) -> dict[str, Any]:
    """What a study's trials were made on (each symbol's data range and hold-out, the source, strategy,
    grid, split and filters): a study refuses to be resumed on anything else."""
    ranges = [{**{k: info[k] for k in ("symbol", "in_sample_start", "in_sample_end", "holdout_fraction")},
               "holdout_start": info.get("holdout_start")} for info in infos]
    return {**(ranges[0] if len(ranges) == 1 else {"symbols": ranges}), "source": spec.source,
            "strategy": spec.strategy, "grid": repr(sorted(grid.items())),
            "split": [config.TRAIN_FRACTION, config.GAP_FRACTION], "filters": config.OBJECTIVE_FILTERS}


def run_optimize(spec: RunSpec, trials: int, jobs: int, folds: int, study_name: str | None, storage: str | None,
                 seed: int, export: bool, quiet: bool = False, settings: SearchSettings | None = None
                 ) -> dict[str, Any]:
    """`main.py optimize`: search the in-sample bars, validate, compute the statistics, run the hold-out
    once, write the outputs, and export only when every gate passes."""
    settings = settings or SearchSettings()
    params = base_params(spec)
    grid = search_grid(spec)
    datasets = datasets_for(spec)
    timeframes = [params["timeframe"], *[tf for tf in grid.get("timeframe", []) if tf != params["timeframe"]]]
    for timeframe in timeframes:  # every dataset loads before the search: errors come before any work
        data = datasets.get(timeframe)
        walkforward.fold_ranges(len(data), folds, config.WF_TRAIN_RATIO, walkforward.lookback_bars(params))
    info = print_data_range(datasets, params["timeframe"])
    fingerprint = study_fingerprint(spec, grid, [info])
    name = study_name or f"{spec.strategy}-{spec.symbol}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    search = optimizer.Search(datasets, params, grid, study_name=name, storage=storage, seed=seed, jobs=jobs,
                              worker_id=settings.worker_id, sampler=settings.sampler, fingerprint=fingerprint)
    console.print(f"study '{name}': {len(search.known)} trials so far, running {trials} more on {jobs} worker "
                  f"process(es), sampler {search.sampler_kind}, worker id {settings.worker_id}")
    progress = Progress(trials, list(search.known), quiet)
    try:
        result = search.run(trials, progress)
    finally:
        progress.close()
    if result.best is None:
        raise config.ConfigError("the search finished no trial")
    console.print(f"{len(result.trials)} trials in the study; this run stored {result.stored} in "
                  f"{result.seconds:.1f} s (sampler {result.sampler_seconds:.1f} s, backtests "
                  f"{result.backtest_seconds:.1f} s), {result.duplicates} repeated params sets answered from the "
                  "study instead of run again" + "".join(f"; {note}" for note in result.notes))
    search_rates = optimizer.tier_pass_rates([t.user_attrs.get("tier", 0) for t in result.trials])
    console.print(tier_rates_text(search_rates, "trials of the study"))
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    trials_frame(result.trials).to_csv(out / "trials.csv", index=False)
    if result.interrupted:
        console.print(f"[bold]interrupted[/bold]: {len(result.trials)} trials are stored; run again with "
                      f"--study-name {name} to resume. Nothing was validated or exported. Wrote {out}/trials.csv")
        return {"best": None, "validation": None, "exported": None, "complete": False, "study": name}
    return validate_and_export(spec, search, datasets, result, folds, export, jobs, seed, settings, info,
                               search_rates)


def validate_and_export(spec: RunSpec, search: optimizer.Search, datasets: optimizer.Datasets,
                        result: optimizer.SearchResult, folds: int, export: bool, jobs: int, seed: int,
                        settings: SearchSettings, info: dict[str, Any], search_rates: list[dict[str, Any]],
                        baseline: dict[str, Any] | None = None, searched: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """After a complete search: stability, walk-forward, DSR/PBO, the hold-out, the gates, the files.

    ``datasets`` is the symbol of ``spec``: the searched one, or one member of a search over several
    symbols (``searched``: their symbols and the aggregate, written into the files), whose random
    ``baseline`` was drawn once for all of them (``holdout.baseline_of``); every check is this symbol's.
    """
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    pick = result.best
    params = {**search.params_of(pick.params), "symbol": spec.symbol}
    fail_reason = pick.user_attrs.get("fail_reason", "not scored")
    data = datasets.get(params["timeframe"])
    stability = walkforward.stability_across_periods(data, params, folds)
    print_folds(stability, f"stability across periods of the chosen trial {pick.number} (score {pick.value:.3f})")
    wf = None
    if settings.reoptimize:
        wf = walkforward.reoptimizing_walk_forward(datasets, {**search.base_params, "symbol": spec.symbol},
                                                   search_grid(spec), folds,
                                                   settings.fold_trials or config.WF_FOLD_TRIALS, seed=seed,
                                                   jobs=jobs, sampler=settings.sampler)
        print_walk_forward(wf)
    matrix, numbers = overfitting.trial_return_matrix(datasets, result.trials, search.params_of, jobs)
    stats = overfitting.search_statistics(matrix, numbers, pick.number)
    if stats:
        console.print(f"Deflated Sharpe Ratio {stats['deflated_sharpe']['dsr']:.3f} (N = "
                      f"{stats['deflated_sharpe']['n_trials']} distinct params sets), Probability of Backtest "
                      f"Overfitting {stats['pbo']['pbo']:.3f} (over {stats['pbo']['strategies']} distinct return "
                      f"series)\n  {stats['meaning']}")
    # Everything above was decided on in-sample bars only; now the hold-out is read, once.
    check = holdout.holdout_check(datasets, params, search.filters)
    if baseline is None:
        baseline = holdout.random_baseline(search, settings.baseline_draws or config.HOLDOUT_RANDOM_DRAWS, seed,
                                           jobs)
    if check["available"]:
        check["holdout_sharpe_percentile"] = holdout.percentile(check["holdout"]["sharpe"], baseline["holdout_sharpes"])
        check["random_passing"] = baseline["passing"]
        print_holdout(check, baseline)
    console.print(tier_rates_text(baseline["tier_pass_rates"], f"{baseline['draws']} random params sets"))
    gate_list = gates.export_gates(complete=True, fail_reason=fail_reason, stability=stability, walk_forward=wf,
                                   stats=stats, holdout=check)
    print_gates(gate_list)
    decided = gates.deciding_gate(gate_list)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    best_doc = {"strategy": spec.strategy, "strategy_file": str(config.strategy(params["mode"]).path),
                "symbol": spec.symbol, **(searched or {}), "study": search.study_name, "trial": pick.number,
                "score": pick.value, "passed_filters": fail_reason == "", "passed_gates": decided is None,
                "deciding_gate": decided.name if decided else None, "created": created, "params": params}
    (out / "best_params.json").write_text(json.dumps(json_safe(best_doc), indent=2))
    split = optimizer.train_test_split(len(data), *search.split)
    train = backtester.backtest(data, params, *split.train)
    test = backtester.backtest(data, params, *split.test)
    reporting.write_trades_csv(out / "trades_train.csv", train.trades)
    reporting.write_trades_csv(out / "trades_test.csv", test.trades)
    held = None
    if check["available"]:
        held = backtester.backtest(datasets.full(params["timeframe"]), params,
                                   *datasets.holdout_bars(params["timeframe"]))
        reporting.write_trades_csv(out / "trades_holdout.csv", held.trades)
    validation = {"strategy_file": best_doc["strategy_file"], "searched": searched, "chosen_trial": pick.number,
                  "chosen_trial_score": pick.value, "data": info,
                  "stability_across_periods": stability, "walk_forward": wf, "overfitting": stats, "holdout": check,
                  "random_baseline": {k: v for k, v in baseline.items()},
                  "tier_pass_rates": {"study": search_rates, "random": baseline["tier_pass_rates"]},
                  "gates": [g.__dict__ for g in gate_list], "train_metrics": train.metrics,
                  "test_metrics": test.metrics}
    (out / "validation.json").write_text(json.dumps(json_safe(validation), indent=2))
    write_optimize_report(spec, search, result, validation, gate_list, train, test, held, stability, wf)
    exported = None
    if export and decided is None:
        metadata = {"created": created, "source": spec.source, "symbol": spec.symbol, **(searched or {}),
                    "strategy": spec.strategy, "strategy_file": best_doc["strategy_file"],
                    "study": search.study_name, "trial": pick.number, "score": pick.value,
                    "data": info, "dsr": stats["deflated_sharpe"], "pbo": stats["pbo"],
                    "in_sample": _figures(check["in_sample"]), "holdout": _figures(check["holdout"]),
                    "holdout_sharpe_percentile": check.get("holdout_sharpe_percentile"),
                    "random_passing": check.get("random_passing"),
                    "walk_forward": wf["aggregate"] if wf else None, "stability": stability["aggregate"]}
        exported = gates.export_prod_config(params, metadata, spec.prod_dir)
        console.print(f"exported to {exported}: every gate passed")
    elif export:
        console.print(f"not exported: gate '{decided.name}' decided ({decided.detail})")
    reporting.print_summary(test.metrics, "chosen trial, in-sample test period")
    console.print(f"wrote {out}/best_params.json, {'' if searched else 'trials.csv, '}trades_train.csv, trades_test.csv"
                  + (", trades_holdout.csv" if held else "") + ", validation.json, report.html")
    return {"best": best_doc, "validation": validation, "exported": str(exported) if exported else None,
            "complete": True, "study": search.study_name}


HOLDOUT_ROWS = (("total_return", "return"), ("cagr", "CAGR"), ("sharpe", "Sharpe"), ("max_drawdown", "max drawdown"),
                ("profit_factor", "profit factor"), ("num_trades", "trades"))


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key, _ in HOLDOUT_ROWS}


def print_holdout(check: dict[str, Any], baseline: dict[str, Any]) -> None:
    """In-sample next to hold-out, the filters' verdict and the pick's percentile among random passing trials."""
    table = Table(title=f"chosen params: in-sample vs hold-out ({check['start'][:10]} .. {check['end'][:10]}, "
                        "never seen before)")
    for column in ("", "in-sample", "hold-out"):
        table.add_column(column, justify="right")
    for key, label in HOLDOUT_ROWS:
        table.add_row(label, reporting.format_metric(key, check["in_sample"][key]),
                      reporting.format_metric(key, check["holdout"][key]))
    console.print(table)
    pct = check["holdout_sharpe_percentile"]
    console.print(f"hold-out filters: {'passed' if check['passed'] else 'FAILED: ' + check['fail_reason']}; "
                  f"hold-out Sharpe percentile among {baseline['passing']} random params sets that pass the filters "
                  f"in-sample (of {baseline['draws']} drawn): "
                  + (f"{pct:.0f}" if math.isfinite(pct) else f"n/a (fewer than {holdout.MIN_SAMPLE} passed)"))


def print_gates(gate_list: list[gates.Gate]) -> None:
    """Every export gate with its verdict and figures."""
    table = Table(title="export gates (the first that fails decides)")
    for column in ("gate", "verdict", "figures"):
        table.add_column(column)
    for gate in gate_list:
        table.add_row(gate.name, "ok" if gate.passed else "FAIL", gate.detail)
    console.print(table)


def write_optimize_report(spec: RunSpec, search: optimizer.Search, result: optimizer.SearchResult,
                          validation: dict[str, Any], gate_list: list[gates.Gate], train: Any, test: Any,
                          held: Any, stability: dict[str, Any], wf: dict[str, Any] | None) -> None:
    """report.html: gates, hold-out vs in-sample, statistics, tier pass rates, folds, history, importances."""
    check, stats = validation["holdout"], validation["overfitting"]
    gate_rows = "".join(f"<tr><td>{g.name}</td><td>{'ok' if g.passed else 'FAIL'}</td><td>{g.detail}</td></tr>"
                        for g in gate_list)
    sections: list[Any] = [f"<h2>Export gates</h2><table><tr><th>gate</th><th>verdict</th><th>figures</th></tr>"
                           f"{gate_rows}</table>"]
    if check["available"]:
        rows = "".join(f"<tr><td>{label}</td><td>{reporting.format_metric(key, check['in_sample'][key])}</td>"
                       f"<td>{reporting.format_metric(key, check['holdout'][key])}</td></tr>"
                       for key, label in HOLDOUT_ROWS)
        pct = check["holdout_sharpe_percentile"]
        rank = (f"<p>Hold-out Sharpe percentile among {check['random_passing']} random params sets that pass the "
                f"filters in-sample: {pct:.0f}</p>" if math.isfinite(pct)
                else f"<p>Only {check['random_passing']} random params sets passed the filters in-sample: no "
                     "percentile.</p>")
        sections += [f"<h2>Hold-out ({check['start'][:10]} .. {check['end'][:10]})</h2><table><tr><th></th>"
                     f"<th>in-sample</th><th>hold-out</th></tr>{rows}</table>{rank}",
                     reporting.equity_figure(held.equity, "Hold-out: equity and drawdown")]
    if stats:
        sections.append(f"<h2>Overfitting statistics</h2><p>Deflated Sharpe Ratio "
                        f"{stats['deflated_sharpe']['dsr']:.3f}; Probability of Backtest Overfitting "
                        f"{stats['pbo']['pbo']:.3f}.</p><p>{stats['meaning']}</p>")
    for what, rates in validation["tier_pass_rates"].items():
        frame = pd.DataFrame(rates)
        sections.append(f"<h2>Filter tiers: pass rates ({what} trials)</h2>"
                        + frame.to_html(index=False, float_format=lambda v: f"{v:.3f}"))
    if wf:
        sections += [walk_forward_table_html(wf), stitched_figure(wf)]
    sections += ["<h2>In-sample test period</h2>", reporting.metrics_table_html(test.metrics),
                 reporting.equity_figure(test.equity, "In-sample test period: equity and drawdown"),
                 fold_table_html(stability), history_figure(result.trials),
                 importance_figure(result.trials, search.space)]
    reporting.write_report_html(spec.out / "report.html", train.equity, train.trades, train.metrics, train.candles,
                                f"Optimization {spec.strategy} {spec.symbol}: chosen trial (train period first)",
                                sections)


def run_pipeline(spec: RunSpec, trials: int, jobs: int, folds: int, export: bool, seed: int,
                 storage: str | None = None, quiet: bool = False, settings: SearchSettings | None = None
                 ) -> dict[str, Any]:
    """`python main.py`: the switches of config.py on the active strategy."""
    outcome: dict[str, Any] = {}
    if config.ENABLE_FIXED_PARAMS:
        fixed_spec = RunSpec(**{**spec.__dict__, "out": spec.out / "fixed"})
        outcome["fixed"] = run_validate(fixed_spec, folds)
    if config.ENABLE_OPTUNA:
        outcome["optuna"] = run_optimize(RunSpec(**{**spec.__dict__, "out": spec.out / "optuna"}), trials, jobs,
                                         folds, None, storage, seed, export, quiet, settings)
    return outcome
