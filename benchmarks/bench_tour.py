"""The README's 10-minute tour, run end to end as a new user runs it: every command, in order, on the bundled
sample, offline, in a fresh copy of this checkout in a temporary folder; each step's key output checked and
its duration measured (the figures the README quotes).

    python benchmarks/bench_tour.py            # the tour exactly as the README gives it
    python benchmarks/bench_tour.py --quick    # small trial counts and a shorter replay (the test suite runs this)
    python benchmarks/bench_tour.py --cold     # without the numba cache: the first run's compile included

The copy holds the checkout's files (git's list: tracked and untracked, not ignored) and, unless --cold,
the compiled numba cache, so that it measures the tour rather than a compile. The fake Telegram and the
watchdog run in the background beside the paper replay, as the tour's second and third terminals, and
are stopped at the end. Each step's output goes to stderr as it is checked; the last line of stdout is
one JSON object with every step's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_PORT = 8081  # the README's port; the run takes a free one and puts it in the watchdog's URL


@dataclass
class Step:
    """One command of the tour as the README prints it, what its output must show, and its --quick flags."""

    name: str
    command: str
    expect: list[str]
    quick: list[str] = field(default_factory=list)  # appended with --quick (a flag given again wins)


TELEGRAM = (f"TELEGRAM_API_URL=http://127.0.0.1:{FAKE_PORT} TELEGRAM_BOT_TOKEN=123456:FAKE-token "
            "TELEGRAM_CHAT_ID=1001")
WATCHDOG = "python watchdog.py --dir results/tour/paper"
STEPS = [
    Step("backtest", "python main.py backtest --out results/tour/backtest",
         [r"LONG BTCUSDT 1h backtest", r"Exit reasons", r"wrote results/tour/backtest/trades\.csv, .*report\.html"]),
    Step("optimize", "python main.py optimize --trials 100 --out results/tour/optimize --prod-dir results/tour",
         [r"hold-out 2019-05-08 00:00 \.\. 2019-10-01", r"this run stored \d+ in",
          r"re-optimizing walk-forward \(\d+ trials a fold\): 100%", r"random baseline \(hold-out percentile\)",
          r"export gates", r"wrote results/tour/optimize/best_params\.json"],
         ["--trials", "20", "--fold-trials", "10", "--folds", "3", "--baseline-draws", "100"]),
    Step("validate", "python main.py validate --params results/tour/optimize/best_params.json "
                     "--out results/tour/validate",
         [r"stability across periods: \d/5 profitable test windows", r"wrote results/tour/validate/validation\.json"]),
    Step("export-candles", "python main.py export-candles --symbol BTCUSDT --timeframe 1h --start 2019-07-01 "
                           "--out results/tour/btc_1h.csv",
         [r"wrote [\d,]+ 1h bars of BTCUSDT \(sample\), 2019-0[79]-01 00:00 \.\. 2019-10-01 00:00 UTC"],
         ["--start", "2019-09-01"]),
    Step("fake Telegram", f"python tests/fake_telegram.py --port {FAKE_PORT}",
         [r"fake Telegram on http://127\.0\.0\.1:\d+; for watchdog\.py:"]),
    Step("watchdog", f"mkdir -p results/tour/paper && {TELEGRAM} {WATCHDOG}", []),
    Step("paper replay", "python run_live.py --paper --replay results/tour/btc_1h.csv --side long "
                         "--params results/tour/optimize/best_params.json --out results/tour/paper --compare",
         [r"paper replay BTCUSDT 1h: 100%", r"paper replay: \d+ bars, \d+ orders",
          r"paper log \(logs/events\.jsonl, logs/trader\.log\): \d+ rejected order\(s\), 0 error\(s\), "
          r"0 warning\(s\)", r"long: (\d+) paper trades, \1 backtest trades: EQUAL",
          r"paper log vs the compared trades: "]),
    Step("/pnl 30", "/pnl 30", [r"Trader started BTCUSDT \(paper\)", r"Trader stopped BTCUSDT: replay finished",
                                r"PnL, last 30 d \(paper replay: its bars to 2019-10-01", r"^trades: \d+ \(\d+ won",
                                r"^drawdown: -?[\d.]+% now, deepest"]),
]
COMPILE_NOTICE = "compiling the numba core"


def copy_checkout(target: Path, warm: bool) -> None:
    """The checkout's files into ``target`` (times kept: numba's cache is keyed by the sources' mtime and size)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        names = [n for n in listed.stdout.splitlines() if (ROOT / n).is_file()]
    else:  # not a git checkout: everything but outputs, caches and environments
        skip = {"results", "data", ".venv", ".ci-venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    if warm:
        names += [str(p.relative_to(ROOT)) for p in (ROOT / "__pycache__").glob("*.nb[ic]")]
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)


