"""One command over several symbols: a folder per symbol, a summary across them, failures isolated.

Built above the single-symbol runs (``main.backtest_symbol``, ``pipeline.run_validate``,
``pipeline.run_optimize``): each symbol runs in ``<out>/<SYMBOL>/`` exactly as a one-symbol run
would, and ``<out>/summary.csv`` / ``summary.json`` (and a console table) put them side by side.
A symbol that fails (no data, a bad file, a refused parameter) gets its error in the summary and
the others still run.

Backtests and validations of several symbols run in ``jobs`` worker processes with one progress
bar; each symbol's console output goes to its ``console.txt``. Searches run one symbol after the
other (``each``: ``pipeline.run_optimize`` per symbol; their ``--jobs`` is the search's own), or as
one search of one params set for all symbols (``together``), scored by an aggregate of the
per-symbol scores (``optimizer.DatasetGroup``) on every symbol's in-sample bars only. After a
``together`` search the best aggregate score is the pick, and every symbol gets the whole check of
a one-symbol run on its own data (``pipeline.validate_and_export``): stability, the re-optimizing
walk-forward, DSR/PBO over the study's distinct trials, its hold-out with the random baseline's
percentile, the gates, and an export into its folder only when every gate passes.
"""

from __future__ import annotations

import contextlib
import json
import math
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

SUMMARY_COLUMNS = ("symbol", "stage", "status", "return", "sharpe", "max_drawdown", "trades", "holdout_sharpe",
                   "holdout_percentile", "dsr", "pbo", "passed", "gate", "folder", "error")
EXIT_INTERRUPTED = 130
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
    if column == "holdout_percentile" and isinstance(value, (int, float)):
        return f"{value:.0f}" if math.isfinite(value) else "n/a"
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
    """A validation's figures: stability across periods (compounded test return, mean test Sharpe, worst test
    drawdown, test trades); passed = it, and the re-optimizing walk-forward when that ran."""
    agg = result["aggregate"]
    wf = result.get("walk_forward")
    return {"return": agg["compounded_test_return"], "sharpe": agg["mean_test_sharpe"],
            "max_drawdown": agg["worst_test_drawdown"], "trades": agg["test_trades"],
            "passed": bool(agg["passed"] and (wf is None or wf["aggregate"]["passed"]))}


def search_row(outcome: dict[str, Any]) -> dict[str, Any]:
    """A search's figures: the chosen trial's in-sample test period, its hold-out Sharpe and percentile among
    random filter-passing sets, DSR and PBO; passed = every export gate, gate = the one that decided."""
    if not outcome["complete"]:
        return {"status": "interrupted", "error": f"interrupted: resume with --study-name {outcome['study']}"}
    validation, best = outcome["validation"], outcome["best"]
    test, held = validation["test_metrics"], validation["holdout"]
    stats = validation.get("overfitting") or {}
    return {"return": test["total_return"], "sharpe": test["sharpe"], "max_drawdown": test["max_drawdown"],
            "trades": test["num_trades"], "holdout_sharpe": held["holdout"]["sharpe"] if held["available"] else None,
            "holdout_percentile": held.get("holdout_sharpe_percentile"),
            "dsr": stats.get("deflated_sharpe", {}).get("dsr"), "pbo": stats.get("pbo", {}).get("pbo"),
            "passed": best["passed_gates"], "gate": best["deciding_gate"] or "all passed"}


# ----------------------------------------------------------------------------------------------
# The commands over several symbols
# ----------------------------------------------------------------------------------------------
def symbol_spec(template: Any, symbol: str) -> Any:
    """The RunSpec of one symbol: its own folder, and an export that stays in that folder (or in
    ``<prod_dir>/<SYMBOL>/`` when a prod folder was given)."""
    folder = template.out / symbol
    return replace(template, symbol=symbol, out=folder,
                   prod_dir=template.prod_dir / symbol if template.prod_dir else folder)


