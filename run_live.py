"""Command line of the live trader: testnet (default), demo or mainnet, and paper replays on bybit_sim.

    python run_live.py                                  # testnet, prod_config_long.py and prod_config_short.py
    python run_live.py --side long --symbol SOLUSDT
    python run_live.py --mainnet                        # real money: refuses without the flag, asks to confirm
    GRTR_CONFIRM_MAINNET=<account UID> python run_live.py --mainnet --yes   # unattended (a watchdog restart)
    python run_live.py --paper --replay data.csv --symbol SOLUSDT --timeframe 1h --params my_long.json \\
        --out results/paper1 [--compare]
    python run_live.py --export-trades trades.csv       # the trade history from the trader's database
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import logging
import math
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import cli  # first: a bad config.py ends here in one line, exit 2
import backtester
import config
import core
import metrics as metrics_mod
import paper_report
import progress
import reporting
import strategy_loader
import trader_fatal
import trader_lock
import trader_store
from cli import UsageError
from data_fetcher import TIMEFRAMES, load_source
from exchange import Bybit
from market_feed import FillFeed, MarketFeed
from trader import SideConfig, Trader, setup_logging
from trader_store import Store
from trader_utils import (
    ExchangeUnavailable,
    bybit_env,
    confirm_account,
    install_redacting_excepthook,
    make_http,
    make_ws,
)

EXIT_USAGE = cli.EXIT_USAGE
MAINNET_CONFIRM_VARIABLE = cli.MAINNET_CONFIRM_VARIABLE
logger = logging.getLogger("grtr.trader")


def load_prod_params(side: str) -> dict[str, Any] | None:
    """PARAMS of prod_config_<side>.py, validated, or None when the file does not exist.

    The strategy file the config names (STRATEGY_FILE) is loaded when its strategy is not loaded
    yet; a strategy file that changed since the export is reported with a warning.
    """
    path = config.BASE_DIR / f"prod_config_{side}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"prod_config_{side}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    strategy_file = getattr(module, "STRATEGY_FILE", None)
    if strategy_file:
        strategy_loader.ensure_loaded(module.PARAMS.get("mode"), strategy_file, str(path))
    params = config.validate_params(module.PARAMS, str(path))
    strategy_loader.check_params_look_ahead(params, str(path))
    exported_hash = getattr(module, "STRATEGY_SHA256", None)
    current = strategy_loader.get(params["mode"])
    if exported_hash and exported_hash != current.sha256:
        print(f"warning: {path.name}: the strategy file {current.path} changed since the export", file=sys.stderr)
    return params


def side_configs(args: argparse.Namespace) -> list[SideConfig]:
    """The sides to run, with --params, --symbol and --timeframe applied."""
    wanted = ["long", "short"] if args.side == "both" else [args.side]
    configs = []
    for side in wanted:
        if args.params:
            params = config.load_params_file(args.params, base=config.fixed_params(side.upper()))  # its mode wins
        else:
            params = load_prod_params(side)
            if params is None:
                if args.side == "both":
                    continue
                raise UsageError(f"no prod_config_{side}.py: run `python main.py` (it exports strategies that pass) "
                                 "or give --params FILE")
        source = args.params or f"prod_config_{side}.py"
        trades = strategy_loader.get(params["mode"]).side
        if trades == "both":
            raise UsageError(f"{source} holds {params['mode']}, a strategy that trades both ways (SIDE = \"both\"): "
                             "it runs in backtests only; accepted: a params file of a long or a short strategy (SIDE "
                             "= \"long\" or \"short\")")
        if trades != side:
            if args.params and args.side == "both":
                continue  # the params file runs on its own side
            raise UsageError(f"{source} holds the {trades} strategy {params['mode']}; " +
                             (f"run it with --side {trades}" if args.params else
                              f"accepted: a {side} strategy (SIDE = \"{side}\"), as main.py exports it"))
        if args.symbol:
            params["symbol"] = config.check_param("symbol", args.symbol, "--symbol")
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

    out = cli.writable_folder(args.out or args.dir or "results/paper", "--out" if args.out or not args.dir else "--dir")
    timeframe = configs[0].params["timeframe"]
    symbol = configs[0].params["symbol"]
    candles = load_source(args.replay, symbol, timeframe, start=args.start, end=args.end)
    history = args.history_bars or min(2000, len(candles) // 3)
    if not 0 < history < len(candles):
        raise UsageError(f"--history-bars {history} is refused; accepted: 1 to {len(candles) - 1} "
                         f"(the file has {len(candles)} {timeframe} bars)")
    instrument = config.instrument_for(symbol, args.tick, args.qty_step)
    with holding(out, symbol):  # the paper exchange is private to this process: only the folder is locked
        if (out / "state.sqlite").exists():
            raise UsageError(f"{out} already holds a trader state; choose an empty --out for a paper replay")
        balance = config.CAPITAL * len(configs)  # each side trades its own capital; hedge mode shares one wallet
        with SimExchange(candles, symbol, timeframe, history_bars=history, balance=balance, lockstep=True,
                         instrument=instrument, behaviour=behaviour, api_ips=["127.0.0.1"]) as sim:
            os.environ["BYBIT_REST_URL"] = sim.rest_url
            os.environ["BYBIT_WS_URL"] = sim.ws_url
            session = make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, retry_delay=0)
            trader = Trader(session, symbol, timeframe, configs, out, env="paper", max_capital=None,
                            keep_state_history=True)
            tags = paper_report.BarTags(trader)  # every event and log line names its bar
            days = int(history * TIMEFRAMES[timeframe] / 86_400_000) + 2
            fills = FillFeed(trader.exchange.on_stream, ws_factory=lambda kind: make_ws(
                kind, env="testnet", api_key=sim.api_key, api_secret=sim.api_secret))
            trader.start(history_days=days)
            feed = MarketFeed(symbol, timeframe)
            with progress.bar(len(candles) - history, f"paper replay {symbol} {timeframe}", "bar") as shown:
                drive_lockstep(trader, sim, feed.bars, on_bar=shown.update)
            feed.close()
            fills.close()
            stats = sim.stats()
        trader.stop("replay finished")
        tags.close()
        written = write_paper_outputs(out, configs, candles, history, timeframe)
    print(f"paper replay: {stats['bars_played']} bars, {stats['orders']} orders, {stats['executions']} executions; "
          f"wrote {', '.join(str(p) for p in written)}")
    problems = paper_report.read_problems(out)
    store = Store(out / "state.sqlite")
    paper_report.explain(problems, store, candles, TIMEFRAMES[timeframe])
    store.close()
    print("\n".join(paper_report.summary_lines(problems)))
    if args.compare:
        return 0 if compare_with_backtest(out, configs, candles, history, instrument, problems) else 1
    return 0


def drive_lockstep(trader: Trader, sim: Any, closed: queue.Queue, max_bars: int | None = None,
                   on_bar: Any = None) -> bool:
    """Acknowledge each bar close to the sim and hand the next confirmed kline to the trader (``on_bar()``
    after each: a progress bar).

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
        answer = json.loads(ack.getresponse().read())
        if answer["finished"] and answer["closed_bar"] < 0 and closed.empty():
            return True  # no bar played by this ack (one it played is on its way to ``closed``)
        try:
            trader.on_bar_message(closed.get(timeout=10))
        except queue.Empty:
            if not trader.catch_up():  # the WebSocket missed it: REST has it
                return True
        played += 1
        if on_bar:
            on_bar()
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


