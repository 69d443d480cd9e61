"""Command line of the live trader: testnet (default), demo or mainnet, and paper replays on bybit_sim.

    python run_live.py                                  # testnet, prod_config_long.py and prod_config_short.py
    python run_live.py --side long --symbol SOLUSDT
    python run_live.py --mainnet                        # real money: refuses without the flag, asks to confirm
    python run_live.py --paper --replay data.csv --symbol SOLUSDT --timeframe 1h --params my_long.json \\
        --out results/paper1 [--compare]
    python run_live.py --export-trades trades.csv       # the trade history from the trader's database
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import backtester
import config
import core
import metrics as metrics_mod
import reporting
from data_fetcher import TIMEFRAMES, DataError, load_csv, resample
from exchange import ExchangeRefused
from market_feed import FillFeed, MarketFeed
from trader import SideConfig, Trader
from trader_store import Store
from trader_utils import (
    ExchangeUnavailable,
    KeyPermissionError,
    bybit_env,
    install_redacting_excepthook,
    make_http,
    make_ws,
)

EXIT_USAGE = 2


class UsageError(Exception):
    """A refused command line, reported in one line with exit code 2."""


def load_prod_params(side: str) -> dict[str, Any] | None:
    """PARAMS of prod_config_<side>.py, validated, or None when the file does not exist."""
    path = config.BASE_DIR / f"prod_config_{side}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"prod_config_{side}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config.validate_params(module.PARAMS, str(path))


def side_configs(args: argparse.Namespace) -> list[SideConfig]:
    """The sides to run, with --params, --symbol and --timeframe applied."""
    wanted = ["long", "short"] if args.side == "both" else [args.side]
    configs = []
    for side in wanted:
        if args.params:
            base = config.fixed_params("LONG" if side == "long" else "SHORT")
            params = config.load_params_file(args.params, base=base)
            mode_side = {"long_only": "long", "short_only": "short"}.get(params["mode"])
            if mode_side != side:
                if args.side == "both":
                    continue
                raise UsageError(f"{args.params} holds a {params['mode']} strategy; run it with --side {mode_side}")
        else:
            params = load_prod_params(side)
            if params is None:
                if args.side == "both":
                    continue
                raise UsageError(f"no prod_config_{side}.py: run `python main.py` (it exports strategies that pass) "
                                 "or give --params FILE")
        if args.symbol:
            params["symbol"] = args.symbol
        if args.timeframe:
            params["timeframe"] = args.timeframe
        configs.append(SideConfig(side, params))
    if not configs:
        raise UsageError("no strategy to run: neither prod_config_long.py nor prod_config_short.py exists "
                         "(run `python main.py`, or give --params FILE)")
    timeframes = {c.params["timeframe"] for c in configs}
    symbols = {c.params["symbol"] for c in configs}
    if len(timeframes) > 1 or len(symbols) > 1:
        raise UsageError(f"both sides must trade one symbol and timeframe, got {symbols} and {timeframes}; "
                         "use --symbol and --timeframe")
    return configs


# ----------------------------------------------------------------------------------------------
# Paper replay
# ----------------------------------------------------------------------------------------------
def run_paper(args: argparse.Namespace, configs: list[SideConfig], behaviour: Any = None) -> int:
    """Replay a candle file on an in-process bybit_sim (lockstep) with the real trader, then write results.

    ``behaviour`` (a bybit_sim.Behaviour) picks what the docs leave open: when fills reach the
    private stream and execution/list, partial fills, the mark price's offset.
    """
    from bybit_sim import SimExchange

    timeframe = configs[0].params["timeframe"]
    symbol = configs[0].params["symbol"]
    candles = resample(load_csv(args.replay), timeframe)
    history = args.history_bars or min(2000, len(candles) // 3)
    out = Path(args.out or args.dir or "results/paper")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "state.sqlite").exists():
        raise UsageError(f"{out} already holds a trader state; choose an empty --out for a paper replay")
    balance = config.CAPITAL * len(configs)  # each side trades its own capital; hedge mode shares one wallet
    with SimExchange(candles, symbol, timeframe, history_bars=history, balance=balance, lockstep=True,
                     behaviour=behaviour) as sim:
        os.environ["BYBIT_REST_URL"] = sim.rest_url
        os.environ["BYBIT_WS_URL"] = sim.ws_url
        session = make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, retry_delay=0)
        trader = Trader(session, symbol, timeframe, configs, out, env="paper", capital=config.CAPITAL)
        days = int(history * TIMEFRAMES[timeframe] / 86_400_000) + 2
        fills = FillFeed(trader.exchange.on_stream, ws_factory=lambda kind: make_ws(
            kind, env="testnet", api_key=sim.api_key, api_secret=sim.api_secret))
        trader.start(history_days=days)
        feed = MarketFeed(symbol, timeframe)
        drive_lockstep(trader, sim, feed.bars)
        feed.close()
        fills.close()
        stats = sim.stats()
    trader.stop("replay finished")
    written = write_paper_outputs(out, configs, candles, history, timeframe)
    print(f"paper replay: {stats['bars_played']} bars, {stats['orders']} orders, {stats['executions']} executions; "
          f"wrote {', '.join(str(p) for p in written)}")
    if args.compare:
        return 0 if compare_with_backtest(out, configs, candles, history) else 1
    return 0


def drive_lockstep(trader: Trader, sim: Any, closed: queue.Queue, max_bars: int | None = None) -> bool:
    """Acknowledge each bar close to the sim and hand the next confirmed kline to the trader.

    Returns True when the replay has finished (False when ``max_bars`` stopped it first).
    """
    deadline = time.monotonic() + 30
    while not any(t.startswith("kline.") for topics in sim.public.values() for t in topics) \
            and time.monotonic() < deadline:
        time.sleep(0.005)  # the kline subscription must be live before the first bar is played
    ack = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=60)
    played = 0
    while max_bars is None or played < max_bars:
        ack.request("POST", "/sim/ack")
        if json.loads(ack.getresponse().read())["finished"] and closed.empty():
            return True
        try:
            trader.on_bar_message(closed.get(timeout=10))
        except queue.Empty:
            if not trader.catch_up():  # the WebSocket missed it: REST has it
                return True
        played += 1
    return False


def write_paper_outputs(out: Path, configs: list[SideConfig], candles: Any, history: int, timeframe: str) -> list[Path]:
    """trades.csv, equity.csv and metrics.json of a paper run, in the backtest's formats."""
    store = Store(out / "state.sqlite")
    rows = store.trade_rows()
    curve = store.equity_rows()
    store.close()
    bar_ms = TIMEFRAMES[timeframe]
    ts = np.array([t - bar_ms for t, _ in curve], dtype=np.int64)
    equity = np.array([e for _, e in curve])
    position = np.zeros(len(curve))
    capital = config.CAPITAL * len(configs)
    m = metrics_mod.compute_metrics(ts, bar_ms, equity, position, rows[:, 8], rows[:, 6], rows[:, 7],
                                    rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
                                    rows[:, 9].astype(np.int8), capital, core.EXIT_REASONS)
    reporting.write_trades_csv(out / "trades.csv", backtester.trades_table(rows))
    reporting.write_equity_csv(out / "equity.csv", metrics_mod.equity_frame(ts, bar_ms, equity, position, capital))
    reporting.write_metrics_json(out / "metrics.json", m)
    return [out / "trades.csv", out / "equity.csv", out / "metrics.json"]


