"""The watchdog against a fake Telegram Bot API on 127.0.0.1 and fake (or real paper) traders.

The watchdog's clock is injected (real time plus an offset the tests advance), so stale heartbeats,
backoffs and the daily summary need no waiting; real child processes play the trader where a pid
must live or die.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram, html_to_plain

import config
import watchdog
from telegram_outbox import BotApi, TelegramUnreachable, event_alert, telegram_settings
from watchdog import Settings, Watchdog

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123456:TEST-secret-token"
CHAT = "1001"
STRANGER = "666"

FAKE_TRADER = r'''
import json, os, sys, threading, time
workdir, mode = sys.argv[1], sys.argv[2]
if os.environ.get("FAKE_TRADER_HOLD"):
    sys.stdin.read()  # started by hand but still loading: holds until the test closes its stdin
offset_file = os.path.join(workdir, "clock_offset_ms")
now = int(time.time() * 1000) + (int(open(offset_file).read()) if os.path.exists(offset_file) else 0)
os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
with open(os.path.join(workdir, "logs", "trader.log"), "a") as log:
    log.write(f"fake trader {os.getpid()} up\n")
beat = {"pid": os.getpid(), "time_ms": now, "time": "", "started_ms": now, "symbol": "BTCUSDT", "env": "paper",
        "last_bar_ts": None, "last_bar": None, "paused": False, "equity": 10000.0, "positions": [],
        "cmdline": [sys.executable, *sys.argv], "cwd": os.getcwd()}
tmp = os.path.join(workdir, "heartbeat.json.tmp")
with open(tmp, "w") as handle:
    handle.write(json.dumps(beat))
os.replace(tmp, os.path.join(workdir, "heartbeat.json"))
def emit(event, **fields):
    with open(os.path.join(workdir, "logs", "events.jsonl"), "a") as handle:
        handle.write(json.dumps({"time": "", "ts_ms": now, "event": event, "symbol": "BTCUSDT", "side": None,
                                 **fields}) + "\n")
emit("start", env="paper", pid=os.getpid(), sides=["long"], params_file=None)
if mode == "clean-exit":
    emit("stop", reason="Ctrl-C", exit_code=0)
    sys.exit(0)
if mode.startswith("fatal"):  # fatal1: a restart may help; fatal2: the user must fix the cause
    code = int(mode[-1])
    emit("fatal", pid=os.getpid(), error="InvalidRequestError", ret_code=10004, exit_code=code,
         message="Bybit refused the request signature (retCode 10004): put the new secret in .env")
    sys.exit(code)
threading.Event().wait()
'''


class Clock:
    """Real time plus an offset; advancing it also tells fake traders (through a file) what time it is."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        (self.workdir / "clock_offset_ms").write_text(str(int(self.offset * 1000)))

    def set(self, moment: datetime) -> None:
        self.advance(moment.timestamp() - self())


