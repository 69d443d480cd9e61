"""Where a study's trials live: storage URLs (passwords redacted), the durable writer, worker seeds.

* ``open_storage`` accepts the default journal file, ``journal:PATH``, any Optuna RDB URL
  (``sqlite:///PATH``, ``postgresql://USER:PASSWORD@HOST:PORT/DB`` through psycopg 3) and
  ``:memory:`` (one process only). Every message that names a URL shows it with its password
  replaced by ``***``.
* ``TrialWriter`` stores finished trials in the order they finish, behind the search but never far
  behind: ``put`` waits while ``MAX_PENDING`` trials are waiting or the oldest has waited
  ``MAX_DELAY_S``, so a SIGKILL loses at most that batch, and ``close`` stores the rest. On an RDB
  a batch is one transaction (Optuna writes a trial with about a hundred statements; here a batch
  of up to 50 takes six), in Optuna's own schema, so optuna-dashboard and ``optuna.load_study``
  read it as any study.
* ``worker_seed`` derives each worker's sampler seed from the study seed, the worker id and the
  trials already in the study, so that workers on one or many machines never draw the same
  sequence; ``claim_worker`` refuses a worker id another live process of the study holds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import distribution_to_json
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial

import config

logger = logging.getLogger(__name__)

MAX_PENDING = 50      # trials finished but not yet stored, at most
MAX_DELAY_S = 1.0     # seconds the oldest of them may wait, at most
WORKER_STALE_S = 60.0  # a worker registration older than this (on another host) is free to take over
RDB_OPEN_ATTEMPTS = 4

ACCEPTED_STORAGE = ("journal:PATH, sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB (psycopg 3; "
                    "postgresql+psycopg:// is the same), or :memory:")


def redact(text: str, url: str | None = None) -> str:
    """``text`` with the password of every ``scheme://user:password@`` (and of ``url``) replaced by ***."""
    if url:
        password = _password_of(url)
        if password:
            text = text.replace(password, "***")
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _password_of(url: str) -> str | None:
    match = re.match(r"\w[\w+.-]*://[^:/@\s]*:([^@\s]*)@", url)
    if not match or not match.group(1):
        return None
    from urllib.parse import unquote

    return unquote(match.group(1))


def default_journal() -> Path:
    """The default study storage: an append-only journal file under results/."""
    return config.RESULTS_DIR / "studies.journal"


def open_storage(url: str | None) -> BaseStorage:
    """The storage named by ``url`` (None: the default journal file), or one clear error."""
    shown = redact(url) if url else str(default_journal())
    try:
        if url is None or url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):]) if url else default_journal()
            if not str(path):
                raise config.ConfigError("journal: needs a file path, as in journal:results/studies.journal")
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url == ":memory:":
            return InMemoryStorage()
        if "://" not in url:
            raise config.ConfigError(f"storage '{shown}' is not a storage URL; accepted: {ACCEPTED_STORAGE}")
        return _open_rdb(url)
    except config.ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver error: name the URL (redacted) and stop before work
        raise config.ConfigError(f"cannot open study storage '{shown}': {driver_line(exc, url)}; accepted: "
                                 f"{ACCEPTED_STORAGE}, on a file this user can write or a server that answers"
                                 ) from None


def driver_line(error: BaseException, url: str | None) -> str:
    """A driver's error in one line, its password redacted: SQLAlchemy's "(Background on this error at: ...)"
    line left out, the other lines (psycopg's hints) joined."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("(Background on this error at:")]
    return redact(" ".join(lines) or type(error).__name__, url)


def _open_rdb(url: str) -> RDBStorage:
    """RDBStorage(url); retried a little, because machines that start together on an empty database race
    to create Optuna's tables (one of them sees "already exists" once)."""
    kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else None
    for attempt in range(RDB_OPEN_ATTEMPTS):
        try:
            return RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:  # noqa: BLE001 - the schema race raises driver-specific errors
            if attempt == RDB_OPEN_ATTEMPTS - 1 or "already exists" not in str(exc):
                raise
            time.sleep(0.2 + random.random() * 0.5)
    raise AssertionError("unreachable")


def is_shared(storage: BaseStorage) -> bool:
    """Whether other processes can see the storage (everything but :memory:)."""
    return not isinstance(storage, InMemoryStorage)


def worker_seed(seed: int, worker_id: int, local_index: int, trials_before: int) -> int:
    """The sampler seed of one worker: distinct for every (worker id, local worker, study size)."""
    return int(np.random.SeedSequence([seed, worker_id, local_index, trials_before]).generate_state(1)[0])


def claim_worker(storage: BaseStorage, study_id: int, label: str) -> None:
    """Register worker ``label`` on the study, or refuse it when another live process holds it."""
    key = f"grtr_worker:{label}"
    held = storage.get_study_system_attrs(study_id).get(key)
    host = socket.gethostname()
    if isinstance(held, dict) and (held.get("host"), held.get("pid")) != (host, os.getpid()):
        if held.get("host") == host:
            alive = _pid_alive(int(held.get("pid", 0)))
        else:
            alive = time.time() - float(held.get("beat", 0)) < WORKER_STALE_S
        if alive:
            raise config.ConfigError(f"worker id {label.split('.')[0]} of this study is in use by {held.get('host')} "
                                     f"pid {held.get('pid')}; give each machine its own --worker-id (0, 1, 2, ...)")
    beat_worker(storage, study_id, label)


def beat_worker(storage: BaseStorage, study_id: int, label: str) -> None:
    """Mark worker ``label`` alive now."""
    storage.set_study_system_attr(study_id, f"grtr_worker:{label}",
                                  {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()})


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StorageError(config.ConfigError):
    """The study storage stopped accepting trials (a database gone, a disk full): one line, URL redacted."""


