"""GrTr configuration: the strategy library, parameter declarations, costs, instruments, paths.

Every parameter the core reads is declared once in ``PARAM_SPECS`` with its type, default and
allowed range; ``validate_params`` checks a params dict (fixed params, a params file, an Optuna
trial) against those declarations and stops with an error that names the bad key or value.
The module validates its own library at import, so a typo here fails at start, not mid-run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
BASE_DIR = Path(__file__).resolve().parent
DATA_DIR = BASE_DIR / "data"
CACHE_DIR = DATA_DIR / "cache"
RESULTS_DIR = BASE_DIR / "results"

# ---------------------------------------------------------------------------------------------
# Switches of the default pipeline (`python main.py` with no arguments)
# ---------------------------------------------------------------------------------------------
ENABLE_FIXED_PARAMS = True
ENABLE_OPTUNA = True
ACTIVE_STRATEGY_KEY = "LONG"
SYMBOLS = ["BTCUSDT"]
DEFAULT_SOURCE = "sample"
DATA_DAYS_DEPTH = 730

# ---------------------------------------------------------------------------------------------
# Money: capital, costs (Bybit linear perpetual defaults)
# ---------------------------------------------------------------------------------------------
CAPITAL = 10_000.0
TAKER_FEE = 0.00055
MAKER_FEE = 0.0002
SLIPPAGE = 0.0005
FUNDING_RATE = 0.0001  # per 8h funding event when the data carries no funding series
MAINTENANCE_MARGIN_RATE = 0.005

# Drawdown risk governor: (drawdown strictly above, risk factor), checked from the deepest.
RISK_GOVERNOR = ((0.40, 0.25), (0.30, 0.35), (0.20, 0.50), (0.10, 0.75))

# Instrument defaults, overridden by Bybit's instruments-info when it has been fetched.
INSTRUMENT_DEFAULT = {"qty_step": 0.001, "min_qty": 0.001, "tick_size": 0.01, "min_notional": 5.0,
                      "max_leverage": 100.0}
INSTRUMENTS: dict[str, dict[str, float]] = {
    "BTCUSDT": {"qty_step": 0.001, "min_qty": 0.001, "tick_size": 0.1, "min_notional": 5.0, "max_leverage": 100.0},
    "ETHUSDT": {"qty_step": 0.01, "min_qty": 0.01, "tick_size": 0.01, "min_notional": 5.0, "max_leverage": 100.0},
    "SOLUSDT": {"qty_step": 0.1, "min_qty": 0.1, "tick_size": 0.01, "min_notional": 5.0, "max_leverage": 100.0},
    "LTCUSDT": {"qty_step": 0.1, "min_qty": 0.1, "tick_size": 0.01, "min_notional": 5.0, "max_leverage": 50.0},
    "XRPUSDT": {"qty_step": 1.0, "min_qty": 1.0, "tick_size": 0.0001, "min_notional": 5.0, "max_leverage": 75.0},
    "EOSUSDT": {"qty_step": 0.1, "min_qty": 0.1, "tick_size": 0.0001, "min_notional": 5.0, "max_leverage": 50.0},
}


class ConfigError(ValueError):
    """A config value, params file or command-line value that GrTr cannot accept."""


# ---------------------------------------------------------------------------------------------
# Parameter declarations
# ---------------------------------------------------------------------------------------------
TIMEFRAME_CHOICES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
MODE_CHOICES = ("long_only", "short_only", "short_scalp")
MAX_PARTIAL_LEVELS = 4


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its kind (int, float, bool, choice, levels), default and allowed range."""

    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    doc: str = ""


def _f(default: float, low: float, high: float, doc: str) -> ParamSpec:
    return ParamSpec("float", default, low, high, doc=doc)


def _i(default: int, low: int, high: int, doc: str) -> ParamSpec:
    return ParamSpec("int", default, low, high, doc=doc)


def _b(default: bool, doc: str) -> ParamSpec:
    return ParamSpec("bool", default, doc=doc)


