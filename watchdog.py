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

This module is the entry point: the monitoring pass (events, heartbeat, process, the daily summary),
restarts, the threads and the command line; watchdog_files.py reads the trader's files and
watchdog_commands.py answers the Telegram commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import logging.handlers
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
from telegram_outbox import (DEFAULT_API_URL, HOUR_MS, Alert, BotApi, Sender, Store, duration, esc, event_alert,
                             log_block, redact, send_test_message, telegram_settings, utc_text)
from watchdog_commands import Commands
from watchdog_files import EventReader, last_lifecycle, log_tail, read_heartbeat

logger = logging.getLogger("grtr.watchdog")
EXIT_TELEGRAM = 1
EXIT_USAGE = cli.EXIT_USAGE


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
# The trader's process
# ----------------------------------------------------------------------------------------------
def running_copy(cmdline: list[str], cwd: str | None) -> int | None:
    """The pid of a live process running exactly ``cmdline`` (in ``cwd`` when known), or None."""
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = process.info
        if info["cmdline"] == cmdline and info["status"] != psutil.STATUS_ZOMBIE \
                and (cwd is None or info["cwd"] in (None, cwd)):
            return info["pid"]
    return None



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


class Watchdog(Commands):
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
