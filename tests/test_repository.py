"""The repository's own hygiene: the trader's working files never show up in `git status`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_trader_working_files_are_ignored_but_not_the_live_params():
    ignored = ["prod_config_long.20250102-030405.bak.py", "prod_config_short.20250102-030405.bak.py", "state.sqlite",
               "state.sqlite-wal", "watchdog.sqlite", "logs/trader.log", "logs/events.jsonl", "trades.csv",
               "equity.csv", "metrics.json", "heartbeat.json", "control.json", "results/tester/report.html",
               "results/tester/plotly.min.js", "data/BTCUSDT_1h.csv", "data/cache/BTCUSDT_1h.parquet"]
    kept = ["prod_config_long.py", "prod_config_short.py", "tests/data/trades.csv", "config.py", "README.md"]
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(ignored + kept),
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode in (0, 1), result.stderr
    assert sorted(result.stdout.split()) == sorted(ignored)
