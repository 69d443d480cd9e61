"""GrTr configuration: the strategy library, parameter declarations, costs, instruments, paths.

Every parameter the core reads is declared once in ``PARAM_SPECS`` with its type, default and
allowed range; each strategy file (``strategies/``, see strategy_loader.py) declares the params
its signals add in the same form. ``validate_params`` checks a params dict (fixed params, a params
file, an Optuna trial) against the declarations of its strategy and stops with an error that names
the bad key or value. The module validates its own settings at import and the strategy files are
checked when first loaded, so a typo fails at start, not mid-run.
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
# report.html's plotly.js: "directory" writes plotly.min.js (4.8 MB) once beside the report, which then
# opens offline while the two stay together; "inline" puts it inside every report (one file to mail)
REPORT_PLOTLYJS = "directory"

# ---------------------------------------------------------------------------------------------
# Switches of the default pipeline (`python main.py` with no arguments)
# ---------------------------------------------------------------------------------------------
ENABLE_FIXED_PARAMS = True
ENABLE_OPTUNA = True
ACTIVE_STRATEGY_KEY = "LONG"
SYMBOLS = ["BTCUSDT"]          # every command runs over these unless --symbol/--symbols; the sample has five
DEFAULT_SOURCE = "sample"
DATA_DAYS_DEPTH = 730
# Several symbols in one search: "together" searches one params set for all of them, scored by
# AGGREGATE_OBJECTIVE over the per-symbol scores; "each" runs one search per symbol.
SEARCH_SYMBOLS = "together"
SEARCH_SYMBOLS_CHOICES = ("together", "each")
AGGREGATE_OBJECTIVE = "min"    # min (the worst symbol's score: a strategy must work everywhere), mean or median
AGGREGATE_CHOICES = ("min", "mean", "median")

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

# Instruments: Bybit's instruments-info cached by `main.py download` (data/cache/instrument_<SYMBOL>.json)
# wins over INSTRUMENTS; a symbol in neither needs --tick and --qty-step (there is no silent default:
# a tick too coarse for the price rounds every stop and target onto the entry). INSTRUMENT_DEFAULT
# fills only the fields an entry leaves out: Bybit's usual minimum notional and the leverage cap.
INSTRUMENT_DEFAULT = {"min_notional": 5.0, "max_leverage": 100.0}
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


class UnknownParamError(ConfigError):
    """A parameter name that neither the common params nor any loaded strategy declares."""


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
MAX_PARTIAL_LEVELS = 4
STRATEGY_PARAM_KINDS = ("int", "float", "bool", "choice")  # the kinds a strategy file may declare
SYMBOL_PATTERN = re.compile(r"[A-Z0-9]{2,25}")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its kind (int, float, bool, choice, str, levels, strategy), default and allowed range.

    Strategy files declare theirs with this class too, e.g.
    ``ParamSpec("int", 20, 5, 200, doc="bars of the channel")`` or ``ParamSpec("choice", "ema", choices=("ema",
    "sma"), doc="...")``.
    """

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
    "mode": ParamSpec("strategy", "long_only", doc="the strategy: the NAME of a strategy file (strategies/, "
                                                    "--strategy-path, STRATEGY_PATHS)"),
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
    # signals (the signal params themselves are declared by each strategy file)
    "signal_exit_after_breakeven": _b(True, "the strategy's exit signal closes a trade only once breakeven has "
                                            "fired (each strategy file declares its default)"),
    # holding time
    "max_hold_hours": _f(0.0, 0.0, 100000.0, "close after this many hours in the trade (0 = off)"),
    "cooldown_period_candles": _i(0, 0, 10000, "closes without new entries after a breakeven, profit-lock or "
                                               "trailing exit (the exit bar's close counts)"),
    "stagnation_atr_threshold": _f(0.0, 0.0, 100.0, "arm the stagnation exit once peak profit exceeds "
                                                    "this many ATR at entry x the size held (0 = off)"),
    "stagnation_profit_decay": _f(0.7, 0.0, 1.0, "exit when profit falls below this share of its peak"),
}

# Keys of the original GrTr that GrTr replaced; named in the error so old files are easy to fix.
RETIRED_KEYS = {
    "min_amount_precision": "the quantity step now comes from the instrument (INSTRUMENTS / instruments-info)",
    "limit": "the history depth is chosen with --days or --start/--end",
}


