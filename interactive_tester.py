"""A console for tuning a strategy by hand: change a parameter, rerun the walk-forward at once, compare.

    python interactive_tester.py [--strategy LONG] [--source sample] [--symbol BTCUSDT] [--timeframe 1h]
                                 [--params FILE] [--folds 5]
    python interactive_tester.py < session.txt      # scripted: same output, no prompts

The dataset and its indicators are loaded once; a run is the walk-forward validation of
``main.py validate`` on the current params, answered in milliseconds after the first.
"""

from __future__ import annotations

import difflib
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import cli  # first: a bad config.py ends here in one line, exit 2
import backtester
import config
import gates
import progress
import walkforward
import reporting
import strategy_loader
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
# (key, label, unit): a "percent" figure is a fraction shown in %, its changes in percentage points
COMPARED = (("mean_test_sharpe", "test Sharpe", "ratio"), ("compounded_test_return", "test return", "percent"),
            ("worst_test_drawdown", "worst test DD", "percent"), ("test_trades", "test trades", "count"),
            ("profitable_folds", "profitable folds", "count"))


@dataclass
class Session:
    """The tester's state: params, their history, the runs, the best one."""

    data: backtester.MarketData
    params: dict[str, Any]
    folds: int
    out_dir: Path
    prod_dir: Path
    console: Console
    name: str = "strategy"               # the strategy key, for titles
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
            table.add_row(name, escape(str(self.params[name])))
        self.console.print(table)

    def do_set(self, args: list[str]) -> None:
        if len(args) != 2:
            raise UserError("usage: set NAME VALUE")
        name, raw = args
        value = parse_value(name, raw, self.params["mode"])
        new = config.validate_params({name: value}, "set", base=self.params)
        strategy_loader.check_params_look_ahead(new, "set")
        self.history.append(dict(self.params))
        self.params = new
        self.console.print(f"{name} = {self.params[name]}", markup=False)

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
        figures = ", ".join(f"{label} {figure(self.best[key], unit)}" for key, label, unit in COMPARED)
        self.console.print(f"best: {figures}")
        self.console.print(", ".join(f"{k}={v}" for k, v in sorted(self.best_params.items())), markup=False)

    def do_diff(self, args: list[str]) -> None:
        for label, other in (("best", self.best_params), ("start", self.start)):
            if other is None:
                self.console.print(f"vs {label}: no run yet")
                continue
            changed = [f"{k}: {other[k]} -> {v}" for k, v in sorted(self.params.items()) if other.get(k) != v]
            self.console.print(f"vs {label}: " + ("; ".join(changed) if changed else "no difference"), markup=False)

    def do_sweep(self, args: list[str]) -> None:
        if len(args) != 4:
            raise UserError("usage: sweep NAME FROM TO STEPS")
        name, low, high, steps = args
        spec = param_spec(name, "sweep", self.params["mode"])
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
            strategy_loader.check_params_look_ahead(params, "sweep")
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
        title = f"{self.name} {self.params['symbol']} {self.params['timeframe']}: interactive tester"
        report = reporting.write_report_html(self.out_dir / "report.html", result.equity, result.trades,
                                             result.metrics, result.candles, title)
        png = reporting.write_equity_png(self.out_dir / "equity.png", result.equity, title)
        self.console.print(f"wrote {report} and {png}", markup=False)

    def do_save(self, args: list[str]) -> None:
        if len(args) != 1 or args[0] not in ("long", "short"):
            raise UserError("usage: save long|short")
        if gates.side_of(self.params) != args[0]:
            raise UserError(f"mode {self.params['mode']} trades the {gates.side_of(self.params)} side; "
                            f"use save {gates.side_of(self.params)}")
        path = gates.export_prod_config(self.params, {"source": "interactive_tester", "run": self.last,
                                                      "gates": "none: hand-tuned, no hold-out, DSR or PBO"},
                                         self.prod_dir)
        self.console.print(f"saved {path}", markup=False)

    def do_load(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UserError("usage: load FILE")
        new = config.load_params_file(args[0], base=self.params)
        self.history.append(dict(self.params))
        self.params = new
        self.console.print(f"loaded {args[0]}", markup=False)

    def do_help(self, args: list[str]) -> None:
        for name, text in COMMANDS.items():
            self.console.print(f"  {name:6s} {escape(text)}")

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
        for key, label, unit in COMPARED:
            overall.add_row(label, figure(agg[key], unit), change(agg[key], self.last, key, unit),
                            change(agg[key], self.best, key, unit))
        self.console.print(overall)
        caps = config.OBJECTIVE_FILTERS
        for row in result["folds"]:
            if row["test_sharpe"] > caps["max_sharpe"] or row["test_profit_factor"] > caps["max_profit_factor"]:
                self.console.print(f"[bold yellow]warning: fold {row['fold']} looks unrealistic (test Sharpe "
                                   f"{row['test_sharpe']:.2f}, profit factor {row['test_profit_factor']:.2f}; caps "
                                   f"{caps['max_sharpe']:g} and {caps['max_profit_factor']:g})[/]")


class UserError(Exception):
    """A command the tester refuses, with the reason."""


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'; did you mean X?' for the closest known names (difflib), or '' when none is close."""
    close = difflib.get_close_matches(word, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def param_spec(name: str, where: str, mode: str) -> config.ParamSpec:
    """The spec of a parameter of strategy ``mode``; a misspelt name gets the closest names, not the whole list."""
    try:
        return config.check_param_name(name, where, mode)
    except config.UnknownParamError:
        known = config.param_specs(mode)
        raise UserError(f"{where}: unknown parameter '{name}'{did_you_mean(name, known)} (show lists them all)") \
            from None


def parse_value(name: str, raw: str, mode: str) -> Any:
    """A command-line word as the parameter's kind (true/false, numbers, lists like 1,2,3)."""
    spec = param_spec(name, "set", mode)
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


def figure(value: float, unit: str) -> str:
    """A compared figure in its unit: a ratio with 2 decimals, a fraction in %, a count."""
    if unit == "percent":
        return f"{value:+.1%}"
    return f"{value:.2f}" if unit == "ratio" else f"{int(value):d}"


def change(value: float, reference: dict[str, Any] | None, key: str, unit: str) -> str:
    """The change against a reference run in the figure's own unit (percentage points for a %),
    green when better, red when worse."""
    if reference is None:
        return "-"
    delta = value - reference[key]
    if abs(delta) < 1e-12:
        return "="
    text = {"percent": f"{delta * 100:+.1f} pp", "ratio": f"{delta:+.2f}"}.get(unit, f"{int(round(delta)):+d}")
    if key == "test_trades":
        return text  # more trades is neither better nor worse
    return f"[{'green' if delta > 0 else 'red'}]{text}[/]"  # higher is better, drawdowns included (< 0)


def robustness(values: list[float], sharpes: list[float]) -> list[str]:
    """Where a sweep is flat (robust) and where it falls off a cliff.

    A cliff is a drop, never a rise: walking away from the best value, the test Sharpe falls by at
    least half the sweep's range from one value to the next (shown in the direction of the fall).
    """
    if len(values) < 2:
        return []
    span = max(sharpes) - min(sharpes)
    if span < 1e-9:
        return ["flat over the whole range: the parameter does not matter here"]
    best = int(np.argmax(sharpes))
    lines = []
    flat = [f"{values[k]:g}..{values[k + 1]:g}" for k in range(len(values) - 1)
            if abs(sharpes[k + 1] - sharpes[k]) <= 0.1 * span]
    cliffs = []
    for k in range(len(values) - 1):
        high, low = (k + 1, k) if k < best else (k, k + 1)  # from the side nearer the best to the farther
        if sharpes[high] - sharpes[low] >= 0.5 * span:
            cliffs.append(f"{values[high]:g} -> {values[low]:g} ({sharpes[high]:.2f} -> {sharpes[low]:.2f})")
    if flat:
        lines.append("flat (robust): " + ", ".join(flat))
    if cliffs:
        lines.append("cliff (falls off): " + ", ".join(cliffs))
    lines.append(f"best test Sharpe {sharpes[best]:.2f} at {values[best]:g}")
    return lines


def execute(session: Session, line: str) -> bool:
    """Run one command line; False when the session should end."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        session.console.print(f"[red]error: {escape(str(exc))}[/]")
        return True
    if not words:
        return True
    command, args = words[0].lower(), words[1:]
    if command in ("exit", "quit"):
        return False
    handler = getattr(session, f"do_{command}", None) if command in COMMANDS else None
    if handler is None:
        session.console.print(f"[red]error: unknown command '{escape(command)}'{did_you_mean(command, COMMANDS)}; "
                              "help lists the commands[/]")
        return True
    try:
        handler(args)
    except (UserError, config.ConfigError, DataError) as exc:
        session.console.print(f"[red]error: {escape(str(exc))}[/]")
    return True


def run_lines(session: Session, lines: Iterable[str]) -> None:
    """Scripted use: every line a command, echoed so the output reads like the console."""
    for line in lines:
        session.console.print(f"> {line.rstrip()}", markup=False)
        if not execute(session, line):
            break


def run_prompt(session: Session, pt_input: Any = None, pt_output: Any = None) -> None:
    """Interactive use with history, completion and the allowed range shown while typing.

    Ctrl-C cancels the line being typed (or the command running); a second Ctrl-C in a row asks
    before leaving. Ctrl-D or ``exit`` leave at once. ``pt_input``/``pt_output`` are prompt_toolkit's
    input and output (the tests drive the prompt through a pipe).
    """
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory

    history = session.out_dir.parent / ".tester_history"
    history.parent.mkdir(parents=True, exist_ok=True)
    specs = config.param_specs(session.params["mode"])
    completer = WordCompleter([*COMMANDS, *specs, "long", "short", "best", "start"])

    def toolbar() -> str:
        words = prompt.app.current_buffer.text.split()
        if len(words) >= 2 and words[0] in ("set", "sweep") and words[1] in specs:
            spec = specs[words[1]]
            allowed = f"[{spec.low}, {spec.high}]" if spec.low is not None else (spec.choices or spec.kind)
            return f"{words[1]}: {spec.kind} {allowed} now {session.params.get(words[1])} - {spec.doc}"
        return "commands: " + " ".join(COMMANDS)

    prompt = PromptSession(history=FileHistory(str(history)), completer=completer, bottom_toolbar=toolbar,
                           input=pt_input, output=pt_output)
    confirm = PromptSession(input=pt_input, output=pt_output)
    interrupted = False
    while True:
        try:
            line = prompt.prompt("grtr> ")
        except EOFError:
            break
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = True
                session.console.print("[dim]line cancelled (Ctrl-C again to leave, Ctrl-D or exit to leave now)[/]")
                continue
            try:
                answer = confirm.prompt("leave the tester? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = "y"  # a third Ctrl-C: the user means it
            if answer.strip().lower() in ("y", "yes"):
                break
            interrupted = False
            continue
        interrupted = False
        try:
            if not execute(session, line):
                break
        except KeyboardInterrupt:
            session.console.print("[yellow]interrupted: the command was cancelled, the params are unchanged[/]")


def main(argv: list[str] | None = None) -> int:
    """Open the console on the chosen strategy and data."""
    parser = cli.Parser(prog="interactive_tester.py", description="GrTr's console for tuning a strategy by hand.")
    parser.add_argument("--strategy", default=config.ACTIVE_STRATEGY_KEY,
                        help="library key, strategy NAME or strategy file (default: %(default)s)")
    parser.add_argument("--strategy-path", action="append", default=[], metavar="DIR",
                        help="a folder of strategy files of your own (or one file); may be given several times")
    parser.add_argument("--source", default=config.DEFAULT_SOURCE, help="sample, csv:PATH or bybit")
    parser.add_argument("--symbol", default=config.SYMBOLS[0], help="instrument (default: %(default)s)")
    parser.add_argument("--timeframe", default=None, help="bar length (default: the strategy's)")
    parser.add_argument("--params", default=None, help="JSON params file to start from")
    parser.add_argument("--folds", type=cli.bounded(config.FLAG_BOUNDS["--folds"]), default=config.WF_FOLDS,
                        help="walk-forward folds (default: %(default)s)")
    parser.add_argument("--out", default=str(config.RESULTS_DIR / "tester"), help="where plot writes its files")
    parser.add_argument("--prod-dir", default=str(config.BASE_DIR), help="where save writes prod_config_*.py")
    args = parser.parse_args(argv)
    console = Console(width=120) if not sys.stdout.isatty() else Console()
    try:
        out, prod_dir = cli.writable_folder(args.out, "--out"), cli.writable_folder(args.prod_dir, "--prod-dir")
        for path in args.strategy_path:
            strategy_loader.add_path(path)
        params = config.fixed_params(args.strategy)
        if args.params:
            params = config.load_params_file(args.params, base=params)
        if args.timeframe:
            params = config.validate_params({"timeframe": args.timeframe}, "--timeframe", base=params)
        params["symbol"] = config.check_param("symbol", args.symbol, "--symbol")
        candles = load_candles(args.source, args.symbol, params["timeframe"])
        data = backtester.MarketData(candles, args.symbol, params["timeframe"])
        walkforward.fold_ranges(len(data), args.folds, config.WF_TRAIN_RATIO, walkforward.lookback_bars(params))
    except (config.ConfigError, DataError, cli.UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    progress.announce_compiles()
    session = Session(data, params, args.folds, out, prod_dir, console, args.strategy)
    if sys.stdin.isatty():
        console.print(f"{args.strategy} on {args.symbol} {params['timeframe']} ({len(data):,} bars). Type help.")
        run_prompt(session)
    else:
        run_lines(session, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
