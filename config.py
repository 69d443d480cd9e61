"""GrTr configuration: the strategy library, parameter declarations, costs, instruments, paths.

Every parameter the core reads is declared once in ``PARAM_SPECS`` with its type, default and
allowed range; ``validate_params`` checks a params dict (fixed params, a params file, an Optuna
trial) against those declarations and stops with an error that names the bad key or value.
The module validates its own library at import, so a typo here fails at start, not mid-run.
"""

from __future__ import annotations

import json
import math
import re
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


@dataclass(frozen=True)
class Bound:
    """The numbers a setting or flag accepts: [low, high] (either end open, or absent), whole numbers when
    ``whole``; ``unit`` names what is counted ("seconds") in the error."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    unit: str = ""

    def describe(self) -> str:
        """What is accepted, e.g. 'a number of seconds in (0, 3600]' or 'a whole number >= 1'."""
        def text(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        kind = ("a whole number" if self.whole else "a number") + (f" of {self.unit}" if self.unit else "")
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {opening}{text(self.low)}, {text(self.high)}{closing}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {text(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {text(self.high)}"
        return kind

    def accepts(self, value: Any) -> bool:
        """True when ``value`` is a finite number (not a bool) inside the bound."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.whole and float(value) != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, name: str, value: Any, where: str = "config.py") -> Any:
        """``value`` (an int when ``whole``) or a ConfigError naming the setting, the value and what is accepted."""
        if not self.accepts(value):
            raise ConfigError(f"{where}: {name} = {value!r} is refused; accepted: {self.describe()}")
        return int(value) if self.whole else value


