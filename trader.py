"""The live trader: bar-close driven, deciding with the backtester's own core, acting through exchange.py.

At every closed bar it (1) books the exchange's executions since the last bar into each side's
core state with ``core.open_fill`` / ``core.close_fill`` / ``core.book_funding``, and checks that the
exchange's positions agree with the states (a fill not visible yet is waited for, bounded; else the
bar is rolled back and handled again later), (2) runs ``core.decide`` on the same indicator values
the backtester computes (indicators over the whole history it holds, never a short warm-up window),
and (3) turns the order the core left into exchange calls: an entry is one market order with the
stop-loss attached, after which its fills are awaited before anything else; stop moves go through
``position/trading-stop`` (never loosening), the take-profit orders of ``core.resting_targets`` rest
as reduce-only limits, market exits are reduce-only (the rest of a partly filled one is sent again).
Every order carries a deterministic ``orderLinkId`` (side, trade, bar, action), so a retried or
restarted trader cannot send the same logical order twice. Reconciliation, rescue and the tick
guard are in reconcile.py.

Working files under ``workdir``: ``state.sqlite``, ``heartbeat.json``, ``control.json`` (pause),
``logs/trader.log`` and ``logs/events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import backtester
import config
import core
from data_fetcher import TIMEFRAMES, download_klines
import trader_capital
from exchange import Bybit, ExchangeRefused, FillsPending, PositionInfo, Wallet
from reconcile import Reconciliation
from trader_fills import Bookkeeping
from trader_store import Store
from trader_utils import RetryPolicy, check_api_key, redact

logger = logging.getLogger("grtr.trader")
EVENT_LOG_MAX_BYTES = 5_000_000
SIDE_DIRECTION = {"long": 1.0, "short": -1.0}
SIDE_ORDER = {"long": ("Buy", "Sell"), "short": ("Sell", "Buy")}  # (entry side, exit side)
FILL_WAIT_SECONDS = 10.0  # how long an order's fills (or a position change's) may take to become visible
CLOSE_ATTEMPTS = 3  # a market close that filled partly (IOC) is sent again for the rest, this often
INSUFFICIENT_BALANCE = 110007  # docs: v5/error.mdx: the order's margin is not available
POSITION_GONE = 110017  # docs: v5/error.mdx: a reduce-only order finds no position to reduce
NO_MARGIN = "not enough available margin on the exchange"  # entry_skipped's reasons (repeats merge on them)
STOP_CROSSED = "the market is already beyond its stop"
ACTIONS = {core.A_OPEN: "entry", core.A_ADD: "add"}
WRONG_SIDE = re.compile(r"set for (Buy|Sell) position should (lower|greater) base_price", re.IGNORECASE)


@dataclass
class SideConfig:
    """One strategy side: its params and, in hedge mode, its positionIdx."""

    side: str
    params: dict[str, Any]
    position_idx: int = 0


class EventLog:
    """logs/events.jsonl: one JSON object per event, flushed, rotated by renaming."""

    def __init__(self, path: Path, symbol: str) -> None:
        self.path = path
        self.symbol = symbol
        path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, side: str | None = None, **figures: Any) -> None:
        """Append one event."""
        now = time.time()
        record = {"time": pd.Timestamp(now, unit="s", tz="UTC").isoformat(), "ts_ms": int(now * 1000),
                  "event": event, "symbol": self.symbol, "side": side, **figures}
        line = redact(json.dumps(record, default=float))
        if self.path.exists() and self.path.stat().st_size > EVENT_LOG_MAX_BYTES:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        with self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()


class _LogFile(logging.handlers.RotatingFileHandler):
    """trader.log; a line that cannot be written (a full disk) is reported once on stderr in one line, not as
    logging's traceback for every line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); its lines are lost",
                  file=sys.stderr)


def setup_logging(workdir: Path) -> None:
    """logs/trader.log (rotating) with secrets redacted."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = os.path.abspath(logs / "trader.log")
    root = logging.getLogger("grtr")
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, _LogFile)]:
        if old.baseFilename == path:
            return
        root.removeHandler(old)  # another folder's trader ran in this process before
        old.close()
    handler = _LogFile(path, maxBytes=5_000_000, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_RedactFilter())
    root.addHandler(handler)


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def refused_as_passed(message: str) -> bool:
    """Whether a refusal says the stop was on the wrong side of the price it triggers by, at the refusal:
    Bybit's 10001 "StopLoss:9025 set for Buy position should lower base_price:9020??LastPrice" (its figures
    are sometimes scaled integers, "sl:257970000 ... base_price:259477000": only the wording is read; e.g.
    ccxt/ccxt#19089; the docs give no format: v5/error.mdx). The refusal, not a price read later, tells that
    the market had passed the stop: it may have come back since."""
    return WRONG_SIDE.search(message) is not None


def fmt(value: float, step: float) -> str:
    """A quantity or price as the exchange expects it: the nearest step, with the step's decimals (0.0025: 4)."""
    decimals = int(round(np.log10(core.step_scale(step))))
    return f"{core.round_price(value, step):.{decimals}f}"


