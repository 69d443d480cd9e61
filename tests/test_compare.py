"""``run_live.py --compare``: a paper trade equals the backtest's only when every field agrees, money included.

Hand-made trade tables, then the comparison itself over a paper ledger written from the backtest's own trades
(the full paper replays are in test_paper_adversarial.py and test_trader.py)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import backtester
import config
import core
import run_live
from data_fetcher import load_sample
from trader_store import Store

H = 3_600_000
T0 = 1_580_342_400_000  # 2020-01-30T00:00Z
TICK = 0.1
TP = core.EXIT_REASONS.index("take_profit")
TRAIL = core.EXIT_REASONS.index("trailing_stop")


def trade(**changes: float) -> np.ndarray:
    """A long of 0.5 entered at 100.0 (taker 0.055 %), out at 110.0 on its take-profit (maker 0.02 %), with
    0.005 of funding: fees 0.5 x 100 x 0.00055 + 0.5 x 110 x 0.0002 = 0.0275 + 0.011 = 0.0385,
    pnl 0.5 x (110 - 100) - 0.0385 - 0.005 = 4.9565."""
    row = dict(entry_ts=T0, exit_ts=T0 + 5 * H, side=1.0, qty=0.5, entry_price=100.0, exit_price=110.0, fees=0.0385,
               funding=0.005, pnl=4.9565, exit_reason=TP, entry_bar=10, exit_bar=15)
    row.update(changes)
    return np.array([row[name] for name in core.TRADE_COLUMNS], dtype=float)


def table(*rows: np.ndarray) -> np.ndarray:
    return np.vstack(rows)


SECOND = trade(entry_ts=T0 + 24 * H, exit_ts=T0 + 30 * H, exit_bar=40, entry_bar=34)


@pytest.mark.parametrize(("changes", "line"), [
    # the exit at the taker rate: 0.0275 + 0.5 x 110 x 0.00055 = 0.05775
    ({"fees": 0.05775}, "trade 1: fees 0.05775 vs backtest 0.0385;"),
    ({"funding": 0.01}, "trade 1: funding 0.01 vs backtest 0.005;"),  # a funding event booked twice
    ({"pnl": 4.9065}, "trade 1: pnl 4.9065 vs backtest 4.9565;"),     # 0.5 x one tick (0.1) less
    ({"exit_reason": TRAIL}, "trade 1: exit_reason trailing_stop vs backtest take_profit;"),
    # the first differing field is named: fees come before pnl and the exit reason
    ({"pnl": 4.9, "exit_reason": TRAIL, "fees": 0.04}, "trade 1: fees 0.04 vs backtest 0.0385;"),
])
def test_a_trade_that_differs_in_money_or_reason_only_is_reported(changes, line):
    expected = table(trade(), trade(entry_ts=T0 + 24 * H, exit_ts=T0 + 30 * H, entry_bar=34, exit_bar=40))
    paper = table(expected[0], trade(entry_ts=T0 + 24 * H, exit_ts=T0 + 30 * H, entry_bar=34, exit_bar=40,
                                     **changes))
    found = run_live.trade_differences(paper, expected, TICK)
    assert len(found) == 1 and found[0].startswith(line), found
    assert run_live.differing_field(paper[1], expected[1], TICK) == line.split()[2]


def test_figures_equal_within_float_rounding_are_equal():
    """The parity tests' largest gaps (2e-15 relative), a fee string's 8th decimal, a price inside a tick."""
    expected = table(trade(), SECOND)
    paper = table(trade(fees=0.0385 + 5e-9, pnl=4.9565 * (1 + 2e-15), funding=0.005 - 4e-16, exit_price=110.05),
                  SECOND)
    assert run_live.trade_differences(paper, expected, TICK) == []
    assert run_live.differing_field(trade(fees=0.0385 + 2e-6), trade(), TICK) == "fees"  # past a millionth of a USDT


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """A paper folder whose trades are the backtest's own (LONG's fixed params on 2,500 hourly BTC bars)."""
    candles = load_sample("BTCUSDT", "1h").iloc[:2500]
    cfg = run_live.SideConfig("long", {**config.fixed_params("LONG"), "symbol": "BTCUSDT"})
    data = backtester.MarketData(candles, "BTCUSDT", "1h")
    rows = backtester.simulate(data, cfg.params, start=300).rows
    rows = rows[rows[:, 9] != core.R_END]
    assert len(rows) >= 3
    return candles, cfg, rows


@pytest.mark.parametrize(("column", "value", "shown"), [
    (None, None, None),
    ("fees", "fees * 1.001", "fees"),
    ("funding", "funding + 0.01", "funding"),
    ("pnl", "pnl - 0.05", "pnl"),
    ("exit_reason", "'liquidation'", "exit_reason"),
])
def test_compare_names_the_first_differing_field_of_the_first_differing_trade(ledger, tmp_path, capsys, column,
                                                                              value, shown):
    candles, cfg, rows = ledger
    store = Store(tmp_path / "state.sqlite")
    with store.transaction():
        for row in rows:
            store.record_trade("BTCUSDT", row)
    store.close()
    if column:
        db = sqlite3.connect(tmp_path / "state.sqlite")
        db.execute(f"UPDATE trades SET {column} = {value} WHERE id IN (2, 3)")  # noqa: S608 - the test's own SQL
        db.commit()
        db.close()
    ok = run_live.compare_with_backtest(tmp_path, [cfg], candles, 300)
    printed = capsys.readouterr().out
    if column is None:
        assert ok and f"long: {len(rows)} paper trades, {len(rows)} backtest trades: EQUAL" in printed, printed
        return
    mine, theirs = Store(tmp_path / "state.sqlite").trade_rows()[1], rows[1]
    assert not ok and "DIFFERENT" in printed
    head = f"first difference (long), trade 1: {shown} {run_live.field_text(shown, mine)} vs backtest " \
           f"{run_live.field_text(shown, theirs)}"
    assert head in printed and f"  trade 1: {shown} " in printed and f"  trade 2: {shown} " in printed, printed
    assert "  trade 0:" not in printed
