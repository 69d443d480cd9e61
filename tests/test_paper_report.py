"""The end of a paper run: the counts of its log's rejected orders, errors and warnings, the stop moves the
exchange refuses because the next open already passed them (documented, not an error), and which problems
touched a compared trade. Hand-made logs and states; the full replay is in test_paper_adversarial.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

import core
import paper_report
from paper_report import BarTags, Problem, explain, read_problems, summary_lines, touching_lines

H = 3_600_000
T0 = 1_580_338_800_000  # 2020-01-29T23:00Z, a bar open
REFUSAL = "StopLoss:7.8345 set for Buy position should lower base_price:7.7728??LastPrice"


def write_logs(out, events, lines):
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out / "logs" / "trader.log").write_text("".join(f"2026-12-02 01:20:05,434 {line}\n" for line in lines))


def test_counts_come_from_both_logs_and_a_rejection_counts_once(tmp_path):
    write_logs(tmp_path, [
        {"event": "entry", "side": "long", "bar_ts": T0 - 5 * H},
        {"event": "order_rejected", "side": "long", "bar_ts": T0, "action": "stop_moved", "ret_code": 10001,
         "ret_msg": REFUSAL},
        {"event": "order_rejected", "side": "short", "bar_ts": T0 + H, "action": "add", "ret_code": 110007,
         "ret_msg": "Available balance is insufficient"}],
        ["INFO bar 2020-01-29T18:00Z: long: entry 0.5 at 7.1",
         f"ERROR bar 2020-01-29T23:00Z: long stop_moved rejected: {REFUSAL} (retCode 10001)",  # the event's own line
         "ERROR bar 2020-01-30T00:00Z: short add rejected: Available balance is insufficient (retCode 110007)",
         "ERROR bar 2020-01-30T02:00Z: Bybit did not answer market/kline after 5 attempts",
         "WARNING long: entry decided on the close of 2020-01-29 not sent: a fill of this side is not booked yet"])
    problems = read_problems(tmp_path)
    assert [(p.kind, p.side, p.bar_ts) for p in problems] == [
        ("rejected order", "long", T0), ("rejected order", "short", T0 + H), ("error", None, T0 + 3 * H),
        ("warning", "long", None)]
    assert problems[0].action == "stop_moved" and "retCode 10001" in problems[0].text
    lines = summary_lines(problems)
    assert lines[0] == ("paper log (logs/events.jsonl, logs/trader.log): 2 rejected order(s), 1 error(s), "
                        "1 warning(s)")
    assert "  rejected orders, not explained (look at these):" in lines  # nothing explained them (no state given)
    assert summary_lines([]) == ["paper log (logs/events.jsonl, logs/trader.log): 0 rejected order(s), 0 error(s), "
                                 "0 warning(s)"]


def test_the_traders_stop_refusals_are_read_from_its_own_lines(tmp_path):
    """trader._set_stop's two outcomes of a refused stop move: the market had passed it (an INFO line; the
    trader closes at that open) and any other refusal (a stop_rejected event and its ERROR line, counted once)."""
    write_logs(tmp_path, [
        {"event": "stop_rejected", "side": "short", "bar_ts": T0 + H, "action": "stop_moved", "ret_code": 10001,
         "ret_msg": "StopLoss set for Sell position should greater base_price", "rejections": 1}],
        ["INFO bar 2020-01-29T23:00Z: long stop_moved to 7.8345 not set: the market has passed it",
         "INFO bar 2020-01-29T23:00Z: long stop_moved to 7.8345 (breakeven)",
         "ERROR bar 2020-01-30T00:00Z: short stop_moved to 9.1 rejected (1 in a row): StopLoss set for Sell "
         "position should greater base_price (retCode 10001); the exchange holds 9.5"])
    problems = read_problems(tmp_path)
    assert [(p.kind, p.side, p.bar_ts, p.action) for p in problems] == [
        ("rejected order", "short", T0 + H, "stop_moved"), ("rejected order", "long", T0, "stop_moved")]
    explain(problems, Store(7.8345, trade(T0 + H)), candles(7.7728), H)
    assert [bool(p.explained) for p in problems] == [False, True]
    assert summary_lines(problems)[0] == ("paper log (logs/events.jsonl, logs/trader.log): 2 rejected order(s), "
                                          "0 error(s), 0 warning(s)")


class Store:
    """The two reads explain() makes of a paper run's state.sqlite."""

    def __init__(self, stop, trades):
        self.stop, self.trades = stop, trades

    def state_before(self, side, bar_ts):
        state = np.zeros(len(core.STATE_NAMES))
        state[core.STATE_NAMES.index("dir")] = 1.0
        state[core.STATE_NAMES.index("stop")] = self.stop
        return (T0, state) if bar_ts > T0 else None

    def trade_rows(self):
        return self.trades


def candles(next_open):
    index = pd.DatetimeIndex(pd.to_datetime([T0, T0 + H], unit="ms", utc=True), name="time")
    return pd.DataFrame({"open": [7.90, next_open], "high": [7.95, 8.0], "low": [7.80, 7.7],
                         "close": [7.8346, 7.9], "volume": [1.0, 1.0]}, index=index)