def argv_of(command: str, extra: list[str]) -> list[str]:
    """A README command line as argv: ``python`` is this interpreter."""
    words = command.split()
    return [sys.executable if words[0] == "python" else words[0], *words[1:], *extra]


class Background:
    """A process of a second terminal: its output collected line by line, stopped with SIGINT (as Ctrl-C)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], stdin: bool = False) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line (read so far or coming) that matches ``pattern``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.seen if re.search(pattern, line)), None)
            if found:
                return found
            try:
                self.seen.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s; got:\n"
                                     + "".join(self.seen[-40:])) from None

    def type(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def check(step: Step, output: str, code: int, seconds: float) -> None:
    """The step's exit code 0 and each expected line in its output; the output goes to stderr."""
    print(f"--- {step.name}: {step.command}  ({seconds:.1f} s)\n{output}", file=sys.stderr, flush=True)
    if code != 0:
        raise AssertionError(f"{step.name}: exit code {code}")
    missing = [pattern for pattern in step.expect if not re.search(pattern, output, re.M)]
    if missing:
        raise AssertionError(f"{step.name}: its output lacks {missing}")


def run_tour(folder: Path, quick: bool) -> dict[str, float]:
    """Every step in order in ``folder``; returns each step's seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "BYBIT_"))}
    # offline: Bybit's endpoints point at the discard port (nothing listens there), so a request to Bybit would
    # fail the step; the paper replay points them at its own local Bybit
    env.update(PYTHONUNBUFFERED="1", BYBIT_REST_URL="http://127.0.0.1:9", BYBIT_WS_URL="ws://127.0.0.1:9")
    seconds: dict[str, float] = {}
    steps = {s.name: s for s in STEPS}
    background: list[Background] = []
    try:
        for name in ("backtest", "optimize", "validate", "export-candles"):
            step = steps[name]
            started = time.perf_counter()
            done = subprocess.run(argv_of(step.command, step.quick if quick else []), cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=1800)
            seconds[name] = round(time.perf_counter() - started, 1)
            output = (done.stdout + done.stderr).replace("\r", "\n")
            check(step, output, done.returncode, seconds[name])
            if name != "backtest" and COMPILE_NOTICE in output:
                raise AssertionError(f"{name}: the numba cache was warm, yet it announced a compile")
            if name == "backtest":
                report = folder / "results/tour/backtest/report.html"
                assert report.stat().st_size < 2_000_000 and (report.parent / "plotly.min.js").exists()
                assert 'src="plotly.min.js"' in report.read_text()
        step = steps["fake Telegram"]
        started = time.perf_counter()
        fake = Background(argv_of(step.command.replace(str(FAKE_PORT), "0"), []), folder, env, stdin=True)
        background.append(fake)
        url = re.search(r"on (http://127\.0\.0\.1:\d+);", fake.wait_for(step.expect[0], 60)).group(1)
        seconds["fake Telegram"] = round(time.perf_counter() - started, 1)
        (folder / "results/tour/paper").mkdir(parents=True, exist_ok=True)
        watched = {**env, "TELEGRAM_API_URL": url, "TELEGRAM_BOT_TOKEN": "123456:FAKE-token",
                   "TELEGRAM_CHAT_ID": "1001"}
        background.append(Background(argv_of(WATCHDOG, []), folder, watched))
        step = steps["paper replay"]
        started = time.perf_counter()
        done = subprocess.run(argv_of(step.command, []), cwd=folder, env=env, capture_output=True, text=True,
                              timeout=1800)
        seconds["paper replay"] = round(time.perf_counter() - started, 1)
        check(step, (done.stdout + done.stderr).replace("\r", "\n"), done.returncode, seconds["paper replay"])
        step = steps["/pnl 30"]
        started = time.perf_counter()
        fake.wait_for(step.expect[1], 120)  # the watchdog relayed the whole replay
        fake.type(step.command)
        fake.wait_for(step.expect[-1], 60)  # the answer's last line
        seconds["/pnl 30"] = round(time.perf_counter() - started, 1)
        check(step, "".join(fake.seen), 0, seconds["/pnl 30"])
    finally:
        for process in reversed(background):
            process.stop()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trial counts and a shorter replay")
    parser.add_argument("--cold", action="store_true", help="do not copy the numba cache (measure the first run)")
    parser.add_argument("--keep", default=None, help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grtr-tour-") as temporary:
        folder = Path(args.keep or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        copy_checkout(folder, warm=not args.cold)
        try:
            seconds = run_tour(folder, args.quick)
        except AssertionError as exc:
            print(f"tour FAILED: {exc}", file=sys.stderr)
            return 1
    figures = {"quick": args.quick, "cold": args.cold, "steps_s": seconds,
               "total_s": round(time.perf_counter() - started, 1)}
    for name, value in seconds.items():
        print(f"{name:16s} {value:7.1f} s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
