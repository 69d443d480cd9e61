"""`python run_live.py --check` against bybit_sim: every row passes on a sim that behaves as assumed, and the
matching row fails, naming the problem, when the sim is told to behave otherwise."""

from __future__ import annotations

import pytest

import run_live
from bybit_sim import Behaviour, SimExchange
from data_fetcher import load_sample
from live_helpers import HISTORY, params_file

ROWS = ("API key permissions", "IP binding and expiry", "clock skew", "instrument", "wallet and entry margin",
        "position mode and leverage", "margin mode", "kline page", "execution/list first window", "public stream",
        "private stream")


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:HISTORY + 50]


@pytest.fixture
def check(candles, tmp_path, monkeypatch, capsys):
    """Run --check (one side) against a sim made with ``sim_kwargs``; (exit code, {row: (result, detail)}, output)."""
    def run(side="long", **sim_kwargs):
        sim_kwargs.setdefault("balance", 20_000.0)
        with SimExchange(candles, "BTCUSDT", "1h", history_bars=HISTORY, **sim_kwargs) as sim:
            for name, value in (("BYBIT_REST_URL", sim.rest_url), ("BYBIT_WS_URL", sim.ws_url),
                                ("BYBIT_API_KEY", sim.api_key), ("BYBIT_API_SECRET", sim.api_secret),
                                ("BYBIT_ENV", "testnet")):
                monkeypatch.setenv(name, value)
            code = run_live.main(["--check", "--side", side, "--params", str(params_file(tmp_path, side.upper()))])
            requests = sim.stats()["requests"]
        printed = capsys.readouterr().out
        assert "order/create" not in requests and "position/trading-stop" not in requests  # nothing placed
        rows = {}
        for line in printed.splitlines():
            for name in ROWS:
                if line.startswith(name + "  "):
                    result, _, detail = line[len(name):].strip().partition(" ")
                    rows[name] = (result, detail.strip())
        assert set(rows) == set(ROWS), printed
        return code, rows, printed
    return run


def test_every_row_passes_against_the_sim(check):
    code, rows, printed = check(api_ips=["203.0.113.7"])
    assert code == 0, printed
    assert all(result == "PASS" for result, _ in rows.values()), printed
    assert "no expiry (expiredAt 1970-01-01)" in rows["IP binding and expiry"][1]  # an IP-bound key never expires
    assert "newest bars" in rows["kline page"][1]
    assert rows["margin mode"][1].startswith("ISOLATED_MARGIN: each position risks its own margin")
    assert "11 of 11 checks passed" in printed


def test_a_kline_page_from_the_other_end_fails_its_row(check):
    code, rows, printed = check(behaviour=Behaviour(kline_page="start"))
    assert code == 1
    assert rows["kline page"][0] == "FAIL" and "oldest bars of the range" in rows["kline page"][1]
    assert [name for name, (result, _) in rows.items() if result == "FAIL"] == ["kline page"]


def test_a_key_without_order_permission_fails_its_row(check):
    code, rows, printed = check(api_permissions={"ContractTrade": ["Position"]})
    assert code == 1
    assert rows["API key permissions"] == ("FAIL", "the key lacks ContractTrade Order (has: Position)")
    assert "FAILED: API key permissions" in printed


def test_too_little_money_for_an_entry_fails_the_margin_row(check):
    code, rows, _ = check(balance=5.0)
    assert code == 1 and rows["wallet and entry margin"][0] == "FAIL"
    assert "rounds below the minimum" in rows["wallet and entry margin"][1]


def test_an_unbound_key_warns_but_passes(check):
    code, rows, _ = check()
    assert code == 0 and rows["IP binding and expiry"][0] == "WARN"
    assert "not bound to an IP" in rows["IP binding and expiry"][1]


@pytest.mark.parametrize("mode", ["REGULAR_MARGIN", "PORTFOLIO_MARGIN"])
def test_a_margin_mode_other_than_isolated_warns_but_passes(check, mode):
    """The backtest liquidates a position at its isolated-margin price; across the wallet it is liquidated later and
    can lose more. Read with GET account/info only: the mode is the user's to switch."""
    code, rows, printed = check(api_ips=["203.0.113.7"], margin_mode=mode)
    assert code == 0, printed
    result, detail = rows["margin mode"]
    assert result == "WARN" and detail.startswith(f"{mode} (") and "switch the account to ISOLATED_MARGIN" in detail
    assert [name for name, (result, _) in rows.items() if result != "PASS"] == ["margin mode"]
