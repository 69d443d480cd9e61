"""Visible progress: the numba compile notice only when the cache is cold, results counted as they arrive from
worker processes, and the benchmarks' progress on stderr with their JSON as the last line of stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import progress
import workers

ROOT = Path(__file__).resolve().parent.parent


TINY = """from numba import njit


@njit(cache=True)
def twice(x):
    return 2 * x


@njit(cache=True)
def thrice(x):
    return 3 * x
"""
RUN = """import sys
sys.path[:0] = [{root!r}, {here!r}]
import progress, tiny_jit, workers
progress.announce_compiles(("tiny_jit",))
{work}
"""


def notices(tmp_path, work):
    """stderr of a fresh process that compiles (or loads from the cache) tiny_jit's functions doing ``work``."""
    script = tmp_path / "run.py"
    script.write_text(RUN.format(root=str(ROOT), here=str(tmp_path), work=work))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_compile_notice_shows_only_when_numba_compiles(tmp_path):
    """Cold cache: one line as the first compile starts (not one per function); warm cache: nothing at all."""
    (tmp_path / "tiny_jit.py").write_text(TINY)
    assert notices(tmp_path, "tiny_jit.twice(2); tiny_jit.thrice(2)") == f"{progress.COMPILE_NOTICE}...\n"
    assert list((tmp_path / "__pycache__").glob("tiny_jit.twice-*.nbi"))  # numba wrote its cache
    assert notices(tmp_path, "tiny_jit.twice(2); tiny_jit.thrice(2)") == ""  # loaded from it: no compile


def test_the_compile_notice_shows_once_across_forked_workers(tmp_path):
    """Two forked workers both compiling (a search's first trials on a cold cache): still one line."""
    (tmp_path / "tiny_jit.py").write_text(TINY)
    err = notices(tmp_path, "print(workers.parallel_map(lambda k: tiny_jit.twice(k), [1, 2], 2))")
    assert err == f"{progress.COMPILE_NOTICE}...\n"


def test_a_user_error_before_any_compile_prints_no_notice(tmp_path):
    """The notice comes with the compile itself, so a refused command stays one line even on a cold cache."""
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "backtest", "--source", "csv:nope.csv"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cold")})
    assert done.returncode == 2 and done.stderr == "error: CSV file not found: nope.csv\n"


@pytest.mark.parametrize("jobs", [1, 2])
def test_parallel_map_reports_each_result_as_it_arrives(jobs):
    done = []
    assert workers.parallel_map(lambda x: x * x, list(range(40)), jobs, lambda: done.append(1)) == \
        [x * x for x in range(40)]
    assert len(done) == 40


BENCHMARKS = {
    "bench_backtest.py": (["--bars", "20000", "--repeats", "1"], "timing the bar loop"),
    "bench_optimize.py": (["--trials", "20", "--seeds", "1", "--workers", "1", "--methods", "random",
                           "--baseline-draws", "50"], "random x1 seed 0: 100%"),
    "bench_trader.py": (["--bars", "60"], "paper replay: 100%"),
    "bench_sim.py": (["--calls", "10", "--bars", "30"], "lockstep replay: 100%"),
}


@pytest.mark.slow
def test_benchmarks_show_progress_on_stderr_and_end_stdout_with_their_json():
    """Each benchmark, with tiny sizes (about 13 s for the four): progress on stderr, the figures' JSON as the
    last line of stdout (so `... | tail -1 | jq` works), exit code 0."""
    for script, (argv, shown) in BENCHMARKS.items():
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
        assert run.returncode == 0, (script, run.stderr[-2000:])
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        assert isinstance(figures, dict) and figures, script
        assert shown in run.stderr.replace("\r", "\n"), (script, run.stderr[-1000:])
        assert "%|" not in run.stdout, script  # no bar on stdout
