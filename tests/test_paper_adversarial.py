"""Full paper replays (`run_live.py --paper --compare`) on generated adversarial candles: one side and hedge mode.

The real trader, pybit and bybit_sim over HTTP and WebSockets, on a path with every corner the
differential test draws: a tenfold trend, a crash, missing bars with a price jump, limit-up and
limit-down bars, a flat stretch, opens gapping past levels. Each replay must equal the backtest of
the same file trade for trade. The last test checks what --compare prints when they do not.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pandas as pd
import pytest

import config
import run_live
from adversarial_paths import path_frame
from data_fetcher import load_source
from telegram_outbox import event_alert

HISTORY = 300
# XRP-like prices 0.42 -> 10.9 -> back: the code before issue 14 gave "long: 45 paper trades, 45 backtest trades:
# DIFFERENT" here (two partial levels crossed by one open filled in the opposite order by the exchange)
SEGMENTS = [("walk", 330, 811), ("flat", 25, 812), ("trend_up", 260, 813), ("gap", 30, 814), ("limit_bars", 40, 815),
            ("open_gaps", 60, 816), ("crash", 160, 817), ("spikes", 60, 818), ("walk", 60, 819)]
QUICK = {"macro_ema_period": 60, "regime_filter_period": 20, "rsi_period": 14, "partial_take_profit": True,
         "position_scaling": True, "cooldown_period_candles": 2, "timeframe": "1h", "symbol": "XRPUSDT"}
SIDES = {
    "long": {**config.fixed_params("LONG"), **QUICK, "grid_upper_rsi": 80},
    "short": {**config.fixed_params("SHORT"), **QUICK, "adx_period": 0, "grid_lower_rsi": 20,
              "profit_lock_trigger_pct": 0.04, "profit_lock_target_pct": 0.02},
}


def jsonable(params):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """XRP-like prices from 0.5: up tenfold, down tenfold, with gaps and limit bars, as a CSV."""
    frame = path_frame(SEGMENTS, 0.5, config.INSTRUMENTS["XRPUSDT"]["tick_size"])
    path = tmp_path_factory.mktemp("adversarial") / "xrp.csv"
    frame.reset_index().assign(time=lambda d: d["time"].dt.as_unit("ms").astype("int64")).to_csv(path, index=False)
    return path


def paper(replay, out, side, params_path, capsys):
    argv = ["--paper", "--replay", str(replay), "--side", side, "--out", str(out), "--history-bars", str(HISTORY),
            "--compare"]
    if params_path:
        argv += ["--params", str(params_path)]
    code = run_live.main(argv)
    return code, capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("side", ["long", "short"])
def test_one_side_paper_equals_the_backtest_on_adversarial_candles(replay, tmp_path, side, capsys):
    params = tmp_path / f"{side}.json"
    params.write_text(json.dumps(jsonable(SIDES[side])))
    code, printed = paper(replay, tmp_path / "out", side, params, capsys)
    assert code == 0, printed
    assert f"{side}: " in printed and "EQUAL" in printed
    counts = {line.split(":")[0]: int(line.split()[1]) for line in printed.splitlines() if "paper trades" in line}
    assert counts[side] > 20, printed  # the comparison covers many trades
    summary = next(line for line in printed.splitlines() if line.startswith("paper log ("))
    assert "0 error(s), 0 warning(s)" in summary and "not explained" not in printed, printed
    if side == "long":  # opens gap past stops moved at the close: Bybit refuses them (10001), the trader closes at
        # that open as the backtest fills a gapped stop; reported as that, not as unexplained errors (issue 16)
        assert "rejected order(s)" in summary and not summary.endswith(": 0 rejected order(s), 0 error(s), 0 "
                                                                        "warning(s)")
        assert "of the rejected orders are the documented exchange behaviour" in printed
        assert re.search(r"paper log vs the compared trades: (\d+) touched a compared trade \(\1 of them the "
                         r"documented", printed), printed
    log = [json.loads(line) for line in (tmp_path / "out" / "logs" / "events.jsonl").read_text().splitlines()]
    assert all("bar_ts" in e for e in log if e["event"] in ("entry", "exit", "stop_moved", "order_rejected"))
    kinds = [e["event"] for e in log]
    assert kinds.count("partial_exit") > 3 and kinds.count("stop_moved") > 3
    if side == "short":  # a profit-lock exit is told as such: trades.csv, the exit event, its alert, the stop move
        trades = pd.read_csv(tmp_path / "out" / "trades.csv")
        assert "profit_lock_stop" in set(trades["exit_reason"]) and "breakeven_stop" not in set(trades["exit_reason"])
        exit_event = next(e for e in log if e["event"] == "exit" and e["reason"] == "profit_lock_stop")
        assert "Exit SHORT XRPUSDT</b>: profit_lock_stop" in event_alert(exit_event, []).text
        assert any(e["event"] == "stop_moved" and e["kind"] == "profit_lock" for e in log)


@pytest.mark.slow
def test_hedge_mode_paper_equals_the_backtest_on_adversarial_candles(replay, tmp_path, monkeypatch, capsys):
    for side, params in SIDES.items():
        (tmp_path / f"prod_config_{side}.py").write_text(f"PARAMS = {jsonable(params)!r}\n")
    monkeypatch.setattr(config, "BASE_DIR", tmp_path)
    code, printed = paper(replay, tmp_path / "out", "both", None, capsys)
    assert code == 0, printed
    assert printed.count("EQUAL") == 2, printed


@pytest.mark.slow
def test_compare_reports_the_first_difference_with_its_bar_and_both_states(replay, tmp_path, capsys):
    params = tmp_path / "long.json"
    params.write_text(json.dumps(jsonable(SIDES["long"])))
    out = tmp_path / "out"
    code, _ = paper(replay, out, "long", params, capsys)
    assert code == 0
    # A paper trade that went otherwise: its exit one tick-sized step later and at another price.
    db = sqlite3.connect(out / "state.sqlite")
    entry_ms, exit_ms = db.execute("SELECT entry_ms, exit_ms FROM trades WHERE id = 5").fetchone()
    db.execute("UPDATE trades SET exit_price = exit_price * 1.01 WHERE id = 5")
    db.commit()
    db.close()
    candles = load_source(str(replay), "XRPUSDT", "1h")
    cfg = run_live.SideConfig("long", config.load_params_file(params, base=config.fixed_params("LONG")))
    assert not run_live.compare_with_backtest(out, [cfg], candles, HISTORY)
    printed = capsys.readouterr().out
    assert "DIFFERENT" in printed and "first difference (long), trade 4:" in printed
    report = printed[printed.index("first difference"):]
    exit_iso = run_live._iso(exit_ms)
    assert f"bar {exit_iso}" in report and " open " in report and " close " in report
    assert "state decided at the close of" in report
    # only the stored exit price was changed: the two states the exit bar was traded from agree slot by slot
    assert "   * " not in report, report
    assert all(f" {slot} " in report for slot in ("stop", "qty", "tp", "levels_done", "wallet"))
    assert entry_ms < exit_ms
