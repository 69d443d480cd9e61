"""The README's 10-minute tour cannot rot: its commands are the tour script's, and the script runs them all, in
order, in a fresh copy of the checkout, offline (benchmarks/bench_tour.py --quick: small trial counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_tour  # noqa: E402


def tour_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## A 10-minute tour")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_tour_shows_exactly_the_scripts_commands():
    tour = tour_section()
    for step in bench_tour.STEPS:
        assert step.command in tour, f"the README's tour lacks the step {step.name!r}: {step.command}"
    positions = [tour.index(step.command) for step in bench_tour.STEPS if step.name != "/pnl 30"]
    assert positions == sorted(positions), "the README gives the tour's commands in another order"


@pytest.mark.slow
def test_the_tour_runs_end_to_end_on_the_sample_offline():
    """About 30 s: backtest, optimize, validate, export-candles, the fake Telegram and the watchdog beside a paper
    replay with --compare, and /pnl 30 answered; each step's key output checked by the script."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tour.py"), "--quick"], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-6000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(figures["steps_s"]) == {s.name for s in bench_tour.STEPS} - {"watchdog"}


def test_the_readme_names_no_path_a_clone_lacks():
    text = (ROOT / "README.md").read_text()
    for absent in (str(Path("..") / "shared"), "/work/", "path/to/", "data.csv", "my_params.json", "my_long.json"):
        assert absent not in text, f"the README points at {absent!r}, which a clone does not have"
