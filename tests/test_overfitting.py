"""DSR and PBO against the papers' worked examples, hand-computed cases and duplicated trials."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

import overfitting


def test_deflated_sharpe_matches_the_papers_worked_example():
    # Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: N = 100 trials,
    # variance of their annualised Sharpes 1/2, the best annualised Sharpe 2.5, T = 1250 daily
    # returns (250 a year), skewness -3, kurtosis 10. Per day: V = 0.5 / 250 = 0.002, SR = 2.5 / sqrt(250).
    # SR0 = sqrt(0.002) * (0.4228 * Phi^-1(0.99) + 0.5772 * Phi^-1(1 - 1 / (100 e))) = 0.1132 (the paper's);
    # DSR = Phi((0.1581 - 0.1132) sqrt(1249) / sqrt(1 + 3 * 0.1581 + 9 / 4 * 0.1581^2)) = 0.9004 (the paper's).
    sr0 = overfitting.expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = overfitting.deflated_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_deflated_sharpe_of_a_series_by_hand():
    # Returns 2%, 0%, 2%, 0%: mean 0.01, sample sd sqrt(4e-4 / 3) = 0.011547, SR = 0.8660;
    # a two-point series has skew 0 and kurtosis 1, so the denominator is 1.
    returns = np.array([0.02, 0.0, 0.02, 0.0])
    one = overfitting.deflated_sharpe(returns, 1, 0.0)
    # One trial: SR0 = 0 and DSR = Phi(0.8660 * sqrt(3)) = Phi(1.5) = 0.93319 (the probabilistic Sharpe ratio).
    assert one["sharpe"] == pytest.approx(0.8660254)
    assert one["dsr"] == pytest.approx(0.9331928, abs=1e-6)
    # Two trials whose Sharpes have variance 0.02: SR0 = sqrt(0.02) * (0.4228 * Phi^-1(0.5) + 0.5772 *
    # Phi^-1(1 - 1/(2e))) = 0.14142 * 0.5772 * 0.90045 = 0.07350; DSR = Phi((0.8660 - 0.0735) * sqrt(3)).
    two = overfitting.deflated_sharpe(returns, 2, 0.02)
    sr0 = math.sqrt(0.02) * 0.5772156649 * norm.ppf(1 - 1 / (2 * math.e))
    assert two["sharpe0"] == pytest.approx(sr0) and sr0 == pytest.approx(0.0735, abs=1e-4)
    assert two["dsr"] == pytest.approx(norm.cdf((0.8660254 - sr0) * math.sqrt(3)))
    # More trials tried, same returns: a higher bar and a lower DSR.
    assert overfitting.deflated_sharpe(returns, 1000, 0.02)["dsr"] < two["dsr"]


def test_pbo_by_hand():
    good, bad = [0.02, 0.01], [-0.01, 0.0]
    # A wins the first half, B the second: whichever half is in-sample, its winner is the
    # out-of-sample loser (rank 1 of 2, w = 1/3, logit < 0): PBO = 1 over the 2 combinations.
    a = np.array(good + bad)
    b = np.array(bad + good)
    result = overfitting.probability_of_backtest_overfitting(np.column_stack([a, b]), blocks=2)
    assert (result["pbo"], result["combinations"], result["strategies"]) == (1.0, 2, 2)
    # A better than B in every block: the in-sample best is the out-of-sample best: PBO = 0.
    steady = np.column_stack([np.tile([0.02, 0.01], 4), np.tile([0.02, 0.0], 4)])
    result = overfitting.probability_of_backtest_overfitting(steady, blocks=4)
    assert result["pbo"] == 0.0 and result["combinations"] == 6


def test_pbo_ranks_ties_by_average():
    # Two blocks of two days, four strategies (per-block Sharpe = mean / sample sd):
    #   A: block 1 [3%, 1%] -> 1.414, block 2 [1%, 3%] -> 1.414
    #   B: block 1 [0%, 1%] -> 0.707, block 2 [1%, 3%] -> 1.414
    #   C: block 1 [1%, 0%] -> 0.707, block 2 [1%, 3%] -> 1.414
    #   D: block 1 [0%, 1%] -> 0.707, block 2 [0%, 0.1%] -> 0.707
    # Block 1 in-sample: A wins; out of sample A, B, C tie at 1.414 above D: average rank
    #   1 + (3 + 1) / 2 = 3 of 4, w = 3/5, logit > 0: not overfit (a "lowest rank" tie rule would say 2, overfit).
    # Block 2 in-sample: A, B, C tie; out of sample A ranks 4 (logit > 0), B and C tie with D at 0.707:
    #   rank (3 + 1) / 2 = 2, w = 2/5, logit < 0: overfit for 2 of the 3 equally likely winners.
    # PBO = (0 + 2/3) / 2 = 1/3.
    a = [0.03, 0.01, 0.01, 0.03]
    b = [0.0, 0.01, 0.01, 0.03]
    c = [0.01, 0.0, 0.01, 0.03]
    d = [0.0, 0.01, 0.0, 0.001]
    result = overfitting.probability_of_backtest_overfitting(np.column_stack([a, b, c, d]), blocks=2)
    assert result["strategies"] == 4 and result["combinations"] == 2
    assert result["pbo"] == pytest.approx(1 / 3)


def test_ten_copies_of_one_strategy_are_one_strategy():
    rng = np.random.default_rng(7)
    one = rng.normal(0.001, 0.01, 640)
    copies = np.column_stack([one] * 10)
    result = overfitting.probability_of_backtest_overfitting(copies, blocks=16)
    assert result["strategies"] == 1 and result["duplicates_dropped"] == 9
    assert math.isnan(result["pbo"])  # one strategy: nothing was selected, nothing to overfit (never 1.0)
    # Copies next to real alternatives count once: the same PBO as without them.
    others = rng.normal(0.0, 0.01, (640, 20))
    alone = overfitting.probability_of_backtest_overfitting(np.column_stack([one, others]), blocks=8)
    crowded = overfitting.probability_of_backtest_overfitting(np.column_stack([copies, others]), blocks=8)
    assert crowded["pbo"] == alone["pbo"] and crowded["strategies"] == alone["strategies"] == 21


def test_pbo_of_skill_less_and_of_skilled_strategies():
    # The paper's setting: N = 100 strategies of T = 1000 iid normal returns with no skill. The in-sample
    # best is a random strategy out of sample, so its rank is uniform and PBO is about 1/2.
    rng = np.random.default_rng(11)
    noise = rng.normal(0.0, 0.01, (1000, 100))
    skill_less = overfitting.probability_of_backtest_overfitting(noise, blocks=16)
    assert skill_less["combinations"] == 12870
    assert 0.3 < skill_less["pbo"] < 0.7
    # One strategy with a real edge (daily Sharpe 0.2, about 3.8 a year) is the in-sample best in
    # nearly every split and stays above the median out of sample: PBO near 0.
    noise[:, 0] += 0.002
    skilled = overfitting.probability_of_backtest_overfitting(noise, blocks=16)
    assert skilled["pbo"] < 0.05


def test_search_statistics_use_the_chosen_trial_and_every_distinct_one():
    rng = np.random.default_rng(3)
    matrix = rng.normal(0.0, 0.01, (400, 30))
    matrix[:, 5] += 0.003
    stats = overfitting.search_statistics(matrix, list(range(100, 130)), chosen_number=105)
    dsr = stats["deflated_sharpe"]
    assert dsr["n_trials"] == 30
    column = matrix[:, 5]
    assert dsr["sharpe"] == pytest.approx(column.mean() / column.std(ddof=1))
    sharpes = matrix.mean(axis=0) / matrix.std(axis=0, ddof=1)
    assert dsr["sharpe_variance"] == pytest.approx(np.var(sharpes, ddof=1))
    assert stats["pbo"]["strategies"] == 30
    assert overfitting.search_statistics(matrix, list(range(30)), chosen_number=99) == {}
