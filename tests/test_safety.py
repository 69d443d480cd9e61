"""Live trading safety, as a user meets it: `run_live.py` and `watchdog.py` as real processes on bybit_sim.

One trader per folder and per account and symbol; mainnet started unattended only with the account's
UID; every fatal error in one line, in trader.log and as a `fatal` event the watchdog alerts with; a
damaged state, a read-only folder or a full disk in one line; the watchdog restarts only its own command.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram

import run_live
from bybit_sim import SimExchange
from data_fetcher import load_sample
from live_helpers import HISTORY, events, mount_tmpfs, params_file, read_only_folder
from telegram_outbox import event_alert
from trader_store import Store
from watchdog import Settings, Watchdog

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "123456:TEST-secret-token"
CHAT = "1001"


@pytest.fixture(scope="module")
def sim():
    """A standalone exchange for the module (lockstep: no bar is played, the traders only start)."""
    candles = load_sample("BTCUSDT", "1h").iloc[:HISTORY + 20]
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as exchange:
        yield exchange


@pytest.fixture
def env(sim, tmp_path):
    """The environment of a trader on the sim; account locks in the test's own folder."""
    return {**os.environ, "BYBIT_REST_URL": sim.rest_url, "BYBIT_WS_URL": sim.ws_url, "BYBIT_API_KEY": sim.api_key,
            "BYBIT_API_SECRET": sim.api_secret, "BYBIT_ENV": "testnet", "GRTR_LOCK_DIR": str(tmp_path / "locks")}


@pytest.fixture
def params(tmp_path):
    return params_file(tmp_path, "LONG")


@pytest.fixture
def processes():
    """Processes to end when the test ends, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def command(folder: Path, params: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_live.py"), "--side", "long", "--params", str(params), "--dir", str(folder),
            *extra]


def run(cmd: list[str], env: dict, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          **kwargs)


def start(cmd: list[str], env: dict, processes: list, cwd: Path | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    processes.append(proc)
    return proc


def wait_for_heartbeat(folder: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The trader's first heartbeat: it has started (or fail with its output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            beat = json.loads((folder / "heartbeat.json").read_text())
            if beat["pid"] == proc.pid:
                return beat
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the trader ended with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("no heartbeat")


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, a clean exit; returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal: exit code 2 and exactly one `error:` line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def in_process(argv: list[str], capsys) -> str:
    """run_live's refusal of ``argv`` before any folder or network is touched: exit 2 and its one line."""
    assert run_live.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


# ----------------------------------------------------------------------------------------------
# One trader per account and symbol
# ----------------------------------------------------------------------------------------------
def test_a_second_trader_is_refused_and_a_dead_traders_lock_is_taken_over(sim, env, params, tmp_path, processes):
    folder, other = tmp_path / "a", tmp_path / "b"
    first = start(command(folder, params), env, processes)
    wait_for_heartbeat(folder, first)
    same_folder = one_error_line(run(command(folder, params), env))
    assert f"another trader holds the folder {folder}: pid {first.pid} on host " in same_folder
    assert f"folder {folder}, since 20" in same_folder
    same_account = one_error_line(run(command(other, params), env))  # another folder, same key and symbol
    assert f"already trades BTCUSDT with this API key on this machine: pid {first.pid} on host " in same_account
    assert f"folder {folder}, since" in same_account
    assert sim.api_key not in same_account and sim.api_key not in "".join(os.listdir(tmp_path / "locks"))
    assert [e["event"] for e in events(folder)].count("fatal") == 0  # the refused ones wrote nothing there
    assert not (other / "logs").exists()
    first.kill()  # dies holding its locks: the kernel frees them, the lock files still name it
    first.wait()
    successor = start(command(folder, params), env, processes)
    wait_for_heartbeat(folder, successor)
    err = stop(successor)
    assert f"warning: took over the lock left by pid {first.pid} on host " in err
    assert "that trader is no longer running" in (folder / "logs" / "trader.log").read_text()
    assert Store(folder / "state.sqlite").get("lease")["pid"] == successor.pid