def check_value(name: str, value: Any, spec: ParamSpec, where: str) -> Any:
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
    if spec.kind in ("str", "strategy"):
        if not isinstance(value, str) or not value:
            raise bad("must be a non-empty string")
        return value
    if spec.kind == "symbol":
        if not isinstance(value, str) or not SYMBOL_PATTERN.fullmatch(value):
            raise bad("is not a Bybit symbol: 2 to 25 capital letters and digits, e.g. BTCUSDT")
        return value
    if spec.kind == "levels":
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_PARTIAL_LEVELS:
            raise bad(f"must be a list of 1 to {MAX_PARTIAL_LEVELS} numbers")
        levels = tuple(float(check_value(f"{name}[{k}]", v, ParamSpec("float", 0.0, spec.low, spec.high), where))
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


def _strategies() -> Any:
    """The strategy registry (imported on first use: loading strategy files needs the backtester)."""
    import strategy_loader

    return strategy_loader


def check_param_name(name: str, where: str, mode: str | None = None) -> ParamSpec:
    """The spec of ``name`` (a common parameter, or one strategy ``mode`` declares; without ``mode``, one any
    loaded strategy declares), or an error that names it and the accepted keys."""
    if name in RETIRED_KEYS:
        raise ConfigError(f"{where}: parameter '{name}' is no longer used: {RETIRED_KEYS[name]}")
    if name in PARAM_SPECS:
        return PARAM_SPECS[name]
    return _strategies().strategy_param_spec(name, where, mode)


def check_param(name: str, value: Any, where: str, mode: str | None = None) -> Any:
    """One parameter's value converted to its kind, or an error naming it (no cross-field checks)."""
    return check_value(name, value, check_param_name(name, where, mode), where)


def apply_params(params: dict[str, Any], base: dict[str, Any], where: str) -> dict[str, Any]:
    """``base`` (complete params of one strategy) updated with ``params``, each checked, then the cross-checks."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values, got {type(params).__name__}")
    mode = base["mode"]
    full = dict(base)
    for name, value in params.items():
        full[name] = check_param(name, value, where, mode)
    if full["mode"] != mode:
        raise ConfigError(f"{where}: parameter 'mode' = {full['mode']!r} cannot change the strategy here ({mode})")
    if full["profit_lock_trigger_pct"] > 0 and full["profit_lock_target_pct"] <= 0:
        raise ConfigError(f"{where}: profit_lock_target_pct must be > 0 when profit_lock_trigger_pct > 0")
    return full


def validate_params(params: dict[str, Any], where: str = "params", base: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Check ``params`` and return a complete dict for their strategy.

    The strategy is ``params['mode']`` (else the base's). The params are applied over ``base``, or over
    the strategy's fixed params when there is no base or the base belongs to another strategy, so
    a params file always lands on the fixed params of the strategy it names.
    """
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values, got {type(params).__name__}")
    mode = params.get("mode", (base or {}).get("mode", PARAM_SPECS["mode"].default))
    strategy = _strategies().get(mode, where)
    if base is None or base.get("mode") != strategy.name:
        base = strategy.fixed_params()
    return apply_params({**params, "mode": strategy.name}, base, where)


def load_params_file(path: str | Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a JSON params file (the format of best_params.json), validate it and refuse params whose signals
    read the future (the look-ahead guard on its values).

    A best_params.json names the strategy file it was made with (``strategy_file``); that file is
    loaded when its strategy is not loaded yet, so the params run anywhere the file is reachable.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"params file {path} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
        if raw.get("strategy_file"):
            _strategies().ensure_loaded(raw["params"].get("mode"), raw["strategy_file"], str(path))
        raw = raw["params"]
    params = validate_params(raw, where=str(path), base=base)
    _strategies().check_params_look_ahead(params, str(path))
    return params


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice is an error (json would silently keep the last value)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"params file {path}: key '{key}' appears twice ({seen[key]!r} and {value!r}); "
                              "keep one")
        seen[key] = value
    return seen


INSTRUMENT_FIELDS = ("qty_step", "min_qty", "tick_size", "min_notional", "max_leverage")


def instrument_for(symbol: str, tick: float | None = None, qty_step: float | None = None) -> dict[str, float]:
    """Tick, quantity step, minimum quantity and notional, leverage cap of ``symbol``.

    Bybit's cached instruments-info wins over INSTRUMENTS; ``tick``/``qty_step`` (the --tick and
    --qty-step flags, e.g. for a CSV source) override both, the minimum quantity becoming at least
    one step. A symbol known nowhere is an error naming what to pass.
    """
    spec: dict[str, float] = dict(INSTRUMENT_DEFAULT)
    spec.update(INSTRUMENTS.get(symbol, {}))
    cached = CACHE_DIR / f"instrument_{symbol}.json"
    if cached.exists():
        spec.update({k: float(v) for k, v in json.loads(cached.read_text()).items() if k in INSTRUMENT_FIELDS})
    for flag, name, value in (("--tick", "tick_size", tick), ("--qty-step", "qty_step", qty_step)):
        if value is None:
            continue
        if not FLAG_BOUNDS[flag].accepts(value):
            raise ConfigError(f"{flag} {value!r} is refused; accepted: {FLAG_BOUNDS[flag].describe()}")
        spec[name] = float(value)
    if qty_step is not None:
        spec["min_qty"] = max(spec.get("min_qty", 0.0), spec["qty_step"])
    missing = [k for k in ("tick_size", "qty_step") if k not in spec]
    if missing:
        raise ConfigError(f"no instrument info for '{symbol}' ({' and '.join(missing)} unknown): run `python main.py "
                          f"download --symbol {symbol}` (caches Bybit's instrument info), add it to "
                          "config.INSTRUMENTS, or pass --tick and --qty-step")
    spec.setdefault("min_qty", spec["qty_step"])
    return spec


def costs() -> dict[str, float]:
    """The account-level costs the venue applies."""
    return {"capital": CAPITAL, "taker_fee": TAKER_FEE, "maker_fee": MAKER_FEE, "slippage": SLIPPAGE,
            "funding_rate": FUNDING_RATE, "maintenance_margin_rate": MAINTENANCE_MARGIN_RATE}


# ---------------------------------------------------------------------------------------------
# The strategy library: keys -> strategy files (each file holds its signals, params, fixed params, grid)
# ---------------------------------------------------------------------------------------------
STRATEGY_LIBRARY: dict[str, str] = {
    "LONG": "strategies/long_only.py",
    "SHORT": "strategies/short_only.py",
    "SCALP": "strategies/short_scalp.py",
}
# Further folders of strategy files (relative to this file's folder, or absolute), loaded like
# strategies/ and like `--strategy-path DIR`; add a key above to switch to one of them with
# ACTIVE_STRATEGY_KEY.
STRATEGY_PATHS: list[str] = []


def strategy(key: str) -> Any:
    """The strategy ``key`` names: a STRATEGY_LIBRARY key, a loaded strategy's NAME or a .py path."""
    return _strategies().resolve(key)


def fixed_params(key: str) -> dict[str, Any]:
    """The validated, complete fixed params of strategy ``key`` (a copy the caller may change)."""
    return strategy(key).fixed_params()


def param_grid(key: str) -> dict[str, Any]:
    """The Optuna grid of strategy ``key``."""
    return dict(strategy(key).param_grid)


def param_specs(mode: str) -> dict[str, ParamSpec]:
    """Every parameter a params dict of strategy ``mode`` holds: the common ones and the strategy's own."""
    return {**PARAM_SPECS, **_strategies().get(mode, "param_specs").params}


def _validate_library() -> None:
    """What can be checked without loading the files (they are checked when loaded, at first use)."""
    if ACTIVE_STRATEGY_KEY not in STRATEGY_LIBRARY:
        raise ConfigError(f"ACTIVE_STRATEGY_KEY '{ACTIVE_STRATEGY_KEY}' is not in STRATEGY_LIBRARY "
                          f"({', '.join(STRATEGY_LIBRARY)})")
    for key, path in STRATEGY_LIBRARY.items():
        if not isinstance(path, str) or not path.endswith(".py"):
            raise ConfigError(f"STRATEGY_LIBRARY['{key}'] = {path!r} must be the path of a strategy file (.py)")
    if not isinstance(STRATEGY_PATHS, list) or not all(isinstance(p, str) for p in STRATEGY_PATHS):
        raise ConfigError(f"STRATEGY_PATHS = {STRATEGY_PATHS!r} must be a list of folder paths")
    if SEARCH_SYMBOLS not in SEARCH_SYMBOLS_CHOICES:
        raise ConfigError(f"SEARCH_SYMBOLS = {SEARCH_SYMBOLS!r}; accepted: {', '.join(SEARCH_SYMBOLS_CHOICES)}")
    if AGGREGATE_OBJECTIVE not in AGGREGATE_CHOICES:
        raise ConfigError(f"AGGREGATE_OBJECTIVE = {AGGREGATE_OBJECTIVE!r}; accepted: {', '.join(AGGREGATE_CHOICES)}")
    for name, spec in PARAM_SPECS.items():
        check_value(name, spec.default, spec, "PARAM_SPECS default")


def check_grid_entry(name: str, entry: Any, where: str, mode: str | None = None) -> ParamSpec:
    """One entry of a search grid of strategy ``mode``: (low, high) a range, a list the choices, a scalar a
    fixed value; each value inside the parameter's own range. Returns the parameter's spec."""
    spec = check_param_name(name, where, mode)
    if isinstance(entry, tuple):
        if len(entry) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry):
            raise ConfigError(f"{where}: '{name}' = {entry!r}: a range must be a 2-tuple of numbers")
        if entry[0] > entry[1]:
            raise ConfigError(f"{where}: '{name}' = {entry!r}: low is above high")
        for bound in entry:
            check_param(name, bound, where, mode)
        if spec.kind == "int" and not all(isinstance(v, int) for v in entry):
            raise ConfigError(f"{where}: '{name}' is a whole-number parameter; range {entry!r} must hold ints")
        if spec.kind not in ("int", "float"):
            raise ConfigError(f"{where}: '{name}' is a {spec.kind} parameter and cannot take a range")
    elif isinstance(entry, list):
        if not entry:
            raise ConfigError(f"{where}: '{name}' has an empty list of choices")
        for value in entry:
            check_param(name, value, where, mode)
    else:
        check_param(name, entry, where, mode)
    return spec


