"""What every GrTr command line shares: user errors end in one line on stderr and exit code 2.

Importing this module first (before any module that imports config) turns a config.py that fails
its own checks, or that an edit broke, into one line naming the file, the setting and what is
accepted, and exit code 2, instead of a traceback:

    import cli  # first: a bad config.py ends here in one line, exit 2
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
MAINNET_CONFIRM_VARIABLE = "GRTR_CONFIRM_MAINNET"  # the account UID that confirms unattended mainnet runs
CONFIG_FILE = Path(__file__).resolve().with_name("config.py")


class UsageError(Exception):
    """A refused command line or start-up, reported in one line with exit code 2."""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _config_line(error: BaseException) -> str:
    """One line on why config.py could not be imported: its own check's message, or the edit that broke it."""
    if type(error).__name__ == "ConfigError":
        return str(error) if str(error).startswith(CONFIG_FILE.name) else f"{CONFIG_FILE.name}: {error}"
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).name == CONFIG_FILE.name:
        return f"{CONFIG_FILE.name} line {error.lineno}: {error.msg}: fix the edit there"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == CONFIG_FILE]
    where = f" line {frames[-1].lineno}" if frames else ""
    return f"{CONFIG_FILE.name}{where}: {type(error).__name__}: {error}: fix the edit there"


try:
    import config  # noqa: F401  (imported here so that its checks fail in one line)
except Exception as exc:  # any error while config.py runs comes from an edit of it
    fail(_config_line(exc))


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) with exit code 2; a flag given an empty value
    (``--symbols ""``, ``--out=``) is refused, never taken for the flag's default."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (--help lists the flags)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.option_strings and getattr(namespace, action.dest, None) == "":
                self.error(f"argument {'/'.join(action.option_strings)}: '' is refused; accepted: a non-empty value")
        return namespace, extras


FOLDER_ACCEPTED = "a folder, or a path where one can be made, that this user can write"


def writable_folder(path: str | Path, flag: str) -> Path:
    """``path`` when the run can write its files there: a writable folder, or a path whose nearest existing
    parent is one (nothing is made here); else a UsageError naming it, why, and what is accepted.

    Called before any work, so that a file in the path or a folder without write permission ends in one
    line at the start rather than in a traceback when the results are written.
    """
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = f"{existing} exists and is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} cannot be written here (its permissions, or a read-only file system)"
    else:
        return path
    raise UsageError(f"{flag} {path} is refused: {why}; accepted: {FOLDER_ACCEPTED}")


def check_yes(mainnet: bool, yes: bool) -> None:
    """--yes skips the typed confirmation of mainnet only: without --mainnet it is refused, since a user who
    gives it expects some confirmation to matter (and may believe real money is traded)."""
    if yes and not mainnet:
        raise UsageError("--yes is refused without --mainnet: it only skips the typed confirmation of mainnet "
                         "(testnet, demo and paper runs ask for none); accepted: --mainnet --yes, or neither")


def bounded(bound: Any) -> Any:
    """An argparse type for a number flag checked against ``bound`` (a config.Bound)."""
    def parse(text: str) -> float | int:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is refused; accepted: {bound.describe()}") from None
        if not bound.accepts(value):
            raise argparse.ArgumentTypeError(f"{text} is refused; accepted: {bound.describe()}")
        return int(value) if bound.whole else value

    parse.__name__ = "number"
    return parse