def test_a_lease_of_another_host_holds_while_its_heartbeat_is_fresh(env, params, tmp_path, processes):
    folder = tmp_path / "shared"
    now = int(time.time() * 1000)
    store = Store(folder / "state.sqlite")  # a folder shared with another host, where flock does not reach
    store.set("lease", {"pid": 4242, "host": "other-host", "folder": "/mnt/shared", "since_ms": now - 3_600_000})
    store.close()
    (folder / "heartbeat.json").write_text(json.dumps({"pid": 4242, "time_ms": now - 20_000}))
    refused = one_error_line(run(command(folder, params), env))
    assert "leased by a trader on another host: pid 4242 on host other-host" in refused
    assert re.search(r"last heartbeat 2\d s ago; stop it, or wait 2\d\d s if it is gone", refused)
    # LEASE_STALE_SECONDS = 300: a heartbeat 400 s old is a trader that is gone
    (folder / "heartbeat.json").write_text(json.dumps({"pid": 4242, "time_ms": now - 400_000}))
    trader = start(command(folder, params), env, processes)
    wait_for_heartbeat(folder, trader)
    assert "warning: took over the lock left by pid 4242 on host other-host" in stop(trader)


# ----------------------------------------------------------------------------------------------
# Mainnet, unattended
# ----------------------------------------------------------------------------------------------
def test_mainnet_starts_unattended_only_with_the_accounts_uid(sim, env, params, tmp_path, processes, monkeypatch,
                                                             capsys):
    folder = tmp_path / "main"
    mainnet = command(folder, params, "--mainnet")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # at end of file, as under a supervisor
    no_terminal = in_process(mainnet[2:], capsys)
    assert "no terminal to type 'mainnet' in" in no_terminal and "GRTR_CONFIRM_MAINNET" in no_terminal
    missing = in_process([*mainnet[2:], "--yes"], capsys)
    assert "--mainnet --yes needs GRTR_CONFIRM_MAINNET=<the UID" in missing
    wrong = one_error_line(run([*mainnet, "--yes"], {**env, "GRTR_CONFIRM_MAINNET": "123"}))
    assert "GRTR_CONFIRM_MAINNET='123' is not the UID of the account behind BYBIT_API_KEY" in wrong
    assert str(sim.user_id) not in wrong  # the UID is the user's to give, never shown to copy
    fatal = [e for e in events(folder) if e["event"] == "fatal"]
    assert len(fatal) == 1 and fatal[0]["exit_code"] == 2 and "is not the UID" in fatal[0]["message"]
    trader = start([*mainnet, "--yes"], {**env, "GRTR_CONFIRM_MAINNET": str(sim.user_id)}, processes)
    assert wait_for_heartbeat(folder, trader)["env"] == "mainnet"
    stop(trader)


def test_the_watchdog_restarts_a_mainnet_trader_with_its_own_command_never_the_heartbeats(
        sim, env, params, tmp_path, processes):
    folder = tmp_path / "live"
    folder.mkdir()
    flags = ["--side", "long", "--params", str(params), "--mainnet", "--yes"]
    mainnet = {**env, "GRTR_CONFIRM_MAINNET": str(sim.user_id)}
    with FakeTelegram(TOKEN, (CHAT,)) as tg:
        dog_env = {**mainnet, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT, "TELEGRAM_API_URL": tg.url}
        dog = start([sys.executable, str(ROOT / "watchdog.py"), "--dir", str(folder), "--restart", "--", *flags],
                    dog_env, processes, cwd=tmp_path)
        first = start([sys.executable, str(ROOT / "run_live.py"), "--dir", str(folder), *flags], mainnet, processes)
        beat = wait_for_heartbeat(folder, first)
        assert tg.wait_for(lambda fake: any("Trader started" in m["plain"] for m in fake.messages), timeout=30)
        first.kill()
        first.wait()
        planted = tmp_path / "PLANTED"  # what a tampered heartbeat asks to run (it ran as root before)
        beat["cmdline"], beat["cwd"] = ["/bin/sh", "-c", f"touch {planted}"], str(tmp_path)
        (folder / "heartbeat.json").write_text(json.dumps(beat))
        assert tg.wait_for(lambda fake: sum("Trader started" in m["plain"] for m in fake.messages) == 2, timeout=60)
        texts = tg.plain(CHAT)
        dog.send_signal(signal.SIGTERM)
        dog.communicate(timeout=30)
    restarted = [e for e in events(folder) if e["event"] == "start"][-1]["pid"]
    os.kill(restarted, signal.SIGTERM)  # the watchdog's child lives in its own session
    restart = next(t for t in texts if t.startswith("🔄 Trader restarted"))
    assert f"{ROOT / 'run_live.py'} --dir {folder.resolve()} --side long" in restart and "--mainnet --yes" in restart
    assert not planted.exists()
    assert "took over the lock left by pid" in (folder / "logs" / "trader.restart.log").read_text()
    deadline = time.monotonic() + 30
    while _alive(restarted):  # it stops cleanly on SIGTERM
        assert time.monotonic() < deadline, "the restarted trader did not stop"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie (reaped by nobody but init) counts as ended
        return stat.read().split(") ")[1][0] != "Z"


