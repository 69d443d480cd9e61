"""Parameter search with Optuna: the search space, the hierarchical-filter objective, the datasets
with their final hold-out, and the search itself on one or many worker processes.

* **Hold-out.** ``Datasets`` cuts the last ``HOLDOUT_FRACTION`` of each symbol's history off
  before anything else sees it: ``get`` hands out the bars before the cut only (indicators need
  only the past, so their values there are those of the full history), and only ``full`` (used
  once, for the final check of the chosen params) reaches the hold-out.
* **Speed.** Indicators are computed once per dataset; the sampler works on an in-memory
  *working study* of a bounded window of trials (the best ``window_best`` and the latest
  ``window_recent``), so its cost per trial stays flat; the last ``refine_share`` of a run tries
  neighbours of the leaders.
* **No trial run twice, none lost.** A proposal whose params were already tried (by this worker
  or any other on the study) is answered from the known result and never stored again. Each
  finished trial goes to ``study_store.TrialWriter``, which stores it within a bounded batch;
  SIGINT and SIGTERM stop the search after the current trial and store everything first.
* **Many workers.** ``--jobs N`` forks N worker processes on one storage; each derives its own
  sampler seed from the study seed and its worker id, pulls the trials of the others into its
  window, and reports each stored trial to the parent's progress bar.
* **Many symbols.** A ``DatasetGroup`` scores one params set on several symbols' ``Datasets``
  (each with its own hold-out cut off) and aggregates their scores (``AGGREGATES``: the worst by
  default). A trial whose stops round onto the entry at the instrument's tick scores as a constraint.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

import backtester
import config
import study_store
import workers

optuna.logging.set_verbosity(optuna.logging.WARNING)

SCORE_CONSTRAINT = -200.0
DAY_MS = 86_400_000


# ----------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------
def grid_to_space(grid: dict[str, Any], where: str = "grid", mode: str | None = None
                  ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """Optuna distributions from a grid of strategy ``mode``: (int, int) -> int range, (num, num) -> float
    range, a list -> categorical, a scalar -> fixed. Returns (distributions, fixed values)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, entry in grid.items():
        spec = config.check_grid_entry(name, entry, where, mode)
        if isinstance(entry, tuple):
            low, high = entry
            space[name] = IntDistribution(low, high) if spec.kind == "int" else FloatDistribution(float(low),
                                                                                                   float(high))
        elif isinstance(entry, list) and len(entry) > 1:
            space[name] = CategoricalDistribution(entry)
        else:
            fixed[name] = entry[0] if isinstance(entry, list) else entry
    return space, fixed


def check_constraints(params: dict[str, Any]) -> str | None:
    """Why a combination cannot make sense (checked before it is backtested), or None."""
    if params["aggressive_trail_atr_multiplier"] >= params["trail_atr_multiplier"]:
        return "aggressive trail is not tighter than the normal trail"
    tp = params["tp_atr_multiplier"]
    if tp > 0 and tp <= params["atr_stop_multiplier"]:
        return "take-profit is not beyond the stop distance"
    if tp > 0 and params["breakeven_atr_multiplier"] >= tp:
        return "breakeven comes after the take-profit"
    if params["partial_take_profit"] and tp > 0 and params["partial_tp_levels"][0] >= tp:
        return "first partial take-profit is beyond the final take-profit"
    if params["profit_lock_trigger_pct"] > 0 and params["profit_lock_target_pct"] >= params["profit_lock_trigger_pct"]:
        return "profit lock target is not below its trigger"
    return None


# ----------------------------------------------------------------------------------------------
# The objective: hierarchical filters
# ----------------------------------------------------------------------------------------------
FILTER_TIERS = ("trades", "profitability", "robustness", "risk", "annual_return", "calmar", "frequency", "realism")


def _months(metrics: dict[str, Any], bars: int, bar_ms: int) -> float:
    return max(bars * bar_ms / (30 * 86_400_000), 1e-9)


