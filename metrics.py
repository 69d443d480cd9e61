"""Performance figures from the mark-to-market equity curve and the trade rows.

Definitions (the same for backtests, walk-forward folds and paper/live runs):

* ``total_return`` = final equity / initial capital - 1.
* ``cagr``: compounded over the span from the first bar's open to the last bar's close, in
  365.25-day years; -1 when everything is lost.
* ``sharpe``, ``sortino``: DAILY returns of the curve (equity at the last bar close of each UTC
  day; the first day measured from the initial capital), annualized with sqrt(365); Sortino's
  downside deviation is sqrt(mean(min(r, 0)^2)); 0 with fewer than 2 days or no dispersion.
* ``max_drawdown``: the deepest fall of equity from its running peak (which starts at the
  initial capital), a NEGATIVE fraction such as -0.25. ``calmar`` = cagr / |max_drawdown|.
* Per trade row (each fill that closes quantity, partial take-profits included):
  ``profit_factor`` = gross wins / gross losses (inf with wins and no losses, 0 without trades),
  ``win_rate`` (pnl > 0), ``expectancy`` (mean net pnl, USDT), ``num_trades``,
  ``avg_hold_hours``; ``exposure`` = share of bar closes holding a position.
* ``exit_reasons``: counts per reason, every reason listed (0 when it never happened).

``json_safe`` turns inf and NaN into None, because strict JSON has neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

DAY_MS = 86_400_000
YEAR_DAYS = 365.25


@njit(cache=True, nogil=True)
def daily_returns(ts: np.ndarray, equity: np.ndarray, initial: float, bar_ms: int) -> np.ndarray:
    """Returns of the equity at the last bar close of each UTC day (the first from ``initial``)."""
    n = equity.shape[0]
    out = np.empty(n)
    count = 0
    previous = initial
    for i in range(n):
        close_day = (ts[i] + bar_ms - 1) // DAY_MS
        if i == n - 1 or (ts[i + 1] + bar_ms - 1) // DAY_MS != close_day:
            out[count] = equity[i] / previous - 1.0 if previous > 0.0 else 0.0
            previous = equity[i]
            count += 1
    return out[:count]


@njit(cache=True, nogil=True)
def curve_stats(ts: np.ndarray, equity: np.ndarray, position: np.ndarray, initial: float,
                bar_ms: int) -> tuple[float, float, float, float]:
    """One pass over the curve: (max drawdown, exposure, daily Sharpe, daily Sortino)."""
    n = equity.shape[0]
    peak = initial
    worst = 0.0
    held = 0
    for i in range(n):
        value = equity[i]
        if value > peak:
            peak = value
        drawdown = value / peak - 1.0 if peak > 0.0 else -1.0
        if drawdown < worst:
            worst = drawdown
        if position[i] != 0.0:
            held += 1
    returns = daily_returns(ts, equity, initial, bar_ms)
    day_count = returns.shape[0]
    sum_r = 0.0
    sum_r2 = 0.0
    sum_down2 = 0.0
    for r in returns:
        sum_r += r
        sum_r2 += r * r
        if r < 0.0:
            sum_down2 += r * r
    exposure = held / n if n > 0 else 0.0
    sharpe = 0.0
    sortino = 0.0
    if day_count >= 2:
        mean = sum_r / day_count
        variance = (sum_r2 - day_count * mean * mean) / (day_count - 1)
        if variance > 1e-24:
            sharpe = mean / math.sqrt(variance) * math.sqrt(365.0)
        downside = math.sqrt(sum_down2 / day_count)
        if downside > 1e-12:
            sortino = mean / downside * math.sqrt(365.0)
    return worst, exposure, sharpe, sortino


def compute_metrics(ts: np.ndarray, bar_ms: int, equity: np.ndarray, position: np.ndarray, trade_pnl: np.ndarray,
                    trade_fees: np.ndarray, trade_funding: np.ndarray, trade_entry_ts: np.ndarray,
                    trade_exit_ts: np.ndarray, trade_exit_reason: np.ndarray, initial_capital: float,
                    exit_reason_names: Sequence[str]) -> dict[str, Any]:
    """The summary figures of one run (see the module docstring for each definition)."""
    n = equity.shape[0]
    final = float(equity[-1]) if n else float(initial_capital)
    max_dd, exposure, sharpe, sortino = curve_stats(ts, equity, position, float(initial_capital), int(bar_ms)) \
        if n else (0.0, 0.0, 0.0, 0.0)
    years = ((ts[-1] + bar_ms - ts[0]) / DAY_MS / YEAR_DAYS) if n else 0.0
    growth = final / initial_capital
    if growth <= 0:
        cagr = -1.0
    elif years > 0:
        cagr = float(math.exp(min(math.log(growth) / years, 700.0)) - 1.0)
    else:
        cagr = 0.0
    wins = trade_pnl[trade_pnl > 0].sum()
    losses = -trade_pnl[trade_pnl < 0].sum()
    count = int(trade_pnl.shape[0])
    if losses > 0:
        profit_factor = float(wins / losses)
    else:
        profit_factor = math.inf if wins > 0 else 0.0
    reasons = np.bincount(trade_exit_reason.astype(np.int64), minlength=len(exit_reason_names)) if count \
        else np.zeros(len(exit_reason_names), dtype=np.int64)
    return {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "sharpe": float(sharpe),
        "sortino": float(sortino),
        "calmar": cagr / abs(max_dd) if max_dd < 0 else 0.0,
        "max_drawdown": float(max_dd),
        "profit_factor": profit_factor,
        "win_rate": float((trade_pnl > 0).sum() / count) if count else 0.0,
        "expectancy": float(trade_pnl.mean()) if count else 0.0,
        "num_trades": count,
        "exposure": float(exposure),
        "avg_hold_hours": float((trade_exit_ts - trade_entry_ts).mean() / 3_600_000) if count else 0.0,
        "initial_capital": float(initial_capital),
        "final_equity": final,
        "total_fees": float(trade_fees.sum()),
        "total_funding": float(trade_funding.sum()),
        "exit_reasons": {name: int(reasons[k]) for k, name in enumerate(exit_reason_names)},
    }


def json_safe(value: Any) -> Any:
    """``value`` with inf/NaN floats replaced by None (recursively), ready for strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _utc(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms", utc=True))


def equity_frame(ts: np.ndarray, bar_ms: int, equity: np.ndarray, position: np.ndarray,
                 initial_capital: float) -> pd.DataFrame:
    """The curve as a table: bar close ``time`` (UTC), equity, drawdown (<= 0) and the position held."""
    peak = np.maximum.accumulate(np.maximum(equity, initial_capital))
    return pd.DataFrame({"time": _utc(np.asarray(ts) + bar_ms), "equity": equity, "drawdown": equity / peak - 1.0,
                         "position": position})


def trades_frame(entry_ts: np.ndarray, exit_ts: np.ndarray, side: np.ndarray, qty: np.ndarray,
                 entry_price: np.ndarray, exit_price: np.ndarray, fees: np.ndarray, funding: np.ndarray,
                 pnl: np.ndarray, exit_reason: np.ndarray, exit_reason_names: Sequence[str]) -> pd.DataFrame:
    """Trade rows as the trades.csv table (times UTC, side long/short, exit reason by name)."""
    names = np.asarray(exit_reason_names, dtype=object)
    return pd.DataFrame({
        "entry_time": _utc(entry_ts), "exit_time": _utc(exit_ts),
        "side": np.where(np.asarray(side) > 0, "long", "short"), "qty": qty, "entry_price": entry_price,
        "exit_price": exit_price, "fees": fees, "funding": funding, "pnl": pnl,
        "exit_reason": names[np.asarray(exit_reason, dtype=np.int64)] if len(exit_reason) else np.array([], object),
    })