# ----------------------------------------------------------------------------------------------
# Every crash reported
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "expected", "ret_code"), [
    ({"BYBIT_API_SECRET": "a-rotated-secret"}, "Bybit refused the request signature (retCode 10004)", 10004),
    ({"BYBIT_API_KEY": "a-deleted-key"}, "Bybit does not know this API key (retCode 10003", 10003),
    ({"SYMBOL": "DOGEUSDT"}, "Bybit refused the symbol DOGEUSDT (retCode 10001: params error: Symbol Invalid)", 10001),
], ids=["bad-secret", "bad-key", "unknown-symbol"])
def test_a_fatal_error_is_one_line_a_log_line_and_an_event_the_watchdog_alerts(sim, env, params, tmp_path, change,
                                                                              expected, ret_code):
    folder = tmp_path / "t"
    (folder / "logs").mkdir(parents=True)
    with FakeTelegram(TOKEN, (CHAT,)) as tg:
        settings = Settings.from_config(poll_interval_s=0.05, min_send_interval_s=0.0, daily_summary_hour_utc=None)
        dog = Watchdog(folder, TOKEN, CHAT, tg.url, settings=settings)
        extra = ["--symbol", change.pop("SYMBOL")] if "SYMBOL" in change else []
        line = one_error_line(run(command(folder, params, *extra), {**env, **change}))
        dog.poll()
        while dog.store.pending():
            time.sleep(dog.sender.step())
        dog.close()
    assert len(tg.messages) == 1
    assert expected in line
    for secret in (sim.api_key, sim.api_secret, "a-rotated-secret", "a-deleted-key"):
        assert secret not in line and secret not in (folder / "logs" / "trader.log").read_text()
    assert f"ERROR fatal: {line.removeprefix('error: ')}" in (folder / "logs" / "trader.log").read_text()
    fatal = [e for e in events(folder) if e["event"] == "fatal"]
    assert len(fatal) == 1 and fatal[0]["ret_code"] == ret_code and fatal[0]["exit_code"] == 2
    alert = tg.messages[0]["plain"]
    assert alert.startswith(f"💥 Trader stopped on an error {extra[1] if extra else 'BTCUSDT'}, pid ")
    assert expected in alert
    assert f"retCode {ret_code} · exit code 2" in alert and "not restarted: the cause needs your fix" in alert
    assert "exit status unknown" not in alert


def test_the_fatal_alert_type_has_a_level_and_a_template():
    alert = event_alert({"event": "fatal", "symbol": "BTCUSDT", "pid": 7, "message": "disk <full>", "ret_code": None,
                         "exit_code": 1}, ["last line"])
    assert alert.kind == "fatal" and "disk &lt;full&gt;" in alert.text and "exit code 1" in alert.text
    assert "not restarted" not in alert.text and "last line" in alert.text
    assert Settings.from_config().levels["fatal"] == "on"


