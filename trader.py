"""The live trader: bar-close driven, deciding with the backtester's own core, orders through pybit.

At every closed bar it (1) books the exchange's executions since the last bar into each side's
core state with ``core.open_fill`` / ``core.close_fill`` / ``core.book_funding``, (2) runs
``core.decide`` on the same indicator values the backtester computes (indicators over the whole
history it holds, never a short warm-up window), and (3) turns the order the core left into Bybit
calls: an entry is one market order with the stop-loss attached, stop moves go through
``position/trading-stop`` (never loosening), the take-profit orders of ``core.resting_targets``
rest as reduce-only limits, market exits are reduce-only. Every order carries a deterministic
``orderLinkId`` (side, trade, bar, action), so a retried or restarted trader cannot send the same
logical order twice.

Working files under ``workdir``: ``state.sqlite``, ``heartbeat.json``, ``control.json`` (pause),
``logs/trader.log`` and ``logs/events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pybit.exceptions import InvalidRequestError

import backtester
import config
import core
from data_fetcher import TIMEFRAMES, download_klines
from trader_store import Store
from trader_utils import RetryPolicy, UnknownSymbol, api_retry_wrapper, check_api_key, redact

logger = logging.getLogger("grtr.trader")
EVENT_LOG_MAX_BYTES = 5_000_000
SIDE_DIRECTION = {"long": 1.0, "short": -1.0}
SIDE_ORDER = {"long": ("Buy", "Sell"), "short": ("Sell", "Buy")}  # (entry side, exit side)
ORDER_GONE = 110001  # cancel of an order that already filled or was cancelled


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


def fmt(value: float, step: float) -> str:
    """A quantity or price as the exchange expects it: the nearest step, with the step's decimals (0.0025: 4)."""
    decimals = int(round(np.log10(core.step_scale(step))))
    return f"{core.round_price(value, step):.{decimals}f}"


@dataclass
class Side:
    """A side's live state: config, params vector, core state, the stop last sent, resting targets."""

    config: SideConfig
    p: np.ndarray
    state: np.ndarray
    sent_stop: float = 0.0
    targets: list[str] = field(default_factory=list)
    resync: bool = False
    crossed_at: float | None = None  # when the tick guard first saw the stop crossed

    @property
    def name(self) -> str:
        return self.config.side