def compare_with_backtest(out: Path, configs: list[SideConfig], candles: Any, history: int) -> bool:
    """The paper trades against the backtest of the same file, trade by trade; prints any difference."""
    store = Store(out / "state.sqlite")
    paper = store.trade_rows()
    store.close()
    ok = True
    for cfg in configs:
        data = backtester.MarketData(candles, cfg.params["symbol"], cfg.params["timeframe"])
        expected = backtester.simulate(data, cfg.params, start=history).rows
        expected = expected[expected[:, 9] != core.R_END]
        d = 1.0 if cfg.side == "long" else -1.0
        mine = paper[paper[:, 2] == d]
        tick = config.instrument_for(cfg.params["symbol"])["tick_size"]
        problems = trade_differences(mine, expected, tick)
        total_gap = abs(mine[:, 8].sum() - expected[:, 8].sum())
        if total_gap > 1e-4 * config.CAPITAL:
            problems.append(f"total pnl {mine[:, 8].sum():.4f} vs backtest {expected[:, 8].sum():.4f}")
        print(f"{cfg.side}: {len(mine)} paper trades, {len(expected)} backtest trades: "
              f"{'EQUAL' if not problems else 'DIFFERENT'}")
        for line in problems[:50]:
            print("  " + line)
        ok = ok and not problems
    return ok


