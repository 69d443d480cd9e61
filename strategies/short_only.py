"""SHORT: the mirror of LONG (close below the EMAs, exit signal when RSI is below ``grid_lower_rsi``,
taken only once breakeven has fired), with the optional ADX trend-strength filter on entries.
The fixed params are the original GrTr's tuned set."""

from __future__ import annotations

from typing import Any

import numpy as np

from config import ParamSpec
from strategies._trend import TREND_PARAMS, trend_lookback, trend_signals

NAME = "short_only"
SIDE = "short"
SIGNAL_EXIT_AFTER_BREAKEVEN = True
PARAMS = {
    **TREND_PARAMS,
    "grid_lower_rsi": ParamSpec("float", 25.0, 0.0, 100.0, doc="exit signal when RSI is below"),
    "adx_period": ParamSpec("int", 0, 0, 1000, doc="ADX filter period (0 = off)"),
    "adx_threshold": ParamSpec("float", 25.0, 0.0, 100.0, doc="entries need ADX above"),
}

FIXED_PARAMS: dict[str, Any] = {
    "timeframe": "30m", "leverage": 10, "risk_per_trade": 0.159,
    "position_scaling": True, "max_position_multiplier": 1.59,
    "atr_period": 21, "atr_stop_multiplier": 2.63, "breakeven_atr_multiplier": 1.66,
    "aggressive_breakout_stop_multiplier": 0.3,
    "profit_lock_trigger_pct": 0.0, "profit_lock_target_pct": 0.0,
    "trail_atr_multiplier": 6.0, "trail_early_activation_atr_multiplier": 0.72,
    "aggressive_trail_atr_multiplier": 0.45, "scale_add_atr_multiplier": 2.64,
    "tp_atr_multiplier": 16.62, "partial_tp_fraction": 0.31, "partial_take_profit": False,
    "partial_tp_levels": [1.0, 2.0, 3.0],
    "rsi_period": 28, "grid_lower_rsi": 33, "use_regime_filter": True,
    "regime_filter_period": 196, "macro_ema_period": 867, "adx_period": 20, "adx_threshold": 34,
    "max_hold_hours": 48, "cooldown_period_candles": 2,
    "stagnation_atr_threshold": 6.94, "stagnation_profit_decay": 0.52,
}

PARAM_GRID: dict[str, Any] = {
    "timeframe": ["30m", "1h"], "leverage": [10], "risk_per_trade": (0.01, 0.07),
    "position_scaling": [True, False], "max_position_multiplier": (1.2, 4.0),
    "atr_period": (5, 25), "atr_stop_multiplier": (1.5, 5.0), "breakeven_atr_multiplier": (1.0, 2.5),
    "aggressive_breakout_stop_multiplier": (0.0, 2.0),
    "profit_lock_trigger_pct": (0.0, 0.08), "profit_lock_target_pct": (0.01, 0.07),
    "trail_atr_multiplier": (0.5, 8.0), "trail_early_activation_atr_multiplier": (0.3, 3.0),
    "aggressive_trail_atr_multiplier": (0.3, 1.8), "scale_add_atr_multiplier": (0.2, 3.0),
    "tp_atr_multiplier": (1.0, 20.0), "partial_tp_fraction": (0.10, 0.4),
    "partial_take_profit": [True, False],
    "rsi_period": (10, 28), "grid_lower_rsi": (15, 35), "use_regime_filter": [True],
    "regime_filter_period": (20, 200), "macro_ema_period": (100, 1200),
    "adx_period": (10, 30), "adx_threshold": (28, 35),
    "max_hold_hours": [36, 48, 72, 144], "cooldown_period_candles": (0, 10),
    "stagnation_atr_threshold": (4.0, 7.0), "stagnation_profit_decay": (0.5, 0.75),
}


def signals(data: Any, params: dict[str, Any]) -> np.ndarray:
    """Short entries in the downtrend (with enough ADX when the filter is on), the exit on an oversold RSI."""
    strong = data.indicator("adx", params["adx_period"]) > params["adx_threshold"] if params["adx_period"] > 0 \
        else None
    return trend_signals(data, params, -1.0, params["grid_lower_rsi"], strong)


def lookback(params: dict[str, Any]) -> int:
    """The trend rule's look-back; ADX needs twice its period."""
    return max(trend_lookback(params), 2 * params["adx_period"])
