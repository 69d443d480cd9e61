"""Telegram for the watchdog: the Bot API client, the alert texts and the outbox that delivers them.

Alerts are HTML (parse mode HTML: only &, < and > need escaping). They wait in the outbox, a table
of the watchdog's own SQLite database, until Telegram has them: delivered in order, one message per
``min_send_interval_s`` per chat, identical alerts within a window merged into one ("x5"), backoff
on network errors and 5xx, Telegram's ``retry_after`` on 429. The token is part of every Bot API
URL, so every error text is redacted before it is logged or raised.
"""

from __future__ import annotations

import html
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests

import config

logger = logging.getLogger("grtr.watchdog")
DEFAULT_API_URL = "https://api.telegram.org"
HOUR_MS = 3_600_000
FIELD_CHARS = 1000          # longest free-text field (error message, detail) put into an alert
TAIL_CHARS = 2500           # longest log excerpt in an alert: keeps every message under Telegram's 4096


def telegram_settings(environ: Mapping[str, str]) -> tuple[str, str, str]:
    """(token, chat id, API base URL) from the environment; a clear error when one is missing or bad."""
    token = environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    chat_id = environ.get("TELEGRAM_CHAT_ID", "").strip()
    api_url = (environ.get("TELEGRAM_API_URL", "").strip() or DEFAULT_API_URL).rstrip("/")
    if not token:
        raise config.ConfigError("TELEGRAM_BOT_TOKEN is not set (environment or .env)")
    if not chat_id:
        raise config.ConfigError("TELEGRAM_CHAT_ID is not set (environment or .env)")
    if not api_url.startswith(("http://", "https://")):
        raise config.ConfigError(f"TELEGRAM_API_URL = {api_url!r} must start with http:// or https://")
    return token, chat_id, api_url


