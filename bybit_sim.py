"""bybit_sim: a local Bybit V5 (REST and WebSocket on one port) that replays candles.

The real pybit client talks to it over HTTP and WebSockets on 127.0.0.1. The first
``history_bars`` candles are the past that ``market/kline`` serves; the rest are replayed, and
resting orders are matched by sim_engine.py with the backtester's fill rules.

    python bybit_sim.py --replay data.csv --symbol SOLUSDT --timeframe 1h --port 8765 --balance 10000 \\
        --history-bars 2000 --speed 20
    python bybit_sim.py --replay data.csv --symbol SOLUSDT --timeframe 1h --port 8765 --faults 0.1 \\
        --ws-drop-every 50 --seed 7

Two clocks: ``--speed N`` plays N bars a second; ``--lockstep`` advances to the next bar only after
the client acknowledges the bar close with the sim-only ``POST /sim/ack``, so replays are
deterministic and as fast as the client goes. Other sim-only endpoints (not part of Bybit's
API): ``GET /sim/status`` (cursor, finished), ``GET /sim/stats`` (orders, executions, duplicate
orderLinkIds refused, faults injected, longest time a position had no stop-loss).

Bybit's conventions kept: the envelope ``retCode, retMsg, result, retExtInfo, time``, string
numbers, klines newest first, HMAC-SHA256 signatures over timestamp + key + recv_window +
payload (checked, with 10002/10003/10004 on failure), ``req_id`` echoed on the WebSocket, pongs
in Bybit's shape, a tickers snapshot before any delta. Mark price = last price here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
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
from aiohttp import WSMsgType, web

import config
import core
from data_fetcher import BYBIT_INTERVALS, TIMEFRAMES, load_csv, resample, to_arrays
from sim_engine import Engine, ExchangeError, Order, Position

DEFAULT_API_KEY = "sim-key"
DEFAULT_API_SECRET = "sim-secret"
INTERVAL_TO_TIMEFRAME = {v: k for k, v in BYBIT_INTERVALS.items()}


@dataclass
class FaultConfig:
    """Seeded fault injection: a share of REST calls fail in the ways real exchanges fail."""

    rate: float = 0.0                 # share of REST calls that fail
    timeout_seconds: float = 3.0      # how long a "timeout" holds its answer
    ws_drop_every: int = 0            # drop WebSocket connections every N bars (0 = never)
    acted_timeout_share: float = 0.3  # share of failed order/create calls that act, then time out
    reject_stops: bool = False        # refuse trading-stop requests (a stop the exchange rejects)
    kinds: tuple[str, ...] = ("http_500", "http_502", "rate_limit", "busy", "timeout")  # the failures drawn
    max_faults: int | None = None     # stop injecting after this many (None: never stop)


def _s(value: float) -> str:
    """Bybit's string numbers (the shortest text that reads back as the same float)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


