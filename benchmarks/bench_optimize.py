"""Search methods compared on speed, on the in-sample best, and on what matters: the hold-out.

For each method (plain TPE over every trial; GrTr's windowed TPE with leader refinement; CMA-ES;
random) at each worker count and seed: ``--trials`` trials of ``--strategy`` (LONG) on the in-sample bars of the data
(the bundled hourly sample unless ``--source``), then the pick (the best trial, as the pipeline
picks) is run once on the hold-out. Reported per run and as medians over the seeds: wall seconds,
trials/s, the in-sample best score, the pick's hold-out Sharpe and its percentile among random
params sets that pass the filters in-sample (one shared baseline). Progress bars on stderr while
it runs; the last line of stdout is one JSON object.

    python benchmarks/bench_optimize.py [--trials 3900] [--seeds 3] [--workers 1 2]
        [--methods tpe_plain tpe_windowed_refine cmaes random] [--source sample|csv:PATH]
        [--baseline-draws 20000] [--strategy LONG|SHORT] [--timeframe 1h]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import holdout  # noqa: E402
import optimizer  # noqa: E402
import pipeline  # noqa: E402
import progress  # noqa: E402
from data_fetcher import load_candles  # noqa: E402

METHODS = {
    "tpe_plain": {"sampler": "tpe", "window": (10**9, 10**9), "refine_share": 0.0},
    "tpe_windowed_refine": {"sampler": "tpe"},  # config's window and refine_share: GrTr's default search
    "cmaes": {"sampler": "cmaes"},
    "random": {"sampler": "random", "refine_share": 0.0},
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def space(strategy: str, timeframe: str | None, symbol: str, source: str) -> tuple[dict, dict]:
    """The strategy's fixed params and grid as the pipeline builds them (``timeframe``: its --timeframe)."""
    spec = pipeline.RunSpec(strategy=strategy, source=source, symbol=symbol, out=Path("."), timeframe=timeframe)
    return pipeline.base_params(spec), pipeline.search_grid(spec)


def one_run(data: optimizer.Datasets, space_: tuple[dict, dict], method: str, workers: int, seed: int,
            trials: int, folder: Path, baseline: list[float]) -> dict:
    """One search; the pick's hold-out Sharpe and percentile."""
    params, grid = space_
    search = optimizer.Search(data, params, grid, study_name=f"{method}-{workers}-{seed}",
                              storage=f"journal:{folder / f'{method}-{workers}-{seed}.journal'}", seed=seed,
                              jobs=workers, **METHODS[method])
    with progress.bar(trials, f"{method} x{workers} seed {seed}", "trial") as shown:
        result = search.run(trials, lambda _trial: shown.update())
    if result.interrupted:
        raise SystemExit("interrupted")
    pick = search.params_of(result.best.params)
    sharpe = holdout.holdout_sharpe(data, pick)
    return {"seconds": result.seconds, "trials_per_s": trials / result.seconds, "best": result.best.value,
            "passed_filters": result.best.user_attrs.get("fail_reason") == "", "holdout_sharpe": sharpe,
            "holdout_percentile": holdout.percentile(sharpe, baseline), "duplicates": result.duplicates}


def median(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return round(statistics.median(finite), 4) if finite else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3900)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--source", default="sample", help="candles: sample (bundled) or csv:PATH")
    parser.add_argument("--baseline-draws", type=int, default=20000,
                        help="random params sets drawn for the percentile baseline (at most)")
    parser.add_argument("--strategy", default="LONG", choices=["LONG", "SHORT"], help="the built-in strategy searched")
    parser.add_argument("--timeframe", default=None, help="replaces the strategy's timeframe and its grid's")
    args = parser.parse_args()
    progress.announce_compiles()
    data = optimizer.Datasets(lambda tf: load_candles(args.source, "BTCUSDT", tf), "BTCUSDT")
    space_ = space(args.strategy, args.timeframe, "BTCUSDT", args.source)
    info = data.describe(space_[0]["timeframe"])
    say(f"data: in-sample {info['in_sample_start'][:10]} .. {info['in_sample_end'][:10]}, hold-out "
        f"{info.get('holdout_start', '')[:10]} .. {info.get('holdout_end', '')[:10]}")
    probe = optimizer.Search(data, *space_, study_name="baseline", storage=":memory:")
    started = time.perf_counter()
    base = holdout.random_baseline(probe, args.baseline_draws, seed=12345, jobs=max(args.workers),
                                   passing=10**9)
    say(f"baseline: {base['passing']} of {base['draws']} random params sets pass the filters in-sample "
        f"({time.perf_counter() - started:.0f} s)")
    runs: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            for workers in args.workers:
                for seed in range(args.seeds):
                    run = one_run(data, space_, method, workers, seed, args.trials, Path(folder),
                                  base["holdout_sharpes"])
                    runs.setdefault(method, {}).setdefault(workers, []).append(run)
                    say(f"{method} x{workers} seed {seed}: {run['seconds']:.1f} s ({run['trials_per_s']:.0f} "
                        f"trials/s), best {run['best']:.3f}{'' if run['passed_filters'] else ' (fails filters)'}, "
                        f"hold-out Sharpe {run['holdout_sharpe']:.2f}, percentile {run['holdout_percentile']:.0f}")
    figures: dict = {"trials": args.trials, "seeds": args.seeds, "source": args.source, "strategy": args.strategy,
                     "baseline": {"draws": base["draws"], "passing": base["passing"]}, "methods": {}}
    print(f"{'method':22s} {'workers':>7s} {'wall s':>8s} {'trials/s':>9s} {'best':>8s} {'hold-out SR':>11s} "
          f"{'pct':>5s}")
    for method, by_workers in runs.items():
        for workers, rows in by_workers.items():
            med = {key: median([r[key] for r in rows]) for key in ("seconds", "trials_per_s", "best",
                                                                   "holdout_sharpe", "holdout_percentile")}
            med["seeds_passing_filters"] = sum(r["passed_filters"] for r in rows)
            med["per_seed_best"] = [round(r["best"], 4) for r in rows]
            med["per_seed_holdout_sharpe"] = [round(r["holdout_sharpe"], 4) for r in rows]
            figures["methods"].setdefault(method, {})[str(workers)] = med
            print(f"{method:22s} {workers:7d} {med['seconds'] or 0:8.1f} {med['trials_per_s'] or 0:9.1f} "
                  f"{med['best'] or 0:8.3f} {med['holdout_sharpe'] or 0:11.2f} "
                  f"{'n/a' if med['holdout_percentile'] is None else format(med['holdout_percentile'], '.0f'):>5s}")
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    figures["peak_rss_mb"] = {"parent": round(usage[0] / 1024, 1), "largest_worker": round(usage[1] / 1024, 1)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