def compare_with_backtest(out: Path, configs: list[SideConfig], candles: Any, history: int,
                          instrument: dict[str, float] | None = None,
                          problems: list[paper_report.Problem] | None = None) -> bool:
    """The paper trades against the backtest of the same file, trade by trade; prints any difference.

    On a difference it also prints the first differing trade with its bar's OHLC and the state each
    side traded that bar from (the trader's, kept per bar by a paper run, and the backtest's), the
    report a user can file. With the paper log's ``problems``, it then says which of them touched a
    compared trade.
    """
    store = Store(out / "state.sqlite")
    paper = store.trade_rows()
    compared: dict[str, np.ndarray] = {}
    ok = True
    try:
        for cfg in configs:
            data = backtester.MarketData(candles, cfg.params["symbol"], cfg.params["timeframe"], instrument=instrument)
            expected = backtester.simulate(data, cfg.params, start=history).rows
            expected = expected[expected[:, 9] != core.R_END]
            d = 1.0 if cfg.side == "long" else -1.0
            mine = paper[paper[:, 2] == d]
            tick = data.instrument["tick_size"]
            differences = trade_differences(mine, expected, tick)
            total_gap = abs(mine[:, 8].sum() - expected[:, 8].sum())
            if total_gap > 1e-4 * config.CAPITAL:
                differences.append(f"total pnl {mine[:, 8].sum():.4f} vs backtest {expected[:, 8].sum():.4f}")
            print(f"{cfg.side}: {len(mine)} paper trades, {len(expected)} backtest trades: "
                  f"{'EQUAL' if not differences else 'DIFFERENT'}")
            for line in differences[:50]:
                print("  " + line)
            if differences:
                print(first_difference_report(cfg, data, history, mine, expected, store, tick))
            ok = ok and not differences
            compared[cfg.side] = mine
    finally:
        store.close()
    if problems is not None:
        print("\n".join(paper_report.touching_lines(problems, compared, TIMEFRAMES[configs[0].params["timeframe"]])))
    return ok


