"""The decision core and the fill rules, shared by the backtester, bybit_sim and the live trader.

Everything here is a numba function over plain float64 arrays:

* ``params`` (``P_*`` slots) — the strategy's management params, the costs and the instrument;
* ``state`` (``S_*`` slots) — one side's strategy state: position, stops, take-profit levels,
  accrued fees and funding, cooldown, the wallet and its high-water mark, and the order the core
  asks for at the next open.

Why one module: the backtester's bar loop, the simulated exchange's matching and the live
trader's bar-close handler all call these same functions, so a rule exists exactly once and the
long and short sides share it through a direction sign ``d`` (+1 long, -1 short).

Time: ``decide`` runs at the close of bar *i* with bars <= *i* only. Its market orders fill at the
open of bar *i+1*; its stop moves rest from bar *i+1* on.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# ----------------------------------------------------------------------------------------------
# Exit reasons (codes index EXIT_REASONS; a code never changes, new ones are appended). A stop exit
# carries the kind of the stop that was hit: stop_loss, breakeven_stop, trailing_stop or profit_lock_stop.
# ----------------------------------------------------------------------------------------------
EXIT_REASONS = ("stop_loss", "breakeven_stop", "trailing_stop", "take_profit", "partial_take_profit",
                "signal_exit", "stagnation_exit", "time_exit", "liquidation", "end_of_data", "profit_lock_stop",
                "stop_rejected")
R_STOP_LOSS, R_BREAKEVEN, R_TRAILING, R_TAKE_PROFIT, R_PARTIAL = 0, 1, 2, 3, 4
R_SIGNAL, R_STAGNATION, R_TIME, R_LIQUIDATION, R_END, R_PROFIT_LOCK = 5, 6, 7, 8, 9, 10
R_STOP_REJECTED = 11  # live only: closed at market after the exchange refused its stop moves (trader.py)

# Signal codes a strategy's signals() produce (strategy files, strategy_loader.py).
SIG_LONG, SIG_SHORT, SIG_EXIT_LONG, SIG_EXIT_SHORT = 1, -1, 10, -10

# Order actions the core asks for (S_ORDER_ACTION).
A_NONE, A_OPEN, A_ADD, A_CLOSE = 0, 1, 2, 3

FUNDING_INTERVAL_MS = 8 * 3_600_000
MAX_LEVELS = 4

# ----------------------------------------------------------------------------------------------
# Params layout
# ----------------------------------------------------------------------------------------------
PARAM_NAMES = (
    "risk_per_trade", "leverage", "position_scaling", "max_position_multiplier", "scale_add_atr_multiplier",
    "atr_stop_multiplier", "breakeven_atr_multiplier", "aggressive_breakout_stop_multiplier",
    "profit_lock_trigger_pct", "profit_lock_target_pct", "trail_atr_multiplier",
    "trail_early_activation_atr_multiplier", "aggressive_trail_atr_multiplier", "tp_atr_multiplier",
    "partial_take_profit", "partial_tp_fraction", "n_partial_levels",
    "partial_level_1", "partial_level_2", "partial_level_3", "partial_level_4",
    "max_hold_hours", "cooldown_period_candles", "stagnation_atr_threshold", "stagnation_profit_decay",
    "taker_fee", "maker_fee", "slippage", "funding_rate", "maintenance_margin_rate",
    "qty_step", "min_qty", "min_notional", "tick_size", "capital", "bar_ms",
    "gov_dd_1", "gov_dd_2", "gov_dd_3", "gov_dd_4", "gov_factor_1", "gov_factor_2", "gov_factor_3", "gov_factor_4",
    "signal_exit_anytime",
)
(P_RISK, P_LEVERAGE, P_SCALING, P_MAX_POS_MULT, P_SCALE_ADD_ATR,
 P_STOP_ATR, P_BE_ATR, P_BREAKOUT_STOP, P_LOCK_TRIGGER, P_LOCK_TARGET, P_TRAIL_ATR,
 P_TRAIL_EARLY_ATR, P_AGGR_TRAIL_ATR, P_TP_ATR, P_PARTIAL_ON, P_PARTIAL_FRACTION, P_N_LEVELS,
 P_LEVEL_1, P_LEVEL_2, P_LEVEL_3, P_LEVEL_4,
 P_MAX_HOLD_HOURS, P_COOLDOWN, P_STAG_ATR, P_STAG_DECAY,
 P_TAKER, P_MAKER, P_SLIPPAGE, P_FUNDING_RATE, P_MMR,
 P_QTY_STEP, P_MIN_QTY, P_MIN_NOTIONAL, P_TICK, P_CAPITAL, P_BAR_MS,
 P_GOV_DD_1, P_GOV_DD_2, P_GOV_DD_3, P_GOV_DD_4,
 P_GOV_F_1, P_GOV_F_2, P_GOV_F_3, P_GOV_F_4,
 P_SIGNAL_EXIT_ANYTIME) = range(len(PARAM_NAMES))
N_PARAMS = len(PARAM_NAMES)
PARAM_INDEX = {name: k for k, name in enumerate(PARAM_NAMES)}

# ----------------------------------------------------------------------------------------------
# State layout
# ----------------------------------------------------------------------------------------------
STATE_NAMES = (
    "dir", "qty", "entry_price", "initial_qty", "entry_ts", "entry_bar", "atr_at_entry",
    "stop", "stop_kind", "tp", "level_1", "level_2", "level_3", "level_4", "levels_done",
    "breakeven_set", "trailing_active", "extreme", "last_add_price", "max_pnl", "stagnation_armed",
    "acc_fees", "acc_funding", "entry_fee_total", "entry_qty_total", "liq_price",
    "wallet", "hwm", "risk_base", "cooldown_until",
    "order_action", "order_dir", "order_qty", "order_stop", "order_atr", "order_reason",
    "tick_refusals", "tick_refusal_bar", "tick_refusal_distance",
)
(S_DIR, S_QTY, S_ENTRY, S_INITIAL_QTY, S_ENTRY_TS, S_ENTRY_BAR, S_ATR_ENTRY,
 S_STOP, S_STOP_KIND, S_TP, S_LEVEL_1, S_LEVEL_2, S_LEVEL_3, S_LEVEL_4, S_LEVELS_DONE,
 S_BREAKEVEN, S_TRAILING, S_EXTREME, S_LAST_ADD, S_MAX_PNL, S_STAG_ARMED,
 S_ACC_FEES, S_ACC_FUNDING, S_ENTRY_FEE_TOTAL, S_ENTRY_QTY_TOTAL, S_LIQ,
 S_WALLET, S_HWM, S_RISK_BASE, S_COOLDOWN_UNTIL,
 S_ORDER_ACTION, S_ORDER_DIR, S_ORDER_QTY, S_ORDER_STOP, S_ORDER_ATR, S_ORDER_REASON,
 S_TICK_REFUSALS, S_TICK_REFUSAL_BAR, S_TICK_REFUSAL_DISTANCE) = range(len(STATE_NAMES))
N_STATE = len(STATE_NAMES)

# A trade row (one per fill that closes quantity): column layout of the trades buffer.
TRADE_COLUMNS = ("entry_ts", "exit_ts", "side", "qty", "entry_price", "exit_price", "fees", "funding", "pnl",
                 "exit_reason", "entry_bar", "exit_bar")
N_TRADE_COLS = len(TRADE_COLUMNS)


def params_vector(values: dict[str, float]) -> np.ndarray:
    """The params vector with ``values`` set by name (others 0 = off); unknown names are an error."""
    p = np.zeros(N_PARAMS, dtype=np.float64)
    for name, value in values.items():
        if name not in PARAM_INDEX:
            raise ValueError(f"unknown core parameter '{name}'; accepted: {', '.join(PARAM_NAMES)}")
        p[PARAM_INDEX[name]] = float(value)
    return p


def new_state(capital: float) -> np.ndarray:
    """A flat state with ``capital`` in the wallet."""
    state = np.zeros(N_STATE, dtype=np.float64)
    state[S_WALLET] = capital
    state[S_HWM] = capital
    state[S_RISK_BASE] = capital
    state[S_COOLDOWN_UNTIL] = -1.0
    state[S_TICK_REFUSAL_BAR] = -1.0
    return state


# ----------------------------------------------------------------------------------------------
# Precision helpers
# ----------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def step_scale(step: float) -> float:
    """10 ** (the step's decimals): 0.01 -> 100, 0.0025 -> 10000, 5 -> 1."""
    scale = 1.0
    while scale < 1e15 and abs(step * scale - round(step * scale)) > 1e-9 * step * scale:
        scale *= 10.0
    return scale


@njit(cache=True, error_model="numpy")
def on_step(units: float, step: float) -> float:
    """``units`` whole steps as the float nearest the decimal value, the one the exchange parses from text.

    units * step in floats can land a hair off the decimal (402 * 0.01 = 4.0200000000000005 while
    the order says "4.02"), so a candle at exactly 4.02 would touch the exchange's order and miss the
    backtest's. (units * step_units) / scale is one correctly rounded division of exact integers.
    """
    scale = step_scale(step)
    return units * round(step * scale) / scale


@njit(cache=True, error_model="numpy")
def round_qty(qty: float, step: float) -> float:
    """Round a quantity down to the instrument's step (a hair of tolerance for float noise)."""
    return on_step(math.floor(qty / step + 1e-9), step)


@njit(cache=True, error_model="numpy")
def round_price(price: float, tick: float) -> float:
    """Round a price to the nearest tick."""
    return on_step(round(price / tick), tick)


# ----------------------------------------------------------------------------------------------
# Fill rules (DESIGN.md "What a venue does in bar t+1")
# ----------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def market_fill_price(reference: float, side: float, slippage: float) -> float:
    """A market order of ``side`` (+1 buy, -1 sell) fills ``slippage`` worse than ``reference``."""
    return reference * (1.0 + side * slippage)


@njit(cache=True, error_model="numpy")
def stop_touched(level: float, d: float, extreme: float) -> bool:
    """True when a protective level of a position of direction ``d`` is reached by ``extreme``."""
    return (extreme - level) * d <= 0.0


@njit(cache=True, error_model="numpy")
def stop_fill_price(stop: float, d: float, open_: float, slippage: float) -> float:
    """A stop-market exit of a ``d`` position: at the open when gapped through, else at the stop, less slippage."""
    base = open_ if (open_ - stop) * d <= 0.0 else stop
    return market_fill_price(base, -d, slippage)


@njit(cache=True, error_model="numpy")
def limit_touched(level: float, d: float, extreme: float) -> bool:
    """True when a reduce-only take-profit limit of a ``d`` position is reached by ``extreme``."""
    return (extreme - level) * d >= 0.0


@njit(cache=True, error_model="numpy")
def limit_fill_price(level: float, d: float, open_: float) -> float:
    """A take-profit limit fills at its level, or at the better open when the market gapped through it."""
    return open_ if (open_ - level) * d >= 0.0 else level


@njit(cache=True, error_model="numpy")
def liquidation_price(entry: float, d: float, leverage: float, mmr: float) -> float:
    """Isolated-margin liquidation price of a ``d`` position: where the margin left equals the maintenance margin.

    Bybit's USDT-contract formula without the fee to close: entry x (1 - d x (1/leverage - mmr)).
    """
    return entry * (1.0 - d * (1.0 / leverage - mmr))


@njit(cache=True, error_model="numpy")
def bankruptcy_price(entry: float, d: float, leverage: float) -> float:
    """The price at which an isolated position's margin is zero: entry x (1 - d / leverage).

    A liquidated position is taken over there, so it loses exactly its position margin
    qty x entry / leverage. Bybit's V5 docs (v5/enum.mdx, CreateByTakeOver_PassThrough): "the position
    shall be taken over by the liquidation engine and closed at the bankruptcy price".
    """
    return entry * (1.0 - d / leverage)


# What protective_exit answers.
EXIT_NONE, EXIT_STOP, EXIT_LIQUIDATION = 0, 1, 2


@njit(cache=True, error_model="numpy")
def protective_exit(stop: float, liq: float, d: float, open_: float, reach: float) -> int:
    """Which protective level of a ``d`` position acts when the price goes from ``open_`` to ``reach``.

    An open at or beyond the liquidation price liquidates (the exchange cancels the position's orders
    before it liquidates, so a stop cannot fill there). Otherwise the level nearer the market is
    reached first: the stop (0 = none) when it is nearer than the liquidation price, else the
    liquidation price. ``reach`` is the adverse extreme of the path (or the open itself).
    """
    if stop_touched(liq, d, open_):
        return EXIT_LIQUIDATION
    if stop > 0.0 and (stop - liq) * d > 0.0:
        return EXIT_STOP if stop_touched(stop, d, reach) else EXIT_NONE
    return EXIT_LIQUIDATION if stop_touched(liq, d, reach) else EXIT_NONE


@njit(cache=True, error_model="numpy")
def required_margin(qty: float, price: float, leverage: float, taker: float) -> float:
    """What an exchange requires free to accept a market order: initial margin plus the taker fee."""
    return qty * price * (1.0 / leverage + taker)


def funding_schedule(ts: np.ndarray, bar_ms: int, times: np.ndarray | None = None,
                     rates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The funding events of a history: (event times in ms, int64; rates, NaN = the params' constant rate).

    ``times``/``rates`` are the exchange's funding history (any interval); where it has no record
    (before its first and after its last event, or none at all) the events are Bybit's default
    8-hourly ones (00:00, 08:00, 16:00 UTC) at the constant rate. Events span the bars' open times
    [ts[0], ts[-1]]: each is charged at the open of the first bar at or after it (see run_loop).
    """
    if ts.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    first = int(ts[0])
    last = int(ts[-1])
    grid = np.arange(-(-first // FUNDING_INTERVAL_MS) * FUNDING_INTERVAL_MS, last + 1, FUNDING_INTERVAL_MS,
                     dtype=np.int64)
    if times is None or len(times) == 0:
        return grid, np.full(grid.shape[0], np.nan)
    times = np.asarray(times, dtype=np.int64)
    rates = np.asarray(rates, dtype=np.float64)
    order = np.argsort(times, kind="stable")
    times, rates = times[order], rates[order]
    keep = (times >= first) & (times <= last)
    outside = (grid < times[0]) | (grid > times[-1])
    all_times = np.concatenate([grid[outside], times[keep]])
    all_rates = np.concatenate([np.full(int(outside.sum()), np.nan), rates[keep]])
    order = np.argsort(all_times, kind="stable")
    return np.ascontiguousarray(all_times[order]), np.ascontiguousarray(all_rates[order])


# ----------------------------------------------------------------------------------------------
# Accounting: every fill goes through open_fill or close_fill, in every venue.
# ----------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def book_funding(state: np.ndarray, cost: float) -> None:
    """Book a funding payment of the open position (positive = paid), as the exchange reports it."""
    state[S_WALLET] -= cost
    state[S_ACC_FUNDING] += cost


@njit(cache=True, error_model="numpy")
def pay_funding(state: np.ndarray, rate: float, mark: float) -> float:
    """Charge one funding event on the open position: notional x rate x side; returns the amount."""
    cost = state[S_QTY] * mark * rate * state[S_DIR]
    book_funding(state, cost)
    return cost


@njit(cache=True, error_model="numpy")
def target_price(price: float, d: float, distance: float, tick: float) -> float:
    """A take-profit level ``distance`` beyond ``price`` on the tick; 0 (not placed) when it is not above zero."""
    level = round_price(price + d * distance, tick)
    return level if level > 0.0 else 0.0


@njit(cache=True, error_model="numpy")
def open_fill(state: np.ndarray, p: np.ndarray, d: float, qty: float, price: float, fee: float,
              ts: float, bar: float) -> None:
    """Book an entry or pyramid add of ``qty`` at ``price`` paying ``fee``."""
    state[S_WALLET] -= fee
    state[S_ACC_FEES] += fee
    state[S_ENTRY_FEE_TOTAL] += fee
    state[S_ENTRY_QTY_TOTAL] += qty
    if state[S_DIR] == 0.0:
        atr = state[S_ORDER_ATR]
        state[S_DIR] = d
        state[S_QTY] = qty
        state[S_ENTRY] = price
        state[S_INITIAL_QTY] = qty
        state[S_ENTRY_TS] = ts
        state[S_ENTRY_BAR] = bar
        state[S_ATR_ENTRY] = atr
        state[S_STOP] = state[S_ORDER_STOP]
        state[S_STOP_KIND] = R_STOP_LOSS
        state[S_BREAKEVEN] = 0.0
        state[S_TRAILING] = 0.0
        state[S_EXTREME] = price
        state[S_LAST_ADD] = price
        state[S_MAX_PNL] = 0.0
        state[S_STAG_ARMED] = 0.0
        tick = p[P_TICK]
        state[S_TP] = target_price(price, d, atr * p[P_TP_ATR], tick) if p[P_TP_ATR] > 0.0 else 0.0
        n_levels = int(p[P_N_LEVELS]) if p[P_PARTIAL_ON] > 0.0 else 0
        for k in range(MAX_LEVELS):
            state[S_LEVEL_1 + k] = target_price(price, d, atr * p[P_LEVEL_1 + k], tick) if k < n_levels else 0.0
        state[S_LEVELS_DONE] = 0.0
    else:
        total = state[S_QTY] + qty
        state[S_ENTRY] = (state[S_ENTRY] * state[S_QTY] + price * qty) / total
        state[S_QTY] = total
        state[S_LAST_ADD] = price
        if (price - state[S_EXTREME]) * d > 0.0:
            state[S_EXTREME] = price
    state[S_LIQ] = liquidation_price(state[S_ENTRY], d, p[P_LEVERAGE], p[P_MMR])


@njit(cache=True, error_model="numpy")
def close_fill(state: np.ndarray, p: np.ndarray, qty: float, price: float, fee: float, reason: int,
               bar: float, row: np.ndarray) -> bool:
    """Book an exit of ``qty`` at ``price``; writes the trade into ``row`` and returns True when flat.

    Entry fees and funding accrued by the position are shared out pro rata to the closed quantity,
    so the trade rows add up exactly to the wallet's change.
    """
    d = state[S_DIR]
    held = state[S_QTY]
    if qty > held:
        qty = held
    share = qty / held
    fee_share = state[S_ACC_FEES] * share
    funding_share = state[S_ACC_FUNDING] * share
    state[S_ACC_FEES] -= fee_share
    state[S_ACC_FUNDING] -= funding_share
    gross = (price - state[S_ENTRY]) * qty * d
    state[S_WALLET] += gross - fee
    row[0] = state[S_ENTRY_TS]
    row[2] = d
    row[3] = qty
    row[4] = state[S_ENTRY]
    row[5] = price
    row[6] = fee_share + fee
    row[7] = funding_share
    row[8] = gross - fee_share - fee - funding_share
    row[9] = reason
    row[10] = state[S_ENTRY_BAR]
    row[11] = bar
    remaining = held - qty
    if remaining > p[P_QTY_STEP] * 1e-6:
        state[S_QTY] = remaining
        state[S_MAX_PNL] *= remaining / held  # the peak profit of what is still held (stagnation rule)
        return False
    reset_position(state, p, reason, bar)
    return True


@njit(cache=True, error_model="numpy")
def reset_position(state: np.ndarray, p: np.ndarray, reason: int, bar: float) -> None:
    """Clear the position fields after the last fill; update the high-water mark and the cooldown."""
    for k in range(S_DIR, S_LIQ + 1):
        state[k] = 0.0
    if state[S_WALLET] > state[S_HWM]:
        state[S_HWM] = state[S_WALLET]
        state[S_RISK_BASE] = state[S_HWM]
    if (reason == R_BREAKEVEN or reason == R_TRAILING or reason == R_PROFIT_LOCK) and p[P_COOLDOWN] > 0.0:
        state[S_COOLDOWN_UNTIL] = bar + p[P_COOLDOWN]


@njit(cache=True, error_model="numpy")
def partial_qty(state: np.ndarray, p: np.ndarray) -> float:
    """Size of the next partial take-profit: a share of the initial size (at least the minimum order
    quantity, the smallest order the exchange takes), or all if less than that would remain."""
    qty = max(round_qty(state[S_INITIAL_QTY] * p[P_PARTIAL_FRACTION], p[P_QTY_STEP]), p[P_MIN_QTY])
    if state[S_QTY] - qty < p[P_MIN_QTY] - p[P_QTY_STEP] * 1e-6:
        qty = state[S_QTY]
    return qty


@njit(cache=True, error_model="numpy")
def resting_targets(state: np.ndarray, p: np.ndarray, out: np.ndarray) -> int:
    """The take-profit orders that should rest now: rows (level index, price, qty); returns the count.

    Remaining partial levels (those nearer than the final take-profit), each sized as
    ``partial_qty`` will size it when it fills, then the final take-profit for the whole position
    (reduce-only, so the exchange trims it to what is left). Level index -1 is the final one.
    A live venue places exactly these, so it fills what the backtest fills on the same path.
    """
    d = state[S_DIR]
    if d == 0.0:
        return 0
    count = 0
    held = state[S_QTY]
    remaining = held
    tp = state[S_TP]
    n_levels = int(p[P_N_LEVELS]) if p[P_PARTIAL_ON] > 0.0 else 0
    for k in range(int(state[S_LEVELS_DONE]), n_levels):
        level = state[S_LEVEL_1 + k]
        if remaining <= 0.0 or level <= 0.0 or (tp > 0.0 and (level - tp) * d >= 0.0):
            break
        state[S_QTY] = remaining
        qty = partial_qty(state, p)
        out[count, 0] = k
        out[count, 1] = level
        out[count, 2] = qty
        count += 1
        remaining -= qty
    state[S_QTY] = held
    if tp > 0.0 and remaining > 0.0:
        out[count, 0] = -1
        out[count, 1] = tp
        out[count, 2] = held
        count += 1
    return count


@njit(cache=True, error_model="numpy")
def unrealized(state: np.ndarray, price: float) -> float:
    """Unrealized PnL of the open position marked at ``price``."""
    return (price - state[S_ENTRY]) * state[S_QTY] * state[S_DIR]


# ----------------------------------------------------------------------------------------------
# The decision core
# ----------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def governor_factor(state: np.ndarray, p: np.ndarray) -> float:
    """Risk factor of the drawdown risk governor: the wallet's drawdown from its high-water mark."""
    hwm = state[S_HWM]
    drawdown = (hwm - state[S_WALLET]) / hwm if hwm > 0.0 else 0.0
    for k in range(4):
        threshold = p[P_GOV_DD_1 + k]
        if threshold > 0.0 and drawdown > threshold:
            return p[P_GOV_F_1 + k]
    return 1.0


@njit(cache=True, error_model="numpy")
def breakeven_level(state: np.ndarray, p: np.ndarray) -> float:
    """The stop level at which a stop exit nets zero: entry fees, exit fee and stop slippage covered.

    Solves d*(fill - entry)*qty = entry_fees + fill*qty*taker for the fill, then adds the
    slippage a stop-market exit suffers, and rounds away from the entry to the next tick.
    """
    d = state[S_DIR]
    fees_per_unit = state[S_ENTRY_FEE_TOTAL] / state[S_ENTRY_QTY_TOTAL]
    fill = (state[S_ENTRY] + d * fees_per_unit) / (1.0 - d * p[P_TAKER])
    level = fill / (1.0 - d * p[P_SLIPPAGE])
    tick = p[P_TICK]
    return on_step(math.ceil(level / tick - 1e-9) if d > 0.0 else math.floor(level / tick + 1e-9), tick)


@njit(cache=True, error_model="numpy")
def tighten_stop(state: np.ndarray, p: np.ndarray, level: float, kind: int, close: float) -> bool:
    """Move the stop to ``level`` if that tightens it; a level beyond the market is clamped one tick inside.

    Returns True when the stop moved. The stop never loosens.
    """
    d = state[S_DIR]
    tick = p[P_TICK]
    if (close - level) * d <= 0.0:
        level = close - d * tick
    level = round_price(level, tick)
    if (level - state[S_STOP]) * d > 0.0:
        state[S_STOP] = level
        state[S_STOP_KIND] = kind
        return True
    return False


@njit(cache=True, error_model="numpy")
def decide_entry(state: np.ndarray, p: np.ndarray, i: int, h: float, low_: float, c: float, a: float, sig: int,
                 prev_high: float, prev_low: float) -> None:
    """Entry rules at a close while flat: cooldown and its breakout override, stop distance, sizing."""
    d = float(sig)
    breakout = False
    if i < state[S_COOLDOWN_UNTIL]:
        prior_extreme = prev_high if d > 0.0 else prev_low
        if (c - prior_extreme) * d > 0.0:
            breakout = True
        else:
            return
    if not (a > 0.0):
        return
    distance = a * p[P_STOP_ATR]
    if breakout and p[P_BREAKOUT_STOP] > 0.0:
        bar_extreme = low_ if d > 0.0 else h
        to_extreme = (c - bar_extreme) * d
        if to_extreme > 0.0:
            distance = to_extreme * p[P_BREAKOUT_STOP]
    if not (distance > 0.0):
        return
    wallet = state[S_WALLET]
    qty = state[S_RISK_BASE] * p[P_RISK] * governor_factor(state, p) / distance
    cap = 0.99 * wallet / (c * (1.0 / p[P_LEVERAGE] + p[P_TAKER]))  # margin and taker fee, 1% headroom
    if qty > cap:
        qty = cap
    qty = round_qty(qty, p[P_QTY_STEP])
    if qty < p[P_MIN_QTY] or qty * c < p[P_MIN_NOTIONAL]:
        return
    tick = p[P_TICK]
    stop = round_price(c - d * distance, tick)
    if stop <= 0.0 and c - d * distance <= 0.0:
        return  # a stop at or below zero: the exchange refuses the entry
    finest = tick_refusal_distance(p, distance, a)
    if finest < tick or stop <= 0.0:
        refuse_for_tick(state, i, finest if finest < tick else c - d * distance)
        return
    state[S_ORDER_ACTION] = A_OPEN
    state[S_ORDER_DIR] = d
    state[S_ORDER_QTY] = qty
    state[S_ORDER_STOP] = stop
    state[S_ORDER_ATR] = a
    return


@njit(cache=True, error_model="numpy")
def tick_refusal_distance(p: np.ndarray, stop_distance: float, a: float) -> float:
    """The shortest distance from the entry of the stop, the take-profit and the partial levels.

    One below a tick would round the order onto the entry (or behind it), which no exchange can
    rest as a stop or a take-profit: such an entry is refused and counted (refuse_for_tick).
    """
    finest = stop_distance
    if p[P_TP_ATR] > 0.0 and a * p[P_TP_ATR] < finest:
        finest = a * p[P_TP_ATR]
    if p[P_PARTIAL_ON] > 0.0 and p[P_N_LEVELS] > 0.0 and a * p[P_LEVEL_1] < finest:
        finest = a * p[P_LEVEL_1]  # levels are increasing: the first is the nearest
    return finest


@njit(cache=True, error_model="numpy")
def refuse_for_tick(state: np.ndarray, i: int, distance: float) -> None:
    """Count an entry refused because its stop or a target would round onto the entry or to zero."""
    if state[S_TICK_REFUSALS] == 0.0:
        state[S_TICK_REFUSAL_BAR] = i
        state[S_TICK_REFUSAL_DISTANCE] = distance
    state[S_TICK_REFUSALS] += 1.0


@njit(cache=True, error_model="numpy")
def manage(state: np.ndarray, p: np.ndarray, bar_ts: float, h: float, low_: float, c: float, a: float,
           sig: int) -> None:
    """Management rules at a close with a position: stops, exits, pyramiding."""
    d = state[S_DIR]
    entry = state[S_ENTRY]
    atr_entry = state[S_ATR_ENTRY]
    bar_extreme = h if d > 0.0 else low_
    if (bar_extreme - state[S_EXTREME]) * d > 0.0:
        state[S_EXTREME] = bar_extreme
    move = (c - entry) * d

    if state[S_BREAKEVEN] == 0.0 and p[P_BE_ATR] > 0.0 and move >= atr_entry * p[P_BE_ATR]:
        tighten_stop(state, p, breakeven_level(state, p), R_BREAKEVEN, c)
        state[S_BREAKEVEN] = 1.0

    if p[P_LOCK_TRIGGER] > 0.0 and state[S_BREAKEVEN] == 0.0 and move >= entry * p[P_LOCK_TRIGGER]:
        tighten_stop(state, p, entry * (1.0 + d * p[P_LOCK_TARGET]), R_PROFIT_LOCK, c)

    should_trail = state[S_BREAKEVEN] > 0.0 or state[S_TRAILING] > 0.0 or move > atr_entry * p[P_TRAIL_EARLY_ATR]
    if should_trail:
        if state[S_BREAKEVEN] > 0.0:
            mult = p[P_AGGR_TRAIL_ATR]
        elif state[S_MAX_PNL] > 2.0 * atr_entry * state[S_QTY]:
            mult = p[P_TRAIL_ATR] * 0.7
        else:
            mult = p[P_TRAIL_ATR]
        if tighten_stop(state, p, state[S_EXTREME] - d * a * mult, R_TRAILING, c):
            state[S_TRAILING] = 1.0

    pnl = move * state[S_QTY]
    if pnl > state[S_MAX_PNL]:
        state[S_MAX_PNL] = pnl
    if (state[S_STAG_ARMED] == 0.0 and p[P_STAG_ATR] > 0.0 and state[S_TRAILING] > 0.0
            and state[S_MAX_PNL] > atr_entry * p[P_STAG_ATR] * state[S_QTY]):
        state[S_STAG_ARMED] = 1.0

    reason = -1
    if sig == SIG_EXIT_LONG * d and (state[S_BREAKEVEN] > 0.0 or p[P_SIGNAL_EXIT_ANYTIME] > 0.0):
        reason = R_SIGNAL
    elif state[S_STAG_ARMED] > 0.0 and pnl < state[S_MAX_PNL] * p[P_STAG_DECAY]:
        reason = R_STAGNATION
    elif p[P_MAX_HOLD_HOURS] > 0.0 and bar_ts + p[P_BAR_MS] - state[S_ENTRY_TS] >= p[P_MAX_HOLD_HOURS] * 3_600_000.0:
        reason = R_TIME
    if reason >= 0:
        state[S_ORDER_ACTION] = A_CLOSE
        state[S_ORDER_DIR] = -d
        state[S_ORDER_QTY] = state[S_QTY]
        state[S_ORDER_REASON] = reason
        return

    if (p[P_SCALING] > 0.0 and sig == d and (state[S_BREAKEVEN] > 0.0 or state[S_TRAILING] > 0.0)
            and (c - state[S_LAST_ADD] - d * p[P_SCALE_ADD_ATR] * a) * d >= 0.0):
        room = state[S_INITIAL_QTY] * p[P_MAX_POS_MULT] - state[S_QTY]
        add = round_qty(min(state[S_INITIAL_QTY], room), p[P_QTY_STEP])
        if add >= p[P_MIN_QTY] and add * c >= p[P_MIN_NOTIONAL]:
            equity = state[S_WALLET] + pnl
            free_margin = equity - state[S_QTY] * entry / p[P_LEVERAGE]
            cost = required_margin(add, c, p[P_LEVERAGE], p[P_TAKER]) * 1.05
            if cost <= free_margin:
                state[S_ORDER_ACTION] = A_ADD
                state[S_ORDER_DIR] = d
                state[S_ORDER_QTY] = add


# ----------------------------------------------------------------------------------------------
# One bar at a simulated venue
# ----------------------------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def decide(state: np.ndarray, p: np.ndarray, i: int, bar_ts: float, h: float, low_: float, c: float,
           a: float, sig: int, prev_high: float, prev_low: float) -> None:
    """Run every management rule at the close of bar ``i`` and leave the next order in the state.

    Inputs are bar i's open time, high, low, close, ATR and signal, and bar i-1's high and low
    (NaN for the first bar). The order (S_ORDER_*) is a market order for the open of bar i+1;
    S_STOP holds the stop that rests from bar i+1 on. The caller (backtest loop, live trader)
    executes both. Scalars, not arrays, so the call stays cheap inside the bar loop; the work is
    split in two functions so that a bar with nothing to do costs almost nothing.
    """
    state[S_ORDER_ACTION] = A_NONE
    if state[S_DIR] != 0.0:
        manage(state, p, bar_ts, h, low_, c, a, sig)
    elif sig == SIG_LONG or sig == SIG_SHORT:
        decide_entry(state, p, i, h, low_, c, a, sig, prev_high, prev_low)


@njit(cache=True, error_model="numpy")
def execute_market_order(state: np.ndarray, p: np.ndarray, open_: float, ts: float, bar: float,
                         row: np.ndarray) -> bool:
    """Fill the order decided at the previous close at this bar's open; True when a trade row was written."""
    action = state[S_ORDER_ACTION]
    if action == A_NONE:
        return False
    state[S_ORDER_ACTION] = A_NONE
    side = state[S_ORDER_DIR]
    qty = state[S_ORDER_QTY]
    if action == A_OPEN and (open_ - state[S_ORDER_STOP]) * side <= 0.0:
        return False  # the market opened beyond the entry's stop: the exchange refuses such an order
    if action != A_CLOSE:
        free = state[S_WALLET] - state[S_QTY] * state[S_ENTRY] / p[P_LEVERAGE]
        if state[S_DIR] != 0.0:
            free += unrealized(state, open_)
        if required_margin(qty, open_, p[P_LEVERAGE], p[P_TAKER]) > free:
            return False  # insufficient balance at the open: the exchange refuses the order
    price = market_fill_price(open_, side, p[P_SLIPPAGE])
    fee = qty * price * p[P_TAKER]
    if action == A_CLOSE:
        row[1] = ts
        close_fill(state, p, qty, price, fee, int(state[S_ORDER_REASON]), bar, row)
        return True
    open_fill(state, p, side, qty, price, fee, ts, bar)
    return False


@njit(cache=True, error_model="numpy")
def fill_targets(state: np.ndarray, p: np.ndarray, open_: float, reach: float, ts: float, bar: float,
                 rows: np.ndarray, n_rows: int) -> int:
    """Fill the partial levels, then the final take-profit, that the price reaches at ``reach``.

    Reduce-only limits with the maker fee, at their level or at the better open when the open has
    crossed them. Returns the new trade-row count.
    """
    d = state[S_DIR]
    tp = state[S_TP]
    n_levels = int(p[P_N_LEVELS]) if p[P_PARTIAL_ON] > 0.0 else 0
    for k in range(int(state[S_LEVELS_DONE]), n_levels):
        level = state[S_LEVEL_1 + k]
        if level <= 0.0 or (tp > 0.0 and (level - tp) * d >= 0.0) or not limit_touched(level, d, reach):
            break
        price = limit_fill_price(level, d, open_)
        qty = partial_qty(state, p)
        row = rows[n_rows]
        row[1] = ts
        n_rows += 1
        state[S_LEVELS_DONE] = k + 1
        if close_fill(state, p, qty, price, qty * price * p[P_MAKER], R_PARTIAL, bar, row):
            return n_rows
    if tp > 0.0 and limit_touched(tp, d, reach):
        price = limit_fill_price(tp, d, open_)
        qty = state[S_QTY]
        row = rows[n_rows]
        row[1] = ts
        close_fill(state, p, qty, price, qty * price * p[P_MAKER], R_TAKE_PROFIT, bar, row)
        n_rows += 1
    return n_rows


@njit(cache=True, error_model="numpy")
def protective_fill(state: np.ndarray, p: np.ndarray, kind: int, open_: float, ts: float, bar: float,
                    row: np.ndarray) -> None:
    """Close the whole position on its stop (at the stop, or the gapped open, less slippage, taker fee) or
    by liquidation (taken over at the bankruptcy price, no fee: the position margin is lost)."""
    d = state[S_DIR]
    qty = state[S_QTY]
    row[1] = ts
    if kind == EXIT_LIQUIDATION:
        close_fill(state, p, qty, bankruptcy_price(state[S_ENTRY], d, p[P_LEVERAGE]), 0.0, R_LIQUIDATION, bar, row)
    else:
        price = stop_fill_price(state[S_STOP], d, open_, p[P_SLIPPAGE])
        close_fill(state, p, qty, price, qty * price * p[P_TAKER], int(state[S_STOP_KIND]), bar, row)


@njit(cache=True, error_model="numpy")
def resting_orders(state: np.ndarray, p: np.ndarray, open_: float, high: float, low: float, ts: float,
                   bar: float, rows: np.ndarray, n_rows: int) -> int:
    """Match the stop, liquidation, partial and final take-profits in one bar: the open first, then the path.

    First the open: the take-profit levels it has crossed fill there (it cannot cross a stop on the
    other side too). Then the pessimistic path: the extreme against the position (the stop or the
    liquidation price, protective_exit), then the other extreme (the levels left). Writes trade rows
    from ``rows[n_rows]`` on and returns the new count.
    """
    d = state[S_DIR]
    if d == 0.0:
        return n_rows
    n_rows = fill_targets(state, p, open_, open_, ts, bar, rows, n_rows)
    if state[S_DIR] == 0.0:
        return n_rows
    adverse = low if d > 0.0 else high
    kind = protective_exit(state[S_STOP], state[S_LIQ], d, open_, adverse)
    if kind != EXIT_NONE:
        protective_fill(state, p, kind, open_, ts, bar, rows[n_rows])
        return n_rows + 1
    return fill_targets(state, p, open_, high if d > 0.0 else low, ts, bar, rows, n_rows)


@njit(cache=True, error_model="numpy")
def _grow(rows: np.ndarray, needed: int) -> np.ndarray:
    if needed <= rows.shape[0]:
        return rows
    bigger = np.empty((max(needed, rows.shape[0] * 2), N_TRADE_COLS), dtype=np.float64)
    bigger[:rows.shape[0]] = rows
    return bigger


@njit(cache=True, error_model="numpy")
def may_fill(state: np.ndarray, high: float, low: float) -> bool:
    """Cheap pre-check: could any resting order (stop, liquidation, take-profits) fill in this bar?"""
    d = state[S_DIR]
    adverse = low if d > 0.0 else high
    if stop_touched(state[S_STOP], d, adverse) or stop_touched(state[S_LIQ], d, adverse):
        return True
    favourable = high if d > 0.0 else low
    tp = state[S_TP]
    if tp > 0.0 and limit_touched(tp, d, favourable):
        return True
    done = int(state[S_LEVELS_DONE])
    return done < MAX_LEVELS and state[S_LEVEL_1 + done] > 0.0 and limit_touched(state[S_LEVEL_1 + done], d,
                                                                                  favourable)


@njit(cache=True, error_model="numpy", inline="always")
def venue_bar(state: np.ndarray, p: np.ndarray, bar: int, bar_ts: int, open_: float, high: float, low: float,
              funding_ts: np.ndarray, funding_rates: np.ndarray, next_event: int, rows: np.ndarray,
              n_rows: int) -> tuple[int, int]:
    """What the simulated venue does in one bar, in DESIGN.md's order, before the decision at its close.

    Funding: every event from ``next_event`` on with a time at or before this open, each at its own
    rate (NaN = the params' constant), on the position held at this open. Then the market order
    decided at the previous close, then the resting orders (resting_orders). ``rows`` must have room
    for MAX_LEVELS + 2 more trade rows. Returns (the new trade-row count, the next funding event).
    """
    while next_event < funding_ts.shape[0] and funding_ts[next_event] <= bar_ts:
        if state[S_DIR] != 0.0:
            rate = funding_rates[next_event]
            pay_funding(state, rate if rate == rate else p[P_FUNDING_RATE], open_)
        next_event += 1
    if state[S_ORDER_ACTION] != A_NONE:
        if execute_market_order(state, p, open_, bar_ts, bar, rows[n_rows]):
            n_rows += 1
    if state[S_DIR] != 0.0 and may_fill(state, high, low):
        n_rows = resting_orders(state, p, open_, high, low, bar_ts, bar, rows, n_rows)
    return n_rows, next_event


@njit(cache=True, error_model="numpy")
def close_at_end(state: np.ndarray, p: np.ndarray, ts: np.ndarray, close: np.ndarray, row: np.ndarray) -> bool:
    """Close an open position at the last close as ``end_of_data`` (taker fee); True when it did."""
    n = ts.shape[0]
    state[S_ORDER_ACTION] = A_NONE
    if state[S_DIR] == 0.0 or n == 0:
        return False
    price = close[n - 1]
    row[1] = ts[n - 1] + p[P_BAR_MS]
    close_fill(state, p, state[S_QTY], price, state[S_QTY] * price * p[P_TAKER], R_END, n - 1, row)
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def run_loop(ts: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
             atr: np.ndarray, signal: np.ndarray, funding_ts: np.ndarray, funding_rates: np.ndarray, p: np.ndarray,
             state: np.ndarray, equity: np.ndarray, position: np.ndarray, end_close: bool) -> np.ndarray:
    """The backtest bar loop; fills ``equity``/``position`` per bar close and returns the trade rows.

    ``funding_ts``/``funding_rates`` are the funding events (funding_schedule): each is charged at
    the open of the first bar at or after its time, on the position held then, at its own rate, so
    an event inside a data gap or inside a 12h/1d bar is charged once. With ``end_close`` an open
    position is closed at the last close.
    """
    n = ts.shape[0]
    rows = np.empty((64, N_TRADE_COLS), dtype=np.float64)
    n_rows = 0
    prev_high = np.nan
    prev_low = np.nan
    next_event = np.searchsorted(funding_ts, ts[0]) if n > 0 else 0
    for i in range(n):
        if state[S_DIR] != 0.0 or state[S_ORDER_ACTION] != A_NONE:
            if n_rows + MAX_LEVELS + 2 > rows.shape[0]:
                rows = _grow(rows, n_rows + MAX_LEVELS + 2)
            n_rows, next_event = venue_bar(state, p, i, ts[i], open_[i], high[i], low[i], funding_ts, funding_rates,
                                           next_event, rows, n_rows)
        if state[S_DIR] != 0.0:
            state[S_ORDER_ACTION] = A_NONE
            manage(state, p, ts[i], high[i], low[i], close[i], atr[i], signal[i])
        elif signal[i] == SIG_LONG or signal[i] == SIG_SHORT:
            decide_entry(state, p, i, high[i], low[i], close[i], atr[i], signal[i], prev_high, prev_low)
        # (decide() inlined by hand: numba would not inline it, and a call per bar costs more than the rules)
        prev_high = high[i]
        prev_low = low[i]
        if state[S_DIR] != 0.0:
            equity[i] = state[S_WALLET] + unrealized(state, close[i])
            position[i] = state[S_QTY] * state[S_DIR]
        else:
            equity[i] = state[S_WALLET]
            position[i] = 0.0
    if end_close and n > 0:
        rows = _grow(rows, n_rows + 1)
        if close_at_end(state, p, ts, close, rows[n_rows]):
            n_rows += 1
            equity[n - 1] = state[S_WALLET]
    return rows[:n_rows]