def trade_differences(paper: np.ndarray, expected: np.ndarray, tick: float) -> list[str]:
    """Lines describing how two trade lists differ (count, times, side, qty, prices within a tick)."""
    problems = []
    if len(paper) != len(expected):
        problems.append(f"trade count {len(paper)} vs backtest {len(expected)}")
    for k, (a, b) in enumerate(zip(paper, expected, strict=False)):
        if (a[0], a[1], a[2]) != (b[0], b[1], b[2]) or abs(a[3] - b[3]) > 1e-9 \
                or abs(a[4] - b[4]) > tick or abs(a[5] - b[5]) > tick:
            problems.append(f"trade {k}: paper entry {a[0]:.0f} exit {a[1]:.0f} qty {a[3]:g} prices {a[4]:.6g}/"
                            f"{a[5]:.6g} {core.EXIT_REASONS[int(a[9])]}; backtest entry {b[0]:.0f} exit {b[1]:.0f} "
                            f"qty {b[3]:g} prices {b[4]:.6g}/{b[5]:.6g} {core.EXIT_REASONS[int(b[9])]}")
    return problems


# ----------------------------------------------------------------------------------------------
# Live
# ----------------------------------------------------------------------------------------------
def confirm_mainnet(args: argparse.Namespace) -> None:
    """Mainnet needs --mainnet and a typed confirmation (or --yes)."""
    env = bybit_env()
    if env == "mainnet" and not args.mainnet:
        raise UsageError("BYBIT_ENV is mainnet: real money needs the --mainnet flag")
    if args.mainnet:
        os.environ["BYBIT_ENV"] = "mainnet"
        if not args.yes:
            answer = input("Trade REAL money on Bybit mainnet? Type 'mainnet' to confirm: ")
            if answer.strip() != "mainnet":
                raise UsageError("not confirmed; nothing was started")


def run_check(args: argparse.Namespace, configs: list[SideConfig]) -> int:
    """--check: the preflight table against the exchange (no order is placed); 0 when every row passes, else 1."""
    import preflight
    from exchange import Bybit

    env = bybit_env()
    if env == "mainnet" and not args.mainnet:
        raise UsageError("BYBIT_ENV is mainnet: checking it needs the --mainnet flag")
    if args.mainnet:
        env = "mainnet"
    if not os.environ.get("BYBIT_API_KEY") or not os.environ.get("BYBIT_API_SECRET"):
        raise UsageError("BYBIT_API_KEY and BYBIT_API_SECRET must be set (environment or .env)")
    session = make_http(env=env, timeout=args.http_timeout)
    symbol, timeframe = configs[0].params["symbol"], configs[0].params["timeframe"]
    plan = preflight.Plan(symbol, timeframe, {c.side: c.params for c in configs})
    heading = (f"GrTr preflight on Bybit {env} ({session.endpoint}), {symbol} {timeframe}, "
               f"sides {', '.join(plan.sides)}; no order is placed")
    table, ok = preflight.check(Bybit(session, symbol, preflight.quick_retry()), plan,
                                lambda kind: make_ws(kind, env=env), heading)
    print(table)
    return 0 if ok else 1


def run_live(args: argparse.Namespace, configs: list[SideConfig]) -> int:
    """The trader on Bybit (or whatever BYBIT_REST_URL/BYBIT_WS_URL point at) until Ctrl-C or SIGTERM."""
    confirm_mainnet(args)
    env = bybit_env()
    if not os.environ.get("BYBIT_API_KEY") or not os.environ.get("BYBIT_API_SECRET"):
        raise UsageError("BYBIT_API_KEY and BYBIT_API_SECRET must be set (environment or .env)")
    workdir = Path(args.dir or ".")
    trader = Trader(make_http(env=env, timeout=args.http_timeout), configs[0].params["symbol"],
                    configs[0].params["timeframe"], configs, workdir, env=env, dry_run=args.dry_run)
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    try:
        fills = FillFeed(trader.exchange.on_stream)  # before the start: the catch-up's fills arrive on it too
        trader.start(history_days=config.DATA_DAYS_DEPTH)
        feed = MarketFeed(trader.symbol, trader.timeframe, stale_seconds=args.stale_seconds)
        live_loop(trader, feed, fills, args, stopping)
        feed.close()
        fills.close()
    except KeyboardInterrupt:
        stopping.append("Ctrl-C")
    except ExchangeRefused as exc:  # a cause the user must fix (key, permission, account mode): one line
        trader.stop(str(exc), EXIT_USAGE)
        raise
    if args.close_on_exit:
        trader.close_all()
    trader.stop(stopping[0] if stopping else "stopped")
    return 0


