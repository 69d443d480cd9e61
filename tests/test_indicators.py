"""Indicators against the independent `ta` library on real candles, and the cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ta

import indicators as ind

PERIODS = (7, 14, 23)


def assert_matches(ours, reference, period):
    """Equal within 1e-9 relative wherever both are defined after 3 x period bars."""
    ours = np.asarray(ours, dtype=float)[3 * period:]
    reference = np.asarray(reference, dtype=float)[3 * period:]
    both = ~np.isnan(ours) & ~np.isnan(reference)
    assert both.sum() > 3000
    np.testing.assert_allclose(ours[both], reference[both], rtol=1e-9, atol=0)


@pytest.mark.parametrize("period", PERIODS)
def test_close_indicators_match_ta(btc_raw, period):
    close = btc_raw["close"]
    assert_matches(ind.ema(close, period), ta.trend.EMAIndicator(close, period).ema_indicator(), period)
    assert_matches(ind.sma(close, period), ta.trend.SMAIndicator(close, period).sma_indicator(), period)
    assert_matches(ind.rsi(close, period), ta.momentum.RSIIndicator(close, period).rsi(), period)
    bands = ta.volatility.BollingerBands(close, period, 2.5)
    upper, middle, lower = ind.bollinger(close, period, 2.5)
    assert_matches(upper, bands.bollinger_hband(), period)
    assert_matches(middle, bands.bollinger_mavg(), period)
    assert_matches(lower, bands.bollinger_lband(), period)


@pytest.mark.parametrize("period", PERIODS)
def test_range_indicators_match_ta(btc_raw, period):
    high, low, close = btc_raw["high"], btc_raw["low"], btc_raw["close"]
    assert_matches(ind.atr(high, low, close, period),
                   ta.volatility.AverageTrueRange(high, low, close, period).average_true_range(), period)
    assert_matches(ind.adx(high, low, close, period), ta.trend.ADXIndicator(high, low, close, period).adx(), period)


def test_undefined_values_are_nan_not_zero(btc_raw):
    high, low, close = btc_raw["high"], btc_raw["low"], btc_raw["close"]
    assert np.isnan(ind.ema(close, 10)[:9]).all() and not np.isnan(ind.ema(close, 10)[9])
    assert np.isnan(ind.atr(high, low, close, 10)[:9]).all() and not np.isnan(ind.atr(high, low, close, 10)[9])
    adx = ind.adx(high, low, close, 10)
    assert np.isnan(adx[:19]).all() and not np.isnan(adx[19])


def test_hand_computed_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # EMA span 3: alpha 0.5; 1, 1.5, 2.25, 3.125, defined from index 2.
    np.testing.assert_allclose(ind.ema(x, 3), [np.nan, np.nan, 2.25, 3.125])
    # RSI with only gains is 100.
    assert ind.rsi(x, 2)[-1] == 100.0
    # 1-wide bars stepping up by 1: true ranges 1, 1.5, 1.5, 1.5 (the high 1.5 above the prior close);
    # ATR(2) = mean(1, 1.5) = 1.25, then (1.25 + 1.5) / 2 = 1.375, then 1.4375.
    np.testing.assert_allclose(ind.atr(x + 0.5, x - 0.5, x, 2)[1:], [1.25, 1.375, 1.4375])


def test_short_input_is_all_nan():
    x = np.array([1.0, 2.0, 3.0])
    assert np.isnan(ind.ema(x, 5)).all()
    assert np.isnan(ind.atr(x, x, x, 5)).all()
    assert np.isnan(ind.adx(x, x, x, 2)).all()
    assert ind.ema(np.array([]), 3).size == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_period_is_named(bad):
    with pytest.raises(ValueError, match="period"):
        ind.ema(np.ones(5), bad)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        ind.atr(np.ones(5), np.ones(4), np.ones(5), 3)


def test_cache_computes_each_indicator_once(btc_raw):
    cache = ind.IndicatorCache(btc_raw["high"], btc_raw["low"], btc_raw["close"])
    first = cache.get("ema", 20)
    assert cache.get("ema", 20) is first
    assert cache.get("ema", 21) is not first
    threads = [threading.Thread(target=cache.get, args=("atr", 14)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    upper, _, _ = cache.get("bollinger", 20, 2.0)
    assert cache.get("bollinger", 20, 2.0)[0] is upper
    assert cache.computations <= 3 + 3  # ema 20, ema 21, bollinger, and atr at most once per racing thread
    assert len({id(cache.get("atr", 14)) for _ in range(3)}) == 1
    with pytest.raises(ValueError, match="accepted: adx, atr, bollinger"):
        cache.get("macd", 12)
