"""A console for tuning a strategy by hand: change a parameter, rerun the walk-forward at once, compare.

    python interactive_tester.py [--strategy LONG] [--source sample] [--symbol BTCUSDT] [--timeframe 1h]
                                 [--params FILE] [--folds 5]
    python interactive_tester.py < session.txt      # scripted: same output, no prompts

The dataset and its indicators are loaded once; a run is the walk-forward validation of
``main.py validate`` on the current params, answered in milliseconds after the first.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import backtester
import config
import gates
import walkforward
import reporting
from data_fetcher import DataError, load_candles

COMMANDS = {
    "show": "show the current params",
    "set": "set NAME VALUE: change a param (checked against its type and range)",
    "undo": "undo the last change",
    "reset": "reset [best|start]: go back to the best run's params (default) or to the start",
    "run": "walk-forward validation of the current params, compared with the previous run and the best",
    "best": "show the best run so far and its params",
    "diff": "params that differ from the best and from the start",
    "sweep": "sweep NAME FROM TO STEPS: run the param over a range; shows where results are flat or fall off",
    "plot": "write report.html (equity, drawdown, trades) and equity.png of the current params",
    "save": "save long|short: write the params to prod_config_long.py / prod_config_short.py (backup kept)",
    "load": "load FILE: take params from a JSON file (e.g. best_params.json)",
    "help": "this list",
    "exit": "leave",
}
COMPARED = (("mean_test_sharpe", "test Sharpe", "{:.2f}"), ("compounded_test_return", "test return", "{:+.1%}"),
            ("worst_test_drawdown", "worst test DD", "{:.1%}"), ("test_trades", "test trades", "{:d}"),
            ("profitable_folds", "profitable folds", "{:d}"))


@dataclass
class Session:
    """The tester's state: params, their history, the runs, the best one."""

    data: backtester.MarketData
    params: dict[str, Any]
    folds: int
    out_dir: Path
    prod_dir: Path
    console: Console
    start: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    best_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.start = dict(self.params)

    # --- commands ---------------------------------------------------------------------------
    def do_show(self, args: list[str]) -> None:
        table = Table(title="current params", show_header=False)
        for name in sorted(self.params):
            table.add_row(name, str(self.params[name]))
        self.console.print(table)

    def do_set(self, args: list[str]) -> None:
        if len(args) != 2:
            raise UserError("usage: set NAME VALUE")
        name, raw = args
        value = parse_value(name, raw)
        new = config.validate_params({name: value}, "set", base=self.params)
        self.history.append(dict(self.params))
        self.params = new
        self.console.print(f"{name} = {self.params[name]}")

    def do_undo(self, args: list[str]) -> None:
        if not self.history:
            raise UserError("nothing to undo")
        self.params = self.history.pop()
        self.console.print("undone")

    def do_reset(self, args: list[str]) -> None:
        target = args[0] if args else "best"
        if target not in ("best", "start"):
            raise UserError("usage: reset [best|start]")
        if target == "best" and self.best_params is None:
            raise UserError("no run yet: nothing is best")
        self.history.append(dict(self.params))
        self.params = dict(self.best_params if target == "best" else self.start)
        self.console.print(f"reset to the {target}")

    def do_run(self, args: list[str]) -> None:
        result = self.validate(self.params)
        self.print_run(result)
        agg = result["aggregate"]
        if self.best is None or agg["mean_test_sharpe"] > self.best["mean_test_sharpe"]:
            self.best, self.best_params = dict(agg), dict(self.params)
            self.console.print("[bold green]new best[/]")
        self.last = dict(agg)

    def do_best(self, args: list[str]) -> None:
        if self.best is None:
            raise UserError("no run yet")
        figures = ", ".join(f"{label} {fmt.format(self.best[key])}" for key, label, fmt in COMPARED)
        self.console.print(f"best: {figures}")
        self.console.print(", ".join(f"{k}={v}" for k, v in sorted(self.best_params.items())))

    def do_diff(self, args: list[str]) -> None:
        for label, other in (("best", self.best_params), ("start", self.start)):
            if other is None:
                self.console.print(f"vs {label}: no run yet")
                continue
            changed = [f"{k}: {other[k]} -> {v}" for k, v in sorted(self.params.items()) if other.get(k) != v]
            self.console.print(f"vs {label}: " + ("; ".join(changed) if changed else "no difference"))

    def do_sweep(self, args: list[str]) -> None:
        if len(args) != 4:
            raise UserError("usage: sweep NAME FROM TO STEPS")
        name, low, high, steps = args
        spec = config.check_param_name(name, "sweep")
        if spec.kind not in ("int", "float"):
            raise UserError(f"'{name}' is a {spec.kind} parameter; sweep takes a numeric one")
        try:
            count = int(steps)
            grid = np.linspace(float(low), float(high), count)
        except ValueError:
            raise UserError(f"FROM, TO and STEPS must be numbers, got {low!r}, {high!r}, {steps!r}") from None
        if count < 2:
            raise UserError("STEPS must be at least 2")
        values = sorted({int(round(v)) for v in grid}) if spec.kind == "int" else [float(v) for v in grid]
        table = Table(title=f"sweep of {name}")
        for column in ("value", "test Sharpe", "test return", "worst DD", "trades"):
            table.add_column(column, justify="right")
        sharpes = []
        for value in values:
            params = config.validate_params({name: value}, "sweep", base=self.params)
            agg = self.validate(params)["aggregate"]
            sharpes.append(agg["mean_test_sharpe"])
            table.add_row(f"{value:g}", f"{agg['mean_test_sharpe']:.2f}", f"{agg['compounded_test_return']:+.1%}",
                          f"{agg['worst_test_drawdown']:.1%}", str(agg["test_trades"]))
        self.console.print(table)
        for line in robustness(values, sharpes):
            self.console.print(line)

    def do_plot(self, args: list[str]) -> None:
        result = backtester.backtest(self.data, self.params)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        report = reporting.write_report_html(self.out_dir / "report.html", result.equity, result.trades,
                                             result.metrics, result.candles, "interactive tester")
        png = self.out_dir / "equity.png"
        write_equity_png(png, result.equity)
        self.console.print(f"wrote {report} and {png}")

    def do_save(self, args: list[str]) -> None:
        if len(args) != 1 or args[0] not in ("long", "short"):
            raise UserError("usage: save long|short")
        if gates.side_of(self.params) != args[0]:
            raise UserError(f"mode {self.params['mode']} trades the {gates.side_of(self.params)} side; "
                            f"use save {gates.side_of(self.params)}")
        path = gates.export_prod_config(self.params, {"source": "interactive_tester", "run": self.last,
                                                      "gates": "none: hand-tuned, no hold-out, DSR or PBO"},
                                         self.prod_dir)
        self.console.print(f"saved {path}")

    def do_load(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UserError("usage: load FILE")
        new = config.load_params_file(args[0], base=self.params)
        self.history.append(dict(self.params))
        self.params = new
        self.console.print(f"loaded {args[0]}")

    def do_help(self, args: list[str]) -> None:
        for name, text in COMMANDS.items():
            self.console.print(f"  {name:6s} {text}")

    # --- helpers ----------------------------------------------------------------------------
    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Walk-forward of ``params`` on the loaded dataset (indicators cached)."""
        return walkforward.stability_across_periods(self.data, params, self.folds)

    def print_run(self, result: dict[str, Any]) -> None:
        """Per-fold table, the overall figures with their changes, and realism warnings."""
        table = Table(title="walk-forward")
        for column in ("fold", "train ret", "train Sharpe", "test ret", "test Sharpe", "test DD", "test trades",
                       "test PF"):
            table.add_column(column, justify="right")
        for row in result["folds"]:
            table.add_row(str(row["fold"]), f"{row['train_total_return']:+.1%}", f"{row['train_sharpe']:.2f}",
                          f"{row['test_total_return']:+.1%}", f"{row['test_sharpe']:.2f}",
                          f"{row['test_max_drawdown']:.1%}", str(row["test_num_trades"]),
                          reporting.format_metric("profit_factor", row["test_profit_factor"]))
        self.console.print(table)
        agg = result["aggregate"]
        overall = Table(title="overall")
        for column in ("figure", "value", "vs previous", "vs best"):
            overall.add_column(column, justify="right")
        for key, label, fmt in COMPARED:
            overall.add_row(label, fmt.format(agg[key]), change(agg[key], self.last, key),
                            change(agg[key], self.best, key))
        self.console.print(overall)
        caps = config.OBJECTIVE_FILTERS
        for row in result["folds"]:
            if row["test_sharpe"] > caps["max_sharpe"] or row["test_profit_factor"] > caps["max_profit_factor"]:
                self.console.print(f"[bold yellow]warning: fold {row['fold']} looks unrealistic (test Sharpe "
                                   f"{row['test_sharpe']:.2f}, profit factor {row['test_profit_factor']:.2f}; caps "
                                   f"{caps['max_sharpe']:g} and {caps['max_profit_factor']:g})[/]")


class UserError(Exception):
    """A command the tester refuses, with the reason."""


def parse_value(name: str, raw: str) -> Any:
    """A command-line word as the parameter's kind (true/false, numbers, lists like 1,2,3)."""
    spec = config.check_param_name(name, "set")
    if spec.kind == "bool":
        if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
            raise UserError(f"'{name}' takes true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "on")
    if spec.kind == "levels":
        try:
            return [float(v) for v in raw.strip("[]").split(",")]
        except ValueError:
            raise UserError(f"'{name}' takes numbers separated by commas, e.g. 1,2,3; got {raw!r}") from None
    if spec.kind in ("int", "float"):
        try:
            number = float(raw)
        except ValueError:
            raise UserError(f"'{name}' takes a number in [{spec.low}, {spec.high}], got {raw!r}") from None
        return int(number) if spec.kind == "int" and number.is_integer() else number
    return raw


def change(value: float, reference: dict[str, Any] | None, key: str) -> str:
    """The change against a reference run, green when better, red when worse."""
    if reference is None:
        return "-"
    delta = value - reference[key]
    if abs(delta) < 1e-12:
        return "="
    if key == "test_trades":
        return f"{delta:+.4g}"  # more trades is neither better nor worse
    return f"[{'green' if delta > 0 else 'red'}]{delta:+.4g}[/]"  # higher is better, drawdowns included (< 0)


def robustness(values: list[float], sharpes: list[float]) -> list[str]:
    """Where a sweep is flat (robust) and where it falls off a cliff."""
    if len(values) < 2:
        return []
    span = max(sharpes) - min(sharpes)
    if span < 1e-9:
        return ["flat over the whole range: the parameter does not matter here"]
    lines = []
    steps = [abs(b - a) for a, b in zip(sharpes, sharpes[1:], strict=False)]
    flat = [f"{values[k]:g}..{values[k + 1]:g}" for k, s in enumerate(steps) if s <= 0.1 * span]
    cliffs = [f"{values[k]:g} -> {values[k + 1]:g} ({sharpes[k]:.2f} -> {sharpes[k + 1]:.2f})"
              for k, s in enumerate(steps) if s >= 0.5 * span]
    if flat:
        lines.append("flat (robust): " + ", ".join(flat))
    if cliffs:
        lines.append("cliff: " + ", ".join(cliffs))
    best = int(np.argmax(sharpes))
    lines.append(f"best test Sharpe {sharpes[best]:.2f} at {values[best]:g}")
    return lines


def write_equity_png(path: Path, equity: Any) -> None:
    """A PNG of the equity curve (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(equity["time"], equity["equity"], linewidth=1)
    ax.set_title("Equity")
    ax.set_ylabel("USDT")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def execute(session: Session, line: str) -> bool:
    """Run one command line; False when the session should end."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        session.console.print(f"[red]error: {exc}[/]")
        return True
    if not words:
        return True
    command, args = words[0].lower(), words[1:]
    if command in ("exit", "quit"):
        return False
    handler = getattr(session, f"do_{command}", None)
    if handler is None:
        session.console.print(f"[red]error: unknown command '{command}'; commands: {', '.join(COMMANDS)}[/]")
        return True
    try:
        handler(args)
    except (UserError, config.ConfigError, DataError) as exc:
        session.console.print(f"[red]error: {exc}[/]")
    return True


def run_lines(session: Session, lines: Iterable[str]) -> None:
    """Scripted use: every line a command, echoed so the output reads like the console."""
    for line in lines:
        session.console.print(f"> {line.rstrip()}")
        if not execute(session, line):
            break


def run_prompt(session: Session) -> None:
    """Interactive use with history, completion and the allowed range shown while typing."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory

    history = session.out_dir.parent / ".tester_history"
    history.parent.mkdir(parents=True, exist_ok=True)
    completer = WordCompleter([*COMMANDS, *config.PARAM_SPECS, "long", "short", "best", "start"])

    def toolbar() -> str:
        words = prompt.app.current_buffer.text.split()
        if len(words) >= 2 and words[0] in ("set", "sweep") and words[1] in config.PARAM_SPECS:
            spec = config.PARAM_SPECS[words[1]]
            allowed = f"[{spec.low}, {spec.high}]" if spec.low is not None else (spec.choices or spec.kind)
            return f"{words[1]}: {spec.kind} {allowed} now {session.params.get(words[1])} - {spec.doc}"
        return "commands: " + " ".join(COMMANDS)

    prompt = PromptSession(history=FileHistory(str(history)), completer=completer, bottom_toolbar=toolbar)
    while True:
        try:
            line = prompt.prompt("grtr> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not execute(session, line):
            break


def main(argv: list[str] | None = None) -> int:
    """Open the console on the chosen strategy and data."""
    parser = argparse.ArgumentParser(description="GrTr's console for tuning a strategy by hand.")
    parser.add_argument("--strategy", default=config.ACTIVE_STRATEGY_KEY, help="strategy key (default: %(default)s)")
    parser.add_argument("--source", default=config.DEFAULT_SOURCE, help="sample, csv:PATH or bybit")
    parser.add_argument("--symbol", default=config.SYMBOLS[0], help="instrument (default: %(default)s)")
    parser.add_argument("--timeframe", default=None, help="bar length (default: the strategy's)")
    parser.add_argument("--params", default=None, help="JSON params file to start from")
    parser.add_argument("--folds", type=int, default=config.WF_FOLDS, help="walk-forward folds (default: %(default)s)")
    parser.add_argument("--out", default=str(config.RESULTS_DIR / "tester"), help="where plot writes its files")
    parser.add_argument("--prod-dir", default=str(config.BASE_DIR), help="where save writes prod_config_*.py")
    args = parser.parse_args(argv)
    console = Console(width=120) if not sys.stdout.isatty() else Console()
    try:
        params = config.fixed_params(args.strategy)
        if args.params:
            params = config.load_params_file(args.params, base=params)
        if args.timeframe:
            params = config.validate_params({"timeframe": args.timeframe}, "--timeframe", base=params)
        params["symbol"] = args.symbol
        candles = load_candles(args.source, args.symbol, params["timeframe"])
        data = backtester.MarketData(candles, args.symbol, params["timeframe"])
        walkforward.fold_ranges(len(data), args.folds, config.WF_TRAIN_RATIO, walkforward.lookback_bars(params))
    except (config.ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    session = Session(data, params, args.folds, Path(args.out), Path(args.prod_dir), console)
    if sys.stdin.isatty():
        console.print(f"{args.strategy} on {args.symbol} {params['timeframe']} ({len(data):,} bars). Type help.")
        run_prompt(session)
    else:
        run_lines(session, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