_INSTRUMENT_BOUNDS = {"qty_step": Bound(0, 1e6, low_open=True), "min_qty": Bound(0, 1e9, low_open=True),
                      "tick_size": Bound(0, 1e6, low_open=True), "min_notional": Bound(0, 1e9),
                      "max_leverage": Bound(1, 200)}
# the defaults hold no precision: a symbol's tick and step must be known (INSTRUMENTS, Bybit's info or flags)
_INSTRUMENT_DEFAULT_BOUNDS = {k: _INSTRUMENT_BOUNDS[k] for k in ("min_notional", "max_leverage")}
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
    check_mapping("INSTRUMENT_DEFAULT", INSTRUMENT_DEFAULT, _INSTRUMENT_DEFAULT_BOUNDS)
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
    "n_jobs": 2,               # worker processes on one study storage (--jobs)
    "sampler": "cmaes",        # cmaes, tpe (multivariate) or random (--sampler); cmaes: README, "which sampler"
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
    "WF_FOLD_TRIALS": Bound(1, 10**6, whole=True),
    "HOLDOUT_FRACTION": Bound(0, 0.5), "HOLDOUT_RANDOM_PASSING": Bound(1, 10**6, whole=True),
    "HOLDOUT_RANDOM_DRAWS": Bound(1, 10**8, whole=True),
    "MAX_PBO": Bound(0, 1), "MIN_DSR": Bound(0, 1, high_open=True), "PBO_BLOCKS": Bound(2, 20, whole=True),
}