# How far a paper trade may be from the backtest's and still be the same trade. Times, side and exit reason are
# exact; prices within a tick. Fees, funding and PnL reach the paper ledger from the simulator's executions as
# decimal strings: measured against the backtest they differ by float rounding only (at most 2e-15 relative in
# the parity tests), so a millionth of a USDT (room for Bybit's 8-decimal fee strings summed over many fills)
# or a part in 1e9 is the same figure, while a fee at the other rate, a funding event booked twice or missed, or
# a price a tick off moves them by far more.
MONEY_RTOL = 1e-9
MONEY_ATOL = 1e-6
COMPARED_FIELDS = ("entry_ts", "exit_ts", "side", "qty", "entry_price", "exit_price", "fees", "funding", "pnl",
                   "exit_reason")


def differing_field(a: np.ndarray, b: np.ndarray, tick: float) -> str | None:
    """The first field (core.TRADE_COLUMNS order) in which two trade rows differ beyond its tolerance, or None."""
    for name in COMPARED_FIELDS:
        col = core.TRADE_COLUMNS.index(name)
        x, y = float(a[col]), float(b[col])
        if name in ("entry_price", "exit_price"):
            same = abs(x - y) <= tick
        elif name == "qty":
            same = abs(x - y) <= 1e-9
        elif name in ("fees", "funding", "pnl"):
            same = math.isclose(x, y, rel_tol=MONEY_RTOL, abs_tol=MONEY_ATOL)
        else:
            same = x == y
        if not same:
            return name
    return None


def field_text(name: str, row: np.ndarray) -> str:
    """One field of a trade row as the report shows it."""
    value = row[core.TRADE_COLUMNS.index(name)]
    if name in ("entry_ts", "exit_ts"):
        return _iso(value)
    if name == "exit_reason":
        return core.EXIT_REASONS[int(value)]
    return f"{value:.10g}"


def trade_text(row: np.ndarray) -> str:
    """One trade row in a line."""
    return (f"entry {_iso(row[0])} exit {_iso(row[1])} qty {row[3]:g} prices {row[4]:.6g}/{row[5]:.6g} "
            f"fees {row[6]:.6g} funding {row[7]:.6g} pnl {row[8]:.6g} {core.EXIT_REASONS[int(row[9])]}")


