"""The live trader's streams: Bybit's public WebSocket for one symbol, watched for staleness, and
the private one announcing fills.

Confirmed klines land in a queue; the last and mark prices are kept with the (monotonic) time
they arrived, and a price older than the caller's limit is never handed out. pybit reconnects
by itself only after socket errors; a socket the server closed, or one that silently stops
delivering, is caught here: no message for ``stale_seconds`` (or pybit reporting the socket
down) makes :meth:`MarketFeed.check` reconnect with backoff and resubscribe, and tells the caller
to poll REST meanwhile (missed bar closes are caught up from there).
"""

from __future__ import annotations

import abc
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from data_fetcher import BYBIT_INTERVALS
from trader_utils import make_ws

logger = logging.getLogger("grtr.feed")
MAX_BACKOFF_SECONDS = 60.0


class _Stream(abc.ABC):
    """A pybit WebSocket that a subclass subscribes in ``_connect``, reconnected with capped backoff."""

    def __init__(self, clock: Callable[[], float], ws_factory: Callable[..., Any]) -> None:
        self.clock = clock
        self.ws_factory = ws_factory
        self.reconnects = 0
        self.failures = 0
        self.next_attempt_at = -math.inf
        self.ws: Any = None

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open ``self.ws`` and subscribe it (each stream its own topics)."""

    def _reconnect(self, name: str, why: str, backoff_unit: float) -> bool:
        """A new socket, subscribed again, unless the backoff says wait; True when it was replaced.

        After a failure the next attempt waits 2, 4, 8... ``backoff_unit`` seconds, at most MAX_BACKOFF_SECONDS.
        """
        now = self.clock()
        if now < self.next_attempt_at:
            return False
        logger.warning("%s WebSocket %s; reconnecting", name, why)
        replaced = False
        try:
            self.ws.exit()
            self._connect()
            self.reconnects += 1
            self.failures = 0
            replaced = True
        except Exception as exc:  # any failure to connect is retried after the backoff
            self.failures += 1
            logger.error("%s WebSocket reconnect failed (%s: %s)", name, type(exc).__name__, exc)
        self.next_attempt_at = now + min(MAX_BACKOFF_SECONDS, backoff_unit * 2 ** self.failures)
        return replaced

    def close(self) -> None:
        """Close the socket."""
        self.ws.exit()


class MarketFeed(_Stream):
    """Klines and tickers of ``symbol`` from the public WebSocket, with staleness detection."""

    def __init__(self, symbol: str, timeframe: str, stale_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, ws_factory: Callable[..., Any] = make_ws) -> None:
        super().__init__(clock, ws_factory)
        self.symbol = symbol
        self.interval = BYBIT_INTERVALS[timeframe]
        self.stale_seconds = stale_seconds
        self.bars: queue.Queue = queue.Queue()
        self.last_price = math.nan
        self.mark_price = math.nan
        self.last_price_at = -math.inf
        self.mark_price_at = -math.inf
        self.last_message_at = clock()
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        ws = self.ws_factory("linear")
        ws.kline_stream(interval=self.interval, symbol=self.symbol, callback=self._on_kline)
        ws.ticker_stream(symbol=self.symbol, callback=self._on_ticker)
        self.ws = ws
        self.last_message_at = self.clock()

    def _on_kline(self, message: dict[str, Any]) -> None:
        self.last_message_at = self.clock()
        for bar in message.get("data", []):
            if bar.get("confirm"):
                self.bars.put(bar)

    def _on_ticker(self, message: dict[str, Any]) -> None:
        now = self.clock()
        self.last_message_at = now
        data = message.get("data") or {}
        with self._lock:  # a delta carries only the fields that changed
            if data.get("lastPrice"):
                self.last_price, self.last_price_at = float(data["lastPrice"]), now
            if data.get("markPrice"):
                self.mark_price, self.mark_price_at = float(data["markPrice"]), now

    def price(self, max_age_seconds: float, mark: bool = False) -> float | None:
        """The last (or mark) price if it arrived within ``max_age_seconds``, else None: never a stale one."""
        with self._lock:
            value, at = (self.mark_price, self.mark_price_at) if mark else (self.last_price, self.last_price_at)
        return value if self.clock() - at <= max_age_seconds else None

    def stale(self) -> bool:
        """True when the socket is down or silent for longer than ``stale_seconds``."""
        return not self.ws.is_connected() or self.clock() - self.last_message_at > self.stale_seconds

    def check(self) -> bool:
        """Reconnect a stale feed (with backoff); True when it was stale, so the caller polls REST."""
        if not self.stale():
            self.failures = 0
            return False
        self._reconnect("market", f"stale ({self.clock() - self.last_message_at:.1f} s without a message, "
                                  f"connected: {self.ws.is_connected()})", self.stale_seconds)
        return True


class FillFeed(_Stream):
    """The private WebSocket's ``execution`` topic: hands each message to ``on_message`` (the adapter's
    Bybit.on_stream, which keeps its fills) and announces them so the trader books them at once.

    The stream and ``execution/list`` are merged by execId, so a fill is booked once whichever
    path sees it first, and a lost message only delays the booking until execution/list shows
    it. A socket found down is reconnected with backoff (a private stream is quiet by nature:
    silence is not staleness).
    """

    def __init__(self, on_message: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, ws_factory: Callable[..., Any] = make_ws) -> None:
        super().__init__(clock, ws_factory)
        self.on_message = on_message
        self.pending = threading.Event()
        self._connect()

    def _connect(self) -> None:
        ws = self.ws_factory("private")
        ws.execution_stream(callback=self._on_message)
        self.ws = ws

    def _on_message(self, message: dict[str, Any]) -> None:
        if self.on_message is not None:
            self.on_message(message)
        self.pending.set()

    def take(self) -> bool:
        """True once per burst of announced fills."""
        if self.pending.is_set():
            self.pending.clear()
            return True
        return False

    def check(self) -> bool:
        """Reconnect a socket that is down (with backoff); True when it was down."""
        if self.ws.is_connected():
            self.failures = 0
            return False
        if self._reconnect("private", "down", 1.0):
            self.pending.set()  # fills may have happened meanwhile
        return True
