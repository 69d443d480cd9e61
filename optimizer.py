"""Parameter search with Optuna, the hierarchical-filter objective, walk-forward validation and
overfitting statistics.

Design for speed (the sampler and the storage, not the ~1 ms backtest, are the bottleneck):

* Indicators are computed once per dataset and period (``MarketData``'s cache); a trial that
  changes only management params recomputes nothing.
* The sampler works on an in-memory *working study* that holds a bounded window of trials
  (the best ``WINDOW_BEST`` and the latest ``WINDOW_RECENT``), so the cost of each ``ask`` stays
  flat however many trials were run. Every trial also goes to the persistent study, written
  behind the search by a background thread; trials that other processes wrote there are pulled
  into the window, so several processes or machines share one study.
* The persistent default is an Optuna journal file under ``results/`` (append-only, safe for
  several processes, ~0.5 ms a trial); any Optuna RDB URL (``sqlite:///...``,
  ``postgresql://...``) works too and is written behind the same way.
* Trials are asked in batches of ``--jobs`` (TPE's constant liar keeps them apart) and their
  backtests run in threads (the numba loop releases the GIL).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import pprint
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import kurtosis, norm, skew
from sklearn.model_selection import TimeSeriesSplit

import backtester
import config
import strategy_loader
from metrics import daily_returns

logger = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SCORE_CONSTRAINT = -200.0
EULER_GAMMA = 0.5772156649015329


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
# Datasets and evaluation of one params set
# ----------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Bar ranges of the train and test periods, with a gap between them."""

    train: tuple[int, int]
    test: tuple[int, int]


def train_test_split(n: int, train_fraction: float, gap_fraction: float) -> Split:
    """First ``train_fraction`` of the bars for training, skip ``gap_fraction``, test on the rest."""
    train_stop = int(n * train_fraction)
    test_start = min(n, train_stop + int(n * gap_fraction))
    if train_stop < 2 or n - test_start < 2:
        raise config.ConfigError(f"{n} bars are too few for a {train_fraction:.0%} train / {gap_fraction:.0%} "
                                 "gap split")
    return Split((0, train_stop), (test_start, n))


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


class Datasets:
    """One MarketData per timeframe (resampled once) so that a timeframe in the grid costs nothing twice."""

    def __init__(self, loader: Callable[[str], Any], symbol: str, instrument: dict[str, float] | None = None) -> None:
        self._loader = loader
        self.symbol = symbol
        self.instrument = instrument  # None: config.instrument_for(symbol) when first needed
        self._data: dict[str, backtester.MarketData] = {}
        self._lock = threading.Lock()

    def get(self, timeframe: str) -> backtester.MarketData:
        """The dataset at ``timeframe``."""
        with self._lock:
            if timeframe not in self._data:
                self._data[timeframe] = backtester.MarketData(self._loader(timeframe), self.symbol, timeframe,
                                                              instrument=self.instrument)
            return self._data[timeframe]


AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "min": min, "mean": lambda scores: float(np.mean(scores)), "median": lambda scores: float(np.median(scores))}


class DatasetGroup:
    """Several symbols searched with one params set: a trial scores the aggregate of its per-symbol
    scores (by default the worst, so a strategy must work on every symbol)."""

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
    """Backtest the train and test periods of ``params`` and apply the filters (on each symbol of a group)."""
    reason = check_constraints(params)
    if reason:
        return Evaluation(SCORE_CONSTRAINT, f"constraint: {reason}", 0)
    if isinstance(datasets, DatasetGroup):
        return datasets.combine([evaluate(member, params, split_cfg, filters) for member in datasets.members])
    data = datasets.get(params["timeframe"])
    split = train_test_split(len(data), *split_cfg)
    try:
        train = backtester.simulate(data, params, *split.train).metrics
        test = backtester.simulate(data, params, *split.test).metrics
    except backtester.TickSizeError as exc:  # this trial's stops or targets are finer than the tick
        return Evaluation(SCORE_CONSTRAINT, f"constraint: {exc}", 0)
    months = _months(test, split.test[1] - split.test[0], data.bar_ms)
    score, fail_reason, tier = evaluate_filters(train, test, months, filters)
    return Evaluation(score, fail_reason, tier, train, test)


