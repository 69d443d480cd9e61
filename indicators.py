"""Technical indicators in numba: float64 arrays in, arrays of the same length out, NaN until defined.

Each indicator reproduces the seeding of the `ta` library exactly, so the values equal ta's to
float precision (tests hold them to 1e-9 relative) while running in one pass per array:

* ``ema``: span ``period`` (alpha = 2 / (period + 1)), seeded with the first value like pandas
  ``ewm(adjust=False)``, defined from index period - 1.
* ``rsi``: Wilder's smoothing (alpha = 1 / period) of gains and losses, the first bar counting as
  no change, defined from index period - 1; 100 when there are no losses.
* ``atr``: Wilder's ATR seeded with the mean true range of the first ``period`` bars (the first
  bar's true range is its high - low), defined from index period - 1.
* ``adx``: Wilder's ADX seeded with the mean DX of its first ``period`` values, defined from
  index 2 * period - 1.
* ``sma``, ``rolling_std`` (population, ddof=0), ``bollinger`` -> (upper, middle, lower).

The ``*_nb`` kernels can be called from other numba code; the plain names validate their input
first. Indicators are computed once over a whole history and sliced by callers (folds, live
trading), never restarted cold on a slice. ``IndicatorCache`` serves repeated requests.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def ema_nb(x: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average, span ``period``, seeded with x[0]."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    alpha = 2.0 / (period + 1.0)
    value = 0.0
    for i in range(n):
        value = x[i] if i == 0 else alpha * x[i] + (1.0 - alpha) * value
        if i >= period - 1:
            out[i] = value
    return out


@njit(cache=True, nogil=True)
def sma_nb(x: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average over ``period`` values (each window summed afresh: no drift)."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    for i in range(period - 1, n):
        total = 0.0
        for k in range(i - period + 1, i + 1):
            total += x[k]
        out[i] = total / period
    return out


@njit(cache=True, nogil=True)
def rolling_std_nb(x: np.ndarray, period: int) -> np.ndarray:
    """Population standard deviation (ddof=0) over ``period`` values, two-pass per window."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    means = sma_nb(x, period)
    for i in range(period - 1, n):
        mean = means[i]
        squares = 0.0
        for k in range(i - period + 1, i + 1):
            squares += (x[k] - mean) ** 2
        out[i] = np.sqrt(squares / period)
    return out


