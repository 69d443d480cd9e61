"""``python run_live.py --check``: a preflight against the real exchange that places no order.

It asks Bybit what the simulator cannot settle and prints one row per check: the key's
permissions, its IP binding and expiry, the clock's skew, the wallet's equity against the margin an
entry at the configured risk needs, the instrument, the position mode and leverage, the account's
margin mode (isolated, as the backtest's liquidation assumes, or a warning), which end of a
range a kline page holds, what execution/list answers for the first 7-day window, and both
WebSocket streams. A row that fails names the problem; any failed row makes the exit code 1.
Run it first on testnet, and paste its output into any bug report (it holds no secret).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

import backtester
import core
import trader_capital
from data_fetcher import BYBIT_INTERVALS, OHLCV, TIMEFRAMES
from exchange import WEEK_MS, Bybit
from trader_utils import RetryPolicy, key_expiry, redact

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
STREAM_WAIT_SECONDS = 10.0
KLINE_PROBE_BARS = 300  # the range of the kline probe; its page holds only 10 of them
RECV_WINDOW_MS = 5000  # pybit's default, trader_utils.make_http's


@dataclass
class Row:
    """One line of the table."""

    check: str
    result: str
    detail: str


@dataclass
class Plan:
    """What the trader would run: symbol, timeframe, sides (name -> params), the --max-capital cap."""

    symbol: str
    timeframe: str
    sides: dict[str, dict[str, Any]]
    max_capital: float | None = None


class Preflight:
    """The checks, over an adapter and a WebSocket factory (pybit's, or the tests' pointed at bybit_sim)."""

    def __init__(self, exchange: Bybit, plan: Plan, ws_factory: Callable[[str], Any]) -> None:
        self.exchange = exchange
        self.plan = plan
        self.ws_factory = ws_factory
        self.instrument: dict[str, float] | None = None

    def run(self) -> list[Row]:
        """Every check, in order; a check that raises becomes a failed row with the error's one line."""
        rows = []
        for name, check in (("API key permissions", self.permissions), ("IP binding and expiry", self.expiry),
                            ("clock skew", self.clock), ("instrument", self.instrument_row),
                            ("wallet and entry margin", self.margin), ("position mode and leverage", self.mode),
                            ("margin mode", self.margin_mode),
                            ("kline page", self.kline_page), ("execution/list first window", self.executions),
                            ("public stream", self.public_stream), ("private stream", self.private_stream)):
            try:
                result, detail = check()
            except Exception as exc:  # every failure becomes a row: the user sees all of them at once
                result, detail = FAIL, f"{type(exc).__name__}: {exc}"
            rows.append(Row(name, result, redact(" ".join(str(detail).split()))))
        return rows

    # --- the key ----------------------------------------------------------------------------
    def permissions(self) -> tuple[str, str]:
        """Withdraw refused; read-write; ContractTrade Order and Position present (docs: v5/user/apikey-info.mdx)."""
        info = self.exchange.api_key_info()
        permissions = info.get("permissions") or {}
        withdraw = sorted(f"{g}.{n}" for g, names in permissions.items() for n in names or ()
                          if "withdraw" in str(n).lower())
        if withdraw:
            return FAIL, f"the key can withdraw ({', '.join(withdraw)}): create one without Withdraw"
        if int(info.get("readOnly") or 0) == 1:
            return FAIL, "the key is read-only: the trader could not place orders"
        contract = permissions.get("ContractTrade") or []
        missing = [n for n in ("Order", "Position") if n not in contract]
        if missing:
            return FAIL, f"the key lacks ContractTrade {' and '.join(missing)} (has: {', '.join(contract) or 'none'})"
        return PASS, f"ContractTrade {', '.join(contract)}; no withdrawal; read-write"

    def expiry(self) -> tuple[str, str]:
        """An IP-bound key never expires: its expiredAt is 1970-01-01 (docs: v5/user/apikey-info.mdx)."""
        info = self.exchange.api_key_info()
        ips = [ip for ip in info.get("ips") or () if ip and ip.strip()]
        bound = bool(ips) and "*" not in ips
        expires = key_expiry(str(info.get("expiredAt") or ""))
        where = f"bound to {', '.join(ips)}" if bound else "not bound to an IP (bind it: an unbound key expires)"
        if expires is None:
            note = "no expiry (expiredAt 1970-01-01)" if info.get("expiredAt") else "no expiry reported"
            return (PASS if bound else WARN), f"{where}; {note}"
        days = (expires - pd.Timestamp.now(tz="UTC")).total_seconds() / 86400
        if days <= 0:
            return FAIL, f"{where}; expired at {info['expiredAt']}"
        return (WARN if days < 7 or not bound else PASS), f"{where}; expires {info['expiredAt']} ({days:.0f} days)"

    def clock(self) -> tuple[str, str]:
        """A signed request needs server - recv_window <= timestamp < server + 1000 (docs: v5/guide.mdx)."""
        _, skew = self.exchange.server_time_and_skew_ms()
        text = f"this machine is {abs(skew):.0f} ms {'ahead of' if skew > 0 else 'behind'} Bybit"
        if skew >= 1000 or skew <= -RECV_WINDOW_MS:
            return FAIL, f"{text}: signed requests will be refused (10002); sync the clock (NTP)"
        return (WARN if skew > 500 or skew < -RECV_WINDOW_MS / 2 else PASS), text

    # --- the market -------------------------------------------------------------------------
    def instrument_row(self) -> tuple[str, str]:
        """Status, steps and minimums (docs: v5/market/instrument.mdx)."""
        info = self.exchange.instrument()
        self.instrument = info.spec()
        detail = (f"{info.symbol} {info.status}: qtyStep {info.qty_step:g}, tickSize {info.tick_size:g}, minOrderQty "
                  f"{info.min_qty:g}, minNotionalValue {info.min_notional:g}, maxLeverage {info.max_leverage:g}")
        too_high = [s for s, p in self.plan.sides.items() if float(p["leverage"]) > info.max_leverage]
        if info.status != "Trading":
            return FAIL, f"{detail}: not trading"
        if too_high:
            return FAIL, f"{detail}: the configured leverage of {', '.join(too_high)} exceeds it"
        return PASS, detail

    def _candles(self, bars: int) -> pd.DataFrame:
        step = TIMEFRAMES[self.plan.timeframe]
        now = self.exchange.server_time_ms() // step * step
        rows = self.exchange.klines(BYBIT_INTERVALS[self.plan.timeframe], now - bars * step, now - 1, 1000)
        rows = sorted(rows, key=lambda r: int(r[0]))
        index = pd.DatetimeIndex(pd.to_datetime([int(r[0]) for r in rows], unit="ms", utc=True), name="time")
        return pd.DataFrame({k: [float(r[j + 1]) for r in rows] for j, k in enumerate(OHLCV)}, index=index)

    def margin(self) -> tuple[str, str]:
        """The margin an entry at the configured risk needs (core.decide_entry's sizing on each side's share of the
        capital the trader would trade: trader_capital.py)."""
        wallet = self.exchange.wallet()
        if wallet.equity <= 0:
            return FAIL, "the UNIFIED account holds no USDT"
        capital = trader_capital.strategy_capital(wallet, self.plan.max_capital)
        states = dict(zip(self.plan.sides, trader_capital.new_states(capital, len(self.plan.sides)), strict=True))
        instrument = self.instrument or self.exchange.instrument().spec()
        candles = self._candles(500)
        data = backtester.MarketData(candles, self.plan.symbol, self.plan.timeframe)
        needs = []
        total = 0.0
        for name, params in self.plan.sides.items():
            p = backtester.build_core_params(params, TIMEFRAMES[self.plan.timeframe], self.plan.symbol,
                                             instrument=instrument)
            state = states[name]
            atr = data.indicator("atr", params["atr_period"])
            i = len(data) - 1
            core.decide_entry(state, p, i, data.high[i], data.low[i], data.close[i], atr[i],
                              1 if name == "long" else -1, data.high[i - 1], data.low[i - 1])
            qty = state[core.S_ORDER_QTY] if state[core.S_ORDER_ACTION] == core.A_OPEN else 0.0
            if qty <= 0:
                return FAIL, (f"capital {capital:.2f} USDT: a {name} entry at risk {params['risk_per_trade']:g} "
                              f"rounds below the minimum quantity or notional")
            need = core.required_margin(qty, data.close[i], p[core.P_LEVERAGE], p[core.P_TAKER])
            total += need
            needs.append(f"{name} {qty:g} needs {need:.2f}")
        capped = f" (capped by --max-capital {self.plan.max_capital:g})" if capital < wallet.realised else ""
        detail = (f"equity {wallet.equity:.2f} USDT, capital {capital:.2f}{capped}, available "
                  f"{wallet.available:.2f}; {'; '.join(needs)} USDT")
        return (FAIL, f"{detail}: more than is available") if total > wallet.available else (PASS, detail)

    def mode(self) -> tuple[str, str]:
        """One-way or hedge (positionIdx 0 or 1/2, docs: v5/enum.mdx) and the leverage, against what the trader runs."""
        positions = self.exchange.positions()
        hedge = any(p.idx in (1, 2) for p in positions)
        needed = len(self.plan.sides) > 1
        leverage = float(next(iter(self.plan.sides.values()))["leverage"])
        current = sorted({p.leverage for p in positions})
        detail = (f"{'hedge' if hedge else 'one-way'} mode, leverage {', '.join(f'{x:g}' for x in current)} "
                  f"(the trader runs {'hedge' if needed else 'one-way'}, leverage {leverage:g})")
        if hedge != needed:
            busy = [p for p in positions if p.size > 0] or self.exchange.open_orders()
            if busy:
                return FAIL, f"{detail}: the mode cannot be switched while positions or orders are open"
            return PASS, f"{detail}: switched at start"
        return PASS, detail + ("" if current == [leverage] else ": set at start")

    def margin_mode(self) -> tuple[str, str]:
        """Isolated margin, as the backtest's liquidation assumes (docs: v5/account/account-info.mdx, read only)."""
        mode = self.exchange.margin_mode()
        if mode == "ISOLATED_MARGIN":
            return PASS, "ISOLATED_MARGIN: each position risks its own margin, as the backtest's liquidation assumes"
        kind = {"REGULAR_MARGIN": "cross margin", "PORTFOLIO_MARGIN": "portfolio margin"}.get(mode)
        if kind is None:
            return WARN, f"marginMode {mode!r}: not one the docs list (ISOLATED_MARGIN, REGULAR_MARGIN, " \
                         "PORTFOLIO_MARGIN)"
        return WARN, (f"{mode} ({kind}): the whole wallet backs each position, so it is liquidated later than the "
                      "backtest's isolated-margin price and can lose more than its margin (the stop still protects "
                      "it); switch the account to ISOLATED_MARGIN to trade as backtested")

    def kline_page(self) -> tuple[str, str]:
        """Which bars of a start..end range longer than ``limit`` a page holds (the docs do not say)."""
        step = TIMEFRAMES[self.plan.timeframe]
        now = self.exchange.server_time_ms() // step * step
        start, end = now - KLINE_PROBE_BARS * step, now - step
        rows = self.exchange.klines(BYBIT_INTERVALS[self.plan.timeframe], start, end, 10)
        times = [int(r[0]) for r in rows]
        if not times:
            return FAIL, "no kline in the probe range"
        if times != sorted(times, reverse=True):
            return FAIL, "the page is not newest first (docs: v5/market/kline.mdx)"
        if times[0] >= end - step:
            return PASS, "a page holds the newest bars of the range (from end backwards)"
        if times[-1] == start:
            return FAIL, ("a page holds the oldest bars of the range (from start forwards), not the newest as "
                          "assumed; downloads stay complete (windows of at most 1,000 bars): report this")
        return FAIL, f"a page of 10 holds {times[-1]}..{times[0]}: neither end of {start}..{end}"

    def executions(self) -> tuple[str, str]:
        """The last 7 days of execution/list, every page (docs: v5/order/execution.mdx)."""
        now = self.exchange.server_time_ms()
        rows = self.exchange.execution_rows(now - WEEK_MS, now)
        times = [int(r["execTime"]) for r in rows]
        if times != sorted(times, reverse=True):
            return FAIL, "the rows are not newest first"
        carried = " (rows carry a positionIdx, which the docs do not list)" if any("positionIdx" in r for r in rows) \
            else ""
        newest = f", newest {pd.Timestamp(times[0], unit='ms', tz='UTC'):%Y-%m-%d %H:%M}" if times else ""
        return PASS, f"{len(rows)} executions in the last 7 days{newest}{carried}"

    # --- the streams ------------------------------------------------------------------------
    def _stream(self, kind: str, subscribe: Callable[[Any, Callable[[dict], None]], None],
                ready: Callable[[Any, threading.Event], bool]) -> tuple[str, str]:
        got = threading.Event()
        started = time.monotonic()
        ws = self.ws_factory(kind)
        try:
            subscribe(ws, lambda message: got.set())
            while not ready(ws, got):
                if time.monotonic() - started > STREAM_WAIT_SECONDS:
                    return FAIL, f"no answer within {STREAM_WAIT_SECONDS:g} s"
                time.sleep(0.01)
            return PASS, f"ready in {(time.monotonic() - started) * 1000:.0f} ms"
        finally:
            ws.exit()

    def public_stream(self) -> tuple[str, str]:
        """The public linear stream: a tickers snapshot arrives (docs: v5/websocket/public/ticker.mdx)."""
        status, detail = self._stream("linear", lambda ws, cb: ws.ticker_stream(symbol=self.plan.symbol, callback=cb),
                                      lambda ws, got: got.is_set())
        return status, f"tickers.{self.plan.symbol}: {detail}"

    def private_stream(self) -> tuple[str, str]:
        """The private stream: authenticated and subscribed to execution (docs: v5/websocket/wss-authentication.mdx)."""
        status, detail = self._stream("private", lambda ws, cb: ws.execution_stream(callback=cb),
                                      lambda ws, got: bool(getattr(ws, "auth", False)))
        return status, f"authenticated, execution: {detail}" if status == PASS else f"authentication: {detail}"


def render(rows: list[Row], heading: str) -> str:
    """The table as text, with a summary line."""
    width = max(len(r.check) for r in rows)
    lines = [heading, f"{'check':<{width}}  result  detail"]
    lines += [f"{r.check:<{width}}  {r.result:<6}  {r.detail}" for r in rows]
    failed = [r.check for r in rows if r.result == FAIL]
    lines.append(f"{len(rows) - len(failed)} of {len(rows)} checks passed" +
                 (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def check(exchange: Bybit, plan: Plan, ws_factory: Callable[[str], Any], heading: str) -> tuple[str, bool]:
    """Run every check; the rendered table and whether all passed (warnings pass)."""
    rows = Preflight(exchange, plan, ws_factory).run()
    return render(rows, heading), all(r.result != FAIL for r in rows)


def quick_retry() -> RetryPolicy:
    """Few, short retries: a preflight reports a dead endpoint instead of waiting for it."""
    return RetryPolicy(attempts=3, base_seconds=0.2, max_seconds=1.0, ip_ban_seconds=0.0)  # 403: no retry