# ----------------------------------------------------------------------------------------------
# Storage: persistent study written behind the search
# ----------------------------------------------------------------------------------------------
def open_storage(url: str | None) -> Any:
    """The persistent storage: default a journal file under results/, else any RDB URL or journal:PATH."""
    try:
        if url is None or url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):]) if url else config.RESULTS_DIR / "studies.journal"
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - any driver error: name the URL and stop before work starts
        raise config.ConfigError(f"cannot open study storage '{url}': {exc}") from None


class BehindWriter(threading.Thread):
    """Copies finished trials into the persistent study from a background thread."""

    def __init__(self, study: optuna.Study) -> None:
        super().__init__(daemon=True, name="study-writer")
        self.study = study
        self.queue: queue.Queue[FrozenTrial | None] = queue.Queue()
        self.written = 0
        self.error: Exception | None = None

    def run(self) -> None:
        while True:
            trial = self.queue.get()
            if trial is None:
                return
            try:
                self.study.add_trial(trial)
                self.written += 1
            except Exception as exc:  # noqa: BLE001 - reported by close(), never lost silently
                self.error = exc
                logger.error("could not write trial %s to the study storage: %s", trial.number, exc)

    def close(self) -> None:
        """Write everything queued, then stop."""
        self.queue.put(None)
        self.join()
        if self.error:
            raise RuntimeError(f"some trials were not saved to the study storage: {self.error}")


# ----------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What a search leaves: every trial of the persistent study and the best one."""

    trials: list[FrozenTrial]
    best: FrozenTrial | None
    interrupted: bool
    seconds: float
    sampler_seconds: float
    backtest_seconds: float
    rate_last_10pct: float


def make_sampler(seed: int, kind: str | None = None) -> optuna.samplers.BaseSampler:
    """The sampler chosen in config (TPE multivariate by default), seeded."""
    kind = kind or config.OPTUNA_SETTINGS["sampler"]
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=config.OPTUNA_SETTINGS["n_startup_trials"])
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise config.ConfigError(f"unknown sampler '{kind}'; accepted: tpe, random, cmaes")