PARAM_SPECS: dict[str, ParamSpec] = {
    # what and where
    "mode": ParamSpec("choice", "long_only", choices=MODE_CHOICES, doc="signal mode of generate_signals"),
    "timeframe": ParamSpec("choice", "1h", choices=TIMEFRAME_CHOICES, doc="bar length"),
    "symbol": ParamSpec("str", SYMBOLS[0], doc="instrument, e.g. SOLUSDT"),
    # risk and position
    "leverage": _f(10.0, 1.0, 100.0, "position size cap: equity x leverage; isolated-margin liquidation"),
    "risk_per_trade": _f(0.02, 0.0005, 0.5, "share of the risk base lost if the initial stop is hit"),
    "position_scaling": _b(False, "pyramiding on"),
    "max_position_multiplier": _f(2.0, 1.0, 10.0, "largest position as a multiple of the initial size"),
    "scale_add_atr_multiplier": _f(1.0, 0.05, 20.0, "add when price moved this many ATR past the last add"),
    # stops
    "atr_period": _i(14, 2, 1000, "Wilder ATR period"),
    "atr_stop_multiplier": _f(3.0, 0.1, 50.0, "initial stop distance in ATR"),
    "breakeven_atr_multiplier": _f(1.5, 0.0, 50.0, "move stop to entry+fees after this many ATR (0 = off)"),
    "aggressive_breakout_stop_multiplier": _f(0.0, 0.0, 10.0,
                                              "breakout-override entries: stop at this share of the "
                                              "distance to the bar's extreme (0 = off)"),
    "profit_lock_trigger_pct": _f(0.0, 0.0, 1.0, "lock profit once price moved this share (0 = off)"),
    "profit_lock_target_pct": _f(0.0, 0.0, 1.0, "stop level of the lock, as a share from entry"),
    "trail_atr_multiplier": _f(3.0, 0.1, 50.0, "chandelier trail distance in ATR"),
    "trail_early_activation_atr_multiplier": _f(1.0, 0.0, 50.0, "start trailing after this many ATR"),
    "aggressive_trail_atr_multiplier": _f(1.5, 0.05, 50.0, "trail distance after breakeven"),
    # take-profits
    "tp_atr_multiplier": _f(8.0, 0.0, 200.0, "final take-profit in ATR from entry (0 = off)"),
    "partial_take_profit": _b(False, "partial take-profits on"),
    "partial_tp_levels": ParamSpec("levels", (1.0, 2.0, 3.0), 0.01, 200.0,
                                   doc=f"partial take-profit levels in ATR (at most {MAX_PARTIAL_LEVELS})"),
    "partial_tp_fraction": _f(0.25, 0.01, 1.0, "share of the initial size closed at each level"),
    # signals
    "rsi_period": _i(14, 2, 1000, "Wilder RSI period"),
    "grid_upper_rsi": _f(75.0, 0.0, 100.0, "long exit signal when RSI is above"),
    "grid_lower_rsi": _f(25.0, 0.0, 100.0, "short exit signal when RSI is below"),
    "use_regime_filter": _b(True, "require close beyond the tactical EMA"),
    "regime_filter_period": _i(50, 2, 5000, "tactical EMA period"),
    "macro_ema_period": _i(200, 2, 10000, "macro EMA period"),
    "adx_period": _i(0, 0, 1000, "ADX filter period for shorts (0 = off)"),
    "adx_threshold": _f(25.0, 0.0, 100.0, "short entries need ADX above"),
    "medium_ema_period": _i(50, 2, 5000, "scalp: trend EMA period"),
    "bb_period": _i(20, 2, 5000, "scalp: Bollinger period"),
    "bb_dev": _f(2.0, 0.1, 10.0, "scalp: Bollinger width in standard deviations"),
    # holding time
    "max_hold_hours": _f(0.0, 0.0, 100000.0, "close after this many hours in the trade (0 = off)"),
    "cooldown_period_candles": _i(0, 0, 10000, "bars without new entries after a breakeven/trailing exit"),
    "stagnation_atr_threshold": _f(0.0, 0.0, 100.0, "arm the stagnation exit once peak profit exceeds "
                                                    "this many ATR x initial size (0 = off)"),
    "stagnation_profit_decay": _f(0.7, 0.0, 1.0, "exit when profit falls below this share of its peak"),
}

