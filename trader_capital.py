"""The live risk base: the exchange wallet's money, capped, fed into the sides' core states.

In the backtest each side starts from ``config.CAPITAL`` and its wallet moves only by its own fills;
``core.decide`` sizes an entry from the state's risk base (its high-water mark), scaled by the drawdown
governor (the wallet against that mark) and capped by the margin the wallet can carry. Live, the money
is the exchange's, so at every bar close, before the core decides, the sides' books are brought to what
the exchange holds, with no core rule re-implemented here:

* The strategy's capital is the UNIFIED account's USDT equity less its unrealised PnL (the core marks
  its own positions at each close), capped by ``--max-capital`` (config.MAX_CAPITAL).
* A new state starts from the capital split equally between the sides it runs.
* Each close, every side's wallet, high-water mark and risk base are multiplied by one factor, capital
  / (the sides' wallets summed). The sides keep their shares (each side's share moves with its own
  trades, as each side's wallet does in the backtest), the governor keeps the drawdown its own trades
  made (a ratio the factor does not change), and the sizes follow the exchange's money: a deposit, a
  withdrawal, losses elsewhere on the account, or a wallet smaller than config.CAPITAL.
* A paper replay funds the sim with CAPITAL per side: the books then sum to the exchange's figure
  (to its rounding, TOLERANCE), the factor is not applied, and every size equals the backtest's.
"""

from __future__ import annotations

import numpy as np

import core
from exchange import Wallet

TOLERANCE = 1e-6  # a difference below this share of the capital is rounding (Bybit's numbers are strings)


def strategy_capital(wallet: Wallet, max_capital: float | None) -> float:
    """What the strategy trades: the wallet's equity less its unrealised PnL, at most ``max_capital``."""
    return wallet.realised if max_capital is None else min(wallet.realised, max_capital)


def new_states(capital: float, sides: int) -> list[np.ndarray]:
    """Flat states for ``sides`` sides sharing ``capital`` equally."""
    return [core.new_state(max(capital, 0.0) / sides) for _ in range(sides)]


def books(states: list[np.ndarray]) -> float:
    """The sides' wallets summed: the money the states account for."""
    return float(sum(s[core.S_WALLET] for s in states))


def within_rounding(states: list[np.ndarray], capital: float) -> bool:
    """True when the states already account for ``capital``, to the exchange's rounding."""
    return abs(capital - books(states)) <= TOLERANCE * max(abs(capital), 1.0)


def rescale(states: list[np.ndarray], capital: float) -> float:
    """Bring the sides' wallets to sum to ``capital``: wallet, high-water mark and risk base times one factor,
    which is returned. Books at or below zero (or no capital) restart from an equal split."""
    total = books(states)
    if total <= 0.0 or capital <= 0.0:
        share = max(capital, 0.0) / len(states)
        for state in states:
            state[core.S_WALLET] = state[core.S_HWM] = state[core.S_RISK_BASE] = share
        return 0.0
    factor = capital / total
    for state in states:
        for slot in (core.S_WALLET, core.S_HWM, core.S_RISK_BASE):
            state[slot] *= factor
    return factor
