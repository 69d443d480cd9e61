"""Adversarial candle paths for the parity tests: gaps, limit bars, flat stretches, tenfold trends and crashes.

A path is a list of segments (kind, length, seed); each segment's bars come from its own seeded
generator, so hypothesis can shrink a path segment by segment and a failing path is written out
as three numbers per segment.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

import core

HOUR = 3_600_000
T0 = 1_577_836_800_000  # 2020-01-01 00:00 UTC, a funding time
SEGMENT_KINDS = ("walk", "flat", "trend_up", "crash", "limit_bars", "gap", "open_gaps", "spikes")


def on_tick(prices: np.ndarray, tick: float) -> np.ndarray:
    """Prices rounded to the tick, as the floats the exchange would quote (core.round_price), never below a tick."""
    scale = core.step_scale(tick)
    return np.maximum(np.round(prices / tick) * round(tick * scale) / scale, tick)


def build_path(segments: list[tuple[str, int, int]], start_price: float, tick: float, bar_ms: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, open, high, low, close) from segments (kind, length, seed); prices on the tick, always > 0.

    walk: a random walk; flat: O = H = L = C; trend_up / crash: a tenfold rise or fall over the
    segment; limit_bars: each bar opens at its high or at its low; gap: ``length`` missing bars and a
    price jump at the next open; open_gaps: every open gaps from the last close; spikes: wide bars.
    """
    parts = []
    t = T0
    price = start_price
    for kind, length, seed in segments:
        rng = np.random.default_rng(seed)
        if kind == "gap":
            t += length * bar_ms  # missing bars: funding times and the market move on meanwhile
            price *= math.exp(rng.normal(0.0, 0.05))
            continue
        drift = {"trend_up": math.log(10.0) / length, "crash": -math.log(10.0) / length}.get(kind, 0.0)
        vol = 0.0 if kind == "flat" else (0.03 if kind == "spikes" else 0.012)
        jumps = rng.normal(0.0, 0.03, length) if kind == "open_gaps" else np.zeros(length)
        body = drift + rng.normal(0.0, vol, length)
        up, down = np.abs(rng.normal(0.0, vol, length)), np.abs(rng.normal(0.0, vol, length))
        if kind == "spikes":
            up[::3] *= 4
            down[::3] *= 4
        # log prices: each open gaps from the previous close by its jump
        log_close = math.log(price) + np.cumsum(jumps + body)
        log_open = log_close - body
        o, c = np.exp(log_open), np.exp(log_close)
        h, lo = np.maximum(o, c) * np.exp(up), np.minimum(o, c) * np.exp(-down)
        if kind == "limit_bars":  # open at the high or at the low: the bar runs one way only
            at_high = rng.random(length) < 0.5
            h = np.where(at_high, o, np.maximum(h, o))
            lo = np.where(at_high, np.minimum(lo, o), o)
            c = np.clip(c, lo, h)
        o, h, lo, c = (on_tick(x, tick) for x in (o, h, lo, c))
        h, lo = np.maximum.reduce([o, h, lo, c]), np.minimum.reduce([o, h, lo, c])
        parts.append((t + np.arange(length, dtype=np.int64) * bar_ms, o, h, lo, c))
        t += length * bar_ms
        price = float(c[-1])
    return tuple(np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in range(5))


def path_frame(segments: list[tuple[str, int, int]], start_price: float, tick: float, bar_ms: int = HOUR
               ) -> pd.DataFrame:
    """The path as a candle frame (data_fetcher's convention; volume 1)."""
    ts, o, h, lo, c = build_path(segments, start_price, tick, bar_ms)
    index = pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True), name="time").as_unit("ms")
    return pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": np.ones(len(ts))}, index=index)
