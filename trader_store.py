"""The live trader's state in SQLite (WAL, one transaction per change).

Tables: ``sides`` (each side's core state by slot name, so the layout can evolve), ``orders``
(by orderLinkId), ``executions`` (by execId: each booked exactly once), ``trades`` (the source of
trades.csv), ``equity`` (one row per bar close), ``kv`` (the last bar processed and such) and, when
the trader keeps it (paper replays), ``state_history`` (each side's state after each bar close).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import core

SCHEMA = """
CREATE TABLE IF NOT EXISTS sides (side TEXT PRIMARY KEY, state TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (order_link_id TEXT PRIMARY KEY, side TEXT, action TEXT, payload TEXT,
    status TEXT, order_id TEXT, created_ms INTEGER);
CREATE TABLE IF NOT EXISTS executions (exec_id TEXT PRIMARY KEY, side TEXT, payload TEXT, exec_ms INTEGER);
CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, symbol TEXT, side TEXT, qty REAL, entry_time TEXT,
    exit_time TEXT, entry_price REAL, exit_price REAL, fees REAL, funding REAL, pnl REAL, exit_reason TEXT,
    entry_ms INTEGER, exit_ms INTEGER, entry_bar INTEGER, exit_bar INTEGER);
CREATE TABLE IF NOT EXISTS equity (ts_ms INTEGER PRIMARY KEY, equity REAL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS state_history (side TEXT, bar_ts INTEGER, state TEXT, PRIMARY KEY (side, bar_ts));
"""


def _named_state(named: dict[str, float]) -> np.ndarray:
    """A state vector from slots saved by name (slots missing from an older layout stay 0)."""
    state = np.zeros(core.N_STATE)
    for k, name in enumerate(core.STATE_NAMES):
        state[k] = named.get(name, 0.0)
    return state


class StateError(ValueError):
    """state.sqlite exists but cannot be used (empty, unreadable, not a database, damaged); nothing was changed."""


FRESH_STATE_HINT = ("nothing was changed; if the state is lost, start with --fresh-state: the file is moved aside "
                    "(never deleted) and a new state starts, adopting an open position from the exchange")


def check_state_file(path: Path) -> None:
    """Refuse an existing state file that is empty, unreadable or not a sound SQLite database (StateError).

    SQLite would take an empty file for a new database and start from scratch without a word.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise StateError(f"{path} cannot be read ({exc.strerror}); {FRESH_STATE_HINT}") from None
    if path.is_dir():
        raise StateError(f"{path} is a folder, not the trader's database; {FRESH_STATE_HINT}")
    if size == 0:
        raise StateError(f"{path} is empty (0 bytes): the trader's state is gone; {FRESH_STATE_HINT}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path} is not a readable trader database ({exc}); {FRESH_STATE_HINT}") from None
    if verdict != "ok":
        raise StateError(f"{path} is damaged (SQLite quick_check: {verdict[:200]}); {FRESH_STATE_HINT}")


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename ``path`` and its -wal/-shm companions to ``<path>.aside-<UTC time>`` (openable as they were)."""
    stamp = pd.Timestamp(time.time() if now is None else now, unit="s", tz="UTC").strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.aside-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        companion = path.with_name(path.name + suffix)
        if companion.exists() or companion.is_symlink():
            companion.rename(target.with_name(target.name + suffix))
    return target


def _iso(ms: float) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """One trader's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            check_state_file(self.path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.depth = 0

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def transaction(self) -> Any:
        """A context manager for one atomic change; nested uses join the outermost one.

        The trader handles a whole bar close in one transaction, so a crash at any point rolls the
        database back to the previous bar and the restarted trader handles that bar again.
        """
        return _Transaction(self)

    # state
    def save_state(self, side: str, state: np.ndarray, now_ms: int) -> None:
        """A side's core state, by slot name."""
        named = {name: float(state[k]) for k, name in enumerate(core.STATE_NAMES)}
        self.db.execute("INSERT OR REPLACE INTO sides VALUES (?, ?, ?)", (side, json.dumps(named), now_ms))

    def record_state_history(self, side: str, bar_ts: int, state: np.ndarray) -> None:
        """A side's state as decided at the close of the bar opened at ``bar_ts`` (for --compare's report)."""
        named = {name: float(state[k]) for k, name in enumerate(core.STATE_NAMES)}
        self.db.execute("INSERT OR REPLACE INTO state_history VALUES (?, ?, ?)", (side, bar_ts, json.dumps(named)))

    def state_before(self, side: str, bar_ts: int) -> tuple[int, np.ndarray] | None:
        """(bar open time, state) of the last bar close recorded before the bar opened at ``bar_ts``, or None."""
        row = self.db.execute("SELECT bar_ts, state FROM state_history WHERE side = ? AND bar_ts < ? "
                              "ORDER BY bar_ts DESC LIMIT 1", (side, bar_ts)).fetchone()
        return None if row is None else (int(row[0]), _named_state(json.loads(row[1])))

    def load_state(self, side: str) -> np.ndarray | None:
        """The saved state of ``side`` (slots missing from an older layout stay 0), or None."""
        row = self.db.execute("SELECT state FROM sides WHERE side = ?", (side,)).fetchone()
        return None if row is None else _named_state(json.loads(row[0]))

    # orders and executions
    def record_order(self, link_id: str, side: str, action: str, payload: dict[str, Any], status: str,
                     order_id: str | None, now_ms: int) -> None:
        """An order the trader sent (or is about to send)."""
        self.db.execute("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (link_id, side, action, json.dumps(payload), status, order_id, now_ms))

    def order(self, link_id: str) -> dict[str, Any] | None:
        """An order by its orderLinkId."""
        row = self.db.execute("SELECT side, action, payload, status, order_id FROM orders WHERE order_link_id = ?",
                              (link_id,)).fetchone()
        return None if row is None else {"side": row[0], "action": row[1], "payload": json.loads(row[2]),
                                         "status": row[3], "order_id": row[4]}

    def seen_execution(self, exec_id: str) -> bool:
        """True when the execution was booked already."""
        return self.db.execute("SELECT 1 FROM executions WHERE exec_id = ?", (exec_id,)).fetchone() is not None

    def record_execution(self, exec_id: str, side: str, payload: dict[str, Any], exec_ms: int) -> None:
        """An execution booked into a side's state."""
        self.db.execute("INSERT INTO executions VALUES (?, ?, ?, ?)", (exec_id, side, json.dumps(payload), exec_ms))

    def execution_count(self) -> int:
        """How many executions were booked."""
        return self.db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]

    # trades and equity
    def record_trade(self, symbol: str, row: np.ndarray) -> None:
        """A closed-quantity fill, from core.close_fill's trade row."""
        self.db.execute(
            "INSERT INTO trades (symbol, side, qty, entry_time, exit_time, entry_price, exit_price, fees, funding, "
            "pnl, exit_reason, entry_ms, exit_ms, entry_bar, exit_bar) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (symbol, "long" if row[2] > 0 else "short", float(row[3]), _iso(row[0]), _iso(row[1]), float(row[4]),
             float(row[5]), float(row[6]), float(row[7]), float(row[8]), core.EXIT_REASONS[int(row[9])],
             int(row[0]), int(row[1]), int(row[10]), int(row[11])))

    def trade_rows(self) -> np.ndarray:
        """Every trade as core.TRADE_COLUMNS rows."""
        rows = self.db.execute("SELECT entry_ms, exit_ms, side, qty, entry_price, exit_price, fees, funding, pnl, "
                               "exit_reason, entry_bar, exit_bar FROM trades ORDER BY id").fetchall()
        out = np.zeros((len(rows), core.N_TRADE_COLS))
        for k, r in enumerate(rows):
            out[k] = [r[0], r[1], 1.0 if r[2] == "long" else -1.0, r[3], r[4], r[5], r[6], r[7], r[8],
                      core.EXIT_REASONS.index(r[9]), r[10], r[11]]
        return out

    def record_equity(self, ts_ms: int, equity: float) -> None:
        """Mark-to-market equity at a bar close."""
        self.db.execute("INSERT OR REPLACE INTO equity VALUES (?, ?)", (ts_ms, equity))

    def equity_rows(self) -> list[tuple[int, float]]:
        """(bar close time ms, equity) rows in time order."""
        return self.db.execute("SELECT ts_ms, equity FROM equity ORDER BY ts_ms").fetchall()

    def set(self, key: str, value: Any) -> None:
        """A small value (JSON)."""
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    def get(self, key: str, default: Any = None) -> Any:
        """A small value, or ``default``."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])


class _Transaction:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        if self.store.depth == 0:
            self.store.db.execute("BEGIN IMMEDIATE")
        self.store.depth += 1
        return self.store.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.store.depth -= 1
        if self.store.depth == 0:
            self.store.db.execute("ROLLBACK" if exc_type else "COMMIT")
