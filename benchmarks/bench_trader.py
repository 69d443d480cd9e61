"""Live trader speed on a lockstep paper replay: bar close -> order request, and bars per second.

Times, for every bar that sends an order, the span from the moment the trader receives the
confirmed kline to the moment the order request leaves (p50/p99), and the replay rate of a
3,000-bar paper run (the LONG prod-like params, partial take-profits and pyramiding on).
The trader hears the private execution stream as run_live.py wires it (the sim's default delivery:
the stream first, execution/list a request late). Also the tick guard's decision on each bar's
ticker (the price from the feed to "no action" or a close; the live loop polls every 50 ms, which
bounds the wait before it).
Progress on stderr; the last line of stdout is one JSON object.

    python benchmarks/bench_trader.py [--bars 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import progress  # noqa: E402
import run_live  # noqa: E402
from bybit_sim import SimExchange  # noqa: E402
from data_fetcher import TIMEFRAMES, load_sample  # noqa: E402
from market_feed import FillFeed, MarketFeed  # noqa: E402
from trader import SideConfig, Trader  # noqa: E402

HISTORY = 1300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=3000)
    args = parser.parse_args()
    progress.announce_compiles()
    candles = load_sample("BTCUSDT", "1h").iloc[:HISTORY + args.bars]
    params = config.fixed_params("LONG")
    params.update(partial_take_profit=True, position_scaling=True, timeframe="1h", symbol="BTCUSDT")
    spans: list[float] = []
    guard_spans: list[float] = []
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY) as sim, tempfile.TemporaryDirectory() as folder:
        os.environ["BYBIT_REST_URL"] = sim.rest_url
        os.environ["BYBIT_WS_URL"] = sim.ws_url
        session = run_live.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret, retry_delay=0)
        trader = Trader(session, "BTCUSDT", "1h", [SideConfig("long", params)], Path(folder), env="paper",
                        max_capital=None)
        fills = FillFeed(trader.exchange.on_stream, ws_factory=lambda kind: run_live.make_ws(
            kind, env="testnet", api_key=sim.api_key, api_secret=sim.api_secret))  # as run_live.py wires it
        trader.start(history_days=int(HISTORY * TIMEFRAMES["1h"] / 86_400_000) + 2)
        received: dict[str, float] = {}
        place_order = session.place_order

        def timed_place_order(**kwargs):
            if "t" in received:
                spans.append((time.perf_counter() - received.pop("t")) * 1000)
            return place_order(**kwargs)

        session.place_order = timed_place_order
        on_closed_bar = trader.on_closed_bar

        def timed_bar(bar, latest=True):
            received["t"] = time.perf_counter()
            on_closed_bar(bar, latest)
            received.pop("t", None)
            price = feed.price(max_age_seconds=10.0)  # the ticker of this bar: the tick guard's decision on it
            if price is not None:
                began = time.perf_counter()
                trader.tick_guard(price, time.monotonic(), grace_seconds=5.0)
                guard_spans.append((time.perf_counter() - began) * 1000)

        feed = MarketFeed("BTCUSDT", "1h")
        trader.on_closed_bar = timed_bar
        started = time.perf_counter()
        with progress.bar(args.bars, "paper replay", "bar") as shown:
            run_live.drive_lockstep(trader, sim, feed.bars, on_bar=shown.update)
        elapsed = time.perf_counter() - started
        feed.close()
        fills.close()
        trader.stop("benchmark")
    p50, p99 = np.percentile(spans, [50, 99])
    figures = {"bars": args.bars, "orders_timed": len(spans), "bar_close_to_order_p50_ms": round(float(p50), 2),
               "bar_close_to_order_p99_ms": round(float(p99), 2), "paper_bars_per_s": round(args.bars / elapsed, 1),
               "tick_to_stop_decision_p50_ms": round(float(np.percentile(guard_spans, 50)), 4),
               "tick_to_stop_decision_p99_ms": round(float(np.percentile(guard_spans, 99)), 4)}
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