# What the command lines' number flags accept: the bound of the setting each stands in for, checked as the flag
# is parsed (cli.bounded), before any work
FLAG_BOUNDS = {
    "--trials": _OPTUNA_BOUNDS["n_trials"], "--jobs": _OPTUNA_BOUNDS["n_jobs"], "--seed": _OPTUNA_BOUNDS["seed"],
    "--folds": _SEARCH_BOUNDS["WF_FOLDS"], "--fold-trials": _SEARCH_BOUNDS["WF_FOLD_TRIALS"],
    "--baseline-draws": _SEARCH_BOUNDS["HOLDOUT_RANDOM_DRAWS"], "--worker-id": Bound(0, 10**6, whole=True),
    "--days": _MONEY_BOUNDS["DATA_DAYS_DEPTH"], "--tick": _INSTRUMENT_BOUNDS["tick_size"],
    "--qty-step": _INSTRUMENT_BOUNDS["qty_step"], "--history-bars": Bound(1, 10**7, whole=True),
}


def _validate_optimization() -> None:
    for name, bound in _SEARCH_BOUNDS.items():
        bound.check(name, globals()[name])
    if TRAIN_FRACTION + GAP_FRACTION >= 0.95:
        raise ConfigError(f"TRAIN_FRACTION + GAP_FRACTION = {TRAIN_FRACTION + GAP_FRACTION} leaves no test period")
    if PBO_BLOCKS % 2:
        raise ConfigError(f"config.py: PBO_BLOCKS = {PBO_BLOCKS!r} is refused; accepted: an even whole number in "
                          "[2, 20] (CSCV splits the blocks in halves)")
    if not isinstance(OPTUNA_SETTINGS, dict):
        raise ConfigError(f"config.py: OPTUNA_SETTINGS = {OPTUNA_SETTINGS!r} is refused; accepted: a dict")
    check_mapping("OPTUNA_SETTINGS", {k: v for k, v in OPTUNA_SETTINGS.items() if k != "sampler"}, _OPTUNA_BOUNDS)
    if OPTUNA_SETTINGS.get("sampler") not in SAMPLER_CHOICES:
        raise ConfigError(f"config.py: OPTUNA_SETTINGS['sampler'] = {OPTUNA_SETTINGS.get('sampler')!r} is refused; "
                          f"accepted: {', '.join(SAMPLER_CHOICES)}")
    check_mapping("OBJECTIVE_FILTERS", OBJECTIVE_FILTERS, _FILTER_BOUNDS)
    if OBJECTIVE_FILTERS["max_sharpe_ratio"] < OBJECTIVE_FILTERS["min_sharpe_ratio"]:
        raise ConfigError("config.py: OBJECTIVE_FILTERS['max_sharpe_ratio'] must be >= min_sharpe_ratio")


