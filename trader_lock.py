"""One trader per account and symbol: file locks on the working folder and on the account, and a lease.

Two traders on one folder, or on one account and symbol, trade against each other's positions.
``TraderLock`` takes, before the trader opens anything:

- an exclusive OS lock (``fcntl.flock``) on ``<folder>/trader.lock``;
- an exclusive OS lock on a file of this user's lock folder named by a hash of the REST endpoint,
  the API key and the symbol (never the key itself), so that a second folder on the same account
  and symbol is refused too.

The kernel releases both when the process ends, however it ends. Each lock file holds its holder
(pid, host, folder, since); a lock that is free but still names a holder was left by a trader that
died: it is taken over, with a warning. The lease row in ``state.sqlite`` (``claim_lease``) records
the same holder with the database itself, for a folder shared between hosts, where file locks may
not reach: a lease of another host whose heartbeat is recent is respected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

LOCK_FILE = "trader.lock"
LOCK_DIR_VARIABLE = "GRTR_LOCK_DIR"


class LockHeld(Exception):
    """Another trader holds the folder or the account and symbol: one line naming it, exit code 2."""


def process_alive(pid: int, started_ms: int | None) -> bool:
    """True when ``pid`` runs and is not a zombie nor a newer process that reused the pid."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created_ms = process.create_time() * 1000
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return started_ms is None or created_ms <= started_ms + 2000


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: pid, host, working folder and start time."""

    pid: int
    host: str
    folder: str
    since_ms: int

    @classmethod
    def me(cls, folder: Path) -> Holder:
        """This process, trading in ``folder``."""
        return cls(os.getpid(), socket.gethostname(), str(folder.resolve()), int(time.time() * 1000))

    @classmethod
    def parse(cls, data: Any) -> Holder | None:
        """A holder from its JSON form, or None when it is missing or not one."""
        try:
            return cls(int(data["pid"]), str(data["host"]), str(data["folder"]), int(data["since_ms"]))
        except (TypeError, KeyError, ValueError):
            return None

    def describe(self) -> str:
        """'pid 123 on host h, folder /x, since 2030-01-01 10:00:00 UTC'."""
        since = datetime.fromtimestamp(self.since_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on host {self.host}, folder {self.folder}, since {since}"


def stale_warning(holder: Holder) -> str:
    """The warning of a lock or lease taken over from a trader that is gone."""
    return f"took over the lock left by {holder.describe()}: that trader is no longer running"


def lock_dir() -> Path:
    """This user's folder of account locks: $GRTR_LOCK_DIR, else $XDG_RUNTIME_DIR/grtr, else ~/.cache/grtr/locks,
    else a folder of the temporary directory named by the user id."""
    chosen = os.environ.get(LOCK_DIR_VARIABLE, "").strip()
    candidates = [Path(chosen)] if chosen else []
    if not chosen:
        if os.environ.get("XDG_RUNTIME_DIR"):
            candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "grtr")
        candidates += [Path.home() / ".cache" / "grtr" / "locks", Path(tempfile.gettempdir()) / f"grtr-{os.getuid()}"]
    for folder in candidates:
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
    raise PermissionError(errno.EACCES, f"no writable folder for the account locks; set {LOCK_DIR_VARIABLE}",
                          str(candidates[0]))


def account_tag(endpoint: str, api_key: str, symbol: str) -> str:
    """The name of an account-and-symbol lock: a hash of endpoint, key and symbol (the key cannot be read back)."""
    digest = hashlib.sha256(f"{endpoint.rstrip('/')}\n{api_key}\n{symbol}".encode()).hexdigest()
    return f"account-{digest[:32]}"


class FileLock:
    """An exclusive flock on ``path`` whose content names its holder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, me: Holder) -> Holder | None:
        """Take the lock; returns the holder a dead trader left in it (None when it was released cleanly).

        Raises LockHeld when a live process holds it (the message names that holder).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise LockHeld(holder.describe() if holder else f"a process that has not written {self.path} yet") \
                from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        previous = self._read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        os.fsync(fd)
        return previous if previous and previous != me else None

    @staticmethod
    def _read(fd: int) -> Holder | None:
        try:
            return Holder.parse(json.loads(os.pread(fd, 4096, 0) or b"null"))
        except ValueError:
            return None

    def release(self) -> None:
        """Forget the holder and unlock (a crash releases the flock too, but leaves the holder: "stale")."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the only descriptor releases the flock
        self.fd = None


class TraderLock:
    """The folder's lock and, when ``account`` is given (see account_tag), the account-and-symbol lock."""

    def __init__(self, folder: Path, account: str | None = None, symbol: str = "") -> None:
        self.folder = folder
        self.account = account
        self.symbol = symbol
        self.me = Holder.me(folder)
        self.locks: list[FileLock] = []
        self.warnings: list[str] = []

    def acquire(self) -> list[str]:
        """Take every lock or none; returns warnings about stale locks taken over. Raises LockHeld."""
        self.folder.mkdir(parents=True, exist_ok=True)
        targets = [(FileLock(self.folder / LOCK_FILE), f"another trader holds the folder {self.folder.resolve()}")]
        if self.account:
            targets.append((FileLock(lock_dir() / f"{self.account}.lock"),
                            f"another trader already trades {self.symbol} with this API key on this machine"))
        warnings = []
        try:
            for lock, held in targets:
                try:
                    stale = lock.acquire(self.me)
                except LockHeld as exc:
                    raise LockHeld(f"{held}: {exc}; one trader per account and symbol: stop it first "
                                   "(or use another --dir, key or symbol)") from None
                self.locks.append(lock)
                if stale is not None and stale_warning(stale) not in warnings:
                    warnings.append(stale_warning(stale))
        except BaseException:
            self.release()
            raise
        self.warnings = warnings
        return warnings

    def release(self) -> None:
        """Release every lock taken."""
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def __enter__(self) -> TraderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_lease(store: Any, me: Holder, heartbeat: Path, stale_seconds: float) -> str | None:
    """Write this trader's lease into ``store`` (state.sqlite); returns a warning when a stale lease was replaced.

    The folder lock is held already, so a lease of this host is over unless its process still runs
    (a trader that never took the lock); a lease of another host counts as held while that trader's
    heartbeat (or its lease, before the first heartbeat) is younger than ``stale_seconds``, and is
    taken over with a warning after that.
    """
    lease = Holder.parse(store.get("lease"))
    warning = None
    if lease is not None and (lease.pid, lease.host) != (me.pid, me.host):
        if lease.host == me.host:  # the folder lock's own record told already whether it ended cleanly
            if process_alive(lease.pid, lease.since_ms):
                raise LockHeld(f"the trader of state.sqlite's lease still runs without the folder lock: "
                               f"{lease.describe()}; stop it first")
        else:
            last_sign = lease.since_ms
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                beat = json.loads(heartbeat.read_text())
                if beat["pid"] == lease.pid:
                    last_sign = max(last_sign, int(beat["time_ms"]))
            age_s = (me.since_ms - last_sign) / 1000
            if age_s < stale_seconds:
                raise LockHeld(f"state.sqlite is leased by a trader on another host: {lease.describe()}, last "
                               f"heartbeat {age_s:.0f} s ago; stop it, or wait {stale_seconds - age_s:.0f} s if it "
                               "is gone")
            warning = stale_warning(lease)
    store.set("lease", asdict(me))
    return warning
