"""Chaos: `run_live.py` as a real process on bybit_sim, under REST faults and WebSocket drops, SIGKILLed
and restarted at seeded random moments; afterwards nothing is lost, duplicated or left unprotected.

Both sides trade together in hedge mode (the prod configs of a folder of their own), the sim answers
strictly as the docs say (executions without positionIdx) and fills are asynchronous (the private
stream first, execution/list a request late).

The sim replays in lockstep: the test plays the next bar once the trader's heartbeat shows it has
handled the last one (a restarted trader catches the bar up from REST first). Kills are placed on
the sim's REST request counter, so they land at any point of the trader's work: mid-start-up,
between an order's acceptance and its record, between a fill and a stop move, mid-partial.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


import backtester
import config
import core
import run_live
from bybit_sim import FaultConfig, SimExchange
from data_fetcher import load_sample
from live_helpers import HISTORY, prod_params
from trader_store import Store

ROOT = Path(__file__).resolve().parents[1]
BARS = 1000
RECONCILE_SECONDS = 2.0
SIDES = ("long", "short")
# run_live.py's own main, with the prod configs read from the given folder (config.BASE_DIR)
LAUNCH = ("import sys; from pathlib import Path; sys.path.insert(0, {root!r}); import config; "
          "config.BASE_DIR = Path(sys.argv[1]); import run_live; sys.exit(run_live.main(sys.argv[2:]))")


def write_prod_configs(folder: Path) -> None:
    """prod_config_long.py and prod_config_short.py as main.py exports them."""
    for side in SIDES:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in prod_params(side.upper()).items()}
        (folder / f"prod_config_{side}.py").write_text(f"PARAMS = {params!r}\n")


class ChaosRun:
    """The trader process, the kills, and the lockstep driver."""

    def __init__(self, sim: SimExchange, workdir: Path, configs: Path, seed: int, kills: int,
                 kill_gap: tuple[int, int]) -> None:
        self.sim = sim
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.kills_left = kills
        self.kill_gap = kill_gap  # REST requests between two kills, drawn uniformly
        self.kills = 0
        self.restarts = 0
        self.requests = 0
        self.kill_at = self._next_kill()
        self.output = (workdir / "process-output.txt").open("ab")
        self.command = [sys.executable, "-c", LAUNCH.format(root=str(ROOT)), str(configs), "--side", "both",
                        "--dir", str(workdir), "--http-timeout", "0.25", "--stale-seconds", "1",
                        "--reconcile-seconds", str(RECONCILE_SECONDS), "--tick-grace-seconds", "5"]
        self.env = {**os.environ, "BYBIT_REST_URL": sim.rest_url, "BYBIT_WS_URL": sim.ws_url,
                    "BYBIT_API_KEY": sim.api_key, "BYBIT_API_SECRET": sim.api_secret, "BYBIT_ENV": "testnet"}
        self.process = self._spawn()
        sim.on_request = self._on_request

    def _next_kill(self) -> int:
        return self.requests + self.rng.randint(*self.kill_gap)

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, cwd=self.workdir, env=self.env, stdout=self.output,
                                stderr=subprocess.STDOUT)

    def _on_request(self, path: str) -> None:
        """Runs in the sim after it handled a request, before the answer leaves: the kill point."""
        self.requests += 1
        if self.kills_left and self.requests >= self.kill_at:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.kills_left -= 1
            self.kills += 1
            self.kill_at = self._next_kill()

    def heartbeat_bar(self) -> int | None:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            beat = json.loads((self.workdir / "heartbeat.json").read_text())
            if beat["pid"] == self.process.pid:
                return beat["last_bar_ts"]
        return None

    def wait_until_handled(self, bar_ts: int) -> None:
        """Until the trader has handled ``bar_ts``, restarting it whenever it was killed."""
        deadline = time.monotonic() + 120
        while (self.heartbeat_bar() or 0) < bar_ts:
            if self.process.poll() is not None:
                self.restarts += 1
                self.process = self._spawn()
            assert time.monotonic() < deadline, f"the trader never handled bar {bar_ts}"
            time.sleep(0.005)

    def replay(self) -> None:
        engine = self.sim.engine
        self.wait_until_handled(int(engine.ts[engine.cursor - 1]))
        while not engine.finished:
            k = self.sim.advance()
            self.wait_until_handled(int(engine.ts[k]))
        self.kills_left = 0
        time.sleep(RECONCILE_SECONDS * 1.5)  # one reconcile pass after the last bar (the time is the setting)
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0
        self.output.close()


def chaos_replay(tmp_path: Path, faults: FaultConfig, seed: int, kills: int, kill_gap: tuple[int, int]):
    candles = load_sample("BTCUSDT", "1h").iloc[:HISTORY + BARS]
    workdir = tmp_path / "trader"
    workdir.mkdir()
    configs = tmp_path / "configs"
    configs.mkdir()
    write_prod_configs(configs)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, faults=faults, seed=seed,
                     balance=2 * config.CAPITAL) as sim:
        run = ChaosRun(sim, workdir, configs, seed, kills, kill_gap)
        run.replay()
        stats = sim.stats()
        orders = list(sim.engine.orders.values())
        executions = [e["execId"] for e in sim.engine.executions]
        positions = {side: sim.engine.positions[idx].size for idx, side in ((1, "long"), (2, "short"))}
    store = Store(workdir / "state.sqlite")
    data = backtester.MarketData(candles, "BTCUSDT", "1h")
    rows = {side: backtester.simulate(data, prod_params(side.upper()), start=HISTORY).rows for side in SIDES}
    return run, stats, orders, executions, positions, store, rows


def assert_nothing_lost_or_duplicated(run, stats, orders, executions, positions, store, rows):
    booked = [r[0] for r in store.db.execute("SELECT exec_id FROM executions").fetchall()]
    assert sorted(booked) == sorted(executions)  # every execution of the sim booked, each exactly once
    known = {r[0] for r in store.db.execute("SELECT order_link_id FROM orders").fetchall()}
    assert {o.link_id for o in orders if o.link_id} <= known  # no order unknown to the trader (stops are the sim's)
    paper = store.trade_rows()
    for side, d in (("long", 1.0), ("short", -1.0)):
        expected = rows[side][rows[side][:, 9] != core.R_END]
        assert len(expected) > 5, side  # each side traded: the comparison proves something
        assert run_live.trade_differences(paper[paper[:, 2] == d], expected, 0.1) == [], side
        entries = [o for o in orders if o.link_id.startswith(f"{side}-") and o.link_id.endswith("-open")]
        assert len(entries) == len({row[0] for row in rows[side]})  # one entry order per trade: none sent twice
        assert positions[side] == store.load_state(side)[core.S_QTY]  # the final positions agree
    assert stats["longest_unprotected_bars"] == 0  # never a bar played with a position and no stop
    files = [run.workdir / "process-output.txt", run.workdir / "heartbeat.json", run.workdir / "state.sqlite",
             *(run.workdir / "logs").iterdir()]
    for path in files:  # every output of the run: console, heartbeat, database, logs and events
        assert b"sim-secret" not in path.read_bytes() and b"sim-key" not in path.read_bytes(), path


def test_chaos_faults_drops_and_kills_lose_nothing(tmp_path):
    kinds = ("http_500", "http_502", "http_429", "rate_limit", "busy", "server_timeout", "timeout")
    faults = FaultConfig(rate=0.1, timeout_seconds=0.5, ws_drop_every=37, kinds=kinds)
    run, stats, *rest = chaos_replay(tmp_path, faults, seed=11, kills=12, kill_gap=(40, 260))
    assert run.kills >= 10 and run.restarts >= 10
    injected = sum(v for k, v in stats["faults"].items() if k != "ws_drop")
    assert injected >= 0.1 * 0.7 * sum(stats["requests"].values())  # about 10 % of REST calls failed
    assert stats["faults"]["ws_drop"] >= BARS // 37
    assert_nothing_lost_or_duplicated(run, stats, *rest)
    print(f"chaos: {stats['bars_played']} bars, {injected} REST faults {stats['faults']}, "
          f"{run.kills} kills, {run.restarts} restarts, {stats['orders']} orders, {stats['executions']} executions, "
          f"{stats['duplicates']} duplicate orderLinkIds refused, executions lost: 0")