class Search:
    """A resumable, windowed Optuna search over a strategy's grid."""

    def __init__(self, datasets: Datasets | DatasetGroup, base_params: dict[str, Any], grid: dict[str, Any], *,
                 study_name: str, storage: str | None = None, seed: int = 42, jobs: int = 1,
                 sampler: str | None = None, window: tuple[int, int] | None = None,
                 split: tuple[float, float] | None = None, filters: dict[str, float] | None = None) -> None:
        self.datasets = datasets
        self.base_params = base_params
        self.space, fixed = grid_to_space(grid, f"grid of {study_name}", base_params["mode"])
        self.fixed = {**fixed, "mode": base_params["mode"]}
        self.seed = seed
        self.jobs = max(1, jobs)
        self.sampler_kind = sampler
        self.window = window or (config.OPTUNA_SETTINGS["window_best"], config.OPTUNA_SETTINGS["window_recent"])
        self.split = split or (config.TRAIN_FRACTION, config.GAP_FRACTION)
        self.filters = filters
        self.persistent = optuna.create_study(study_name=study_name, storage=open_storage(storage),
                                              direction="maximize", load_if_exists=True)
        self.known = list(self.persistent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def params_of(self, trial_params: dict[str, Any]) -> dict[str, Any]:
        """The complete validated params of a trial."""
        return config.validate_params({**self.fixed, **trial_params}, "trial", base=self.base_params)

    def _working_study(self) -> optuna.Study:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(self.seed + len(self.known),
                                                                               self.sampler_kind))
        best, recent = self.window
        order = sorted(range(len(self.known)), key=lambda k: self.known[k].value, reverse=True)[:best]
        chosen = sorted(set(order) | set(range(max(0, len(self.known) - recent), len(self.known))))
        study.add_trials([self.known[k] for k in chosen if set(self.known[k].distributions) == set(self.space)])
        return study

    def run(self, n_trials: int, on_trial: Callable[[FrozenTrial, Evaluation, bool], None] | None = None,
            timeout: float | None = None) -> SearchResult:
        """Run ``n_trials`` more trials; Ctrl-C stops cleanly with everything so far saved."""
        if n_trials < 1:
            raise config.ConfigError(f"--trials must be at least 1, got {n_trials}")
        writer = BehindWriter(self.persistent)
        writer.start()
        started = time.perf_counter()
        sampler_s = backtest_s = 0.0
        done = 0
        stamps: list[float] = []
        best_value = max((t.value for t in self.known), default=-math.inf)
        interrupted = False
        rebuild_every = max(50, self.window[1] // 2)
        refine_count = int(n_trials * config.OPTUNA_SETTINGS["refine_share"])
        rng = random.Random(self.seed + len(self.known))
        working = self._working_study()
        since_rebuild = 0
        pool = ThreadPoolExecutor(self.jobs) if self.jobs > 1 else None
        try:
            while done < n_trials and (timeout is None or time.perf_counter() - started < timeout):
                batch = min(self.jobs, n_trials - done)
                t0 = time.perf_counter()
                if done >= n_trials - refine_count:
                    for _ in range(batch):
                        working.enqueue_trial(self._neighbour(rng))
                asked = [working.ask(self.space) for _ in range(batch)]
                sampler_s += time.perf_counter() - t0
                params = [self.params_of(t.params) for t in asked]
                t0 = time.perf_counter()
                args = [(self.datasets, p, self.split, self.filters) for p in params]
                results = list(pool.map(lambda a: evaluate(*a), args)) if pool else [evaluate(*a) for a in args]
                backtest_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                for trial, result in zip(asked, results, strict=True):
                    for key, value in result.attrs().items():
                        trial.set_user_attr(key, value)
                    working.tell(trial, result.score)
                    record = optuna.trial.create_trial(params=trial.params, distributions=self.space,
                                                       value=result.score, user_attrs=dict(trial.user_attrs),
                                                       system_attrs={"search_seed": self.seed})
                    record.number = len(self.known)
                    writer.queue.put(record)
                    self.known.append(record)
                    done += 1
                    stamps.append(time.perf_counter())
                    is_leader = result.score > best_value
                    best_value = max(best_value, result.score)
                    if on_trial:
                        on_trial(record, result, is_leader)
                sampler_s += time.perf_counter() - t0
                since_rebuild += batch
                if since_rebuild >= rebuild_every:
                    t0 = time.perf_counter()
                    self._pull_foreign_trials()
                    working = self._working_study()
                    sampler_s += time.perf_counter() - t0
                    since_rebuild = 0
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: %d trials done, saving them", done)
        finally:
            if pool:
                pool.shutdown(wait=True)
            writer.close()
        elapsed = time.perf_counter() - started
        tail = max(1, len(stamps) // 10)
        rate_tail = tail / max(stamps[-1] - stamps[-tail - 1], 1e-9) if len(stamps) > tail else 0.0
        trials = self.persistent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = max(trials, key=lambda t: t.value) if trials else None
        return SearchResult(list(trials), best, interrupted, elapsed, sampler_s, backtest_s, rate_tail)

    def _neighbour(self, rng: random.Random) -> dict[str, Any]:
        """Params of one of the 10 best trials with one or two of them moved a little (leader refinement).

        TPE spreads its trials over the whole space; in the last share of a run, neighbours of
        the leaders are tried instead, which raises the best score the budget reaches.
        """
        fitting = [t for t in self.known if set(t.params) == set(self.space)]
        leaders = sorted(fitting, key=lambda t: t.value, reverse=True)[:10]
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

    def _pull_foreign_trials(self) -> None:
        """Trials other processes wrote to the persistent study join the window."""
        mine = {(tuple(sorted(t.params.items())), t.value) for t in self.known}
        for trial in self.persistent.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            key = (tuple(sorted(trial.params.items())), trial.value)
            if key not in mine:
                self.known.append(trial)
                mine.add(key)


# ----------------------------------------------------------------------------------------------
# Leader report
# ----------------------------------------------------------------------------------------------
def leader_report(trial: FrozenTrial, result: Evaluation, history: list[FrozenTrial]) -> str:
    """The "new leader" text: tiers passed, the five params furthest from the crowd, all params."""
    lines = [f"new leader: trial {trial.number}  score {trial.value:.3f}"]
    status = []
    for k, name in enumerate(FILTER_TIERS, start=1):
        status.append(f"{name} {'ok' if result.tier > k else ('FAIL' if result.tier == k else '-')}")
    lines.append("  tiers: " + ", ".join(status) + (f"  ({result.fail_reason})" if result.fail_reason else ""))
    if result.test:
        lines.append(f"  train: return {result.train['total_return']:+.1%} Sharpe {result.train['sharpe']:.2f} "
                     f"trades {result.train['num_trades']}   test: return {result.test['total_return']:+.1%} "
                     f"Sharpe {result.test['sharpe']:.2f} DD {result.test['max_drawdown']:.1%} "
                     f"trades {result.test['num_trades']}")
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


# ----------------------------------------------------------------------------------------------
# Walk-forward validation
# ----------------------------------------------------------------------------------------------
def lookback_bars(params: dict[str, Any]) -> int:
    """The longest look-back of ``params`` in bars: the ATR's and the strategy's (its file declares it)."""
    return int(max(params["atr_period"], strategy_loader.get(params["mode"]).lookback(params)))


def fold_ranges(n: int, folds: int, train_ratio: float, purge: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Walk-forward (train, test) bar ranges from scikit-learn's TimeSeriesSplit with a purge gap."""
    if folds < 2:
        raise config.ConfigError(f"--folds must be at least 2, got {folds}")
    test_size = (n - purge) // (folds + 1)
    if test_size < 50:
        raise config.ConfigError(f"{n} bars are too few for {folds} folds with a {purge}-bar purge gap "
                                 f"(each test fold would hold {test_size} bars; need at least 50)")
    max_train = max(int(test_size * train_ratio), 50)
    splitter = TimeSeriesSplit(n_splits=folds, max_train_size=max_train, test_size=test_size, gap=purge)
    return [((int(tr[0]), int(tr[-1]) + 1), (int(te[0]), int(te[-1]) + 1))
            for tr, te in splitter.split(np.arange(n))]


FOLD_KEYS = ("total_return", "sharpe", "max_drawdown", "num_trades", "profit_factor")


def walk_forward(data: backtester.MarketData, params: dict[str, Any], folds: int,
                 train_ratio: float | None = None) -> dict[str, Any]:
    """Per-fold train/test figures and their aggregate; indicators from the full history, sliced."""
    train_ratio = train_ratio or config.WF_TRAIN_RATIO
    purge = lookback_bars(params)
    rows = []
    for k, (train, test) in enumerate(fold_ranges(len(data), folds, train_ratio, purge), start=1):
        m_train = backtester.simulate(data, params, *train).metrics
        m_test = backtester.simulate(data, params, *test).metrics
        rows.append({"fold": k, "train_bars": list(train), "test_bars": list(test),
                     "train_start": str(data.candles.index[train[0]]), "test_start": str(data.candles.index[test[0]]),
                     "test_end": str(data.candles.index[test[1] - 1]),
                     **{f"train_{key}": m_train[key] for key in FOLD_KEYS},
                     **{f"test_{key}": m_test[key] for key in FOLD_KEYS}})
    test_returns = np.array([r["test_total_return"] for r in rows])
    aggregate = {
        "folds": len(rows), "purge_bars": purge,
        "mean_test_return": float(test_returns.mean()),
        "compounded_test_return": float(np.prod(1 + test_returns) - 1),
        "mean_test_sharpe": float(np.mean([r["test_sharpe"] for r in rows])),
        "worst_test_drawdown": float(min(r["test_max_drawdown"] for r in rows)),
        "test_trades": int(sum(r["test_num_trades"] for r in rows)),
        "profitable_folds": int((test_returns > 0).sum()),
    }
    aggregate["passed"] = bool(aggregate["profitable_folds"] / len(rows) >= config.WF_MIN_PROFITABLE_FOLDS
                               and aggregate["mean_test_sharpe"] > 0)
    return {"folds": rows, "aggregate": aggregate}


# ----------------------------------------------------------------------------------------------
# Overfitting statistics
# ----------------------------------------------------------------------------------------------
def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum Sharpe of ``n_trials`` skill-less trials (Bailey & Lopez de Prado, 2014)."""
    if n_trials < 2:
        return 0.0
    return math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials)
                                         + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e)))


def deflated_sharpe(returns: np.ndarray, trial_sharpes: np.ndarray) -> dict[str, float]:
    """Deflated Sharpe Ratio of a return series given the per-period Sharpes of all trials searched.

    DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)) with SR0 the
    expected maximum Sharpe of as many trials without skill; per-period (not annualised) Sharpes.
    """
    returns = np.asarray(returns, dtype=float)
    t = returns.size
    sd = returns.std(ddof=1) if t > 1 else 0.0
    if t < 3 or sd == 0:
        return {"dsr": 0.0, "sharpe": 0.0, "sharpe0": 0.0, "n_trials": int(trial_sharpes.size), "periods": int(t)}
    sr = returns.mean() / sd
    sr0 = expected_max_sharpe(int(trial_sharpes.size), float(np.var(trial_sharpes, ddof=1))
                              if trial_sharpes.size > 1 else 0.0)
    g3 = float(skew(returns))
    g4 = float(kurtosis(returns, fisher=False))
    denominator = math.sqrt(max(1 - g3 * sr + (g4 - 1) / 4 * sr * sr, 1e-12))
    dsr = float(norm.cdf((sr - sr0) * math.sqrt(t - 1) / denominator))
    return {"dsr": dsr, "sharpe": float(sr), "sharpe0": float(sr0), "n_trials": int(trial_sharpes.size),
            "periods": int(t)}


def probability_of_backtest_overfitting(returns: np.ndarray, blocks: int = 8) -> dict[str, float]:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, Lopez de Prado, Zhu, 2015).

    ``returns`` is periods x strategies. The periods are cut into ``blocks`` equal parts; for every
    half of the blocks chosen as in-sample, the in-sample best strategy's out-of-sample rank gives
    the logit lambda = ln(w / (1 - w)), w = rank / (N + 1); PBO is the share of lambda <= 0.
    """
    returns = np.asarray(returns, dtype=float)
    periods, n = returns.shape
    if n < 2 or periods < blocks or blocks % 2:
        return {"pbo": float("nan"), "combinations": 0, "strategies": int(n)}
    edges = np.linspace(0, periods, blocks + 1).astype(int)
    parts = [returns[edges[k]:edges[k + 1]] for k in range(blocks)]
    logits = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        ins = np.vstack([parts[k] for k in chosen])
        outs = np.vstack([parts[k] for k in range(blocks) if k not in chosen])
        best = int(np.argmax(_sharpe_columns(ins)))
        oos = _sharpe_columns(outs)
        rank = int((oos < oos[best]).sum()) + 1  # 1 = worst, n = best
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    logits_arr = np.array(logits)
    return {"pbo": float((logits_arr <= 0).mean()), "combinations": int(logits_arr.size), "strategies": int(n)}


def _sharpe_columns(block: np.ndarray) -> np.ndarray:
    sd = block.std(axis=0, ddof=1)
    mean = block.mean(axis=0)
    return np.where(sd > 0, mean / np.where(sd > 0, sd, 1), 0.0)


def overfitting_statistics(datasets: Datasets, trials: list[FrozenTrial], params_of: Callable[[dict], dict],
                           split: tuple[float, float]) -> dict[str, Any]:
    """DSR of the best trial on its test period and PBO over the top trials' daily returns."""
    ranked = sorted((t for t in trials if t.value is not None), key=lambda t: t.value, reverse=True)
    if not ranked:
        return {}
    sharpes = np.array([t.user_attrs.get("test_sharpe", 0.0) for t in trials
                        if t.user_attrs.get("fail_reason", "").split(":")[0] != "constraint"]) / math.sqrt(365)
    best_params = params_of(ranked[0].params)
    data = datasets.get(best_params["timeframe"])
    split_bars = train_test_split(len(data), *split)
    best = backtester.simulate(data, best_params, *split_bars.test, with_metrics=False)
    dsr = deflated_sharpe(daily_returns(best.ts, best.equity, best.initial_capital, data.bar_ms), sharpes)
    top = [params_of(t.params) for t in ranked[:config.PBO_TOP_TRIALS]]
    top = [p for p in top if p["timeframe"] == best_params["timeframe"]]
    series = []
    for p in top:
        run = backtester.simulate(data, p, with_metrics=False)
        series.append(daily_returns(run.ts, run.equity, run.initial_capital, data.bar_ms))
    pbo = probability_of_backtest_overfitting(np.column_stack(series)) if len(series) > 1 else \
        {"pbo": float("nan"), "combinations": 0, "strategies": len(series)}
    return {"deflated_sharpe": dsr, "pbo": pbo,
            "meaning": (f"DSR {dsr['dsr']:.2f}: the probability that the best trial's Sharpe beats the best of "
                        f"{dsr['n_trials']} skill-less trials; PBO {pbo['pbo']:.2f}: how often the in-sample best of "
                        f"the top {pbo['strategies']} trials ranks below the median out of sample.")}


# ----------------------------------------------------------------------------------------------
# Export to production
# ----------------------------------------------------------------------------------------------
def side_of(params: dict[str, Any]) -> str:
    """The live side a params set trades: its strategy's SIDE, long or short."""
    strategy = strategy_loader.get(params["mode"])
    if strategy.side not in ("long", "short"):
        raise config.ConfigError(f"strategy '{strategy.name}' trades both ways and has no prod config; export "
                                 "a long or a short strategy")
    return strategy.side


def export_prod_config(params: dict[str, Any], metadata: dict[str, Any], directory: Path | None = None) -> Path:
    """Write prod_config_long.py or prod_config_short.py, keeping the previous file as a timestamped backup."""
    directory = Path(directory or config.BASE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"prod_config_{side_of(params)}.py"
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        shutil.copy2(path, directory / f"{path.stem}.{stamp}.bak.py")
    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    safe_metadata = json.loads(json.dumps(metadata, default=str))
    strategy = strategy_loader.get(params["mode"])
    text = (f'"""Live params of the {side_of(params)} side, written by GrTr\'s optimizer (main.py)."""\n\n'
            f"SYMBOL = {params['symbol']!r}\nTIMEFRAME = {params['timeframe']!r}\n"
            f"# the strategy file these params need (run_live.py loads it), and its content's hash when exported\n"
            f"STRATEGY_FILE = {str(strategy.path)!r}\nSTRATEGY_SHA256 = {strategy.sha256!r}\n"
            f"METADATA = {pprint.pformat(safe_metadata, sort_dicts=False)}\n"
            f"PARAMS = {pprint.pformat(clean, sort_dicts=False)}\n")
    path.write_text(text)
    return path
