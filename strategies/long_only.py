"""LONG: long while the close is above the tactical and macro EMAs; exit signal when RSI is above
``grid_upper_rsi``, taken only once breakeven has fired. The fixed params are the original GrTr's
tuned set."""

from __future__ import annotations

from typing import Any

import numpy as np

from config import ParamSpec
from strategies._trend import TREND_PARAMS, trend_lookback, trend_signals

NAME = "long_only"
SIDE = "long"
SIGNAL_EXIT_AFTER_BREAKEVEN = True
PARAMS = {**TREND_PARAMS, "grid_upper_rsi": ParamSpec("float", 75.0, 0.0, 100.0, doc="exit signal when RSI is above")}

FIXED_PARAMS: dict[str, Any] = {
    "timeframe": "1h", "leverage": 10, "risk_per_trade": 0.051,
    "position_scaling": False, "max_position_multiplier": 3.02,
    "atr_period": 23, "atr_stop_multiplier": 3.83, "breakeven_atr_multiplier": 1.31,
    "aggressive_breakout_stop_multiplier": 1.95,
    "profit_lock_trigger_pct": 0.055, "profit_lock_target_pct": 0.027,
    "trail_atr_multiplier": 4.65, "trail_early_activation_atr_multiplier": 1.73,
    "aggressive_trail_atr_multiplier": 0.36, "scale_add_atr_multiplier": 2.4,
    "tp_atr_multiplier": 14.54, "partial_tp_fraction": 0.18, "partial_take_profit": True,
    "partial_tp_levels": [1.0, 2.0, 3.0],
    "rsi_period": 22, "grid_upper_rsi": 85, "use_regime_filter": True,
    "regime_filter_period": 23, "macro_ema_period": 231,
    "max_hold_hours": 48, "cooldown_period_candles": 0,
    "stagnation_atr_threshold": 5.7, "stagnation_profit_decay": 0.68,
}

PARAM_GRID: dict[str, Any] = {
    "timeframe": ["1h"], "leverage": [10], "risk_per_trade": (0.01, 0.25),
    "position_scaling": [True, False], "max_position_multiplier": (1.2, 4.0),
    "atr_period": (10, 25), "atr_stop_multiplier": (2.0, 4.0), "breakeven_atr_multiplier": (1.0, 2.5),
    "aggressive_breakout_stop_multiplier": (0.0, 2.0),
    "profit_lock_trigger_pct": (0.0, 0.08), "profit_lock_target_pct": (0.01, 0.07),
    "trail_atr_multiplier": (0.5, 8.0), "trail_early_activation_atr_multiplier": (0.3, 3.0),
    "aggressive_trail_atr_multiplier": (0.3, 1.8), "scale_add_atr_multiplier": (0.2, 3.0),
    "tp_atr_multiplier": (8.0, 20.0), "partial_tp_fraction": (0.10, 0.4),
    "partial_take_profit": [True, False],
    "rsi_period": (10, 28), "grid_upper_rsi": (75, 95), "use_regime_filter": [True],
    "regime_filter_period": (20, 200), "macro_ema_period": (100, 1200),
    "max_hold_hours": [36, 48, 72, 144], "cooldown_period_candles": (0, 10),
    "stagnation_atr_threshold": (4.0, 7.0), "stagnation_profit_decay": (0.5, 0.75),
}


def signals(data: Any, params: dict[str, Any]) -> np.ndarray:
    """Long entries in the uptrend, the exit signal on an overbought RSI."""
    return trend_signals(data, params, 1.0, params["grid_upper_rsi"])


lookback = trend_lookback
