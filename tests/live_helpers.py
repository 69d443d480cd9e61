"""Helpers shared by the live trader's tests: strategy params, the trader on a sim, its events."""

from __future__ import annotations

import json

import config
import run_live
from data_fetcher import TIMEFRAMES
from market_feed import MarketFeed
from trader import Trader

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


def start_trader(sim, monkeypatch, workdir, sides, timeout=10.0, retry=None):
    """A started trader on ``sim`` (pybit pointed at it) and its market feed's bar queue."""
    monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
    monkeypatch.setenv("BYBIT_WS_URL", sim.ws_url)
    session = run_live.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, timeout=timeout)
    trader = Trader(session, "BTCUSDT", "1h", sides, workdir, env="paper", capital=config.CAPITAL, retry=retry)
    trader.start(history_days=int(HISTORY * TIMEFRAMES["1h"] / 86_400_000) + 2)
    feed = MarketFeed("BTCUSDT", "1h")
    return trader, feed, feed.bars