# Keys of the original GrTr that GrTr replaced; named in the error so old files are easy to fix.
RETIRED_KEYS = {
    "min_amount_precision": "the quantity step now comes from the instrument (INSTRUMENTS / instruments-info)",
    "limit": "the history depth is chosen with --days or --start/--end",
}


def _check_value(name: str, value: Any, spec: ParamSpec, where: str) -> Any:
    """Return ``value`` converted to the spec's kind, or raise ConfigError naming it."""
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{where}: parameter '{name}' = {value!r} {reason}")

    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise bad("must be true or false")
    if spec.kind == "choice":
        if value not in spec.choices:
            raise bad(f"is not one of {', '.join(map(str, spec.choices))}")
        return value
    if spec.kind == "str":
        if not isinstance(value, str) or not value:
            raise bad("must be a non-empty string")
        return value
    if spec.kind == "levels":
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_PARTIAL_LEVELS:
            raise bad(f"must be a list of 1 to {MAX_PARTIAL_LEVELS} numbers")
        levels = tuple(float(_check_value(f"{name}[{k}]", v, ParamSpec("float", 0.0, spec.low, spec.high), where))
                       for k, v in enumerate(value))
        if list(levels) != sorted(levels) or len(set(levels)) != len(levels):
            raise bad("must be strictly increasing")
        return levels
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"must be a number in [{spec.low}, {spec.high}]")
    if spec.kind == "int":
        if float(value) != int(value):
            raise bad(f"must be a whole number in [{spec.low}, {spec.high}]")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad("must be finite")
    if not spec.low <= value <= spec.high:
        raise bad(f"is outside the allowed range [{spec.low}, {spec.high}]")
    return value


def check_param_name(name: str, where: str) -> ParamSpec:
    """Return the spec of ``name`` or raise an error that names it and the accepted keys."""
    if name in RETIRED_KEYS:
        raise ConfigError(f"{where}: parameter '{name}' is no longer used: {RETIRED_KEYS[name]}")
    if name not in PARAM_SPECS:
        raise ConfigError(f"{where}: unknown parameter '{name}'; accepted: {', '.join(sorted(PARAM_SPECS))}")
    return PARAM_SPECS[name]


def check_param(name: str, value: Any, where: str) -> Any:
    """One parameter's value converted to its kind, or an error naming it (no cross-field checks)."""
    return _check_value(name, value, check_param_name(name, where), where)


def validate_params(params: dict[str, Any], where: str = "params", base: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Check ``params`` and return a complete dict: ``base`` (or the defaults) updated with them."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values, got {type(params).__name__}")
    full = {name: spec.default for name, spec in PARAM_SPECS.items()} if base is None else dict(base)
    for name, value in params.items():
        full[name] = check_param(name, value, where)
    if full["profit_lock_trigger_pct"] > 0 and full["profit_lock_target_pct"] <= 0:
        raise ConfigError(f"{where}: profit_lock_target_pct must be > 0 when profit_lock_trigger_pct > 0")
    return full


