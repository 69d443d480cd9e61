"""Backtests: the strategy's signals, the jitted bar loop of core.py, equity and metrics.

``MarketData`` holds one dataset's arrays and its indicator and signal caches, so that many
parameter sets (Optuna trials, walk-forward folds, the interactive tester) reuse indicators and
signals computed once over the whole history. The signals come from the strategy file the
params' ``mode`` names (strategy_loader.py). ``simulate`` is the fast path (arrays and metrics);
``backtest`` adds the trade and equity tables that reports and files need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import config
import core
import metrics as metrics_mod
import strategy_loader
from data_fetcher import TIMEFRAMES, to_arrays
from indicators import IndicatorCache


# ----------------------------------------------------------------------------------------------
# Market data with its indicator and signal caches
# ----------------------------------------------------------------------------------------------
class MarketData:
    """One dataset (candles of one symbol and timeframe) prepared for many backtests."""

    def __init__(self, candles: pd.DataFrame, symbol: str, timeframe: str,
                 funding: pd.Series | None = None, instrument: dict[str, float] | None = None) -> None:
        if timeframe not in TIMEFRAMES:
            raise config.ConfigError(f"unknown timeframe '{timeframe}'; accepted: {', '.join(TIMEFRAMES)}")
        self.candles = candles
        self.symbol = symbol
        self.timeframe = timeframe
        self.bar_ms = TIMEFRAMES[timeframe]
        arrays = to_arrays(candles)
        self.ts: np.ndarray = arrays["ts"]
        self.open: np.ndarray = arrays["open"]
        self.high: np.ndarray = arrays["high"]
        self.low: np.ndarray = arrays["low"]
        self.close: np.ndarray = arrays["close"]
        self.cache = IndicatorCache(self.high, self.low, self.close)
        history = (None, None) if funding is None or len(funding) == 0 else (
            np.asarray(funding.index, dtype=np.int64), np.asarray(funding.values, dtype=np.float64))
        self.funding_ts, self.funding_rates = core.funding_schedule(self.ts, self.bar_ms, *history)
        self._instrument = instrument
        self._signals: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return self.ts.shape[0]

    @property
    def instrument(self) -> dict[str, float]:
        """Tick, quantity step, minimum quantity and notional: as given, else config.instrument_for(symbol)."""
        if self._instrument is None:
            self._instrument = config.instrument_for(self.symbol)
        return self._instrument

    def indicator(self, name: str, *args: Any) -> np.ndarray:
        """An indicator over the whole history (computed once per name and params)."""
        return self.cache.get(name, *args)

    def signals(self, params: dict[str, Any]) -> np.ndarray:
        """The signal codes of the params' strategy, cached by exactly the params its signals read."""
        strategy = strategy_loader.get(params["mode"])
        key = strategy.cache_key(params)
        cached = self._signals.get(key)
        if cached is None:
            cached = strategy.compute(self, params)
            if len(self._signals) > 256:
                self._signals.clear()
            self._signals[key] = cached
        return cached




# ----------------------------------------------------------------------------------------------
# Params vector
# ----------------------------------------------------------------------------------------------
def build_core_params(params: dict[str, Any], bar_ms: int, symbol: str,
                      cost_overrides: dict[str, float] | None = None,
                      instrument: dict[str, float] | None = None) -> np.ndarray:
    """The float64 params vector of core.py from a validated params dict, the costs and the instrument."""
    costs = config.costs()
    costs.update(cost_overrides or {})
    inst = instrument if instrument is not None else config.instrument_for(symbol)
    p = core.params_vector({name: params[name] for name in core.PARAM_NAMES if name in params})
    levels = list(params["partial_tp_levels"])
    p[core.P_N_LEVELS] = len(levels)
    for k, level in enumerate(levels):
        p[core.P_LEVEL_1 + k] = level
    p[core.P_TAKER] = costs["taker_fee"]
    p[core.P_MAKER] = costs["maker_fee"]
    p[core.P_SLIPPAGE] = costs["slippage"]
    p[core.P_FUNDING_RATE] = costs["funding_rate"]
    p[core.P_MMR] = costs["maintenance_margin_rate"]
    p[core.P_CAPITAL] = costs["capital"]
    p[core.P_QTY_STEP] = inst["qty_step"]
    p[core.P_MIN_QTY] = inst["min_qty"]
    p[core.P_MIN_NOTIONAL] = inst["min_notional"]
    p[core.P_TICK] = inst["tick_size"]
    if params["leverage"] > inst.get("max_leverage", params["leverage"]):
        raise config.ConfigError(f"leverage {params['leverage']} exceeds {symbol}'s maximum "
                                 f"{inst['max_leverage']}")
    p[core.P_BAR_MS] = bar_ms
    p[core.P_SIGNAL_EXIT_ANYTIME] = 0.0 if params["signal_exit_after_breakeven"] else 1.0
    for k, (threshold, factor) in enumerate(config.RISK_GOVERNOR):
        p[core.P_GOV_DD_1 + k] = threshold
        p[core.P_GOV_F_1 + k] = factor
    return p


# ----------------------------------------------------------------------------------------------
# Running a backtest
# ----------------------------------------------------------------------------------------------
@dataclass
class SimResult:
    """Raw arrays of one backtest: trade rows (core.TRADE_COLUMNS), equity and position per bar."""

    rows: np.ndarray
    ts: np.ndarray
    equity: np.ndarray
    position: np.ndarray
    bar_ms: int
    initial_capital: float
    metrics: dict[str, Any] = field(default_factory=dict)