def check_mapping(name: str, values: Any, bounds: dict[str, Bound], where: str = "config.py") -> None:
    """A dict setting: exactly the keys of ``bounds``, each value inside its bound."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {name} = {values!r} is refused; accepted: a dict with the keys "
                          f"{', '.join(bounds)}")
    for key in sorted(set(values) ^ set(bounds)):
        state = "unknown" if key in values else "missing"
        raise ConfigError(f"{where}: {name}['{key}'] is {state}; expected the keys {', '.join(bounds)}")
    for key, bound in bounds.items():
        bound.check(f"{name}['{key}']", values[key], where)


# ---------------------------------------------------------------------------------------------
# Parameter declarations
# ---------------------------------------------------------------------------------------------
TIMEFRAME_CHOICES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
MODE_CHOICES = ("long_only", "short_only", "short_scalp")
MAX_PARTIAL_LEVELS = 4
SYMBOL_PATTERN = re.compile(r"[A-Z0-9]{2,25}")


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
    "symbol": ParamSpec("symbol", "BTCUSDT", doc="instrument, e.g. SOLUSDT"),
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
    if spec.kind == "symbol":
        if not isinstance(value, str) or not SYMBOL_PATTERN.fullmatch(value):
            raise bad("is not a Bybit symbol: 2 to 25 capital letters and digits, e.g. BTCUSDT")
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
        raw = json.loads(path.read_text(), object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"params file {path} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
        raw = raw["params"]
    return validate_params(raw, where=str(path), base=base)


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice is an error (json would silently keep the last value)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"params file {path}: key '{key}' appears twice ({seen[key]!r} and {value!r}); "
                              "keep one")
        seen[key] = value
    return seen


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
    for name, spec in PARAM_SPECS.items():
        _check_value(name, spec.default, spec, "PARAM_SPECS default")
    for key, entry in STRATEGY_LIBRARY.items():
        if entry["mode"] not in MODE_CHOICES:
            raise ConfigError(f"STRATEGY_LIBRARY['{key}'] mode '{entry['mode']}' is not one of {MODE_CHOICES}")
        fixed_params(key)
        for name, grid_entry in entry["param_grid"].items():
            check_grid_entry(name, grid_entry, f"PARAM_GRID of {key}")


def check_grid_entry(name: str, entry: Any, where: str) -> ParamSpec:
    """One entry of a search grid: (low, high) a range, a list the choices, a scalar a fixed value; each
    value inside the parameter's own range. Returns the parameter's spec."""
    spec = check_param_name(name, where)
    if isinstance(entry, tuple):
        if len(entry) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
            raise ConfigError(f"{where}: '{name}' = {entry!r}: a range must be a 2-tuple of numbers")
        if entry[0] > entry[1]:
            raise ConfigError(f"{where}: '{name}' = {entry!r}: low is above high")
        for bound in entry:
            check_param(name, bound, where)
        if spec.kind == "int" and not all(isinstance(v, int) for v in entry):
            raise ConfigError(f"{where}: '{name}' is a whole-number parameter; range {entry!r} must hold ints")
        if spec.kind not in ("int", "float"):
            raise ConfigError(f"{where}: '{name}' is a {spec.kind} parameter and cannot take a range")
    elif isinstance(entry, list):
        if not entry:
            raise ConfigError(f"{where}: '{name}' has an empty list of choices")
        for value in entry:
            check_param(name, value, where)
    else:
        check_param(name, entry, where)
    return spec


_INSTRUMENT_BOUNDS = {"qty_step": Bound(0, 1e6, low_open=True), "min_qty": Bound(0, 1e9, low_open=True),
                      "tick_size": Bound(0, 1e6, low_open=True), "min_notional": Bound(0, 1e9),
                      "max_leverage": Bound(1, 200)}
_MONEY_BOUNDS = {
    "CAPITAL": Bound(0, low_open=True), "TAKER_FEE": Bound(0, 0.05), "MAKER_FEE": Bound(0, 0.05),
    "SLIPPAGE": Bound(0, 0.1), "FUNDING_RATE": Bound(-0.05, 0.05), "MAINTENANCE_MARGIN_RATE": Bound(0, 0.5),
    "DATA_DAYS_DEPTH": Bound(1, 36_500, whole=True, unit="days"),
}


def _validate_basics() -> None:
    """Paths, switches, symbols, data source, money and instruments: each setting's type and range."""
    for name in ("BASE_DIR", "DATA_DIR", "CACHE_DIR", "RESULTS_DIR"):
        if not isinstance(globals()[name], Path):
            raise ConfigError(f"config.py: {name} = {globals()[name]!r} is refused; accepted: a pathlib.Path")
    for name in ("ENABLE_FIXED_PARAMS", "ENABLE_OPTUNA"):
        if not isinstance(globals()[name], bool):
            raise ConfigError(f"config.py: {name} = {globals()[name]!r} is refused; accepted: True or False")
    if not isinstance(SYMBOLS, list) or not SYMBOLS:
        raise ConfigError(f"config.py: SYMBOLS = {SYMBOLS!r} is refused; accepted: a non-empty list of symbols")
    for symbol in SYMBOLS:
        check_param("symbol", symbol, "config.py: SYMBOLS")
    if not isinstance(DEFAULT_SOURCE, str) or not (DEFAULT_SOURCE in ("sample", "bybit")
                                                   or (DEFAULT_SOURCE.startswith("csv:") and len(DEFAULT_SOURCE) > 4)):
        raise ConfigError(f"config.py: DEFAULT_SOURCE = {DEFAULT_SOURCE!r} is refused; accepted: 'sample', 'bybit' "
                          "or 'csv:PATH'")
    for name, bound in _MONEY_BOUNDS.items():
        bound.check(name, globals()[name])
    check_mapping("INSTRUMENT_DEFAULT", INSTRUMENT_DEFAULT, _INSTRUMENT_BOUNDS)
    if not isinstance(INSTRUMENTS, dict):
        raise ConfigError(f"config.py: INSTRUMENTS = {INSTRUMENTS!r} is refused; accepted: a dict of symbols")
    for symbol, spec in INSTRUMENTS.items():
        check_param("symbol", symbol, "config.py: INSTRUMENTS")
        check_mapping(f"INSTRUMENTS['{symbol}']", spec, _INSTRUMENT_BOUNDS)
    rows = RISK_GOVERNOR if isinstance(RISK_GOVERNOR, (tuple, list)) else None
    if rows is None or len(rows) > 4 or not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in rows):
        raise ConfigError(f"config.py: RISK_GOVERNOR = {RISK_GOVERNOR!r} is refused; accepted: at most 4 "
                          "(drawdown, factor) pairs")
    for threshold, factor in rows:
        Bound(0, 1, low_open=True, high_open=True).check("RISK_GOVERNOR drawdown", threshold)
        Bound(0, 1, low_open=True).check("RISK_GOVERNOR factor", factor)
    thresholds = [row[0] for row in rows]
    if thresholds != sorted(thresholds, reverse=True) or len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"config.py: RISK_GOVERNOR = {RISK_GOVERNOR!r} is refused; accepted: rows from the "
                          "deepest drawdown down, each drawdown smaller than the one before")


_validate_basics()
_validate_library()


