"""Chaos: `run_live.py` as a real process on bybit_sim, under REST faults and WebSocket drops, SIGKILLed
and restarted at seeded random moments; afterwards nothing is lost, duplicated or left unprotected.

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

import numpy as np

import backtester
import core
import run_live
from bybit_sim import FaultConfig, SimExchange
from data_fetcher import load_sample
from live_helpers import HISTORY, params_file, prod_params
from trader_store import Store

ROOT = Path(__file__).resolve().parents[1]
BARS = 1000
RECONCILE_SECONDS = 2.0


class ChaosRun:
    """The trader process, the kills, and the lockstep driver."""

    def __init__(self, sim: SimExchange, workdir: Path, params: Path, seed: int, kills: int,
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
        self.command = [sys.executable, str(ROOT / "run_live.py"), "--side", "long", "--params", str(params),
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
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, faults=faults, seed=seed) as sim:
        run = ChaosRun(sim, workdir, params_file(tmp_path, "LONG"), seed, kills, kill_gap)
        run.replay()
        stats = sim.stats()
        orders = list(sim.engine.orders.values())
        executions = [e["execId"] for e in sim.engine.executions]
        position = sim.engine.positions[0].size
    store = Store(workdir / "state.sqlite")
    data = backtester.MarketData(candles, "BTCUSDT", "1h")
    rows = backtester.simulate(data, prod_params("LONG"), start=HISTORY).rows
    return run, stats, orders, executions, position, store, rows


def assert_nothing_lost_or_duplicated(run, stats, orders, executions, position, store, rows):
    booked = [r[0] for r in store.db.execute("SELECT exec_id FROM executions").fetchall()]
    assert sorted(booked) == sorted(executions)  # every execution of the sim booked, each exactly once
    known = {r[0] for r in store.db.execute("SELECT order_link_id FROM orders").fetchall()}
    assert {o.link_id for o in orders if o.link_id} <= known  # no order unknown to the trader (stops are the sim's)
    paper = store.trade_rows()
    assert run_live.trade_differences(paper, rows[rows[:, 9] != core.R_END], 0.1) == []
    entries = [o for o in orders if o.link_id.endswith("-open")]
    assert len(entries) == len({row[0] for row in rows})  # one entry order per trade: none sent twice
    assert stats["longest_unprotected_bars"] == 0  # never a bar played with a position and no stop
    state = store.load_state("long")
    assert position == state[core.S_QTY]  # the final positions agree
    files = [run.workdir / "process-output.txt", run.workdir / "heartbeat.json", run.workdir / "state.sqlite",
             *(run.workdir / "logs").iterdir()]
    for path in files:  # every output of the run: console, heartbeat, database, logs and events
        assert b"sim-secret" not in path.read_bytes() and b"sim-key" not in path.read_bytes(), path


def test_chaos_faults_drops_and_kills_lose_nothing(tmp_path):
    faults = FaultConfig(rate=0.1, timeout_seconds=0.5, ws_drop_every=37)
    run, stats, *rest = chaos_replay(tmp_path, faults, seed=11, kills=12, kill_gap=(40, 260))
    assert run.kills >= 10 and run.restarts >= 10
    injected = sum(v for k, v in stats["faults"].items() if k != "ws_drop")
    assert injected >= 0.1 * 0.7 * sum(stats["requests"].values())  # about 10 % of REST calls failed
    assert stats["faults"]["ws_drop"] >= BARS // 37
    assert_nothing_lost_or_duplicated(run, stats, *rest)
    print(f"chaos: {stats['bars_played']} bars, {injected} REST faults {stats['faults']}, "
          f"{run.kills} kills, {run.restarts} restarts, {stats['orders']} orders, {stats['executions']} executions, "
          f"{stats['duplicates']} duplicate orderLinkIds refused, executions lost: 0")


def test_kills_without_faults_still_equal_the_backtest(tmp_path):
    run, stats, *rest = chaos_replay(tmp_path, FaultConfig(), seed=5, kills=10, kill_gap=(20, 140))
    assert run.kills >= 10
    assert_nothing_lost_or_duplicated(run, stats, *rest)
    assert np.isfinite(rest[-1][:, 8]).all()
