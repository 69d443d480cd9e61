"""Visible progress: the numba compile notice only when the cache is cold, results counted as they arrive from
worker processes, and the benchmarks' progress on stderr with their JSON as the last line of stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import progress
import workers

ROOT = Path(__file__).resolve().parent.parent


def test_the_compile_notice_shows_only_while_the_cache_is_cold(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny_jit.py").write_text("from numba import njit\n\n\n@njit(cache=True)\ndef twice(x):\n"
                                          "    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_jit

    assert progress.cold([tiny_jit.twice])  # no cache file yet: the first call compiles
    assert progress.compile_notice([tiny_jit.twice])
    assert capsys.readouterr().err == f"{progress.COMPILE_NOTICE}...\n"
    assert tiny_jit.twice(21) == 42  # compiles and writes __pycache__/tiny_jit.twice-*.nbi/.nbc
    assert list((tmp_path / "__pycache__").glob("tiny_jit.twice-*.nbi"))
    assert not progress.cold([tiny_jit.twice])
    assert not progress.compile_notice([tiny_jit.twice])
    assert capsys.readouterr().err == ""  # warm: nothing printed


def test_a_function_without_a_file_cache_never_claims_a_compile():
    assert not progress.cold([object(), len])


def test_the_repository_core_is_listed_for_the_check():
    import core

    names = {d.__name__ for d in progress.core_dispatchers("decide", "open_fill", "close_fill")}
    assert {"run_loop", "decide", "open_fill", "close_fill", "ema_nb", "atr_nb"} <= names
    assert all(getattr(d, "_cache", None) is not None for d in progress.core_dispatchers()), core.__file__


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