# ---------------------------------------------------------------------------------------------
# Optimization: Optuna search, hierarchical filters, walk-forward validation
# ---------------------------------------------------------------------------------------------
OPTUNA_SETTINGS = {
    "n_trials": 3900,          # the original GrTr's setting; `python main.py` uses DEFAULT_PIPELINE_TRIALS
    "n_jobs": 2,               # parallel backtests (threads; the bar loop releases the GIL)
    "sampler": "tpe",          # tpe (multivariate, seeded), random or cmaes
    "seed": 42,
    "n_startup_trials": 40,    # random trials before TPE models the results
    "window_best": 100,        # the sampler sees the best N trials ...
    "window_recent": 200,      # ... and the latest N, so its cost per trial stays flat
    "refine_share": 0.2,       # the last share of a run's trials refines the leaders (neighbours of the top 10)
}
DEFAULT_PIPELINE_TRIALS = 300
TRAIN_FRACTION = 0.50          # first half of the data for training
GAP_FRACTION = 0.15            # then a gap the objective never sees, then the test period
OBJECTIVE_FILTERS = {
    "min_trades_train": 30, "min_trades_test": 10,          # tier 1: enough trades
    "min_profit_factor": 1.0,                                # tier 2: profitable on both periods
    "min_sharpe_ratio": 0.3, "max_sharpe_ratio": 3.0,        # tier 3: test/train Sharpe within bounds
    "max_drawdown": -0.50,                                   # tier 4: drawdown on both periods
    "min_cagr": 0.0,                                         # tier 5: annualized test return
    "min_calmar": 0.3,                                       # tier 6: test Calmar
    "min_trades_per_month": 0.5,                             # tier 7: test trade frequency
    "max_sharpe": 6.0, "max_profit_factor": 10.0,            # tier 8: realism caps
    "exit_mix_bonus": 0.25, "exit_mix_penalty": 0.5,         # score: reward profit-taking exits, penalise forced ones
}
WF_FOLDS = 5
WF_TRAIN_RATIO = 3.0           # train bars per test bar in each walk-forward fold
WF_MIN_PROFITABLE_FOLDS = 0.6  # share of profitable test folds for a strategy to pass validation
VALIDATE_TOP = 5               # best trials validated walk-forward after a search
PBO_TOP_TRIALS = 10            # trials compared by the Probability of Backtest Overfitting


_OPTUNA_BOUNDS = {
    "n_trials": Bound(1, 10**8, whole=True), "n_jobs": Bound(1, 1024, whole=True),
    "seed": Bound(0, 2**32 - 1, whole=True),
    "n_startup_trials": Bound(0, 10**6, whole=True), "window_best": Bound(1, 10**6, whole=True),
    "window_recent": Bound(1, 10**6, whole=True), "refine_share": Bound(0, 1, high_open=True),
}
_FILTER_BOUNDS = {
    "min_trades_train": Bound(0, 10**6), "min_trades_test": Bound(0, 10**6), "min_profit_factor": Bound(0, 100),
    # the tiers divide by these to tell how close a result came, so they cannot be 0
    "min_sharpe_ratio": Bound(0, 100, low_open=True), "max_sharpe_ratio": Bound(0, 100, low_open=True),
    "max_drawdown": Bound(-1, 0, high_open=True), "min_cagr": Bound(-1, 1000),
    "min_calmar": Bound(0, 1000, low_open=True), "min_trades_per_month": Bound(0, 10**4, low_open=True),
    "max_sharpe": Bound(0, 1000, low_open=True), "max_profit_factor": Bound(0, 10**6, low_open=True),
    "exit_mix_bonus": Bound(0, 100), "exit_mix_penalty": Bound(0, 100),
}
_SEARCH_BOUNDS = {
    "DEFAULT_PIPELINE_TRIALS": Bound(1, 10**8, whole=True),
    "TRAIN_FRACTION": Bound(0, 1, low_open=True, high_open=True),
    "GAP_FRACTION": Bound(0, 1, high_open=True), "WF_FOLDS": Bound(2, 1000, whole=True),
    "WF_TRAIN_RATIO": Bound(0, 1000, low_open=True), "WF_MIN_PROFITABLE_FOLDS": Bound(0, 1),
    "VALIDATE_TOP": Bound(1, 10**4, whole=True), "PBO_TOP_TRIALS": Bound(2, 10**4, whole=True),
}


