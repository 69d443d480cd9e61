"""Helpers shared by the live trader's tests: strategy params, the trader on a sim, its events."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import config
import run_live
from data_fetcher import TIMEFRAMES
from market_feed import FillFeed, MarketFeed
from trader import Trader
from trader_utils import make_ws

HISTORY = 1300


def prod_params(key):
    params = config.fixed_params(key)
    params.update(partial_take_profit=True, position_scaling=True, timeframe="1h", symbol="BTCUSDT")
    return params


def params_file(tmp_path, key):
    path = tmp_path / f"{key}.json"
    path.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in prod_params(key).items()}))
    return path


def events(folder):
    return [json.loads(line) for line in (folder / "logs" / "events.jsonl").read_text().splitlines()]


def wait_for_subscription(topics, topic, seconds=10.0):
    """Until a sim's socket map (``sim.public`` or ``sim.private``) has a socket subscribed to ``topic``."""
    deadline = time.monotonic() + seconds
    while not any(topic in subscribed for subscribed in list(topics.values())):
        assert time.monotonic() < deadline, f"no subscription to {topic}"
        time.sleep(0.005)


def start_trader(sim, monkeypatch, workdir, sides, timeout=10.0, retry=None, fill_wait=3.0, stream=True):
    """A started trader on ``sim`` (pybit pointed at it) and its market feed's bar queue.

    With ``stream`` the trader hears the private execution stream (as run_live.py wires it); closing the
    returned market feed closes that stream too.
    """
    monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
    monkeypatch.setenv("BYBIT_WS_URL", sim.ws_url)
    session = run_live.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, timeout=timeout)
    trader = Trader(session, "BTCUSDT", "1h", sides, workdir, env="paper", retry=retry,
                    fill_wait_seconds=fill_wait)
    fills = None
    if stream:
        fills = FillFeed(trader.exchange.on_stream, ws_factory=lambda kind: make_ws(
            kind, env="testnet", api_key=sim.api_key, api_secret=sim.api_secret))
        wait_for_subscription(sim.private, "execution")
    trader.start(history_days=int(HISTORY * TIMEFRAMES["1h"] / 86_400_000) + 2)
    feed = MarketFeed("BTCUSDT", "1h")
    if fills is not None:
        close = feed.close

        def close_both():
            fills.close()
            close()

        feed.close = close_both
        feed.fills = fills
    return trader, feed, feed.bars


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` made unwritable for this user while the block runs: a read-only tmpfs for root (who writes
    through file modes), else its mode; writable again afterwards."""
    mounted = mount_tmpfs(folder, "size=64k,ro")
    if not mounted:
        folder.chmod(0o500)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o700)


def mount_tmpfs(target: Path, options: str) -> bool:
    """A tmpfs at ``target`` (root only: root writes through file modes, so a read-only or full folder needs a
    real file system); False when it cannot be mounted here."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return mount.returncode == 0