def trade_differences(paper: np.ndarray, expected: np.ndarray, tick: float) -> list[str]:
    """Lines describing how two trade lists differ: the count, then each differing trade with its first differing
    field (times, side, qty exact; prices within a tick; fees, funding, pnl within MONEY_RTOL/MONEY_ATOL; the exit
    reason exact)."""
    problems = []
    if len(paper) != len(expected):
        problems.append(f"trade count {len(paper)} vs backtest {len(expected)}")
    for k, (a, b) in enumerate(zip(paper, expected, strict=False)):
        name = differing_field(a, b, tick)
        if name:
            problems.append(f"trade {k}: {name} {field_text(name, a)} vs backtest {field_text(name, b)}; "
                            f"paper {trade_text(a)}; backtest {trade_text(b)}")
    return problems


REPORT_SLOTS = ("dir", "qty", "entry_price", "stop", "stop_kind", "tp", "level_1", "level_2", "level_3", "level_4",
                "levels_done", "breakeven_set", "trailing_active", "extreme", "max_pnl", "stagnation_armed",
                "liq_price", "wallet", "acc_fees", "acc_funding", "order_action", "order_qty", "order_stop")


def first_difference_report(cfg: SideConfig, data: backtester.MarketData, history: int, paper: np.ndarray,
                            expected: np.ndarray, store: Store, tick: float) -> str:
    """The first differing trade, the bar where the two part, and both states at the close before it."""
    fields = [differing_field(a, b, tick) for a, b in zip(paper, expected, strict=False)]
    k = next((j for j, name in enumerate(fields) if name), min(len(paper), len(expected)))
    rows = [r[k] for r in (paper, expected) if k < len(r)]
    entries = {r[0] for r in rows}
    when = min(entries) if len(entries) > 1 else min(r[1] for r in rows)  # where the two part
    bar = int(np.searchsorted(data.ts, when, side="right") - 1)
    name = fields[k] if k < len(fields) else None
    what = f" {name} {field_text(name, paper[k])} vs backtest {field_text(name, expected[k])}" if name else \
        " one side has no such trade"
    lines = [f"first difference ({cfg.side}), trade {k}:{what}",
             f"  paper:    {trade_text(paper[k]) if k < len(paper) else 'none'}",
             f"  backtest: {trade_text(expected[k]) if k < len(expected) else 'none'}",
             f"  bar {_iso(data.ts[bar])} (index {bar}): open {data.open[bar]:.10g} high {data.high[bar]:.10g} "
             f"low {data.low[bar]:.10g} close {data.close[bar]:.10g}"]
    mine = store.state_before(cfg.side, int(data.ts[bar]))
    theirs = backtester.state_at(data, cfg.params, history, bar) if bar > history else None
    if mine is None or theirs is None:
        lines.append("  (no state recorded before that bar)")
        return "\n".join(lines)
    lines.append(f"  state decided at the close of {_iso(mine[0])} (paper / backtest; * differs):")
    for name in REPORT_SLOTS:
        a, b = mine[1][core.STATE_NAMES.index(name)], theirs[core.STATE_NAMES.index(name)]
        mark = " " if np.isclose(a, b, rtol=1e-9, atol=1e-12) else "*"
        lines.append(f"   {mark} {name:<17} {a:<20.10g} {b:.10g}")
    return "\n".join(lines)


def _iso(ms: float) -> str:
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="m") + "Z"


# ----------------------------------------------------------------------------------------------
# Live
# ----------------------------------------------------------------------------------------------
class Fatal(Exception):
    """A run that ended on an error while it held its folder; already recorded in the folder's log and events."""

    def __init__(self, failure: trader_fatal.Failure, problem: str | None) -> None:
        super().__init__(failure.line)
        self.failure = failure
        self.problem = problem


@contextlib.contextmanager
def holding(workdir: Path, symbol: str, account: str | None = None) -> Iterator[trader_lock.TraderLock]:
    """The folder (and the account-and-symbol) lock for the run inside; an error inside it is written to
    logs/trader.log and events.jsonl (a ``fatal`` event) and raised again as Fatal.

    A refused lock (another trader holds it) raises LockHeld and writes nothing: the folder is not ours. The
    callers have checked ``workdir`` (cli.writable_folder).
    """
    lock = trader_lock.TraderLock(workdir, account, symbol)
    warnings = lock.acquire()
    try:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        setup_logging(workdir)
        for warning in warnings:
            logger.warning("%s", warning)
        yield lock
    except trader_lock.LockHeld:
        raise  # a lease held from another host: its folder, its log
    except Exception as exc:
        failure = trader_fatal.describe(exc, workdir, symbol)
        raise Fatal(failure, trader_fatal.report(workdir, symbol, failure, exc)) from exc
    finally:
        lock.release()


