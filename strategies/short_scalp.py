"""SCALP: Bollinger mean reversion both ways, with the medium EMA as the side of the trend.

Long when the close dips below the lower band while above the medium EMA, short when it rises
above the upper band while below the EMA; the exit signal when the close is back beyond the
middle band (above it for a long, below it for a short). Reaching the mean is the trade's target,
so the exit signal closes the trade at once, without waiting for breakeven. A bar that meets an
entry rule carries the entry code (the entry of a flat strategy is what it is for); a short held
into such a bar exits on the next bar below the middle band that is no entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import core
from config import ParamSpec

NAME = "short_scalp"
SIDE = "both"
SIGNAL_EXIT_AFTER_BREAKEVEN = False
PARAMS = {
    "medium_ema_period": ParamSpec("int", 50, 2, 5000, doc="trend EMA period"),
    "bb_period": ParamSpec("int", 20, 2, 5000, doc="Bollinger period"),
    "bb_dev": ParamSpec("float", 2.0, 0.1, 10.0, doc="Bollinger width in standard deviations"),
}

FIXED_PARAMS: dict[str, Any] = {
    "timeframe": "30m", "leverage": 10, "risk_per_trade": 0.02,
    "medium_ema_period": 50, "bb_period": 20, "bb_dev": 2.5,
    "atr_period": 14, "atr_stop_multiplier": 3.0, "tp_atr_multiplier": 4.0,
    "breakeven_atr_multiplier": 1.5, "partial_take_profit": False, "position_scaling": False,
    "max_hold_hours": 24,
}

PARAM_GRID: dict[str, Any] = {
    "timeframe": ["30m", "1h"], "medium_ema_period": (20, 100), "bb_period": (15, 80), "bb_dev": (2.0, 5.0),
    "atr_period": (10, 30), "atr_stop_multiplier": (2.0, 7.0),
    "risk_per_trade": (0.01, 0.05), "tp_atr_multiplier": (2.0, 7.0), "leverage": [10],
    "partial_take_profit": [False], "position_scaling": [False],
    "breakeven_atr_multiplier": (1.0, 3.0), "max_hold_hours": [12, 24],
}


def signals(data: Any, params: dict[str, Any]) -> np.ndarray:
    """Exits at the middle band first, then the entries over them."""
    close = data.close
    ema = data.indicator("ema", params["medium_ema_period"])
    upper, middle, lower = data.indicator("bollinger", params["bb_period"], params["bb_dev"])
    signal = np.zeros(close.shape[0], dtype=np.int8)
    signal[close > middle] = core.SIG_EXIT_LONG
    signal[close < middle] = core.SIG_EXIT_SHORT
    signal[(close > ema) & (close < lower)] = core.SIG_LONG
    signal[(close < ema) & (close > upper)] = core.SIG_SHORT
    return signal


def lookback(params: dict[str, Any]) -> int:
    """The EMA and the bands."""
    return max(params["medium_ema_period"], params["bb_period"])