def wait_until(condition: Callable[[], bool], timeout: float = 60.0,
               process: subprocess.Popen | None = None) -> None:
    """Poll ``condition`` every 10 ms until it holds. ``timeout`` only bounds a hang, generously (a fake trader
    takes a few seconds to start on a busy machine); with ``process`` (the child that must make the condition
    true), its exit before that fails at once, with its exit code."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None and not condition():
            raise AssertionError(f"the process {process.pid} exited ({process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout:g} s")
        time.sleep(0.01)


def fast(**overrides) -> Settings:
    values = dict(poll_interval_s=0.05, min_send_interval_s=0.0, retry_base_s=0.01, retry_max_s=0.05,
                  updates_timeout_s=0, request_timeout_s=5.0, daily_summary_hour_utc=None, merge_window_s=0.0,
                  merge_edit_interval_s=0.0, kill_grace_s=5.0)
    values.update(overrides)
    return Settings.from_config(**values)


@pytest.fixture
def tg():
    with FakeTelegram(TOKEN, (CHAT, STRANGER)) as fake:
        yield fake


@pytest.fixture
def workdir(tmp_path):
    folder = tmp_path / "trader"
    (folder / "logs").mkdir(parents=True)
    return folder


@pytest.fixture
def clock(workdir):
    return Clock(workdir)


@pytest.fixture
def processes():
    """Processes to kill when the test ends, whatever happened."""
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_dog(workdir, tg, clock, restart=False, **settings) -> Watchdog:
    """A watchdog on ``workdir``; with ``restart``, its restarts run the fake trader."""
    command = fake_trader_command(workdir) if restart else None
    return Watchdog(workdir, TOKEN, CHAT, tg.url, restart_command=command, settings=fast(**settings), clock=clock)


def deliver(dog: Watchdog, clock: Clock, steps: int = 500) -> None:
    """Step the sender until the outbox is empty, advancing the clock over every wait it asks for."""
    for _ in range(steps):
        if not dog.store.pending():
            return
        delay = dog.sender.step()
        if delay > 0:
            clock.advance(delay)
    raise AssertionError(f"{dog.store.pending()} messages still in the outbox")


def emit(workdir: Path, event: str, symbol: str = "BTCUSDT", side: str | None = None, **fields) -> None:
    record = {"time": datetime.now(UTC).isoformat(), "ts_ms": int(time.time() * 1000), "event": event,
              "symbol": symbol, "side": side, **fields}
    with (workdir / "logs" / "events.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_heartbeat(workdir: Path, **fields) -> None:
    now = int(time.time() * 1000)
    beat = {"pid": os.getpid(), "time_ms": now, "time": "", "started_ms": now, "symbol": "BTCUSDT", "env": "paper",
            "last_bar_ts": None, "last_bar": None, "paused": False, "equity": None, "positions": [],
            "cmdline": ["python", "run_live.py"], "cwd": str(workdir), **fields}
    (workdir / "heartbeat.json.tmp").write_text(json.dumps(beat))
    os.replace(workdir / "heartbeat.json.tmp", workdir / "heartbeat.json")


def fake_trader_command(workdir: Path, mode: str = "run") -> list[str]:
    script = workdir.parent / "fake_trader.py"
    script.write_text(FAKE_TRADER)
    return [sys.executable, str(script), str(workdir), mode]


def start_fake_trader(workdir: Path, processes: list[int], mode: str = "run", hold: bool = False
                      ) -> subprocess.Popen:
    env = {**os.environ, "FAKE_TRADER_HOLD": "1"} if hold else None
    proc = subprocess.Popen(fake_trader_command(workdir, mode), env=env,
                            stdin=subprocess.PIPE if hold else subprocess.DEVNULL)
    processes.append(proc.pid)
    return proc


def started_pids(workdir: Path) -> list[int]:
    path = workdir / "logs" / "events.jsonl"
    if not path.exists():
        return []
    return [e["pid"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "start"]


def trader_db(workdir: Path, trades: list[tuple], equity: list[tuple[int, float]]) -> None:
    """state.sqlite in the contract's layout."""
    db = sqlite3.connect(workdir / "state.sqlite")
    db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, symbol TEXT, side TEXT, qty REAL, entry_time TEXT, "
               "exit_time TEXT, entry_price REAL, exit_price REAL, fees REAL, funding REAL, pnl REAL, "
               "exit_reason TEXT)")
    db.execute("CREATE TABLE equity (ts_ms INTEGER PRIMARY KEY, equity REAL)")
    db.executemany("INSERT INTO trades (symbol, side, qty, entry_time, exit_time, entry_price, exit_price, fees, "
                   "funding, pnl, exit_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)", trades)
    db.executemany("INSERT INTO equity VALUES (?, ?)", equity)
    db.commit()
    db.close()


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------
# Alerts: texts, escaping, levels
# ----------------------------------------------------------------------------------------------
def test_alerts_carry_the_figures_escape_html_and_follow_their_levels(workdir, tg, clock):
    dog = make_dog(workdir, tg, clock, levels={"entry": "silent"})
    symbol = "<1000PEPE&USDT>"
    emit(workdir, "entry", symbol, "long", qty=1.5, price=0.0123456789012, stop=0.0111, risk=12.5,
         order_link_id="long-1-open")
    emit(workdir, "stop_moved", symbol, "long", old_stop=0.0111, new_stop=0.012, kind="breakeven")  # off by default
    emit(workdir, "exit", symbol, "long", reason="stop<loss> & co", qty=1.5, price=0.013, pnl=-3.25, pnl_pct=-0.0325,
         hold_hours=26.5, entry_price=0.0123)
    emit(workdir, "error", symbol, message="ret_msg <b>bad</b> & 'quoted'")
    dog.poll()
    deliver(dog, clock)
    entry, exit_, error = tg.plain(CHAT)
    assert symbol in entry and "qty 1.5 @ 0.0123456789" in entry and "stop 0.0111" in entry
    assert "risk 12.50 USDT" in entry
    assert f"Exit LONG {symbol}: stop<loss> & co" in exit_ and "PnL -3.25 USDT (-0.03%)" in exit_
    assert "held 1 d 2 h" in exit_
    assert "ret_msg <b>bad</b> & 'quoted'" in error
    assert [m["silent"] for m in tg.messages] == [True, False, False]
    assert "&lt;1000PEPE&amp;USDT&gt;" in tg.messages[0]["text"]
    dog.close()


def test_fake_server_refuses_html_that_telegram_would_refuse():
    with pytest.raises(ValueError, match="can't parse entities"):
        html_to_plain("a < b")
    with pytest.raises(ValueError, match="can't parse entities"):
        html_to_plain("<b>open")
    assert html_to_plain("<b>x</b> &lt;&amp;") == "x <&"


