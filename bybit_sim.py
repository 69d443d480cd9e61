"""bybit_sim: a local Bybit V5 (REST and WebSocket on one port) that replays candles.

The real pybit client talks to it over HTTP and WebSockets on 127.0.0.1. The first
``history_bars`` candles are the past that ``market/kline`` serves; the rest are replayed, and
resting orders are matched by sim_engine.py with the backtester's fill rules. This module is the
entry point: :class:`SimExchange` (serving, the clocks, the replay, the sim-only endpoints), the
choices and faults it is given, and the command line; sim_rest.py answers the REST endpoints and
sim_ws.py serves the WebSockets.

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
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from aiohttp import web

import cli  # first: a bad config.py ends here in one line, exit 2
import config
import core
from data_fetcher import BYBIT_INTERVALS, TIMEFRAMES, load_source, to_arrays
from sim_engine import ACCOUNT_UID, Engine, FillStyle
from sim_rest import WEEK_MS, RestApi  # noqa: F401 - WEEK_MS: the tests' window arithmetic imports it from here
from sim_ws import Streams

DEFAULT_API_KEY = "sim-key"
DEFAULT_API_SECRET = "sim-secret"
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




class SimExchange(RestApi, Streams):
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