def confirm_mainnet(args: argparse.Namespace) -> None:
    """Mainnet needs --mainnet and a typed confirmation, or --yes with GRTR_CONFIRM_MAINNET set to the account's
    UID (checked against the account once the key is known: see run_live)."""
    env = bybit_env()
    if env == "mainnet" and not args.mainnet:
        raise UsageError("BYBIT_ENV is mainnet: real money needs the --mainnet flag")
    if not args.mainnet:
        return
    os.environ["BYBIT_ENV"] = "mainnet"
    if args.yes:
        if not os.environ.get(MAINNET_CONFIRM_VARIABLE, "").strip():
            raise UsageError(f"--mainnet --yes needs {MAINNET_CONFIRM_VARIABLE}=<the UID of the account behind "
                             "BYBIT_API_KEY> in the environment: the confirmation nobody is there to type")
        return
    try:
        answer = input("Trade REAL money on Bybit mainnet? Type 'mainnet' to confirm: ")
    except EOFError:
        raise UsageError("mainnet not confirmed: no terminal to type 'mainnet' in; unattended (watchdog.py "
                         f"--restart) use --mainnet --yes with {MAINNET_CONFIRM_VARIABLE}=<account UID>") from None
    if answer.strip() != "mainnet":
        raise UsageError("not confirmed; nothing was started")


def prepare_state(workdir: Path, fresh: bool) -> None:
    """With --fresh-state, the old state.sqlite (sound or not) is moved aside, never deleted; without it a
    state file that is empty, unreadable or damaged stops the start (StateError)."""
    path = workdir / "state.sqlite"
    if not (path.exists() or path.is_symlink()):
        return
    if fresh:
        kept = trader_store.move_aside(path)
        print(f"warning: --fresh-state: {path} moved aside to {kept}; a new state starts", file=sys.stderr)
        logger.warning("--fresh-state: %s moved aside to %s; a new state starts", path, kept)
    else:
        trader_store.check_state_file(path)


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
    plan = preflight.Plan(symbol, timeframe, {c.side: c.params for c in configs}, args.max_capital)
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
    api_key = os.environ.get("BYBIT_API_KEY", "")
    if not api_key or not os.environ.get("BYBIT_API_SECRET"):
        raise UsageError("BYBIT_API_KEY and BYBIT_API_SECRET must be set (environment or .env)")
    workdir = cli.writable_folder(args.dir or ".", "--dir")
    symbol, timeframe = configs[0].params["symbol"], configs[0].params["timeframe"]
    session = make_http(env=env, timeout=args.http_timeout)
    with holding(workdir, symbol, trader_lock.account_tag(session.endpoint, api_key, symbol)) as lock:
        prepare_state(workdir, args.fresh_state)
        if args.mainnet and args.yes:
            confirm_account(Bybit(session, symbol).api_key_info(), os.environ[MAINNET_CONFIRM_VARIABLE],
                            MAINNET_CONFIRM_VARIABLE)
        trader = Trader(session, symbol, timeframe, configs, workdir, env=env, dry_run=args.dry_run,
                        max_capital=args.max_capital)
        stale = trader_lock.claim_lease(trader.store, lock.me, workdir / "heartbeat.json",
                                        config.LEASE_STALE_SECONDS)
        if stale:
            print(f"warning: {stale}", file=sys.stderr)
            logger.warning("%s", stale)
        stopping: list[str] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
        try:
            trader.check_key()  # a refused key ends in one line before the private stream tries it
            fills = FillFeed(trader.exchange.on_stream)  # before the start: the catch-up's fills arrive on it too
            trader.start(history_days=config.DATA_DAYS_DEPTH)
            feed = MarketFeed(trader.symbol, trader.timeframe, stale_seconds=args.stale_seconds)
            live_loop(trader, feed, fills, args, stopping)
            feed.close()
            fills.close()
        except KeyboardInterrupt:
            stopping.append("Ctrl-C")
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
    price = None
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
                next_reconcile = clock() + settings.reconcile_seconds
                trader.catch_up_and_reconcile()
        except ExchangeUnavailable as exc:
            trader.report_error(exc)
        finally:  # also while a bar stays rolled back: the watchdog must not take a waiting trader for dead
            if clock() >= next_beat:
                trader.write_heartbeat(price if price is not None else float("nan"), float("nan"))
                next_beat = clock() + 5.0