def refused():
    return [Problem("rejected order", "long", T0, f"stop_moved refused: {REFUSAL} (retCode 10001)",
                    action="stop_moved")]


def trade(exit_ms):
    row = np.zeros(core.N_TRADE_COLS)
    row[:3] = (T0 - 3 * H, exit_ms, 1.0)
    return row[None, :]


def test_a_stop_move_the_next_open_had_passed_is_the_documented_refusal():
    """Stop moved at the close of T0 to 7.8345 (one tick inside the close 7.8346); the next open 7.7728 is below
    it (7.7728 - 7.8345 < 0 for a long): Bybit refuses the stop, the trader closes at that open (exit at T0 + 1 h)."""
    problems = refused()
    explain(problems, Store(7.8345, trade(T0 + H)), candles(7.7728), H)
    assert problems[0].explained == ("documented: the new stop 7.8345 was already passed by the next open 7.7728; "
                                     "closed at market at that open")
    lines = summary_lines(problems)
    assert lines[1].startswith("  1 of the rejected orders are the documented exchange behaviour: a stop move the "
                               "market had already passed") and "v5/position/trading-stop.mdx" in lines[1]
    assert not any("not explained" in line for line in lines)


def test_other_refusals_stay_unexplained():
    cases = [(7.8345, 7.9000, trade(T0 + H)),  # the next open 7.90 is above the stop: the refusal is not a gap's
             (7.8345, 7.7728, trade(T0 + 2 * H)),  # gapped, but the trader did not close at that open
             (7.8345, 7.7728, np.zeros((0, core.N_TRADE_COLS)))]  # no trade closed at all
    for stop, next_open, trades in cases:
        problems = refused()
        explain(problems, Store(stop, trades), candles(next_open), H)
        assert problems[0].explained == "", (stop, next_open, trades)
        assert "  rejected orders, not explained (look at these):" in summary_lines(problems)


def test_touching_a_compared_trade_needs_the_same_side_and_a_bar_inside_it():
    """A problem decided at the close of bar t acts at the open of t+1 (t + 1 h): it touches a trade with
    entry <= t + 1 h <= exit on its side; an unsided error touches any side's trade."""
    long_trade = np.array([[T0 - 3 * H, T0 + H, 1.0]])
    short_trade = np.array([[T0 + 5 * H, T0 + 9 * H, -1.0]])
    problems = [Problem("rejected order", "long", T0, "stop_moved refused", action="stop_moved",
                        explained="documented: ..."),
                Problem("error", None, T0 + 6 * H, "Bybit did not answer"),
                Problem("warning", "short", T0 + 20 * H, "after every trade"),
                Problem("warning", None, None, "before the first bar")]
    lines = touching_lines(problems, {"long": long_trade, "short": short_trade}, H)
    assert lines[0] == "paper log vs the compared trades: 2 touched a compared trade (1 of them the documented " \
                       "exchange behaviour)"
    assert lines[1] == ("  long trade 0 (entry 2020-01-29T20:00Z, exit 2020-01-30T00:00Z): rejected order at the "
                        "close of 2020-01-29T23:00Z: the documented refusal above")
    assert lines[2].startswith("  short trade 0 (entry 2020-01-30T04:00Z") and "Bybit did not answer" in lines[2]
    assert len(lines) == 3
    assert touching_lines(problems[2:], {"long": long_trade, "short": short_trade}, H) == [
        "paper log vs the compared trades: none of its rejected orders, errors or warnings touched one"]
    wrong_side = [Problem("rejected order", "short", T0, "x")]
    assert "none of" in touching_lines(wrong_side, {"long": long_trade}, H)[0]


def test_bar_tags_name_the_bar_in_events_and_log_lines(tmp_path):
    class Events:
        def __init__(self):
            self.seen = []

        def emit(self, event, side=None, **figures):
            self.seen.append((event, side, figures))

    class Trader:
        def __init__(self):
            self.events = Events()

        def on_closed_bar(self, bar, latest=True):
            self.events.emit("stop_moved", "long", new_stop=1.0)
            logging.getLogger("grtr.trader").error("long stop_moved rejected: x (retCode 10001)")

    logger = logging.getLogger("grtr")
    handler = logging.FileHandler(tmp_path / "trader.log")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        trader = Trader()
        trader.events.emit("start", None)
        tags = BarTags(trader)
        trader.on_closed_bar({"start": T0})
        tags.close()
        logging.getLogger("grtr.trader").error("after the replay")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert trader.events.seen == [("start", None, {}), ("stop_moved", "long", {"bar_ts": T0, "new_stop": 1.0})]
    assert (tmp_path / "trader.log").read_text().splitlines() == [
        "ERROR bar 2020-01-29T23:00Z: long stop_moved rejected: x (retCode 10001)", "ERROR after the replay"]
    assert paper_report.BAR_PREFIX.match("bar 2020-01-29T23:00Z: long x").groups() == ("2020-01-29T23:00Z", "long x")