class SimExchange:
    """The simulated exchange; a context manager that serves it on a free port in a thread."""

    user_id = 100_000_001  # the account's UID, userID of GET /v5/user/query-api

    def __init__(self, candles: pd.DataFrame, symbol: str = "BTCUSDT", timeframe: str = "1h",
                 history_bars: int = 200, balance: float = 10_000.0, lockstep: bool = True,
                 speed: float | None = None, faults: FaultConfig | None = None, seed: int = 0,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET, port: int = 0,
                 costs: dict[str, float] | None = None, instrument: dict[str, float] | None = None,
                 api_permissions: dict[str, list[str]] | None = None, api_ips: list[str] | None = None,
                 api_read_only: bool = False, funding: pd.Series | None = None) -> None:
        if timeframe not in TIMEFRAMES:
            raise ValueError(f"unknown timeframe '{timeframe}'; accepted: {', '.join(TIMEFRAMES)}")
        if not 0 < history_bars < len(candles):
            raise ValueError(f"history_bars must be between 1 and {len(candles) - 1}, got {history_bars}")
        arrays = to_arrays(candles)
        history = (None, None) if funding is None or len(funding) == 0 else (
            np.asarray(funding.index, dtype=np.int64), np.asarray(funding.values, dtype=np.float64))
        # the funding events the backtest charges: the history's (funding time -> rate), else the 8h grid
        funding_ts, funding_rates = core.funding_schedule(arrays["ts"], TIMEFRAMES[timeframe], *history)
        self.engine = Engine(arrays["ts"], arrays["open"], arrays["high"], arrays["low"], arrays["close"],
                             arrays["volume"], TIMEFRAMES[timeframe], symbol, balance,
                             costs or config.costs(), instrument or config.instrument_for(symbol), history_bars,
                             funding_ts=funding_ts, funding_rates=funding_rates)
        self.timeframe = timeframe
        self.interval = BYBIT_INTERVALS[timeframe]
        self.lockstep = lockstep and not speed
        self.speed = speed
        self.faults = faults or FaultConfig()
        self.random = random.Random(seed)
        self.api_key = api_key
        self.api_secret = api_secret
        self.api_permissions = api_permissions  # what GET /v5/user/query-api reports (None: trade-only key)
        self.api_ips = api_ips if api_ips is not None else ["*"]
        self.api_read_only = api_read_only
        self.port = port
        self.fault_counts: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.public: dict[web.WebSocketResponse, set[str]] = {}
        self.private: dict[web.WebSocketResponse, set[str]] = {}
        self.acked = True
        self.bars_played = 0
        self.open_ms: int | None = None
        self.longest_unprotected_ms = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ack_event: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._ticker_sent: set[web.WebSocketResponse] = set()
        self.on_request: Callable[[str], None] | None = None  # called after each REST request is handled

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
        self._ack_event = asyncio.Event()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/v5/{path:.*}", self._rest)
        app.router.add_post("/sim/ack", self._sim_ack)
        app.router.add_get("/sim/status", self._sim_status)
        app.router.add_get("/sim/stats", self._sim_stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        started.set()
        clock = asyncio.ensure_future(self._clock()) if self.speed else None
        await self._stop.wait()
        if clock:
            clock.cancel()
        for ws in list(self.public) + list(self.private):
            await ws.close()
        await self._runner.cleanup()

    async def _clock(self) -> None:
        while not self.engine.finished:
            await asyncio.sleep(1.0 / self.speed)
            await self._advance()

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
        await self._flush_private()
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
                "bars_played": self.bars_played,
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
        return {"retCode": code, "retMsg": message, "result": result if result is not None else {},
                "retExtInfo": {}, "time": int(time.time() * 1000)}

    def _check_auth(self, request: web.Request, payload: str) -> None:
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

    async def _rest(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if path in ("public/linear", "private"):
            return await (self._ws_public(request) if path == "public/linear" else self._ws_private(request))
        raw = request.query_string if request.method == "GET" else (await request.text())
        params: dict[str, Any] = dict(request.query) if request.method == "GET" else (json.loads(raw) if raw else {})
        handler = self.ROUTES.get(path)
        self.requests[path] = self.requests.get(path, 0) + 1
        if handler is None:
            return web.json_response(self._envelope(None, 10001, f"params error: unknown path /v5/{path}"))
        fault = self._pick_fault(path)
        if fault in ("http_500", "http_502"):
            return web.Response(status=int(fault[-3:]), text="upstream error")
        if fault == "rate_limit":
            resp = web.json_response(self._envelope(None, 10006, "Too many visits!"))
            resp.headers["X-Bapi-Limit-Reset-Timestamp"] = str(int(time.time() * 1000) + 50)
            return resp
        if fault == "busy":
            return web.json_response(self._envelope(None, 10016, "Server error."))
        try:
            if not path.startswith("market/"):
                self._check_auth(request, raw)
            result = handler(self, params)
            body = self._envelope(result)
        except ExchangeError as exc:
            body = self._envelope(None, exc.code, exc.message)
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
        """The replay's clock: the forming bar's open (signatures still use the wall clock)."""
        now_ms = self.engine.now_ms()
        return {"timeSecond": str(now_ms // 1000), "timeNano": str(now_ms * 1_000_000)}

    def _check_symbol(self, params: dict[str, Any]) -> None:
        if params.get("category", "linear") != "linear":
            raise ExchangeError(10001, "params error: category only support linear")
        if params.get("symbol") != self.engine.symbol:
            raise ExchangeError(10001, "params error: Symbol Invalid")

    def _market_kline(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        interval = params.get("interval")
        if interval not in INTERVAL_TO_TIMEFRAME:
            raise ExchangeError(10001, f"params error: Invalid period; accepted: {', '.join(BYBIT_INTERVALS.values())}")
        limit = min(int(params.get("limit", 200)), 1000)
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
        rows = frame[mask].iloc[::-1].iloc[:limit]
        values = rows.to_numpy()
        stamps = rows.index.as_unit("ms").asi8
        out = [[str(t), *(_s(v) for v in row), _s(row[3] * row[4])] for t, row in zip(stamps, values, strict=True)]
        return {"category": "linear", "symbol": engine.symbol, "list": out}

    def _market_tickers(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        return {"category": "linear", "list": [self._ticker()]}

    def _ticker(self) -> dict[str, Any]:
        price = self.engine.last_price()
        return {"symbol": self.engine.symbol, "lastPrice": _s(price), "markPrice": _s(price), "indexPrice": _s(price),
                "fundingRate": _s(self.engine.costs["funding_rate"]), "bid1Price": _s(price), "ask1Price": _s(price)}

    def _market_instruments(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        inst = self.engine.instrument
        return {"category": "linear", "list": [{
            "symbol": self.engine.symbol, "status": "Trading", "contractType": "LinearPerpetual",
            "lotSizeFilter": {"qtyStep": _s(inst["qty_step"]), "minOrderQty": _s(inst["min_qty"]),
                              "maxOrderQty": "1000000", "minNotionalValue": _s(inst["min_notional"])},
            "priceFilter": {"tickSize": _s(inst["tick_size"]), "minPrice": _s(inst["tick_size"]),
                            "maxPrice": "10000000"},
            "leverageFilter": {"minLeverage": "1", "maxLeverage": _s(inst["max_leverage"]), "leverageStep": "0.01"},
            "fundingInterval": 480}]}

    def _market_funding(self, params: dict[str, Any]) -> dict[str, Any]:
        # docs: v5/market/history-fund-rate.mdx (newest first, at most 200 rows)
        self._check_symbol(params)
        engine = self.engine
        events = [k for k, t in enumerate(engine.funding_ts) if t <= engine.now_ms()]
        if "startTime" in params:
            events = [k for k in events if engine.funding_ts[k] >= int(params["startTime"])]
        if "endTime" in params:
            events = [k for k in events if engine.funding_ts[k] <= int(params["endTime"])]
        limit = min(int(params.get("limit", 200)), 200)
        rows = [{"symbol": engine.symbol, "fundingRate": _s(engine.funding_rate(k)),
                 "fundingRateTimestamp": str(int(engine.funding_ts[k]))} for k in reversed(events)][:limit]
        return {"category": "linear", "list": rows}

    # account and position
    def _wallet(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        engine = self.engine
        equity = engine.equity()
        coin = {"coin": "USDT", "walletBalance": _s(engine.balance), "equity": _s(equity),
                "unrealisedPnl": _s(engine.unrealised()), "totalPositionIM": _s(engine.used_margin()),
                "availableToWithdraw": _s(max(0.0, equity - engine.used_margin()))}
        return {"list": [{"accountType": "UNIFIED", "totalEquity": _s(equity), "totalWalletBalance": _s(engine.balance),
                          "totalAvailableBalance": _s(max(0.0, equity - engine.used_margin())), "coin": [coin]}]}

    def _position_json(self, slot: Position) -> dict[str, Any]:
        engine = self.engine
        price = engine.last_price()
        upnl = (price - slot.avg_price) * slot.size * slot.direction
        return {"symbol": engine.symbol, "positionIdx": slot.idx, "side": slot.side or "", "size": _s(slot.size),
                "avgPrice": _s(slot.avg_price), "markPrice": _s(price), "unrealisedPnl": _s(upnl),
                "leverage": _s(engine.leverage), "stopLoss": _s(slot.stop_loss), "takeProfit": _s(slot.take_profit),
                "trailingStop": _s(slot.trailing_stop), "tpslMode": "Full", "cumRealisedPnl": _s(slot.realised),
                "createdTime": str(slot.created_ms), "updatedTime": str(slot.updated_ms), "positionStatus": "Normal"}

    def _position_list(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        return {"category": "linear", "list": [self._position_json(s) for s in self.engine.position_slots()]}

    def _set_leverage(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        try:
            buy, sell = float(params["buyLeverage"]), float(params["sellLeverage"])
        except (KeyError, ValueError):
            raise ExchangeError(10001, "params error: buyLeverage and sellLeverage are required numbers") from None
        if buy != sell or not 1 <= buy <= self.engine.instrument["max_leverage"]:
            raise ExchangeError(10001, f"params error: leverage must be equal on both sides and within [1, "
                                       f"{self.engine.instrument['max_leverage']:g}]")
        if buy == self.engine.leverage:
            raise ExchangeError(110043, "Set leverage not modified")
        self.engine.leverage = buy
        return {}

    def _switch_mode(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = int(params.get("mode", -1))
        if mode not in (0, 3):
            raise ExchangeError(10001, "params error: mode must be 0 (one-way) or 3 (hedge)")
        if any(s.size for s in self.engine.positions.values()) or self.engine.open_orders():
            raise ExchangeError(110025, "Position mode is not modified: open positions or orders exist")
        if self.engine.hedge == (mode == 3):
            raise ExchangeError(110025, "Position mode is not modified")
        self.engine.hedge = mode == 3
        return {}

    def _trading_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        if self.faults.reject_stops:
            self._count("stop_rejected")
            raise ExchangeError(10001, "params error: the sim rejects this stop (fault injection)")

        def number(key: str) -> float | None:
            return float(params[key]) if key in params and params[key] != "" else None

        self.engine.set_trading_stop(int(params.get("positionIdx", 0)), number("stopLoss"), number("takeProfit"),
                                     number("trailingStop"))
        self._schedule_private()
        return {}

    # orders
    def _order_json(self, order: Order) -> dict[str, Any]:
        return {"orderId": order.order_id, "orderLinkId": order.link_id, "symbol": self.engine.symbol,
                "side": order.side, "orderType": order.order_type, "price": _s(order.price), "qty": _s(order.qty),
                "reduceOnly": order.reduce_only, "positionIdx": order.position_idx, "orderStatus": order.status,
                "cumExecQty": _s(order.filled), "avgPrice": _s(order.avg_price),
                "triggerPrice": _s(order.trigger_price),
                "triggerDirection": order.trigger_direction, "stopLoss": _s(order.stop_loss),
                "takeProfit": _s(order.take_profit), "stopOrderType": order.stop_order_type,
                "createdTime": str(order.created_ms), "updatedTime": str(order.updated_ms),
                "rejectReason": order.reject_reason}

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        order = self.engine.create_order(params)
        self._schedule_private()
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_symbol(params)
        order = self.engine.cancel_order(params.get("orderId"), params.get("orderLinkId"))
        self._schedule_private()
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _cancel_all(self, params: dict[str, Any]) -> dict[str, Any]:
        cancelled = self.engine.cancel_all()
        self._schedule_private()
        return {"list": [{"orderId": o.order_id, "orderLinkId": o.link_id} for o in cancelled], "success": "1"}

    def _select_orders(self, params: dict[str, Any], live: bool) -> dict[str, Any]:
        orders = self.engine.open_orders() if live else list(self.engine.orders.values())
        if params.get("orderLinkId"):
            orders = [o for o in orders if o.link_id == params["orderLinkId"]]
        if params.get("orderId"):
            orders = [o for o in orders if o.order_id == params["orderId"]]
        limit = min(int(params.get("limit", 50)), 50)
        return {"category": "linear", "list": [self._order_json(o) for o in reversed(orders)][:limit],
                "nextPageCursor": ""}

    def _executions(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = self.engine.executions
        if params.get("orderLinkId"):
            rows = [e for e in rows if e["orderLinkId"] == params["orderLinkId"]]
        if params.get("execType"):
            rows = [e for e in rows if e["execType"] == params["execType"]]
        if params.get("startTime"):
            rows = [e for e in rows if e["execTime"] >= int(params["startTime"])]
        limit = min(int(params.get("limit", 50)), 100)
        out = [{**{k: (_s(v) if isinstance(v, float) else v) for k, v in e.items()}, "symbol": self.engine.symbol,
                "execTime": str(e["execTime"])} for e in reversed(rows)][:limit]
        return {"category": "linear", "list": out, "nextPageCursor": ""}

    def _query_api(self, params: dict[str, Any]) -> dict[str, Any]:
        """The key's permissions, IP binding and read-only flag, as configured in the constructor."""
        permissions = self.api_permissions
        if permissions is None:
            permissions = {"ContractTrade": ["Order", "Position"], "Wallet": [], "Spot": [], "Options": [],
                           "Derivatives": [], "Exchange": [], "NFT": []}
        return {"apiKey": self.api_key, "readOnly": int(self.api_read_only), "ips": list(self.api_ips),
                "permissions": permissions, "userID": self.user_id}  # docs: v5/user/apikey-info.mdx (integer)

    ROUTES = {
        "market/time": _market_time, "market/kline": _market_kline, "market/tickers": _market_tickers,
        "market/instruments-info": _market_instruments, "market/funding/history": _market_funding,
        "account/wallet-balance": _wallet, "position/list": _position_list, "position/set-leverage": _set_leverage,
        "position/switch-mode": _switch_mode, "position/trading-stop": _trading_stop, "order/create": _create,
        "order/cancel": _cancel, "order/cancel-all": _cancel_all,
        "order/realtime": lambda self, p: self._select_orders(p, True),
        "order/history": lambda self, p: self._select_orders(p, False),
        "execution/list": _executions, "user/query-api": _query_api,
    }

    # --- WebSockets -------------------------------------------------------------------------
    async def _ws_public(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.public[ws] = set()
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if data.get("op") == "ping":
                    await ws.send_json({"success": True, "ret_msg": "pong", "conn_id": "sim", "op": "ping",
                                        "req_id": data.get("req_id", "")})
                elif data.get("op") == "subscribe":
                    topics = data.get("args", [])
                    self.public[ws].update(topics)
                    await ws.send_json({"success": True, "ret_msg": "", "conn_id": "sim", "op": "subscribe",
                                        "req_id": data.get("req_id", "")})
                    for topic in topics:
                        if topic.startswith("tickers."):
                            await ws.send_json({"topic": topic, "type": "snapshot", "data": self._ticker(),
                                                "ts": self.engine.now_ms()})
                            self._ticker_sent.add(ws)
        finally:
            self.public.pop(ws, None)
        return ws

    async def _ws_private(self, request: web.Request) -> web.WebSocketResponse:
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
                                        "op": "auth", "conn_id": "sim", "req_id": data.get("req_id", "")})
                    if authed:
                        self.private[ws] = set()
                elif op == "subscribe":
                    ok = authed
                    if ok:
                        self.private[ws].update(data.get("args", []))
                    await ws.send_json({"success": ok, "ret_msg": "" if ok else "Request not authorized",
                                        "conn_id": "sim", "op": "subscribe", "req_id": data.get("req_id", "")})
        finally:
            self.private.pop(ws, None)
        return ws

    def _schedule_private(self) -> None:
        asyncio.ensure_future(self._flush_private())

    async def _flush_private(self) -> None:
        engine = self.engine
        events, engine.events = engine.events, []
        grouped: dict[str, list[Any]] = {"execution": [], "order": [], "position": [], "wallet": []}
        for kind, payload in events:
            if kind == "execution":
                grouped[kind].append({**{k: (_s(v) if isinstance(v, float) else v) for k, v in payload.items()},
                                      "symbol": engine.symbol, "category": "linear",
                                      "execTime": str(payload["execTime"])})
            elif kind == "order":
                grouped[kind].append(self._order_json(payload))
            elif kind == "position":
                grouped[kind].append({**self._position_json(payload), "category": "linear"})
        if any(kind == "wallet" for kind, _ in events):
            grouped["wallet"] = self._wallet()["list"]
        for topic in ("execution", "order", "position", "wallet"):
            if not grouped[topic]:
                continue
            message = {"id": f"sim-{topic}-{engine.now_ms()}", "topic": topic, "creationTime": engine.now_ms(),
                       "data": grouped[topic]}
            for ws, topics in list(self.private.items()):
                if topic in topics:
                    with contextlib.suppress(ConnectionResetError):
                        await ws.send_json(message)

    async def _publish_kline(self, k: int) -> None:
        engine = self.engine
        kline_topic = f"kline.{self.interval}.{engine.symbol}"
        bar = {"start": int(engine.ts[k]), "end": int(engine.ts[k] + engine.bar_ms - 1), "interval": self.interval,
               "open": _s(engine.open_[k]), "high": _s(engine.high[k]), "low": _s(engine.low[k]),
               "close": _s(engine.close[k]), "volume": _s(engine.volume[k]),
               "turnover": _s(engine.volume[k] * engine.close[k]), "confirm": True,
               "timestamp": int(engine.ts[k] + engine.bar_ms)}
        ticker_topic = f"tickers.{engine.symbol}"
        trade_topic = f"publicTrade.{engine.symbol}"
        for ws, topics in list(self.public.items()):
            with contextlib.suppress(ConnectionResetError):
                if ticker_topic in topics:
                    kind = "delta" if ws in self._ticker_sent else "snapshot"
                    self._ticker_sent.add(ws)
                    await ws.send_json({"topic": ticker_topic, "type": kind, "data": self._ticker(),
                                        "ts": engine.now_ms()})
                if trade_topic in topics:
                    await ws.send_json({"topic": trade_topic, "type": "snapshot", "ts": engine.now_ms(),
                                        "data": [{"T": engine.now_ms(), "s": engine.symbol, "S": "Buy",
                                                  "v": "0", "p": _s(engine.last_price())}]})
                if kline_topic in topics:
                    await ws.send_json({"topic": kline_topic, "type": "snapshot", "data": [bar],
                                        "ts": bar["timestamp"]})


def main(argv: list[str] | None = None) -> int:
    """Serve the sim from the command line until the replay ends (or Ctrl-C)."""
    parser = argparse.ArgumentParser(description="bybit_sim: a local Bybit V5 that replays candles.")
    parser.add_argument("--replay", required=True, help="candle file (any layout data_fetcher reads)")
    parser.add_argument("--symbol", default="BTCUSDT", help="symbol served (default: %(default)s)")
    parser.add_argument("--timeframe", default="1h", choices=list(TIMEFRAMES), help="bar length of the replay")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--balance", type=float, default=10_000.0, help="USDT wallet balance (default: %(default)s)")
    parser.add_argument("--history-bars", type=int, default=2000, help="bars served as the past (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=None, help="bars per second (default: lockstep)")
    parser.add_argument("--lockstep", action="store_true", help="advance only on POST /sim/ack (the default)")
    parser.add_argument("--faults", type=float, default=0.0, help="share of REST calls that fail (default: 0)")
    parser.add_argument("--ws-drop-every", type=int, default=0, help="drop WebSockets every N bars (default: never)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection (default: %(default)s)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the account's API key (default: %(default)s)")
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET, help="the account's secret (default: sim-secret)")
    args = parser.parse_args(argv)
    try:
        candles = resample(load_csv(args.replay), args.timeframe)
        sim = SimExchange(candles, args.symbol, args.timeframe, args.history_bars, args.balance,
                          lockstep=args.speed is None, speed=args.speed,
                          faults=FaultConfig(rate=args.faults, ws_drop_every=args.ws_drop_every), seed=args.seed,
                          api_key=args.api_key, api_secret=args.api_secret, port=args.port)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with sim:
        print(f"bybit_sim serving {args.symbol} {args.timeframe} on {sim.rest_url} "
              f"({'lockstep' if sim.lockstep else f'{args.speed} bars/s'}); Ctrl-C to stop", flush=True)
        try:
            while not sim.engine.finished:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
