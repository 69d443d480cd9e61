"""One command over several symbols: a folder per symbol, a summary across them, failures isolated.

Built above the single-symbol runs (``main.backtest_symbol``, ``pipeline.run_validate``,
``pipeline.run_optimize``): each symbol runs in ``<out>/<SYMBOL>/`` exactly as a one-symbol run
would, and ``<out>/summary.csv`` / ``summary.json`` (and a console table) put them side by side.
A symbol that fails (no data, a bad file, a refused parameter) gets its error in the summary and
the others still run.

Backtests and validations of several symbols run in ``jobs`` worker processes with one progress
bar; each symbol's console output goes to its ``console.txt``. Searches run one symbol after the
other (their ``--jobs`` is the search's own), or as one search of one params set for all symbols
(``together``), scored by an aggregate of the per-symbol scores (``optimizer.DatasetGroup``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from functools import partial
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

import config
import strategy_loader
from data_fetcher import DataError
from metrics import json_safe

SUMMARY_COLUMNS = ("symbol", "stage", "status", "return", "sharpe", "max_drawdown", "trades", "dsr", "pbo", "passed",
                   "folder", "error")
Task = Callable[[str, Path], dict[str, Any]]


def parse_symbols(text: str) -> list[str]:
    """``A,B,C`` as a list; an empty entry or a repeated symbol is an error naming it."""
    symbols = [s.strip() for s in text.split(",")]
    if not all(symbols):
        raise config.ConfigError(f"--symbols {text!r}: expected symbols separated by commas, e.g. BTCUSDT,ETHUSDT")
    repeated = sorted({s for s in symbols if symbols.count(s) > 1})
    if repeated:
        raise config.ConfigError(f"--symbols {text!r} names {', '.join(repeated)} more than once")
    return symbols


# ----------------------------------------------------------------------------------------------
# Running a task per symbol
# ----------------------------------------------------------------------------------------------
def _failure(symbol: str, folder: Path, exc: Exception, stage: str) -> dict[str, Any]:
    """The summary row of a symbol that failed; an unexpected error's traceback goes to its error.txt."""
    known = isinstance(exc, (config.ConfigError, DataError, OSError))
    message = str(exc) if known else f"{type(exc).__name__}: {exc}"
    if not known:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(exc)))
        message += f" (traceback in {folder / 'error.txt'})"
    return {"symbol": symbol, "stage": stage, "status": "failed", "error": message, "folder": str(folder)}


def run_task(task: Task, symbol: str, folder: Path, capture: bool, stage: str) -> dict[str, Any]:
    """Run ``task`` for one symbol; its console output goes to ``folder/console.txt`` when ``capture``."""
    try:
        if not capture:
            row = task(symbol, folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "console.txt").open("w") as log, contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                row = task(symbol, folder)
    except Exception as exc:  # noqa: BLE001 - one symbol's failure is reported; the others still run
        return _failure(symbol, folder, exc, stage)
    return {"symbol": symbol, "stage": stage, "status": "ok", "folder": str(folder), **row}


def _worker_start(sources: list[str]) -> None:
    """A worker process loads the strategy files the parent loaded on request."""
    strategy_loader.load_sources(sources)


def run_each(task: Task, symbols: list[str], out: Path, jobs: int, stage: str, capture: bool = True
             ) -> list[dict[str, Any]]:
    """``task(symbol, out/symbol)`` for every symbol, in ``jobs`` worker processes, with one progress bar."""
    rows: dict[str, dict[str, Any]] = {}
    # one bar over the symbols; a run that prints its own progress (a search) shows that instead
    bar = tqdm(total=len(symbols), unit="symbol", desc=stage, dynamic_ncols=True, disable=not capture)
    try:
        if jobs > 1 and len(symbols) > 1:
            context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
            with ProcessPoolExecutor(min(jobs, len(symbols)), mp_context=context, initializer=_worker_start,
                                     initargs=(strategy_loader.requested_sources(),)) as pool:
                futures = {pool.submit(run_task, task, s, out / s, True, stage): s for s in symbols}
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update(1)
        else:
            for symbol in symbols:
                rows[symbol] = run_task(task, symbol, out / symbol, capture, stage)
                bar.update(1)
    finally:
        bar.close()
    return [rows[s] for s in symbols]