def redact(text: str, token: str) -> str:
    """``text`` with the bot token replaced by ``<token>`` (the token is part of every Bot API URL)."""
    return text.replace(token, "<token>") if token else text


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base_s`` doubling per failure, capped at ``max_s``."""
    return min(base_s * 2 ** max(0, failures - 1), max_s)


# ----------------------------------------------------------------------------------------------
# Bot API
# ----------------------------------------------------------------------------------------------
class TelegramError(Exception):
    """The Bot API answered with an error (HTTP status, Telegram's description, retry_after on 429)."""

    def __init__(self, status: int, description: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {description}")
        self.status = status
        self.description = description
        self.retry_after = retry_after

    @property
    def config_problem(self) -> bool:
        """The token or the chat is wrong: every message would fail the same way."""
        return self.status in (401, 403, 404) or (self.status == 400 and "chat not found" in self.description.lower())


class TelegramUnreachable(Exception):
    """No answer from the Bot API (connection refused, timeout, broken connection)."""


class BotApi:
    """A thin Bot API client on ``requests``; its error texts never contain the token."""

    def __init__(self, token: str, api_url: str = DEFAULT_API_URL, timeout: float = 15.0) -> None:
        self._token = token
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def redact(self, text: str) -> str:
        """``text`` without the token."""
        return redact(text, self._token)

    def call(self, method: str, http_timeout: float | None = None, **params: Any) -> Any:
        """Call ``method`` with JSON ``params``; returns its result or raises TelegramError/TelegramUnreachable."""
        url = f"{self.api_url}/bot{self._token}/{method}"
        try:
            response = self.session.post(url, json=params, timeout=http_timeout or self.timeout)
        except requests.RequestException as exc:
            # `from None`: the original exception's text holds the URL, hence the token
            raise TelegramUnreachable(self.redact(f"{type(exc).__name__}: {exc}")) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200 and body.get("ok"):
            return body.get("result")
        retry_after = (body.get("parameters") or {}).get("retry_after")
        description = str(body.get("description") or response.reason or "no description")
        raise TelegramError(response.status_code, self.redact(description),
                            float(retry_after) if isinstance(retry_after, (int, float)) else None)

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()


# ----------------------------------------------------------------------------------------------
# Formatting (Telegram HTML parse mode: only &, < and > need escaping)
# ----------------------------------------------------------------------------------------------
def esc(value: Any, limit: int = FIELD_CHARS) -> str:
    """``value`` as text for HTML parse mode: cut to ``limit`` characters, then escaped."""
    text = "—" if value is None else str(value)
    return html.escape(text if len(text) <= limit else text[:limit] + "…", quote=False)


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, NaN or infinite)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def num(value: Any) -> str:
    """A quantity or price without float noise (10 significant digits)."""
    number = finite_or_none(value)
    if number is None:
        return "—" if value is None or isinstance(value, float) else esc(value)
    return f"{number:.10g}"


def usdt(value: Any, signed: bool = True) -> str:
    """An amount in USDT, signed by default."""
    number = finite_or_none(value)
    return "—" if number is None else f"{number:{'+' if signed else ''},.2f} USDT"


def pct(value: Any) -> str:
    """A signed percentage."""
    number = finite_or_none(value)
    return "—" if number is None else f"{number:+.2f}%"


def duration(seconds: float) -> str:
    """A duration in the two largest units: '45 s', '3 min 5 s', '2 h 10 min', '3 d 4 h'."""
    rest = max(0, int(round(seconds)))
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        parts.append((count, unit))
    first = next((k for k, (count, _) in enumerate(parts) if count), len(parts) - 1)
    shown = [parts[first]] + [p for p in parts[first + 1:first + 2] if p[0]]
    return " ".join(f"{count} {unit}" for count, unit in shown)


def utc_text(ms: float, seconds: bool = False) -> str:
    """Epoch milliseconds as 'YYYY-MM-DD HH:MM[:SS] UTC'."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "") + " UTC")


def log_block(title: str, lines: list[str]) -> str:
    """Log lines for the end of an alert: a line ``title:``, then an escaped <pre> block, oldest lines dropped
    to stay under TAIL_CHARS; empty when there is no line."""
    lines = list(lines)
    while lines and len(html.escape("\n".join(lines), quote=False)) > TAIL_CHARS:
        lines.pop(0)
    body = html.escape("\n".join(lines), quote=False)
    return f"\n{title}:\n<pre>{body}</pre>" if lines else ""


@dataclass(frozen=True)
class Alert:
    """One message to send: its alert type (which sets its level), its HTML text and what makes two alerts
    repeats of each other (``merge_key``; None: the same text)."""

    kind: str
    text: str
    merge_key: str | None = None


def event_alert(event: dict[str, Any], tail: list[str]) -> Alert:
    """The alert of one trader event (``tail``: the last log lines, shown with a stop)."""
    kind = str(event.get("event"))
    side = esc(str(event.get("side") or "").upper())
    symbol = esc(event.get("symbol"))
    who = f"{side} {symbol}".strip()
    g = event.get
    if kind == "start":
        sides = ", ".join(str(s) for s in g("sides") or [])
        return Alert(kind, f"▶️ <b>Trader started</b> {symbol} ({esc(g('env'))}), pid {esc(g('pid'))}, "
                           f"sides {esc(sides)}")
    if kind == "stop":
        return Alert(kind, f"⏹ <b>Trader stopped</b> {symbol}: {esc(g('reason'))}, exit code {esc(g('exit_code'))}"
                           + log_block("last lines of trader.log", tail))
    if kind == "entry":
        return Alert(kind, f"🟢 <b>Entry {who}</b>\nqty {num(g('qty'))} @ {num(g('price'))}\n"
                           f"stop {num(g('stop'))} · risk {usdt(g('risk'), signed=False)}")
    if kind == "add":
        return Alert(kind, f"➕ <b>Pyramid add {who}</b>\n+{num(g('qty'))} @ {num(g('price'))}\n"
                           f"position {num(g('total_qty'))} @ avg {num(g('avg_price'))}")
    if kind == "partial_exit":
        return Alert(kind, f"💰 <b>Partial take-profit {who}</b>\n{num(g('qty'))} @ {num(g('price'))} · "
                           f"PnL {usdt(g('pnl'))}\nremaining {num(g('remaining_qty'))}")
    if kind == "exit":
        icon = "✅" if (finite_or_none(g("pnl")) or 0.0) >= 0 else "🔻"
        hold = finite_or_none(g("hold_hours"))
        return Alert(kind, f"{icon} <b>Exit {who}</b>: {esc(g('reason'))}\n{num(g('qty'))} @ {num(g('price'))} "
                           f"(entry {num(g('entry_price'))})\nPnL {usdt(g('pnl'))} ({pct(g('pnl_pct'))}) · held "
                           f"{duration(hold * 3600) if hold is not None else '—'}")
    if kind == "stop_moved":
        return Alert(kind, f"↕️ <b>Stop moved {who}</b> ({esc(g('kind'))}): {num(g('old_stop'))} → "
                           f"{num(g('new_stop'))}")
    if kind == "order_rejected":  # repeats: the same call refused for the same reason, whatever the order id
        return Alert(kind, f"⛔ <b>Order rejected {who}</b>: {esc(g('action'))} {esc(g('order_link_id'))}\n"
                           f"{esc(g('ret_code'))}: {esc(g('ret_msg'))}",
                     f"{kind}|{g('symbol')}|{g('side')}|{g('action')}|{g('ret_code')}|{g('ret_msg')}")
    if kind == "desync":
        return Alert(kind, f"⚠️ <b>Desync {who}</b>\n{esc(g('detail'))}")
    if kind == "rescue":
        return Alert(kind, f"🛟 <b>Rescue {who}</b>: {num(g('qty'))} @ {num(g('entry_price'))}\n{esc(g('detail'))}")
    if kind == "error":
        return Alert(kind, f"❗ <b>Error {who}</b>\n{esc(g('message'))}")
    if kind == "stop_restored":
        return Alert(kind, f"🛡 <b>Stop restored {who}</b>: {num(g('stop'))} (the exchange had "
                           f"{num(g('exchange_stop')) if g('exchange_stop') else 'none'})")
    if kind == "tick_guard":
        return Alert(kind, f"🚨 <b>Tick guard {who}</b>: price {num(g('price'))} crossed the stop {num(g('stop'))} "
                           f"with the position open; closing {num(g('qty'))} at market")
    if kind == "entry_skipped":
        what = "Add" if g("action") == "add" else "Entry"
        detail = f"\n{esc(g('detail'))}" if g("detail") else ""
        return Alert(kind, f"⏭ <b>{what} skipped {who}</b>: {esc(g('reason'))}{detail}",
                     f"{kind}|{g('symbol')}|{g('side')}|{g('action')}|{g('reason')}")
    if kind == "stop_rejected":  # repeats: the same refusal of the same side's stop, whatever the price
        held = num(g("exchange_stop")) if g("exchange_stop") else "no stop"
        closing = "; closing the position at market" if (g("rejections") or 0) >= (g("limit") or 1) else ""
        return Alert(kind, f"🛑 <b>Stop move refused {who}</b>: {num(g('stop'))}, the exchange holds {held}\n"
                           f"{esc(g('ret_code'))}: {esc(g('ret_msg'))} · {esc(g('rejections'))} of "
                           f"{esc(g('limit'))} in a row{closing}",
                     f"{kind}|{g('symbol')}|{g('side')}|{g('ret_code')}|{g('ret_msg')}")
    if kind == "wallet_sync":
        return Alert(kind, f"💱 <b>Wallet changed</b> {symbol}: the exchange's capital "
                           f"{usdt(g('capital'), signed=False)}, the trader's books {usdt(g('books'), signed=False)}"
                           f" ({usdt(g('difference'))} not explained by its fills: a deposit, a withdrawal, trades "
                           "elsewhere on the account); sizes follow the exchange")
    if kind == "fatal":
        code = g("exit_code")
        after = "\nnot restarted: the cause needs your fix, then start it again" if code == 2 else ""
        ret = f"retCode {esc(g('ret_code'))} · " if g("ret_code") is not None else ""
        return Alert(kind, f"💥 <b>Trader stopped on an error</b> {symbol}, pid {esc(g('pid'))}\n{esc(g('message'))}\n"
                           f"{ret}exit code {esc(code)}{after}" + log_block("last lines of trader.log", tail))
    if kind == "security_warning":
        return Alert(kind, f"🔐 <b>Security warning</b> {symbol}\n{esc(g('detail'))}")
    rest = {k: v for k, v in event.items() if k not in ("time", "ts_ms", "event", "symbol", "side")}
    return Alert("other", f"ℹ️ <b>{esc(kind)} {who}</b>\n<code>{esc(json.dumps(rest, default=str))}</code>")


# ----------------------------------------------------------------------------------------------
# The watchdog's own database: outbox and persisted values
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutboxRow:
    """A message in the outbox; ``count`` identical alerts merged into it, ``sent_count`` already shown."""

    id: int
    chat_id: str
    text: str
    silent: bool
    count: int
    sent_count: int
    first_ms: int
    last_ms: int
    message_id: int | None


class Store:
    """watchdog.sqlite: the outbox and a few JSON values, shared by the watchdog's threads under one lock."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT NOT NULL,
        text TEXT NOT NULL, silent INTEGER NOT NULL, mergeable INTEGER NOT NULL, count INTEGER NOT NULL,
        sent_count INTEGER NOT NULL DEFAULT 0, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
        sent_ms INTEGER, message_id INTEGER, failed INTEGER NOT NULL DEFAULT 0, merge_key TEXT, updated_ms INTEGER);
    CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """
    ADDED_COLUMNS = {"merge_key": "TEXT", "updated_ms": "INTEGER"}  # absent from a database of an older watchdog

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(self.SCHEMA)
        present = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        for column, kind in self.ADDED_COLUMNS.items():
            if column not in present:
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self.db.execute("UPDATE outbox SET merge_key = text WHERE merge_key IS NULL")
        self.db.execute("CREATE INDEX IF NOT EXISTS outbox_merge_key ON outbox (merge_key)")
        self.lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change, exclusive among the threads."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def get(self, key: str, default: Any = None) -> Any:
        """A persisted value, or ``default``."""
        with self.lock:
            row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @staticmethod
    def put(db: sqlite3.Connection, key: str, value: Any) -> None:
        """Persist a value inside a transaction."""
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    @staticmethod
    def enqueue(db: sqlite3.Connection, chat_id: str, text: str, silent: bool, now_ms: int,
                merge_window_ms: int | None, merge_key: str | None = None) -> None:
        """Add a message inside a transaction. A repeat (same ``merge_key``, by default the same text) of a
        message not yet sent, or whose latest repeat is less than the merge window old, is absorbed by it
        instead: its count grows and it shows the latest text (``merge_window_ms`` None or 0: never merged)."""
        key = merge_key or text
        if merge_window_ms:
            row = db.execute("SELECT id FROM outbox WHERE mergeable = 1 AND failed = 0 AND chat_id = ? AND "
                             "merge_key = ? AND silent = ? AND (sent_ms IS NULL OR last_ms >= ?) ORDER BY id DESC "
                             "LIMIT 1", (chat_id, key, int(silent), now_ms - merge_window_ms)).fetchone()
            if row is not None:
                db.execute("UPDATE outbox SET count = count + 1, last_ms = ?, text = ? WHERE id = ?",
                           (now_ms, text, row[0]))
                return
        db.execute("INSERT INTO outbox (chat_id, text, silent, mergeable, count, first_ms, last_ms, merge_key) "
                   "VALUES (?, ?, ?, ?, 1, ?, ?, ?)", (chat_id, text, int(silent), int(bool(merge_window_ms)),
                                                        now_ms, now_ms, key))

    def next_due(self, now_ms: int = 0, edit_interval_ms: int = 0) -> OutboxRow | None:
        """The oldest message to send, or a sent one whose merge count must be updated (an update at most
        every ``edit_interval_ms``)."""
        with self.lock:
            row = self.db.execute(
                "SELECT id, chat_id, text, silent, count, sent_count, first_ms, last_ms, message_id FROM outbox "
                "WHERE failed = 0 AND (sent_ms IS NULL OR (message_id IS NOT NULL AND count > sent_count AND "
                "COALESCE(updated_ms, sent_ms) <= ?)) ORDER BY id LIMIT 1",
                (now_ms - edit_interval_ms if edit_interval_ms else 2**62,)).fetchone()
        return None if row is None else OutboxRow(row[0], row[1], row[2], bool(row[3]), *row[4:])

    def mark_sent(self, row_id: int, now_ms: int, message_id: int | None, count: int) -> None:
        """A message (or its merge count) reached Telegram."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET sent_ms = COALESCE(sent_ms, ?), message_id = COALESCE(?, message_id), "
                       "sent_count = ?, updated_ms = ? WHERE id = ?", (now_ms, message_id, count, now_ms, row_id))
            db.execute("DELETE FROM outbox WHERE sent_ms IS NOT NULL AND sent_ms < ? AND count = sent_count",
                       (now_ms - 7 * 24 * HOUR_MS,))

    def mark_failed(self, row_id: int) -> None:
        """Telegram refused this message for good; it stays in the database, marked."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET failed = 1 WHERE id = ?", (row_id,))

    def pending(self) -> int:
        """Messages not yet delivered."""
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox WHERE failed = 0 AND (sent_ms IS NULL OR "
                                   "(message_id IS NOT NULL AND count > sent_count))").fetchone()[0]


def render(row: OutboxRow, now_ms: int) -> str:
    """The text Telegram shows: merged alerts carry their count, late ones the time they were raised."""
    if row.count > 1:
        return (f"{row.text}\n<i>×{row.count} between {utc_text(row.first_ms, True)[11:19]} and "
                f"{utc_text(row.last_ms, True)[11:]}</i>")
    if now_ms - row.first_ms > 60_000:
        return f"{row.text}\n<i>raised {utc_text(row.first_ms, True)}</i>"
    return row.text


class DeliverySettings(Protocol):
    """The tunables the Sender reads (watchdog.Settings has them, from config.WATCHDOG_SETTINGS)."""

    @property
    def poll_interval_s(self) -> float: ...
    @property
    def min_send_interval_s(self) -> float: ...
    @property
    def merge_edit_interval_s(self) -> float: ...
    @property
    def retry_base_s(self) -> float: ...
    @property
    def retry_max_s(self) -> float: ...


class Sender:
    """Delivers the outbox in order: one message per ``min_send_interval_s`` per chat, backoff on network
    errors and 5xx, Telegram's retry_after on 429; a wrong token or chat keeps the messages waiting."""

    def __init__(self, store: Store, api: BotApi, settings: DeliverySettings, clock: Callable[[], float]) -> None:
        self.store = store
        self.api = api
        self.settings = settings
        self.clock = clock
        self.failures = 0
        self.blocked_until = 0.0
        self.last_sent: dict[str, float] = {}

    def step(self) -> float:
        """Send (or update) at most one message; returns the seconds to wait before the next step."""
        now = self.clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        row = self.store.next_due(int(now * 1000), int(self.settings.merge_edit_interval_s * 1000))
        if row is None:
            return self.settings.poll_interval_s
        wait = self.last_sent.get(row.chat_id, -math.inf) + self.settings.min_send_interval_s - now
        if wait > 0:
            return wait
        text = render(row, int(now * 1000))
        try:
            if row.message_id is None:
                result = self.api.call("sendMessage", chat_id=row.chat_id, text=text, parse_mode="HTML",
                                       disable_notification=row.silent, link_preview_options={"is_disabled": True})
            else:
                result = self.api.call("editMessageText", chat_id=row.chat_id, message_id=row.message_id, text=text,
                                       parse_mode="HTML", link_preview_options={"is_disabled": True})
        except TelegramUnreachable as exc:
            return self._backoff(now, f"Telegram unreachable ({exc})")
        except TelegramError as exc:
            if exc.status == 429:
                self.failures += 1
                delay = exc.retry_after if exc.retry_after is not None else self._delay()
                logger.warning("Telegram rate limit (429): waiting %.1f s as it asks", delay)
                self.blocked_until = now + delay
                return delay
            if exc.status >= 500 or exc.config_problem:
                hint = " (check TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID)" if exc.config_problem else ""
                return self._backoff(now, f"Telegram refused the message: {exc}{hint}")
            if row.message_id is None:
                logger.error("Telegram refused message %d for good (%s); kept in watchdog.sqlite, marked failed: %s",
                             row.id, exc, row.text[:300])
                self.store.mark_failed(row.id)
                return 0.0
            result = None  # an edit of a deleted or unchanged message: nothing more to show
        self.last_sent[row.chat_id] = self.clock()
        message_id = result.get("message_id") if isinstance(result, dict) else None
        self.store.mark_sent(row.id, int(now * 1000), message_id, row.count)
        if self.failures:
            logger.info("Telegram reachable again; %d more messages waiting", self.store.pending())
        self.failures = 0
        return 0.0

    def _delay(self) -> float:
        return backoff_delay(self.failures, self.settings.retry_base_s, self.settings.retry_max_s)

    def _backoff(self, now: float, why: str) -> float:
        self.failures += 1
        delay = self._delay()
        logger.warning("%s; %d messages wait in the outbox; retry in %.1f s", why, self.store.pending(), delay)
        self.blocked_until = now + delay
        return delay


def send_test_message(api: BotApi, chat_id: str) -> tuple[bool, str]:
    """Check the token (getMe) and the chat (one sendMessage); (ok, what to print)."""
    try:
        bot = api.call("getMe") or {}
    except TelegramUnreachable as exc:
        return False, f"cannot reach Telegram at {api.api_url}: {exc}"
    except TelegramError as exc:
        return False, f"Telegram refused the bot token ({exc}): check TELEGRAM_BOT_TOKEN"
    name = bot.get("username") or "the bot"
    try:
        api.call("sendMessage", chat_id=chat_id, parse_mode="HTML",
                 text=f"✅ GrTr watchdog test message from @{esc(name)}: token and chat are right.")
    except TelegramUnreachable as exc:
        return False, f"cannot reach Telegram at {api.api_url}: {exc}"
    except TelegramError as exc:
        return False, (f"Telegram refused chat {chat_id} ({exc}): check TELEGRAM_CHAT_ID, and that the chat has "
                       "written to the bot first")
    return True, f"test message sent to chat {chat_id} by @{name}"
