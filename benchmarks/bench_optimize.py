"""Search speed: the LONG grid on two years of hourly candles, 3,900 trials, all cores.

Prints wall seconds, trials/s overall and over the last 10% of trials, seconds in the sampler
and in backtests, peak RSS, and the best score reached, next to plain multivariate TPE's best
score on the same budget (Optuna's TPESampler over every trial, in-memory; median over seeds).
Last line: JSON.

    python benchmarks/bench_optimize.py [--trials 3900] [--seeds 3] [--jobs 2] [--skip-plain]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import optimizer  # noqa: E402
from data_fetcher import load_candles  # noqa: E402


def datasets() -> optimizer.Datasets:
    """The bundled BTC sample at 1h: two years (Oct 2017 - Oct 2019)."""
    return optimizer.Datasets(lambda tf: load_candles("sample", "BTCUSDT", tf), "BTCUSDT")


def ours(data: optimizer.Datasets, trials: int, seed: int, jobs: int, folder: Path) -> dict:
    """GrTr's windowed search with its persistent journal storage."""
    search = optimizer.Search(data, config.fixed_params("LONG"), config.param_grid("LONG"), study_name=f"bench-{seed}",
                              storage=f"journal:{folder / f'bench-{seed}.journal'}", seed=seed, jobs=jobs)
    result = search.run(trials)
    return {"seconds": result.seconds, "rate": trials / result.seconds, "rate_last_10pct": result.rate_last_10pct,
            "sampler_s": result.sampler_seconds, "backtest_s": result.backtest_seconds, "best": result.best.value}


def plain_tpe(data: optimizer.Datasets, trials: int, seed: int) -> dict:
    """Plain multivariate TPE over all trials (the reference for the best score), same objective."""
    base = config.fixed_params("LONG")
    space, fixed = optimizer.grid_to_space(config.param_grid("LONG"))
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(space)
        params = config.validate_params({**fixed, **trial.params, "mode": base["mode"]}, "trial", base=base)
        study.tell(trial, optimizer.evaluate(data, params, (config.TRAIN_FRACTION, config.GAP_FRACTION)).score)
    return {"seconds": time.perf_counter() - started, "best": study.best_value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3900)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-plain", action="store_true", help="do not run the plain-TPE reference")
    args = parser.parse_args()
    data = datasets()
    data.get("1h")
    runs, plain = [], []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            runs.append(ours(data, args.trials, seed, args.jobs, Path(folder)))
            print(f"seed {seed}: {runs[-1]}", flush=True)
            if not args.skip_plain:
                plain.append(plain_tpe(data, args.trials, seed))
                print(f"seed {seed} plain TPE: {plain[-1]}", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"trials": args.trials, "jobs": args.jobs, "seeds": args.seeds, "wall_s": round(med["seconds"], 2),
               "trials_per_s": round(med["rate"], 1), "trials_per_s_last_10pct": round(med["rate_last_10pct"], 1),
               "sampler_s": round(med["sampler_s"], 2), "backtest_s": round(med["backtest_s"], 2),
               "peak_rss_mb": round(peak_rss_mb, 1), "best_score": round(med["best"], 4)}
    if plain:
        figures["plain_tpe_best_score"] = round(statistics.median(p["best"] for p in plain), 4)
        figures["plain_tpe_wall_s"] = round(statistics.median(p["seconds"] for p in plain), 1)
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
