"""The Bybit download through pybit against bybit_sim: pages, cache, resume, errors, retries."""

from __future__ import annotations

import pandas as pd
import pytest

import config
import data_fetcher
import trader_utils
from bybit_sim import Behaviour, FaultConfig, SimExchange
from data_fetcher import DataError, download_klines, fetch_instrument, load_funding, load_sample


@pytest.fixture(scope="module")
def candles():
    return load_sample("BTCUSDT", "1h").iloc[:3200]


@pytest.fixture
def session_for(monkeypatch):
    monkeypatch.setattr(trader_utils, "DEFAULT_RETRY", trader_utils.RetryPolicy(base_seconds=0.01))

    def make(sim):
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        return trader_utils.make_http(timeout=1.0, retry_delay=0)
    return make


def test_download_walks_pages_and_tops_up_incrementally(candles, session_for, tmp_path):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500) as sim:
        session = session_for(sim)
        frame = download_klines("BTCUSDT", "1h", days=400, session=session, cache_dir=tmp_path, progress=False)
        assert frame.equals(candles.iloc[:2500])  # 2,500 closed bars; the forming one is not cached
        assert sim.stats()["requests"]["market/kline"] == 4  # 3 pages of <= 1,000, and one that finds the start
        cached = pd.read_parquet(tmp_path / "BTCUSDT_1h.parquet")
        assert len(cached) == 2500 and cached.index.is_unique
        for _ in range(30):
            sim.advance()
        again = download_klines("BTCUSDT", "1h", days=400, session=session, cache_dir=tmp_path, progress=False)
        assert again.equals(candles.iloc[:2530])
        assert sim.stats()["requests"]["market/kline"] == 5  # only the 30 new bars were fetched


@pytest.mark.parametrize("page", ["end", "start"])
def test_the_download_is_complete_whichever_end_a_page_holds(candles, session_for, tmp_path, page):
    """docs: v5/market/kline.mdx does not say which 1,000 bars of a longer range a page holds: windows of at
    most 1,000 bars (end - start < 1,000 x 1 h) make the answer the same either way."""
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500, behaviour=Behaviour(kline_page=page)) as sim:
        session = session_for(sim)
        windows = []
        get_kline = session.get_kline

        def recorded(**kwargs):
            windows.append((kwargs["start"], kwargs["end"]))
            return get_kline(**kwargs)

        session.get_kline = recorded
        frame = download_klines("BTCUSDT", "1h", days=400, session=session, cache_dir=tmp_path, progress=False)
    assert frame.equals(candles.iloc[:2500])
    assert windows and all(end - start < 1000 * 3_600_000 for start, end in windows)


class Interrupted(Exception):
    pass


class FlakySession:
    """A real pybit session that dies (like a killed process) after ``pages`` kline pages."""

    def __init__(self, session, pages):
        self.session = session
        self.pages = pages

    def __getattr__(self, name):
        return getattr(self.session, name)

    def get_kline(self, **kwargs):
        if self.pages == 0:
            raise Interrupted
        self.pages -= 1
        return self.session.get_kline(**kwargs)


def test_interrupted_download_resumes_without_gaps_or_duplicates(candles, session_for, tmp_path):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500) as sim:
        session = session_for(sim)
        with pytest.raises(Interrupted):
            download_klines("BTCUSDT", "1h", days=400, session=FlakySession(session, 2), cache_dir=tmp_path,
                            progress=False)
        partial = pd.read_parquet(tmp_path / "BTCUSDT_1h.parquet")
        assert len(partial) == 2000
        resumed = download_klines("BTCUSDT", "1h", days=400, session=session, cache_dir=tmp_path, progress=False)
        assert resumed.equals(candles.iloc[:2500])
        assert data_fetcher.gap_report(resumed, "1h")["gaps"] == 0


def test_retries_through_faults(candles, session_for, tmp_path):
    faults = FaultConfig(rate=0.5, timeout_seconds=1.5)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500, faults=faults, seed=6) as sim:
        frame = download_klines("BTCUSDT", "1h", days=400, session=session_for(sim), cache_dir=tmp_path,
                                progress=False)
        assert frame.equals(candles.iloc[:2500])
        assert sum(sim.stats()["faults"].values()) >= 2  # seeded: these faults happen on every run


def test_unknown_symbol_carries_bybits_message(candles, session_for, tmp_path):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500) as sim:
        with pytest.raises(DataError, match="Symbol Invalid"):
            download_klines("NOPEUSDT", "1h", days=10, session=session_for(sim), cache_dir=tmp_path, progress=False)


def test_funding_and_instrument_are_cached(candles, session_for, tmp_path, monkeypatch):
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=2500) as sim:
        session = session_for(sim)
        start = int(candles.index[0].value // 10**6)
        end = int(candles.index[2499].value // 10**6)
        funding = load_funding("BTCUSDT", start, end, session=session, cache_dir=tmp_path)
        assert len(funding) == 2500 // 8 + 1 and (funding == config.FUNDING_RATE).all()
        assert (tmp_path / "BTCUSDT_funding.parquet").exists()
        spec = fetch_instrument("BTCUSDT", session=session, cache_dir=tmp_path)
        assert spec["qty_step"] == 0.001
        monkeypatch.setattr(config, "CACHE_DIR", tmp_path)
        (tmp_path / "instrument_BTCUSDT.json").write_text('{"qty_step": 0.005, "tick_size": 0.5}')
        assert config.instrument_for("BTCUSDT")["qty_step"] == 0.005
