"""Backtest speed and memory: the LONG strategy with every feature on, on 1,000,000 one-minute bars.

The minute bars are built from the bundled real 30-minute candles: each candle becomes 30 minute
bars whose path runs open -> first extreme -> second extreme -> close with seeded noise, staying
inside the candle's range, so the minute data keeps the real data's trends and volatility.

Prints bars per second of the bar loop alone and of the whole backtest (indicators, signals,
loop, metrics) in steady state after compilation, peak RSS, and the same LONG logic written as a
backtesting.py Strategy on the hourly sample, timed in this run, with the ratio. Progress on stderr;
the last line of stdout is one JSON object.

    python benchmarks/bench_backtest.py [--bars 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backtester  # noqa: E402
import config  # noqa: E402
import core  # noqa: E402
import progress  # noqa: E402
from data_fetcher import load_sample  # noqa: E402

MINUTES_PER_CANDLE = 30


def say(text: str) -> None:
    """Progress on stderr: stdout holds the figures, its last line the JSON."""
    print(f"{text}...", file=sys.stderr, flush=True)


def minute_bars(candles: pd.DataFrame, n_bars: int, seed: int = 7) -> pd.DataFrame:
    """Expand 30-minute candles into minute bars that stay inside each candle's range."""
    rng = np.random.default_rng(seed)
    need = -(-n_bars // MINUTES_PER_CANDLE)
    src = candles.iloc[:need]
    o, h, lo, c = (src[k].to_numpy() for k in ("open", "high", "low", "close"))
    k = np.arange(MINUTES_PER_CANDLE + 1) / MINUTES_PER_CANDLE
    up_first = c < o  # a falling candle first rallies to its high, then drops (and vice versa)
    first = np.where(up_first, h, lo)
    second = np.where(up_first, lo, h)
    knots_t = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    knots = np.stack([o, first, second, c], axis=1)
    path = np.stack([np.interp(k, knots_t, row) for row in knots])
    noise = rng.normal(0.0, 0.15, path.shape) * (h - lo)[:, None]
    noise[:, [0, 10, 20, 30]] = 0.0
    path = np.clip(path + noise, lo[:, None], h[:, None])
    opens = path[:, :-1].ravel()
    closes = path[:, 1:].ravel()
    wiggle = np.abs(rng.normal(0.0, 0.05, opens.shape)) * np.repeat(h - lo, MINUTES_PER_CANDLE)
    highs = np.minimum(np.maximum(opens, closes) + wiggle, np.repeat(h, MINUTES_PER_CANDLE))
    lows = np.maximum(np.minimum(opens, closes) - wiggle, np.repeat(lo, MINUTES_PER_CANDLE))
    start = src.index[0]
    index = pd.date_range(start, periods=opens.size, freq="1min", name="time")
    frame = pd.DataFrame({"open": opens, "high": highs, "low": lows, "close": closes,
                          "volume": np.repeat(src["volume"].to_numpy() / MINUTES_PER_CANDLE, MINUTES_PER_CANDLE)},
                         index=index)
    return frame.iloc[:n_bars]


def long_params() -> dict:
    """The LONG fixed params with every management feature switched on."""
    params = config.fixed_params("LONG")
    params.update(position_scaling=True, partial_take_profit=True, timeframe="1m")
    return params


def time_best(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (steady state: the first call is made before)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_ours(frame: pd.DataFrame, repeats: int) -> dict:
    """Loop alone and the whole backtest (fresh indicator cache each run) on ``frame``."""
    params = long_params()
    data = backtester.MarketData(frame, "BTCUSDT", "1m")
    p = backtester.build_core_params(params, data.bar_ms, "BTCUSDT")
    atr = data.indicator("atr", params["atr_period"])
    signal = data.signals(params)
    n = len(data)
    equity = np.empty(n)
    position = np.empty(n)

    def loop_only():
        state = core.new_state(p[core.P_CAPITAL])
        return core.run_loop(data.ts, data.open, data.high, data.low, data.close, atr, signal, data.funding_ts,
                             data.funding_rates, p, state, equity, position, True)

    def whole():
        fresh = backtester.MarketData(frame, "BTCUSDT", "1m")
        return backtester.simulate(fresh, params)

    loop_s = time_best(loop_only, repeats)
    whole_s = time_best(whole, repeats)
    result = backtester.simulate(data, params)
    return {"bars": n, "loop_s": loop_s, "loop_bars_per_s": n / loop_s, "whole_s": whole_s,
            "whole_bars_per_s": n / whole_s, "trades": int(result.metrics["num_trades"]),
            "exit_reasons": result.metrics["exit_reasons"]}


def bench_backtesting_py(hourly: pd.DataFrame, repeats: int) -> dict:
    """The LONG entry/exit logic as a backtesting.py Strategy on the hourly sample, and ours on the same."""
    from backtesting import Backtest, Strategy

    import indicators

    params = config.fixed_params("LONG")

    class LongStrategy(Strategy):
        def init(self):
            close = np.asarray(self.data.Close, dtype=np.float64)
            high = np.asarray(self.data.High, dtype=np.float64)
            low = np.asarray(self.data.Low, dtype=np.float64)
            self.macro = self.I(indicators.ema, close, params["macro_ema_period"])
            self.tactical = self.I(indicators.ema, close, params["regime_filter_period"])
            self.rsi = self.I(indicators.rsi, close, params["rsi_period"])
            self.atr = self.I(indicators.atr, high, low, close, params["atr_period"])

        def next(self):
            price = self.data.Close[-1]
            atr = self.atr[-1]
            if not self.position:
                if price > self.macro[-1] and price > self.tactical[-1] and self.rsi[-1] <= params["grid_upper_rsi"]:
                    stop = price - atr * params["atr_stop_multiplier"]
                    size = max(1, int(self.equity * params["risk_per_trade"] / (price - stop)))
                    size = min(size, int(self.equity * 0.95 // price))
                    if size >= 1:
                        self.buy(size=size, sl=stop, tp=price + atr * params["tp_atr_multiplier"])
                return
            trade = self.trades[-1]
            if price - trade.entry_price > atr * params["breakeven_atr_multiplier"]:
                trail = max(self.data.High[-1] - atr * params["aggressive_trail_atr_multiplier"], trade.entry_price)
                if trade.sl is None or trail > trade.sl:
                    trade.sl = min(trail, price * 0.999)
            if self.rsi[-1] > params["grid_upper_rsi"]:
                self.position.close()

    bt_frame = hourly.rename(columns=str.capitalize)
    bt_frame.index = bt_frame.index.tz_localize(None)

    def run_bt():
        return Backtest(bt_frame, LongStrategy, cash=1_000_000, commission=config.TAKER_FEE,
                        finalize_trades=True).run()

    def run_ours():
        fresh = backtester.MarketData(hourly, "BTCUSDT", "1h")
        return backtester.simulate(fresh, {**params, "timeframe": "1h"})

    bt_s = time_best(run_bt, max(1, repeats // 2))
    ours_s = time_best(run_ours, repeats)
    return {"hourly_bars": len(hourly), "backtesting_py_s": bt_s, "ours_hourly_s": ours_s, "ratio": bt_s / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=1_000_000, help="minute bars to backtest (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the best is reported")
    args = parser.parse_args()

    progress.announce_compiles()
    sample = load_sample("BTCUSDT", "30m")
    say(f"building {args.bars:,} minute bars from the 30-minute sample")
    frame = minute_bars(sample, args.bars)
    say(f"timing the bar loop and the whole backtest, best of {args.repeats}")
    ours = bench_ours(frame, args.repeats)
    peak_rss_mb = psutil.Process().memory_info().rss / 2**20
    try:
        import resource

        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        pass
    say("timing the same LONG logic in backtesting.py on the hourly sample")
    versus = bench_backtesting_py(load_sample("BTCUSDT", "1h"), args.repeats)

    print(f"minute bars:            {ours['bars']:,} (from real 30m BTC candles)")
    print(f"bar loop:               {ours['loop_s'] * 1e3:8.1f} ms  {ours['loop_bars_per_s'] / 1e6:7.1f} M bars/s")
    print(f"whole backtest:         {ours['whole_s'] * 1e3:8.1f} ms  {ours['whole_bars_per_s'] / 1e6:7.1f} M bars/s "
          "(indicators, signals, loop, metrics)")
    print(f"trades:                 {ours['trades']}  exits: {ours['exit_reasons']}")
    print(f"peak RSS:               {peak_rss_mb:8.1f} MB")
    print(f"hourly sample:          {versus['hourly_bars']:,} bars")
    print(f"backtesting.py:         {versus['backtesting_py_s'] * 1e3:8.1f} ms per run")
    print(f"GrTr on the same:       {versus['ours_hourly_s'] * 1e3:8.2f} ms per run")
    print(f"speed ratio:            {versus['ratio']:8.0f}x")
    figures = {"bars": ours["bars"], "loop_s": round(ours["loop_s"], 5),
               "loop_mbars_per_s": round(ours["loop_bars_per_s"] / 1e6, 2), "whole_s": round(ours["whole_s"], 5),
               "whole_mbars_per_s": round(ours["whole_bars_per_s"] / 1e6, 2), "trades": ours["trades"],
               "peak_rss_mb": round(peak_rss_mb, 1), "hourly_bars": versus["hourly_bars"],
               "backtesting_py_s": round(versus["backtesting_py_s"], 4),
               "ours_hourly_s": round(versus["ours_hourly_s"], 5), "ratio_vs_backtesting_py": round(versus["ratio"], 1)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