def export_trades(args: argparse.Namespace) -> int:
    """The trades table of the trader's database as trades.csv."""
    path = Path(args.dir or ".") / "state.sqlite"
    if not path.exists():
        raise UsageError(f"no trader database at {path}")
    target = Path(args.export_trades)
    if not target.parent.is_dir():
        raise UsageError(f"--export-trades {target}: the folder {target.parent} does not exist")
    store = Store(path)
    rows = store.trade_rows()
    store.close()
    reporting.write_trades_csv(target, backtester.trades_table(rows))
    print(f"wrote {len(rows)} trades to {args.export_trades}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every flag, explained in --help; a bad value is refused in one line with exit code 2."""
    parser = cli.Parser(prog="run_live.py", description="GrTr's live trader (testnet by default).")
    parser.add_argument("--side", choices=("long", "short", "both"), default="both",
                        help="which strategy sides to run (both = hedge mode; default: both)")
    parser.add_argument("--symbol", default=None, help="override the prod config's symbol")
    parser.add_argument("--timeframe", default=None, choices=list(TIMEFRAMES), help="override the bar length")
    parser.add_argument("--params", default=None, help="JSON params file: runs only the side its strategy trades "
                                                        "(its SIDE, long or short), in place of the prod configs")
    parser.add_argument("--strategy-path", action="append", default=[], metavar="DIR",
                        help="a folder of strategy files of your own (or one file); may be given several times")
    parser.add_argument("--dir", default=None, help="the trader's working folder (state, logs, heartbeat); "
                                                    "default: the current folder")
    parser.add_argument("--close-on-exit", action="store_true",
                        help="close open positions when stopping (default: leave them under their exchange stops)")
    parser.add_argument("--dry-run", action="store_true", help="log the orders it would send without sending them")
    parser.add_argument("--mainnet", action="store_true", help="trade real money on Bybit mainnet")
    parser.add_argument("--yes", action="store_true",
                        help=f"only with --mainnet: no typed confirmation; needs {MAINNET_CONFIRM_VARIABLE}=<the "
                             "account's UID> in the environment, checked against the account")
    parser.add_argument("--fresh-state", action="store_true",
                        help="start from a new state: the old state.sqlite is moved aside (never deleted); needed "
                             "when it is empty, unreadable or damaged")
    parser.add_argument("--paper", action="store_true", help="replay --replay on an in-process bybit_sim (lockstep)")
    parser.add_argument("--replay", default=None, metavar="SOURCE",
                        help="the candles --paper replays: a file (CSV or .parquet, as main.py export-candles "
                             "writes), or a --source form: sample (bundled), bybit (the cache, topped up from "
                             "Bybit), csv:PATH")
    parser.add_argument("--start", default=None, help="with --paper: first day of the replay (UTC, inclusive)")
    parser.add_argument("--end", default=None, help="with --paper: last day of the replay (UTC, inclusive)")
    parser.add_argument("--history-bars", type=cli.bounded(config.FLAG_BOUNDS["--history-bars"]), default=None,
                        help="bars of the file served as history in --paper (default: min(2000, a third))")
    parser.add_argument("--out", default=None, help="output folder of --paper (trader files and results)")
    parser.add_argument("--compare", action="store_true",
                        help="with --paper: compare the trades with the backtest of the same file, trade by trade; "
                             "a difference prints the first differing trade, its bar and both sides' state")
    parser.add_argument("--tick", type=cli.bounded(config.FLAG_BOUNDS["--tick"]), default=None,
                        help="with --paper: the instrument's price tick (a symbol without cached Bybit info or a "
                             "config.INSTRUMENTS entry)")
    parser.add_argument("--qty-step", type=cli.bounded(config.FLAG_BOUNDS["--qty-step"]), default=None,
                        help="with --paper: the instrument's quantity step")
    parser.add_argument("--export-trades", default=None, help="write the database's trades to this CSV and exit")
    parser.add_argument("--max-capital", type=cli.bounded(config.MAX_CAPITAL_BOUND), default=config.MAX_CAPITAL,
                        metavar="USDT", help="trade at most this much of the wallet (sizes follow the wallet's equity "
                                             "up to it; default: config.MAX_CAPITAL, None = all of it)")
    parser.add_argument("--check", action="store_true",
                        help="preflight against the exchange (no order placed): key, clock, wallet, instrument, "
                             "position and margin mode, klines, executions, streams; exit 1 when a check fails")
    for name, default in config.TRADER_SETTINGS.items():
        bound = config.TRADER_SETTING_BOUNDS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=cli.bounded(bound), default=default,
                            metavar="SECONDS", help=f"live loop setting (config.TRADER_SETTINGS; default: "
                                                    f"{default:g}; accepted: {bound.describe()})")
    return parser


