"""The REST side of bybit_sim: every ``/v5/...`` endpoint the simulator answers, as Bybit's V5 docs say.

One job: turn an HTTP request into Bybit's answer (authentication, permissions, injected faults, paging,
time windows, the documented error codes) from the state of the account that :class:`bybit_sim.SimExchange`
holds and sim_engine.py matches; sim_shapes.py builds the records. :class:`RestApi` is mixed into
SimExchange, which owns that state (``engine``, ``behaviour``, ``faults``, the API key's settings and the
counters); each handler cites the docs page it answers for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from typing import Any

import numpy as np
import pandas as pd
from aiohttp import web

from data_fetcher import BYBIT_INTERVALS, TIMEFRAMES, resample
import sim_shapes as shape
from sim_engine import ExchangeError, Order
from sim_shapes import PERMISSION_GROUPS, POSITION_REST_DROP, TICKER_REST_DROP, TRADE_ONLY, num

INTERVAL_TO_TIMEFRAME = {v: k for k, v in BYBIT_INTERVALS.items()}
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


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


class RestApi:
    """The ``/v5/...`` endpoints of :class:`bybit_sim.SimExchange` (mixed into it: the state is its own)."""

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
