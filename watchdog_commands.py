"""The watchdog's answers: the Telegram commands from the configured chat and the period report.

One job: read getUpdates, answer /status, /trades, /pnl, /pause, /resume and /help through the outbox
(any other chat is ignored and logged), and build the PnL, trades and drawdown lines of a period that
/pnl and the daily summary send. :class:`Commands` is mixed into :class:`watchdog.Watchdog`, which owns
the state (``workdir``, ``store``, ``settings``, the Bot API session, the clock).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any

from telegram_outbox import (HOUR_MS, Store, TelegramError, TelegramUnreachable, backoff_delay, duration, esc,
                             finite_or_none, num, usdt, utc_text)
from watchdog_files import iso_ms, read_equity, read_heartbeat, read_trades, write_control

logger = logging.getLogger("grtr.watchdog")  # the watchdog's log (setup_logging's handlers redact the token)
MAX_TRADES_LISTED = 30
COMMANDS_HELP = (
    "/status: positions, stops, unrealized PnL, last bar, heartbeat age\n"
    "/trades [n]: the last n trades (default 10)\n"
    "/pnl [days]: PnL, trades and drawdown of the last days (default 1)\n"
    "/pause: no new entries (open positions are still managed)\n"
    "/resume: entries again\n"
    "/help: this list"
)


def period_report(trades: list[dict[str, Any]], equity: list[tuple[int, float]], start_ms: int, end_ms: int
                  ) -> list[str]:
    """Lines on the trades closed and the equity in [start_ms, end_ms): PnL, wins, equity, drawdown.

    Drawdowns are from the highest equity before ``end_ms``; the deepest one of the period counts the
    level the period started at, so it is never shallower than the drawdown now.
    """
    closed = [t for t in trades if start_ms <= (iso_ms(t["exit_time"]) or -1) < end_ms]
    by_trade: dict[tuple[Any, Any], float] = {}
    for t in closed:  # partial take-profits are rows of the same trade
        key = (t["side"], t["entry_time"])
        by_trade[key] = by_trade.get(key, 0.0) + (t["pnl"] or 0.0)
    won = sum(1 for pnl in by_trade.values() if pnl > 0)
    lines = [f"trades: {len(by_trade)} ({won} won, {len(by_trade) - won} lost)",
             f"PnL: {usdt(sum(t['pnl'] or 0.0 for t in closed))}, fees {usdt(sum(t['fees'] or 0.0 for t in closed))}"]
    peak, deepest, last, in_period = -math.inf, 0.0, None, False
    for ts, value in equity:
        if ts >= end_ms:
            break
        peak = max(peak, value)
        if ts >= start_ms and not in_period and last is not None:
            deepest = last[2]  # the drawdown the period started at
        in_period = in_period or ts >= start_ms
        last = (ts, value, value / peak - 1 if peak > 0 else 0.0)
        if in_period:
            deepest = min(deepest, last[2])
    if last is not None:
        lines.append(f"equity: {usdt(last[1], signed=False)}")
        if in_period:
            lines.append(f"drawdown: {last[2] * 100:.2f}% now, deepest {deepest * 100:.2f}% in the period")
        else:
            lines.append(f"drawdown: {last[2] * 100:.2f}% (no bar closed in the period; the last at "
                         f"{utc_text(last[0])})")
    return lines



class Commands:
    """The Telegram commands of :class:`watchdog.Watchdog` (mixed into it: the state is its own)."""

    def _report(self, start_ms: int, end_ms: int) -> list[str]:
        db_path = self.workdir / "state.sqlite"
        try:
            return [esc(line) for line in period_report(read_trades(db_path), read_equity(db_path), start_ms, end_ms)]
        except sqlite3.Error as exc:
            return [f"trader database unreadable: {esc(exc)}"]

    # --- commands -----------------------------------------------------------------------------
    def command(self, text: str) -> str:
        """The HTML reply to a command from the configured chat."""
        words = text.split()
        name = words[0].split("@")[0].lower() if words else ""
        args = words[1:]
        now_ms = int(self.clock() * 1000)
        if name == "/status":
            return self._status(now_ms)
        if name == "/trades":
            count = _count_arg(args, 10, MAX_TRADES_LISTED)
            return self._trades(count) if count else f"Usage: /trades [n], n from 1 to {MAX_TRADES_LISTED}"
        if name == "/pnl":
            days = _count_arg(args, 1, 3650)
            if not days:
                return "Usage: /pnl [days], days from 1 to 3650"
            end_ms, clock_note = self._trader_now(now_ms)
            return (f"<b>PnL, last {days} d</b>{clock_note}\n"
                    + "\n".join(self._report(end_ms - days * 24 * HOUR_MS, end_ms + 1)))
        if name in ("/pause", "/resume"):
            paused = name == "/pause"
            write_control(self.workdir, paused, now_ms)
            logger.info("control.json: paused=%s", paused)
            if paused:
                return ("⏸ <b>Paused</b>: no new entries from the trader's next bar on; open positions are still "
                        "managed. /resume to undo.")
            return "▶️ <b>Resumed</b>: entries allowed again from the trader's next bar on."
        if name in ("/help", "/start"):
            return esc(COMMANDS_HELP)
        return f"Unknown command {esc(name)}.\n{esc(COMMANDS_HELP)}"

    def _trader_now(self, now_ms: int) -> tuple[int, str]:
        """The trader's present: the wall clock, or for a paper replay (its bars are history) the close of
        the last bar it booked; with a note saying which when it is not the wall clock."""
        beat = read_heartbeat(self.workdir / "heartbeat.json")
        if beat is None or beat.get("env") != "paper":
            return now_ms, ""
        curve = read_equity(self.workdir / "state.sqlite")
        if not curve:
            return now_ms, ""
        return curve[-1][0], f" (paper replay: its bars to {utc_text(curve[-1][0])})"

    def _status(self, now_ms: int) -> str:
        beat = read_heartbeat(self.workdir / "heartbeat.json")
        if beat is None:
            return "No heartbeat.json yet: the trader has not run in this folder."
        pid = beat["pid"]
        alive = self._alive(pid, beat.get("started_ms") or 0)
        lines = [f"<b>{esc(beat.get('symbol'))}</b> ({esc(beat.get('env'))}), pid {pid} "
                 f"{'running' if alive else 'NOT RUNNING'}{', PAUSED' if beat.get('paused') else ''}",
                 f"heartbeat {duration((now_ms - beat['time_ms']) / 1000)} ago · last bar "
                 f"{utc_text(beat['last_bar_ts']) if isinstance(beat.get('last_bar_ts'), int) else '—'}"]
        equity = finite_or_none(beat.get("equity"))
        if equity is None:
            curve = read_equity(self.workdir / "state.sqlite")
            equity = curve[-1][1] if curve else None
        lines.append(f"equity {usdt(equity, signed=False)}")
        for p in beat.get("positions") or []:
            wanted = (f" (the trader wants {num(p['wanted_stop'])}: not on the exchange, "
                      f"{esc(p.get('stop_rejections', 0))} refused in a row)" if p.get("wanted_stop") else "")
            lines.append(f"{esc(str(p.get('side')).upper())} {num(p.get('qty'))} @ {num(p.get('entry_price'))}, "
                         f"stop {num(p.get('stop'))}{wanted}, TP {num(p.get('take_profit'))}, "
                         f"mark {num(p.get('mark_price'))}, uPnL {usdt(p.get('unrealized_pnl'))}")
        if not beat.get("positions"):
            lines.append("no open position")
        return "\n".join(lines)

    def _trades(self, count: int) -> str:
        try:
            trades = read_trades(self.workdir / "state.sqlite")[-count:]
        except sqlite3.Error as exc:
            return f"trader database unreadable: {esc(exc)}"
        if not trades:
            return "No trades yet."
        lines = [f"<b>Last {len(trades)} trades</b>"]
        for t in trades:
            lines.append(f"{esc(str(t['exit_time'])[:16].replace('T', ' '))} {esc(str(t['side']).upper())} "
                         f"{num(t['qty'])} {num(t['entry_price'])}→{num(t['exit_price'])} {usdt(t['pnl'])} "
                         f"{esc(t['exit_reason'])}")
        return "\n".join(lines)

    def poll_commands(self, timeout: int) -> float:
        """One getUpdates long poll; commands from the configured chat are answered through the outbox,
        every other chat is ignored and logged. Returns the seconds to wait before the next poll."""
        params: dict[str, Any] = {"timeout": timeout, "allowed_updates": ["message"]}
        if self.updates_offset is not None:
            params["offset"] = self.updates_offset
        try:
            updates = self.commands_api.call("getUpdates", http_timeout=timeout + self.settings.request_timeout_s,
                                             **params)
        except (TelegramUnreachable, TelegramError) as exc:
            self._command_failures += 1
            retry = exc.retry_after if isinstance(exc, TelegramError) else None
            delay = retry if retry is not None else backoff_delay(self._command_failures, self.settings.retry_base_s,
                                                                  self.settings.retry_max_s)
            logger.warning("getUpdates failed (%s); next try in %.1f s", exc, delay)
            return delay
        self._command_failures = 0
        for update in updates or []:
            self.updates_offset = int(update["update_id"]) + 1
            message = update.get("message") or {}
            chat = str((message.get("chat") or {}).get("id"))
            text = message.get("text") or ""
            reply = None
            if chat != self.chat_id:
                logger.warning("ignored a message from chat %s: only TELEGRAM_CHAT_ID may give commands", chat)
            elif text.startswith("/"):
                logger.info("command %r", text[:100])
                try:
                    reply = self.command(text)
                except (OSError, sqlite3.Error) as exc:
                    logger.exception("command %r failed", text[:100])
                    reply = f"Command failed: {esc(self.redact(str(exc)))}"
            with self.store.transaction() as db:
                if reply is not None:
                    Store.enqueue(db, self.chat_id, self.redact(reply), False, int(self.clock() * 1000), None)
                Store.put(db, "updates_offset", self.updates_offset)
            if reply is not None:
                self.wake.set()
        return 0.0


def _count_arg(args: list[str], default: int, high: int) -> int | None:
    """The optional whole-number argument of a command, or None when it is not one in [1, high]."""
    if not args:
        return default
    try:
        value = int(args[0])
    except ValueError:
        return None
    return value if 1 <= value <= high else None