def simulate(data: MarketData, params: dict[str, Any], start: int = 0, stop: int | None = None,
             cost_overrides: dict[str, float] | None = None, instrument: dict[str, float] | None = None,
             with_metrics: bool = True) -> SimResult:
    """Backtest bars [start, stop) of ``data`` with indicators from the whole history."""
    stop = len(data) if stop is None else stop
    rows, state, equity, position, p = _run(data, params, start, stop, True, cost_overrides, instrument)
    check_tick_refusals(state, p, data, start)
    result = SimResult(rows, data.ts[start:stop], equity, position, data.bar_ms, float(p[core.P_CAPITAL]))
    if with_metrics:
        result.metrics = compute_result_metrics(result)
    return result


def state_at(data: MarketData, params: dict[str, Any], start: int, stop: int,
             instrument: dict[str, float] | None = None) -> np.ndarray:
    """The core state after the close of bar ``stop - 1`` of a backtest started at ``start`` (for reports)."""
    return _run(data, params, start, stop, False, None, instrument)[1]


def _run(data: MarketData, params: dict[str, Any], start: int, stop: int, end_close: bool,
         cost_overrides: dict[str, float] | None, instrument: dict[str, float] | None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bar loop over [start, stop): (trade rows with absolute bars, state, equity, position, params vector)."""
    if not 0 <= start < stop <= len(data):
        raise config.ConfigError(f"empty or invalid bar range [{start}, {stop}) of {len(data)} bars")
    p = build_core_params(params, data.bar_ms, data.symbol, cost_overrides,
                          instrument if instrument is not None else data.instrument)
    atr = data.indicator("atr", params["atr_period"])
    signal = data.signals(params)
    state = core.new_state(p[core.P_CAPITAL])
    n = stop - start
    equity = np.empty(n)
    position = np.empty(n)
    sl = slice(start, stop)
    rows = core.run_loop(data.ts[sl], data.open[sl], data.high[sl], data.low[sl], data.close[sl], atr[sl],
                         signal[sl], data.funding_ts, data.funding_rates, p, state, equity, position, end_close)
    rows[:, 10:12] += start
    return rows, state, equity, position, p


class TickSizeError(config.ConfigError):
    """A stop or take-profit that rounds onto the entry or to zero: the instrument's tick does not fit the data."""


def check_tick_refusals(state: np.ndarray, p: np.ndarray, data: MarketData, start: int) -> None:
    """Refuse a backtest in which entries were refused because a stop or target rounded onto the entry.

    Such entries cannot be placed on the exchange either, so counting on trades that never happen
    would mislead: the run stops with one line naming the first case and what to pass.
    """
    count = int(state[core.S_TICK_REFUSALS])
    if not count:
        return
    bar = start + int(state[core.S_TICK_REFUSAL_BAR])
    when = pd.Timestamp(int(data.ts[bar]), unit="ms", tz="UTC").isoformat()
    raise TickSizeError(
        f"{data.symbol}: {count} entr{'y' if count == 1 else 'ies'} refused, the first at {when} (close "
        f"{data.close[bar]:.8g}): a stop or take-profit {state[core.S_TICK_REFUSAL_DISTANCE]:.3g} from the entry "
        f"rounds onto it or to zero on the tick {p[core.P_TICK]:g}; give the instrument's real tick "
        "(--tick and --qty-step, or config.INSTRUMENTS) or wider stops and targets")


def compute_result_metrics(result: SimResult) -> dict[str, Any]:
    """The summary figures of a SimResult (metrics.py definitions)."""
    rows = result.rows
    return metrics_mod.compute_metrics(
        result.ts, result.bar_ms, result.equity, result.position,
        rows[:, 8], rows[:, 6], rows[:, 7], rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
        rows[:, 9].astype(np.int8), result.initial_capital, core.EXIT_REASONS)


@dataclass
class BacktestResult:
    """A backtest as tables: trades, the mark-to-market equity curve, and the metrics."""

    trades: pd.DataFrame
    equity: pd.DataFrame
    metrics: dict[str, Any]
    candles: pd.DataFrame
    params: dict[str, Any]
    raw: SimResult


def trades_table(rows: np.ndarray) -> pd.DataFrame:
    """Trade rows as the trades.csv table."""
    return metrics_mod.trades_frame(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
                                    rows[:, 2].astype(np.int8), rows[:, 3], rows[:, 4], rows[:, 5], rows[:, 6],
                                    rows[:, 7], rows[:, 8], rows[:, 9].astype(np.int8), core.EXIT_REASONS)


def backtest(data: MarketData, params: dict[str, Any], start: int = 0, stop: int | None = None,
             cost_overrides: dict[str, float] | None = None,
             instrument: dict[str, float] | None = None) -> BacktestResult:
    """Backtest and return the tables that reports and files need."""
    raw = simulate(data, params, start, stop, cost_overrides, instrument)
    stop = len(data) if stop is None else stop
    equity = metrics_mod.equity_frame(raw.ts, raw.bar_ms, raw.equity, raw.position, raw.initial_capital)
    return BacktestResult(trades_table(raw.rows), equity, raw.metrics, data.candles.iloc[start:stop], params, raw)