# ----------------------------------------------------------------------------------------------
# The event log
# ----------------------------------------------------------------------------------------------
def test_event_log_survives_rotation_partial_lines_and_watchdog_restarts(workdir, tg, clock):
    log = workdir / "logs" / "events.jsonl"
    dog = make_dog(workdir, tg, clock)  # before the log exists: it will be read from its start
    emit(workdir, "error", message="m1")
    emit(workdir, "error", message="m2")
    with log.open("a") as handle:
        handle.write('{"event": "error", "message": "m3", "sym')  # the trader is still writing this line
    dog.poll()
    with log.open("a") as handle:
        handle.write('bol": "BTCUSDT", "side": null, "ts_ms": 1}\n')
    emit(workdir, "error", message="m4")
    log.replace(log.with_name("events.jsonl.1"))  # rotation: m3 and m4 are still unread in the old file
    emit(workdir, "error", message="m5")
    dog.poll()
    dog.poll()
    dog.close()
    emit(workdir, "error", message="m6")  # while no watchdog runs
    dog = make_dog(workdir, tg, clock)
    dog.poll()
    deliver(dog, clock)
    assert [text.split("\n")[1] for text in tg.plain(CHAT)] == ["m1", "m2", "m3", "m4", "m5", "m6"]
    dog.close()


def test_a_first_start_does_not_replay_an_existing_log(workdir, tg, clock):
    emit(workdir, "error", message="old")
    dog = make_dog(workdir, tg, clock)
    emit(workdir, "error", message="new")
    dog.poll()
    deliver(dog, clock)
    assert [text.split("\n")[1] for text in tg.plain(CHAT)] == ["new"]
    dog.close()


# ----------------------------------------------------------------------------------------------
# Delivery
# ----------------------------------------------------------------------------------------------
def test_outbox_survives_a_telegram_outage_and_a_watchdog_restart(workdir, tg, clock, caplog):
    dog = make_dog(workdir, tg, clock)
    tg.stop()  # Telegram unreachable: connection refused
    for k in range(3):
        emit(workdir, "error", message=f"m{k}")
    dog.poll()
    with caplog.at_level(logging.WARNING, logger="grtr.watchdog"):
        assert dog.sender.step() > 0
        assert dog.sender.step() > 0  # still blocked: backing off
    assert "Telegram unreachable" in caplog.text and "3 messages wait in the outbox" in caplog.text
    assert TOKEN not in caplog.text
    dog.close()
    dog = make_dog(workdir, tg, clock)  # the watchdog restarts while Telegram is still down
    clock.advance(120)
    tg.start()
    tg.fail_next(502, count=2)  # then two 5xx answers: retried with backoff
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    assert [text.split("\n")[1] for text in texts] == ["m0", "m1", "m2"]
    assert all("raised " in text for text in texts)  # late alerts tell when they were raised
    assert [status for _, method, status in tg.calls if method == "sendMessage"][:2] == [502, 502]
    dog.close()


def test_429_waits_the_retry_after_telegram_asks(workdir, tg, clock):
    dog = make_dog(workdir, tg, clock)
    emit(workdir, "error", message="x")
    dog.poll()
    tg.fail_next(429, retry_after=7)
    assert dog.sender.step() == 7
    calls = len(tg.calls)
    clock.advance(6.5)
    assert dog.sender.step() == pytest.approx(0.5, abs=0.05)
    assert len(tg.calls) == calls  # nothing sent before retry_after is over
    clock.advance(0.5)
    assert dog.sender.step() == 0
    assert len(tg.messages) == 1
    dog.close()


def test_at_most_one_message_per_second_per_chat(workdir, tg, clock):
    dog = make_dog(workdir, tg, clock, min_send_interval_s=1.0)
    for k in range(3):
        emit(workdir, "error", message=f"m{k}")
    dog.poll()
    assert dog.sender.step() == 0
    assert dog.sender.step() == pytest.approx(1.0, abs=0.05)
    assert len(tg.messages) == 1
    clock.advance(1.0)
    assert dog.sender.step() == 0
    assert len(tg.messages) == 2


def test_identical_alerts_within_the_window_become_one_message(workdir, tg, clock):
    dog = make_dog(workdir, tg, clock, merge_window_s=300.0)
    for _ in range(5):
        emit(workdir, "error", message="exchange timeout")
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 1 and "×5" in tg.messages[0]["plain"]
    clock.advance(10)
    emit(workdir, "error", message="exchange timeout")  # after delivery: the sent message's count is updated
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 1 and "×6" in tg.messages[0]["plain"] and tg.messages[0]["edits"] == 1
    clock.advance(301)
    emit(workdir, "error", message="exchange timeout")  # a new window: a new message
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 2 and "×" not in tg.messages[1]["plain"]
    dog.close()


