"""bybit_sim: a local Bybit V5 (REST and WebSocket on one port) that replays candles.

The real pybit client talks to it over HTTP and WebSockets on 127.0.0.1. The first
``history_bars`` candles are the past that ``market/kline`` serves; the rest are replayed, and
resting orders are matched by sim_engine.py with the backtester's fill rules.

    python bybit_sim.py --replay data.csv --symbol SOLUSDT --timeframe 1h --port 8765 --balance 10000 \\
        --history-bars 2000 --speed 20
    python bybit_sim.py --replay data.csv --symbol SOLUSDT --timeframe 1h --port 8765 --faults 0.1 \\
        --ws-drop-every 50 --seed 7 --fills rest_late --partial-rate 0.2

Two clocks: ``--speed N`` plays N bars a second; ``--lockstep`` advances to the next bar only after
the client acknowledges the bar close with the sim-only ``POST /sim/ack``, so replays are
deterministic and as fast as the client goes. Other sim-only endpoints (not part of Bybit's
API): ``GET /sim/status`` (cursor, finished), ``GET /sim/stats`` (orders, executions, duplicate
orderLinkIds refused, faults injected, longest time a position had no stop-loss).

Every answer has the fields, string-or-number types, sort order, page sizes, time windows and error
codes of Bybit's V5 docs (the ``# docs:`` comments name the page; sim_shapes.py builds the records;
tests/fixtures/bybit holds each page's response table and example, and a test holds every answer to both). Where
the docs are silent the behaviour is a choice (:class:`Behaviour`) and the trader's tests run under
each: when a fill reaches the private stream and ``execution/list``, whether market orders fill
partly, the mark price's offset from the last price, which end of a range a kline page holds, whether
an execution/list page repeats a row. ``other_margin`` holds margin for positions on other symbols
(it is not available to new orders). Tests switch a lockstep replay to the speed clock with
:meth:`SimExchange.run_clock` (market time moves while the client is down) and stop it with ``hold``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from aiohttp import WSMsgType, web

import cli  # first: a bad config.py ends here in one line, exit 2
import config
import core
from data_fetcher import BYBIT_INTERVALS, TIMEFRAMES, load_source, resample, to_arrays
import sim_shapes as shape
from sim_engine import ACCOUNT_UID, Engine, ExchangeError, FillStyle, Order, Position
from sim_shapes import (
    PERMISSION_GROUPS,
    POSITION_REST_DROP,
    POSITION_WS_DROP,
    TICKER_REST_DROP,
    TICKER_WS_DROP,
    TRADE_ONLY,
    num,
)

DEFAULT_API_KEY = "sim-key"
DEFAULT_API_SECRET = "sim-secret"
INTERVAL_TO_TIMEFRAME = {v: k for k, v in BYBIT_INTERVALS.items()}
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# What the command line's number flags accept (shared ones from config.FLAG_BOUNDS)
SIM_FLAG_BOUNDS = {
    "--port": config.Bound(0, 65_535, whole=True), "--balance": config.Bound(0, 10**12, unit="USDT"),
    "--history-bars": config.FLAG_BOUNDS["--history-bars"], "--seed": config.FLAG_BOUNDS["--seed"],
    "--speed": config.Bound(0, 10**6, low_open=True, unit="bars a second"),
    "--faults": config.Bound(0, 1), "--partial-rate": config.Bound(0, 1),
    "--ws-drop-every": config.Bound(0, 10**9, whole=True, unit="bars"),
    "--mark-offset": config.Bound(-1, 1, low_open=True, high_open=True),  # the mark price stays above zero
    "--tick": config.FLAG_BOUNDS["--tick"], "--qty-step": config.FLAG_BOUNDS["--qty-step"],
}


def check_history_bars(history_bars: int, n_bars: int, timeframe: str) -> int:
    """``history_bars`` when it leaves at least one of ``n_bars`` candles to replay, else a ValueError naming it
    and what is accepted."""
    if not 0 < history_bars < n_bars:
        raise ValueError(f"--history-bars {history_bars} is refused; accepted: 1 to {n_bars - 1} (the candles hold "
                         f"{n_bars} {timeframe} bars)")
    return history_bars


@dataclass
class FaultConfig:
    """Seeded fault injection: a share of REST calls fail in the ways Bybit documents (docs: v5/error.mdx)."""

    rate: float = 0.0                 # share of REST calls that fail
    timeout_seconds: float = 3.0      # how long a "timeout" holds its answer
    ws_drop_every: int = 0            # drop WebSocket connections every N bars (0 = never)
    acted_timeout_share: float = 0.3  # share of failed order/create calls that act, then time out
    reject_stops: bool = False        # refuse trading-stop requests (a stop the exchange rejects)
    # drawn from: http_500/http_502 (gateway), http_429 (system frequency protection), http_403 (IP ban),
    # rate_limit (10006), busy (10016), server_timeout (10000), permission_denied (10005), timeout (no answer)
    kinds: tuple[str, ...] = ("http_500", "http_502", "rate_limit", "busy", "timeout")
    max_faults: int | None = None     # stop injecting after this many (None: never stop)


@dataclass
class Behaviour:
    """Choices where the docs are silent; the trader must be right under each.

    ``ws_fills``: when an execution reaches the private stream: ``now``, ``bar`` (with the next bar
    close) or ``never``. ``rest_fills``: when it shows on ``execution/list``: ``now``, ``lag``
    (after ``rest_lag`` more execution/list requests) or ``bar`` (once the next bar has been played).
    Presets: :meth:`delivery` ``ws_first``, ``rest_first``, ``rest_late``.
    """

    ws_fills: str = "now"
    rest_fills: str = "lag"
    rest_lag: int = 1
    partial_rate: float = 0.0   # share of market orders (IOC) that fill only partly
    partial_share: float = 0.5  # the share of such an order that fills
    split_fills: int = 1        # executions per market fill
    mark_offset: float = 0.0    # mark (and index) price = last price x (1 + mark_offset)
    kline_page: str = "end"     # a start+end+limit page holds the range's newest bars ("end") or oldest ("start")
    # share of execution/list pages that carry one row twice: a row of the query repeated (the docs say nothing of
    # overlaps; pages of a list that grows while it is read by cursor, and adjacent time windows, can overlap)
    repeat_rows: float = 0.0

    PRESETS = {"ws_first": ("now", "lag"), "rest_first": ("bar", "now"), "rest_late": ("now", "bar"),
               "sync": ("now", "now")}

    @classmethod
    def delivery(cls, name: str, **rest: Any) -> Behaviour:
        """A preset of fill delivery (ws_first, rest_first, rest_late, sync) with other choices as given."""
        ws, rest_fills = cls.PRESETS[name]
        return cls(ws_fills=ws, rest_fills=rest_fills, **rest)


def _page(rows: list[Any], params: dict[str, Any], default: int, most: int) -> tuple[list[Any], str]:
    """One page of ``rows`` by ``limit`` (docs: [1, most], default ``default``) and ``cursor``; the next cursor."""
    try:
        limit = int(params.get("limit", default))
        offset = int(re.search(r"(\d+)", str(params.get("cursor") or "0")).group(1))
    except (ValueError, AttributeError):
        raise ExchangeError(10001, "params error: limit or cursor invalid") from None
    if not 1 <= limit <= most:
        raise ExchangeError(10001, f"params error: limit must be within [1, {most}]")
    page = rows[offset:offset + limit]
    return page, (f"page_token%3D{offset + limit}%26" if offset + limit < len(rows) else "")


def _window(params: dict[str, Any], now: int) -> tuple[int, int]:
    """The [start, end] a 7-day-window endpoint answers for (docs: v5/order/execution.mdx, order-list.mdx)."""
    start, end = params.get("startTime"), params.get("endTime")
    start = int(start) if start not in (None, "") else None
    end = int(end) if end not in (None, "") else None
    if start is None and end is None:
        return now - WEEK_MS, now
    if end is None:
        return start, start + WEEK_MS
    if start is None:
        return end - WEEK_MS, end
    if end - start > WEEK_MS or end < start:
        raise ExchangeError(10001, "params error: endTime - startTime must be between 0 and 7 days")
    return start, end


class SimExchange:
    """The simulated exchange; a context manager that serves it on a free port in a thread."""

    user_id = ACCOUNT_UID  # the account's UID, userID of GET /v5/user/query-api (docs: v5/user/apikey-info.mdx)

    def __init__(self, candles: pd.DataFrame, symbol: str = "BTCUSDT", timeframe: str = "1h",
                 history_bars: int = 200, balance: float = 10_000.0, lockstep: bool = True,
                 speed: float | None = None, faults: FaultConfig | None = None, seed: int = 0,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET, port: int = 0,
                 costs: dict[str, float] | None = None, instrument: dict[str, float] | None = None,
                 api_permissions: dict[str, list[str]] | None = None, api_ips: list[str] | None = None,
                 api_read_only: bool = False, api_expires_ms: int | None = None,
                 behaviour: Behaviour | None = None, instrument_status: str = "Trading",
                 funding: pd.Series | None = None, other_margin: float = 0.0,
                 margin_mode: str = "ISOLATED_MARGIN") -> None:
        if timeframe not in TIMEFRAMES:
            raise ValueError(f"unknown timeframe '{timeframe}'; accepted: {', '.join(TIMEFRAMES)}")
        check_history_bars(history_bars, len(candles), timeframe)
        self.behaviour = behaviour or Behaviour()
        arrays = to_arrays(candles)
        history = (None, None) if funding is None or len(funding) == 0 else (
            np.asarray(funding.index, dtype=np.int64), np.asarray(funding.values, dtype=np.float64))
        # the funding events the backtest charges: the history's (funding time -> rate), else the 8h grid
        funding_ts, funding_rates = core.funding_schedule(arrays["ts"], TIMEFRAMES[timeframe], *history)
        style = FillStyle(self.behaviour.partial_rate, self.behaviour.partial_share, self.behaviour.split_fills, seed)
        self.engine = Engine(arrays["ts"], arrays["open"], arrays["high"], arrays["low"], arrays["close"],
                             arrays["volume"], TIMEFRAMES[timeframe], symbol, balance,
                             costs or config.costs(), instrument or config.instrument_for(symbol), history_bars,
                             funding_ts=funding_ts, funding_rates=funding_rates,
                             mark_offset=self.behaviour.mark_offset, fill_style=style, other_margin=other_margin)
        self.timeframe = timeframe
        self.interval = BYBIT_INTERVALS[timeframe]
        self.lockstep = lockstep and not speed
        self.speed = speed
        self.faults = faults or FaultConfig()
        self.random = random.Random(seed)
        self._repeats = random.Random(seed + 1)  # its own draws: repeating rows leaves the faults' sequence alone
        self.repeated_rows = 0
        self.api_key = api_key
        self.api_secret = api_secret
        self.api_permissions = api_permissions  # what GET /v5/user/query-api reports (None: a trade-only key)
        self.api_ips = api_ips if api_ips is not None else ["*"]
        self.api_read_only = api_read_only
        self.api_expires_ms = api_expires_ms
        self.instrument_status = instrument_status
        # what GET /v5/account/info reports (docs: v5/account/account-info.mdx); the engine liquidates as isolated
        # margin does, whatever this says: another value is for the preflight's tests
        self.margin_mode = margin_mode
        self.port = port
        self.fault_counts: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.public: dict[web.WebSocketResponse, set[str]] = {}
        self.private: dict[web.WebSocketResponse, set[str]] = {}
        self.bars_played = 0
        self.open_ms: int | None = None
        self.longest_unprotected_ms = 0
        self._rest_hidden: dict[str, list[Any]] = {}  # execId -> ["lag", requests left] or ["bar", bars_played]
        self._ws_later: list[dict[str, Any]] = []  # executions the stream sends with the next bar close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stop: asyncio.Event | None = None
        self._ticker_sent: set[web.WebSocketResponse] = set()
        self.on_request: Callable[[str], None] | None = None  # called after each REST request is handled
        self._clock_task: asyncio.Future | None = None
        self.held = False  # the speed clock is stopped (hold)
        self._start_error: Exception | None = None  # why the server could not start (a port in use)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def rest_url(self) -> str:
        """Base URL for pybit's HTTP session."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base URL for pybit's WebSockets."""
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> SimExchange:
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True, name="bybit-sim")
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("bybit_sim did not start")
        if self._start_error is not None:
            self._thread.join(timeout=30)
            raise self._start_error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout=30)

    def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(started))
        self._loop.close()

    async def _main(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/v5/{path:.*}", self._rest)
        app.router.add_post("/sim/ack", self._sim_ack)
        app.router.add_get("/sim/status", self._sim_status)
        app.router.add_get("/sim/stats", self._sim_stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        except Exception as exc:  # noqa: BLE001 - a port in use or not ours: __enter__ raises it at once
            self._start_error = exc
            await self._runner.cleanup()
            started.set()
            return
        started.set()
        if self.speed:
            self._clock_task = asyncio.ensure_future(self._clock())
        await self._stop.wait()
        if self._clock_task:
            self._clock_task.cancel()
        for ws in list(self.public) + list(self.private):
            await ws.close()
        await self._runner.cleanup()

    async def _clock(self) -> None:
        while not self.engine.finished:
            await asyncio.sleep(1.0 / self.speed)
            if not self.held:
                await self._advance()

    def run_clock(self, speed: float) -> None:
        """Switch from lockstep to the speed clock, ``speed`` bars a second from now on (tests: once the client
        is up, so the market moves while it is down, as a real one does)."""
        def start() -> None:
            self.speed, self.lockstep = speed, False
            self._clock_task = asyncio.ensure_future(self._clock())
        self._loop.call_soon_threadsafe(start)

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) the speed clock: tests compare the client with the exchange meanwhile."""
        self.held = held

    def call(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on the sim's event loop (tests acting on the engine by hand) and flush its events."""
        async def run() -> Any:
            result = action()
            await self._send_all(self._collect())
            return result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=60)

    # --- replay -----------------------------------------------------------------------------
    def advance(self) -> int:
        """Play one bar from Python (tests): walk it, close it, publish; returns the closed bar."""
        return asyncio.run_coroutine_threadsafe(self._advance(), self._loop).result(timeout=60)

    async def _advance(self) -> int:
        if self.engine.finished:
            return -1
        k = self.engine.play_bar()
        self.bars_played += 1
        exposed = any(s.size and not s.stop_loss for s in self.engine.position_slots())
        if exposed:
            self.open_ms = self.open_ms or time.monotonic_ns() // 1_000_000
            self.longest_unprotected_ms = max(self.longest_unprotected_ms,
                                              time.monotonic_ns() // 1_000_000 - self.open_ms)
        else:
            self.open_ms = None
        for exec_id, (kind, bar) in list(self._rest_hidden.items()):
            if kind == "bar" and self.bars_played > bar:
                del self._rest_hidden[exec_id]
        later, self._ws_later = self._ws_later, []
        await self._send_all([("execution", later), *self._collect()])
        await self._publish_kline(k)
        if self.faults.ws_drop_every and self.bars_played % self.faults.ws_drop_every == 0:
            self._count("ws_drop")
            for ws in list(self.public) + list(self.private):
                await ws.close()
        return k

    async def _sim_ack(self, request: web.Request) -> web.Response:
        """Sim-only: the client has handled the last bar close; in lockstep, play the next bar."""
        k = await self._advance() if self.lockstep else -1
        return web.json_response({"closed_bar": k, "finished": self.engine.finished})

    async def _sim_status(self, request: web.Request) -> web.Response:
        """Sim-only: where the replay is."""
        return web.json_response({"cursor": self.engine.cursor, "bars": len(self.engine.ts),
                                  "finished": self.engine.finished, "bars_played": self.bars_played})

    def stats(self) -> dict[str, Any]:
        """What the exchange saw."""
        engine = self.engine
        return {**engine.counters, "faults": dict(self.fault_counts), "requests": dict(self.requests),
                "bars_played": self.bars_played, "repeated_rows": self.repeated_rows,
                "longest_unprotected_bars": engine.longest_unprotected_bars,
                "longest_unprotected_seconds": self.longest_unprotected_ms / 1000, "finished": engine.finished}

    async def _sim_stats(self, request: web.Request) -> web.Response:
        """Sim-only: the stats as JSON."""
        return web.json_response(self.stats())

    # --- REST -------------------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1

    @staticmethod
    def _envelope(result: Any, code: int = 0, message: str = "OK") -> dict[str, Any]:
        """docs: v5/guide.mdx "Common response parameters" (time: the current timestamp, ms)."""
        return {"retCode": code, "retMsg": message, "result": result if result is not None else {},
                "retExtInfo": {}, "time": int(time.time() * 1000)}

    def _check_auth(self, request: web.Request, payload: str) -> None:
        """docs: v5/guide.mdx: the HMAC signature, and server_time - recv_window <= timestamp < server_time + 1000."""
        key = request.headers.get("X-BAPI-API-KEY")
        if key != self.api_key:
            raise ExchangeError(10003, "API key is invalid.")
        try:
            timestamp = int(request.headers.get("X-BAPI-TIMESTAMP", ""))
            recv_window = int(request.headers.get("X-BAPI-RECV-WINDOW", "5000"))
        except ValueError:
            raise ExchangeError(10001, "params error: X-BAPI-TIMESTAMP and X-BAPI-RECV-WINDOW must be integers") \
                from None
        now = int(time.time() * 1000)
        if not (now - recv_window <= timestamp < now + 1000):
            raise ExchangeError(10002, f"invalid request, please check your server timestamp or recv_window param. "
                                       f"req_timestamp[{timestamp}],server_timestamp[{now}],"
                                       f"recv_window[{recv_window}]")
        origin = f"{timestamp}{key}{recv_window}{payload}"
        expected = hmac.new(self.api_secret.encode(), origin.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-BAPI-SIGN", "")):
            raise ExchangeError(10004, f"error sign! origin_string[{origin}]")

    def _permissions(self) -> dict[str, list[str]]:
        granted = TRADE_ONLY if self.api_permissions is None else self.api_permissions
        return {group: list(granted.get(group, [])) for group in dict.fromkeys([*PERMISSION_GROUPS, *granted])}

    def _check_permission(self, path: str) -> None:
        """A write needs a read-write key with ContractTrade Order or Position, else 10005 (docs: v5/error.mdx)."""
        wanted = {"order/create": "Order", "order/cancel": "Order", "order/cancel-all": "Order",
                  "position/set-leverage": "Position", "position/switch-mode": "Position",
                  "position/trading-stop": "Position"}.get(path)
        if wanted and (self.api_read_only or wanted not in self._permissions().get("ContractTrade", [])):
            raise ExchangeError(10005, "Permission denied, please check your API key permissions.")

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path in ("public/linear", "private"):
            return await (self._ws_public(request) if path == "public/linear" else self._ws_private(request))
        raw = request.query_string if request.method == "GET" else (await request.text())
        params: dict[str, Any] = dict(request.query) if request.method == "GET" else (json.loads(raw) if raw else {})
        handler = self.ROUTES.get(path)
        self.requests[path] = self.requests.get(path, 0) + 1
        if handler is None:
            return web.Response(status=404, text="Not Found")  # docs: v5/error.mdx HTTP 404: wrong path
        fault = self._pick_fault(path)
        if fault in ("http_500", "http_502", "http_403", "http_429"):
            # docs: v5/error.mdx HTTP codes; 403: IP rate limit breached (v5/rate-limit/rate-limit.mdx)
            return web.Response(status=int(fault[-3:]), text="access too frequent" if fault == "http_403" else "error")
        coded = {"rate_limit": (10006, "Too many visits!"), "busy": (10016, "Server error."),
                 "server_timeout": (10000, "Server Timeout"),
                 "permission_denied": (10005, "Permission denied, please check your API key permissions.")}
        if fault in coded:
            resp = web.json_response(self._envelope(None, *coded[fault]))
            if fault == "rate_limit":  # docs: v5/rate-limit/rate-limit.mdx X-Bapi-Limit-Reset-Timestamp
                resp.headers["X-Bapi-Limit-Reset-Timestamp"] = str(int(time.time() * 1000) + 50)
            return resp
        try:
            if not path.startswith("market/"):
                self._check_auth(request, raw)
                self._check_permission(path)
            result = handler(self, params)
            body = self._envelope(result)
        except ExchangeError as exc:
            body = self._envelope(None, exc.code, exc.message)
        asyncio.ensure_future(self._send_all(self._collect()))
        if self.on_request is not None:
            self.on_request(path)  # tests: e.g. kill the client after the exchange acted, before it hears back
        if fault == "timeout":
            await asyncio.sleep(self.faults.timeout_seconds)
        return web.json_response(body)

    def _pick_fault(self, path: str) -> str | None:
        faults = self.faults
        if not faults.rate or (faults.max_faults is not None
                                and sum(self.fault_counts.get(k, 0) for k in faults.kinds) >= faults.max_faults):
            return None
        if self.random.random() >= faults.rate:
            return None
        if path == "order/create" and "timeout" in faults.kinds and self.random.random() < faults.acted_timeout_share:
            kind = "timeout"  # the order is created, the answer arrives too late
        else:
            kind = self.random.choice(list(faults.kinds))
        self._count(kind)
        return kind

    # market
    def _market_time(self, params: dict[str, Any]) -> dict[str, Any]:
        """The replay's clock: the forming bar's open (docs: v5/market/time.mdx; signatures use the wall clock)."""
        now_ms = self.engine.now_ms()
        return {"timeSecond": str(now_ms // 1000), "timeNano": str(now_ms * 1_000_000)}

    def _check_symbol(self, params: dict[str, Any]) -> None:
        if params.get("category", "linear") != "linear":
            raise ExchangeError(10001, "params error: category only support linear")
        if params.get("symbol") != self.engine.symbol:
            raise ExchangeError(10001, "params error: Symbol Invalid")

    def _market_kline(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/market/kline.mdx: newest first, limit [1, 1000] (default 200), a forming bar's close = last price.

        Which ``limit`` bars of a longer start..end range a page holds is not documented:
        ``Behaviour.kline_page`` picks the newest ("end") or the oldest ("start").
        """
        self._check_symbol(params)
        interval = params.get("interval")
        if interval not in INTERVAL_TO_TIMEFRAME:
            raise ExchangeError(10001, f"params error: Invalid period; accepted: {', '.join(BYBIT_INTERVALS.values())}")
        limit = min(max(int(params.get("limit", 200)), 1), 1000)
        engine = self.engine
        stop = min(engine.cursor + 1, len(engine.ts))  # closed bars and the forming one
        frame = pd.DataFrame({"open": engine.open_[:stop], "high": engine.high[:stop], "low": engine.low[:stop],
                              "close": engine.close[:stop], "volume": engine.volume[:stop]},
                             index=pd.DatetimeIndex(pd.to_datetime(engine.ts[:stop], unit="ms", utc=True), name="time"))
        timeframe = INTERVAL_TO_TIMEFRAME[interval]
        if TIMEFRAMES[timeframe] < engine.bar_ms:
            raise ExchangeError(10001, f"params error: the sim replays {self.timeframe} bars; interval {interval} "
                                       "is finer")
        if timeframe != self.timeframe:
            frame = resample(frame, timeframe)
        if not engine.finished and timeframe == self.timeframe:
            forming = engine.cursor
            frame.iloc[-1] = [engine.open_[forming]] * 4 + [0.0]  # only its open is known yet
        times = frame.index.as_unit("ms").asi8
        mask = np.ones(len(frame), dtype=bool)
        if "start" in params:
            mask &= times >= int(params["start"])
        if "end" in params:
            mask &= times <= int(params["end"])
        rows = frame[mask]
        rows = rows.iloc[:limit] if self.behaviour.kline_page == "start" and "start" in params else rows.iloc[-limit:]
        rows = rows.iloc[::-1]
        values = rows.to_numpy()
        stamps = rows.index.as_unit("ms").asi8
        out = [[str(t), *(num(v) for v in row), num(row[3] * row[4])] for t, row in zip(stamps, values, strict=True)]
        return {"symbol": engine.symbol, "category": "linear", "list": out}

    def _market_tickers(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/market/tickers.mdx."""
        self._check_symbol(params)
        return {"category": "linear", "list": [shape.ticker(self.engine, TICKER_REST_DROP)]}

    def _market_instruments(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/market/instrument.mdx."""
        self._check_symbol(params)
        return {"category": "linear", "list": [shape.instrument(self.engine, self.instrument_status)],
                "nextPageCursor": ""}

    def _market_funding(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/market/history-fund-rate.mdx (newest first, at most 200 rows)."""
        self._check_symbol(params)
        engine = self.engine
        events = [k for k, t in enumerate(engine.funding_ts) if t <= engine.now_ms()]
        if "startTime" in params:
            events = [k for k in events if engine.funding_ts[k] >= int(params["startTime"])]
        if "endTime" in params:
            events = [k for k in events if engine.funding_ts[k] <= int(params["endTime"])]
        limit = min(int(params.get("limit", 200)), 200)
        rows = [{"symbol": engine.symbol, "fundingRate": num(engine.funding_rate(k)),
                 "fundingRateTimestamp": str(int(engine.funding_ts[k]))} for k in reversed(events)][:limit]
        return {"category": "linear", "list": rows}

    # account and position
    def _wallet(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/account/wallet-balance.mdx."""
        return shape.wallet(self.engine, params)

    def _account_info(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/account/account-info.mdx: the account's margin mode."""
        return shape.account_info(self.engine, self.margin_mode)

    def _position_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/position/position.mdx: with a symbol, every slot of the mode, open or not."""
        self._check_symbol(params)
        rows = [shape.position(self.engine, s, POSITION_REST_DROP) for s in self.engine.position_slots()]
        page, cursor = _page(rows, params, 20, 200)
        return {"list": page, "nextPageCursor": cursor, "category": "linear"}

    def _set_leverage(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/position/leverage.mdx; 110043 when unchanged (docs: v5/error.mdx)."""
        self._check_symbol(params)
        try:
            buy, sell = float(params["buyLeverage"]), float(params["sellLeverage"])
        except (KeyError, ValueError):
            raise ExchangeError(10001, "params error: buyLeverage and sellLeverage are required numbers") from None
        if buy != sell or not 1 <= buy <= self.engine.instrument["max_leverage"]:
            raise ExchangeError(10001, f"params error: leverage must be equal on both sides and within [1, "
                                       f"{self.engine.instrument['max_leverage']:g}]")
        if buy == self.engine.leverage:
            raise ExchangeError(110043, "Set leverage has not been modified.")
        self.engine.leverage = buy
        return {}

    def _switch_mode(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/position/position-mode.mdx (mode 0 one-way, 3 hedge); 110025, 110024, 110028 from v5/error.mdx."""
        self._check_symbol(params)
        mode = int(params.get("mode", -1))
        if mode not in (0, 3):
            raise ExchangeError(10001, "params error: mode must be 0 (one-way) or 3 (hedge)")
        self.engine.switch_mode(mode == 3)
        return {}

    def _trading_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/position/trading-stop.mdx (Full mode; 34040 when nothing changes, docs: v5/error.mdx)."""
        self._check_symbol(params)
        if self.faults.reject_stops:
            self._count("stop_rejected")
            raise ExchangeError(10001, "params error: the sim rejects this stop (fault injection)")
        if params.get("tpslMode") != "Full":
            raise ExchangeError(10001, "params error: tpslMode must be Full (the sim supports Full only)")

        def number(key: str) -> float | None:
            return float(params[key]) if key in params and params[key] != "" else None

        self.engine.set_trading_stop(int(params.get("positionIdx", 0)), number("stopLoss"), number("takeProfit"),
                                     number("trailingStop"), params.get("slTriggerBy") or None)
        return {}

    # orders
    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/create-order.mdx: the answer is the ids only; the fill follows asynchronously."""
        order = self.engine.create_order(params)
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/cancel-order.mdx."""
        self._check_symbol(params)
        order = self.engine.cancel_order(params.get("orderId"), params.get("orderLinkId"))
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _cancel_all(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/cancel-all.mdx."""
        cancelled = self.engine.cancel_all()
        return {"list": [{"orderId": o.order_id, "orderLinkId": o.link_id} for o in cancelled], "success": "1"}

    def _by_id(self, orders: list[Order], params: dict[str, Any]) -> list[Order] | None:
        """orderId wins over orderLinkId, which wins over the rest (docs: v5/order/open-order.mdx, execution.mdx)."""
        if params.get("orderId"):
            return [o for o in orders if o.order_id == params["orderId"]]
        if params.get("orderLinkId"):
            return [o for o in orders if o.link_id == params["orderLinkId"]]
        return None

    def _realtime(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/open-order.mdx: open orders (openOnly=0), or the recent closed ones (openOnly=1, at
        most 500); a query by orderId or orderLinkId ignores openOnly. Newest first, limit [1, 50], default 20."""
        self._check_symbol(params)
        orders = sorted(self.engine.orders.values(), key=lambda o: o.created_ms)
        found = self._by_id(orders, params)
        if found is None:
            closed = int(params.get("openOnly", 0) or 0) == 1
            found = [o for o in orders if o.is_open != closed]
            found = found[-500:] if closed else found
        page, cursor = _page([shape.order(self.engine, o, "realtime") for o in reversed(found)], params, 20, 50)
        return {"list": page, "nextPageCursor": cursor, "category": "linear"}

    def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/order-list.mdx: closed orders of a 7-day window; fully cancelled, rejected and
        deactivated ones only within the last 24 hours. Newest first, limit [1, 50], default 20."""
        self._check_symbol(params)
        now = self.engine.now_ms()
        start, end = _window(params, now)
        orders = sorted(self.engine.orders.values(), key=lambda o: o.created_ms)
        found = self._by_id(orders, params)
        if found is None:
            found = [o for o in orders if start <= o.created_ms <= end]

        def listed(o: Order) -> bool:
            if o.is_open:
                return False
            unfilled_end = o.status in ("Cancelled", "Rejected", "Deactivated") and o.filled == 0
            return not unfilled_end or now - o.updated_ms <= DAY_MS

        rows = [shape.order(self.engine, o, "history") for o in reversed(found) if listed(o)]
        page, cursor = _page(rows, params, 20, 50)
        return {"list": page, "nextPageCursor": cursor, "category": "linear"}

    def _executions(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/order/execution.mdx: a window of at most 7 days (only startTime: [start, start + 7d];
        neither: the last 7 days), newest first, limit [1, 100] (default 50) with cursor; orderId and
        orderLinkId win over every other filter. Executions not visible yet (Behaviour.rest_fills) are left out."""
        now = self.engine.now_ms()
        rows = [e for e in self.engine.executions if e["execId"] not in self._rest_hidden]
        if params.get("orderId") or params.get("orderLinkId"):
            key = "orderId" if params.get("orderId") else "orderLinkId"
            rows = [e for e in rows if e[key] == params[key] and now - WEEK_MS <= e["execTime"] <= now]
        else:
            if params.get("symbol") not in (None, self.engine.symbol):
                rows = []
            start, end = _window(params, now)
            rows = [e for e in rows if start <= e["execTime"] <= end]
            if params.get("execType"):
                rows = [e for e in rows if e["execType"] == params["execType"]]
        rows.sort(key=lambda e: (e["execTime"], e["seq"]), reverse=True)
        page, cursor = _page([shape.execution(self.engine, e, ws=False) for e in rows], params, 50, 100)
        if rows and self._repeats.random() < self.behaviour.repeat_rows:
            page = [*page, shape.execution(self.engine, self._repeats.choice(rows), ws=False)]
            self.repeated_rows += 1
        for exec_id, (kind, left) in list(self._rest_hidden.items()):  # this request did not show them
            if kind == "lag":
                if left <= 1:
                    del self._rest_hidden[exec_id]
                else:
                    self._rest_hidden[exec_id][1] = left - 1
        return {"nextPageCursor": cursor, "category": "linear", "list": page}

    def _query_api(self, params: dict[str, Any]) -> dict[str, Any]:
        """docs: v5/user/apikey-info.mdx: an IP-bound key never expires and reports expiredAt 1970-01-01."""
        bound = bool(self.api_ips) and "*" not in self.api_ips
        expires = 0 if bound else (self.api_expires_ms or int(time.time() * 1000) + 90 * DAY_MS)
        return shape.api_key(self.engine, self.api_key, self._permissions(), self.api_ips, self.api_read_only, expires)

    ROUTES = {
        "market/time": _market_time, "market/kline": _market_kline, "market/tickers": _market_tickers,
        "market/instruments-info": _market_instruments, "market/funding/history": _market_funding,
        "account/wallet-balance": _wallet, "account/info": _account_info, "position/list": _position_list,
        "position/set-leverage": _set_leverage, "position/switch-mode": _switch_mode,
        "position/trading-stop": _trading_stop, "order/create": _create, "order/cancel": _cancel,
        "order/cancel-all": _cancel_all, "order/realtime": _realtime, "order/history": _history,
        "execution/list": _executions, "user/query-api": _query_api,
    }

    # --- WebSockets -------------------------------------------------------------------------
    async def _ws_public(self, request: web.Request) -> web.WebSocketResponse:
        """docs: v5/websocket/wss-authentication.mdx (ping/pong, subscribe) and the public topics' pages."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.public[ws] = set()
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if data.get("op") == "ping":
                    await ws.send_json({"success": True, "ret_msg": "pong", "conn_id": "sim",
                                        "req_id": data.get("req_id", ""), "op": "ping"})
                elif data.get("op") == "subscribe":
                    topics = data.get("args", [])
                    self.public[ws].update(topics)
                    await ws.send_json({"success": True, "ret_msg": "", "conn_id": "sim",
                                        "req_id": data.get("req_id", ""), "op": "subscribe"})
                    for topic in topics:
                        if topic.startswith("tickers."):
                            await self._send_ticker(ws, topic, "snapshot")
        finally:
            self.public.pop(ws, None)
        return ws

    async def _send_ticker(self, ws: web.WebSocketResponse, topic: str, kind: str) -> None:
        """docs: v5/websocket/public/ticker.mdx: a snapshot on subscription, deltas after it."""
        self._ticker_sent.add(ws)
        await ws.send_json({"topic": topic, "type": kind, "data": shape.ticker(self.engine, TICKER_WS_DROP),
                            "cs": self.engine.now_ms(), "ts": self.engine.now_ms()})

    async def _ws_private(self, request: web.Request) -> web.WebSocketResponse:
        """docs: v5/websocket/wss-authentication.mdx: auth with HMAC of GET/realtime{expires}, then subscribe."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        authed = False
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                op = data.get("op")
                if op == "ping":
                    await ws.send_json({"req_id": data.get("req_id", ""), "op": "pong",
                                        "args": [str(int(time.time() * 1000))], "conn_id": "sim"})
                elif op == "auth":
                    key, expires, signature = (data.get("args") or [None, 0, ""])[:3]
                    expected = hmac.new(self.api_secret.encode(), f"GET/realtime{expires}".encode(),
                                        hashlib.sha256).hexdigest()
                    authed = key == self.api_key and hmac.compare_digest(expected, str(signature)) \
                        and int(expires) > time.time() * 1000
                    await ws.send_json({"success": authed, "ret_msg": "" if authed else "Params Error",
                                        "op": "auth", "conn_id": "sim"})
                    if authed:
                        self.private[ws] = set()
                elif op == "subscribe":
                    ok = authed
                    if ok:
                        self.private[ws].update(data.get("args", []))
                    await ws.send_json({"success": ok, "ret_msg": "" if ok else "Request not authorized",
                                        "op": "subscribe", "conn_id": "sim"})
        finally:
            self.private.pop(ws, None)
        return ws

    def _collect(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """The engine's events as private-stream messages; executions scheduled on both channels as Behaviour says.

        Runs before a REST answer leaves, so an execution the answer created is hidden from
        execution/list from the first request on; the messages themselves are sent after the answer.
        """
        engine = self.engine
        events, engine.events = engine.events, []
        now_rows: list[dict[str, Any]] = []
        orders: dict[str, Order] = {}
        slots: dict[int, Position] = {}
        wallet = False
        for kind, payload in events:
            if kind == "execution":
                self._deliver(payload, now_rows)
            elif kind == "order":
                orders[payload.order_id] = payload
            elif kind == "position":
                slots[payload.idx] = payload
            else:
                wallet = True
        return [("execution", now_rows), ("order", [shape.order(self.engine, o, "ws") for o in orders.values()]),
                ("position", [shape.position(self.engine, s, POSITION_WS_DROP) for s in slots.values()]),
                ("wallet", shape.wallet(self.engine)["list"] if wallet else [])]

    def _deliver(self, execution: dict[str, Any], now_rows: list[dict[str, Any]]) -> None:
        """Schedule one execution on both channels as Behaviour says."""
        b = self.behaviour
        if b.rest_fills == "lag" and b.rest_lag > 0:
            self._rest_hidden[execution["execId"]] = ["lag", b.rest_lag]
        elif b.rest_fills == "bar":
            self._rest_hidden[execution["execId"]] = ["bar", self.bars_played]
        row = shape.execution(self.engine, execution, ws=True)
        if b.ws_fills == "now":
            now_rows.append(row)
        elif b.ws_fills == "bar":
            self._ws_later.append(row)

    async def _send_all(self, messages: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """One message per topic (docs: v5/websocket/private/*.mdx: id, topic, creationTime, data)."""
        now = self.engine.now_ms()
        for topic, data in messages:
            if not data:
                continue
            message = {"id": f"sim-{topic}-{now}-{len(data)}", "topic": topic, "creationTime": now, "data": data}
            for ws, topics in list(self.private.items()):
                if topic in topics:
                    with contextlib.suppress(ConnectionResetError):
                        await ws.send_json(message)

    async def _publish_kline(self, k: int) -> None:
        """docs: v5/websocket/public/kline.mdx (the closed bar, confirm true) and the ticker delta."""
        engine = self.engine
        kline_topic = f"kline.{self.interval}.{engine.symbol}"
        bar = {"start": int(engine.ts[k]), "end": int(engine.ts[k] + engine.bar_ms - 1), "interval": self.interval,
               "open": num(engine.open_[k]), "close": num(engine.close[k]), "high": num(engine.high[k]),
               "low": num(engine.low[k]), "volume": num(engine.volume[k]),
               "turnover": num(engine.volume[k] * engine.close[k]), "confirm": True,
               "timestamp": int(engine.ts[k] + engine.bar_ms)}
        ticker_topic = f"tickers.{engine.symbol}"
        for ws, topics in list(self.public.items()):
            with contextlib.suppress(ConnectionResetError):
                if ticker_topic in topics:
                    await self._send_ticker(ws, ticker_topic, "delta" if ws in self._ticker_sent else "snapshot")
                if kline_topic in topics:
                    await ws.send_json({"topic": kline_topic, "data": [bar], "ts": bar["timestamp"],
                                        "type": "snapshot"})


def build_parser() -> argparse.ArgumentParser:
    """Every flag, explained in --help; a bad value is refused in one line with exit code 2."""
    parser = cli.Parser(prog="bybit_sim.py", description="bybit_sim: a local Bybit V5 that replays candles.")

    def number(flag: str, default: Any, text: str) -> None:
        bound = SIM_FLAG_BOUNDS[flag]
        parser.add_argument(flag, type=cli.bounded(bound), default=default,
                            help=f"{text} (accepted: {bound.describe()})")

    parser.add_argument("--replay", required=True, metavar="SOURCE",
                        help="the candles: a file (CSV or .parquet, any layout csv: reads) or a --source form: "
                             "sample, bybit, csv:PATH")
    parser.add_argument("--start", default=None, help="first day of the candles (UTC, inclusive)")
    parser.add_argument("--end", default=None, help="last day of the candles (UTC, inclusive)")
    parser.add_argument("--symbol", default="BTCUSDT", help="symbol served (default: %(default)s)")
    parser.add_argument("--timeframe", default="1h", choices=list(TIMEFRAMES), help="bar length of the replay")
    number("--tick", None, "the instrument's price tick, for a symbol without cached Bybit info or a "
                           "config.INSTRUMENTS entry")
    number("--qty-step", None, "the instrument's quantity step (also its minimum quantity); see --tick")
    number("--port", 8765, "port on 127.0.0.1, 0 for any free one (default: %(default)s)")
    number("--balance", 10_000.0, "USDT wallet balance (default: %(default)s)")
    number("--history-bars", 2000, "bars served as the past; at least one must be left to replay (default: "
                                   "%(default)s)")
    number("--speed", None, "bars per second (default: lockstep)")
    parser.add_argument("--lockstep", action="store_true", help="advance only on POST /sim/ack (the default)")
    number("--faults", 0.0, "share of REST calls that fail (default: 0)")
    number("--ws-drop-every", 0, "drop WebSockets every N bars, 0 never (default: never)")
    number("--seed", 0, "seed of the fault injection (default: %(default)s)")
    parser.add_argument("--fills", choices=list(Behaviour.PRESETS), default="ws_first",
                        help="when a fill reaches the private stream and execution/list (default: %(default)s)")
    number("--partial-rate", 0.0, "share of market orders that fill partly (default: 0)")
    number("--mark-offset", 0.0, "mark price = last x (1 + offset) (default: 0)")
    parser.add_argument("--kline-page", choices=("end", "start"), default="end",
                        help="which end of a start..end range a kline page holds (default: %(default)s)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the account's API key (default: %(default)s)")
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET, help="the account's secret (default: sim-secret)")
    return parser


def port_refused(port: int, error: OSError) -> int:
    """Say in one line why ``port`` cannot be served; the exit code of a refused flag."""
    print(f"error: --port {port} is refused: 127.0.0.1:{port} cannot be served ({error.strerror or error}); "
          "accepted: a free port, or 0 for any free one", file=sys.stderr)
    return cli.EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Serve the sim from the command line until the replay ends (or Ctrl-C); a bad flag, file or port is one
    line on stderr with exit code 2, before anything is served."""
    args = build_parser().parse_args(argv)
    try:
        if args.port:  # a port in use is refused before the candles load (and again if taken meanwhile)
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
                probe.bind(("127.0.0.1", args.port))
    except OSError as exc:
        return port_refused(args.port, exc)
    try:
        if args.lockstep and args.speed is not None:
            raise ValueError(f"--lockstep and --speed {args.speed:g} are refused together; accepted: one of them "
                             "(lockstep is the default)")
        config.check_param("symbol", args.symbol, "--symbol")
        instrument = config.instrument_for(args.symbol, args.tick, args.qty_step)
        candles = load_source(args.replay, args.symbol, args.timeframe, start=args.start, end=args.end)
        behaviour = Behaviour.delivery(args.fills, partial_rate=args.partial_rate, mark_offset=args.mark_offset,
                                       kline_page=args.kline_page)
        sim = SimExchange(candles, args.symbol, args.timeframe, args.history_bars, args.balance,
                          lockstep=args.speed is None, speed=args.speed,
                          faults=FaultConfig(rate=args.faults, ws_drop_every=args.ws_drop_every), seed=args.seed,
                          api_key=args.api_key, api_secret=args.api_secret, port=args.port, behaviour=behaviour,
                          instrument=instrument)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    try:
        sim.__enter__()
    except OSError as exc:
        return port_refused(args.port, exc)
    try:
        print(f"bybit_sim serving {args.symbol} {args.timeframe} on {sim.rest_url} "
              f"({'lockstep' if sim.lockstep else f'{args.speed} bars/s'}); Ctrl-C to stop", flush=True)
        while not sim.engine.finished:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
