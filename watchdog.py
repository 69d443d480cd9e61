"""GrTr watchdog: watches the live trader's heartbeat, process and event log; Telegram alerts and commands.

    python watchdog.py                         # watch the trader started by run_live.py in this folder
    python watchdog.py --dir results/paper1    # watch the trader whose heartbeat and logs are in that folder
    python watchdog.py --restart               # also restart the trader when it dies or hangs
    python watchdog.py --restart -- --side long --mainnet --yes   # ... as run_live.py --dir . --side long ...
    python watchdog.py --test-message          # send one message and exit: checks the token and chat

It reads the trader's files (``heartbeat.json``, ``logs/events.jsonl``, ``logs/trader.log`` and
``state.sqlite`` read-only), writes ``control.json`` for /pause and /resume, and keeps its own
``watchdog.sqlite``: the outbox of alerts not yet delivered and the event log position, committed in
one transaction, so a restarted watchdog neither replays nor skips an event and an alert waits there
while Telegram is unreachable. Settings are in config.py (``WATCHDOG_SETTINGS``,
``WATCHDOG_ALERT_LEVELS``); ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID`` and ``TELEGRAM_API_URL``
come from the environment or ``.env``. The token is part of every Bot API URL, so every error text
is redacted before it is logged or raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import logging.handlers
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from dotenv import load_dotenv

import cli  # first: a bad config.py ends here in one line, exit 2
import config
from trader_lock import process_alive
from telegram_outbox import (DEFAULT_API_URL, HOUR_MS, Alert, BotApi, Sender, Store, TelegramError,
                             TelegramUnreachable, backoff_delay, duration, esc, event_alert, finite_or_none,
                             log_block, num, redact, send_test_message, telegram_settings, usdt, utc_text)

logger = logging.getLogger("grtr.watchdog")
EXIT_TELEGRAM = 1
EXIT_USAGE = cli.EXIT_USAGE
MAX_TRADES_LISTED = 30
COMMANDS_HELP = (
    "/status: positions, stops, unrealized PnL, last bar, heartbeat age\n"
    "/trades [n]: the last n trades (default 10)\n"
    "/pnl [days]: PnL, trades and drawdown of the last days (default 1)\n"
    "/pause: no new entries (open positions are still managed)\n"
    "/resume: entries again\n"
    "/help: this list"
)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The watchdog's tunables: config.WATCHDOG_SETTINGS plus the alert level of each alert type."""

    heartbeat_stale_s: float
    startup_grace_s: float
    poll_interval_s: float
    updates_timeout_s: int
    request_timeout_s: float
    daily_summary_hour_utc: int | None
    merge_window_s: float
    merge_edit_interval_s: float
    min_send_interval_s: float
    retry_base_s: float
    retry_max_s: float
    restart_max_per_hour: int
    restart_backoff_s: float
    restart_backoff_max_s: float
    kill_grace_s: float
    log_tail_lines: int
    levels: dict[str, str]

    @classmethod
    def from_config(cls, levels: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """config.py's values with ``overrides`` and ``levels`` applied, validated (errors name the key)."""
        values = {**config.WATCHDOG_SETTINGS, **overrides}
        all_levels = {**config.WATCHDOG_ALERT_LEVELS, **(levels or {})}
        checked = config.validate_watchdog(values, all_levels, where="watchdog settings")
        return cls(levels=all_levels, **checked)


# ----------------------------------------------------------------------------------------------
# The event log
# ----------------------------------------------------------------------------------------------
class EventReader:
    """logs/events.jsonl read from a persisted position (inode, first bytes, offset).

    The trader rotates by renaming the file to ``events.jsonl.1``; when the file at the path is no
    longer the one being read, the rest of the renamed one is read first, then the new one from 0.
    Only complete lines are consumed. With no saved position, an existing log is read from its end
    (earlier events are not replayed); a log that appears later is read from its start.
    """

    HEAD_BYTES = 64

    def __init__(self, path: Path, position: dict[str, Any] | None) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        if position is None:
            found = self._identity(path)
            self.ino, self.head, self.offset = (found[0], found[2], found[1]) if found else (None, b"", 0)
            if found:
                logger.info("%s exists: reading from its end (%d bytes are not replayed)", path, found[1])
        else:
            self.ino, self.head, self.offset = position["ino"], bytes.fromhex(position["head"]), position["offset"]

    def position(self) -> dict[str, Any]:
        """What to persist to resume exactly here."""
        return {"ino": self.ino, "head": self.head.hex(), "offset": self.offset}

    def _identity(self, path: Path) -> tuple[int, int, bytes] | None:
        """(inode, size, first bytes) of ``path``, or None when it does not exist."""
        try:
            with path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                return stat.st_ino, stat.st_size, handle.read(self.HEAD_BYTES)
        except FileNotFoundError:
            return None

    def _same(self, found: tuple[int, int, bytes] | None) -> bool:
        return found is not None and found[0] == self.ino and found[2].startswith(self.head)

    def read(self) -> list[dict[str, Any]]:
        """The complete events appended since the last read, in order."""
        events: list[dict[str, Any]] = []
        current = self._identity(self.path)
        if self.ino is not None and not self._same(current):
            if self._same(self._identity(self.rotated)):
                events += self._read_from(self.rotated)
            else:
                logger.error("%s was replaced and its previous file is gone (rotated twice between two reads?): "
                             "events after offset %d of the old file are lost", self.path, self.offset)
            self.ino, self.head, self.offset = None, b"", 0
        if current is None:
            return events
        if self.ino is None:
            self.ino, self.head, self.offset = current[0], current[2], 0
        elif current[1] < self.offset:
            logger.warning("%s shrank below the read position: reading it again from its start", self.path)
            self.offset = 0
        return events + self._read_from(self.path)

    def _read_from(self, path: Path) -> list[dict[str, Any]]:
        try:
            with path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_ino != self.ino:
                    return []  # replaced since it was looked at: the next read follows the rotation
                if len(self.head) < self.HEAD_BYTES:
                    self.head = handle.read(self.HEAD_BYTES)
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                logger.error("%s: unreadable line skipped: %r", path.name, line[:200])
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def last_lifecycle(path: Path, tail_bytes: int = 1_000_000) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last ``start`` event of an event log and the ``stop`` that followed it (None when it has not
    stopped), from the log's last ``tail_bytes`` and, when they hold no start, its rotated file."""
    start: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            with candidate.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
                data = handle.read()
        except OSError:
            continue
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a partial first line of the tail, or an unreadable one
            if not isinstance(event, dict):
                continue
            if event.get("event") == "start" and isinstance(event.get("pid"), int):
                start, stop = event, None
            elif event.get("event") == "stop" and start is not None:
                stop = event
        if start is not None:
            return start, stop
    return None, None


# ----------------------------------------------------------------------------------------------
# The trader's files
# ----------------------------------------------------------------------------------------------
def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """heartbeat.json, or None when it is missing or unreadable."""
    try:
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s unreadable: %s", path, exc)
        return None
    if not isinstance(beat, dict) or not isinstance(beat.get("pid"), int) or not isinstance(beat.get("time_ms"), int):
        logger.warning("%s lacks pid or time_ms", path)
        return None
    return beat


def running_copy(cmdline: list[str], cwd: str | None) -> int | None:
    """The pid of a live process running exactly ``cmdline`` (in ``cwd`` when known), or None."""
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = process.info
        if info["cmdline"] == cmdline and info["status"] != psutil.STATUS_ZOMBIE \
                and (cwd is None or info["cwd"] in (None, cwd)):
            return info["pid"]
    return None


def log_tail(path: Path, lines: int, clean: Callable[[str], str]) -> list[str]:
    """The last ``lines`` lines of a text file (missing file: none), each cut to 200 characters and passed
    through ``clean`` (the token's redaction)."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [clean(line[:200]) for line in text.splitlines()[-lines:]]


def iso_ms(text: Any) -> int | None:
    """An ISO-8601 time as epoch milliseconds (UTC when no offset is given), or None."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def write_control(workdir: Path, paused: bool, now_ms: int) -> None:
    """control.json, atomically: the trader reads it at each bar."""
    tmp = workdir / "control.json.tmp"
    tmp.write_text(json.dumps({"paused": paused, "updated_ms": now_ms, "by": "watchdog"}))
    os.replace(tmp, workdir / "control.json")


def _query_read_only(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the trader's database, opened read-only; none when it does not exist yet."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def read_trades(db_path: Path) -> list[dict[str, Any]]:
    """The trader's trades table (read-only), oldest first."""
    keys = ("symbol", "side", "qty", "entry_time", "exit_time", "entry_price", "exit_price", "fees", "funding", "pnl",
            "exit_reason")
    rows = _query_read_only(db_path, f"SELECT {', '.join(keys)} FROM trades ORDER BY id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def read_equity(db_path: Path) -> list[tuple[int, float]]:
    """The trader's equity table (read-only): (ts_ms, equity) in time order."""
    return _query_read_only(db_path, "SELECT ts_ms, equity FROM equity ORDER BY ts_ms")


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


# ----------------------------------------------------------------------------------------------
# The watchdog
# ----------------------------------------------------------------------------------------------
@dataclass
class MonitorState:
    """What the watchdog knows of the trader across its own restarts."""

    start_pid: int | None = None          # pid of the latest start event
    start_ms: int | None = None
    stopped_pid: int | None = None        # the pid of the latest stop event, and its exit code
    stopped_code: int | None = None
    dead_pid: int | None = None           # pid whose end was handled (alerted, restart decided)
    stale_pid: int | None = None          # pid whose stale heartbeat was alerted
    restarts: list[int] = field(default_factory=list)  # restart times (ms) within the last hour
    gave_up: bool = False                 # the restart limit was hit
    daily: str | None = None              # date of the last daily summary


class Watchdog:
    """Heartbeat, process and event-log checks, alerts into the outbox, restarts, and commands."""

    def __init__(self, workdir: Path, token: str, chat_id: str, api_url: str = DEFAULT_API_URL,
                 restart_command: list[str] | None = None, settings: Settings | None = None,
                 clock: Callable[[], float] = time.time, restart_cwd: str | None = None) -> None:
        """``restart_command``: what a restart runs (None: no restarts), fixed here, in ``restart_cwd`` (default:
        this process's folder). Nothing the trader writes can change it."""
        self.workdir = Path(workdir)
        self.chat_id = str(chat_id)
        self.restart_command = list(restart_command) if restart_command else None
        self.restart_cwd = restart_cwd or os.getcwd()
        self.restart = self.restart_command is not None
        self.settings = settings or Settings.from_config()
        self.clock = clock
        self._token = token
        self.store = Store(self.workdir / "watchdog.sqlite")
        self.reader = EventReader(self.workdir / "logs" / "events.jsonl", self.store.get("events_position"))
        saved = self.store.get("monitor")
        known = {f.name for f in dataclasses.fields(MonitorState)}
        self.state = MonitorState(**{k: v for k, v in (saved or {}).items() if k in known})
        self.wake = threading.Event()
        first_alerts = self._adopt_last_state() if saved is None else []
        hour = self.settings.daily_summary_hour_utc
        now = datetime.fromtimestamp(self.clock(), UTC)
        if saved is None and hour is not None and now.hour >= hour:
            self.state.daily = now.date().isoformat()  # first run: today's summary time has passed already
        self._save(first_alerts, int(self.clock() * 1000))
        self.sender = Sender(self.store, BotApi(token, api_url, self.settings.request_timeout_s), self.settings, clock)
        self.commands_api = BotApi(token, api_url, self.settings.request_timeout_s)
        self.updates_offset: int | None = self.store.get("updates_offset")
        self.child: subprocess.Popen | None = None
        self.child_started_ms = 0
        self._command_failures = 0
        self._copy_logged: int | None = None

    def _adopt_last_state(self) -> list[Alert]:
        """At a first start, take the trader's last start and stop from the log it already holds (its
        events before now are not replayed as alerts), so a trader that finished cleanly is not reported
        as crashed. A finish with a non-zero exit code nobody was told of gets one alert."""
        start, stop = last_lifecycle(self.workdir / "logs" / "events.jsonl")
        if start is None:
            return []
        self.state.start_pid, self.state.start_ms = start["pid"], start.get("ts_ms")
        if stop is None:
            logger.info("the event log's last trader (pid %d) has not stopped: watching it", start["pid"])
            return []
        self.state.stopped_pid, self.state.stopped_code = start["pid"], stop.get("exit_code")
        when = utc_text(stop["ts_ms"]) if isinstance(stop.get("ts_ms"), int) else "an unknown time"
        logger.info("the event log's last trader (pid %d) stopped at %s: %s, exit code %s", start["pid"], when,
                    stop.get("reason"), stop.get("exit_code"))
        if stop.get("exit_code") == 0:
            return []
        return [Alert("stop", f"⏹ <b>Trader not running</b>: its last run, pid {start['pid']}, stopped at {when}: "
                              f"{esc(stop.get('reason'))}, exit code {esc(stop.get('exit_code'))}")]

    def redact(self, text: str) -> str:
        """``text`` without the bot token."""
        return redact(text, self._token)

    def close(self) -> None:
        """Close the database and HTTP sessions (a restarted trader keeps running)."""
        self.sender.api.close()
        self.commands_api.close()
        self.store.close()

    # --- one monitoring pass ------------------------------------------------------------------
    def poll(self) -> None:
        """Read new events, check heartbeat and process, send the daily summary; alerts, the event
        position and the state are committed together."""
        now_ms = int(self.clock() * 1000)
        alerts = self._read_events()
        alerts += self._check_trader(now_ms)
        alerts += self._daily(now_ms)
        self._save(alerts, now_ms)

    def _read_events(self) -> list[Alert]:
        return [self._on_event(event) for event in self.reader.read()]

    def _save(self, alerts: list[Alert], now_ms: int = 0) -> None:
        with self.store.transaction() as db:
            for alert in alerts:
                self._enqueue(db, alert, now_ms)
            Store.put(db, "events_position", self.reader.position())
            Store.put(db, "monitor", dataclasses.asdict(self.state))
        if alerts:
            self.wake.set()

    def _enqueue(self, db: sqlite3.Connection, alert: Alert, now_ms: int) -> None:
        level = self.settings.levels.get(alert.kind, "on")
        logger.info("alert %s (%s): %s", alert.kind, level, self.redact(alert.text.replace("\n", " | ")[:300]))
        if level != "off":
            Store.enqueue(db, self.chat_id, self.redact(alert.text), level == "silent", now_ms,
                          int(self.settings.merge_window_s * 1000), alert.merge_key)

    def _on_event(self, event: dict[str, Any]) -> Alert:
        kind = event.get("event")
        tail: list[str] = []
        if kind == "start" and isinstance(event.get("pid"), int):
            self.state.start_pid, self.state.start_ms = event["pid"], event.get("ts_ms")
            for name in ("stopped_pid", "dead_pid", "stale_pid"):  # a reused pid starts with a clean slate
                if getattr(self.state, name) == event["pid"]:
                    setattr(self.state, name, None)
        elif kind in ("stop", "fatal"):  # a fatal error is the trader's last word, in place of its stop event
            beat = read_heartbeat(self.workdir / "heartbeat.json")
            pid = event.get("pid") if isinstance(event.get("pid"), int) else None
            if kind == "fatal" and pid is not None and pid != self.state.start_pid:
                self.state.start_pid, self.state.start_ms = pid, event.get("ts_ms")  # it died before its start event
            self.state.stopped_pid = pid or self.state.start_pid or (beat or {}).get("pid")
            self.state.stopped_code = event.get("exit_code")
            tail = log_tail(self.workdir / "logs" / "trader.log", self.settings.log_tail_lines, self.redact)
        return event_alert(event, tail)

    def _current(self, beat: dict[str, Any] | None) -> tuple[int, int] | None:
        """(pid, start ms) of the newest trader known: heartbeat, start event or a restarted child."""
        known = []
        if beat:
            known.append((beat.get("started_ms") or 0, beat["pid"]))
        if self.state.start_pid is not None:
            known.append((self.state.start_ms or 0, self.state.start_pid))
        if self.child is not None:
            known.append((self.child_started_ms, self.child.pid))
        if not known:
            return None
        started, pid = max(known)
        return pid, started

    def _alive(self, pid: int, started_ms: int) -> bool:
        if self.child is not None and self.child.pid == pid:
            return self.child.poll() is None
        return process_alive(pid, started_ms)

    def _check_trader(self, now_ms: int) -> list[Alert]:
        beat = read_heartbeat(self.workdir / "heartbeat.json")  # its pid and times only: never a command
        current = self._current(beat)
        if current is None:
            return []
        pid, started_ms = current
        if not self._alive(pid, started_ms):
            # what it wrote before it ended (its stop event) may have landed after this pass's read
            return self._read_events() + self._on_dead(pid, now_ms)
        if self.state.stopped_pid == pid:
            return []  # it announced its stop and is shutting down: neither hung nor to restart
        if beat and beat["pid"] == pid:
            age_s, limit_s = (now_ms - beat["time_ms"]) / 1000, self.settings.heartbeat_stale_s
        else:
            age_s, limit_s = (now_ms - started_ms) / 1000, self.settings.startup_grace_s
        if age_s > limit_s:
            return self._on_hung(pid, age_s, limit_s, now_ms)
        alerts = []
        if self.state.stale_pid == pid:
            self.state.stale_pid = None
            alerts.append(Alert("heartbeat_recovered", f"💚 <b>Trader responding again</b>, pid {pid}"))
        if self.state.gave_up:
            self.state.gave_up, self.state.restarts = False, []  # someone restarted it: restarts allowed again
        return alerts

    def _on_dead(self, pid: int, now_ms: int) -> list[Alert]:
        """A trader that ended: alerted (unless its stop or fatal event was), restarted unless it ended on
        purpose (exit code 0) or on a cause the user must fix (exit code 2)."""
        alerts = []
        announced = self.state.stopped_pid == pid  # by its stop or fatal event, alerted already
        code = self.state.stopped_code if announced else self._child_code(pid)
        if self.state.dead_pid != pid:
            self.state.dead_pid, self.state.stale_pid = pid, None
            if not announced:
                alerts.append(self._died_alert(pid))
        if self.restart and code not in (0, EXIT_USAGE):
            alerts += self._maybe_restart(now_ms)
        return alerts

    def _child_code(self, pid: int) -> int | None:
        """The exit code of a trader this watchdog started, or None (not its child, or still running)."""
        return self.child.returncode if self.child is not None and self.child.pid == pid else None

    def _died_alert(self, pid: int) -> Alert:
        status = "unknown: no stop event (killed or crashed)"
        extra = []
        code = self._child_code(pid)
        if code is not None:
            status = f"{code}" + (f" (killed by {signal.Signals(-code).name})" if code < 0 else "")
            if code == EXIT_USAGE:
                status += "; not restarted: the cause needs your fix (see its output)"
            extra = log_tail(self.workdir / "logs" / "trader.restart.log", self.settings.log_tail_lines, self.redact)
        tail = log_tail(self.workdir / "logs" / "trader.log", self.settings.log_tail_lines, self.redact)
        return Alert("stop", f"🛑 <b>Trader stopped</b>, pid {pid}: exit status {esc(status)}"
                             + log_block("last lines of trader.log", tail) + log_block("its output", extra))

    def _on_hung(self, pid: int, age_s: float, limit_s: float, now_ms: int) -> list[Alert]:
        alerts = []
        if self.state.stale_pid != pid:
            self.state.stale_pid = pid
            alerts.append(Alert("heartbeat_stale", f"⚠️ <b>Trader not responding</b>, pid {pid}: no heartbeat for "
                                                   f"{duration(age_s)} (limit {duration(limit_s)})"))
        if self.restart and self._restart_allowed(now_ms):
            self._kill(pid)
            self.state.dead_pid, self.state.stale_pid = pid, None
            alerts += self._maybe_restart(now_ms)
        elif self.restart and len(self._recent(now_ms)) >= self.settings.restart_max_per_hour:
            alerts += self._maybe_restart(now_ms)  # gives up, with its alert (once)
        return alerts

    def _kill(self, pid: int) -> None:
        """SIGTERM, then SIGKILL after kill_grace_s; waits for the end (and reaps an own child)."""
        grace = self.settings.kill_grace_s
        logger.warning("stopping hung trader pid %d", pid)
        if self.child is not None and self.child.pid == pid:
            self.child.terminate()
            try:
                self.child.wait(grace)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait(grace)
            return
        try:
            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(grace)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(grace)
        except psutil.NoSuchProcess:
            return
        except (psutil.AccessDenied, psutil.TimeoutExpired) as exc:
            logger.error("could not stop pid %d: %s", pid, exc)

    def _recent(self, now_ms: int) -> list[int]:
        """Restart times within the last hour."""
        return [t for t in self.state.restarts if now_ms - t < HOUR_MS]

    def _restart_allowed(self, now_ms: int) -> bool:
        """Under the hourly limit, past the backoff, and not given up."""
        recent = self._recent(now_ms)
        if self.state.gave_up or len(recent) >= self.settings.restart_max_per_hour:
            return False
        if not recent:
            return True
        backoff = self.settings.restart_backoff_s * 2 ** (len(recent) - 1)
        return now_ms >= recent[-1] + 1000 * min(backoff, self.settings.restart_backoff_max_s)

    def _maybe_restart(self, now_ms: int) -> list[Alert]:
        if self.state.gave_up:
            return []
        self.state.restarts = self._recent(now_ms)
        limit = self.settings.restart_max_per_hour
        if len(self.state.restarts) >= limit:
            self.state.gave_up = True
            return [Alert("restart", f"⛔ <b>Restart limit reached</b>: {len(self.state.restarts)} restarts in the "
                                     f"last hour (limit {limit}). Not restarting any more: start the trader by hand.")]
        if not self._restart_allowed(now_ms):
            return []  # backoff: a later pass restarts it
        running = running_copy(self.restart_command, self.restart_cwd)
        if running is not None:
            if running != self._copy_logged:
                self._copy_logged = running
                logger.warning("not restarting: pid %d already runs the trader's command line", running)
            return []  # started by hand: its start event and heartbeat will make it the watched trader
        self.state.restarts.append(now_ms)
        command = " ".join(self.restart_command)
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            with (logs / "trader.restart.log").open("ab") as output:
                self.child = subprocess.Popen(self.restart_command, cwd=self.restart_cwd, stdin=subprocess.DEVNULL,
                                              stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return [Alert("restart", f"⛔ <b>Restart failed</b>: {esc(self.redact(str(exc)))}\n"
                                     f"<code>{esc(command)}</code>")]
        self.child_started_ms = now_ms
        logger.warning("restarted the trader as pid %d: %s", self.child.pid, self.redact(command))
        return [Alert("restart", f"🔄 <b>Trader restarted</b> (restart {len(self.state.restarts)} of at most {limit} "
                                 f"per hour), new pid {self.child.pid}\n<code>{esc(command)}</code>")]

    def _daily(self, now_ms: int) -> list[Alert]:
        hour = self.settings.daily_summary_hour_utc
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        today = now.date().isoformat()
        if hour is None or now.hour < hour or self.state.daily == today:
            return []
        self.state.daily = today
        end = datetime(now.year, now.month, now.day, hour, tzinfo=UTC)
        end_ms = int(end.timestamp() * 1000)
        lines = self._report(end_ms - 24 * HOUR_MS, end_ms)
        return [Alert("daily", f"📊 <b>Daily summary</b>, 24 h to {utc_text(end_ms)}\n" + "\n".join(lines))]

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

    # --- threads ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Monitor in this thread, deliver and take commands in two others, until ``stop`` is set."""
        threads = [threading.Thread(target=self._send_loop, args=(stop,), name="watchdog-send", daemon=True),
                   threading.Thread(target=self._command_loop, args=(stop,), name="watchdog-commands", daemon=True)]
        for thread in threads:
            thread.start()
        logger.info("watching %s (restart %s)", self.workdir.resolve(), "on" if self.restart else "off")
        while True:
            try:
                self.poll()
            except Exception:
                logger.exception("monitoring pass failed")
            if stop.wait(self.settings.poll_interval_s):
                break
        self.wake.set()
        threads[0].join(timeout=self.settings.request_timeout_s + 1)  # a long poll in flight is left behind

    def _send_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            if stop.is_set():  # run() sets wake after stop: one of the two checks sees it
                break
            try:
                delay = self.sender.step()
            except Exception:
                if not stop.is_set():
                    logger.exception("delivery failed")
                delay = self.settings.retry_base_s
            if delay > 0:
                self.wake.wait(delay)

    def _command_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delay = self.poll_commands(self.settings.updates_timeout_s)
            except Exception:
                if not stop.is_set():  # at shutdown the database may be closed under a long poll in flight
                    logger.exception("command handling failed")
                delay = self.settings.retry_base_s
            if delay > 0:
                stop.wait(delay)


def _count_arg(args: list[str], default: int, high: int) -> int | None:
    """The optional whole-number argument of a command, or None when it is not one in [1, high]."""
    if not args:
        return default
    try:
        value = int(args[0])
    except ValueError:
        return None
    return value if 1 <= value <= high else None


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
class _RedactFilter(logging.Filter):
    """Removes the token from every record, traceback included."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = redact(text, self.token), ()
        return True


def setup_logging(workdir: Path, token: str) -> None:
    """Log to stderr and logs/watchdog.log (rotating), the token redacted from both."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.handlers.RotatingFileHandler(workdir / "logs" / "watchdog.log", maxBytes=5_000_000, backupCount=3)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler.addFilter(_RedactFilter(token))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # its debug lines show request paths: the token


def build_parser() -> argparse.ArgumentParser:
    """Every flag, explained in --help; a bad value is refused in one line with exit code 2."""
    parser = cli.Parser(prog="watchdog.py", description="Watches GrTr's live trader; Telegram alerts and commands "
                        "(TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID in the environment or .env).")
    parser.add_argument("--dir", default=".", help="the trader's folder (heartbeat.json, logs/, state.sqlite); "
                                                   "default: the current folder")
    parser.add_argument("--restart", action="store_true",
                        help="restart the trader when it dies or hangs, limited per hour: it runs this checkout's "
                             "run_live.py --dir DIR plus the run_live flags given after --, in this folder (never "
                             "a command read from a file)")
    parser.add_argument("--test-message", action="store_true", help="send one message and exit: checks token and chat")
    parser.add_argument("trader_args", nargs=argparse.REMAINDER, metavar="-- RUN_LIVE_FLAGS",
                        help="with --restart: the trader's flags, e.g. -- --side long --mainnet --yes")
    return parser


def restart_command(workdir: Path, trader_args: list[str], environ: Mapping[str, str]) -> list[str]:
    """The one command a restart runs: this Python, this checkout's run_live.py, ``--dir`` and the given flags.

    Flags that cannot work unattended are refused now, not at the first restart: --mainnet needs --yes
    and GRTR_CONFIRM_MAINNET (no one types a confirmation), and --dir is the watchdog's own.
    """
    args = trader_args[1:] if trader_args[:1] == ["--"] else list(trader_args)
    for flag in ("--dir", "--paper", "--export-trades"):
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise cli.UsageError(f"{flag} cannot be a restarted trader's flag (the trader's folder is the "
                                 "watchdog's --dir)")
    cli.check_yes("--mainnet" in args, "--yes" in args)
    if "--mainnet" in args:
        if "--yes" not in args:
            raise cli.UsageError("a restarted mainnet trader cannot be asked to type its confirmation: give "
                                 f"-- --mainnet --yes and set {cli.MAINNET_CONFIRM_VARIABLE}=<account UID>")
        if not environ.get(cli.MAINNET_CONFIRM_VARIABLE, "").strip():
            raise cli.UsageError(f"--mainnet --yes needs {cli.MAINNET_CONFIRM_VARIABLE}=<account UID> in the "
                                 "watchdog's environment (its restarts inherit it)")
    return [sys.executable, str(Path(__file__).resolve().with_name("run_live.py")), "--dir", str(workdir.resolve()),
            *args]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; configuration errors exit 2, a refused test message exits 1."""
    args = build_parser().parse_args(argv)
    load_dotenv(override=False)
    try:
        token, chat_id, api_url = telegram_settings(os.environ)
        settings = Settings.from_config()
        if args.trader_args and not args.restart:
            raise cli.UsageError("flags after -- are the restarted trader's: they need --restart")
        command = restart_command(Path(args.dir), args.trader_args, os.environ) if args.restart else None
    except (config.ConfigError, cli.UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.test_message:
        api = BotApi(token, api_url, settings.request_timeout_s)
        ok, text = send_test_message(api, chat_id)
        api.close()
        print(text if ok else f"error: {text}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else EXIT_TELEGRAM
    workdir = Path(args.dir)
    if not workdir.is_dir():
        print(f"error: --dir {workdir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging(workdir, token)
        dog = Watchdog(workdir, token, chat_id, api_url, restart_command=command, settings=settings)
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot use {workdir / 'watchdog.sqlite'} or {workdir / 'logs'} ({exc}): the folder must be "
              "writable and watchdog.sqlite a database (move a damaged one aside: it holds undelivered alerts)",
              file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    dog.run(stop)
    dog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