@njit(cache=True, nogil=True)
def rsi_nb(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's RSI."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    alpha = 1.0 / period
    up = 0.0
    down = 0.0
    for i in range(n):
        change = close[i] - close[i - 1] if i > 0 else 0.0
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        if i == 0:
            up, down = gain, loss
        else:
            up = alpha * gain + (1.0 - alpha) * up
            down = alpha * loss + (1.0 - alpha) * down
        if i >= period - 1:
            out[i] = 100.0 if down == 0.0 else 100.0 - 100.0 / (1.0 + up / down)
    return out


@njit(cache=True, nogil=True)
def true_range_nb(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """True range; the first bar's is its high - low."""
    n = close.shape[0]
    out = np.empty(n)
    for i in range(n):
        spread = high[i] - low[i]
        if i > 0:
            spread = max(spread, abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
        out[i] = spread
    return out


@njit(cache=True, nogil=True)
def atr_nb(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's average true range."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    tr = true_range_nb(high, low, close)
    total = 0.0
    for i in range(period):
        total += tr[i]
    value = total / period
    out[period - 1] = value
    for i in range(period, n):
        value = (value * (period - 1) + tr[i]) / period
        out[i] = value
    return out


@njit(cache=True, nogil=True)
def adx_nb(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's average directional index."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n < 2 * period:
        return out
    smooth_tr = 0.0
    smooth_plus = 0.0
    smooth_minus = 0.0
    adx = 0.0
    dx_sum = 0.0
    for i in range(1, n):
        tr = max(high[i], close[i - 1]) - min(low[i], close[i - 1])
        up = high[i] - high[i - 1]
        down = low[i - 1] - low[i]
        plus = up if (up > down and up > 0.0) else 0.0
        minus = down if (down > up and down > 0.0) else 0.0
        if i <= period:
            smooth_tr += tr
            smooth_plus += plus
            smooth_minus += minus
            if i < period:
                continue
        else:
            smooth_tr = smooth_tr - smooth_tr / period + tr
            smooth_plus = smooth_plus - smooth_plus / period + plus
            smooth_minus = smooth_minus - smooth_minus / period + minus
        di_plus = 100.0 * smooth_plus / smooth_tr if smooth_tr != 0.0 else 0.0
        di_minus = 100.0 * smooth_minus / smooth_tr if smooth_tr != 0.0 else 0.0
        total = di_plus + di_minus
        dx = 100.0 * abs(di_plus - di_minus) / total if total != 0.0 else 0.0
        if i < 2 * period:
            dx_sum += dx
            if i == 2 * period - 1:
                adx = dx_sum / period
                out[i] = adx
        else:
            adx = (adx * (period - 1) + dx) / period
            out[i] = adx
    return out


def _series(x: Any, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional array, got shape {arr.shape}")
    return arr


def _period(period: Any, name: str = "period") -> int:
    if isinstance(period, bool) or int(period) != period or period < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {period!r}")
    return int(period)


def _hlc(high: Any, low: Any, close: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, lo, c = _series(high, "high"), _series(low, "low"), _series(close, "close")
    if not h.shape == lo.shape == c.shape:
        raise ValueError(f"high, low and close must have one length, got {h.size}, {lo.size}, {c.size}")
    return h, lo, c


def ema(x: Any, period: int) -> np.ndarray:
    """Exponential moving average (span ``period``)."""
    return ema_nb(_series(x, "x"), _period(period))


def sma(x: Any, period: int) -> np.ndarray:
    """Simple moving average."""
    return sma_nb(_series(x, "x"), _period(period))


def rolling_std(x: Any, period: int) -> np.ndarray:
    """Rolling population standard deviation."""
    return rolling_std_nb(_series(x, "x"), _period(period))


def rsi(close: Any, period: int) -> np.ndarray:
    """Wilder's RSI."""
    return rsi_nb(_series(close, "close"), _period(period))


def atr(high: Any, low: Any, close: Any, period: int) -> np.ndarray:
    """Wilder's ATR."""
    return atr_nb(*_hlc(high, low, close), _period(period))


def adx(high: Any, low: Any, close: Any, period: int) -> np.ndarray:
    """Wilder's ADX."""
    return adx_nb(*_hlc(high, low, close), _period(period))


def bollinger(close: Any, period: int, dev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger bands (upper, middle, lower): SMA +- ``dev`` population standard deviations."""
    c = _series(close, "close")
    n = _period(period)
    if not dev > 0:
        raise ValueError(f"dev must be > 0, got {dev!r}")
    middle = sma_nb(c, n)
    width = float(dev) * rolling_std_nb(c, n)
    return middle + width, middle, middle - width


class IndicatorCache:
    """Indicators of one dataset, each computed once per (name, params) and then served from memory.

    Thread-safe, so parallel Optuna trials in one process share it; callers slice the full-history
    arrays by bar index and must not modify them.
    """

    _CLOSE_ONLY = {"ema": ema, "sma": sma, "rsi": rsi, "bollinger": bollinger, "rolling_std": rolling_std}
    _HLC = {"atr": atr, "adx": adx}
    NAMES = tuple(sorted([*_CLOSE_ONLY, *_HLC]))

    def __init__(self, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> None:
        self.high, self.low, self.close = _hlc(high, low, close)
        self._values: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.computations = 0

    def get(self, name: str, *params: Any) -> Any:
        """The indicator ``name`` with ``params`` (e.g. ``get("ema", 50)``, ``get("bollinger", 20, 2.0)``)."""
        key = (name, *params)
        value = self._values.get(key)
        if value is not None:
            return value
        if name in self._CLOSE_ONLY:
            value = self._CLOSE_ONLY[name](self.close, *params)
        elif name in self._HLC:
            value = self._HLC[name](self.high, self.low, self.close, *params)
        else:
            raise ValueError(f"unknown indicator '{name}'; accepted: {', '.join(self.NAMES)}")
        with self._lock:
            self.computations += 1
            return self._values.setdefault(key, value)