def evaluate_filters(train: dict[str, Any], test: dict[str, Any], test_months: float,
                     filters: dict[str, float] | None = None) -> tuple[float, str, int]:
    """Score a (train, test) result: (score, fail_reason or "", tier reached).

    A result failing tier k (1-based) scores -100 + 10 (k - 1) + up to 5 for how close it came,
    so a search is pulled through the tiers in order; one that passes every tier scores its test
    Sharpe minus the train/test Sharpe gap, plus the exit-mix adjustment.
    """
    f = dict(config.OBJECTIVE_FILTERS)
    f.update(filters or {})

    def fail(tier: int, reason: str, progress: float) -> tuple[float, str, int]:
        progress = min(max(progress, 0.0), 1.0) if math.isfinite(progress) else 0.0
        return -100.0 + 10.0 * (tier - 1) + 5.0 * progress, f"{FILTER_TIERS[tier - 1]}: {reason}", tier

    n_train, n_test = train["num_trades"], test["num_trades"]
    if n_train < f["min_trades_train"] or n_test < f["min_trades_test"]:
        return fail(1, f"trades train {n_train} / test {n_test}, need {f['min_trades_train']:g} / "
                       f"{f['min_trades_test']:g}",
                    min(n_train / f["min_trades_train"], n_test / f["min_trades_test"]))
    pf_train, pf_test = train["profit_factor"], test["profit_factor"]
    if pf_train < f["min_profit_factor"] or pf_test < f["min_profit_factor"]:
        return fail(2, f"profit factor train {pf_train:.2f} / test {pf_test:.2f} < {f['min_profit_factor']:g}",
                    min(pf_train, pf_test) / f["min_profit_factor"])
    s_train, s_test = train["sharpe"], test["sharpe"]
    ratio = s_test / s_train if s_train > 0 else -math.inf
    if not f["min_sharpe_ratio"] <= ratio <= f["max_sharpe_ratio"]:
        return fail(3, f"test/train Sharpe {ratio:.2f} outside [{f['min_sharpe_ratio']:g}, {f['max_sharpe_ratio']:g}]",
                    ratio / f["min_sharpe_ratio"] if ratio < f["min_sharpe_ratio"] else f["max_sharpe_ratio"] / ratio)
    worst = min(train["max_drawdown"], test["max_drawdown"])
    if worst < f["max_drawdown"]:
        return fail(4, f"max drawdown {worst:.1%} beyond {f['max_drawdown']:.0%}", f["max_drawdown"] / worst)
    if test["cagr"] < f["min_cagr"]:
        return fail(5, f"test CAGR {test['cagr']:.1%} < {f['min_cagr']:.0%}", 1 + test["cagr"] - f["min_cagr"])
    if test["calmar"] < f["min_calmar"]:
        return fail(6, f"test Calmar {test['calmar']:.2f} < {f['min_calmar']:g}", test["calmar"] / f["min_calmar"])
    per_month = n_test / test_months
    if per_month < f["min_trades_per_month"]:
        return fail(7, f"{per_month:.2f} test trades a month < {f['min_trades_per_month']:g}",
                    per_month / f["min_trades_per_month"])
    if s_test > f["max_sharpe"] or pf_test > f["max_profit_factor"]:
        return fail(8, f"unrealistic: test Sharpe {s_test:.2f} (cap {f['max_sharpe']:g}), profit factor "
                       f"{pf_test:.2f} (cap {f['max_profit_factor']:g})", 0.5)
    return s_test - abs(s_train - s_test) + exit_mix_adjustment(test["exit_reasons"], f), "", len(FILTER_TIERS) + 1


def exit_mix_adjustment(exit_reasons: dict[str, int], f: dict[str, float]) -> float:
    """Reward exits that take profit on the strategy's terms, penalise exits forced on it."""
    total = sum(exit_reasons.values())
    if not total:
        return 0.0
    taken = sum(exit_reasons.get(k, 0) for k in ("take_profit", "partial_take_profit", "trailing_stop"))
    forced = sum(exit_reasons.get(k, 0) for k in ("time_exit", "liquidation", "end_of_data"))
    return f["exit_mix_bonus"] * taken / total - f["exit_mix_penalty"] * forced / total


# ----------------------------------------------------------------------------------------------
# Datasets (in-sample and hold-out) and evaluation of one params set
# ----------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Bar ranges of the train and test periods, with a gap between them."""

    train: tuple[int, int]
    test: tuple[int, int]


def train_test_split(n: int, train_fraction: float, gap_fraction: float, start: int = 0) -> Split:
    """Of bars [start, n): the first ``train_fraction`` train, ``gap_fraction`` is skipped, the rest tests."""
    span = n - start
    train_stop = start + int(span * train_fraction)
    test_start = min(n, train_stop + int(span * gap_fraction))
    if train_stop - start < 2 or n - test_start < 2:
        raise config.ConfigError(f"{span} bars are too few for a {train_fraction:.0%} train / {gap_fraction:.0%} "
                                 "gap split")
    return Split((start, train_stop), (test_start, n))


