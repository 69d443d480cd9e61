"""Why the trader stopped, in one line, and the record of it: logs/trader.log and a ``fatal`` event.

``describe`` turns the exception that ends a run into a ``Failure``: one line naming the cause and
what to do (a bad key or secret, an unknown symbol, a damaged state file, a read-only folder, a
full disk...), Bybit's retCode where there is one, and the exit code: 2 when the user must fix
something (the watchdog does not restart it), 1 for anything else (it does). ``report`` writes it
to the folder's trader.log and events.jsonl before the process exits, so the watchdog can alert
with the reason. Every text passes the secret redaction; a 10004 answer's echo of the signed
request (it holds the key) is dropped altogether.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import traceback
from dataclasses import dataclass
from pathlib import Path

from pybit.exceptions import FailedRequestError, InvalidRequestError

import config
from cli import UsageError
from data_fetcher import DataError
from exchange import ExchangeRefused
from trader_lock import LockHeld
from trader_store import StateError
from trader_utils import ExchangeUnavailable, KeyPermissionError, UnknownSymbol, bybit_env, key_source, redact

logger = logging.getLogger("grtr.trader")
EXIT_FIX = 2          # the user must fix something: no restart helps
EXIT_UNEXPECTED = 1   # anything else: a restart may help
USER_ERRORS = (UsageError, config.ConfigError, DataError, KeyPermissionError, LockHeld, StateError, UnknownSymbol,
               ExchangeRefused)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class Failure:
    """One run's end: the line to show, the exit code, Bybit's retCode and the exception's type."""

    line: str
    exit_code: int
    ret_code: int | None = None
    error: str = ""


def _bybit_line(code: int, message: str, symbol: str) -> tuple[str, int]:
    """(line, exit code) of a Bybit business error that ended the start-up or a bar."""
    source = key_source()
    env = bybit_env()
    if code == 10003:
        return (f"Bybit does not know this API key (retCode 10003: {message}): check BYBIT_API_KEY (read from "
                f"{source}) and that the key was made for {env} (testnet, demo and mainnet keys differ)", EXIT_FIX)
    if code == 10004:
        return (f"Bybit refused the request signature (retCode 10004): BYBIT_API_SECRET (read from "
                f"{key_source('BYBIT_API_SECRET')}) is not the secret of BYBIT_API_KEY; after a rotation put the "
                "new secret there", EXIT_FIX)
    if code == 33004:
        return f"the API key has expired (retCode 33004: {message}): create a new key", EXIT_FIX
    if code == 10005:
        return (f"the API key lacks a permission (retCode 10005: {message}): it needs Contract Orders and Positions",
                EXIT_FIX)
    if code == 10010:
        return (f"the API key is bound to other IP addresses (retCode 10010: {message}): add this machine's IP to "
                "the key", EXIT_FIX)
    if code == 10001 and "symbol" in message.lower():
        return (f"Bybit refused the symbol {symbol} (retCode 10001: {message}): check --symbol or the params' "
                "symbol (a linear USDT perpetual such as BTCUSDT)", EXIT_FIX)
    return f"Bybit refused a request (retCode {code}: {message})", EXIT_UNEXPECTED


def _file_line(error: OSError | sqlite3.Error, workdir: Path) -> str | None:
    """The line of a file-system failure (full disk, read-only folder), or None when it is not one."""
    if isinstance(error, OSError) and error.errno is not None:
        where = error.filename or workdir
        if error.errno in NO_SPACE:
            return (f"no space left to write {where} ({error.strerror}): free space on that disk (or raise the "
                    "file size limit), then start the trader again; open positions stay under their exchange stops")
        if error.errno in NOT_WRITABLE:
            return (f"cannot write {where} ({error.strerror}): the trader's folders must be writable; fix their "
                    "permissions or choose another --dir")
        return None
    text = str(error).lower()
    if "disk is full" in text or "disk i/o error" in text:
        return (f"the trader's database in {workdir} cannot be written ({error}): free space on that disk, then "
                "start the trader again; open positions stay under their exchange stops")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return (f"the trader's database in {workdir} cannot be written ({error}): the working folder must be "
                "writable; choose another --dir or fix its permissions")
    return None


def describe(error: BaseException, workdir: Path, symbol: str = "") -> Failure:
    """The Failure an exception means (secrets redacted)."""
    kind = type(error).__name__
    code = None
    if isinstance(error, ExchangeRefused):  # the adapter's form of a refused request: never retried, so no
        code = int(error.code)                 # restart helps either
        line, exit_code = _bybit_line(code, scrub(str(error.message)), symbol)[0], EXIT_FIX
    elif isinstance(error, USER_ERRORS):
        line, exit_code = str(error), EXIT_FIX
    elif isinstance(error, InvalidRequestError):
        code = int(error.status_code)
        line, exit_code = _bybit_line(code, scrub(str(error.message)), symbol)
    elif isinstance(error, FailedRequestError):
        line, exit_code = f"Bybit answered HTTP {error.status_code} ({error.message}): try again later", EXIT_UNEXPECTED
    elif isinstance(error, ExchangeUnavailable):
        line, exit_code = f"{error}: check the network; positions stay under their exchange stops", EXIT_UNEXPECTED
    elif isinstance(error, (OSError, sqlite3.Error)) and _file_line(error, workdir):
        line, exit_code = _file_line(error, workdir), EXIT_FIX
    elif isinstance(error, ValueError):
        line, exit_code = str(error), EXIT_FIX
    else:
        line, exit_code = f"unexpected {kind}: {error} (the traceback is in {workdir / 'logs' / 'trader.log'})", \
            EXIT_UNEXPECTED
    return Failure(scrub(" ".join(line.split())), exit_code, code, kind)


def scrub(text: str) -> str:
    """``text`` without secrets, and without the signed request a 10004 answer echoes (it holds the key)."""
    return redact(re.sub(r"origin_string\[.*?\](?=\W|$)", "origin_string[...]", text, flags=re.S))


def report(workdir: Path, symbol: str, failure: Failure, error: BaseException) -> str | None:
    """Write the failure to logs/trader.log (with the traceback of an unexpected one) and as a ``fatal``
    event to logs/events.jsonl; returns why that was impossible (a full disk, a read-only folder), or None."""
    from trader import EventLog, setup_logging  # the trader's own files, in its own formats

    try:
        setup_logging(workdir)
        logger.error("fatal: %s", failure.line)
        if not isinstance(error, USER_ERRORS):
            logger.info("traceback of the fatal error:\n%s", scrub("".join(traceback.format_exception(error))))
        EventLog(workdir / "logs" / "events.jsonl", symbol).emit(
            "fatal", None, pid=os.getpid(), error=failure.error, message=failure.line, ret_code=failure.ret_code,
            exit_code=failure.exit_code)
    except OSError as exc:
        return f"it could not be recorded in {workdir / 'logs'} ({exc.strerror})"
    return None