def test_test_message_checks_token_and_chat(tg, tmp_path):
    def run(token: str, chat: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": token, "TELEGRAM_CHAT_ID": chat, "TELEGRAM_API_URL": tg.url}
        return subprocess.run([sys.executable, str(ROOT / "watchdog.py"), "--test-message"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    good = run(TOKEN, CHAT)
    assert good.returncode == 0, good.stderr
    assert len(tg.messages) == 1 and "test message" in tg.messages[0]["plain"]
    wrong_token = "123456:WRONG-secret"
    bad = run(wrong_token, CHAT)
    assert bad.returncode == watchdog.EXIT_TELEGRAM
    assert "Unauthorized" in bad.stderr and "TELEGRAM_BOT_TOKEN" in bad.stderr
    assert wrong_token not in bad.stderr + bad.stdout
    bad_chat = run(TOKEN, "424242")
    assert bad_chat.returncode == watchdog.EXIT_TELEGRAM and "chat not found" in bad_chat.stderr


def test_the_command_line_watches_a_folder_and_stops_on_sigterm(tg, workdir):
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT, "TELEGRAM_API_URL": tg.url}
    proc = subprocess.Popen([sys.executable, str(ROOT / "watchdog.py"), "--dir", str(workdir)], env=env,
                            cwd=workdir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (workdir / "watchdog.sqlite").exists() and "watching" in
                   (workdir / "logs" / "watchdog.log").read_text())
        emit(workdir, "error", message="disk full")
        assert tg.wait_for(lambda fake: len(fake.messages) == 1)
        tg.user_message(CHAT, "/help")
        assert tg.wait_for(lambda fake: len(fake.messages) == 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "disk full" in tg.plain(CHAT)[0] and "/status" in tg.plain(CHAT)[1]
    log = (workdir / "logs" / "watchdog.log").read_text()
    assert "alert error" in log and "command '/help'" in log
    assert TOKEN not in log + out + err


def test_fake_telegram_runs_by_hand(tmp_path):
    """python tests/fake_telegram.py --port N: the stand-in for trying the watchdog, from a shell."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_telegram.py"), "--port", "0", "--chat", CHAT,
                             "--token", TOKEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = first.split(" on ")[1].split(";")[0]
        assert url.startswith("http://127.0.0.1:")
        exports = proc.stdout.readline()
        assert f"export TELEGRAM_API_URL={url} TELEGRAM_BOT_TOKEN={TOKEN} TELEGRAM_CHAT_ID={CHAT}" in exports
        proc.stdout.readline()
        api = BotApi(TOKEN, url, 5.0)
        api.call("sendMessage", chat_id=CHAT, text="<b>hello</b> &amp; more", parse_mode="HTML")
        assert proc.stdout.readline().startswith("--- message 1") and proc.stdout.readline() == "hello & more\n"
        proc.stdin.write("/pnl 30\n")
        proc.stdin.flush()
        updates = api.call("getUpdates", timeout=10, http_timeout=15)
        assert [u["message"]["text"] for u in updates] == ["/pnl 30"]
        assert str(updates[0]["message"]["chat"]["id"]) == CHAT
        api.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    refused = subprocess.run([sys.executable, str(ROOT / "tests" / "fake_telegram.py"), "--port", "70000"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--port 70000 is not a port number" in refused.stderr


def test_network_errors_never_show_the_token():
    api = BotApi(TOKEN, "http://127.0.0.1:9", timeout=2)  # discard port: nothing listens
    with pytest.raises(TelegramUnreachable) as caught:
        api.call("getMe")
    assert TOKEN not in str(caught.value) and "<token>" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_settings_errors_name_the_bad_value():
    with pytest.raises(config.ConfigError, match="'entry' = 'loud'"):
        Settings.from_config(levels={"entry": "loud"})
    with pytest.raises(config.ConfigError, match="alert type 'entri' is unknown"):
        Settings.from_config(levels={"entri": "on"})
    with pytest.raises(config.ConfigError, match="'heartbeat_stale_s' = -1"):
        Settings.from_config(heartbeat_stale_s=-1)
    with pytest.raises(config.ConfigError, match="'daily_summary_hour_utc' = 24"):
        Settings.from_config(daily_summary_hour_utc=24)
    with pytest.raises(config.ConfigError, match="TELEGRAM_BOT_TOKEN is not set"):
        telegram_settings({"TELEGRAM_CHAT_ID": CHAT})
    with pytest.raises(config.ConfigError, match="TELEGRAM_API_URL"):
        telegram_settings({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT, "TELEGRAM_API_URL": "x"})


# ----------------------------------------------------------------------------------------------
# Heartbeat and process
# ----------------------------------------------------------------------------------------------
def test_stale_heartbeat_is_alerted_once_then_its_recovery(workdir, tg, clock):
    write_heartbeat(workdir)  # this test process plays a live trader
    dog = make_dog(workdir, tg, clock, heartbeat_stale_s=180.0)
    dog.poll()
    clock.advance(200)
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 1
    assert "Trader not responding" in tg.messages[0]["plain"] and "no heartbeat for 3 min 20 s" in tg.plain()[0]
    write_heartbeat(workdir, time_ms=int(clock() * 1000))
    dog.poll()
    deliver(dog, clock)
    assert "Trader responding again" in tg.plain()[1]
    dog.close()


def test_a_killed_trader_is_alerted_with_the_end_of_its_log(workdir, tg, clock, processes):
    dog = make_dog(workdir, tg, clock)
    trader = start_fake_trader(workdir, processes)
    wait_until(lambda: started_pids(workdir) == [trader.pid])
    dog.poll()
    trader.kill()
    trader.wait()
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    started, stopped = tg.plain(CHAT)
    assert f"Trader started BTCUSDT (paper), pid {trader.pid}" in started
    assert f"Trader stopped, pid {trader.pid}: exit status unknown: no stop event (killed or crashed)" in stopped
    assert f"fake trader {trader.pid} up" in stopped  # the last lines of trader.log
    dog.close()


def test_restart_of_a_dead_then_a_hung_trader_until_the_hourly_limit(workdir, tg, clock, processes):
    dog = make_dog(workdir, tg, clock, restart=True, restart_max_per_hour=2, restart_backoff_s=60.0)
    first = start_fake_trader(workdir, processes)
    wait_until(lambda: started_pids(workdir) == [first.pid])
    dog.poll()
    first.kill()
    first.wait()
    dog.poll()  # dead: alerted and restarted with the same command line
    second = dog.child
    processes.append(second.pid)
    wait_until(lambda: len(started_pids(workdir)) == 2)
    assert started_pids(workdir)[1] == second.pid
    assert json.loads((workdir / "heartbeat.json").read_text())["cmdline"] == first.args
    dog.poll()
    clock.advance(200)  # no heartbeat for 200 s from a live process: hung; the 60 s backoff is over
    dog.poll()
    third = dog.child
    processes.append(third.pid)
    assert second.poll() == -signal.SIGTERM
    wait_until(lambda: len(started_pids(workdir)) == 3)
    dog.poll()
    os.kill(third.pid, signal.SIGKILL)
    third.wait()
    clock.advance(600)
    dog.poll()  # dead again: the limit of 2 restarts per hour is reached
    dog.poll()
    assert dog.child is third
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    expected = ["Trader started", "Trader stopped", "Trader restarted (restart 1 of at most 2 per hour), new pid "
                f"{second.pid}", "Trader started", "Trader not responding",
                f"Trader restarted (restart 2 of at most 2 per hour), new pid {third.pid}", "Trader started",
                f"Trader stopped, pid {third.pid}: exit status -9 (killed by SIGKILL)", "Restart limit reached"]
    assert len(texts) == len(expected), texts
    for text, start in zip(texts, expected, strict=True):
        assert text.startswith(start) or start in text, (text, start)
    dog.close()


def watched_then_killed(workdir, tg, clock, processes) -> tuple[Watchdog, subprocess.Popen]:
    """A restarting watchdog that has seen a fake trader start, and that trader killed."""
    dog = make_dog(workdir, tg, clock, restart=True)
    first = start_fake_trader(workdir, processes)
    wait_until(lambda: started_pids(workdir) == [first.pid], process=first)
    dog.poll()
    first.kill()
    first.wait()
    return dog, first


def test_a_restart_runs_the_watchdogs_own_command_never_the_heartbeats(workdir, tg, clock, processes, tmp_path):
    dog, first = watched_then_killed(workdir, tg, clock, processes)
    planted = tmp_path / "PLANTED"
    beat = json.loads((workdir / "heartbeat.json").read_text())
    beat["cmdline"], beat["cwd"] = ["/bin/sh", "-c", f"touch {planted}"], str(tmp_path)  # the file is the trader's
    (workdir / "heartbeat.json").write_text(json.dumps(beat))
    dog.poll()
    processes.append(dog.child.pid)
    assert dog.child.args == fake_trader_command(workdir)
    wait_until(lambda: len(started_pids(workdir)) == 2, process=dog.child)  # the restarted trader's start event
    assert not planted.exists()
    dog.close()


@pytest.mark.parametrize(("mode", "restarted"), [("fatal1", True), ("fatal2", False)])
def test_a_fatal_error_is_alerted_with_its_reason_and_restarted_unless_it_needs_a_fix(workdir, tg, clock, processes,
                                                                                      mode, restarted):
    dog = make_dog(workdir, tg, clock, restart=True)
    trader = start_fake_trader(workdir, processes, mode=mode)
    trader.wait()
    dog.poll()
    dog.poll()
    if dog.child is not None:
        processes.append(dog.child.pid)
    assert (dog.child is not None) == restarted
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    crash = next(t for t in texts if "Trader stopped" in t)
    assert crash.startswith(f"💥 Trader stopped on an error BTCUSDT, pid {trader.pid}\nBybit refused the request "
                            "signature (retCode 10004): put the new secret in .env")
    assert f"exit code {mode[-1]}" in crash and "exit status unknown" not in "".join(texts)
    assert ("not restarted: the cause needs your fix" in crash) != restarted
    assert sum("Trader stopped" in t for t in texts) == 1
    dog.close()


def test_a_burst_of_rejections_and_skips_is_one_message_each_with_a_count(workdir, tg, clock):
    """93 rejected orders (each its own orderLinkId) and 93 skipped entries, 4.5 s apart: 418 s, more than the
    300 s merge window, but no repeat is more than 300 s after the previous one."""
    dog = make_dog(workdir, tg, clock, merge_window_s=300.0, merge_edit_interval_s=10.0)
    for k in range(93):
        emit(workdir, "order_rejected", side="long", action="open", order_link_id=f"long-{1000 + k}-open",
             ret_code=110007, ret_msg="ab not enough for new order")
        emit(workdir, "entry_skipped", side="long", reason="margin 120.00 USDT needed, 80.00 USDT available")
        dog.poll()
        for _ in range(3):
            clock.advance(1.5)
            dog.sender.step()
    clock.advance(10)
    deliver(dog, clock)
    assert len(tg.messages) == 2
    rejected, skipped = (m["plain"] for m in tg.messages)
    assert rejected.startswith("⛔ Order rejected LONG BTCUSDT: open long-1092-open") and "×93 between" in rejected
    assert skipped.startswith("⏭ Entry skipped LONG BTCUSDT") and "×93 between" in skipped
    edits = sum(m["edits"] for m in tg.messages)
    assert edits <= 2 * (93 * 4.5 / 10 + 2)  # counts updated at most every merge_edit_interval_s
    dog.close()


def test_no_restart_while_a_copy_started_by_hand_is_loading(workdir, tg, clock, processes):
    dog, first = watched_then_killed(workdir, tg, clock, processes)
    by_hand = start_fake_trader(workdir, processes, hold=True)  # same command line, no heartbeat yet
    wait_until(lambda: watchdog.running_copy(first.args, os.getcwd()) == by_hand.pid)
    dog.poll()
    dog.poll()
    assert dog.child is None
    by_hand.stdin.close()
    wait_until(lambda: started_pids(workdir) == [first.pid, by_hand.pid])
    dog.poll()
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    assert len(texts) == 3 and "Trader stopped" in texts[1] and f"pid {by_hand.pid}" in texts[2]
    dog.close()


def test_a_clean_stop_is_alerted_once_and_not_restarted(workdir, tg, clock, processes):
    dog = make_dog(workdir, tg, clock, restart=True)
    trader = start_fake_trader(workdir, processes, mode="clean-exit")
    trader.wait()
    read, calls = dog.reader.read, []

    def read_late():  # the first read of the pass misses the events: they land just after it
        calls.append(None)
        return [] if len(calls) == 1 else read()

    dog.reader.read = read_late
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    assert len(texts) == 2 and "Trader started" in texts[0]
    assert "Trader stopped BTCUSDT: Ctrl-C, exit code 0" in texts[1] and "fake trader" in texts[1]
    assert dog.child is None
    dog.close()


def ended_pid() -> int:
    """The pid of a process that has run and ended (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("exit_code", [0, 1, None])
def test_a_trader_that_ended_before_the_watchdog_started(workdir, tg, clock, exit_code):
    # the reported case: a folder whose trader had finished cleanly got "exit status unknown: no stop
    # event (killed or crashed)", because a first start reads the existing log from its end
    pid = ended_pid()
    emit(workdir, "start", env="paper", pid=pid, sides=["long"], params_file=None)
    emit(workdir, "exit", side="long", reason="take_profit", qty=1.0, price=110.0, pnl=9.8)
    if exit_code is not None:
        emit(workdir, "stop", reason="replay finished", exit_code=exit_code)
    write_heartbeat(workdir, pid=pid)
    dog = make_dog(workdir, tg, clock, restart=True)
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    texts = tg.plain(CHAT)
    if exit_code == 0:
        assert texts == [] and dog.child is None  # finished cleanly: nothing to report, nothing to restart
    elif exit_code == 1:
        assert len(texts) == 2 and f"Trader not running: its last run, pid {pid}, stopped at" in texts[0]
        assert "replay finished, exit code 1" in texts[0] and "Trader restarted" in texts[1]
    else:
        assert "exit status unknown: no stop event (killed or crashed)" in texts[0]
    assert not any("Exit LONG" in t or "Trader started" in t for t in texts)  # old events are not replayed
    dog.close()
    if dog.child is not None:
        dog.child.kill()
        dog.child.wait()


def test_last_lifecycle_looks_into_the_rotated_log(workdir):
    emit(workdir, "start", pid=4242)
    emit(workdir, "stop", reason="Ctrl-C", exit_code=0)
    (workdir / "logs" / "events.jsonl").rename(workdir / "logs" / "events.jsonl.1")
    emit(workdir, "error", message="after the rotation")
    start, stop = watchdog.last_lifecycle(workdir / "logs" / "events.jsonl")
    assert start["pid"] == 4242 and stop["exit_code"] == 0
    emit(workdir, "start", pid=4343)  # a newer run that has not stopped
    start, stop = watchdog.last_lifecycle(workdir / "logs" / "events.jsonl")
    assert start["pid"] == 4343 and stop is None


# ----------------------------------------------------------------------------------------------
# Commands and the daily summary
# ----------------------------------------------------------------------------------------------
def test_commands_from_the_chat_and_a_strangers_refused(workdir, tg, clock, caplog):
    now = int(clock() * 1000)
    hour = 3_600_000
    trader_db(workdir, [
        ("BTCUSDT", "long", 0.5, iso(now - 50 * hour), iso(now - 49 * hour), 100.0, 110.0, 0.1, 0.0, 4.9,
         "take_profit"),
        ("BTCUSDT", "short", 1.0, iso(now - 5 * hour), iso(now - 2 * hour), 120.0, 125.0, 0.1, 0.0, -5.1,
         "stop_loss"),
    ], [(now - 60 * hour, 10_000.0), (now - 40 * hour, 10_100.0), (now - 2 * hour, 9_595.0)])
    write_heartbeat(workdir, symbol="BTC<USDT>", last_bar_ts=now - hour, equity=9_600.5, positions=[
        {"side": "long", "qty": 0.25, "entry_price": 118.0, "stop": 112.5, "take_profit": None, "mark_price": 119.0,
         "unrealized_pnl": 0.25, "entry_time": iso(now - hour)}])
    dog = make_dog(workdir, tg, clock)
    tg.user_message(STRANGER, "/pause")
    with caplog.at_level(logging.WARNING, logger="grtr.watchdog"):
        dog.poll_commands(0)
    assert "ignored a message from chat 666" in caplog.text
    assert not (workdir / "control.json").exists() and dog.store.pending() == 0
    for command in ("/status", "/trades 1", "/pnl 1", "/pnl 3", "/pause", "/resume@grtr_test_bot", "/trades x",
                    "/help"):
        tg.user_message(CHAT, command)
    dog.poll_commands(0)
    assert dog.poll_commands(0) == 0  # the updates were confirmed: nothing runs twice
    deliver(dog, clock)
    status, trades, pnl1, pnl3, pause, resume, usage, help_ = tg.plain(CHAT)
    assert tg.plain(STRANGER) == []
    assert "BTC<USDT> (paper), pid" in status and "running" in status and "equity 9,600.50 USDT" in status
    assert "LONG 0.25 @ 118, stop 112.5, TP —, mark 119, uPnL +0.25 USDT" in status
    assert "Last 1 trades" in trades and "SHORT 1 120→125 -5.10 USDT stop_loss" in trades
    assert "trades: 1 (0 won, 1 lost)" in pnl1 and "PnL: -5.10 USDT" in pnl1
    assert "trades: 2 (1 won, 1 lost)" in pnl3 and "PnL: -0.20 USDT" in pnl3 and "equity: 9,595.00 USDT" in pnl3
    assert "drawdown: -5.00% now" in pnl3
    assert "Paused" in pause and "Resumed" in resume and "Usage: /trades" in usage and "/pause" in help_
    control = json.loads((workdir / "control.json").read_text())
    assert control["paused"] is False and control["by"] == "watchdog"
    dog.close()


def test_pnl_of_a_paper_replay_counts_on_its_own_bars(workdir, tg, clock):
    # the reported case: a paper replay's bars are history, so "/pnl 30" on the wall clock answered
    # "trades: 0 ... drawdown -44.58% now, deepest 0.00%"
    end = int(datetime(2019, 6, 1, tzinfo=UTC).timestamp() * 1000)
    day = 86_400_000
    trader_db(workdir, [
        ("BTCUSDT", "long", 1.0, iso(end - 41 * day), iso(end - 40 * day), 100.0, 110.0, 1.0, 0.0, 100.0,
         "take_profit"),
        ("BTCUSDT", "long", 1.0, iso(end - 12 * day), iso(end - 10 * day), 100.0, 97.0, 1.0, 0.0, -30.0, "stop_loss"),
        ("BTCUSDT", "long", 0.5, iso(end - 12 * day), iso(end - 9 * day), 100.0, 120.0, 0.5, 0.0, 10.0,
         "partial_take_profit"),
        ("BTCUSDT", "short", 1.0, iso(end - 3 * day), iso(end - 2 * day), 120.0, 95.0, 1.0, 0.0, 25.0, "take_profit"),
    ], [(end - 50 * day, 10_000.0), (end - 40 * day, 10_100.0), (end - 31 * day, 9_090.0),
        (end - 10 * day, 9_595.0), (end, 9_797.0)])
    write_heartbeat(workdir, env="paper", equity=9_797.0, last_bar_ts=end - 3_600_000)
    dog = make_dog(workdir, tg, clock)
    pnl = html_to_plain(dog.command("/pnl 30"))
    # the 30 days to 2019-06-01: the long closed in two rows (-30 + 10 = -20, lost) and the short (+25, won);
    # PnL -30 + 10 + 25 = +5, fees 1 + 0.5 + 1 = 2.50; drawdowns from the peak 10,100: 9,797 is -3%, and the
    # period began at 9,090 (-10%), its deepest
    assert "paper replay: its bars to 2019-06-01 00:00 UTC" in pnl
    assert "trades: 2 (1 won, 1 lost)" in pnl and "PnL: +5.00 USDT, fees +2.50 USDT" in pnl
    assert "equity: 9,797.00 USDT" in pnl and "drawdown: -3.00% now, deepest -10.00% in the period" in pnl
    assert "equity 9,797.00 USDT" in html_to_plain(dog.command("/status"))  # the heartbeat's, the table's last
    write_heartbeat(workdir, env="testnet", equity=9_797.0)  # a live trader on the same data: the wall clock
    live = html_to_plain(dog.command("/pnl 30"))
    assert "trades: 0 (0 won, 0 lost)" in live and "paper" not in live
    assert "drawdown: -3.00% (no bar closed in the period; the last at 2019-06-01 00:00 UTC)" in live
    dog.close()


def test_daily_summary_once_a_day_at_the_configured_hour(workdir, tg, clock):
    clock.set(datetime(2030, 3, 5, 7, 59, tzinfo=UTC))
    now = int(clock() * 1000)
    hour = 3_600_000
    trader_db(workdir, [("BTCUSDT", "long", 1.0, iso(now - 5 * hour), iso(now - 3 * hour), 100.0, 103.0, 0.2, 0.0,
                         2.8, "trailing_stop"),
                        ("BTCUSDT", "long", 1.0, iso(now - 30 * hour), iso(now - 26 * hour), 100.0, 90.0, 0.2, 0.0,
                         -10.2, "stop_loss")],
              [(now - 30 * hour, 10_000.0), (now - 20 * hour, 9_000.0), (now - hour, 9_900.0)])
    dog = make_dog(workdir, tg, clock, daily_summary_hour_utc=8)
    dog.poll()
    clock.advance(120)
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 1
    summary = tg.plain()[0]
    assert "Daily summary, 24 h to 2030-03-05 08:00 UTC" in summary
    assert "trades: 1 (1 won, 0 lost)" in summary and "PnL: +2.80 USDT" in summary
    assert "equity: 9,900.00 USDT" in summary and "drawdown: -1.00% now, deepest -10.00% in the period" in summary
    dog.close()
    clock.advance(24 * 3600)
    dog = make_dog(workdir, tg, clock, daily_summary_hour_utc=8)  # restarted watchdog: still once a day
    dog.poll()
    dog.poll()
    deliver(dog, clock)
    assert len(tg.messages) == 2 and "24 h to 2030-03-06 08:00 UTC" in tg.plain()[1]
    dog.close()


# ----------------------------------------------------------------------------------------------
# End to end: the real paper trader with the watchdog beside it
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (ROOT / "run_live.py").exists(), reason="run_live.py (the live trader) does not exist yet")
def test_paper_replay_messages_match_trades_csv(tmp_path, tg):
    from data_fetcher import load_sample

    history = 1300
    candles = load_sample("BTCUSDT", "1h").iloc[:history + 700]
    replay = tmp_path / "btc1h.csv"
    candles.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(replay, index=False)
    params = config.fixed_params("LONG")
    params.update(partial_take_profit=True, position_scaling=True, timeframe="1h", symbol="BTCUSDT")
    params_file = tmp_path / "long.json"
    params_file.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}))
    out = tmp_path / "paper"
    out.mkdir()
    dog = Watchdog(out, TOKEN, CHAT, tg.url, settings=fast(updates_timeout_s=1))
    stop = threading.Event()
    runner = threading.Thread(target=dog.run, args=(stop,), daemon=True)
    runner.start()
    try:
        result = subprocess.run([sys.executable, str(ROOT / "run_live.py"), "--paper", "--replay", str(replay),
                                 "--side", "long", "--params", str(params_file), "--out", str(out),
                                 "--history-bars", str(history)], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert tg.wait_for(lambda fake: any("replay finished" in m["plain"] for m in fake.messages), timeout=60)
        wait_until(lambda: dog.store.pending() == 0, timeout=60)
    finally:
        stop.set()
        runner.join(timeout=10)
        dog.close()
    with (out / "trades.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    trades: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        trades.setdefault((row["side"], row["entry_time"]), []).append(row)
    texts = tg.plain(CHAT)
    entries = [t for t in texts if t.startswith("🟢 Entry LONG BTCUSDT")]
    exits = [t for t in texts if " Exit LONG BTCUSDT" in t.split("\n")[0]]
    partials = [t for t in texts if t.startswith("💰 Partial take-profit LONG BTCUSDT")]
    assert len(trades) >= 5, "the replay window should hold several trades"
    still_open = len(json.loads((out / "heartbeat.json").read_text())["positions"])  # not in trades.csv
    assert len(entries) == len(trades) + still_open and len(exits) == len(trades)
    assert len(partials) == len(rows) - len(trades)
    for text, legs in zip(exits, trades.values(), strict=True):
        last = legs[-1]
        assert f"Exit LONG BTCUSDT: {last['exit_reason']}" in text
        assert f"PnL {float(last['pnl']):+,.2f} USDT" in text
    assert texts[0].startswith("▶️ Trader started BTCUSDT (paper)")
    assert "Trader stopped BTCUSDT: replay finished, exit code 0" in texts[-1]
    assert sum("Trader stopped" in t for t in texts) == 1
    assert not any("Stop moved" in t for t in texts)  # off by default


def test_resilience_events_have_alerts_of_their_own():
    cases = [("tick_guard", {"price": 9000.5, "stop": 9010, "qty": 0.25}, "price 9000.5 crossed the stop 9010"),
             ("stop_restored", {"stop": 8800, "exchange_stop": None}, "8800 (the exchange had none)"),
             ("entry_skipped", {"reason": "decided on a bar <missed>"}, "decided on a bar &lt;missed&gt;"),
             ("security_warning", {"detail": "run `chmod 600 .env`"}, "chmod 600 .env")]
    for kind, figures, expected in cases:
        alert = event_alert({"event": kind, "symbol": "BTCUSDT", "side": "long", **figures}, [])
        assert alert.kind == kind and expected in alert.text, alert.text
        assert kind in config.WATCHDOG_ALERT_LEVELS  # each has a level of its own in config
