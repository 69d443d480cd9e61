"""What every GrTr command line shares: user errors end in one line on stderr and exit code 2.

Importing this module first (before any module that imports config) turns a config.py that fails
its own checks, or that an edit broke, into one line naming the file, the setting and what is
accepted, and exit code 2, instead of a traceback:

    import cli  # first: a bad config.py ends here in one line, exit 2
"""

from __future__ import annotations

import argparse
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
    """argparse whose errors are one line (no usage block) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (--help lists the flags)")


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