METRIC_ATTRS = ("total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "profit_factor", "win_rate",
                "num_trades", "exposure", "expectancy")


@dataclass
class Evaluation:
    """The outcome of one params set: score, failure, and the metrics of both periods."""

    score: float
    fail_reason: str
    tier: int
    train: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        """Trial attributes: everything needed to report the trial without re-running it."""
        out: dict[str, Any] = {"fail_reason": self.fail_reason, "tier": self.tier}
        for period, values in (("train", self.train), ("test", self.test)):
            for key in METRIC_ATTRS:
                if key in values:
                    value = float(values[key])
                    out[f"{period}_{key}"] = value if math.isfinite(value) else 1e9
        return out


def holdout_cut(index: pd.DatetimeIndex, fraction: float, bar_ms: int) -> pd.Timestamp | None:
    """Open time of the first hold-out bar: the last ``fraction`` of the bars, moved back to a UTC
    day boundary (for bars shorter than a day) so that every timeframe of the data cuts at the same
    moment. None when ``fraction`` is 0."""
    if fraction <= 0:
        return None
    n = len(index)
    first = n - max(1, int(round(n * fraction)))
    if first < 2:
        raise config.ConfigError(f"{n} bars are too few to hold out {fraction:.0%} of them")
    cut = index[first]
    return cut.floor("D") if bar_ms < DAY_MS and cut.floor("D") > index[0] else cut