# ----------------------------------------------------------------------------------------------
# A damaged state, a read-only folder, a full disk
# ----------------------------------------------------------------------------------------------
def test_a_damaged_state_is_refused_until_fresh_state_moves_it_aside(env, params, tmp_path, processes):
    damages = {"empty": (b"", "is empty (0 bytes)"),
               "garbage": (b"GrTr? no: " * 400, "is not a readable trader database (file is not a database)"),
               "a-folder": (None, "is a folder")}  # unreadable as a database whoever runs it (root reads any file)
    for name, (content, expected) in damages.items():
        state = tmp_path / name / "state.sqlite"
        state.parent.mkdir()
        state.mkdir() if content is None else state.write_bytes(content)
        line = one_error_line(run(command(state.parent, params), env))
        assert f"{state} {expected}" in line and "nothing was changed" in line and "--fresh-state" in line, line
        assert state.is_dir() if content is None else state.read_bytes() == content  # untouched
    folder = tmp_path / "garbage"
    trader = start(command(folder, params, "--fresh-state"), env, processes)
    wait_for_heartbeat(folder, trader)
    err = stop(trader)
    kept = [p for p in folder.iterdir() if p.name.startswith("state.sqlite.aside-")]
    assert len(kept) == 1 and f"moved aside to {kept[0]}" in err
    assert kept[0].read_bytes() == damages["garbage"][0]  # never deleted
    assert Store(folder / "state.sqlite").get("last_bar_ts") is not None  # a new state


def test_a_read_only_folder_is_one_line(env, params, tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        line = one_error_line(run(command(folder, params), env))
    assert line == f"error: --dir {folder} is refused: {folder} cannot be written here (its permissions, or a " \
                   "read-only file system); accepted: a folder, or a path where one can be made, that this user can " \
                   "write"  # before any work (it was trader.lock's refusal, once the lock was taken)


@pytest.mark.parametrize("full", ["tmpfs", "rlimit"])
def test_a_full_disk_is_one_line(env, params, tmp_path, full):
    """tmpfs: a real 64 KiB file system that fills up (ENOSPC; root only). rlimit: RLIMIT_FSIZE of 64 KiB for
    the trader's process (EFBIG on every write past it; anyone), with trader.log at the limit already."""
    folder = tmp_path / "disk"
    limit = 64 * 1024
    preexec = None
    if full == "tmpfs":
        if not mount_tmpfs(folder, "size=64k"):
            pytest.skip("a tmpfs needs root and mount")
    else:
        (folder / "logs").mkdir(parents=True)
        (folder / "logs" / "trader.log").write_bytes(b"x" * limit)

        def preexec():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        result = run(command(folder, params), env, preexec_fn=preexec)
    finally:
        if full == "tmpfs":
            subprocess.run(["umount", str(folder)], check=True)
    line = one_error_line(result)
    assert "free space on that disk" in line and "positions stay under their exchange stops" in line
    assert "cannot be written (database or disk is full)" in line or "cannot be written (disk I/O error)" in line \
        or "no space left to write" in line


# ----------------------------------------------------------------------------------------------
# Silent edge cases
# ----------------------------------------------------------------------------------------------
def test_a_params_file_with_a_key_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "twice.json"
    path.write_text('{"mode": "long_only", "atr_period": 14, "atr_stop_multiplier": 3.0, "atr_period": 30}')
    line = in_process(command(tmp_path / "t", path)[2:], capsys)
    assert f"params file {path}: key 'atr_period' appears twice (14 and 30)" in line


def test_the_env_permission_check_looks_at_the_env_the_keys_came_from(sim, env, params, tmp_path, processes):
    checkout = tmp_path / "checkout"  # python-dotenv finds .env from the code's folder upwards, not the cwd
    checkout.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, checkout)
    shutil.copytree(ROOT / "strategies", checkout / "strategies")
    keys = checkout / ".env"
    keys.write_text(f"BYBIT_API_KEY={sim.api_key}\nBYBIT_API_SECRET={sim.api_secret}\n")
    keys.chmod(0o644)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("# not the keys\n")
    (elsewhere / ".env").chmod(0o600)
    clean = {k: v for k, v in env.items() if k not in ("BYBIT_API_KEY", "BYBIT_API_SECRET")}
    folder = tmp_path / "t"
    trader = start([sys.executable, str(checkout / "run_live.py"), "--side", "long", "--params", str(params),
                    "--dir", str(folder)], clean, processes, cwd=elsewhere)
    wait_for_heartbeat(folder, trader)
    stop(trader)
    warnings = [e["detail"] for e in events(folder) if e["event"] == "security_warning"]
    assert any(f"{keys} is readable or writable by group/others (mode 644)" in w for w in warnings), warnings
    assert not any(str(elsewhere) in w for w in warnings)