# ----------------------------------------------------------------------------------------------
# The summary
# ----------------------------------------------------------------------------------------------
def write_summary(rows: list[dict[str, Any]], out: Path, title: str, extra: dict[str, Any] | None = None,
                  console: Console | None = None) -> list[dict[str, Any]]:
    """The table on the console, ``summary.csv`` and ``summary.json`` in ``out``; returns the failed rows."""
    out.mkdir(parents=True, exist_ok=True)
    full = [{column: row.get(column) for column in SUMMARY_COLUMNS} for row in rows]
    pd.DataFrame(full, columns=list(SUMMARY_COLUMNS)).to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(json.dumps(json_safe({"title": title, **(extra or {}), "rows": full}),
                                                 indent=2))
    console = console or (Console() if Console().is_terminal else Console(width=140))
    table = Table(title=title)
    shown = [c for c in SUMMARY_COLUMNS if c not in ("folder", "error") and any(r.get(c) is not None for r in full)]
    for column in shown:
        table.add_column(column, justify="left" if column in ("symbol", "stage", "status") else "right")
    for row in full:
        table.add_row(*(_cell(column, row[column]) for column in shown))
    console.print(table)
    failed = [row for row in full if row["status"] != "ok"]
    console.print(f"wrote {out / 'summary.csv'}, {out / 'summary.json'}")
    for row in failed:
        print(f"error: {row['symbol']} ({row['stage']}): {row['error']}", file=sys.stderr)
    return failed


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "passed":
        return "passed" if value else "failed"
    if column in ("return", "max_drawdown") and isinstance(value, (int, float)):
        return f"{value:+.1%}" if column == "return" else f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# The figures of one symbol's run (its summary row)
# ----------------------------------------------------------------------------------------------
def backtest_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """A backtest's figures."""
    return {"return": metrics["total_return"], "sharpe": metrics["sharpe"],
            "max_drawdown": metrics["max_drawdown"], "trades": metrics["num_trades"]}


def validation_row(result: dict[str, Any]) -> dict[str, Any]:
    """A walk-forward's figures: compounded test return, mean test Sharpe, worst test drawdown, test trades."""
    agg = result["aggregate"]
    return {"return": agg["compounded_test_return"], "sharpe": agg["mean_test_sharpe"],
            "max_drawdown": agg["worst_test_drawdown"], "trades": agg["test_trades"], "passed": agg["passed"]}


def search_row(outcome: dict[str, Any]) -> dict[str, Any]:
    """A search's figures (the chosen trial's test period, DSR and PBO; passed = filters and walk-forward)."""
    best = outcome["best"]
    return _search_figures(outcome["validation"]["test_metrics"], outcome["validation"].get("overfitting"),
                           bool(best["passed_filters"] and best["passed_validation"]))


def _search_figures(test: dict[str, Any], stats: dict[str, Any] | None, passed: bool) -> dict[str, Any]:
    stats = stats or {}
    return {"return": test["total_return"], "sharpe": test["sharpe"],
            "max_drawdown": test["max_drawdown"], "trades": test["num_trades"],
            "dsr": stats.get("deflated_sharpe", {}).get("dsr"), "pbo": stats.get("pbo", {}).get("pbo"),
            "passed": passed}


# ----------------------------------------------------------------------------------------------
# The commands over several symbols
# ----------------------------------------------------------------------------------------------
def symbol_spec(template: Any, symbol: str) -> Any:
    """The RunSpec of one symbol: its own folder, and an export that stays in that folder."""
    folder = template.out / symbol
    return replace(template, symbol=symbol, out=folder, export_dir=folder)