class Datasets:
    """The candles of one symbol, one MarketData per timeframe, split into in-sample and hold-out.

    ``get`` returns the in-sample bars only: nothing the search, the filters, the walk-forward or
    the statistics read can depend on a hold-out bar. ``full`` holds every bar (indicators over the
    whole history) and is used for the one final run of the chosen params on the hold-out.
    ``window`` restricts the in-sample bars further to a time range (a walk-forward fold's train
    window) while indicators stay warm from the first bar. Views made by ``window`` share the data,
    the hold-out cut and the instrument.

    ``instrument`` (tick, quantity step, ...) goes into every MarketData built here; None means
    ``config.instrument_for(symbol)`` when first needed. A loader may set it while it loads (a
    Bybit download caches the instrument info): it is read after the candles are loaded.
    """

    def __init__(self, loader: Callable[[str], Any], symbol: str, instrument: dict[str, float] | None = None,
                 holdout_fraction: float | None = None) -> None:
        self._loader = loader
        self.symbol = symbol
        self.holdout_fraction = config.HOLDOUT_FRACTION if holdout_fraction is None else holdout_fraction
        self._full: dict[str, backtester.MarketData] = {}
        self._insample: dict[str, backtester.MarketData] = {}
        self._lock = threading.RLock()
        # shared with the views: the cut (set by the first dataset loaded) and the instrument
        self._shared: dict[str, Any] = {"cut_known": False, "cut": None, "instrument": instrument}
        self.time_window: tuple[int, int] | None = None

    @property
    def members(self) -> list[Datasets]:
        """The symbols' datasets of a search: this one (a DatasetGroup has several)."""
        return [self]

    @property
    def instrument(self) -> dict[str, float] | None:
        """The instrument every MarketData of this symbol uses (None: config's, when first needed)."""
        return self._shared["instrument"]

    @instrument.setter
    def instrument(self, value: dict[str, float] | None) -> None:
        self._shared["instrument"] = value

    @property
    def cut(self) -> pd.Timestamp | None:
        """Open time of the first hold-out bar (None without a hold-out); set by the first dataset loaded."""
        return self._shared["cut"]

    def full(self, timeframe: str) -> backtester.MarketData:
        """Every bar at ``timeframe``, the hold-out included (for the final check only)."""
        with self._lock:
            if timeframe not in self._full:
                candles = self._loader(timeframe)  # first: it may set the instrument
                data = backtester.MarketData(candles, self.symbol, timeframe, instrument=self.instrument)
                if not self._shared["cut_known"]:
                    self._shared.update(cut_known=True, cut=holdout_cut(data.candles.index, self.holdout_fraction,
                                                                        data.bar_ms))
                self._full[timeframe] = data
            return self._full[timeframe]

    def get(self, timeframe: str) -> backtester.MarketData:
        """The in-sample bars at ``timeframe`` (everything before the hold-out)."""
        with self._lock:
            if timeframe not in self._insample:
                full = self.full(timeframe)
                if self.cut is None:
                    self._insample[timeframe] = full
                else:
                    candles = full.candles[full.candles.index < self.cut]
                    if len(candles) < 2:
                        raise config.ConfigError(f"{timeframe}: no in-sample bars before the hold-out at {self.cut}")
                    self._insample[timeframe] = backtester.MarketData(candles, self.symbol, timeframe,
                                                                      instrument=self.instrument)
            return self._insample[timeframe]

    def bars(self, timeframe: str) -> tuple[int, int]:
        """The in-sample bar range [start, stop) of ``timeframe`` to use (the time window, else all)."""
        data = self.get(timeframe)
        if self.time_window is None:
            return 0, len(data)
        start_ms, stop_ms = self.time_window
        return int(np.searchsorted(data.ts, start_ms)), int(np.searchsorted(data.ts, stop_ms))

    def holdout_bars(self, timeframe: str) -> tuple[int, int]:
        """The hold-out's bar range [start, stop) in ``full(timeframe)``; empty without a hold-out."""
        full = self.full(timeframe)
        if self.cut is None:
            return len(full), len(full)
        return int(np.searchsorted(full.ts, self.cut.value // 1_000_000)), len(full)

    def window(self, start_ms: int, stop_ms: int) -> Datasets:
        """A view of the in-sample bars with open time in [start_ms, stop_ms), sharing the data."""
        view = Datasets.__new__(Datasets)
        view.__dict__.update(self.__dict__)
        view.time_window = (int(start_ms), int(stop_ms))
        return view

    def describe(self, timeframe: str) -> dict[str, Any]:
        """Symbol, timeframe and the first/last bar of the in-sample part and of the hold-out."""
        data, full = self.get(timeframe), self.full(timeframe)
        start, stop = self.holdout_bars(timeframe)
        out = {"symbol": self.symbol, "timeframe": timeframe, "in_sample_start": str(data.candles.index[0]),
               "in_sample_end": str(data.candles.index[-1]), "in_sample_bars": len(data),
               "holdout_fraction": self.holdout_fraction, "holdout_bars": stop - start}
        if stop > start:
            out["holdout_start"], out["holdout_end"] = str(full.candles.index[start]), str(full.candles.index[-1])
        return out


AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "min": min, "mean": lambda scores: float(np.mean(scores)), "median": lambda scores: float(np.median(scores))}


class DatasetGroup:
    """Several symbols searched with one params set: a trial scores the aggregate of its per-symbol
    scores (by default the worst, so a strategy must work on every symbol).

    Each member is a symbol's own ``Datasets`` with its own hold-out cut: a trial reads every
    member's in-sample bars only. Everything after the search (stability, walk-forward, DSR/PBO,
    the hold-out) is per symbol, on ``members``.
    """

    def __init__(self, members: list[Datasets], aggregate: str = "min") -> None:
        if not members:
            raise config.ConfigError("a search over several symbols needs at least one symbol")
        if aggregate not in AGGREGATES:
            raise config.ConfigError(f"aggregate objective '{aggregate}'; accepted: {', '.join(AGGREGATES)}")
        self.members = members
        self.aggregate = aggregate
        self.symbol = ",".join(m.symbol for m in members)

    def combine(self, results: list[Evaluation]) -> Evaluation:
        """The aggregate score; the worst symbol's failure and metrics (named) stand for the trial."""
        worst = min(range(len(results)), key=lambda k: results[k].score)
        shown = results[worst]
        reason = f"{self.members[worst].symbol}: {shown.fail_reason}" if shown.fail_reason else ""
        return Evaluation(AGGREGATES[self.aggregate]([r.score for r in results]), reason,
                          min(r.tier for r in results), shown.train, shown.test)


def evaluate(datasets: Datasets | DatasetGroup, params: dict[str, Any], split_cfg: tuple[float, float],
             filters: dict[str, float] | None = None) -> Evaluation:
    """Backtest the train and test periods of ``params`` (in-sample bars only) and apply the filters
    (on each symbol of a group, then aggregated)."""
    reason = check_constraints(params)
    if reason:
        return Evaluation(SCORE_CONSTRAINT, f"constraint: {reason}", 0)
    if isinstance(datasets, DatasetGroup):
        return datasets.combine([evaluate(member, params, split_cfg, filters) for member in datasets.members])
    data = datasets.get(params["timeframe"])
    start, stop = datasets.bars(params["timeframe"])
    split = train_test_split(stop, *split_cfg, start=start)
    try:
        train = backtester.simulate(data, params, *split.train).metrics
        test = backtester.simulate(data, params, *split.test).metrics
    except backtester.TickSizeError as exc:  # this trial's stops or targets are finer than the tick
        return Evaluation(SCORE_CONSTRAINT, f"constraint: {exc}", 0)
    months = _months(test, split.test[1] - split.test[0], data.bar_ms)
    score, fail_reason, tier = evaluate_filters(train, test, months, filters)
    return Evaluation(score, fail_reason, tier, train, test)


def tier_pass_rates(tiers: Sequence[int]) -> list[dict[str, Any]]:
    """Per filter tier: trials that reached it, that passed it, and the share that passed.

    ``tiers`` are the tiers trials reached (0 = rejected by a constraint, len(FILTER_TIERS) + 1 =
    passed every tier); constraint rejections were never backtested and are left out.
    """
    reached = np.asarray([t for t in tiers if t > 0], dtype=int)
    rows = []
    for k, name in enumerate(FILTER_TIERS, start=1):
        at = int((reached >= k).sum())
        passed = int((reached > k).sum())
        rows.append({"tier": k, "name": name, "reached": at, "passed": passed,
                     "pass_rate": passed / at if at else float("nan")})
    return rows


# ----------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------
MAX_DUPLICATE_STREAK = 200  # proposals in a row that were all tried before: the space is exhausted
WARM_START_TRIALS = 20      # CMA-ES warm-starts from a study that holds at least this many trials


@dataclass
class SearchResult:
    """What a search leaves: every finished trial of the study (all runs, all workers) and the best one."""

    trials: list[FrozenTrial]
    best: FrozenTrial | None
    interrupted: bool          # stopped by SIGINT/SIGTERM, or a worker died: the run is not complete
    seconds: float
    sampler_seconds: float
    backtest_seconds: float
    rate_last_10pct: float
    stored: int = 0            # trials this run added to the study
    duplicates: int = 0        # proposals answered from a known result instead of being run again
    notes: list[str] = field(default_factory=list)


@dataclass
class _WorkerStats:
    stored: int = 0
    duplicates: int = 0
    sampler_s: float = 0.0
    backtest_s: float = 0.0
    note: str = ""


def make_sampler(seed: int, kind: str | None = None, warm: list[FrozenTrial] | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The sampler chosen in config or by --sampler, seeded: tpe (multivariate), cmaes or random.

    ``warm``: for CMA-ES, the trials a study already holds (a resumed or shared study): its first
    distribution is estimated from them (warm-started CMA-ES) instead of starting from the centre
    of the space after random start-up trials.
    """
    kind = kind or config.OPTUNA_SETTINGS["sampler"]
    startup = config.OPTUNA_SETTINGS["n_startup_trials"]
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CmaEsSampler imports it on first use; fail here, clearly
        except ImportError:
            raise config.ConfigError("sampler 'cmaes' needs the cmaes package (pip install -r requirements.txt)") \
                from None
        with warnings.catch_warnings():  # source_trials is marked experimental; the tests hold what it does here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(source_trials=warm or None, seed=seed,
                                                n_startup_trials=0 if warm else startup,
                                                warn_independent_sampling=False,
                                                independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    raise config.ConfigError(f"unknown sampler '{kind}'; accepted: {', '.join(config.SAMPLER_CHOICES)}")


def params_key(params: dict[str, Any]) -> tuple:
    """Identity of a parameter set: two trials with equal keys are the same strategy."""
    return tuple(sorted(params.items()))


class Search:
    """A resumable, windowed, deduplicating Optuna search over a strategy's grid, on 1..N processes."""

    def __init__(self, datasets: Datasets | DatasetGroup, base_params: dict[str, Any], grid: dict[str, Any], *,
                 study_name: str, storage: str | None = None, seed: int = 42, jobs: int = 1, worker_id: int = 0,
                 sampler: str | None = None, window: tuple[int, int] | None = None,
                 refine_share: float | None = None, split: tuple[float, float] | None = None,
                 filters: dict[str, float] | None = None, fingerprint: dict[str, Any] | None = None) -> None:
        self.datasets = datasets
        self.base_params = base_params
        self.space, fixed = grid_to_space(grid, f"grid of {study_name}", base_params["mode"])
        self.fixed = {**fixed, "mode": base_params["mode"]}
        self.seed = seed
        self.jobs = max(1, jobs)
        self.worker_id = worker_id
        self.sampler_kind = sampler or config.OPTUNA_SETTINGS["sampler"]
        make_sampler(0, self.sampler_kind)  # an unknown or unusable sampler fails before any work
        self.window = window or (config.OPTUNA_SETTINGS["window_best"], config.OPTUNA_SETTINGS["window_recent"])
        self.refine_share = config.OPTUNA_SETTINGS["refine_share"] if refine_share is None else refine_share
        self.split = split or (config.TRAIN_FRACTION, config.GAP_FRACTION)
        self.filters = filters
        self.study_name = study_name
        self.storage_url = storage
        self.storage = study_store.open_storage(storage)
        if self.jobs > 1 and not study_store.is_shared(self.storage):
            raise config.ConfigError("--jobs above 1 needs a storage the worker processes share (not :memory:)")
        try:
            self.persistent = optuna.create_study(study_name=study_name, storage=self.storage, direction="maximize",
                                                  load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - a storage that opens but cannot hold a study
            raise config.ConfigError(f"cannot open study '{study_name}' in "
                                     f"'{study_store.redact(storage or str(study_store.default_journal()))}': "
                                     f"{study_store.redact(str(exc), storage)}") from None
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.known = list(self.persistent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if fingerprint is not None:
            self._check_fingerprint(fingerprint)
        self._children: list[multiprocessing.Process] = []

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """A study holds trials of one dataset, split and grid; resuming it on others is refused."""
        import json

        wanted = json.loads(json.dumps(fingerprint, default=str))
        stored = self.persistent.user_attrs.get("grtr_data")
        if stored is None and not self.known:
            self.persistent.set_user_attr("grtr_data", wanted)
            return
        if stored != wanted:
            differs = sorted(k for k in set(wanted) | set(stored or {}) if (stored or {}).get(k) != wanted.get(k))
            raise config.ConfigError(f"study '{self.study_name}' holds {len(self.known)} trials made on other data or "
                                     f"settings ({', '.join(differs) or 'made before the hold-out existed'}); "
                                     "use another --study-name")

    def params_of(self, trial_params: dict[str, Any]) -> dict[str, Any]:
        """The complete validated params of a trial."""
        return config.validate_params({**self.fixed, **trial_params}, "trial", base=self.base_params)

    # --- running -----------------------------------------------------------------------------
    def run(self, n_trials: int, on_trial: Callable[[FrozenTrial], None] | None = None) -> SearchResult:
        """Run ``n_trials`` more trials on ``jobs`` workers; SIGINT/SIGTERM stop cleanly, everything stored.

        ``on_trial`` is called with each trial once it is stored (with its study number).
        """
        if n_trials < 1:
            raise config.ConfigError(f"--trials must be at least 1, got {n_trials}")
        stop = threading.Event()
        stamps: list[float] = []
        started = time.perf_counter()

        def stored(trial: FrozenTrial) -> None:
            stamps.append(time.perf_counter())
            if on_trial:
                on_trial(trial)

        with workers.StopOnSignals(stop, self._children):
            if self.jobs == 1:
                stats, died = [self._work(n_trials, 0, stored, stop, reopen=False)], []
            else:
                stats, died = self._run_workers(n_trials, stored, stop)
        elapsed = time.perf_counter() - started
        tail = max(1, len(stamps) // 10)
        rate_tail = tail / max(stamps[-1] - stamps[-tail - 1], 1e-9) if len(stamps) > tail else 0.0
        trials = list(self.persistent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        self.known = trials
        best = max(trials, key=lambda t: t.value) if trials else None
        notes = [s.note for s in stats if s.note] + [f"worker {k} died before storing its last trials" for k in died]
        return SearchResult(trials, best, stop.is_set() or bool(died), elapsed, sum(s.sampler_s for s in stats),
                            sum(s.backtest_s for s in stats), rate_tail, sum(s.stored for s in stats),
                            sum(s.duplicates for s in stats), notes)

    def _run_workers(self, n_trials: int, stored: Callable[[FrozenTrial], None], stop: threading.Event
                     ) -> tuple[list[_WorkerStats], list[int]]:
        """Fork one process per job; relay their stored trials to ``stored``; collect their figures."""
        ctx = multiprocessing.get_context("fork")
        messages = ctx.Queue()
        quotas = [n_trials // self.jobs + (k < n_trials % self.jobs) for k in range(self.jobs)]
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()  # no pooled connection may be shared with the children
        self._children[:] = []
        for k, quota in enumerate(quotas):
            if quota:
                process = ctx.Process(target=self._child, args=(quota, k, messages), daemon=True)
                process.start()
                self._children.append(process)
        finished: dict[int, _WorkerStats] = {}
        errors: list[BaseException] = []
        while True:
            try:
                kind, k, payload = messages.get(timeout=0.2)
            except queue.Empty:
                if any(p.is_alive() for p in self._children):
                    continue
                try:
                    kind, k, payload = messages.get(timeout=0.5)
                except queue.Empty:
                    break
            if kind == "trial":
                stored(payload)
            elif kind == "done":
                finished[k] = payload
            else:
                errors.append(payload)
        for process in self._children:
            process.join()
        if errors:
            raise errors[0] if isinstance(errors[0], config.ConfigError) else RuntimeError(str(errors[0]))
        died = [k for k, quota in enumerate(quotas) if quota and k not in finished]
        return list(finished.values()), died

    def _child(self, quota: int, local_index: int, messages: Any) -> None:
        """Body of a forked worker: search its quota, send each stored trial, then its figures."""
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        workers.stop_when_parent_dies()
        code = 0
        try:
            stats = self._work(quota, local_index, lambda t: messages.put(("trial", local_index, t)), stop,
                               reopen=True)
            messages.put(("done", local_index, stats))
        except BaseException as exc:  # noqa: BLE001 - everything reaches the parent, which reports it
            messages.put(("error", local_index, exc if isinstance(exc, config.ConfigError)
                          else RuntimeError(f"worker {local_index}: {type(exc).__name__}: {exc}")))
            code = 1
        finally:
            messages.close()
            messages.join_thread()
            os._exit(code)

    def _work(self, quota: int, local_index: int, on_stored: Callable[[FrozenTrial], None] | None,
              stop: threading.Event, reopen: bool) -> _WorkerStats:
        """One worker: ask, skip known params, backtest, tell, store; pull the other workers' trials."""
        storage = study_store.open_storage(self.storage_url) if reopen else self.storage
        study = optuna.load_study(study_name=self.study_name, storage=storage) if reopen else self.persistent
        label = f"{self.worker_id}.{local_index}"
        if study_store.is_shared(storage):
            study_store.claim_worker(storage, self.study_id, label)
        stored_trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        known = [_light(t) for t in stored_trials]
        seen = {params_key(t.params): t.value for t in known}
        numbers = {t.number for t in stored_trials}
        rng = random.Random(study_store.worker_seed(self.seed, self.worker_id, local_index, len(known)))
        stats = _WorkerStats()
        writer = study_store.TrialWriter(storage, self.study_id, on_stored)
        writer.start()
        rebuild_every = max(50, self.window[1] // 2)
        refine_from = quota - int(quota * self.refine_share)
        working = self._working_study(known, rng)
        since_rebuild = streak = 0
        try:
            while stats.stored < quota and not stop.is_set():
                t0 = time.perf_counter()
                if stats.stored >= refine_from:
                    working.enqueue_trial(self._neighbour(known, rng))
                trial = working.ask(self.space)
                key = params_key(trial.params)
                if key in seen:
                    working.tell(trial, seen[key])
                    stats.duplicates += 1
                    streak += 1
                    stats.sampler_s += time.perf_counter() - t0
                    if streak >= MAX_DUPLICATE_STREAK:
                        stats.note = (f"worker {label}: {streak} proposals in a row were tried before; the search "
                                      "space looks exhausted")
                        break
                    continue
                streak = 0
                stats.sampler_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                result = evaluate(self.datasets, self.params_of(trial.params), self.split, self.filters)
                stats.backtest_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                working.tell(trial, result.score)
                record = study_store.new_trial(trial.params, trial.distributions, result.score, result.attrs(),
                                               {"grtr_worker": label})
                writer.put(record)
                known.append(_light(record))
                seen[key] = result.score
                stats.stored += 1
                since_rebuild += 1
                if since_rebuild >= rebuild_every:
                    self._pull(study, known, seen, numbers, label)
                    if study_store.is_shared(storage):
                        study_store.beat_worker(storage, self.study_id, label)
                    if self.sampler_kind != "cmaes":  # CMA-ES keeps its state in its study: never rebuilt
                        working = self._working_study(known, rng)
                    since_rebuild = 0
                stats.sampler_s += time.perf_counter() - t0
        finally:
            writer.close()
        return stats

    def _working_study(self, known: list[FrozenTrial], rng: random.Random) -> optuna.Study:
        """An in-memory study of the best and the latest trials (``known`` holds light copies), with a
        fresh seeded sampler."""
        best, recent = self.window
        fitting = [t for t in known if set(t.distributions) == set(self.space)]
        order = sorted(range(len(fitting)), key=lambda k: fitting[k].value, reverse=True)[:best]
        chosen = [fitting[k] for k in sorted(set(order) | set(range(max(0, len(fitting) - recent), len(fitting))))]
        warm = None
        if self.sampler_kind == "cmaes" and len(chosen) >= WARM_START_TRIALS:
            numeric = {n: d for n, d in self.space.items() if not isinstance(d, CategoricalDistribution)}
            warm = [optuna.trial.create_trial(params={n: t.params[n] for n in numeric}, distributions=numeric,
                                              value=t.value) for t in chosen]  # CMA-ES's own space only
        study = optuna.create_study(direction="maximize", sampler=make_sampler(rng.randrange(2**31),
                                                                               self.sampler_kind, warm))
        study.add_trials(chosen)
        return study

    @staticmethod
    def _pull(study: optuna.Study, known: list[FrozenTrial], seen: dict[tuple, float], numbers: set[int],
              label: str) -> None:
        """Trials other workers stored since the last pull join the window and the known params."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.number in numbers:
                continue
            numbers.add(trial.number)
            if trial.system_attrs.get("grtr_worker") != label:
                known.append(_light(trial))
                seen.setdefault(params_key(trial.params), trial.value)

    def _neighbour(self, known: list[FrozenTrial], rng: random.Random) -> dict[str, Any]:
        """Params of one of the 10 best trials with one or two of them moved a little (leader refinement).

        TPE spreads its trials over the whole space; in the last share of a run, neighbours of
        the leaders are tried instead, which raises the best score the budget reaches.
        """
        import heapq

        fitting = (t for t in known if len(t.params) == len(self.space))
        leaders = heapq.nlargest(10, fitting, key=lambda t: t.value)
        if not leaders:
            return {}  # nothing to refine yet: the sampler proposes as usual
        params = dict(rng.choice(leaders).params)
        for name in rng.sample(sorted(self.space), k=min(len(self.space), rng.choice((1, 2)))):
            dist, value = self.space[name], params[name]
            if isinstance(dist, CategoricalDistribution):
                params[name] = rng.choice(dist.choices)
            elif isinstance(dist, IntDistribution):
                span = max(1, round((dist.high - dist.low) * 0.1))
                params[name] = min(dist.high, max(dist.low, value + rng.randint(-span, span)))
            else:
                span = (dist.high - dist.low) * 0.1
                params[name] = min(dist.high, max(dist.low, value + rng.gauss(0.0, span / 2)))
        return params


def _light(trial: FrozenTrial) -> FrozenTrial:
    """A trial with params and value only: what the samplers read, cheap to copy into a working study."""
    return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=trial.value)


# ----------------------------------------------------------------------------------------------
# Leader report
# ----------------------------------------------------------------------------------------------
def leader_report(trial: FrozenTrial, history: list[FrozenTrial]) -> str:
    """The "new leader" text: tiers passed, the five params furthest from the crowd, all params."""
    attrs = trial.user_attrs
    tier, reason = attrs.get("tier", 0), attrs.get("fail_reason", "")
    lines = [f"new leader: trial {trial.number}  score {trial.value:.3f}"]
    status = [f"{name} {'ok' if tier > k else ('FAIL' if tier == k else '-')}"
              for k, name in enumerate(FILTER_TIERS, start=1)]
    lines.append("  tiers: " + ", ".join(status) + (f"  ({reason})" if reason else ""))
    if "test_sharpe" in attrs:
        lines.append(f"  train: return {attrs['train_total_return']:+.1%} Sharpe {attrs['train_sharpe']:.2f} "
                     f"trades {attrs['train_num_trades']:.0f}   test: return {attrs['test_total_return']:+.1%} "
                     f"Sharpe {attrs['test_sharpe']:.2f} DD {attrs['test_max_drawdown']:.1%} "
                     f"trades {attrs['test_num_trades']:.0f}")
    z_scores = []
    for name, value in trial.params.items():
        values = [t.params[name] for t in history if name in t.params and isinstance(t.params[name], (int, float))
                  and not isinstance(t.params[name], bool)]
        if len(values) > 2 and isinstance(value, (int, float)) and not isinstance(value, bool):
            std = float(np.std(values))
            if std > 0:
                z_scores.append((abs(value - float(np.mean(values))) / std, name, value))
    top = sorted(z_scores, reverse=True)[:5]
    if top:
        lines.append("  most unusual: " + ", ".join(f"{n}={_fmt(v)} (z {z:.1f})" for z, n, v in top))
    lines.append("  params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.params.items())))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
