"""The trend rule of the built-in LONG and SHORT strategies, written once with a direction sign.

Entries while the close is beyond the macro EMA (and the tactical EMA with the regime filter) in
the direction ``d`` (+1 long, -1 short); the exit signal when RSI is beyond the exit level in
that direction (above it for longs, below it for shorts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import core
from config import ParamSpec

TREND_PARAMS = {
    "rsi_period": ParamSpec("int", 14, 2, 1000, doc="Wilder RSI period"),
    "use_regime_filter": ParamSpec("bool", True, doc="require close beyond the tactical EMA"),
    "regime_filter_period": ParamSpec("int", 50, 2, 5000, doc="tactical EMA period"),
    "macro_ema_period": ParamSpec("int", 200, 2, 10000, doc="macro EMA period"),
}


def trend_signals(data: Any, params: dict[str, Any], d: float, exit_rsi: float,
                  entry_filter: np.ndarray | None = None) -> np.ndarray:
    """Entry codes of side ``d`` where the trend holds (and ``entry_filter``); exit codes where RSI is beyond
    ``exit_rsi``."""
    close = data.close
    entry = (close - data.indicator("ema", params["macro_ema_period"])) * d > 0.0
    if params["use_regime_filter"]:
        entry &= (close - data.indicator("ema", params["regime_filter_period"])) * d > 0.0
    if entry_filter is not None:
        entry &= entry_filter
    signal = np.where(entry, int(core.SIG_LONG * d), 0).astype(np.int8)
    signal[(data.indicator("rsi", params["rsi_period"]) - exit_rsi) * d > 0.0] = int(core.SIG_EXIT_LONG * d)
    return signal


def trend_lookback(params: dict[str, Any]) -> int:
    """The longest look-back of the trend rule: RSI and both EMAs."""
    return max(params["rsi_period"], params["macro_ema_period"], params["regime_filter_period"])
