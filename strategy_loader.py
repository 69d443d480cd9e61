"""Strategy files: loading and checking them, the registry, and their signals.

A strategy is one Python file. The built-in LONG, SHORT and SCALP live in ``strategies/``; a user's
live in any folder (``--strategy-path DIR`` on every command, ``config.STRATEGY_PATHS``) or wherever
a ``config.STRATEGY_LIBRARY`` entry points. A file declares:

* ``NAME``: the strategy's name, the value of the ``mode`` param in params files and prod configs;
* ``SIDE``: "long", "short" or "both", the entries its signals emit (the live trader runs a long or
  a short strategy on its side; "both" trades one position either way, in backtests only);
* ``SIGNAL_EXIT_AFTER_BREAKEVEN``: True when its exit signal may close a trade only once the
  breakeven rule has fired (the built-in trend strategies), False when it closes the trade at once;
* ``PARAMS``: the params its signals add, name -> ``config.ParamSpec`` (kind, default, range, doc);
* ``READS`` (optional): common params its signals read as well, e.g. ``("atr_period",)``;
* ``FIXED_PARAMS``: its default params (common and its own); ``PARAM_GRID``: its Optuna grid;
* ``signals(data, params) -> np.ndarray``: one code per bar (``core.SIG_LONG``, ``SIG_SHORT``,
  ``SIG_EXIT_LONG``, ``SIG_EXIT_SHORT``, 0 = nothing), vectorised over ``backtester.MarketData``,
  the code of bar t computed from bars <= t only;
* ``lookback(params) -> int`` (optional): its longest look-back in bars (the walk-forward purge
  gap); without it, the largest whole-number param its signals read.

Loading checks every declaration, then runs the look-ahead guard: on a generated history, the
signals of the first k bars must equal the first k of the full run, for several k (four fixed
ones and up to twelve chosen right after bars where the signal changes, where a rule that peeks at
the next bar shows). It runs on the fixed params and on each value the search can pick at an end of
the grid (both ends of a range, every choice of a list), one at a time, and again on every params
file and prod config loaded (``check_params_look_ahead``), since a param like a shift of -5 bars
reads the future only for some values. A file or params set that fails is refused with one line
naming the param and its value.

The ``params`` that reach ``signals`` hold only the strategy's own params and its READS, and the
signal cache is keyed by exactly those, so no param can be served signals computed for another
value of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numba import njit

import config
import core
from config import ConfigError, ParamSpec, UnknownParamError

if TYPE_CHECKING:
    from backtester import MarketData

REPO_DIR = Path(__file__).resolve().parent  # config paths are relative to the repository, wherever outputs go
BUILTIN_DIR = REPO_DIR / "strategies"
SIDES = ("long", "short", "both")
GUARD_MIN_BARS = 1500
GUARD_CUTS = 12


@njit(cache=True)
def first_bad_code(codes: np.ndarray, allow_long: bool, allow_short: bool) -> int:
    """Index of the first code that is not a signal of the allowed sides (0 is always allowed), or -1."""
    for i in range(codes.shape[0]):
        c = codes[i]
        if c == 0:
            continue
        if allow_long and (c == core.SIG_LONG or c == core.SIG_EXIT_LONG):
            continue
        if allow_short and (c == core.SIG_SHORT or c == core.SIG_EXIT_SHORT):
            continue
        return i
    return -1


class DeclaredParams(dict):
    """The params a strategy's signals may read: its own and its READS. Reading another is an error,
    because the signal cache would not know that the signals depend on it."""

    def __init__(self, strategy: str, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.strategy = strategy

    def __missing__(self, key: str) -> Any:
        raise ConfigError(f"strategy '{self.strategy}' reads parameter '{key}' without declaring it: add it to "
                          "PARAMS (a param of its own) or READS (a common one)")

    def get(self, key: str, default: Any = None) -> Any:
        """As ``self[key]``: an undeclared param is an error here too, never a silent default."""
        return self[key]


@dataclass
class Strategy:
    """One loaded strategy file: its declarations, its complete fixed params and its signal function."""

    name: str
    path: Path
    side: str
    signal_exit_after_breakeven: bool
    params: dict[str, ParamSpec]
    reads: tuple[str, ...]
    declared_fixed: dict[str, Any]
    param_grid: dict[str, Any]
    signal_fn: Callable[[Any, dict[str, Any]], Any]
    lookback_fn: Callable[[dict[str, Any]], int] | None
    sha256: str
    fixed: dict[str, Any] = field(default_factory=dict)
    guarded: set[tuple] = field(default_factory=set)  # signal cache keys the look-ahead guard passed

    @property
    def signal_keys(self) -> tuple[str, ...]:
        """The params its signals depend on: the signal cache key."""
        return (*self.params, *self.reads)

    def fixed_params(self) -> dict[str, Any]:
        """The complete, validated fixed params (a copy)."""
        return dict(self.fixed)

    def declared(self, params: dict[str, Any]) -> DeclaredParams:
        """The part of ``params`` its signals may read."""
        return DeclaredParams(self.name, {k: params[k] for k in self.signal_keys})

    def cache_key(self, params: dict[str, Any]) -> tuple:
        """Signals are equal for equal keys: the name and the values of every param they read."""
        return (self.name, *(params[k] for k in self.signal_keys))

    def compute(self, data: MarketData, params: dict[str, Any]) -> np.ndarray:
        """The signal codes of ``data`` for ``params`` as int8, checked (one per bar, codes of its side)."""
        try:
            out = self.signal_fn(data, self.declared(params))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of the strategy file: named, with its line
            raise ConfigError(f"strategy '{self.name}' ({self.path}): signals failed: {describe(exc, self.path)}"
                              ) from None
        codes = np.asarray(out)
        n = len(data)
        if codes.shape != (n,):
            raise ConfigError(f"strategy '{self.name}' ({self.path}): signals returned shape {codes.shape}; "
                              f"expected one code per bar, shape ({n},)")
        if codes.dtype.kind not in "iu":
            raise ConfigError(f"strategy '{self.name}' ({self.path}): signals returned {codes.dtype} values; "
                              "expected integer codes (core.SIG_LONG, SIG_SHORT, SIG_EXIT_LONG, SIG_EXIT_SHORT, 0)")
        bad = first_bad_code(codes, self.side != "short", self.side != "long")
        if bad >= 0:
            raise ConfigError(f"strategy '{self.name}' ({self.path}): signal code {codes[bad]} at bar {bad} is not "
                              f"one a {self.side} strategy emits; accepted: {', '.join(map(str, self.codes()))}")
        return codes.astype(np.int8)

    def codes(self) -> tuple[int, ...]:
        """The signal codes its side allows."""
        long_codes = (core.SIG_LONG, core.SIG_EXIT_LONG) if self.side != "short" else ()
        short_codes = (core.SIG_SHORT, core.SIG_EXIT_SHORT) if self.side != "long" else ()
        return (0, *long_codes, *short_codes)

    def lookback(self, params: dict[str, Any]) -> int:
        """Its longest look-back in bars for ``params``."""
        view = self.declared(params)
        if self.lookback_fn is None:
            whole = [view[k] for k in self.signal_keys
                     if config.check_param_name(k, "lookback", self.name).kind == "int"]
            return int(max(whole, default=0))
        try:
            value = self.lookback_fn(view)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of the strategy file
            raise ConfigError(f"strategy '{self.name}' ({self.path}): lookback failed: {describe(exc, self.path)}"
                              ) from None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"strategy '{self.name}' ({self.path}): lookback returned {value!r}; expected a "
                              "whole number of bars >= 0")
        return int(value)


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------
_registry: dict[str, Strategy] = {}
_files: dict[Path, Strategy] = {}
_requested: list[str] = []   # paths loaded on request (--strategy-path, params files): for worker processes
_defaults_loaded = False
_loading_defaults = False
_lock = threading.RLock()


def _ensure_defaults() -> None:
    """Load strategies/, the files of STRATEGY_LIBRARY and the folders of STRATEGY_PATHS (once).

    Other threads wait on the lock until they are loaded; the loading thread itself re-enters
    (validating a file's params asks the registry) and passes.
    """
    global _defaults_loaded, _loading_defaults
    if _defaults_loaded:
        return
    with _lock:
        if _defaults_loaded or _loading_defaults:
            return
        _loading_defaults = True
        try:
            load_folder(BUILTIN_DIR)
            for key, path in config.STRATEGY_LIBRARY.items():
                load_file(_config_path(path), f"STRATEGY_LIBRARY['{key}']")
            for folder in config.STRATEGY_PATHS:
                load_folder(_config_path(folder), "STRATEGY_PATHS")
            _defaults_loaded = True
        finally:
            _loading_defaults = False


def _config_path(path: str) -> Path:
    """A path of config.py: absolute, or relative to the repository."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else REPO_DIR / candidate


def get(name: Any, where: str = "params") -> Strategy:
    """The loaded strategy called ``name``, or an error listing the loaded ones."""
    _ensure_defaults()
    strategy = _registry.get(name) if isinstance(name, str) else None
    if strategy is None:
        raise ConfigError(f"{where}: unknown strategy '{name}'; loaded: {', '.join(sorted(_registry))} "
                          "(a strategy of your own: --strategy-path DIR or config.STRATEGY_PATHS)")
    return strategy


def resolve(key: str) -> Strategy:
    """A STRATEGY_LIBRARY key, a loaded strategy's NAME, or the path of a strategy file (.py)."""
    _ensure_defaults()
    if key in config.STRATEGY_LIBRARY:
        return load_file(_config_path(config.STRATEGY_LIBRARY[key]), f"STRATEGY_LIBRARY['{key}']")
    if key in _registry:
        return _registry[key]
    if key.endswith(".py"):
        return load_file(Path(key), "--strategy", remember=True)
    raise ConfigError(f"unknown strategy '{key}'; accepted: {', '.join(config.STRATEGY_LIBRARY)}, the loaded "
                      f"strategies {', '.join(sorted(_registry))}, or the path of a strategy file (.py); a folder "
                      "of your own: --strategy-path DIR")


def add_path(path: str) -> list[Strategy]:
    """Load a strategy file or every strategy file of a folder (``--strategy-path``)."""
    _ensure_defaults()
    target = Path(path).expanduser()
    if target.is_dir():
        return load_folder(target, "--strategy-path", remember=True)
    if target.is_file():
        return [load_file(target, "--strategy-path", remember=True)]
    raise ConfigError(f"--strategy-path {path}: no such file or folder")


def ensure_loaded(name: Any, strategy_file: str, where: str) -> None:
    """Load ``strategy_file`` when strategy ``name`` is not loaded yet (a params file or prod config names it)."""
    _ensure_defaults()
    if isinstance(name, str) and name in _registry:
        return
    if not Path(strategy_file).is_file():
        raise ConfigError(f"{where}: strategy '{name}' is not loaded and its file {strategy_file} does not exist; "
                          "give its folder with --strategy-path")
    load_file(Path(strategy_file), where, remember=True)


def requested_sources() -> list[str]:
    """The files and folders loaded on request in this process, for a worker process to load too."""
    return list(_requested)


def load_sources(sources: list[str]) -> None:
    """Load what ``requested_sources`` returned in another process."""
    for source in sources:
        add_path(source)


def loaded() -> dict[str, Strategy]:
    """Every loaded strategy by name."""
    _ensure_defaults()
    return dict(_registry)


def strategy_param_spec(name: str, where: str, mode: str | None = None) -> ParamSpec:
    """The spec of a strategy's own param ``name``: strategy ``mode``'s (each strategy names its params
    for itself), or without ``mode`` the first loaded strategy's that declares it."""
    _ensure_defaults()
    if mode is not None:
        strategy = get(mode, where)
        if name in strategy.params:
            return strategy.params[name]
        owners = sorted(s.name for s in _registry.values() if name in s.params)
        if owners:
            raise ConfigError(f"{where}: parameter '{name}' belongs to strategy {', '.join(owners)}, not to {mode}")
        accepted = {*config.PARAM_SPECS, *strategy.params}
    else:
        for strategy in _registry.values():
            if name in strategy.params:
                return strategy.params[name]
        accepted = {*config.PARAM_SPECS, *(k for s in _registry.values() for k in s.params)}
    raise UnknownParamError(f"{where}: unknown parameter '{name}'; accepted: {', '.join(sorted(accepted))}")


# ----------------------------------------------------------------------------------------------
# Loading one file
# ----------------------------------------------------------------------------------------------
def describe(exc: BaseException, path: Path) -> str:
    """An exception as one line, with the line of ``path`` where it happened."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc}" + (f" (line {line})" if line else "")


def load_folder(folder: Path, where: str = "strategies", remember: bool = False) -> list[Strategy]:
    """Every strategy file of ``folder`` (``*.py`` not starting with ``_``: those may be helpers)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{where}: strategy folder {folder} does not exist")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # at the end: files may import helpers beside them, never shadow ours
    found = [load_file(path, where) for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")]
    if remember:
        _requested.append(str(folder))
    return found


def load_file(path: Path, where: str = "strategy", remember: bool = False) -> Strategy:
    """Load, check and register one strategy file (once per path)."""
    _ensure_defaults()
    path = Path(path).expanduser().resolve()
    with _lock:
        if path in _files:
            return _files[path]
        if not path.is_file():
            raise ConfigError(f"{where}: strategy file {path} does not exist")
        strategy = _declarations(_import(path), path)
        if strategy.name in _registry:
            raise ConfigError(f"strategy file {path}: NAME '{strategy.name}' is already the strategy of "
                              f"{_registry[strategy.name].path}")
        _registry[strategy.name] = strategy  # before its params are validated: they ask the registry
        try:
            _check_params(strategy)
            check_look_ahead(strategy)
        except BaseException:
            del _registry[strategy.name]
            raise
        _files[path] = strategy
        if remember:
            _requested.append(str(path))
        return strategy


def _import(path: Path) -> ModuleType:
    name = f"grtr_strategy_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"strategy file {path} cannot be imported (not a Python file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any fault of the file: named with its line
        del sys.modules[name]
        raise ConfigError(f"strategy file {path} could not be loaded: {describe(exc, path)}") from None
    return module


def _declarations(module: ModuleType, path: Path) -> Strategy:
    """The file's declarations, each checked; the fixed params are checked after registration."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"strategy file {path}: {what}")

    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise bad(f"NAME = {name!r} must be a name like 'donchian_breakout' (letters, digits, _)")
    side = getattr(module, "SIDE", None)
    if side not in SIDES:
        raise bad(f"SIDE = {side!r}; accepted: {', '.join(SIDES)}")
    exit_rule = getattr(module, "SIGNAL_EXIT_AFTER_BREAKEVEN", None)
    if not isinstance(exit_rule, bool):
        raise bad(f"SIGNAL_EXIT_AFTER_BREAKEVEN = {exit_rule!r} must be True (the exit signal closes a trade only "
                  "once breakeven has fired) or False (it closes the trade whenever it fires)")
    params = getattr(module, "PARAMS", {})
    if not isinstance(params, dict):
        raise bad(f"PARAMS must be a dict of name -> config.ParamSpec, got {type(params).__name__}")
    for key, spec in params.items():
        _check_spec(key, spec, bad, f"strategy file {path}: default of PARAMS['{key}']")
    reads = getattr(module, "READS", ())
    if not isinstance(reads, (tuple, list)) or any(r not in config.PARAM_SPECS or r == "mode" for r in reads):
        raise bad(f"READS = {reads!r} must list common params (e.g. 'atr_period'); the common params are "
                  f"{', '.join(sorted(k for k in config.PARAM_SPECS if k != 'mode'))}")
    fixed = getattr(module, "FIXED_PARAMS", {})
    grid = getattr(module, "PARAM_GRID", {})
    for label, value in (("FIXED_PARAMS", fixed), ("PARAM_GRID", grid)):
        if not isinstance(value, dict):
            raise bad(f"{label} must be a dict, got {type(value).__name__}")
    if "signal_exit_after_breakeven" in fixed:
        raise bad("FIXED_PARAMS sets signal_exit_after_breakeven: declare it once, as SIGNAL_EXIT_AFTER_BREAKEVEN")
    if fixed.get("mode", name) != name or "mode" in grid:
        raise bad(f"'mode' is the strategy's NAME ({name}); FIXED_PARAMS and PARAM_GRID do not choose it")
    signals = getattr(module, "signals", None)
    if not callable(signals):
        raise bad("no function signals(data, params) -> np.ndarray of signal codes")
    lookback = getattr(module, "lookback", None)
    if lookback is not None and not callable(lookback):
        raise bad("lookback must be a function lookback(params) -> bars")
    return Strategy(name, path, side, exit_rule, dict(params), tuple(reads), dict(fixed), dict(grid), signals,
                    lookback, hashlib.sha256(path.read_bytes()).hexdigest())


def _check_spec(key: Any, spec: Any, bad: Callable[[str], ConfigError], where: str) -> None:
    """One declared param: a new name, a kind a strategy may use, a sound range and a valid default."""
    if not isinstance(key, str) or not key.isidentifier():
        raise bad(f"PARAMS key {key!r} must be a name like 'channel_period'")
    if key in config.PARAM_SPECS or key in config.RETIRED_KEYS:
        raise bad(f"PARAMS declares '{key}', a common parameter; read a common one through READS instead")
    if not isinstance(spec, ParamSpec):
        raise bad(f"PARAMS['{key}'] must be a config.ParamSpec, got {type(spec).__name__}")
    if spec.kind not in config.STRATEGY_PARAM_KINDS:
        raise bad(f"PARAMS['{key}'] kind {spec.kind!r}; accepted: {', '.join(config.STRATEGY_PARAM_KINDS)}")
    if spec.kind in ("int", "float"):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (spec.low, spec.high)) \
                or spec.low > spec.high:
            raise bad(f"PARAMS['{key}'] needs a range low <= high, got [{spec.low}, {spec.high}]")
    if spec.kind == "choice" and not spec.choices:
        raise bad(f"PARAMS['{key}'] is a choice without choices")
    if not isinstance(spec.doc, str) or not spec.doc.strip():
        raise bad(f"PARAMS['{key}'] needs a one-line doc")
    config.check_value(key, spec.default, spec, where)


def _check_params(strategy: Strategy) -> None:
    """The complete fixed params (common defaults, its params' defaults, FIXED_PARAMS) and the grid's names."""
    base = {key: spec.default for key, spec in config.PARAM_SPECS.items()}
    base.update({key: spec.default for key, spec in strategy.params.items()})
    base.update(mode=strategy.name, signal_exit_after_breakeven=strategy.signal_exit_after_breakeven)
    strategy.fixed = config.apply_params(strategy.declared_fixed, base, f"FIXED_PARAMS of {strategy.path}")
    for key in strategy.param_grid:
        config.check_param_name(key, f"PARAM_GRID of {strategy.path}", strategy.name)


# ----------------------------------------------------------------------------------------------
# The look-ahead guard
# ----------------------------------------------------------------------------------------------
def guard_candles(n: int, timeframe: str, seed: int = 20_240_601) -> pd.DataFrame:
    """A seeded random history with trends that turn every 250 bars, so most rules fire on it."""
    from data_fetcher import TIMEFRAMES

    rng = np.random.default_rng(seed)
    drift = np.repeat(rng.choice([-0.002, 0.002], size=n // 250 + 1), 250)[:n]
    close = 100.0 * np.exp(np.cumsum(drift + rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, 0.004, n)))
    index = pd.DatetimeIndex(pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(
        np.arange(n) * TIMEFRAMES[timeframe], unit="ms"), name="time").as_unit("ms")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.lognormal(3.0, 0.5, n)}, index=index)


def check_look_ahead(strategy: Strategy) -> None:
    """Refuse a strategy whose signal at bar t changes when the bars after t are removed: with its fixed params,
    and with each value its search can pick at an end (each end of a grid range, each choice of a list), one at a
    time over the fixed params, since any of them can change which bars the signals read (a shift of -5)."""
    found = _guarded(strategy, strategy.fixed)
    if found:
        raise ConfigError(f"strategy '{strategy.name}' ({strategy.path}) reads the future: {found}; the signal of "
                          "bar t may use bars <= t only")
    for name, value, origin in search_ends(strategy):
        found = _guarded(strategy, {**strategy.fixed, name: value})
        if found:
            raise ConfigError(f"strategy '{strategy.name}' ({strategy.path}) reads the future with {name} = {value!r}"
                              f", {origin}: {found}; accepted: a grid whose every value keeps the signal of bar t on "
                              f"bars <= t, as its fixed {name} = {strategy.fixed[name]!r} does")


def search_ends(strategy: Strategy) -> list[tuple[str, Any, str]]:
    """Every value of a param its signals read that the search can pick at an end of the grid: (name, value,
    where it comes from). A range gives its two ends, a list each choice, a scalar itself."""
    where = f"PARAM_GRID of {strategy.path}"
    ends = []
    for name, entry in strategy.param_grid.items():
        if name not in strategy.signal_keys:
            continue
        spec = config.check_grid_entry(name, entry, where, strategy.name)
        if isinstance(entry, tuple):
            picks = [(entry[0], "the low end"), (entry[1], "the high end")]
        elif isinstance(entry, list):
            picks = [(value, "a choice") for value in entry]
        else:
            picks = [(entry, "the value")]
        ends += [(name, config.check_value(name, value, spec, where), f"{role} of PARAM_GRID['{name}'] = {entry!r}")
                 for value, role in picks]
    return ends


def check_params_look_ahead(params: dict[str, Any], where: str) -> None:
    """Refuse complete params (a params file, a prod config, a value set by hand) whose signals read the future,
    naming the param whose value does it (each changed param is tried alone over the fixed params, which passed)."""
    strategy = get(params["mode"], where)
    found = _guarded(strategy, params)
    if found is None:
        return
    changed = [k for k in strategy.signal_keys if params[k] != strategy.fixed[k]]
    for name in changed:
        alone = _guarded(strategy, {**strategy.fixed, name: params[name]})
        if alone:
            raise ConfigError(f"{where}: parameter '{name}' = {params[name]!r} makes strategy '{strategy.name}' read "
                              f"the future: {alone}; accepted: values of '{name}' that keep the signal of bar t on "
                              f"bars <= t, as its fixed {strategy.fixed[name]!r} does")
    together = ", ".join(f"'{k}' = {params[k]!r}" for k in changed) or "these params"
    raise ConfigError(f"{where}: {together} together make strategy '{strategy.name}' read the future: {found}; "
                      "accepted: params that keep the signal of bar t on bars <= t, as its fixed params do")


def _guarded(strategy: Strategy, params: dict[str, Any]) -> str | None:
    """Where the signals of ``params`` read the future, or None; a passing key is remembered, so each set of
    signal params is checked once."""
    key = strategy.cache_key(params)
    if key in strategy.guarded:
        return None
    found = _first_peek(strategy, params)
    if found is None:
        strategy.guarded.add(key)
    return found


def _first_peek(strategy: Strategy, params: dict[str, Any]) -> str | None:
    """The signals of the first k bars of a generated history against the first k of the full run, for several
    k (four fixed ones and up to GUARD_CUTS right after bars where the signal changes, where a rule that peeks
    at the next bar shows): the first difference in words, or None."""
    from backtester import MarketData

    n = max(GUARD_MIN_BARS, 3 * strategy.lookback(params) + 300)
    candles = guard_candles(n, params["timeframe"])

    def run(k: int) -> np.ndarray:
        return strategy.compute(MarketData(candles.iloc[:k], params["symbol"], params["timeframe"]), params)

    full = run(n)
    changes = np.flatnonzero(full[1:] != full[:-1]) + 1
    changes = changes[changes < n - 1]
    picks = changes[np.linspace(0, changes.size - 1, min(GUARD_CUTS, changes.size)).astype(int)] if changes.size \
        else changes
    for k in sorted({n // 4, n // 2, 3 * n // 4, n - 1, *(int(j) + 1 for j in picks)}):
        part = run(k)
        differ = np.flatnonzero(part != full[:k])
        if differ.size:
            j = int(differ[0])
            return (f"its signal at bar {j} is {full[j]} on the whole history but {part[j]} when the history ends "
                    f"at bar {k - 1}")
    return None
