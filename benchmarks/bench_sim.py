"""bybit_sim speed: REST round trips through pybit (p50/p99) and lockstep replay throughput.

    python benchmarks/bench_sim.py [--calls 500] [--bars 3000]

Progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import progress  # noqa: E402
import trader_utils  # noqa: E402
from bybit_sim import SimExchange  # noqa: E402
from data_fetcher import load_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="REST calls of each kind")
    parser.add_argument("--bars", type=int, default=3000, help="bars replayed in lockstep")
    args = parser.parse_args()
    candles = load_sample("BTCUSDT", "1h").iloc[:args.bars + 200]
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=200) as sim:
        os.environ["BYBIT_REST_URL"] = sim.rest_url
        session = trader_utils.make_http(api_key="sim-key", api_secret="sim-secret")
        latencies = []
        calls = progress.bar(2 * args.calls, "REST round trips", "call")
        for k in range(2 * args.calls):
            started = time.perf_counter()
            if k % 2:
                session.get_positions(category="linear", symbol="BTCUSDT")  # signed
            else:
                session.get_tickers(category="linear", symbol="BTCUSDT")
            latencies.append((time.perf_counter() - started) * 1000)
            calls.update()
        calls.close()
        ack = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)  # a lean no-op client, kept alive
        started = time.perf_counter()
        finished = False
        with progress.bar(args.bars, "lockstep replay", "bar") as shown:
            while not finished:
                ack.request("POST", "/sim/ack")
                finished = json.loads(ack.getresponse().read())["finished"]
                shown.update()
        replay_s = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99])
    figures = {"rest_calls": len(latencies), "rest_p50_ms": round(float(p50), 3), "rest_p99_ms": round(float(p99), 3),
               "replay_bars": args.bars, "replay_bars_per_s": round(args.bars / replay_s, 1)}
    for key, value in figures.items():
        print(f"{key:20s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
