"""What the watchdog reads of the trader: its event log, heartbeat, log tail and database, and control.json.

One job: the trader's files, read as they are written (the event log from a persisted position through
rotations; heartbeat.json, logs/trader.log's tail, state.sqlite read-only) and the one file the watchdog
writes for it (control.json, for /pause and /resume). Nothing here decides or alerts: watchdog.py does.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger("grtr.watchdog")  # the watchdog's log (setup_logging's handlers redact the token)


# ----------------------------------------------------------------------------------------------
# The event log
# ----------------------------------------------------------------------------------------------
class EventReader:
    """logs/events.jsonl read from a persisted position (inode, first bytes, offset).

    The trader rotates by renaming the file to ``events.jsonl.1``; when the file at the path is no
    longer the one being read, the rest of the renamed one is read first, then the new one from 0.
    Only complete lines are consumed. With no saved position, an existing log is read from its end
    (earlier events are not replayed); a log that appears later is read from its start.
    """

    HEAD_BYTES = 64

    def __init__(self, path: Path, position: dict[str, Any] | None) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        if position is None:
            found = self._identity(path)
            self.ino, self.head, self.offset = (found[0], found[2], found[1]) if found else (None, b"", 0)
            if found:
                logger.info("%s exists: reading from its end (%d bytes are not replayed)", path, found[1])
        else:
            self.ino, self.head, self.offset = position["ino"], bytes.fromhex(position["head"]), position["offset"]

    def position(self) -> dict[str, Any]:
        """What to persist to resume exactly here."""
        return {"ino": self.ino, "head": self.head.hex(), "offset": self.offset}

    def _identity(self, path: Path) -> tuple[int, int, bytes] | None:
        """(inode, size, first bytes) of ``path``, or None when it does not exist."""
        try:
            with path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                return stat.st_ino, stat.st_size, handle.read(self.HEAD_BYTES)
        except FileNotFoundError:
            return None

    def _same(self, found: tuple[int, int, bytes] | None) -> bool:
        return found is not None and found[0] == self.ino and found[2].startswith(self.head)

    def read(self) -> list[dict[str, Any]]:
        """The complete events appended since the last read, in order."""
        events: list[dict[str, Any]] = []
        current = self._identity(self.path)
        if self.ino is not None and not self._same(current):
            if self._same(self._identity(self.rotated)):
                events += self._read_from(self.rotated)
            else:
                logger.error("%s was replaced and its previous file is gone (rotated twice between two reads?): "
                             "events after offset %d of the old file are lost", self.path, self.offset)
            self.ino, self.head, self.offset = None, b"", 0
        if current is None:
            return events
        if self.ino is None:
            self.ino, self.head, self.offset = current[0], current[2], 0
        elif current[1] < self.offset:
            logger.warning("%s shrank below the read position: reading it again from its start", self.path)
            self.offset = 0
        return events + self._read_from(self.path)

    def _read_from(self, path: Path) -> list[dict[str, Any]]:
        try:
            with path.open("rb") as handle:
                if os.fstat(handle.fileno()).st_ino != self.ino:
                    return []  # replaced since it was looked at: the next read follows the rotation
                if len(self.head) < self.HEAD_BYTES:
                    self.head = handle.read(self.HEAD_BYTES)
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                logger.error("%s: unreadable line skipped: %r", path.name, line[:200])
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def last_lifecycle(path: Path, tail_bytes: int = 1_000_000) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last ``start`` event of an event log and the ``stop`` that followed it (None when it has not
    stopped), from the log's last ``tail_bytes`` and, when they hold no start, its rotated file."""
    start: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            with candidate.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
                data = handle.read()
        except OSError:
            continue
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a partial first line of the tail, or an unreadable one
            if not isinstance(event, dict):
                continue
            if event.get("event") == "start" and isinstance(event.get("pid"), int):
                start, stop = event, None
            elif event.get("event") == "stop" and start is not None:
                stop = event
        if start is not None:
            return start, stop
    return None, None


# ----------------------------------------------------------------------------------------------
# The trader's files
# ----------------------------------------------------------------------------------------------
def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """heartbeat.json, or None when it is missing or unreadable."""
    try:
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s unreadable: %s", path, exc)
        return None
    if not isinstance(beat, dict) or not isinstance(beat.get("pid"), int) or not isinstance(beat.get("time_ms"), int):
        logger.warning("%s lacks pid or time_ms", path)
        return None
    return beat


def log_tail(path: Path, lines: int, clean: Callable[[str], str]) -> list[str]:
    """The last ``lines`` lines of a text file (missing file: none), each cut to 200 characters and passed
    through ``clean`` (the token's redaction)."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [clean(line[:200]) for line in text.splitlines()[-lines:]]


def iso_ms(text: Any) -> int | None:
    """An ISO-8601 time as epoch milliseconds (UTC when no offset is given), or None."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def write_control(workdir: Path, paused: bool, now_ms: int) -> None:
    """control.json, atomically: the trader reads it at each bar."""
    tmp = workdir / "control.json.tmp"
    tmp.write_text(json.dumps({"paused": paused, "updated_ms": now_ms, "by": "watchdog"}))
    os.replace(tmp, workdir / "control.json")


def _query_read_only(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the trader's database, opened read-only; none when it does not exist yet."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def read_trades(db_path: Path) -> list[dict[str, Any]]:
    """The trader's trades table (read-only), oldest first."""
    keys = ("symbol", "side", "qty", "entry_time", "exit_time", "entry_price", "exit_price", "fees", "funding", "pnl",
            "exit_reason")
    rows = _query_read_only(db_path, f"SELECT {', '.join(keys)} FROM trades ORDER BY id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def read_equity(db_path: Path) -> list[tuple[int, float]]:
    """The trader's equity table (read-only): (ts_ms, equity) in time order."""
    return _query_read_only(db_path, "SELECT ts_ms, equity FROM equity ORDER BY ts_ms")

