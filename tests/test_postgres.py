"""Two `main.py optimize` processes on one study in a real PostgreSQL (psycopg 3), started here on
127.0.0.1 and torn down after: the study holds the sum of their trials, every number once, no params
set twice, and no password in any message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import optimizer
from pg_server import postgres_bin, start_postgres

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (.ci/run installs it)")]


@pytest.fixture(scope="module")
def postgres():
    server = start_postgres()
    yield server
    server.stop()


def optimize(url: str, worker_id: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", "optimize", "--storage", url, "--study-name", "two",
                             "--trials", "30", "--jobs", "1", "--worker-id", str(worker_id), "--start", "2019-03-01",
                             "--no-export", "--no-reoptimize", "--folds", "3", "--baseline-draws", "50",
                             "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_optimize_processes_share_one_postgres_study(postgres, tmp_path):
    runs = [optimize(postgres.url, worker_id, tmp_path / f"run{worker_id}") for worker_id in (0, 1)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    trials = optuna.load_study(study_name="two", storage=postgres.url).get_trials()
    assert len(trials) == 60  # the sum of both
    assert sorted(t.number for t in trials) == list(range(60))
    assert len({optimizer.params_key(t.params) for t in trials}) == 60
    assert {t.system_attrs["grtr_worker"] for t in trials} == {"0.0", "1.0"}
    assert all(postgres.password not in text for text in outputs)
    # A wrong password: one line, the URL shown redacted, exit code 2.
    bad = postgres.url.replace(postgres.password, "wrong-" + postgres.password[:4])
    result = subprocess.run([sys.executable, "main.py", "optimize", "--storage", bad, "--trials", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot open study storage 'postgresql://grtr:***@127.0.0.1" in result.stderr
    assert "wrong-" not in result.stderr + result.stdout
