"""A search in a process of its own, for the kill, interrupt and resume tests.

    python tests/search_child.py STORAGE STUDY TRIALS SEED JOBS [slow]

Prints "@evaluated" once a trial's backtest is done (before it is stored), "@stored N" once trial N
is stored, and finally "result interrupted=... stored=...". With "slow", storing takes 50 ms a trial,
so that the search runs ahead of its storage and the writer's bound is what limits a loss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import config  # noqa: E402
import optimizer  # noqa: E402
import study_store  # noqa: E402
from data_fetcher import load_candles  # noqa: E402


def main() -> None:
    storage, study, trials, seed, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    real = optimizer.evaluate

    def say(line: str) -> None:  # one write per line: the writer thread prints too
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def evaluate(*args, **kwargs):
        result = real(*args, **kwargs)
        say("@evaluated")
        return result

    optimizer.evaluate = evaluate
    if sys.argv[6:] == ["slow"]:
        store = study_store.store_trials

        def slow_store(storage, study_id, trials):
            time.sleep(0.05 * len(trials))
            return store(storage, study_id, trials)

        study_store.store_trials = slow_store
    data = optimizer.Datasets(lambda tf: load_candles("sample", "BTCUSDT", tf, start="2019-01-01"), "BTCUSDT")
    data.get("1h")
    search = optimizer.Search(data, config.fixed_params("LONG"), config.param_grid("LONG"), study_name=study,
                              storage=storage, seed=seed, jobs=jobs)
    print("ready", flush=True)
    result = search.run(trials, on_trial=lambda t: say(f"@stored {t.number}"))
    print(f"result interrupted={result.interrupted} stored={result.stored}", flush=True)


if __name__ == "__main__":
    main()
