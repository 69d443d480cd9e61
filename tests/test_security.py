"""Security checks: the API key's permissions (via bybit_sim's /v5/user/query-api), .env mode, redacted tracebacks."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pybit.exceptions import InvalidRequestError

import trader_utils
from bybit_sim import SimExchange
from exchange import Bybit
from trader_utils import KeyPermissionError, check_api_key, install_redacting_excepthook

HOUR = 3_600_000
T0 = 1_577_836_800_000
KEY, SECRET = "sec-test-key-7Hq2", "sec-test-secret-Zp91xK"
TRADE_ONLY = {"ContractTrade": ["Order", "Position"], "Wallet": ["AccountTransfer"], "Spot": [], "Options": [],
              "Derivatives": ["DerivativesTrade"], "Exchange": [], "NFT": []}


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    """40 flat hourly bars: enough for the simulator to serve; prices play no part here."""
    index = pd.DatetimeIndex(pd.to_datetime(T0 + np.arange(40) * HOUR, unit="ms", utc=True), name="time")
    return pd.DataFrame({"open": 100.0, "high": 100.5, "low": 99.5, "close": 100.0, "volume": 1.0}, index=index)


@pytest.fixture
def key_check(candles, monkeypatch):
    """Run check_api_key against a SimExchange configured with ``sim_kwargs``; returns (warnings, error)."""
    def run(env_file=None, **sim_kwargs):
        with SimExchange(candles, "BTCUSDT", "1h", history_bars=20, api_key=KEY, api_secret=SECRET,
                         **sim_kwargs) as sim:
            monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
            http = trader_utils.make_http(env="testnet", api_key=sim.api_key, api_secret=sim.api_secret)
            try:
                return check_api_key(Bybit(http).api_key_info(), env_file=env_file), None
            except KeyPermissionError as error:
                return None, error
    return run


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        assert KEY not in text and SECRET not in text


def test_withdrawal_permission_is_refused(key_check):
    permissions = {**TRADE_ONLY, "Wallet": ["AccountTransfer", "SubMemberTransfer", "Withdraw"]}
    warnings, error = key_check(api_permissions=permissions, api_ips=["203.0.113.7"])
    assert warnings is None
    assert "Wallet.Withdraw" in str(error) and "withdrawal" in str(error)
    assert_no_secrets(str(error))


def test_read_only_key_is_refused(key_check):
    warnings, error = key_check(api_permissions=TRADE_ONLY, api_ips=["203.0.113.7"], api_read_only=True)
    assert warnings is None
    assert "read-only" in str(error) and "cannot place orders" in str(error)
    assert_no_secrets(str(error))


def test_unrestricted_ips_warn(key_check):
    for ips in (["*"], []):
        warnings, error = key_check(api_permissions=TRADE_ONLY, api_ips=ips)
        assert error is None
        assert len(warnings) == 1 and "not restricted to IP" in warnings[0]
        assert_no_secrets(*warnings)


def test_simulator_default_key_is_tradeable_but_unbound(key_check):
    warnings, error = key_check()
    assert error is None and len(warnings) == 1 and "IP" in warnings[0]


def test_restricted_trade_key_has_no_warnings(key_check):
    warnings, error = key_check(api_permissions=TRADE_ONLY, api_ips=["203.0.113.7", "198.51.100.2"])
    assert error is None and warnings == []


def test_env_file_mode(key_check, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"BYBIT_API_KEY={KEY}\nBYBIT_API_SECRET={SECRET}\n")
    env_file.chmod(0o644)
    warnings, _ = key_check(env_file=env_file, api_permissions=TRADE_ONLY, api_ips=["203.0.113.7"])
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and "644" in warnings[0]
    assert_no_secrets(*warnings)
    env_file.chmod(0o600)
    warnings, _ = key_check(env_file=env_file, api_permissions=TRADE_ONLY, api_ips=["203.0.113.7"])
    assert warnings == []
    warnings, _ = key_check(env_file=tmp_path / "missing.env", api_permissions=TRADE_ONLY, api_ips=["203.0.113.7"])
    assert warnings == []


def _FixedKeyInfo(**result):  # noqa: N802 - reads as the key info it builds
    """A user/query-api result (docs: v5/user/apikey-info.mdx) with the given fields."""
    return {"apiKey": KEY, "readOnly": 0, "ips": ["203.0.113.7"], "permissions": TRADE_ONLY, **result}


def test_expiry_within_seven_days_warns():
    def stamp(days: float) -> str:
        return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

    soon = check_api_key(_FixedKeyInfo(expiredAt=stamp(3)), env_file=None)
    assert len(soon) == 1 and "expires" in soon[0]
    past = check_api_key(_FixedKeyInfo(expiredAt=stamp(-1)), env_file=None)
    assert len(past) == 1 and "expired" in past[0]
    assert check_api_key(_FixedKeyInfo(expiredAt=stamp(60)), env_file=None) == []
    assert check_api_key(_FixedKeyInfo(expiredAt=""), env_file=None) == []


def test_an_ip_bound_key_reporting_1970_does_not_expire():
    """docs: v5/user/apikey-info.mdx: expiredAt applies to keys without an IP bound; a bound key says 1970."""
    assert check_api_key(_FixedKeyInfo(expiredAt="1970-01-01T00:00:00Z"), env_file=None) == []
    assert trader_utils.key_expiry("1970-01-01T00:00:00Z") is None


def test_a_key_without_contract_order_or_position_permission_is_refused(key_check):
    warnings, error = key_check(api_permissions={"ContractTrade": ["Position"]}, api_ips=["203.0.113.7"])
    assert warnings is None and "lacks the ContractTrade permission Order" in str(error)


@pytest.fixture
def hooks(monkeypatch):
    """Secrets in the environment; the original excepthooks restored after the test."""
    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    install_redacting_excepthook()


def test_excepthook_redacts_secrets(hooks, capsys):
    try:
        raise RuntimeError(f"error sign! origin_string[1700000000000{KEY}5000category=linear] secret={SECRET}")
    except RuntimeError as error:
        sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error sign! origin_string[1700000000000***5000" in err
    assert "secret=***" in err
    assert_no_secrets(err)


def test_excepthook_redacts_pybit_10004_from_simulator(hooks, candles, monkeypatch, capsys):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=20, api_key=KEY, api_secret=SECRET) as sim:
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        http = trader_utils.make_http(env="testnet", api_key=KEY, api_secret="a-wrong-secret")
        with pytest.raises(InvalidRequestError) as caught:
            http.get_api_key_information()
    assert KEY in str(caught.value)  # what makes the hook necessary
    sys.excepthook(caught.type, caught.value, caught.tb)
    err = capsys.readouterr().err
    assert "error sign!" in err and "***" in err
    assert_no_secrets(err)


def test_thread_excepthook_redacts_secrets(hooks, capsys):
    def fail():
        raise ValueError(f"key {KEY} rejected")

    worker = threading.Thread(target=fail, name="ws-worker")
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert "Exception in thread ws-worker" in err and "key *** rejected" in err
    assert_no_secrets(err)
