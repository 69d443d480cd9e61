"""The WebSocket side of bybit_sim: the public and private streams and what they publish.

One job: serve Bybit V5's WebSockets (ping/pong, auth, subscribe) and send the topics: the closed kline
and the ticker at each bar, and the private executions, orders, positions and wallet as the engine
reports them, an execution on each channel when :class:`bybit_sim.Behaviour` says. :class:`Streams` is
mixed into :class:`bybit_sim.SimExchange`, which owns the state (``engine``, ``behaviour``, the
subscriptions); each message cites the docs page it follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

import sim_shapes as shape
from sim_engine import Order, Position
from sim_shapes import POSITION_WS_DROP, TICKER_WS_DROP, num


class Streams:
    """The WebSockets of :class:`bybit_sim.SimExchange` (mixed into it: the state is its own)."""

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
