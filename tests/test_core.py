"""Trading rules of the decision core and the simulated venue, on small hand-made candles.

Every expected fill, fee and PnL below is worked out by hand in the comments. Common setup:
capital 10,000, risk 1% (100 USDT), ATR 2, stop 2 ATR = 4 away, so the entry size is
100 / 4 = 25; taker 0.1%, maker 0.05%; entries are decided at the close of bar 0 and fill at
the open of bar 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core

HOUR = 3_600_000
T0 = 1_577_836_800_000  # 2020-01-01 00:00 UTC, a funding timestamp

BASE = {
    "risk_per_trade": 0.01, "leverage": 10, "atr_stop_multiplier": 2.0,
    "trail_atr_multiplier": 50, "trail_early_activation_atr_multiplier": 50, "aggressive_trail_atr_multiplier": 50,
    "partial_tp_fraction": 0.5, "stagnation_profit_decay": 0.7,
    "taker_fee": 0.001, "maker_fee": 0.0005, "slippage": 0.0,
    "qty_step": 0.01, "min_qty": 0.01, "min_notional": 1.0, "tick_size": 0.01,
    "capital": 10_000.0, "bar_ms": HOUR,
}


def run(bars, signals, atr=2.0, end_close=False, funding_rate=math.nan, ts=None, funding=None, **overrides):
    """Run the bar loop on (open, high, low, close) tuples; returns rows, state, equity.

    Bars are hourly from T0 unless ``ts`` gives their open times; funding events are the 8-hourly
    ones at ``funding_rate`` (NaN: the params' constant) unless ``funding`` lists (time, rate) pairs.
    """
    values = dict(BASE)
    values.update(overrides)
    p = core.params_vector(values)
    arr = np.array(bars, dtype=np.float64)
    n = len(bars)
    ts = T0 + np.arange(n, dtype=np.int64) * HOUR if ts is None else np.asarray(ts, dtype=np.int64)
    atr_arr = np.full(n, atr) if np.isscalar(atr) else np.asarray(atr, dtype=np.float64)
    sig = np.zeros(n, dtype=np.int8)
    sig[: len(signals)] = signals
    state = core.new_state(values["capital"])
    equity = np.empty(n)
    position = np.empty(n)
    if funding is None:
        event_ts, event_rates = core.funding_schedule(ts, int(values["bar_ms"]))
        event_rates[:] = funding_rate
    else:
        event_ts, event_rates = core.funding_schedule(ts, int(values["bar_ms"]), np.array([t for t, _ in funding]),
                                                      np.array([r for _, r in funding]))
    rows = core.run_loop(ts, arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy(), atr_arr, sig,
                         event_ts, event_rates, p, state, equity, position, end_close)
    return rows, state, equity


def trade(row):
    names = core.TRADE_COLUMNS
    return {names[k]: row[k] for k in range(len(names))}


FLAT = (100.0, 100.5, 99.5, 100.0)


def test_gap_through_stop_fills_at_the_open():
    # entry 100 * 1.001 = 100.1, fee 25 * 100.1 * 0.001 = 2.5025; stop 100 - 4 = 96.
    # bar 2 opens at 93, below the stop: fills at the open less slippage: 93 * 0.999 = 92.907,
    # fee 25 * 92.907 * 0.001 = 2.322675; pnl = -7.193 * 25 - 2.5025 - 2.322675 = -184.650175.
    rows, state, equity = run([FLAT, FLAT, (93, 94, 92, 93)], [1], slippage=0.001)
    assert len(rows) == 1
    t = trade(rows[0])
    assert t["entry_price"] == pytest.approx(100.1)
    assert t["exit_price"] == pytest.approx(92.907)
    assert t["fees"] == pytest.approx(2.5025 + 2.322675)
    assert t["pnl"] == pytest.approx(-184.650175)
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "stop_loss"
    assert (t["entry_bar"], t["exit_bar"]) == (1, 2)
    assert equity[-1] == pytest.approx(10_000 - 184.650175)


def test_no_entry_when_the_open_is_already_beyond_the_stop():
    # The entry's stop is 96; bar 1 opens at 95: Bybit refuses a buy whose stop-loss is above the
    # price, so the backtest takes no position either.
    rows, state, equity = run([FLAT, (95, 96, 94, 95), FLAT], [1])
    assert len(rows) == 0 and state[core.S_DIR] == 0.0 and equity[-1] == 10_000.0


def test_entry_refused_when_margin_and_fee_do_not_fit_at_the_open():
    # Sized at the close of 100 to the 99% cap: 9,900 / (100 * 0.101) = 980.19 units; bar 1 opens
    # 2% higher at 102: 980.19 * 102 * 0.101 = 10,098 > 10,000 free, so the order is refused.
    _, state, _ = run([FLAT, (102, 103, 101.5, 102), FLAT], [1], risk_per_trade=0.5)
    assert state[core.S_DIR] == 0.0


def test_bar_touching_stop_and_take_profit_takes_the_stop():
    # TP = 100.1 + 2 * 2 = 104.1 and stop 96 both inside bar 2 (95..105): the stop is taken.
    # fill 96 * 0.999 = 95.904, fee 2.3976; pnl = -4.196 * 25 - 2.5025 - 2.3976 = -109.8001.
    rows, _, _ = run([FLAT, FLAT, (100, 105, 95, 100)], [1], slippage=0.001, tp_atr_multiplier=2.0)
    assert len(rows) == 1
    assert core.EXIT_REASONS[int(rows[0][9])] == "stop_loss"
    assert rows[0][8] == pytest.approx(-109.8001)


def test_take_profit_is_a_limit_with_the_maker_fee():
    # Same, but the low stays above the stop: TP 104.1 fills at its price,
    # maker fee 25 * 104.1 * 0.0005 = 1.30125; pnl = 4 * 25 - 2.5025 - 1.30125 = 96.19625.
    rows, _, _ = run([FLAT, FLAT, (100, 105, 97, 100)], [1], slippage=0.001, tp_atr_multiplier=2.0)
    t = trade(rows[0])
    assert t["exit_price"] == pytest.approx(104.1)
    assert t["pnl"] == pytest.approx(96.19625)
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "take_profit"


def test_breakeven_stop_covers_fees_and_slippage():
    # Close 103 is 2.9 >= 1 ATR past the entry 100.1: breakeven. Entry fee per unit 0.1001;
    # the fill that nets zero is (100.1 + 0.1001) / 0.999 = 100.3004..., before stop slippage
    # 100.3004 / 0.999 = 100.4008..., rounded up to the tick: 100.41.
    # Bar 3 touches it: fill 100.41 * 0.999 = 100.30959, fee 2.50773975,
    # pnl = 0.20959 * 25 - 2.5025 - 2.50773975 = 0.22951025 (> 0: the fees are covered).
    bars = [FLAT, FLAT, (100, 103, 99.5, 103), (102, 102, 100, 101)]
    _, state, _ = run(bars[:3], [1], slippage=0.001, breakeven_atr_multiplier=1.0)
    assert state[core.S_STOP] == pytest.approx(100.41)
    rows, _, _ = run(bars, [1], slippage=0.001, breakeven_atr_multiplier=1.0)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "breakeven_stop"
    assert t["exit_price"] == pytest.approx(100.30959)
    assert t["pnl"] == pytest.approx(0.22951025)
    assert t["pnl"] > 0


TRAIL_BARS = [FLAT, FLAT, (100, 104, 99.5, 103.5), (103.5, 106, 103, 105), (105, 105.5, 103, 103.5),
              (103.5, 104, 101.5, 102)]
TRAIL_ATR = [2, 2, 2, 2, 3, 3]
TRAIL = {"trail_atr_multiplier": 2.0, "trail_early_activation_atr_multiplier": 1.0}


def test_trailing_stop_follows_and_never_loosens():
    # bar 2: move 3.5 > 1 ATR: trail from the high 104: 104 - 2 * 2 = 100.
    # bar 3: high 106: 106 - 4 = 102.  bar 4: ATR 3 and peak profit 125 > 2 ATR * 25 = 100, so
    # the multiplier is 2 * 0.7: 106 - 4.2 = 101.8 < 102, the stop stays at 102.
    stops = []
    for k in (3, 4, 5):
        _, state, _ = run(TRAIL_BARS[:k], [1], atr=TRAIL_ATR[:k], **TRAIL)
        stops.append(state[core.S_STOP])
    assert stops == pytest.approx([100.0, 102.0, 102.0])
    # bar 5 dips to 101.5: exit at 102, fee 2.55; pnl = 2 * 25 - 2.5 - 2.55 = 44.95.
    rows, _, _ = run(TRAIL_BARS, [1], atr=TRAIL_ATR, **TRAIL)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "trailing_stop"
    assert t["exit_price"] == pytest.approx(102.0)
    assert t["pnl"] == pytest.approx(44.95)


def test_stagnation_exit_when_profit_decays():
    # Trailing from bar 2 with peak profit 87.5 > 1 ATR * 25 arms the stagnation exit; peak 125
    # at bar 3; bar 4 closes at 103.4: profit 85 < 0.7 * 125 = 87.5, exit at bar 5's open 103.5,
    # fee 2.5875; pnl = 3.5 * 25 - 2.5 - 2.5875 = 82.4125.
    bars = TRAIL_BARS[:4] + [(105, 105.5, 103, 103.4), (103.5, 104, 103.2, 103.6)]
    rows, _, _ = run(bars, [1], atr=TRAIL_ATR, stagnation_atr_threshold=1.0, **TRAIL)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "stagnation_exit"
    assert (t["exit_bar"], t["exit_price"]) == (5, pytest.approx(103.5))
    assert t["pnl"] == pytest.approx(82.4125)


def test_partial_take_profits_book_the_maker_fee():
    # Levels 1 and 2 ATR: 102 and 104, each 50% of the initial 25 = 12.5.
    # bar 2 reaches 102: 12.5 at 102, maker fee 0.6375, half the entry fee 1.25:
    #   pnl = 2 * 12.5 - 1.25 - 0.6375 = 23.1125.
    # bar 3 opens at 105 above 104: the limit fills at the better open 105, fee 0.65625:
    #   pnl = 5 * 12.5 - 1.25 - 0.65625 = 60.59375.
    bars = [FLAT, FLAT, (100, 102.5, 99.5, 102), (105, 106, 104.5, 105)]
    rows, state, equity = run(bars, [1], partial_take_profit=1, n_partial_levels=2,
                              partial_level_1=1.0, partial_level_2=2.0)
    assert len(rows) == 2
    first, second = trade(rows[0]), trade(rows[1])
    assert (first["qty"], first["exit_price"], first["fees"]) == (12.5, 102.0, pytest.approx(1.8875))
    assert first["pnl"] == pytest.approx(23.1125)
    assert (second["qty"], second["exit_price"]) == (12.5, 105.0)
    assert second["pnl"] == pytest.approx(60.59375)
    assert all(core.EXIT_REASONS[int(r[9])] == "partial_take_profit" for r in rows)
    assert state[core.S_DIR] == 0.0
    assert equity[-1] == pytest.approx(10_000 + 23.1125 + 60.59375)


@pytest.mark.parametrize(("signal", "expected_pnl", "expected_funding"), [(1, -5.25, 0.25), (-1, -4.75, -0.25)])
def test_funding_sign_and_time_exit(signal, expected_pnl, expected_funding):
    # Entry at 01:00 at 100; funding at 08:00: 25 * 100 * 0.0001 = 0.25, paid by the long,
    # received by the short. max_hold 10 h: the close of the 10:00 bar (11:00) is 10 h after the
    # entry, so the exit fills at 11:00's open. Fees 2.5 + 2.5.
    bars = [(100, 100.5, 99.5, 100)] * 12
    rows, _, _ = run(bars, [signal], funding_rate=0.0001, max_hold_hours=10)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "time_exit"
    assert t["exit_ts"] - t["entry_ts"] == 10 * HOUR
    assert t["funding"] == pytest.approx(expected_funding)
    assert t["pnl"] == pytest.approx(expected_pnl)
    assert t["side"] == signal


COOL_BARS = [FLAT, FLAT, (100, 103, 99.5, 103), (101, 101.5, 100, 101)] + [(101, 101.5, 100.5, 101)] * 4


def test_cooldown_blocks_reentry_for_n_bars():
    # Breakeven at bar 2 (stop 100.21), hit at bar 3: cooldown 3 blocks the closes of bars 3, 4, 5;
    # the long signal at bar 6's close enters at bar 7's open.
    signals = [1, 0, 0, 1, 1, 1, 1, 1]
    rows, state, _ = run(COOL_BARS, signals, breakeven_atr_multiplier=1.0, cooldown_period_candles=3)
    assert core.EXIT_REASONS[int(rows[0][9])] == "breakeven_stop"
    assert rows[0][5] == pytest.approx(100.21)
    assert state[core.S_ENTRY_BAR] == 7
    without, state_free, _ = run(COOL_BARS, signals, breakeven_atr_multiplier=1.0, cooldown_period_candles=0)
    assert state_free[core.S_ENTRY_BAR] == 4


def test_breakout_overrides_cooldown_with_the_aggressive_stop():
    # bar 4 closes at 102 above bar 3's high 101.5: a breakout, entered despite the cooldown.
    # Aggressive stop: half the distance to bar 4's low: (102 - 100.5) * 0.5 = 0.75, stop 101.25;
    # risk base = wallet after the first trade: 10000 + 0.21 * 25 - 2.5 - 2.50525 = 10000.24475,
    # size = 100.0024475 / 0.75 = 133.336... -> 133.33.
    bars = list(COOL_BARS)
    bars[4] = (101, 102.5, 100.5, 102)
    _, state, _ = run(bars[:5], [1, 0, 0, 1, 1], breakeven_atr_multiplier=1.0, cooldown_period_candles=3,
                      aggressive_breakout_stop_multiplier=0.5)
    assert state[core.S_ORDER_ACTION] == core.A_OPEN
    assert state[core.S_ORDER_QTY] == pytest.approx(133.33)
    assert state[core.S_ORDER_STOP] == pytest.approx(101.25)


def test_governor_halves_risk_at_its_threshold():
    values = dict(BASE)
    for k, (dd, factor) in enumerate(((0.4, 0.25), (0.3, 0.35), (0.2, 0.5), (0.1, 0.75))):
        values[f"gov_dd_{k + 1}"] = dd
        values[f"gov_factor_{k + 1}"] = factor
    p = core.params_vector(values)
    sizes = []
    for wallet in (10_000.0, 8_000.0, 7_900.0):
        state = core.new_state(10_000.0)
        state[core.S_WALLET] = wallet
        core.decide(state, p, 5, float(T0), 100.5, 99.5, 100.0, 2.0, 1, 100.0, 99.0)
        sizes.append(state[core.S_ORDER_QTY])
    # risk 100 / distance 4 = 25; drawdown 20% is not above 0.2 -> factor 0.75; 21% -> 0.5.
    assert sizes == pytest.approx([25.0, 18.75, 12.5])


def test_pyramid_add_averages_the_entry():
    # bar 2: breakeven set, close 103 >= last add 100 + 1 ATR with a long signal: add 25 at bar 3's
    # open 103 (fee 2.575); average entry (100 * 25 + 103 * 25) / 50 = 101.5. End of data at 103.5:
    # fee 50 * 103.5 * 0.001 = 5.175; pnl = 2 * 50 - 2.5 - 2.575 - 5.175 = 89.75.
    bars = [FLAT, FLAT, (100, 103, 99.5, 103), (103, 104, 102.5, 103.5)]
    params = {"breakeven_atr_multiplier": 1.0, "position_scaling": 1, "max_position_multiplier": 2.0,
              "scale_add_atr_multiplier": 1.0}
    _, state, _ = run(bars, [1, 0, 1], **params)
    assert state[core.S_QTY] == pytest.approx(50.0)
    assert state[core.S_ENTRY] == pytest.approx(101.5)
    rows, _, equity = run(bars, [1, 0, 1], end_close=True, **params)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "end_of_data"
    assert t["pnl"] == pytest.approx(89.75)
    assert equity[-1] == pytest.approx(10_000 + 89.75)


@pytest.mark.parametrize(("breakeven", "exits"), [(1.0, True), (0.0, False)])
def test_signal_exit_needs_breakeven(breakeven, exits):
    # Exit signal at bar 2 (close 103): with breakeven set at that close the position is closed at
    # bar 3's open 103: pnl = 3 * 25 - 2.5 - 2.575 = 69.925; without breakeven it stays open.
    bars = [FLAT, FLAT, (100, 103, 99.5, 103), (103, 104, 102.5, 103.5)]
    rows, state, _ = run(bars, [1, 0, core.SIG_EXIT_LONG], breakeven_atr_multiplier=breakeven)
    if exits:
        assert core.EXIT_REASONS[int(rows[0][9])] == "signal_exit"
        assert rows[0][8] == pytest.approx(69.925)
    else:
        assert len(rows) == 0 and state[core.S_DIR] == 1.0


def test_profit_lock_beyond_the_market_is_clamped_not_an_exit():
    # Lock triggers at +2% (102.0) and targets +5% (105), above the close 103: clamped one tick
    # under the close (102.99), so the position is still open after the close.
    bars = [FLAT, FLAT, (100, 103, 99.5, 103)]
    _, state, _ = run(bars, [1], profit_lock_trigger_pct=0.02, profit_lock_target_pct=0.05)
    assert state[core.S_DIR] == 1.0
    assert state[core.S_STOP] == pytest.approx(102.99)


def test_quantity_respects_step_minimum_and_leverage_cap():
    # Risk 50% of 10,000 over a 4-wide stop would be 1,250 units = 125,000 notional; leverage 2
    # caps it where margin and taker fee fit in 99% of the wallet: 9,900 / (100 * (0.5 + 0.001))
    # = 197.60; a 0.3 step rounds down: 197.4.
    _, state, _ = run([FLAT, FLAT], [1], risk_per_trade=0.5, leverage=2, qty_step=0.3, min_qty=0.3)
    assert state[core.S_QTY] == pytest.approx(197.4)
    _, flat, _ = run([FLAT, FLAT], [1], min_notional=1e9)
    assert flat[core.S_DIR] == 0.0


candle = st.tuples(st.floats(-0.05, 0.05), st.floats(0, 0.03), st.floats(0, 0.03), st.floats(-0.05, 0.05))


@settings(max_examples=60, deadline=None)
@given(moves=st.lists(candle, min_size=5, max_size=120), signals=st.lists(st.sampled_from([0, 1, -1, 10, -10]),
       min_size=120, max_size=120), slippage=st.sampled_from([0.0, 0.0005]), partial=st.booleans(),
       scaling=st.booleans(), leverage=st.sampled_from([3.0, 10.0, 60.0]), funding=st.floats(-0.001, 0.001))
def test_accounting_identity_and_fills_inside_bars(moves, signals, slippage, partial, scaling, leverage, funding):
    bars = []
    price = 100.0
    for gap, up, down, body in moves:
        open_ = price * (1 + gap)
        close = open_ * (1 + body)
        bars.append((open_, max(open_, close) * (1 + up), min(open_, close) * (1 - down), close))
        price = close
    rows, state, equity = run(
        bars, signals[: len(bars)], end_close=True, funding_rate=funding, slippage=slippage, leverage=leverage,
        maintenance_margin_rate=0.005, tp_atr_multiplier=3.0, breakeven_atr_multiplier=1.0,
        trail_atr_multiplier=2.0, trail_early_activation_atr_multiplier=1.0, aggressive_trail_atr_multiplier=1.0,
        partial_take_profit=int(partial), n_partial_levels=2, partial_level_1=0.5, partial_level_2=1.5,
        position_scaling=int(scaling), max_position_multiplier=2.0, scale_add_atr_multiplier=0.5,
        stagnation_atr_threshold=1.0, max_hold_hours=20, cooldown_period_candles=2, atr=1.5)
    assert equity[-1] == pytest.approx(10_000.0 + rows[:, 8].sum(), rel=1e-9, abs=1e-9)
    assert state[core.S_DIR] == 0.0
    arr = np.array(bars)
    for row in rows:
        bar = int(row[11])
        low, high = arr[bar, 2], arr[bar, 1]
        exit_price = row[5]
        if row[9] == core.R_LIQUIDATION:  # taken over at the bankruptcy price, wherever the market was
            assert exit_price == pytest.approx(row[4] * (1 - row[2] / leverage))
            continue
        assert low * (1 - slippage) - 1e-9 <= exit_price <= high * (1 + slippage) + 1e-9
        entry_bar = int(row[10])
        if not scaling:
            assert arr[entry_bar, 2] * (1 - slippage) - 1e-9 <= row[4] <= arr[entry_bar, 1] * (1 + slippage) + 1e-9


def test_resting_targets_are_what_the_backtest_would_fill():
    # After the entry at 100 (ATR 2): partial levels 102 and 104 with 25% of 25 = 6.25 each, then
    # the final take-profit at 106 for the whole position (reduce-only: the exchange trims it).
    # With 50% levels the two partials take everything and no final order is needed.
    extra = {"partial_take_profit": 1, "n_partial_levels": 2, "partial_level_1": 1.0, "partial_level_2": 2.0,
             "tp_atr_multiplier": 3.0}
    out = np.zeros((core.MAX_LEVELS + 1, 3))
    for fraction, expected in ((0.25, [[0, 102.0, 6.25], [1, 104.0, 6.25], [-1, 106.0, 25.0]]),
                               (0.5, [[0, 102.0, 12.5], [1, 104.0, 12.5]])):
        _, state, _ = run([FLAT, FLAT], [1], partial_tp_fraction=fraction, **extra)
        p = core.params_vector({**BASE, **extra, "partial_tp_fraction": fraction})
        count = core.resting_targets(state, p, out)
        assert out[:count].tolist() == expected
        assert state[core.S_QTY] == 25.0


# ----------------------------------------------------------------------------------------------
# Corners (issue 14): each scenario failed before its fix
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("signal", "bar", "expected_pnl"), [
    # Long: TP 100 + 2 * 2 = 104, stop 96; bar 2 opens at 106, above the TP, then dips to 95.
    # The resting TP limit is crossed by the open: it fills at the open 106 before the dip,
    # maker fee 25 * 106 * 0.0005 = 1.325; pnl = 6 * 25 - 2.5 - 1.325 = 146.175.
    (1, (106, 107, 95, 100), 146.175),
    # Short mirror: TP 96, stop 104; bar 2 opens at 94 then spikes to 105: TP at the open 94,
    # fee 25 * 94 * 0.0005 = 1.175; pnl = 6 * 25 - 2.5 - 1.175 = 146.325.
    (-1, (94, 105, 93, 100), 146.325),
])
def test_take_profit_crossed_at_the_open_fills_before_a_later_stop(signal, bar, expected_pnl):
    rows, state, _ = run([FLAT, FLAT, bar], [signal], tp_atr_multiplier=2.0)
    assert len(rows) == 1 and state[core.S_DIR] == 0.0
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "take_profit"
    assert t["exit_price"] == bar[0]
    assert t["pnl"] == pytest.approx(expected_pnl)


@pytest.mark.parametrize("signal", [1, -1])
def test_partial_crossed_at_the_open_then_the_stop_takes_the_rest(signal):
    # Levels 1 and 3 ATR: 102 and 106 (long), 98 and 94 (short); 50% of 25 = 12.5 each; stop 96 / 104.
    # Bar 2 opens at 103 (97), past level 1 only, then runs to the stop:
    #   12.5 at the open 103, maker 12.5 * 103 * 0.0005 = 0.64375, half the entry fee 1.25:
    #     pnl = 3 * 12.5 - 1.25 - 0.64375 = 35.60625 (short: 12.5 * 97 * 0.0005 = 0.60625 -> 35.64375);
    #   12.5 at the stop 96 (104), taker 12.5 * 96 * 0.001 = 1.2 (1.3):
    #     pnl = -4 * 12.5 - 1.25 - 1.2 = -52.45 (short: -52.55).
    bar = (103, 103.5, 95, 97) if signal > 0 else (97, 105, 96.5, 103)
    rows, state, _ = run([FLAT, FLAT, bar], [signal], partial_take_profit=1, n_partial_levels=2,
                         partial_level_1=1.0, partial_level_2=3.0)
    assert len(rows) == 2 and state[core.S_DIR] == 0.0
    first, second = trade(rows[0]), trade(rows[1])
    assert core.EXIT_REASONS[int(first["exit_reason"])] == "partial_take_profit"
    assert (first["qty"], first["exit_price"]) == (12.5, bar[0])
    assert first["pnl"] == pytest.approx(35.60625 if signal > 0 else 35.64375)
    assert core.EXIT_REASONS[int(second["exit_reason"])] == "stop_loss"
    assert (second["qty"], second["exit_price"]) == (12.5, 100 - 4 * signal)
    assert second["pnl"] == pytest.approx(-52.45 if signal > 0 else -52.55)


STAG_BARS = [FLAT, FLAT, (100, 103, 99.5, 103), (103, 104.5, 102.5, 103.5), (103.5, 104, 103, 103.5),
             (103, 103.2, 101.9, 102), (102, 102.5, 101.5, 102)]
STAG = {"trail_atr_multiplier": 2.0, "trail_early_activation_atr_multiplier": 1.0, "stagnation_atr_threshold": 1.0,
        "partial_take_profit": 1, "n_partial_levels": 1, "partial_level_1": 2.0}


def test_a_partial_take_profit_does_not_trigger_the_stagnation_exit_by_itself():
    # bar 2 closes at 103: trailing on (103 - 2 * 2 = 99 > 96), peak profit 3 * 25 = 75 > 1 ATR * 25 = 50:
    # stagnation armed. bar 3 fills half at the level 104 and closes at 103.5: the 12.5 left earn
    # 3.5 * 12.5 = 43.75. The peak was on 25 units; scaled to the 12.5 held it is 37.5, so the
    # position is not stagnating (before the fix 43.75 < 0.7 * 75 = 52.5 closed it at bar 4's open).
    rows, state, _ = run(STAG_BARS[:5], [1], **STAG)
    assert len(rows) == 1 and core.EXIT_REASONS[int(rows[0][9])] == "partial_take_profit"
    assert state[core.S_DIR] == 1.0
    # The exit still works on the rest: peak 43.75 at bar 3; bar 5 closes at 102: 2 * 12.5 = 25 <
    # 0.7 * 43.75 = 30.625: closed at bar 6's open 102, taker 12.5 * 102 * 0.001 = 1.275, half the
    # entry fee 1.25: pnl = 2 * 12.5 - 1.25 - 1.275 = 22.475.
    rows, state, _ = run(STAG_BARS, [1], **STAG)
    t = trade(rows[1])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "stagnation_exit"
    assert (t["exit_bar"], t["exit_price"], t["qty"]) == (6, 102.0, 12.5)
    assert t["pnl"] == pytest.approx(22.475)


def test_stagnation_arms_only_once_the_trailing_stop_is_active():
    # No trailing (multiplier 50 never tightens): peak 75 at bar 2, then the close falls to 100.5
    # (12.5 < 0.7 * 75) and the position stays open: the stagnation exit is not armed.
    bars = [FLAT, FLAT, (100, 103, 99.5, 103), (102, 102, 100.2, 100.5), FLAT]
    rows, state, _ = run(bars, [1], stagnation_atr_threshold=1.0)
    assert len(rows) == 0 and state[core.S_DIR] == 1.0 and state[core.S_STAG_ARMED] == 0.0


@pytest.mark.parametrize("bar", [(100, 100.5, 97, 99), (90, 91, 89, 90)])
def test_liquidation_loses_the_whole_position_margin(bar):
    # Leverage 50, maintenance 0.5%: liquidation at 100 * (1 - 0.02 + 0.005) = 98.5 (nearer than the
    # stop 96); taken over at the bankruptcy price 100 * (1 - 1/50) = 98, no fee, also when the open
    # gapped below it (90): the wallet loses the margin 25 * 100 / 50 = 50 plus the entry fee 2.5.
    rows, _, equity = run([FLAT, FLAT, bar], [1], leverage=50, maintenance_margin_rate=0.005)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "liquidation"
    assert t["exit_price"] == pytest.approx(98.0)
    assert t["fees"] == pytest.approx(2.5)
    assert t["pnl"] == pytest.approx(-52.5)
    assert equity[-1] == pytest.approx(10_000 - 52.5)


@pytest.mark.parametrize(("open_", "reason", "pnl"), [
    # Leverage 20: liquidation at 100 * (1 - 0.05 + 0.005) = 95.5, bankruptcy 95, stop 96 nearer.
    # An open at 95.2 has crossed both: liquidated at 95: pnl = -5 * 25 - 2.5 = -127.5.
    (95.2, "liquidation", -127.5),
    # An open at 95.8 crossed only the stop: stop at the open, fee 25 * 95.8 * 0.001 = 2.395;
    # pnl = -4.2 * 25 - 2.5 - 2.395 = -109.895.
    (95.8, "stop_loss", -109.895),
])
def test_an_open_beyond_the_liquidation_price_liquidates(open_, reason, pnl):
    rows, _, _ = run([FLAT, FLAT, (open_, open_, 94, 95)], [1], leverage=20, maintenance_margin_rate=0.005)
    assert core.EXIT_REASONS[int(rows[0][9])] == reason
    assert rows[0][8] == pytest.approx(pnl)


def test_a_profit_lock_exit_is_labelled_profit_lock_stop():
    # Lock at +2% (102) to +1%: bar 2 closes at 103, the stop goes to 101; bar 3 dips to 100.5:
    # exit at 101, fee 25 * 101 * 0.001 = 2.525; pnl = 1 * 25 - 2.5 - 2.525 = 19.975.
    bars = [FLAT, FLAT, (100, 103, 99.5, 103), (102, 102, 100.5, 101)]
    rows, state, _ = run(bars, [1], profit_lock_trigger_pct=0.02, profit_lock_target_pct=0.01,
                         cooldown_period_candles=3)
    t = trade(rows[0])
    assert core.EXIT_REASONS[int(t["exit_reason"])] == "profit_lock_stop"
    assert t["exit_price"] == pytest.approx(101.0)
    assert t["pnl"] == pytest.approx(19.975)
    assert state[core.S_COOLDOWN_UNTIL] == 3 + 3  # a locked-profit exit starts the cooldown, as before


def test_exit_reason_codes_are_stable():
    assert core.EXIT_REASONS[:10] == ("stop_loss", "breakeven_stop", "trailing_stop", "take_profit",
                                      "partial_take_profit", "signal_exit", "stagnation_exit", "time_exit",
                                      "liquidation", "end_of_data")
    assert core.EXIT_REASONS[core.R_PROFIT_LOCK] == "profit_lock_stop"


def test_funding_times_inside_a_data_gap_are_each_charged_after_it():
    # A short of 25 at 100 entered at 01:00; the data jumps from 02:00 to 09:00 the next day (33 h):
    # the gap holds the funding times 08:00, 16:00, 00:00 and 08:00, each charged at the first bar
    # after the gap (its open 100) at its own rate: 25 * 100 * rate * (-1) =
    # -0.25 - 0.5 + 0.75 - 1.0 = -1.0 (received). End of data at 100: fees 2.5 + 2.5;
    # pnl = 0 - 5 + 1.0 = -4.0. (The 00:00 event before the entry is not charged.)
    ts = T0 + np.array([0, 1, 2, 33, 34, 35], dtype=np.int64) * HOUR
    events = [(T0 + h * HOUR, r) for h, r in ((0, 0.001), (8, 0.0001), (16, 0.0002), (24, -0.0003), (32, 0.0004))]
    rows, _, equity = run([FLAT] * 6, [-1], ts=ts, funding=events, end_close=True)
    t = trade(rows[0])
    assert t["funding"] == pytest.approx(-1.0)
    assert t["pnl"] == pytest.approx(-4.0)
    assert equity[-1] == pytest.approx(10_000 - 4.0)


def test_funding_on_12h_bars_charges_each_event_once_at_its_own_rate():
    # 12h bars from 00:00; a long of 25 at 100 entered at the 12:00 open (after the 00:00 and 08:00
    # events: not charged). Charged at the next opens: 16:00 and 00:00 at the 00:00 open, 08:00 at
    # 12:00, 16:00 and 00:00 at 00:00: 2500 * (0.0001 + 0.0002 - 0.0005 + 0.0003 + 0.0004) = 1.25.
    # (Before the fix one rate per bar was charged 2-3 times: 43.25.) The 08:00 event inside the
    # last bar has no bar after it and is not charged. pnl = -5 - 1.25 = -6.25.
    ts = T0 + np.arange(5, dtype=np.int64) * 12 * HOUR
    events = [(T0 + h * HOUR, r) for h, r in ((0, 0.001), (8, 0.002), (16, 0.0001), (24, 0.0002), (32, -0.0005),
                                               (40, 0.0003), (48, 0.0004), (56, 0.009))]
    rows, _, _ = run([FLAT] * 5, [1], ts=ts, funding=events, end_close=True, bar_ms=12 * HOUR)
    t = trade(rows[0])
    assert t["funding"] == pytest.approx(1.25)
    assert t["pnl"] == pytest.approx(-6.25)


def test_funding_schedule_fills_the_8h_grid_where_the_history_has_no_record():
    ts = T0 + np.arange(0, 40, dtype=np.int64) * HOUR
    times, rates = core.funding_schedule(ts, HOUR, np.array([T0 + 16 * HOUR, T0 + 20 * HOUR]),
                                         np.array([0.001, 0.002]))
    # grid before the history (00:00, 08:00), the history itself (16:00, 20:00: a 4h interval),
    # grid after it (24:00, 32:00); ts ends at 39:00.
    assert ((times - T0) // HOUR).tolist() == [0, 8, 16, 20, 24, 32]
    assert np.isnan(rates[[0, 1, 4, 5]]).all() and rates[2:4].tolist() == [0.001, 0.002]


def test_an_entry_whose_stop_or_target_rounds_onto_it_is_refused_and_counted():
    # Tick 1.0: ATR 2 * stop multiplier 2 = 4 is fine, but the first partial level at 0.4 ATR = 0.8
    # would round onto the entry: no entry, one refusal recorded at bar 0 with that distance.
    rows, state, _ = run([FLAT, FLAT, FLAT], [1], tick_size=1.0, partial_take_profit=1, n_partial_levels=1,
                         partial_level_1=0.4)
    assert state[core.S_DIR] == 0.0 and len(rows) == 0
    assert state[core.S_TICK_REFUSALS] == 1 and state[core.S_TICK_REFUSAL_BAR] == 0
    assert state[core.S_TICK_REFUSAL_DISTANCE] == pytest.approx(0.8)
    # A coin at 1e-6 on a 0.01 tick: every stop rounds to zero.
    tiny = (1e-6, 1.005e-6, 0.995e-6, 1e-6)
    _, state, _ = run([tiny] * 3, [1], atr=2e-8, min_notional=0.0, qty_step=1.0, min_qty=1.0)
    assert state[core.S_DIR] == 0.0 and state[core.S_TICK_REFUSALS] >= 1


def test_a_short_target_below_zero_is_not_placed():
    # Short at 100 with ATR 20 and TP 10 ATR: 100 - 200 < 0, no such order exists: TP off (0).
    _, state, _ = run([FLAT, FLAT], [-1], atr=20.0, atr_stop_multiplier=0.1, tp_atr_multiplier=10.0)
    assert state[core.S_DIR] == -1.0 and state[core.S_TP] == 0.0