def live_loop(trader: Trader, feed: MarketFeed, fills: FillFeed, settings: argparse.Namespace,
              stopping: list[str]) -> None:
    """Bar closes from the feed; between them fills as announced, the tick guard, staleness checks and
    periodic reconciliation.

    A call Bybit does not answer after every retry (ExchangeUnavailable), or fills that stay
    invisible (FillsPending), roll the bar back; the loop reports it and carries on, and the bar is
    handled again from REST at the next reconcile (or the next bar close).
    """
    clock = time.monotonic
    next_reconcile = clock() + settings.reconcile_seconds
    next_beat = 0.0
    while not stopping:
        try:
            try:
                trader.on_bar_message(feed.bars.get(timeout=0.05))
            except queue.Empty:
                pass
            if feed.check():
                trader.catch_up()  # polled while the socket is stale or reconnecting
            fills.check()
            if fills.take():
                trader.book_fills()
            price = feed.price(settings.price_max_age)
            if price is not None:
                trader.tick_guard(price, clock(), settings.tick_grace_seconds)
            if clock() >= next_reconcile:
                trader.catch_up()  # a bar rolled back since is handled again first
                trader.reconcile()
                next_reconcile = clock() + settings.reconcile_seconds
            if clock() >= next_beat:
                trader.write_heartbeat(price if price is not None else float("nan"), float("nan"))
                next_beat = clock() + 5.0
        except ExchangeUnavailable as exc:
            trader.report_error(exc)


def export_trades(args: argparse.Namespace) -> int:
    """The trades table of the trader's database as trades.csv."""
    path = Path(args.dir or ".") / "state.sqlite"
    if not path.exists():
        raise UsageError(f"no trader database at {path}")
    store = Store(path)
    rows = store.trade_rows()
    store.close()
    reporting.write_trades_csv(Path(args.export_trades), backtester.trades_table(rows))
    print(f"wrote {len(rows)} trades to {args.export_trades}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every flag, explained in --help."""
    parser = argparse.ArgumentParser(prog="run_live.py", description="GrTr's live trader (testnet by default).")
    parser.add_argument("--side", choices=("long", "short", "both"), default="both",
                        help="which strategy sides to run (both = hedge mode; default: both)")
    parser.add_argument("--symbol", default=None, help="override the prod config's symbol")
    parser.add_argument("--timeframe", default=None, choices=list(TIMEFRAMES), help="override the bar length")
    parser.add_argument("--params", default=None, help="JSON params file: runs only the side its mode names "
                                                        "(long_only or short_only), in place of the prod configs")
    parser.add_argument("--dir", default=None, help="the trader's working folder (state, logs, heartbeat); "
                                                    "default: the current folder")
    parser.add_argument("--close-on-exit", action="store_true",
                        help="close open positions when stopping (default: leave them under their exchange stops)")
    parser.add_argument("--dry-run", action="store_true", help="log the orders it would send without sending them")
    parser.add_argument("--mainnet", action="store_true", help="trade real money on Bybit mainnet")
    parser.add_argument("--yes", action="store_true", help="skip the typed mainnet confirmation")
    parser.add_argument("--paper", action="store_true", help="replay --replay on an in-process bybit_sim (lockstep)")
    parser.add_argument("--replay", default=None, help="candle file for --paper")
    parser.add_argument("--history-bars", type=int, default=None,
                        help="bars of the file served as history in --paper (default: min(2000, a third))")
    parser.add_argument("--out", default=None, help="output folder of --paper (trader files and results)")
    parser.add_argument("--compare", action="store_true",
                        help="with --paper: compare the trades with the backtest of the same file, trade by trade")
    parser.add_argument("--export-trades", default=None, help="write the database's trades to this CSV and exit")
    parser.add_argument("--check", action="store_true",
                        help="preflight against the exchange (no order placed): key, clock, wallet, instrument, "
                             "mode, klines, executions, streams; exit 1 when a check fails")
    for name, default in config.TRADER_SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=default, metavar="SECONDS",
                            help=f"live loop setting (config.TRADER_SETTINGS; default: {default:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    install_redacting_excepthook()
    try:
        if args.export_trades:
            return export_trades(args)
        if args.paper and not args.replay:
            raise UsageError("--paper needs --replay FILE")
        configs = side_configs(args)
        if args.check:
            return run_check(args, configs)
        return run_paper(args, configs) if args.paper else run_live(args, configs)
    except (UsageError, config.ConfigError, DataError, ValueError, KeyPermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExchangeUnavailable as exc:  # Bybit did not answer (or fills stayed invisible) at start-up: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