def _validate_optimization() -> None:
    for name, bound in _SEARCH_BOUNDS.items():
        bound.check(name, globals()[name])
    if TRAIN_FRACTION + GAP_FRACTION >= 0.95:
        raise ConfigError(f"TRAIN_FRACTION + GAP_FRACTION = {TRAIN_FRACTION + GAP_FRACTION} leaves no test period")
    if not isinstance(OPTUNA_SETTINGS, dict):
        raise ConfigError(f"config.py: OPTUNA_SETTINGS = {OPTUNA_SETTINGS!r} is refused; accepted: a dict")
    check_mapping("OPTUNA_SETTINGS", {k: v for k, v in OPTUNA_SETTINGS.items() if k != "sampler"}, _OPTUNA_BOUNDS)
    if OPTUNA_SETTINGS.get("sampler") not in ("tpe", "random", "cmaes"):
        raise ConfigError(f"OPTUNA_SETTINGS['sampler'] = {OPTUNA_SETTINGS.get('sampler')!r}; accepted: tpe, random, "
                          "cmaes")
    check_mapping("OBJECTIVE_FILTERS", OBJECTIVE_FILTERS, _FILTER_BOUNDS)
    if OBJECTIVE_FILTERS["max_sharpe_ratio"] < OBJECTIVE_FILTERS["min_sharpe_ratio"]:
        raise ConfigError("config.py: OBJECTIVE_FILTERS['max_sharpe_ratio'] must be >= min_sharpe_ratio")


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
TRADER_SETTING_BOUNDS = {  # what each setting (and its flag) accepts
    "http_timeout": Bound(0, 300, low_open=True, unit="seconds"),
    "stale_seconds": Bound(1, 3600, unit="seconds"),
    "reconcile_seconds": Bound(1, 86_400, unit="seconds"),
    "tick_grace_seconds": Bound(0, 3600, low_open=True, unit="seconds"),
    "price_max_age": Bound(0, 3600, low_open=True, unit="seconds"),
}
# The price that triggers the exchange-side stop-loss: "LastPrice" (as the backtest's candles),
# "MarkPrice" (immune to wicks on the last price) or "IndexPrice".
STOP_TRIGGER_BY = "LastPrice"
STOP_TRIGGER_CHOICES = ("LastPrice", "MarkPrice", "IndexPrice")
# One trader per account and symbol: a lease in state.sqlite written by a trader on another host (a shared
# folder, where file locks may not reach) counts as held while its heartbeat is younger than this.
LEASE_STALE_SECONDS = 300.0


def _validate_trader() -> None:
    check_mapping("TRADER_SETTINGS", TRADER_SETTINGS, TRADER_SETTING_BOUNDS)
    if STOP_TRIGGER_BY not in STOP_TRIGGER_CHOICES:
        raise ConfigError(f"config.py: STOP_TRIGGER_BY = {STOP_TRIGGER_BY!r} is refused; accepted: "
                          f"{', '.join(STOP_TRIGGER_CHOICES)}")
    Bound(10, 86_400, unit="seconds").check("LEASE_STALE_SECONDS", LEASE_STALE_SECONDS)


_validate_trader()


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
    "fatal": "on",                                 # the trader stopped on an error: its reason and what to do
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
    "merge_window_s": 300.0,          # repeats of an alert (same type and subject) less than this apart become
                                      # one message with a count ("x93"); 0 = off
    "merge_edit_interval_s": 10.0,    # a sent message's count is updated (edited) at most this often
    "min_send_interval_s": 1.0,       # at most one message per this many seconds per chat
    "retry_base_s": 2.0,              # delivery retry backoff: base, doubling ...
    "retry_max_s": 300.0,             # ... up to this
    "restart_max_per_hour": 3,        # --restart: restarts allowed in any hour, then it alerts and stops trying
    "restart_backoff_s": 30.0,        # wait before the 2nd restart of an hour, doubling after ...
    "restart_backoff_max_s": 900.0,   # ... up to this
    "kill_grace_s": 15.0,             # a hung trader gets this long to exit on SIGTERM before SIGKILL
    "log_tail_lines": 15,             # lines of logs/trader.log in the "trader stopped" alert
}
_WATCHDOG_BOUNDS = {
    "heartbeat_stale_s": Bound(1, 86_400), "startup_grace_s": Bound(1, 86_400), "poll_interval_s": Bound(0.01, 600),
    "updates_timeout_s": Bound(0, 600, whole=True), "request_timeout_s": Bound(0.1, 600),
    "merge_window_s": Bound(0, 86_400), "merge_edit_interval_s": Bound(0, 3600), "min_send_interval_s": Bound(0, 60),
    "retry_base_s": Bound(0.01, 3600), "retry_max_s": Bound(0.01, 86_400),
    "restart_max_per_hour": Bound(0, 100, whole=True),
    "restart_backoff_s": Bound(0, 86_400), "restart_backoff_max_s": Bound(0, 86_400), "kill_grace_s": Bound(0.1, 600),
    "log_tail_lines": Bound(0, 50, whole=True),
}


def validate_watchdog(settings: dict[str, Any], levels: dict[str, str], where: str = "config.py") -> dict[str, Any]:
    """Check watchdog settings and alert levels; the error names the bad key or value. Returns the
    settings with whole numbers as ints."""
    expected = set(_WATCHDOG_BOUNDS) | {"daily_summary_hour_utc"}
    for name in sorted(set(settings) ^ expected):
        state = "unknown" if name in settings else "missing"
        raise ConfigError(f"{where}: watchdog setting '{name}' is {state}; expected: {', '.join(sorted(expected))}")
    checked = dict(settings)
    for name, bound in _WATCHDOG_BOUNDS.items():
        checked[name] = bound.check(f"watchdog setting '{name}'", settings[name], where)
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
    return checked


validate_watchdog(WATCHDOG_SETTINGS, WATCHDOG_ALERT_LEVELS)