class TrialWriter(threading.Thread):
    """Stores finished trials in order from a background thread, never more than a bounded batch behind."""

    def __init__(self, storage: BaseStorage, study_id: int,
                 on_stored: Callable[[FrozenTrial], None] | None = None) -> None:
        super().__init__(daemon=True, name="trial-writer")
        self.storage = storage
        self.study_id = study_id
        self.on_stored = on_stored
        self._pending: list[tuple[float, FrozenTrial]] = []
        self._cond = threading.Condition()
        self._closing = False
        self.stored = 0
        self.error: Exception | None = None

    def put(self, trial: FrozenTrial) -> None:
        """Queue a finished trial; waits first while the batch bound (count or age) is reached."""
        with self._cond:
            while self.error is None and self._pending and (
                    len(self._pending) >= MAX_PENDING or time.monotonic() - self._pending[0][0] >= MAX_DELAY_S):
                self._cond.wait(0.05)
            if self.error is not None:
                raise StorageError(f"the study storage stopped accepting trials: {driver_line(self.error, None)}")
            self._pending.append((time.monotonic(), trial))
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = [t for _, t in self._pending[:MAX_PENDING]]
            try:
                stored = store_trials(self.storage, self.study_id, batch)
            except Exception as exc:  # noqa: BLE001 - reported by put() and close(), never lost silently
                logger.error("could not store trials in the study storage: %s", redact(str(exc)))
                with self._cond:
                    self.error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                del self._pending[:len(batch)]
                self.stored += len(batch)
                self._cond.notify_all()
            if self.on_stored:
                for trial in stored:
                    try:
                        self.on_stored(trial)
                    except Exception as exc:  # noqa: BLE001 - a progress display never stops the storing
                        logger.error("progress callback failed on trial %s: %s", trial.number, exc)

    def close(self) -> None:
        """Store everything queued, then stop; raises if some trial could not be stored."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.join()
        if self.error:
            lost = len(self._pending)
            raise StorageError(f"{lost} finished trial(s) could not be stored in the study storage: "
                               f"{driver_line(self.error, None)}")


def store_trials(storage: BaseStorage, study_id: int, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Store finished trials; returns them with the numbers the storage gave them."""
    if isinstance(storage, RDBStorage):
        numbers = _store_rdb(storage, study_id, trials)
    else:
        numbers = [storage.get_trial_number_from_id(storage.create_new_trial(study_id, template_trial=t))
                   for t in trials]
    out = []
    for trial, number in zip(trials, numbers, strict=True):
        stored = FrozenTrial(number=number, state=trial.state, value=trial.value, values=None,
                             datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                             params=trial.params, distributions=trial.distributions, user_attrs=trial.user_attrs,
                             system_attrs=trial.system_attrs, intermediate_values={}, trial_id=-1)
        out.append(stored)
    return out


def _utc_naive(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment else None


def _store_rdb(storage: RDBStorage, study_id: int, trials: list[FrozenTrial]) -> list[int]:
    """Insert finished trials in one transaction, in Optuna's schema, numbered as Optuna numbers them.

    The study row is locked first (PostgreSQL, MySQL), as Optuna's own create_new_trial does, so
    that the numbers (count of the study's trials with a smaller trial_id) are unique across
    processes; on SQLite the first INSERT takes the database write lock, which does the same.
    """
    from sqlalchemy import bindparam, func, insert, select, update
    from optuna.storages._rdb import models

    trial_t = models.TrialModel.__table__
    with storage.engine.begin() as conn:
        if conn.dialect.name != "sqlite":
            conn.execute(select(models.StudyModel.__table__.c.study_id)
                         .where(models.StudyModel.__table__.c.study_id == study_id).with_for_update())
        rows = [{"study_id": study_id, "state": t.state, "datetime_start": _utc_naive(t.datetime_start),
                 "datetime_complete": _utc_naive(t.datetime_complete)} for t in trials]
        ids = list(conn.execute(insert(trial_t).returning(trial_t.c.trial_id, sort_by_parameter_order=True),
                                rows).scalars())
        base = conn.execute(select(func.count()).select_from(trial_t)
                            .where(trial_t.c.study_id == study_id, trial_t.c.trial_id < ids[0])).scalar_one()
        numbers = [base + k for k in range(len(ids))]
        conn.execute(update(trial_t).where(trial_t.c.trial_id == bindparam("tid")).values(number=bindparam("num")),
                     [{"tid": tid, "num": num} for tid, num in zip(ids, numbers, strict=True)])
        values, params, user, system = [], [], [], []
        for tid, t in zip(ids, trials, strict=True):
            if t.value is not None:
                stored, kind = models.TrialValueModel.value_to_stored_repr(t.value)
                values.append({"trial_id": tid, "objective": 0, "value": stored, "value_type": kind})
            for name, value in t.params.items():
                dist = t.distributions[name]
                params.append({"trial_id": tid, "param_name": name, "param_value": dist.to_internal_repr(value),
                               "distribution_json": distribution_to_json(dist)})
            user += [{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in t.user_attrs.items()]
            system += [{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in t.system_attrs.items()]
        for model, batch in ((models.TrialValueModel, values), (models.TrialParamModel, params),
                             (models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
            if batch:
                conn.execute(insert(model.__table__), batch)
    return numbers


def new_trial(params: dict[str, Any], distributions: dict[str, Any], value: float, user_attrs: dict[str, Any],
              system_attrs: dict[str, Any]) -> FrozenTrial:
    """A finished trial ready for ``TrialWriter.put``."""
    return optuna.trial.create_trial(params=params, distributions=distributions, value=value,
                                     user_attrs=user_attrs, system_attrs=system_attrs)