def load_params_file(path: str | Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a JSON params file (the format of best_params.json) and validate it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"params file {path} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
        raw = raw["params"]
    return validate_params(raw, where=str(path), base=base)


def instrument_for(symbol: str) -> dict[str, float]:
    """Instrument precision and limits for ``symbol`` (cached exchange info wins over defaults)."""
    spec = dict(INSTRUMENT_DEFAULT)
    spec.update(INSTRUMENTS.get(symbol, {}))
    cached = CACHE_DIR / f"instrument_{symbol}.json"
    if cached.exists():
        spec.update({k: float(v) for k, v in json.loads(cached.read_text()).items() if k in spec})
    return spec


def costs() -> dict[str, float]:
    """The account-level costs the venue applies."""
    return {"capital": CAPITAL, "taker_fee": TAKER_FEE, "maker_fee": MAKER_FEE, "slippage": SLIPPAGE,
            "funding_rate": FUNDING_RATE, "maintenance_margin_rate": MAINTENANCE_MARGIN_RATE}


# ---------------------------------------------------------------------------------------------
# The strategy library (values of the original GrTr's tuned sets)
# ---------------------------------------------------------------------------------------------
FIXED_PARAMS_LONG: dict[str, Any] = {
    "mode": "long_only", "timeframe": "1h", "leverage": 10, "risk_per_trade": 0.051,
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

FIXED_PARAMS_SHORT: dict[str, Any] = {
    "mode": "short_only", "timeframe": "30m", "leverage": 10, "risk_per_trade": 0.159,
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

FIXED_PARAMS_SCALP: dict[str, Any] = {
    "mode": "short_scalp", "timeframe": "30m", "leverage": 10, "risk_per_trade": 0.02,
    "medium_ema_period": 50, "bb_period": 20, "bb_dev": 2.5, "rsi_period": 14,
    "atr_period": 14, "atr_stop_multiplier": 3.0, "tp_atr_multiplier": 4.0,
    "breakeven_atr_multiplier": 1.5, "partial_take_profit": False, "position_scaling": False,
    "max_hold_hours": 24,
}

PARAM_GRID_LONG: dict[str, Any] = {
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

PARAM_GRID_SHORT: dict[str, Any] = {
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

PARAM_GRID_SCALP: dict[str, Any] = {
    "timeframe": ["30m", "1h"], "medium_ema_period": (20, 100), "bb_period": (15, 80), "bb_dev": (2.0, 5.0),
    "rsi_period": [14], "atr_period": (10, 30), "atr_stop_multiplier": (2.0, 7.0),
    "risk_per_trade": (0.01, 0.05), "tp_atr_multiplier": (2.0, 7.0), "leverage": [10],
    "partial_take_profit": [False], "position_scaling": [False],
    "breakeven_atr_multiplier": (1.0, 3.0), "max_hold_hours": [12, 24],
}

STRATEGY_LIBRARY: dict[str, dict[str, Any]] = {
    "LONG": {"mode": "long_only", "fixed_params": FIXED_PARAMS_LONG, "param_grid": PARAM_GRID_LONG},
    "SHORT": {"mode": "short_only", "fixed_params": FIXED_PARAMS_SHORT, "param_grid": PARAM_GRID_SHORT},
    "SCALP": {"mode": "short_scalp", "fixed_params": FIXED_PARAMS_SCALP, "param_grid": PARAM_GRID_SCALP},
}


def strategy(key: str) -> dict[str, Any]:
    """The library entry ``key``, or an error listing the keys there are."""
    if key not in STRATEGY_LIBRARY:
        raise ConfigError(f"unknown strategy '{key}'; accepted: {', '.join(STRATEGY_LIBRARY)}")
    return STRATEGY_LIBRARY[key]


def fixed_params(key: str) -> dict[str, Any]:
    """The validated, complete fixed params of strategy ``key``."""
    entry = strategy(key)
    params = validate_params(entry["fixed_params"], where=f"FIXED_PARAMS of {key}")
    params["mode"] = entry["mode"]
    return params


def _validate_library() -> None:
    if ACTIVE_STRATEGY_KEY not in STRATEGY_LIBRARY:
        raise ConfigError(f"ACTIVE_STRATEGY_KEY '{ACTIVE_STRATEGY_KEY}' is not in STRATEGY_LIBRARY "
                          f"({', '.join(STRATEGY_LIBRARY)})")
    for key, entry in STRATEGY_LIBRARY.items():
        if entry["mode"] not in MODE_CHOICES:
            raise ConfigError(f"STRATEGY_LIBRARY['{key}'] mode '{entry['mode']}' is not one of {MODE_CHOICES}")
        fixed_params(key)
        for name in entry["param_grid"]:
            check_param_name(name, f"PARAM_GRID of {key}")
    for threshold, factor in RISK_GOVERNOR:
        if not (0 < threshold < 1 and 0 < factor <= 1):
            raise ConfigError(f"RISK_GOVERNOR entry ({threshold}, {factor}) needs 0 < drawdown < 1, 0 < factor <= 1")
    if len(RISK_GOVERNOR) > 4:
        raise ConfigError("RISK_GOVERNOR holds at most 4 (drawdown, factor) rows")


_validate_library()


# ---------------------------------------------------------------------------------------------
# Optimization: Optuna search, hierarchical filters, walk-forward validation
# ---------------------------------------------------------------------------------------------
OPTUNA_SETTINGS = {
    "n_trials": 3900,          # the original GrTr's setting; `python main.py` uses DEFAULT_PIPELINE_TRIALS
    "n_jobs": 2,               # worker processes on one study storage (--jobs)
    "sampler": "cmaes",        # cmaes, tpe (multivariate) or random (--sampler); cmaes: best hold-out (README)
    "seed": 42,                # the study seed; each worker derives its own from it and its worker id
    "n_startup_trials": 40,    # random trials before TPE / CMA-ES model the results
    "window_best": 100,        # the sampler sees the best N trials ...
    "window_recent": 200,      # ... and the latest N, so its cost per trial stays flat
    "refine_share": 0.2,       # the last share of a run's trials refines the leaders (neighbours of the top 10)
}
SAMPLER_CHOICES = ("tpe", "cmaes", "random")
DEFAULT_PIPELINE_TRIALS = 300
# The final hold-out: the last share of the bars, cut off before the search, the filters, the walk-forward
# and the statistics see the data; the chosen params are run on it once.
HOLDOUT_FRACTION = 0.20
HOLDOUT_RANDOM_PASSING = 100   # the pick is ranked among this many random params sets that pass the filters ...
HOLDOUT_RANDOM_DRAWS = 20000   # ... drawing at most this many (passing is rare: fewer may be found)
TRAIN_FRACTION = 0.50          # of the in-sample bars: first half for training
GAP_FRACTION = 0.15            # then a gap the objective never sees, then the test period
OBJECTIVE_FILTERS = {          # calibrated so that a random params set rarely passes (README, "Filters")
    "min_trades_train": 50, "min_trades_test": 30,          # tier 1: enough trades to measure anything
    "min_profit_factor": 1.0,                                # tier 2: profitable after costs on both periods
    "min_sharpe_ratio": 0.4, "max_sharpe_ratio": 2.5,        # tier 3: test/train Sharpe within bounds
    "max_drawdown": -0.40,                                   # tier 4: drawdown on both periods
    "min_cagr": 0.05,                                        # tier 5: annualized test return above a cash yield
    "min_calmar": 0.5,                                       # tier 6: test Calmar
    "min_trades_per_month": 2.0,                             # tier 7: test trade frequency
    "max_sharpe": 4.0, "max_profit_factor": 4.0,             # tier 8: realism caps
    "exit_mix_bonus": 0.25, "exit_mix_penalty": 0.5,         # score: reward profit-taking exits, penalise forced ones
}
WF_FOLDS = 5
WF_TRAIN_RATIO = 3.0           # train bars per test bar in each walk-forward fold
WF_MIN_PROFITABLE_FOLDS = 0.6  # share of profitable test folds for a strategy to pass validation
WF_FOLD_TRIALS = 200           # re-optimizing walk-forward: trials of each fold's search (--fold-trials)
# Export gates (README, "Export gates"): the Probability of Backtest Overfitting at most MAX_PBO, the
# Deflated Sharpe Ratio at least MIN_DSR.
MAX_PBO = 0.30
MIN_DSR = 0.95
PBO_BLOCKS = 16                # CSCV blocks of days (C(16, 8) = 12,870 in/out-of-sample splits)


def _validate_optimization() -> None:
    for name in ("TRAIN_FRACTION", "GAP_FRACTION", "WF_MIN_PROFITABLE_FOLDS", "MIN_DSR"):
        value = globals()[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{name} = {value!r} must be in [0, 1)")
    if TRAIN_FRACTION + GAP_FRACTION >= 0.95:
        raise ConfigError(f"TRAIN_FRACTION + GAP_FRACTION = {TRAIN_FRACTION + GAP_FRACTION} leaves no test period")
    if isinstance(HOLDOUT_FRACTION, bool) or not isinstance(HOLDOUT_FRACTION, (int, float)) \
            or not 0 <= HOLDOUT_FRACTION <= 0.5:
        raise ConfigError(f"HOLDOUT_FRACTION = {HOLDOUT_FRACTION!r} must be in [0, 0.5]")
    if isinstance(MAX_PBO, bool) or not isinstance(MAX_PBO, (int, float)) or not 0 <= MAX_PBO <= 1:
        raise ConfigError(f"MAX_PBO = {MAX_PBO!r} must be in [0, 1]")
    if not isinstance(PBO_BLOCKS, int) or PBO_BLOCKS < 2 or PBO_BLOCKS % 2 or PBO_BLOCKS > 20:
        raise ConfigError(f"PBO_BLOCKS = {PBO_BLOCKS!r} must be an even whole number in [2, 20]")
    for name in ("WF_FOLD_TRIALS", "HOLDOUT_RANDOM_DRAWS", "HOLDOUT_RANDOM_PASSING"):
        value = globals()[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} = {value!r} must be a whole number >= 1")
    if OPTUNA_SETTINGS["sampler"] not in SAMPLER_CHOICES:
        raise ConfigError(f"OPTUNA_SETTINGS['sampler'] = {OPTUNA_SETTINGS['sampler']!r}; accepted: "
                          f"{', '.join(SAMPLER_CHOICES)}")


_validate_optimization()


# ---------------------------------------------------------------------------------------------
# Live trader resilience (run_live.py; each has a command-line flag of the same name)
# ---------------------------------------------------------------------------------------------
TRADER_SETTINGS = {
    "http_timeout": 10.0,        # seconds before a REST call counts as timed out (then retried, orders looked up)
    "stale_seconds": 30.0,       # WebSocket silent this long: reconnect, and poll REST for missed closes
    "reconcile_seconds": 60.0,   # state against position/list, open orders and executions, this often
    "tick_grace_seconds": 5.0,   # a crossed stop still open this long after the first tick: closed at market
    "price_max_age": 10.0,       # a price older than this is never used for a decision
}
# The price that triggers the exchange-side stop-loss: "LastPrice" (as the backtest's candles),
# "MarkPrice" (immune to wicks on the last price) or "IndexPrice".
STOP_TRIGGER_BY = "LastPrice"
STOP_TRIGGER_CHOICES = ("LastPrice", "MarkPrice", "IndexPrice")
if STOP_TRIGGER_BY not in STOP_TRIGGER_CHOICES:
    raise ConfigError(f"STOP_TRIGGER_BY = {STOP_TRIGGER_BY!r}; accepted: {', '.join(STOP_TRIGGER_CHOICES)}")


# ---------------------------------------------------------------------------------------------
# Watchdog: heartbeat and process checks, Telegram alerts and delivery, restarts (watchdog.py)
# ---------------------------------------------------------------------------------------------
WATCHDOG_LEVEL_CHOICES = ("on", "silent", "off")  # silent: delivered without sound
WATCHDOG_ALERT_LEVELS = {
    "start": "on", "stop": "on",                   # trader started / stopped (or died)
    "entry": "on", "add": "on", "partial_exit": "on", "exit": "on",
    "stop_moved": "off",
    "desync": "on", "rescue": "on", "order_rejected": "on", "error": "on",
    "stop_restored": "on", "tick_guard": "on",     # a missing stop set again; a crossed stop closed by the trader
    "entry_skipped": "on", "security_warning": "on",
    "heartbeat_stale": "on", "heartbeat_recovered": "on",
    "restart": "on",                               # each restart, the restart limit, a failed restart
    "daily": "on",                                 # the daily summary
    "other": "on",                                 # event types the watchdog does not know
}
WATCHDOG_SETTINGS = {
    "heartbeat_stale_s": 180.0,       # heartbeat older than this while the process lives: "not responding"
    "startup_grace_s": 900.0,         # a (re)started trader may take this long to write its first heartbeat
    "poll_interval_s": 2.0,           # heartbeat, process and event log checks
    "updates_timeout_s": 30,          # getUpdates long-polling timeout (whole seconds)
    "request_timeout_s": 15.0,        # HTTP timeout of one Bot API call (added to the long-polling timeout)
    "daily_summary_hour_utc": 8,      # hour (UTC) of the daily summary; None = no summary
    "merge_window_s": 300.0,          # identical alerts within this window become one message ("x5"); 0 = off
    "min_send_interval_s": 1.0,       # at most one message per this many seconds per chat
    "retry_base_s": 2.0,              # delivery retry backoff: base, doubling ...
    "retry_max_s": 300.0,             # ... up to this
    "restart_max_per_hour": 3,        # --restart: restarts allowed in any hour, then it alerts and stops trying
    "restart_backoff_s": 30.0,        # wait before the 2nd restart of an hour, doubling after ...
    "restart_backoff_max_s": 900.0,   # ... up to this
    "kill_grace_s": 15.0,             # a hung trader gets this long to exit on SIGTERM before SIGKILL
    "log_tail_lines": 15,             # lines of logs/trader.log in the "trader stopped" alert
}
_WATCHDOG_RANGES = {
    "heartbeat_stale_s": (1.0, 86_400.0), "startup_grace_s": (1.0, 86_400.0), "poll_interval_s": (0.01, 600.0),
    "updates_timeout_s": (0, 600), "request_timeout_s": (0.1, 600.0), "merge_window_s": (0.0, 86_400.0),
    "min_send_interval_s": (0.0, 60.0), "retry_base_s": (0.01, 3600.0), "retry_max_s": (0.01, 86_400.0),
    "restart_max_per_hour": (0, 100), "restart_backoff_s": (0.0, 86_400.0),
    "restart_backoff_max_s": (0.0, 86_400.0), "kill_grace_s": (0.1, 600.0), "log_tail_lines": (0, 50),
}
_WATCHDOG_INTS = ("updates_timeout_s", "restart_max_per_hour", "log_tail_lines")


def validate_watchdog(settings: dict[str, Any], levels: dict[str, str], where: str = "config.py") -> None:
    """Check watchdog settings and alert levels; the error names the bad key or value."""
    expected = set(_WATCHDOG_RANGES) | {"daily_summary_hour_utc"}
    for name in sorted(set(settings) ^ expected):
        state = "unknown" if name in settings else "missing"
        raise ConfigError(f"{where}: watchdog setting '{name}' is {state}; expected: {', '.join(sorted(expected))}")
    for name, (low, high) in _WATCHDOG_RANGES.items():
        value = settings[name]
        whole = name in _WATCHDOG_INTS
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                or not low <= value <= high:
            raise ConfigError(f"{where}: watchdog setting '{name}' = {value!r} must be a "
                              f"{'whole ' if whole else ''}number in [{low}, {high}]")
    hour = settings["daily_summary_hour_utc"]
    if hour is not None and (isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23):
        raise ConfigError(f"{where}: watchdog setting 'daily_summary_hour_utc' = {hour!r} must be None or 0..23")
    if settings["retry_max_s"] < settings["retry_base_s"]:
        raise ConfigError(f"{where}: watchdog setting 'retry_max_s' must be >= retry_base_s")
    for kind in sorted(set(levels) ^ set(WATCHDOG_ALERT_LEVELS)):
        state = "unknown" if kind in levels else "missing"
        raise ConfigError(f"{where}: alert type '{kind}' is {state}; expected: {', '.join(WATCHDOG_ALERT_LEVELS)}")
    for kind, level in levels.items():
        if level not in WATCHDOG_LEVEL_CHOICES:
            raise ConfigError(f"{where}: alert level of '{kind}' = {level!r} is not one of "
                              f"{', '.join(WATCHDOG_LEVEL_CHOICES)}")


validate_watchdog(WATCHDOG_SETTINGS, WATCHDOG_ALERT_LEVELS)