_validate_optimization()
if REPORT_PLOTLYJS not in ("directory", "inline"):
    raise ConfigError(f"REPORT_PLOTLYJS = {REPORT_PLOTLYJS!r}; accepted: directory, inline")


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
# The money the live trader sizes from is the exchange wallet's (its USDT equity less unrealised PnL, read at
# every bar close); MAX_CAPITAL caps how much of it the strategy trades (None: all of it; --max-capital).
# The backtest and paper replays size from CAPITAL.
MAX_CAPITAL = None
MAX_CAPITAL_BOUND = Bound(0, low_open=True, unit="USDT")
# After this many refused stop moves in a row the trader closes the position (reduce-only, at market)
# rather than leave it under a stop it does not control.
STOP_REJECTIONS_TO_CLOSE = 3
STOP_REJECTIONS_BOUND = Bound(1, 100, whole=True)
# One trader per account and symbol: a lease in state.sqlite written by a trader on another host (a shared
# folder, where file locks may not reach) counts as held while its heartbeat is younger than this.
LEASE_STALE_SECONDS = 300.0


def _validate_trader() -> None:
    check_mapping("TRADER_SETTINGS", TRADER_SETTINGS, TRADER_SETTING_BOUNDS)
    if STOP_TRIGGER_BY not in STOP_TRIGGER_CHOICES:
        raise ConfigError(f"config.py: STOP_TRIGGER_BY = {STOP_TRIGGER_BY!r} is refused; accepted: "
                          f"{', '.join(STOP_TRIGGER_CHOICES)}")
    Bound(10, 86_400, unit="seconds").check("LEASE_STALE_SECONDS", LEASE_STALE_SECONDS)
    if MAX_CAPITAL is not None:
        MAX_CAPITAL_BOUND.check("MAX_CAPITAL", MAX_CAPITAL)
    STOP_REJECTIONS_BOUND.check("STOP_REJECTIONS_TO_CLOSE", STOP_REJECTIONS_TO_CLOSE)


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
    "stop_rejected": "on",                         # the exchange refused a stop move (N in a row: position closed)
    "wallet_sync": "on",                           # the wallet changed by more than the booked fills explain
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