def validate_symbol(template: Any, folds: int, symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's walk-forward validation (a worker-process task)."""
    import pipeline

    return validation_row(pipeline.run_validate(replace(symbol_spec(template, symbol), out=folder), folds))


def optimize_symbol(template: Any, settings: dict[str, Any], symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's search with its outputs (run in this process: its --jobs belong to the search)."""
    import pipeline

    spec = replace(symbol_spec(template, symbol), out=folder)
    name = f"{settings['study_name']}-{symbol}" if settings["study_name"] else None
    return search_row(pipeline.run_optimize(spec, settings["trials"], settings["jobs"], settings["folds"], name,
                                            settings["storage"], settings["seed"], settings["export"],
                                            settings.get("quiet", False)))


def backtest(task: Task, symbols: list[str], out: Path, jobs: int, strategy: str) -> int:
    """`main.py backtest` over several symbols (``task`` backtests one: ``main.backtest_symbol``)."""
    rows = run_each(task, symbols, out, jobs, "backtest")
    return 2 if write_summary(rows, out, f"backtest of {strategy}") else 0


def validate(template: Any, symbols: list[str], folds: int, jobs: int) -> int:
    """`main.py validate` over several symbols."""
    rows = run_each(partial(validate_symbol, template, folds), symbols, template.out, jobs, "validate")
    return 2 if write_summary(rows, template.out, f"walk-forward of {template.strategy}") else 0


def optimize(template: Any, symbols: list[str], settings: dict[str, Any]) -> int:
    """`main.py optimize` over several symbols: one search per symbol, or one params set for all of them."""
    if settings["search_symbols"] == "together":
        rows, extra = optimize_together(template, symbols, settings)
    else:
        rows = run_each(partial(optimize_symbol, template, settings), symbols, template.out, 1, "optimize",
                        capture=False)
        extra = {"search_symbols": "each"}
    return 2 if write_summary(rows, template.out, f"optimization of {template.strategy}", extra) else 0


def pipeline_run(template: Any, symbols: list[str], settings: dict[str, Any]) -> int:
    """`python main.py` over several symbols: the fixed params validated on each, then the search(es)."""
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"search_symbols": settings["search_symbols"]}
    if config.ENABLE_FIXED_PARAMS:
        fixed = replace(template, out=template.out / "fixed")
        rows += run_each(partial(validate_symbol, fixed, settings["folds"]), symbols, fixed.out,
                         settings["jobs"], "fixed")
    if config.ENABLE_OPTUNA:
        searched = replace(template, out=template.out / "optuna")
        if settings["search_symbols"] == "together":
            found, extra = optimize_together(searched, symbols, settings)
        else:
            found = run_each(partial(optimize_symbol, searched, settings), symbols, searched.out, 1, "optimize",
                             capture=False)
        rows += found
    return 2 if write_summary(rows, template.out, f"pipeline of {template.strategy}", extra) else 0


def optimize_together(template: Any, symbols: list[str], settings: dict[str, Any]
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One params set for every symbol: one search whose score aggregates the symbols' scores.

    The search's outputs (trials.csv, best_params.json) go in the top folder. Of the best
    VALIDATE_TOP trials, the one that passes walk-forward on the most symbols (then the best
    worst-symbol mean test Sharpe) is chosen, and each symbol's folder gets its walk-forward
    (validation.json, report.html), its DSR and PBO (overfitting.json) and, when it passed the
    filters and its walk-forward, its prod config.
    """
    import optimizer
    import pipeline

    rows: dict[str, dict[str, Any]] = {}
    grid = config.param_grid(template.strategy)
    members: list[optimizer.Datasets] = []
    for symbol in symbols:
        spec = symbol_spec(template, symbol)
        try:
            datasets = pipeline.datasets_for(spec)
            params = pipeline.base_params(spec)
            for timeframe in {params["timeframe"], *grid.get("timeframe", [])}:
                data = datasets.get(timeframe)  # every dataset before the search: errors come first
                optimizer.fold_ranges(len(data), settings["folds"], config.WF_TRAIN_RATIO,
                                      optimizer.lookback_bars(params))
            members.append(datasets)
        except Exception as exc:  # noqa: BLE001 - this symbol is left out; the search runs on the others
            rows[symbol] = _failure(symbol, spec.out, exc, "optimize")
    extra: dict[str, Any] = {"search_symbols": "together", "aggregate": settings["aggregate"],
                             "searched": [m.symbol for m in members]}
    if not members:
        return [rows[s] for s in symbols], extra
    group = optimizer.DatasetGroup(members, settings["aggregate"])
    params = pipeline.base_params(symbol_spec(template, members[0].symbol))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = settings["study_name"] or f"{template.strategy}-{'+'.join(m.symbol for m in members)}-{stamp}"
    search = optimizer.Search(group, params, grid, study_name=name, storage=settings["storage"],
                              seed=settings["seed"], jobs=settings["jobs"])
    Console().print(f"study '{name}': one params set for {group.symbol}, score = {settings['aggregate']} of the "
                    f"symbols' scores; {len(search.known)} trials so far, running {settings['trials']} more")
    progress = pipeline.Progress(settings["trials"], [], settings.get("quiet", False))
    try:
        result = search.run(settings["trials"], progress)
    finally:
        progress.close()
    if result.best is None:
        raise config.ConfigError("the search finished no trial")
    candidates = []
    for trial in sorted(result.trials, key=lambda t: t.value, reverse=True)[:config.VALIDATE_TOP]:
        chosen = search.params_of(trial.params)
        folds = {m.symbol: optimizer.walk_forward(m.get(chosen["timeframe"]), chosen, settings["folds"])["aggregate"]
                 for m in members}
        candidates.append((sum(f["passed"] for f in folds.values()), min(f["mean_test_sharpe"] for f in folds.values()),
                           trial, chosen))
    passing, _, trial, chosen = max(candidates, key=lambda c: (c[0], c[1]))
    Console().print(f"chosen: trial {trial.number}, score {trial.value:.3f} ({settings['aggregate']} over "
                    f"{group.symbol}), walk-forward passed on {passing} of {len(members)} symbols")
    passed_filters = trial.user_attrs.get("fail_reason", "x") == ""
    out = template.out
    out.mkdir(parents=True, exist_ok=True)
    pipeline.trials_frame(result.trials).to_csv(out / "trials.csv", index=False)
    best_doc = {"strategy": template.strategy, "strategy_file": str(config.strategy(chosen["mode"]).path),
                "symbols": [m.symbol for m in members], "aggregate": settings["aggregate"], "score": trial.value,
                "passed_filters": passed_filters, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "params": chosen}
    best_path = out / "best_params.json"
    best_path.write_text(json.dumps(json_safe(best_doc), indent=2))
    extra.update(score=trial.value, trial=trial.number, passed_filters=passed_filters, best_params=str(best_path))
    for member in members:
        task = partial(_together_symbol, template, member, search, result, trial, best_path, settings)
        rows[member.symbol] = run_task(task, member.symbol, template.out / member.symbol, False, "optimize")
    return [rows[s] for s in symbols], extra


def _together_symbol(template: Any, member: Any, search: Any, result: Any, trial: Any, best_path: Path,
                     settings: dict[str, Any], symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's outputs of a search over several: walk-forward, DSR/PBO, test-period figures, export."""
    import backtester
    import optimizer
    import pipeline

    spec = replace(symbol_spec(template, symbol), out=folder, params_file=str(best_path))
    wf = pipeline.run_validate(spec, settings["folds"])
    chosen = {**search.params_of(trial.params), "symbol": symbol}
    stats = optimizer.overfitting_statistics(member, result.trials, search.params_of, search.split)
    (folder / "overfitting.json").write_text(json.dumps(json_safe(stats), indent=2))
    data = member.get(chosen["timeframe"])
    test = backtester.simulate(data, chosen, *optimizer.train_test_split(len(data), *search.split).test).metrics
    passed = bool(trial.user_attrs.get("fail_reason", "x") == "" and wf["aggregate"]["passed"])
    if passed and settings["export"]:
        optimizer.export_prod_config(chosen, {"score": trial.value, "source": spec.source,
                                              "symbols": search.datasets.symbol, "walk_forward": wf["aggregate"]},
                                     spec.export_dir)
    return _search_figures(test, stats, passed)
