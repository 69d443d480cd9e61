"""Study storage: redacted URLs, batched RDB writes in Optuna's schema, the writer's bound, and what a
SIGKILL, SIGTERM or SIGINT at random points leaves behind (and that resume loses and repeats nothing)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage

import config
import optimizer
import study_store

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "search_child.py"
SPACE = {"x": FloatDistribution(0.0, 1.0), "n": IntDistribution(1, 9), "c": CategoricalDistribution([True, False])}


def record(k: int, value: float | None = None) -> optuna.trial.FrozenTrial:
    return study_store.new_trial({"x": k / 1000, "n": 1 + k % 9, "c": k % 2 == 0}, SPACE,
                                 float(k) if value is None else value, {"tier": 9, "fail_reason": ""},
                                 {"grtr_worker": "0.0"})


def test_passwords_never_appear_in_storage_messages():
    assert study_store.redact("postgresql://grtr:s3cr%40t@db:5432/x") == "postgresql://grtr:***@db:5432/x"
    assert study_store.redact("cannot reach postgresql+psycopg://u:pw@h/db", None) == \
        "cannot reach postgresql+psycopg://u:***@h/db"
    assert study_store.redact("no url here") == "no url here"
    url = "postgresql://grtr:hunter2@127.0.0.1:1/none"
    with pytest.raises(config.ConfigError) as caught:
        study_store.open_storage(url)
    assert "hunter2" not in str(caught.value) and "postgresql://grtr:***@127.0.0.1:1/none" in str(caught.value)
    with pytest.raises(config.ConfigError, match="is not a storage URL; accepted: journal:PATH"):
        study_store.open_storage("results/studies.db")


def test_batched_rdb_writes_read_back_as_optunas_own(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = study_store.open_storage(url)
    study = optuna.create_study(study_name="b", storage=storage, direction="maximize")
    study_id = storage.get_study_id_from_name("b")
    study.add_trial(record(0))  # Optuna's own writer first, then ours, then Optuna's again
    stored = study_store.store_trials(storage, study_id, [record(k) for k in range(1, 6)]
                                      + [record(6, float("-inf"))])
    assert [t.number for t in stored] == list(range(1, 7))
    study.add_trial(record(7))
    trials = optuna.load_study(study_name="b", storage=url).get_trials()
    assert [t.number for t in trials] == list(range(8))
    for k, trial in enumerate(trials):
        expected = record(k, float("-inf") if k == 6 else None)
        assert (trial.params, trial.value, trial.user_attrs, trial.system_attrs, trial.state) == \
            (expected.params, expected.value, expected.user_attrs, expected.system_attrs, expected.state)
        assert trial.distributions == SPACE and trial.datetime_complete is not None


def test_the_writer_never_falls_more_than_a_batch_behind(monkeypatch):
    release = threading.Event()

    class Stalled(InMemoryStorage):
        def create_new_trial(self, study_id, template_trial=None):
            release.wait()
            return super().create_new_trial(study_id, template_trial)

    storage = Stalled()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "w")
    stored = []
    writer = study_store.TrialWriter(storage, study_id, stored.append)
    writer.start()
    monkeypatch.setattr(study_store, "MAX_DELAY_S", 3600.0)
    blocked = threading.Thread(target=lambda: [writer.put(record(k)) for k in range(study_store.MAX_PENDING + 1)])
    blocked.start()
    blocked.join(0.5)
    # The storage is stalled: 50 trials wait and the 51st put() waits for them (nothing runs ahead of the bound).
    assert blocked.is_alive() and len(writer._pending) == study_store.MAX_PENDING and not stored
    release.set()
    blocked.join()
    writer.close()
    assert [t.number for t in stored] == list(range(study_store.MAX_PENDING + 1))
    # The age bound: with 1 pending trial older than MAX_DELAY_S, the next put() waits too.
    release.clear()
    monkeypatch.setattr(study_store, "MAX_DELAY_S", 0.01)
    writer = study_store.TrialWriter(storage, study_id)
    writer.start()
    writer.put(record(100))
    time.sleep(0.05)
    second = threading.Thread(target=writer.put, args=(record(101),))
    second.start()
    second.join(0.3)
    assert second.is_alive()
    release.set()
    second.join()
    writer.close()
    assert len(storage.get_all_trials(study_id)) == study_store.MAX_PENDING + 3


def start_child(storage: str, study: str, trials: int, seed: int, jobs: int = 1, *extra: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, str(CHILD), storage, study, str(trials), str(seed), str(jobs), *extra],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def read_until_stored(child: subprocess.Popen, count: int) -> tuple[int, int]:
    """Lines until ``count`` trials are reported stored: (finished, stored) seen so far."""
    finished = stored = 0
    while stored < count:
        line = child.stdout.readline()
        assert line, "the search ended before the signal"
        finished += line.startswith("@evaluated")
        stored += line.startswith("@stored")
    return finished, stored


def stored_trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=study_store.open_storage(storage)).get_trials()


def assert_clean(trials: list[optuna.trial.FrozenTrial]) -> None:
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number repeated or skipped
    assert len({optimizer.params_key(t.params) for t in trials}) == len(trials)  # no params set twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_at_most_one_batch_and_resume_repeats_nothing(tmp_path):
    storage, study = f"sqlite:///{tmp_path / 'k.db'}", "kill"
    rng = random.Random(20240917)
    trials: list = []
    for round_ in range(3):
        before = len(trials)
        child = start_child(storage, study, 400, 7, 1, "slow")  # the search runs ahead of a slow storage
        finished, reported = read_until_stored(child, rng.randint(5, 40))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # lines printed before the kill, still in the pipe
        child.wait()
        finished += rest.count("@evaluated")
        reported += rest.count("@stored")
        trials = stored_trials(storage, study)
        assert len(trials) >= before + reported  # every trial reported stored is there
        lost = before + finished - len(trials)
        assert 0 <= lost <= 50, f"round {round_}: {lost} finished trials lost"  # the bound: 50 trials
        assert_clean(trials)
    before = len(trials)
    child = start_child(storage, study, 25, seed=7)
    out = child.stdout.read()  # (not communicate(timeout=...): it would skip what readline() buffered)
    assert child.wait(timeout=300) == 0 and "result interrupted=False stored=25" in out
    trials = stored_trials(storage, study)
    assert len(trials) == before + 25
    assert_clean(trials)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "jobs"), [(signal.SIGTERM, 1), (signal.SIGINT, 2)])
def test_sigterm_and_sigint_store_every_finished_trial(tmp_path, signum, jobs):
    storage, study = f"journal:{tmp_path / 't.journal'}", "term"
    child = start_child(storage, study, 2000, seed=3, jobs=jobs)
    finished, reported = read_until_stored(child, random.Random(jobs).randint(10, 40))
    os.kill(child.pid, signum)
    rest = child.stdout.read()
    child.wait(timeout=120)
    finished += rest.count("@evaluated")
    reported += rest.count("@stored")
    assert child.returncode == 0 and "result interrupted=True" in rest
    trials = stored_trials(storage, study)
    assert len(trials) == reported == finished  # nothing finished was lost, the bar saw every stored trial
    assert_clean(trials)


def test_a_failing_progress_callback_never_stops_the_storing():
    storage = InMemoryStorage()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "p")

    def broken(_trial):
        raise ValueError("display gone")

    writer = study_store.TrialWriter(storage, study_id, broken)
    writer.start()
    for k in range(7):
        writer.put(record(k))
    writer.close()
    assert [t.number for t in storage.get_all_trials(study_id)] == list(range(7))


def test_a_storage_that_fails_stops_the_search_with_one_redacted_line():
    class Failing(InMemoryStorage):
        def create_new_trial(self, study_id, template_trial=None):
            raise ConnectionError("server at postgresql://grtr:hunter2@db:5432/x closed the connection")

    storage = Failing()
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "f")
    writer = study_store.TrialWriter(storage, study_id)
    writer.start()
    writer.put(record(1))
    with pytest.raises(study_store.StorageError) as caught:
        writer.close()
    assert "1 finished trial(s) could not be stored" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "grtr:***@db" in str(caught.value)
    assert isinstance(caught.value, config.ConfigError)  # main.py: one line on stderr, exit code 2