def check_combination(args: argparse.Namespace) -> None:
    """Flags that make no sense together are refused, not ignored."""
    paper_only = [flag for flag, value in (("--replay", args.replay), ("--history-bars", args.history_bars),
                                           ("--out", args.out), ("--compare", args.compare), ("--start", args.start),
                                           ("--end", args.end), ("--tick", args.tick), ("--qty-step", args.qty_step))
                  if value]
    live_only = [flag for flag, value in (("--mainnet", args.mainnet), ("--fresh-state", args.fresh_state),
                                          ("--check", args.check), ("--dry-run", args.dry_run),
                                          ("--close-on-exit", args.close_on_exit)) if value]
    cli.check_yes(args.mainnet, args.yes)
    if args.paper and not args.replay:
        raise UsageError("--paper needs --replay FILE (or sample, bybit, csv:PATH)")
    if paper_only and not args.paper:
        raise UsageError(f"{', '.join(paper_only)} only work with --paper")
    if args.paper and live_only:
        raise UsageError(f"--paper replays on a private simulator in an empty --out: {' and '.join(live_only)} "
                         f"{'does' if len(live_only) == 1 else 'do'} not apply")
    if args.paper and args.max_capital is not None:
        raise UsageError("--max-capital does not apply to --paper: a paper replay trades config.CAPITAL per side, "
                         "as the backtest does")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every user error becomes one line on stderr and exit code 2.

    An error once the trader holds its folder is also written to logs/trader.log and events.jsonl
    (a ``fatal`` event, for the watchdog); its exit code is 2 when the user must fix something, 1
    when a restart may help.
    """
    args = build_parser().parse_args(argv)
    install_redacting_excepthook()
    try:
        check_combination(args)
        if args.export_trades:
            return export_trades(args)
        for path in args.strategy_path:
            strategy_loader.add_path(path)
        configs = side_configs(args)
        if args.check:
            return run_check(args, configs)
        progress.announce_compiles()
        return run_paper(args, configs) if args.paper else run_live(args, configs)
    except Fatal as stop:
        print(f"error: {stop.failure.line}" + (f"; {stop.problem}" if stop.problem else ""), file=sys.stderr)
        return stop.failure.exit_code
    except (*trader_fatal.USER_ERRORS, ValueError, OSError) as exc:  # before the folder was ours: nothing recorded
        failure = trader_fatal.describe(exc, Path(args.dir or args.out or "."))
        if failure.exit_code != EXIT_USAGE:
            raise
        print(f"error: {failure.line}", file=sys.stderr)
        return EXIT_USAGE
    except ExchangeUnavailable as exc:  # Bybit did not answer (e.g. --check before any folder is ours): one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