@dataclass
class Side:
    """A side's live state: config, params vector, core state, the stop last sent and the one the exchange holds
    (read back after every move), resting targets, stop moves refused in a row."""

    config: SideConfig
    p: np.ndarray
    state: np.ndarray
    sent_stop: float = 0.0
    exchange_stop: float = 0.0
    targets: list[str] = field(default_factory=list)
    resync: bool = False
    crossed_at: float | None = None  # when the tick guard first saw the stop crossed
    stop_rejections: int = 0
    stop_passed: bool = False  # the last stop sent was refused because the market had passed it

    @property
    def name(self) -> str:
        return self.config.side

    @property
    def direction(self) -> float:
        """+1 for the long side, -1 for the short side."""
        return SIDE_DIRECTION[self.config.side]


class Trader(Bookkeeping, Reconciliation):
    """A bar-close driven trader of one symbol, one or both sides.

    ``max_capital`` caps the wallet money the strategy trades (None: all of it, trader_capital.py);
    after ``stop_rejections`` refused stop moves in a row a position is closed at market (reduce-only).
    """

    def __init__(self, http: Any, symbol: str, timeframe: str, sides: list[SideConfig], workdir: Path,
                 env: str, dry_run: bool = False, max_capital: float | None = config.MAX_CAPITAL,
                 retry: RetryPolicy | None = None, fill_wait_seconds: float = FILL_WAIT_SECONDS,
                 keep_state_history: bool = False,
                 stop_rejections: int = config.STOP_REJECTIONS_TO_CLOSE) -> None:
        for side in sides:  # so the core only ever opens a position on the side's own direction
            trades = config.strategy(side.params["mode"]).side
            if trades != side.side:
                raise ValueError(f"the {side.side} side cannot run {side.params['mode']}, a strategy whose entries are "
                                 f"{trades}; accepted: a {side.side} strategy (SIDE = \"{side.side}\")")
        self.retry = retry or RetryPolicy()
        self.http = http  # the pybit session (tests act on the exchange through it by hand)
        self.exchange = Bybit(http, symbol, self.retry)
        self.symbol = symbol
        self.timeframe = timeframe
        self.bar_ms = TIMEFRAMES[timeframe]
        self.workdir = workdir
        self.env = env
        self.dry_run = dry_run
        self.hedge = len(sides) > 1
        for side in sides:
            side.position_idx = (1 if side.side == "long" else 2) if self.hedge else 0
        self.configs = sides
        self.max_capital = max_capital
        self.stop_rejection_limit = stop_rejections
        self.start_capital = 0.0  # the strategy's capital at start: new states share it
        self.wallet_seen: Wallet | None = None  # the exchange's wallet as last read
        self.fill_wait_seconds = fill_wait_seconds
        self.store = Store(workdir / "state.sqlite")
        self.events = EventLog(workdir / "logs" / "events.jsonl", symbol)
        self.awaiting: dict[str, dict[str, int]] = self.store.get("awaiting", {})  # sides awaiting a missing fill
        self.candles: pd.DataFrame | None = None
        self.instrument: dict[str, float] = {}
        self.sides: list[Side] = []
        self.last_bar_ts: int | None = self.store.get("last_bar_ts")
        self.started_ms = int(time.time() * 1000)
        self.latencies_ms: list[float] = []
        self.recovering = False  # while catching up after a start: orders are looked up before they are sent
        self.keep_state_history = keep_state_history  # each side's state per bar in SQLite (paper: --compare)
        self.key_warnings: list[str] | None = None  # from check_key(), once it ran

    # --- start-up ---------------------------------------------------------------------------
    def check_key(self) -> list[str]:
        """The key's permissions from the exchange (KeyPermissionError: such a key never trades; a bad key or
        secret is the exchange's refusal); its warnings. Before any stream opens: a refused key ends here."""
        self.key_warnings = check_api_key(self.exchange.api_key_info())
        return self.key_warnings

    def start(self, history_days: int) -> None:
        """Key, instrument, position mode, leverage, history, side states (resumed from SQLite), catch-up, reconcile.

        The history always starts where the first start's did (kept in the database), so a
        restarted trader computes the very indicator values it would have computed without the
        restart. Bars that closed while it was down are handled in order before anything else,
        then the state is reconciled with the exchange. A bar rolled back because a side awaits an
        execution (FillsPending) is reported, not fatal: the live loop handles it again.
        """
        setup_logging(self.workdir)
        warnings = self.key_warnings if self.key_warnings is not None else self.check_key()
        self.instrument = self.exchange.instrument().spec()
        if not self.dry_run:
            self.exchange.set_position_mode(self.hedge)
            self.exchange.set_leverage(self.leverage)
        self.start_capital = trader_capital.strategy_capital(self._read_wallet(), self.max_capital)
        logger.info("capital %.2f USDT: the wallet's equity %.2f less its unrealised PnL %.2f%s", self.start_capital,
                    self.wallet_seen.equity, self.wallet_seen.unrealised,
                    f", capped by --max-capital {self.max_capital:g}" if self.max_capital is not None else "")
        first_ms = self.store.get("history_start_ms")
        candles = self._download(days=history_days) if first_ms is None else self._download(start_ms=first_ms)
        self.candles = candles
        if first_ms is None:
            with self.store.transaction():
                self.store.set("history_start_ms", int(candles.index[0].value // 10**6))
                self.store.set("last_bar_ts", int(candles.index[-1].value // 10**6))
                # executions from before the first start are not this trader's to book: marked as seen;
                # a position they left is found by reconcile() and rescued
                now = self.exchange.server_time_ms()
                for fill in self.exchange.fills_since(now - 7 * 86_400_000):
                    self.store.record_execution(fill.exec_id, "", fill.raw, fill.time_ms)
                self.store.set("exec_since_ms", now)
        self._load()
        self.events.emit("start", None, env=self.env, pid=os.getpid(), sides=[c.side for c in self.configs],
                         params_file=None)
        logger.info("started %s %s on %s with %d bars of history", self.symbol, self.timeframe, self.env,
                    len(self.candles))
        if config.STOP_TRIGGER_BY != "LastPrice":
            logger.warning("stops trigger on %s while the backtest's stops trigger on last-price candles: fills "
                           "can differ from the backtest's", config.STOP_TRIGGER_BY)
        for warning in warnings:
            logger.warning("API key: %s", warning)
            self.events.emit("security_warning", None, detail=warning)
        self.recovering = True
        try:
            self.catch_up_and_reconcile()
        finally:
            self.recovering = False

    def catch_up_and_reconcile(self) -> None:
        """The bars missed, then reconcile. A bar rolled back because its fills stay invisible (FillsPending: a
        side awaits an execution) is reported and handled again later, and reconcile runs all the same (every
        position keeps a stop, the awaiting state is saved) but rescues nothing: a position the state does not
        know may be that bar's own entry, still unbooked. Exiting would only restart into the same wait."""
        try:
            self.catch_up()
        except FillsPending as exc:
            self.report_error(exc)
            self.reconcile(rescue=False)
        else:
            self.reconcile()

    def _download(self, days: int | None = None, start_ms: int | None = None) -> pd.DataFrame:
        start = pd.Timestamp(start_ms, unit="ms", tz="UTC") if start_ms is not None else None
        return download_klines(self.symbol, self.timeframe, days=days, start=start, session=self.exchange,
                               cache_dir=self.workdir / "cache", progress=False)

    def _load(self) -> None:
        """Side states, targets and the last bar from the database; the history up to that bar.

        Also what follows a failed bar: its transaction was rolled back, so memory follows.
        """
        self.last_bar_ts = self.store.get("last_bar_ts")
        if self.candles is None:
            self.candles = self._download(start_ms=self.store.get("history_start_ms"))
        self.candles = self.candles[self.candles.index.as_unit("ms").asi8 <= self.last_bar_ts]
        self.sides = []
        fresh = trader_capital.new_states(self.start_capital, len(self.configs))
        for cfg, new in zip(self.configs, fresh, strict=True):
            p = backtester.build_core_params(cfg.params, self.bar_ms, self.symbol, instrument=self.instrument)
            state = self.store.load_state(cfg.side)
            side = Side(cfg, p, state if state is not None else new)
            side.sent_stop = side.exchange_stop = side.state[core.S_STOP]
            side.targets = self.store.get(f"targets_{cfg.side}", [])
            side.stop_rejections = self.store.get(f"stop_rejections_{cfg.side}", 0)
            self.sides.append(side)

    @property
    def leverage(self) -> float:
        """The leverage set on the exchange for both sides (the first side's params)."""
        return float(self.configs[0].params["leverage"])

    def _read_wallet(self) -> Wallet:
        """The exchange's wallet now (kept for the heartbeat)."""
        self.wallet_seen = self.exchange.wallet()
        return self.wallet_seen

    def _sync_capital(self) -> None:
        """Bring the sides' books to the strategy's capital on the exchange (trader_capital.py), once every
        execution up to this close is booked (at the closes the trader trades on).

        A fill after the close (booked at the next close) is in the wallet but not in the books yet: a
        visible funding payment is allowed for; any other such fill defers the comparison to the next close.
        A difference nothing visible explains waits (bounded) for an execution to show, as a funding payment
        can reach the wallet before its execution shows; still there, it is the wallet's (a deposit, a
        withdrawal, money moved elsewhere on the account): the books follow it, with a ``wallet_sync`` event.
        """
        states = [s.state for s in self.sides]
        capital = trader_capital.strategy_capital(self._read_wallet(), self.max_capital)
        if trader_capital.within_rounding(states, capital):
            return
        deadline = time.monotonic() + self.fill_wait_seconds
        pause = 0.01
        while True:
            later = self._unbooked()
            if any(not f.funding for f in later):
                return
            held = [f for f in later if (side := self._side_of(f)) is not None and side.state[core.S_DIR]]
            target = capital + sum(f.fee for f in held)  # the books pay these at the next close
            if trader_capital.within_rounding(states, target):
                return
            if time.monotonic() >= deadline:
                break
            self.exchange.wait_for_stream(pause)
            pause = min(2 * pause, 0.5)
            capital = trader_capital.strategy_capital(self._read_wallet(), self.max_capital)
        books = trader_capital.books(states)
        factor = trader_capital.rescale(states, target)
        logger.warning("the books held %.2f USDT, the exchange's capital is %.2f: books scaled by %.6f", books,
                       target, factor)
        self.events.emit("wallet_sync", None, books=books, capital=target, difference=target - books, factor=factor,
                         max_capital=self.max_capital)

    def catch_up(self) -> int:
        """Handle, in order, every bar that closed after the last one handled; returns how many.

        Bars missed during an outage come from REST. Entries are only taken on the newest closed
        bar: an entry decided on an older close would be sent late, at another price.
        """
        fresh = self._download(start_ms=self.store.get("history_start_ms"))  # the cache answers all but the new bars
        fresh = fresh[fresh.index.as_unit("ms").asi8 > self.last_bar_ts]
        for k, (when, row) in enumerate(fresh.iterrows()):
            self.on_closed_bar({"start": int(when.value // 10**6), **row.to_dict()}, latest=k == len(fresh) - 1)
        if len(fresh):
            logger.info("caught up %d bar(s) that closed while the trader was not listening", len(fresh))
        return len(fresh)

    # --- bars -------------------------------------------------------------------------------
    def on_closed_bar(self, bar: dict[str, Any], latest: bool = True) -> None:
        """A confirmed kline: book fills, decide, send orders, write state, all in one transaction.

        A failure or a kill at any point rolls the database back to the previous bar; the bar is
        then handled again (by the caller, or by the restarted trader's catch-up) and, the core
        being deterministic, sends the same orders with the same orderLinkIds, which the exchange
        refuses as duplicates (110072: it went through) instead of executing twice.
        """
        started = time.perf_counter()
        ts = int(bar["start"])
        if ts <= self.last_bar_ts:
            return
        try:
            with self.store.transaction():
                close, equity = self._handle_bar(ts, bar, latest)
        except BaseException:
            self._load()
            raise
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.write_heartbeat(close, equity)

    def on_bar_message(self, bar: dict[str, Any]) -> None:
        """A confirmed kline from the WebSocket: handled at once, or after the bars it skipped (from REST)."""
        if int(bar["start"]) > self.last_bar_ts + self.bar_ms:
            self.catch_up()  # closes were missed (or the market had no bar): REST has them, in order
        else:
            self.on_closed_bar(bar)

    def _data(self) -> backtester.MarketData:
        return backtester.MarketData(self.candles, self.symbol, self.timeframe)

    def _handle_bar(self, ts: int, bar: dict[str, Any], latest: bool) -> tuple[float, float]:
        row = pd.DataFrame({k: [float(bar[k])] for k in ("open", "high", "low", "close", "volume")},
                           index=pd.DatetimeIndex([pd.Timestamp(ts, unit="ms", tz="UTC")], name="time").as_unit("ms"))
        self.candles = pd.concat([self.candles, row])
        data = self._data()
        i = len(data) - 1
        close_ms = ts + self.bar_ms
        positions: dict[int, PositionInfo] | None = None
        busy: dict[str, set[str]] = {}
        if self.dry_run:
            self.sync_executions(data, until_ms=close_ms)
        else:
            positions, busy = self.settle(data, close_ms, repair=False)
            self._note_stops(positions)
        if latest:  # a close caught up from an outage sends no entry: its sizes do not matter
            self._sync_capital()
        paused = self._paused()
        for side in self.sides:
            params = side.config.params
            signal = data.signals(params)
            atr = data.indicator("atr", params["atr_period"])
            refusals = side.state[core.S_TICK_REFUSALS]
            core.decide(side.state, side.p, i, float(data.ts[i]), data.high[i], data.low[i], data.close[i], atr[i],
                        int(signal[i]), data.high[i - 1] if i else np.nan, data.low[i - 1] if i else np.nan)
            if side.state[core.S_TICK_REFUSALS] > refusals:
                self.events.emit("entry_skipped", side.name, bar_ts=int(data.ts[i]),
                                 reason=f"its stop or a take-profit would be less than one tick "
                                        f"({side.p[core.P_TICK]:g}) from the entry")
            if self.keep_state_history:  # as decided at this close, before its orders fill: the backtest's moment
                self.store.record_state_history(side.name, ts, side.state)
            held = side.state[core.S_QTY] if positions is None else self._exchange_size(side, positions)
            self._act(side, data, i, paused, latest, busy.get(side.name, set()), held)
        self.last_bar_ts = ts
        equity = sum(s.state[core.S_WALLET] + (core.unrealized(s.state, data.close[i]) if s.state[core.S_DIR] else 0)
                     for s in self.sides)
        for side in self.sides:
            self.store.save_state(side.name, side.state, ts)
        self.store.record_equity(ts + self.bar_ms, float(equity))
        self.store.set("last_bar_ts", ts)
        return float(data.close[i]), float(equity)

    def _paused(self) -> bool:
        control = self.workdir / "control.json"
        if not control.exists():
            return False
        try:
            return bool(json.loads(control.read_text()).get("paused"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.error("control.json unreadable (%s); not paused", exc)
            return False

    # --- orders -----------------------------------------------------------------------------
    def _act(self, side: Side, data: backtester.MarketData, i: int, paused: bool, latest: bool,
             pending: set[str], held: float) -> None:
        """Send what the core decided for ``side``; ``pending``: orderLinkIds of the side's fills after this
        close, not booked yet (an entry or add is sent only when they are its own, sent before a restart);
        ``held``: the size the exchange holds for the side."""
        state = side.state
        action = int(state[core.S_ORDER_ACTION])
        state[core.S_ORDER_ACTION] = core.A_NONE
        bar_ts = int(data.ts[i])
        if state[core.S_DIR] and held <= 0:
            # A fill after this close (a stop or a target, booked at the next close) has closed the position:
            # nothing decided on it can be sent (stop moves and targets of a zero position are refused).
            logger.info("%s: the exchange no longer holds the position (a fill after the close of %s); its orders "
                        "wait for that fill to be booked", side.name, pd.Timestamp(bar_ts, unit="ms", tz="UTC"))
            return
        own = {f"{side.name}-{bar_ts}-open" if action == core.A_OPEN else f"{side.name}-{bar_ts}-add"}
        if action in (core.A_OPEN, core.A_ADD):
            why = "decided on a bar missed during an outage" if not latest else \
                "a fill of this side after the bar close is not booked yet" if pending - own else \
                "decided on a close that is no longer the newest (the next bar has closed meanwhile)" \
                if not self.dry_run and self.exchange.server_time_ms() >= bar_ts + 2 * self.bar_ms else None
            if why is not None:
                logger.warning("%s: %s decided on the close of %s not sent: %s", side.name, ACTIONS[action],
                               pd.Timestamp(bar_ts, unit="ms", tz="UTC"), why)
                self.events.emit("entry_skipped", side.name, reason=why, bar_ts=bar_ts, action=ACTIONS[action])
                action = core.A_NONE
            elif paused and action == core.A_OPEN:
                logger.info("%s: entry skipped: paused by control.json", side.name)
                action = core.A_NONE
            elif not self.dry_run and self._cannot_send(side, action, bar_ts):
                action = core.A_NONE
        if action == core.A_OPEN:
            self._enter(side, f"{side.name}-{bar_ts}-open", data)
        elif action == core.A_ADD:
            link_id = f"{side.name}-{bar_ts}-add"
            stop = self._add_stop(side)
            if self._order(side, link_id, "add", self.exchange.place_add, side=SIDE_ORDER[side.name][0],
                           qty=fmt(state[core.S_ORDER_QTY], self.instrument["qty_step"]),
                           stop=fmt(stop, self.instrument["tick_size"]), trigger_by=config.STOP_TRIGGER_BY):
                self._await_fills(link_id, data)
                self.events.emit("add", side.name, qty=float(state[core.S_ORDER_QTY]), price=float(data.close[i]),
                                 total_qty=float(state[core.S_QTY]), avg_price=float(state[core.S_ENTRY]))
            self._sync_targets(side)
        elif action == core.A_CLOSE:
            self._close(side, f"{side.name}-{bar_ts}-close{int(state[core.S_ORDER_REASON])}", data)
        if state[core.S_DIR] and state[core.S_STOP] != side.sent_stop:
            self._move_stop(side, bar_ts, data)

    def _enter(self, side: Side, link_id: str, data: backtester.MarketData) -> None:
        """The entry market order with its stop attached; once its fills are booked, its targets."""
        state = side.state
        qty, stop = fmt(state[core.S_ORDER_QTY], self.instrument["qty_step"]), \
            fmt(state[core.S_ORDER_STOP], self.instrument["tick_size"])
        if self._order(side, link_id, "open", self.exchange.place_entry, side=SIDE_ORDER[side.name][0], qty=qty,
                       stop=stop, trigger_by=config.STOP_TRIGGER_BY):
            self._await_fills(link_id, data)
        if state[core.S_DIR]:
            self.events.emit("entry", side.name, qty=float(state[core.S_QTY]), price=float(state[core.S_ENTRY]),
                             stop=float(state[core.S_STOP]),
                             risk=float(abs(state[core.S_ENTRY] - state[core.S_STOP]) * state[core.S_QTY]),
                             order_link_id=link_id)
            side.sent_stop = state[core.S_STOP]
            self._read_stops()
            self._sync_targets(side)

    def _cannot_send(self, side: Side, action: int, bar_ts: int) -> bool:
        """True (with one entry_skipped event) when the exchange would refuse the entry or add the core left: the
        margin for it is not available (core.required_margin at the last price, against the wallet's available
        balance, read now), or the market is already beyond the stop it carries (the backtest refuses such an
        entry too)."""
        state = side.state
        wallet = self._read_wallet()
        prices = self.exchange.prices()
        last = prices[0]
        qty = state[core.S_ORDER_QTY]
        stop = state[core.S_ORDER_STOP] if action == core.A_OPEN else self._add_stop(side)
        needed = core.required_margin(qty, last, self.leverage, side.p[core.P_TAKER])
        figures: dict[str, float] = {}
        if self._beyond_market(stop, side.direction, prices):
            reason, detail = STOP_CROSSED, f"the stop {stop:g}, the last price {last:g}"
        elif needed > wallet.available:
            reason, detail = NO_MARGIN, f"{qty:g} at {last:g} needs {needed:.2f} USDT of margin, " \
                                        f"{wallet.available:.2f} available"
            figures = {"needed_margin": needed, "available": wallet.available}
        else:
            return False
        logger.warning("%s: %s decided on the close of %s not sent: %s: %s", side.name, ACTIONS[action],
                       pd.Timestamp(bar_ts, unit="ms", tz="UTC"), reason, detail)
        self.events.emit("entry_skipped", side.name, reason=reason, detail=detail, bar_ts=bar_ts,
                         action=ACTIONS[action], **figures)
        return True

    def _add_stop(self, side: Side) -> float:
        """The stop an add carries: the one the exchange holds (an add that finds the position stopped out then
        opens a protected one)."""
        return side.exchange_stop or side.state[core.S_STOP]

    def _move_stop(self, side: Side, bar_ts: int, data: backtester.MarketData) -> None:
        """Send the stop the core moved (never a looser one); a stop the market has passed closes at market."""
        state = side.state
        old = side.sent_stop
        if (state[core.S_STOP] - old) * state[core.S_DIR] < 0:
            logger.error("%s: refusing to loosen the stop from %s to %s", side.name, old, state[core.S_STOP])
        elif self._send_stop(side, "stop_moved"):
            kind = {core.R_BREAKEVEN: "breakeven", core.R_TRAILING: "trailing", core.R_PROFIT_LOCK: "profit_lock",
                    core.R_STOP_LOSS: "stop_loss"}[int(state[core.S_STOP_KIND])]
            self.events.emit("stop_moved", side.name, old_stop=float(old), new_stop=float(state[core.S_STOP]),
                             kind=kind, exchange_stop=side.exchange_stop)
        elif state[core.S_DIR]:
            price = self._trigger_price()
            crossed = core.protective_exit(state[core.S_STOP], state[core.S_LIQ], state[core.S_DIR], price, price)
            if crossed == core.EXIT_STOP or (side.stop_passed and crossed != core.EXIT_LIQUIDATION):
                # The market already opened beyond the new stop (the refusal said so, or the price is): the
                # stop is crossed, as a gapped-through
                # stop in the backtest, so the position is closed at market now (reduce-only). Beyond the
                # liquidation price too, the exchange liquidates it (the backtest's rule): nothing to send.
                self._close(side, f"{side.name}-{bar_ts}-close{int(state[core.S_STOP_KIND])}", data)

    def _trigger_price(self, prices: tuple[float, float] | None = None) -> float:
        """The price stops trigger by (config.STOP_TRIGGER_BY): the last price, else the mark (of ``prices``, the
        (last, mark) pair, else asked now)."""
        last, mark = prices or self.exchange.prices()
        return last if config.STOP_TRIGGER_BY == "LastPrice" else mark  # the index follows the mark closely

    def _beyond_market(self, stop: float, direction: float, prices: tuple[float, float] | None = None) -> bool:
        """True when the price the stop triggers by has already crossed ``stop``."""
        return (self._trigger_price(prices) - stop) * direction <= 0

    def _order(self, owner: Side, link_id: str, action: str, place: Any, **request: Any) -> bool:
        """Send one order through the adapter's ``place`` method, never twice: a known orderLinkId is not
        sent again, and after a timeout (or, when recovering from a restart, before sending) the
        exchange is asked for it first. True when the order is on the exchange."""
        if self.store.order(link_id) is not None:
            logger.info("%s: order %s was sent before; not sending it again", owner.name, link_id)
            return False
        payload = {"symbol": self.symbol, "positionIdx": owner.config.position_idx, "orderLinkId": link_id,
                   "action": action, **request}
        if self.dry_run:
            logger.info("dry run: would send %s", payload)
            self.store.record_order(link_id, owner.name, action, payload, "dry_run", None, int(time.time() * 1000))
            return False
        found = self.exchange.find_order(link_id) if self.recovering else None
        if found:
            logger.info("%s: order %s is on the exchange already (sent before a restart)", owner.name, link_id)
        order_id = found.order_id if found else self._try(
            owner, action, link_id, lambda: place(link_id, position_idx=owner.config.position_idx,
                                                  direction=owner.direction, **request))
        self.store.record_order(link_id, owner.name, action, payload, "sent" if order_id else "rejected",
                                order_id or None, int(time.time() * 1000))
        return bool(order_id)

    def _try(self, owner: Side, action: str, link_id: str | None, call: Any) -> Any:
        """One adapter call; a business refusal is logged once with Bybit's message and reported (returns None).

        ExchangeUnavailable (no answer after every retry) propagates: the bar is rolled back.
        """
        try:
            return call() or True
        except ExchangeRefused as exc:
            if exc.code == POSITION_GONE and (action == "close" or action.startswith("tp")):
                logger.info("%s %s not placed: the position is gone on the exchange (a fill the trader books at "
                            "the next close)", owner.name, action)
                return None
            logger.error("%s %s rejected: %s (retCode %s)", owner.name, action, exc.message, exc.code)
            if exc.code == INSUFFICIENT_BALANCE and action in ("open", "add"):  # the margin check's estimate was short
                self.events.emit("entry_skipped", owner.name, reason=NO_MARGIN, action=ACTIONS[
                    core.A_OPEN if action == "open" else core.A_ADD], detail=f"{exc.message} (retCode {exc.code})")
            else:
                self.events.emit("order_rejected", owner.name, action=action, order_link_id=link_id,
                                 ret_code=exc.code, ret_msg=exc.message)
            return None

    def _await_fills(self, link_id: str, data: backtester.MarketData) -> float:
        """Wait for an order's fills (the private stream, else execution/list), book them; returns the qty missing.

        Nothing else happens before: an order whose fills stay invisible raises FillsPending, which
        rolls the bar back (the order is found on the exchange, not sent again, when the bar is handled
        again). Everything up to the order's last fill is booked, in order (funding charged at the same
        open comes first, as in the backtest).
        """
        order, fills = self.exchange.await_order_fills(link_id, self.fill_wait_seconds)
        self.sync_executions(data, until_ms=max(f.time_ms for f in fills) + 1 if fills else None)
        return 0.0 if order is None else order.qty - order.filled

    def _close(self, side: Side, link_id: str, data: backtester.MarketData, until_ms: int | None = None) -> None:
        """Close the whole position: reduce-only market orders (the rest of a partial IOC fill sent again), each
        fill booked before anything else. The stop stays on the exchange until the fill is booked."""
        _, exit_side = SIDE_ORDER[side.name]
        for attempt in range(CLOSE_ATTEMPTS):
            if not side.state[core.S_DIR]:
                break
            link = link_id if attempt == 0 else f"{link_id}-r{attempt}"
            if not self._order(side, link, "close", self.exchange.place_close, side=exit_side,
                               qty=fmt(side.state[core.S_QTY], self.instrument["qty_step"])):
                break
            if self._await_fills(link, data) <= 0:
                break
        self.sync_executions(data, until_ms=until_ms)

    def _send_stop(self, side: Side, action: str) -> bool:
        """Set the state's stop on the exchange and read back the one it holds (``action`` names the call).

        A refusal is a ``stop_rejected`` event; after ``stop_rejections`` refusals in a row the position is
        closed at market (reduce-only): it is not left under a stop the trader does not control.
        """
        state = side.state
        if self.dry_run:
            logger.info("dry run: would move the %s stop to %s", side.name, state[core.S_STOP])
            return False
        stop = fmt(state[core.S_STOP], self.instrument["tick_size"])
        side.stop_passed = False
        try:
            self.exchange.move_stop(side.config.position_idx, stop, config.STOP_TRIGGER_BY)
        except ExchangeRefused as exc:
            held = self._read_stops().get(side.config.position_idx)
            if held is None or held.direction != side.direction:
                logger.info("%s %s not set: the position is gone on the exchange (a fill the trader books at the "
                            "next close)", side.name, action)
                return False
            side.stop_passed = refused_as_passed(exc.message) or self._beyond_market(state[core.S_STOP],
                                                                                     state[core.S_DIR])
            if side.stop_passed:
                logger.info("%s %s to %s not set: the market has passed it", side.name, action, stop)
                return False  # the caller closes at market, as the backtest fills a stop the open has crossed
            self._note_rejections(side, side.stop_rejections + 1)
            logger.error("%s %s to %s rejected (%d in a row): %s (retCode %s); the exchange holds %s", side.name,
                         action, stop, side.stop_rejections, exc.message, exc.code, side.exchange_stop or "no stop")
            self.events.emit("stop_rejected", side.name, action=action, stop=float(stop),
                             exchange_stop=side.exchange_stop or None, ret_code=exc.code, ret_msg=exc.message,
                             rejections=side.stop_rejections, limit=self.stop_rejection_limit)
            if side.stop_rejections >= self.stop_rejection_limit and state[core.S_DIR]:
                logger.error("%s: %d stop moves refused in a row: closing the position at market", side.name,
                             side.stop_rejections)
                self._close(side, f"{side.name}-{int(state[core.S_ENTRY_TS])}-close{core.R_STOP_REJECTED}",
                            self._data(), self._forming_close())
            return False
        side.sent_stop = state[core.S_STOP]
        self._note_rejections(side, 0)
        self._read_stops()
        return True

    def _note_rejections(self, side: Side, count: int) -> None:
        if side.stop_rejections != count:
            side.stop_rejections = count
            self.store.set(f"stop_rejections_{side.name}", count)

    def _read_stops(self) -> dict[int, PositionInfo]:
        """The stops the exchange holds, read back (position/list stopLoss); the open positions by positionIdx."""
        positions = {p.idx: p for p in self.exchange.positions() if p.size > 0}
        self._note_stops(positions)
        return positions

    def _note_stops(self, positions: dict[int, PositionInfo]) -> None:
        for side in self.sides:
            position = positions.get(side.config.position_idx)
            side.exchange_stop = position.stop_loss if position and position.direction == side.direction else 0.0

    def _sync_targets(self, side: Side) -> None:
        """Rest exactly the take-profit orders core.resting_targets lists (after an entry, add or partial)."""
        if side.targets and not self.dry_run:
            live = {o.link_id for o in self.exchange.open_orders()}
            for link_id in side.targets:
                if link_id in live:  # the others filled or were cancelled with the position
                    self._try(side, "cancel_target", link_id, lambda lk=link_id: self.exchange.cancel(link_id=lk))
        side.targets = []
        out = np.zeros((core.MAX_LEVELS + 1, 3))
        count = core.resting_targets(side.state, side.p, out)
        trade = int(side.state[core.S_ENTRY_TS])
        version = self.store.get(f"targets_version_{side.name}", 0) + 1
        self.store.set(f"targets_version_{side.name}", version)
        _, exit_side = SIDE_ORDER[side.name]
        for level, price, qty in out[:count]:
            tag = "tpf" if level < 0 else f"tp{int(level)}"
            link_id = f"{side.name}-{trade}-{tag}-v{version}"
            if self._order(side, link_id, tag, self.exchange.place_target, side=exit_side,
                           qty=fmt(qty, self.instrument["qty_step"]), price=fmt(price, self.instrument["tick_size"])):
                side.targets.append(link_id)
        self.store.set(f"targets_{side.name}", side.targets)

    def _forget_position(self, side: Side) -> None:
        """After the last fill: no targets, no stop on record."""
        side.targets = []
        self.store.set(f"targets_{side.name}", [])
        side.sent_stop = side.exchange_stop = 0.0
        self._note_rejections(side, 0)

    def close_all(self) -> None:
        """Close every open position at market (reduce-only), e.g. --close-on-exit."""
        with self.store.transaction():
            for side in self.sides:
                if side.state[core.S_DIR]:
                    self._close(side, f"{side.name}-{int(time.time() * 1000)}-close{core.R_SIGNAL}", self._data(),
                                self._forming_close())
                    self.store.save_state(side.name, side.state, int(time.time() * 1000))

    # --- files ------------------------------------------------------------------------------
    def write_heartbeat(self, mark: float, equity: float) -> None:
        """heartbeat.json, atomically: what the watchdog reads. The stops are the ones the exchange holds (read
        back after every move; ``wanted_stop`` when the trader's differs), the equity the exchange's wallet as
        last read (``books_equity``: the states' at ``mark``)."""
        positions = []
        for side in self.sides:
            s = side.state
            if s[core.S_DIR]:
                entry_time = pd.Timestamp(int(s[core.S_ENTRY_TS]), unit="ms", tz="UTC").isoformat()
                position = {"side": side.name, "qty": float(s[core.S_QTY]), "entry_price": float(s[core.S_ENTRY]),
                            "stop": float(side.exchange_stop) or None, "take_profit": float(s[core.S_TP]) or None,
                            "mark_price": mark, "unrealized_pnl": float(core.unrealized(s, mark)),
                            "entry_time": entry_time}
                if abs(side.exchange_stop - s[core.S_STOP]) > self.instrument.get("tick_size", 0.0) / 2:
                    position["wanted_stop"] = float(s[core.S_STOP])
                    position["stop_rejections"] = side.stop_rejections
                positions.append(position)
        now = time.time()
        last_bar = pd.Timestamp(self.last_bar_ts, unit="ms", tz="UTC").isoformat() if self.last_bar_ts else None
        wallet = self.wallet_seen
        beat = {"pid": os.getpid(), "time_ms": int(now * 1000),
                "time": pd.Timestamp(now, unit="s", tz="UTC").isoformat(), "started_ms": self.started_ms,
                "symbol": self.symbol, "env": self.env, "last_bar_ts": self.last_bar_ts, "last_bar": last_bar,
                "paused": self._paused(), "equity": wallet.equity if wallet is not None else equity,
                "books_equity": equity, "positions": positions,
                "cmdline": [sys.executable, *sys.argv], "cwd": os.getcwd()}
        tmp = self.workdir / "heartbeat.json.tmp"
        tmp.write_text(json.dumps(beat))
        tmp.replace(self.workdir / "heartbeat.json")

    def report_error(self, error: BaseException) -> None:
        """An error the trader survives (the bar was rolled back and will be handled again): logged and an event."""
        logger.error("%s: %s", type(error).__name__, error)
        self.events.emit("error", None, error=type(error).__name__, message=f"{type(error).__name__}: {error}")

    def stop(self, reason: str, exit_code: int = 0) -> None:
        """Record the stop; open positions stay protected by their exchange-side stops."""
        self.events.emit("stop", None, reason=reason, exit_code=exit_code)
        self.store.close()