def validate_symbol(template: Any, folds: int, options: dict[str, Any], symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's validation (a worker-process task): stability across periods, and with
    ``options["reoptimize"]`` the re-optimizing walk-forward (its fold searches in this process)."""
    import pipeline

    spec = replace(symbol_spec(template, symbol), out=folder)
    return validation_row(pipeline.run_validate(spec, folds, reoptimize=options.get("reoptimize", False),
                                                fold_trials=options.get("fold_trials"), seed=options.get("seed"),
                                                sampler=options.get("sampler")))


def optimize_symbol(template: Any, settings: dict[str, Any], symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's search with its outputs (run in this process: its --jobs belong to the search)."""
    import pipeline

    spec = replace(symbol_spec(template, symbol), out=folder)
    name = f"{settings['study_name']}-{symbol}" if settings["study_name"] else None
    return search_row(pipeline.run_optimize(spec, settings["trials"], settings["jobs"], settings["folds"], name,
                                            settings["storage"], settings["seed"], settings["export"],
                                            settings.get("quiet", False), settings["search"]))


def backtest(task: Task, symbols: list[str], out: Path, jobs: int, strategy: str) -> int:
    """`main.py backtest` over several symbols (``task`` backtests one: ``main.backtest_symbol``)."""
    rows = run_each(task, symbols, out, jobs, "backtest")
    return 2 if write_summary(rows, out, f"backtest of {strategy}") else 0


def validate(template: Any, symbols: list[str], folds: int, jobs: int, options: dict[str, Any] | None = None) -> int:
    """`main.py validate` over several symbols."""
    rows = run_each(partial(validate_symbol, template, folds, options or {}), symbols, template.out, jobs,
                    "validate")
    return 2 if write_summary(rows, template.out, f"validation of {template.strategy}") else 0


def _exit_code(rows: list[dict[str, Any]], failed: list[dict[str, Any]]) -> int:
    """130 when a search was interrupted, 2 when a symbol failed, else 0."""
    if any(row.get("status") == "interrupted" for row in rows):
        return EXIT_INTERRUPTED
    return 2 if failed else 0


def search_symbols(template: Any, symbols: list[str], settings: dict[str, Any]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The searches of a run over several symbols: one for all (``together``), or one per symbol in turn
    (``each``; an interrupted search stops the symbols after it)."""
    if settings["search_symbols"] == "together":
        return optimize_together(template, symbols, settings)
    rows: list[dict[str, Any]] = []
    for symbol in symbols:
        if rows and rows[-1].get("status") == "interrupted":
            rows.append({"symbol": symbol, "stage": "optimize", "status": "not run",
                         "error": "a search before it was interrupted", "folder": str(template.out / symbol)})
            continue
        rows.append(run_task(partial(optimize_symbol, template, settings), symbol, template.out / symbol, False,
                             "optimize"))
    return rows, {"search_symbols": "each"}


def optimize(template: Any, symbols: list[str], settings: dict[str, Any]) -> int:
    """`main.py optimize` over several symbols: one search per symbol, or one params set for all of them."""
    rows, extra = search_symbols(template, symbols, settings)
    return _exit_code(rows, write_summary(rows, template.out, f"optimization of {template.strategy}", extra))


def pipeline_run(template: Any, symbols: list[str], settings: dict[str, Any]) -> int:
    """`python main.py` over several symbols: the fixed params' stability on each, then the search(es)."""
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"search_symbols": settings["search_symbols"]}
    if config.ENABLE_FIXED_PARAMS:
        fixed = replace(template, out=template.out / "fixed")
        rows += run_each(partial(validate_symbol, fixed, settings["folds"], {}), symbols, fixed.out,
                         settings["jobs"], "fixed")
    if config.ENABLE_OPTUNA:
        found, extra = search_symbols(replace(template, out=template.out / "optuna"), symbols, settings)
        rows += found
    return _exit_code(rows, write_summary(rows, template.out, f"pipeline of {template.strategy}", extra))


def optimize_together(template: Any, symbols: list[str], settings: dict[str, Any]
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One params set for every symbol: one search whose score aggregates the symbols' scores.

    Each symbol's hold-out is cut off before the search, which reads only the in-sample bars of
    every symbol. The search's trials.csv and best_params.json (its symbols and aggregate) go in the
    top folder. The pick is the trial with the best aggregate score (nothing seen is used to choose
    among the top trials); the random baseline is drawn once, judged by the same aggregate
    objective, and ranked on each symbol's hold-out. Then each symbol's folder gets the whole check
    of a one-symbol run on that symbol's data, its gates, and an export only when every gate passes.
    """
    import holdout
    import optimizer
    import pipeline
    import walkforward

    rows: dict[str, dict[str, Any]] = {}
    grid = pipeline.search_grid(template)
    search_settings = settings["search"]
    members: list[optimizer.Datasets] = []
    infos: dict[str, dict[str, Any]] = {}
    for symbol in symbols:
        spec = symbol_spec(template, symbol)
        try:
            datasets = pipeline.datasets_for(spec)
            params = pipeline.base_params(spec)
            for timeframe in [params["timeframe"], *[tf for tf in grid.get("timeframe", [])
                                                     if tf != params["timeframe"]]]:
                data = datasets.get(timeframe)  # every dataset (and its hold-out cut) before the search
                walkforward.fold_ranges(len(data), settings["folds"], config.WF_TRAIN_RATIO,
                                        walkforward.lookback_bars(params))
            infos[symbol] = pipeline.print_data_range(datasets, params["timeframe"])
            members.append(datasets)
        except Exception as exc:  # noqa: BLE001 - this symbol is left out; the search runs on the others
            rows[symbol] = _failure(symbol, spec.out, exc, "optimize")
    extra: dict[str, Any] = {"search_symbols": "together", "aggregate": settings["aggregate"],
                             "searched": [m.symbol for m in members]}
    if not members:
        return [rows[s] for s in symbols], extra
    group = optimizer.DatasetGroup(members, settings["aggregate"])
    searched = {"symbols": extra["searched"], "aggregate": settings["aggregate"]}
    params = pipeline.base_params(symbol_spec(template, members[0].symbol))
    fingerprint = {**pipeline.study_fingerprint(template, grid, [infos[m.symbol] for m in members]),
                   "aggregate": settings["aggregate"]}
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = settings["study_name"] or f"{template.strategy}-{'+'.join(m.symbol for m in members)}-{stamp}"
    search = optimizer.Search(group, params, grid, study_name=name, storage=settings["storage"],
                              seed=settings["seed"], jobs=settings["jobs"], worker_id=search_settings.worker_id,
                              sampler=search_settings.sampler, fingerprint=fingerprint)
    console = pipeline.console
    console.print(f"study '{name}': one params set for {group.symbol}, score = {settings['aggregate']} of the "
                  f"symbols' in-sample scores; {len(search.known)} trials so far, running {settings['trials']} more "
                  f"on {settings['jobs']} worker process(es), sampler {search.sampler_kind}")
    progress = pipeline.Progress(settings["trials"], list(search.known), settings.get("quiet", False))
    try:
        result = search.run(settings["trials"], progress)
    finally:
        progress.close()
    if result.best is None:
        raise config.ConfigError("the search finished no trial")
    search_rates = optimizer.tier_pass_rates([t.user_attrs.get("tier", 0) for t in result.trials])
    console.print(f"{len(result.trials)} trials in the study; this run stored {result.stored} in "
                  f"{result.seconds:.1f} s, {result.duplicates} repeated params sets answered from the study"
                  + "".join(f"; {note}" for note in result.notes))
    console.print(pipeline.tier_rates_text(search_rates, "trials of the study (aggregate over the symbols)"))
    out = template.out
    out.mkdir(parents=True, exist_ok=True)
    pipeline.trials_frame(result.trials).to_csv(out / "trials.csv", index=False)
    if result.interrupted:
        console.print(f"[bold]interrupted[/bold]: {len(result.trials)} trials are stored; run again with "
                      f"--study-name {name} to resume. Nothing was validated or exported.")
        for member in members:
            rows[member.symbol] = {"symbol": member.symbol, "stage": "optimize", "status": "interrupted",
                                   "folder": str(out / member.symbol),
                                   "error": f"interrupted: resume with --study-name {name}"}
        return [rows[s] for s in symbols], {**extra, "study": name}
    pick = result.best
    chosen = search.params_of(pick.params)
    console.print(f"chosen: trial {pick.number}, the best {settings['aggregate']} score over {group.symbol} "
                  f"({pick.value:.3f}); now checked on each symbol's own data")
    best_doc = {"strategy": template.strategy, "strategy_file": str(config.strategy(chosen["mode"]).path),
                **searched, "study": name, "trial": pick.number, "score": pick.value,
                "passed_filters": pick.user_attrs.get("fail_reason", "x") == "",
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "params": chosen}
    best_path = out / "best_params.json"
    best_path.write_text(json.dumps(json_safe(best_doc), indent=2))
    extra.update(study=name, score=pick.value, trial=pick.number, passed_filters=best_doc["passed_filters"],
                 best_params=str(best_path))
    # The hold-outs are read from here on: the random baseline, then each symbol's final check.
    baseline = holdout.random_baseline(search, search_settings.baseline_draws or config.HOLDOUT_RANDOM_DRAWS,
                                       settings["seed"], settings["jobs"])
    for member in members:
        spec = symbol_spec(template, member.symbol)
        task = partial(_together_symbol, spec, search, member, result, settings, infos[member.symbol],
                       search_rates, holdout.baseline_of(baseline, member.symbol), searched)
        rows[member.symbol] = run_task(task, member.symbol, spec.out, False, "optimize")
    return [rows[s] for s in symbols], extra


def _together_symbol(spec: Any, search: Any, member: Any, result: Any, settings: dict[str, Any],
                     info: dict[str, Any], search_rates: list[dict[str, Any]], baseline: dict[str, Any],
                     searched: dict[str, Any], symbol: str, folder: Path) -> dict[str, Any]:
    """One symbol's check of the params set searched for several: everything a one-symbol run does after
    its search, on this symbol's data (its stability, walk-forward, DSR/PBO, hold-out, gates, export)."""
    import pipeline

    pipeline.console.rule(f"{symbol}: the chosen trial on this symbol")
    outcome = pipeline.validate_and_export(replace(spec, out=folder), search, member, result, settings["folds"],
                                           settings["export"], settings["jobs"], settings["seed"], settings["search"],
                                           info, search_rates, baseline=baseline, searched=searched)
    return search_row(outcome)