class Trader:
    """A bar-close driven trader of one symbol, one or both sides."""

    def __init__(self, http: Any, symbol: str, timeframe: str, sides: list[SideConfig], workdir: Path,
                 env: str, dry_run: bool = False, capital: float | None = None,
                 retry: RetryPolicy | None = None, keep_state_history: bool = False) -> None:
        self.http = http
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
        self.capital = capital
        self.store = Store(workdir / "state.sqlite")
        self.events = EventLog(workdir / "logs" / "events.jsonl", symbol)
        self.candles: pd.DataFrame | None = None
        self.instrument: dict[str, float] = {}
        self.sides: list[Side] = []
        self.last_bar_ts: int | None = self.store.get("last_bar_ts")
        self.started_ms = int(time.time() * 1000)
        self.latencies_ms: list[float] = []
        self.retry = retry or RetryPolicy()
        self.recovering = False  # while catching up after a start: orders are looked up before they are sent
        self.keep_state_history = keep_state_history  # each side's state per bar in SQLite (paper: --compare)

    # --- start-up ---------------------------------------------------------------------------
    def start(self, history_days: int) -> None:
        """Instrument, position mode, leverage, history, side states (resumed from SQLite), catch-up, reconcile.

        The history always starts where the first start's did (kept in the database), so a
        restarted trader computes the very indicator values it would have computed without the
        restart. Bars that closed while it was down are handled in order before anything else,
        then the state is reconciled with the exchange.
        """
        setup_logging(self.workdir)
        warnings = check_api_key(self.http)  # KeyPermissionError: a key that can withdraw never trades
        self.instrument = self._instrument()
        self._ensure_mode_and_leverage()
        first_ms = self.store.get("history_start_ms")
        candles = self._download(days=history_days) if first_ms is None else self._download(start_ms=first_ms)
        self.candles = candles
        if first_ms is None:
            with self.store.transaction():
                self.store.set("history_start_ms", int(candles.index[0].value // 10**6))
                self.store.set("last_bar_ts", int(candles.index[-1].value // 10**6))
                # executions from before the first start are not this trader's to book: marked as seen;
                # a position they left is found by reconcile() and rescued
                prior = self._get("executions", self.http.get_executions, category="linear", symbol=self.symbol,
                                  limit=100)
                for execution in prior:
                    self.store.record_execution(execution["execId"], "", execution, int(execution["execTime"]))
                self.store.set("exec_since_ms", max((int(e["execTime"]) for e in prior), default=0))
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
            self.catch_up()
            self.reconcile()
        finally:
            self.recovering = False

    def _download(self, days: int | None = None, start_ms: int | None = None) -> pd.DataFrame:
        start = pd.Timestamp(start_ms, unit="ms", tz="UTC") if start_ms is not None else None
        return download_klines(self.symbol, self.timeframe, days=days, start=start, session=self.http,
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
        for cfg in self.configs:
            p = backtester.build_core_params(cfg.params, self.bar_ms, self.symbol, instrument=self.instrument)
            if self.capital is not None:
                p[core.P_CAPITAL] = self.capital
            state = self.store.load_state(cfg.side)
            side = Side(cfg, p, state if state is not None else core.new_state(p[core.P_CAPITAL]))
            side.sent_stop = side.state[core.S_STOP]
            side.targets = self.store.get(f"targets_{cfg.side}", [])
            self.sides.append(side)

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

    def _get(self, what: str, method: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """A read call with retries; its result list."""
        return api_retry_wrapper(lambda: method(**kwargs), what, self.retry)["result"]["list"]

    def _instrument(self) -> dict[str, float]:
        found = self._get("instruments-info", self.http.get_instruments_info, category="linear", symbol=self.symbol)
        if not found:  # Bybit answers an unknown symbol with an empty list
            raise UnknownSymbol(f"Bybit {self.env} lists no linear instrument {self.symbol}: check --symbol or the "
                                "params' symbol (a linear USDT perpetual such as BTCUSDT)")
        info = found[0]
        return {"qty_step": float(info["lotSizeFilter"]["qtyStep"]),
                "min_qty": float(info["lotSizeFilter"]["minOrderQty"]),
                "min_notional": float(info["lotSizeFilter"].get("minNotionalValue", 0) or 0),
                "tick_size": float(info["priceFilter"]["tickSize"]),
                "max_leverage": float(info["leverageFilter"]["maxLeverage"])}

    def _ensure_mode_and_leverage(self) -> None:
        if self.dry_run:
            return
        try:
            api_retry_wrapper(lambda: self.http.switch_position_mode(category="linear", symbol=self.symbol,
                                                                     mode=3 if self.hedge else 0),
                              "position mode", self.retry)
        except InvalidRequestError as exc:
            if exc.status_code != 110025:  # already in that mode
                raise
        leverage = str(self.configs[0].params["leverage"])
        try:
            api_retry_wrapper(lambda: self.http.set_leverage(category="linear", symbol=self.symbol,
                                                             buyLeverage=leverage, sellLeverage=leverage),
                              "leverage", self.retry)
        except InvalidRequestError as exc:
            if exc.status_code != 110043:  # already set
                raise

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
        self.sync_executions(data, until_ms=ts + self.bar_ms)
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
            self._act(side, data, i, paused, latest)
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
    def _act(self, side: Side, data: backtester.MarketData, i: int, paused: bool, latest: bool) -> None:
        state = side.state
        action = int(state[core.S_ORDER_ACTION])
        bar_ts = int(data.ts[i])
        entry_side, _ = SIDE_ORDER[side.name]
        step, tick = self.instrument["qty_step"], self.instrument["tick_size"]
        if action == core.A_OPEN and (state[core.S_ORDER_DIR] > 0) != (side.name == "long"):
            action = core.A_NONE  # a scalp signal for the other side; this side does not trade it
        if action in (core.A_OPEN, core.A_ADD) and not latest:
            logger.warning("%s: %s decided on the missed close of %s not sent: too late", side.name,
                           "entry" if action == core.A_OPEN else "add", pd.Timestamp(bar_ts, unit="ms", tz="UTC"))
            self.events.emit("entry_skipped", side.name, reason="decided on a bar missed during an outage",
                             bar_ts=bar_ts)
            action = core.A_NONE
        if action == core.A_OPEN:
            if paused:
                logger.info("%s: entry skipped: paused by control.json", side.name)
            else:
                qty = state[core.S_ORDER_QTY]
                self._order(side, f"{side.name}-{bar_ts}-open", "open", side=entry_side, orderType="Market",
                            qty=fmt(qty, step), stopLoss=fmt(state[core.S_ORDER_STOP], tick),
                            slTriggerBy=config.STOP_TRIGGER_BY)
                self.sync_executions(data)
                if state[core.S_DIR]:
                    self.events.emit("entry", side.name, qty=float(state[core.S_QTY]),
                                     price=float(state[core.S_ENTRY]), stop=float(state[core.S_STOP]),
                                     risk=float(abs(state[core.S_ENTRY] - state[core.S_STOP]) * state[core.S_QTY]),
                                     order_link_id=f"{side.name}-{bar_ts}-open")
                    side.sent_stop = state[core.S_STOP]
                    self._sync_targets(side)
        elif action == core.A_ADD:
            self._order(side, f"{side.name}-{bar_ts}-add", "add", side=entry_side, orderType="Market",
                        qty=fmt(state[core.S_ORDER_QTY], step))
            self.sync_executions(data)
            self.events.emit("add", side.name, qty=float(state[core.S_ORDER_QTY]), price=float(data.close[i]),
                             total_qty=float(state[core.S_QTY]), avg_price=float(state[core.S_ENTRY]))
            self._sync_targets(side)
        elif action == core.A_CLOSE:
            self._close(side, f"{side.name}-{bar_ts}-close{int(state[core.S_ORDER_REASON])}", data)
        if state[core.S_DIR] and state[core.S_STOP] != side.sent_stop:
            old = side.sent_stop
            if (state[core.S_STOP] - old) * state[core.S_DIR] < 0:
                logger.error("%s: refusing to loosen the stop from %s to %s", side.name, old, state[core.S_STOP])
            elif self._send_stop(side, "stop_moved"):
                side.sent_stop = state[core.S_STOP]
                kind = {core.R_BREAKEVEN: "breakeven", core.R_TRAILING: "trailing", core.R_PROFIT_LOCK: "profit_lock",
                        core.R_STOP_LOSS: "stop_loss"}[int(state[core.S_STOP_KIND])]
                self.events.emit("stop_moved", side.name, old_stop=float(old), new_stop=float(state[core.S_STOP]),
                                 kind=kind)
            else:
                price = self._last_price()
                if core.protective_exit(state[core.S_STOP], state[core.S_LIQ], state[core.S_DIR], price,
                                        price) == core.EXIT_STOP:
                    # The market already opened beyond the new stop: the stop is crossed, as a gapped-through
                    # stop in the backtest, so the position is closed at market now (reduce-only). Beyond the
                    # liquidation price too, the exchange liquidates it (the backtest's rule): nothing to send.
                    self._close(side, f"{side.name}-{bar_ts}-close{int(state[core.S_STOP_KIND])}", data)
        state[core.S_ORDER_ACTION] = core.A_NONE

    def _last_price(self) -> float:
        return float(self._get("tickers", self.http.get_tickers, category="linear", symbol=self.symbol)[0]["lastPrice"])

    def _beyond_market(self, stop: float, direction: float) -> bool:
        """True when the last price has already crossed ``stop`` for a position of ``direction``."""
        return (self._last_price() - stop) * direction <= 0

    def _order(self, owner: Side, link_id: str, action: str, **request: Any) -> bool:
        """Send one order, never twice: a known orderLinkId is not sent again, and after a timeout
        (or, when recovering from a restart, before sending) the exchange is asked for it first."""
        if self.store.order(link_id) is not None:
            logger.info("%s: order %s was sent before; not sending it again", owner.name, link_id)
            return False
        payload = {"category": "linear", "symbol": self.symbol, "positionIdx": owner.config.position_idx,
                   "orderLinkId": link_id, **request}
        if self.dry_run:
            logger.info("dry run: would send %s", payload)
            self.store.record_order(link_id, owner.name, action, payload, "dry_run", None, int(time.time() * 1000))
            return False
        found = self._find_order(link_id) if self.recovering else None
        if found:
            logger.info("%s: order %s is on the exchange already (sent before a restart)", owner.name, link_id)
        ok = bool(found) or self._call(owner, action, self.http.place_order, lookup=lambda: self._find_order(link_id),
                                       **payload)
        self.store.record_order(link_id, owner.name, action, payload, "sent" if ok else "rejected", None,
                                int(time.time() * 1000))
        return ok

    def _find_order(self, link_id: str) -> dict[str, Any] | None:
        """The order with this orderLinkId, open or done, or None."""
        for method in (self.http.get_open_orders, self.http.get_order_history):
            rows = self._get(f"lookup {link_id}", method, category="linear", symbol=self.symbol, orderLinkId=link_id)
            if rows:
                return rows[0]
        return None

    def _call(self, owner: Side, action: str, method: Any, lookup: Any = None, **kwargs: Any) -> bool:
        """One exchange call with retries; a business error is logged once with Bybit's message and reported.

        ExchangeUnavailable (no answer after every retry) propagates: the bar is rolled back.
        """
        if self.dry_run:
            logger.info("dry run: would call %s %s", method.__name__, kwargs)
            return False
        try:
            api_retry_wrapper(lambda: method(**kwargs), f"{owner.name} {action}", self.retry, lookup)
            return True
        except InvalidRequestError as exc:
            if exc.status_code == ORDER_GONE and action == "cancel_target":
                return True  # it filled or was cancelled with the position in the meantime
            logger.error("%s %s rejected: %s (retCode %s)", owner.name, action, exc.message, exc.status_code)
            self.events.emit("order_rejected", owner.name, action=action, order_link_id=kwargs.get("orderLinkId"),
                             ret_code=exc.status_code, ret_msg=exc.message)
            return False

    def _sync_targets(self, side: Side) -> None:
        """Rest exactly the take-profit orders core.resting_targets lists (after an entry, add or partial)."""
        if side.targets and not self.dry_run:
            live = {o["orderLinkId"] for o in self._get("open orders", self.http.get_open_orders, category="linear",
                                                         symbol=self.symbol, limit=50)}
            for link_id in side.targets:
                if link_id in live:  # the others filled or were cancelled with the position
                    self._call(side, "cancel_target", self.http.cancel_order, category="linear",
                               symbol=self.symbol, orderLinkId=link_id)
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
            if self._order(side, link_id, tag, side=exit_side, orderType="Limit",
                           qty=fmt(qty, self.instrument["qty_step"]), price=fmt(price, self.instrument["tick_size"]),
                           reduceOnly=True):
                side.targets.append(link_id)
        self.store.set(f"targets_{side.name}", side.targets)

    # --- fills ------------------------------------------------------------------------------
    def _unbooked_executions(self, until_ms: int | None = None) -> list[dict[str, Any]]:
        """Executions not booked yet (before ``until_ms``), in exchange order."""
        rows = self._get("executions", self.http.get_executions, category="linear", symbol=self.symbol,
                         startTime=self.store.get("exec_since_ms", 0), limit=100)
        fresh = [e for e in reversed(rows) if not self.store.seen_execution(e["execId"])
                 and (until_ms is None or int(e["execTime"]) < until_ms)]
        fresh.sort(key=lambda e: int(e["execTime"]))  # stable: the exchange's order within one instant
        return fresh

    def _forming_close(self) -> int:
        """The close time of the bar forming now: executions from then on belong to the next bar close."""
        return self.last_bar_ts + 2 * self.bar_ms

    def _settled_positions(self, data: backtester.MarketData) -> list[dict[str, Any]] | None:
        """position/list once every execution before it is booked, or None when that cannot be had now.

        Executions are booked, positions read, then executions asked again: a fill that landed in
        between (a stop, a take-profit) would make the snapshot disagree with the state for no
        reason, so the round is repeated until no new execution shows up. A fill after the forming
        bar's close (its kline not handled yet) waits for that bar: None, try again later.
        """
        until = self._forming_close()
        for _ in range(5):
            self.sync_executions(data, until_ms=until)
            positions = self._get("positions", self.http.get_positions, category="linear", symbol=self.symbol)
            pending = self._unbooked_executions()
            if not pending:
                return positions
            if all(int(e["execTime"]) >= until for e in pending):
                return None
        return None

    def book_fills(self) -> None:
        """Book the executions of the forming bar now (the private WebSocket announced one)."""
        with self.store.transaction():
            self.sync_executions(self._data(), until_ms=self._forming_close())
            for side in self.sides:
                self.store.save_state(side.name, side.state, int(time.time() * 1000))

    def sync_executions(self, data: backtester.MarketData, until_ms: int | None = None) -> None:
        """Book every execution not booked yet (before ``until_ms``), in exchange order, into its side's state.

        At a bar close only what happened up to that close is booked: funding due at the next open
        belongs to the next bar, as in the backtester.
        """
        for execution in self._unbooked_executions(until_ms):
            side = self._side_of(execution)
            with self.store.transaction():
                self._book(side, execution, data)
                self.store.record_execution(execution["execId"], side.name if side else "", execution,
                                            int(execution["execTime"]))
                if side:
                    self.store.save_state(side.name, side.state, int(execution["execTime"]))
                self.store.set("exec_since_ms", int(execution["execTime"]))
        for side in self.sides:
            if side.resync:
                side.resync = False
                if side.state[core.S_DIR]:
                    self._sync_targets(side)  # after all of this pass's fills: the next levels rest at once

    def _side_of(self, execution: dict[str, Any]) -> Side | None:
        idx = int(execution.get("positionIdx", 0))
        for side in self.sides:
            if side.config.position_idx == idx:
                return side
        return None

    def _bar_index(self, data: backtester.MarketData, ms: int) -> int:
        """The history index of the bar an execution happened in (a fill at the next open: the next bar)."""
        if ms >= data.ts[-1] + self.bar_ms:
            return len(data.ts)
        return int(np.searchsorted(data.ts, ms, side="right") - 1)

    def _book(self, side: Side | None, execution: dict[str, Any], data: backtester.MarketData) -> None:
        if side is None:
            self.events.emit("desync", None, detail=f"execution {execution['execId']} on an unmanaged position")
            return
        state, p = side.state, side.p
        fee = float(execution["execFee"])
        if execution["execType"] == "Funding":
            if state[core.S_DIR]:
                core.book_funding(state, fee)
            return
        price, qty = float(execution["execPrice"]), float(execution["execQty"])
        ms = int(execution["execTime"])
        bar = self._bar_index(data, ms)
        d = 1.0 if execution["side"] == "Buy" else -1.0
        # the trader's own orders, and the exchange's stop and liquidation orders on its position
        ours = str(execution.get("orderLinkId", "")).startswith(f"{side.name}-") \
            or execution.get("stopOrderType") in ("StopLoss", "Liquidation")
        if state[core.S_DIR] == 0 and not ours:
            self.rescue(side, d, qty, price, ms, 0.0, data, fee=fee)  # a position opened by hand
            return
        if state[core.S_DIR] == 0 or state[core.S_DIR] == d:
            if not ours:
                self.events.emit("desync", side.name, detail=f"{qty:g} added to the position by hand at {price:g}")
                side.resync = True
            core.open_fill(state, p, d, qty, price, fee, float(ms), float(bar))
            return
        reason = self._exit_reason(state, execution) if ours else core.R_SIGNAL
        if not ours:
            self.events.emit("desync", side.name, detail=f"{qty:g} closed by hand at {price:g}")
        if reason == core.R_PARTIAL:
            level = int(execution["orderLinkId"].split("-tp")[1].split("-")[0])
            state[core.S_LEVELS_DONE] = level + 1
        row = np.zeros(core.N_TRADE_COLS)
        row[1] = ms
        remaining_before = state[core.S_QTY]
        flat = core.close_fill(state, p, qty, price, fee, reason, float(bar), row)
        self.store.record_trade(self.symbol, row)
        if flat:
            self._forget_position(side)
            hold = (row[1] - row[0]) / 3_600_000
            self.events.emit("exit", side.name, reason=core.EXIT_REASONS[reason], qty=float(row[3]),
                             price=float(price), pnl=float(row[8]),
                             pnl_pct=float(row[8] / max(state[core.S_WALLET] - row[8], 1e-9) * 100),
                             hold_hours=float(hold), entry_price=float(row[4]))
        else:
            self.events.emit("partial_exit", side.name, qty=float(qty), price=float(price), pnl=float(row[8]),
                             remaining_qty=float(remaining_before - qty))
            if reason == core.R_PARTIAL:
                side.resync = True

    @staticmethod
    def _exit_reason(state: np.ndarray, execution: dict[str, Any]) -> int:
        stop_type = execution.get("stopOrderType", "")
        link = execution.get("orderLinkId", "")
        if stop_type == "StopLoss":
            return int(state[core.S_STOP_KIND])
        if stop_type == "Liquidation":
            return core.R_LIQUIDATION
        if "-guard" in link:
            return int(state[core.S_STOP_KIND])  # the tick guard closed in place of the exchange's stop
        if "-tpf-" in link:
            return core.R_TAKE_PROFIT
        if "-tp" in link:
            return core.R_PARTIAL
        if "-close" in link:
            return int(link.rsplit("-close", 1)[1])
        return core.R_SIGNAL

    # --- reconciliation ---------------------------------------------------------------------
    def reconcile(self) -> None:
        """Compare each side with the exchange (executions, position/list, open orders) and repair.

        Run at start-up and every few seconds by the live loop. Executions not booked yet are
        booked first (a stop or liquidation fill, a close by hand); then a position the exchange
        no longer holds is closed in the state at the last price, a size mismatch adopts the
        exchange's size, a position unknown to the state is rescued, a position without a stop
        gets one at once, and orders left over by a flat side are cancelled. Every repair is an event.
        """
        if self.dry_run:
            return
        with self.store.transaction():
            data = self._data()
            settled = self._settled_positions(data)
            if settled is None:
                logger.info("reconcile postponed: fills of the next bar are pending")
                return
            positions = {int(row["positionIdx"]): row for row in settled if float(row.get("size") or 0) > 0}
            orders = self._get("open orders", self.http.get_open_orders, category="linear", symbol=self.symbol,
                               limit=50)
            for side in self.sides:
                self._reconcile_side(side, positions.pop(side.config.position_idx, None), orders, data)
                self.store.save_state(side.name, side.state, int(time.time() * 1000))
            for idx, row in positions.items():
                logger.error("position %s of %s on positionIdx %d is not managed by any side", row["side"],
                             row["size"], idx)
                self.events.emit("desync", None, detail=f"unmanaged {row['side']} position of {row['size']} "
                                                         f"on positionIdx {idx}")

    def _reconcile_side(self, side: Side, position: dict[str, Any] | None, orders: list[dict[str, Any]],
                        data: backtester.MarketData) -> None:
        state, tick, step = side.state, self.instrument["tick_size"], self.instrument["qty_step"]
        direction = SIDE_DIRECTION[side.name]
        if position is not None and (1.0 if position["side"] == "Buy" else -1.0) != direction:
            self.events.emit("desync", side.name, detail=f"a {position['side']} position of {position['size']} "
                                                         f"is not this side's; left alone")
            position = None
        size = float(position["size"]) if position else 0.0
        if state[core.S_DIR] and size == 0.0:
            price = self._last_price()
            row = np.zeros(core.N_TRADE_COLS)
            row[1] = data.ts[-1] + self.bar_ms
            qty = state[core.S_QTY]
            core.close_fill(state, side.p, qty, price, 0.0, int(state[core.S_STOP_KIND]), float(len(data.ts)), row)
            self.store.record_trade(self.symbol, row)
            self._forget_position(side)
            self.events.emit("desync", side.name, detail=f"the exchange holds no position; {qty:g} closed in the "
                                                         f"state at the last price {price:g} (no execution found)")
        elif state[core.S_DIR] and abs(size - state[core.S_QTY]) > step / 2:
            self.events.emit("desync", side.name, detail=f"size {state[core.S_QTY]:g} in the state, {size:g} on the "
                                                         "exchange: the exchange's size is adopted")
            state[core.S_QTY] = size
            self._sync_targets(side)
        elif not state[core.S_DIR] and size > 0.0:
            self.rescue(side, direction, size, float(position["avgPrice"]), int(position["createdTime"]),
                        float(position.get("stopLoss") or 0), data)
        if state[core.S_DIR]:
            self._ensure_stop(side, float(position.get("stopLoss") or 0) if position else 0.0, tick)
        else:
            for order in orders:
                if int(order.get("positionIdx", 0)) == side.config.position_idx and order.get("reduceOnly"):
                    key = {"orderLinkId": order["orderLinkId"]} if order.get("orderLinkId") else \
                        {"orderId": order["orderId"]}
                    self._call(side, "cancel_target", self.http.cancel_order, category="linear", symbol=self.symbol,
                               **key)
                    self.events.emit("desync", side.name, detail=f"leftover order {order.get('orderLinkId') or ''} "
                                                                 "of a flat side cancelled")

    def _ensure_stop(self, side: Side, exchange_stop: float, tick: float) -> None:
        """The exchange must hold the state's stop: set it when missing or looser, adopt a tighter one set by hand."""
        state = side.state
        d = state[core.S_DIR]
        if exchange_stop and (exchange_stop - state[core.S_STOP]) * d > tick / 2:
            self.events.emit("desync", side.name, detail=f"a tighter stop {exchange_stop:g} is on the exchange "
                                                         f"(state {state[core.S_STOP]:g}); adopted")
            state[core.S_STOP] = exchange_stop
            side.sent_stop = exchange_stop
            return
        if exchange_stop and abs(exchange_stop - state[core.S_STOP]) <= tick / 2:
            side.sent_stop = state[core.S_STOP]
            return
        if self._beyond_market(state[core.S_STOP], d):
            self._close(side, f"{side.name}-{int(state[core.S_ENTRY_TS])}-guard-reconcile", self._data(),
                        self._forming_close())
            return
        if self._send_stop(side, "stop_restored"):
            side.sent_stop = state[core.S_STOP]
            self.events.emit("stop_restored", side.name, stop=float(state[core.S_STOP]),
                             exchange_stop=exchange_stop or None)

    def rescue(self, side: Side, d: float, qty: float, price: float, entry_ms: int, exchange_stop: float,
               data: backtester.MarketData, fee: float = 0.0) -> None:
        """Adopt a position the state does not know (opened by hand, or left by a lost database).

        It gets the entry price and time the exchange reports, the ATR of its entry bar recomputed
        from history and initial size = current size, so every rule (breakeven, trailing,
        take-profits, time exit, stagnation) manages it from now on; a tighter stop already on the
        exchange is kept.
        """
        state, p = side.state, side.p
        bar = int(max(0, min(len(data.ts) - 1, np.searchsorted(data.ts, entry_ms, side="right") - 1)))
        atr = data.indicator("atr", side.config.params["atr_period"])
        finite = np.flatnonzero(np.isfinite(atr[:bar + 1]))
        a = float(atr[finite[-1]]) if finite.size else float(data.high[bar] - data.low[bar])
        state[core.S_ORDER_ATR] = a
        state[core.S_ORDER_STOP] = core.round_price(price - d * a * p[core.P_STOP_ATR], p[core.P_TICK])
        core.open_fill(state, p, d, qty, price, fee, float(entry_ms), float(bar))
        if exchange_stop and (exchange_stop - state[core.S_STOP]) * d > 0:
            state[core.S_STOP] = exchange_stop
        side.sent_stop = exchange_stop
        entry_time = pd.Timestamp(entry_ms, unit="ms", tz="UTC").isoformat()
        self.events.emit("rescue", side.name, qty=qty, entry_price=price, stop=float(state[core.S_STOP]), atr=a,
                         entry_time=entry_time,
                         detail=f"adopted: entry {entry_time}, ATR at entry {a:g}, stop {state[core.S_STOP]:g}")
        logger.warning("%s: rescued a position of %g at %g (entry %s); stop %g", side.name, qty, price,
                       pd.Timestamp(entry_ms, unit="ms", tz="UTC"), state[core.S_STOP])
        side.resync = True

    def _close(self, side: Side, link_id: str, data: backtester.MarketData, until_ms: int | None = None) -> None:
        """Close the whole position: one reduce-only market order, then its fill booked (before ``until_ms``).

        The stop stays on the exchange until the fill is booked; the state changes only from it.
        """
        _, exit_side = SIDE_ORDER[side.name]
        self._order(side, link_id, "close", side=exit_side, orderType="Market",
                    qty=fmt(side.state[core.S_QTY], self.instrument["qty_step"]), reduceOnly=True)
        self.sync_executions(data, until_ms=until_ms)

    def _send_stop(self, side: Side, action: str) -> bool:
        """Set the state's stop on the exchange (``action`` names the call in logs and events)."""
        return self._call(side, action, self.http.set_trading_stop, category="linear", symbol=self.symbol,
                          positionIdx=side.config.position_idx,
                          stopLoss=fmt(side.state[core.S_STOP], self.instrument["tick_size"]), tpslMode="Full",
                          slTriggerBy=config.STOP_TRIGGER_BY)

    def _forget_position(self, side: Side) -> None:
        """After the last fill: no targets, no stop on record."""
        side.targets = []
        self.store.set(f"targets_{side.name}", [])
        side.sent_stop = 0.0

    def close_all(self) -> None:
        """Close every open position at market (reduce-only), e.g. --close-on-exit."""
        with self.store.transaction():
            for side in self.sides:
                if side.state[core.S_DIR]:
                    self._close(side, f"{side.name}-{int(time.time() * 1000)}-close{core.R_SIGNAL}", self._data(),
                                self._forming_close())
                    self.store.save_state(side.name, side.state, int(time.time() * 1000))

    # --- tick guard -------------------------------------------------------------------------
    def tick_guard(self, price: float, now: float, grace_seconds: float) -> None:
        """Close a position whose stop a fresh tick has crossed and which is still open after the grace period.

        The exchange-side stop is the protection; this catches the case where it failed or was
        removed. ``price`` must be fresh (the caller never passes a stale one); ``now`` is a
        monotonic time in seconds.
        """
        for side in self.sides:
            state = side.state
            if not state[core.S_DIR] or (price - state[core.S_STOP]) * state[core.S_DIR] > 0:
                side.crossed_at = None
                continue
            side.crossed_at = side.crossed_at if side.crossed_at is not None else now
            if now - side.crossed_at < grace_seconds:
                continue
            side.crossed_at = None
            with self.store.transaction():
                settled = self._settled_positions(self._data())
                if settled is None:
                    continue  # the next bar's fills are pending: looked at again with the next tick
                open_size = sum(float(r.get("size") or 0) for r in settled
                                if int(r["positionIdx"]) == side.config.position_idx)
                if state[core.S_DIR] and open_size > 0:
                    logger.error("%s: price %g crossed the stop %g and the position is still open: closing it",
                                 side.name, price, state[core.S_STOP])
                    self.events.emit("tick_guard", side.name, price=price, stop=float(state[core.S_STOP]),
                                     qty=float(state[core.S_QTY]))
                    self._close(side, f"{side.name}-{int(state[core.S_ENTRY_TS])}-guard-{int(now * 1000)}",
                                self._data(), self._forming_close())
                self.store.save_state(side.name, state, int(time.time() * 1000))

    # --- files ------------------------------------------------------------------------------
    def write_heartbeat(self, mark: float, equity: float) -> None:
        """heartbeat.json, atomically: what the watchdog reads."""
        positions = []
        for side in self.sides:
            s = side.state
            if s[core.S_DIR]:
                entry_time = pd.Timestamp(int(s[core.S_ENTRY_TS]), unit="ms", tz="UTC").isoformat()
                positions.append({"side": side.name, "qty": float(s[core.S_QTY]),
                                  "entry_price": float(s[core.S_ENTRY]), "stop": float(s[core.S_STOP]),
                                  "take_profit": float(s[core.S_TP]) or None, "mark_price": mark,
                                  "unrealized_pnl": float(core.unrealized(s, mark)), "entry_time": entry_time})
        now = time.time()
        last_bar = pd.Timestamp(self.last_bar_ts, unit="ms", tz="UTC").isoformat() if self.last_bar_ts else None
        beat = {"pid": os.getpid(), "time_ms": int(now * 1000),
                "time": pd.Timestamp(now, unit="s", tz="UTC").isoformat(), "started_ms": self.started_ms,
                "symbol": self.symbol, "env": self.env, "last_bar_ts": self.last_bar_ts, "last_bar": last_bar,
                "paused": self._paused(), "equity": equity, "positions": positions,
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
