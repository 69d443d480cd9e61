"""Console tables, the files a run leaves (trades.csv, equity.csv, metrics.json), report.html and its figures.

report.html needs no network: plotly.js is written once beside it as ``plotly.min.js`` (config
``REPORT_PLOTLYJS = "directory"``, the default, which keeps the page itself small) or inlined into it
(``"inline"``: one file to mail, 4.8 MB more). Long curves and histories are drawn thinned, and the
page says so where it does.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots
from rich.console import Console
from rich.table import Table

import config
from metrics import json_safe

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

MAX_CANDLES_DRAWN = 5_000
MAX_CURVE_POINTS = 4_000        # equity and drawdown: each bucket's lowest and highest point are kept
MAX_TRADE_MARKERS = 300         # beyond this many trades the price chart opens on the trade summary
MAX_TRADES_DRAWN = 20_000       # the newest trades drawn one by one behind the toggle
SUMMARY_BUCKETS = 120           # periods of the trade summary
PLOTLYJS_FILE = "plotly.min.js"

PERCENT = {"total_return", "cagr", "max_drawdown", "win_rate", "exposure"}
SUMMARY_ROWS = (("total_return", "Return"), ("cagr", "CAGR"), ("sharpe", "Sharpe"), ("sortino", "Sortino"),
                ("calmar", "Calmar"), ("max_drawdown", "Max drawdown"), ("profit_factor", "Profit factor"),
                ("win_rate", "Win rate"), ("expectancy", "Expectancy (USDT)"), ("num_trades", "Trades"),
                ("exposure", "Exposure"), ("avg_hold_hours", "Average hold (h)"),
                ("initial_capital", "Initial capital"), ("final_equity", "Final equity"),
                ("total_fees", "Fees"), ("total_funding", "Funding"))
FOLD_FIGURES = (("total_return", "Return"), ("sharpe", "Sharpe"), ("max_drawdown", "Max DD"),
                ("num_trades", "Trades"), ("profit_factor", "PF"))


def format_metric(name: str, value: Any) -> str:
    """A metric as people read it: percentages with %, money with 2 decimals, counts as integers."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, float) and np.isinf(value):
        return "inf"
    if name in PERCENT:
        return f"{value * 100:.2f}%"
    if name == "num_trades":
        return f"{int(value)}"
    return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.3f}"


def print_summary(metrics: dict[str, Any], title: str, console: Console | None = None) -> None:
    """Print the summary table of one run."""
    console = console or Console()
    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, label in SUMMARY_ROWS:
        if key in metrics:
            table.add_row(label, format_metric(key, metrics[key]))
    reasons = {k: v for k, v in metrics.get("exit_reasons", {}).items() if v}
    table.add_row("Exit reasons", ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none")
    console.print(table)


def _iso(series: pd.Series) -> pd.Series:
    return series.dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_trades_csv(path: Path, trades: pd.DataFrame) -> None:
    """trades.csv: one row per fill that closes quantity, ISO-8601 UTC times."""
    out = trades.copy()
    for column in ("entry_time", "exit_time"):
        out[column] = _iso(out[column])
    out.to_csv(path, index=False)


def write_equity_csv(path: Path, equity: pd.DataFrame) -> None:
    """equity.csv: time, equity, drawdown (and the position) at every bar close."""
    out = equity.copy()
    out["time"] = _iso(out["time"])
    out.to_csv(path, index=False)


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    """metrics.json in strict JSON (inf/NaN as null)."""
    path.write_text(json.dumps(json_safe(metrics), indent=2) + "\n")


def write_backtest_outputs(out_dir: str | Path, trades: pd.DataFrame, equity: pd.DataFrame, metrics: dict[str, Any],
                           candles: pd.DataFrame, title: str) -> dict[str, Path]:
    """Write trades.csv, equity.csv, metrics.json and report.html into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trades": out / "trades.csv", "equity": out / "equity.csv", "metrics": out / "metrics.json",
             "report": out / "report.html"}
    write_trades_csv(paths["trades"], trades)
    write_equity_csv(paths["equity"], equity)
    write_metrics_json(paths["metrics"], metrics)
    write_report_html(paths["report"], equity, trades, metrics, candles, title)
    return paths


# ----------------------------------------------------------------------------------------------
# Figures of a backtest
# ----------------------------------------------------------------------------------------------
def epoch_ms(times: Any) -> np.ndarray:
    """UTC times as epoch milliseconds (float64): plotly draws them on a date axis from 11 bytes a
    point instead of a 26-character string."""
    index = pd.DatetimeIndex(times)
    if index.tz is None:
        index = index.tz_localize("UTC")
    return index.as_unit("ms").asi8.astype(np.float64)


def envelope(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ~``max_points`` points that keep a curve's shape: the first and last point and
    each bucket's lowest and highest value (so no peak or trough is lost)."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    edges = np.linspace(0, n, max(max_points // 2, 1) + 1).astype(np.int64)
    keep = [0, n - 1]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo:
            segment = values[lo:hi]
            keep += [lo + int(np.argmin(segment)), lo + int(np.argmax(segment))]
    return np.unique(np.array(keep, dtype=np.int64))


def equity_figure(equity: pd.DataFrame, title: str = "Equity and drawdown") -> go.Figure:
    """Equity curve above its drawdown, thinned to MAX_CURVE_POINTS with every peak and trough kept."""
    values = equity["equity"].to_numpy(np.float64)
    drawdown = equity["drawdown"].to_numpy(np.float64) * 100
    keep = np.union1d(envelope(values, MAX_CURVE_POINTS // 2), envelope(drawdown, MAX_CURVE_POINTS // 2))
    x = epoch_ms(equity["time"])[keep]
    if len(keep) < len(values):
        title += f" (drawn at {len(keep):,} of {len(values):,} bar closes, every peak and trough kept)"
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04)
    fig.add_trace(go.Scattergl(x=x, y=values[keep], name="equity", line={"width": 1.2}), 1, 1)
    fig.add_trace(go.Scattergl(x=x, y=drawdown[keep], name="drawdown %", fill="tozeroy",
                               line={"width": 0.8, "color": "firebrick"}), 2, 1)
    fig.update_layout(title=title, height=520, margin={"t": 50, "b": 30})
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text="USDT", row=1, col=1)
    fig.update_yaxes(title_text="drawdown %", row=2, col=1)
    return fig


def trade_summary(trades: pd.DataFrame, candles: pd.DataFrame, buckets: int = SUMMARY_BUCKETS) -> pd.DataFrame:
    """Trades grouped into ``buckets`` equal periods by exit time: entries, exits, won exits, net PnL,
    and the period's high (where its marker sits)."""
    edges = np.linspace(epoch_ms(candles.index[:1])[0], epoch_ms(candles.index[-1:])[0] + 1, buckets + 1)
    exit_bucket = np.clip(np.searchsorted(edges, epoch_ms(trades["exit_time"]), side="right") - 1, 0, buckets - 1)
    entries = trades.drop_duplicates(["side", "entry_time"])
    entry_bucket = np.clip(np.searchsorted(edges, epoch_ms(entries["entry_time"]), side="right") - 1, 0, buckets - 1)
    candle_bucket = np.clip(np.searchsorted(edges, epoch_ms(candles.index), side="right") - 1, 0, buckets - 1)
    pnl = trades["pnl"].to_numpy(np.float64)
    frame = pd.DataFrame({
        "start_ms": edges[:-1], "end_ms": edges[1:],
        "entries": np.bincount(entry_bucket, minlength=buckets),
        "exits": np.bincount(exit_bucket, minlength=buckets),
        "won": np.bincount(exit_bucket, weights=(pnl > 0).astype(float), minlength=buckets).astype(int),
        "pnl": np.bincount(exit_bucket, weights=pnl, minlength=buckets),
        "high": pd.Series(candles["high"].to_numpy()).groupby(candle_bucket).max().reindex(range(buckets)).to_numpy(),
    })
    return frame[(frame["entries"] + frame["exits"]) > 0].reset_index(drop=True)


def _date(ms: float) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d")


def _summary_trace(trades: pd.DataFrame, candles: pd.DataFrame) -> go.Scatter:
    summary = trade_summary(trades, candles)
    text = [f"{_date(r.start_ms)} .. {_date(r.end_ms)}<br>{r.entries} entries, {r.exits} exits ({r.won} won)<br>"
            f"PnL {r.pnl:+,.2f} USDT" for r in summary.itertuples()]
    size = 6 + 14 * np.sqrt(summary["exits"] / max(summary["exits"].max(), 1))
    colour = np.where(summary["pnl"] >= 0, "seagreen", "firebrick")
    return go.Scatter(x=(summary["start_ms"] + summary["end_ms"]) / 2, y=summary["high"] * 1.02, mode="markers",
                      name=f"trades per period ({len(trades):,} exits)", text=text, hoverinfo="text",
                      marker={"symbol": "circle", "size": size, "color": colour, "opacity": 0.8,
                              "line": {"width": 0.5, "color": "black"}})


def candles_figure(candles: pd.DataFrame, trades: pd.DataFrame) -> tuple[go.Figure, str]:
    """Candles with entry and exit markers; long histories are drawn at a coarser bar size.

    Past MAX_TRADE_MARKERS trades, single markers would cover the chart: it opens on one marker per
    period (size: exits, colour: net PnL, hover: the counts), and a button or the legend shows every
    entry and exit instead.
    """
    notes = []
    drawn = candles
    if len(candles) > MAX_CANDLES_DRAWN:
        factor = -(-len(candles) // MAX_CANDLES_DRAWN)
        step = (candles.index[1] - candles.index[0]) * factor
        drawn = candles.resample(step, label="left", closed="left").agg(
            {"open": "first", "high": "max", "low": "min", "close": "last"}).dropna()
        notes.append(f"Candles drawn at {factor}x the bar size ({len(drawn):,} of {len(candles):,} bars) "
                     "to keep the page light.")
    fig = go.Figure(go.Candlestick(x=epoch_ms(drawn.index), open=drawn["open"], high=drawn["high"], low=drawn["low"],
                                   close=drawn["close"], name="price"))
    if len(trades):
        summarised = len(trades) > MAX_TRADE_MARKERS
        shown = trades.iloc[-MAX_TRADES_DRAWN:]
        if len(shown) < len(trades):
            notes.append(f"'every entry and exit' draws the newest {len(shown):,} of {len(trades):,} trade rows.")
        hidden: Any = "legendonly" if summarised else True
        entries = shown.drop_duplicates(["side", "entry_time"])
        marker_type = go.Scattergl if len(shown) > MAX_TRADE_MARKERS else go.Scatter
        fig.add_trace(marker_type(x=epoch_ms(entries["entry_time"]), y=entries["entry_price"], mode="markers",
                                  name="entry", visible=hidden,
                                  marker={"symbol": "triangle-up", "size": 8, "color": "royalblue"}))
        fig.add_trace(marker_type(x=epoch_ms(shown["exit_time"]), y=shown["exit_price"], mode="markers", name="exit",
                                  text=shown["exit_reason"], visible=hidden,
                                  marker={"symbol": "x", "size": 7, "color": "darkorange"}))
        if summarised:
            fig.add_trace(_summary_trace(trades, candles))
            fig.update_layout(updatemenus=[{
                "type": "buttons", "direction": "right", "x": 0, "xanchor": "left", "y": 1.12, "yanchor": "top",
                "buttons": [
                    {"label": "trades per period", "method": "restyle",
                     "args": [{"visible": [True, "legendonly", "legendonly", True]}]},
                    {"label": "every entry and exit", "method": "restyle",
                     "args": [{"visible": [True, True, True, "legendonly"]}]}]}])
            notes.append(f"{len(trades):,} trade rows: shown as one marker per period (size: exits, colour: net "
                         "PnL); the buttons above the chart or its legend show every entry and exit.")
    fig.update_layout(title={"text": "Price with entries and exits", "y": 0.98}, height=560,
                      xaxis_rangeslider_visible=False, xaxis_type="date", margin={"t": 90})
    return fig, " ".join(notes)


def exit_reasons_figure(metrics: dict[str, Any]) -> go.Figure:
    """Bar chart of exit reasons, each bar labelled with its count."""
    reasons = {k: v for k, v in metrics.get("exit_reasons", {}).items() if v}
    fig = go.Figure(go.Bar(x=list(reasons), y=list(reasons.values()), text=list(reasons.values()),
                           textposition="auto"))
    fig.update_layout(title="Exit reasons", height=320)
    return fig


def metrics_table_html(metrics: dict[str, Any]) -> str:
    """The summary figures as an HTML table."""
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(format_metric(key, metrics[key]))}</td></tr>"
                   for key, label in SUMMARY_ROWS if key in metrics)
    return f"<table class='metrics'>{rows}</table>"


# ----------------------------------------------------------------------------------------------
# Figures of a search and its validation
# ----------------------------------------------------------------------------------------------
def _fold_figure(key: str, value: Any) -> str:
    """One figure of a fold: returns and drawdowns in %, Sharpe with 2 decimals, the rest as format_metric."""
    if key in ("total_return", "max_drawdown"):
        return f"{value * 100:+.1f}%"
    return f"{value:.2f}" if key == "sharpe" else format_metric(key, value)


def fold_table_html(result: dict[str, Any]) -> str:
    """The folds of a fixed params set (stability across periods) as a compact HTML table: periods as
    dates, returns and drawdowns in %, train and test figures under one header each, then the aggregate."""
    head = ("<tr><th rowspan='2'>Fold</th><th rowspan='2'>Train from</th><th rowspan='2'>Test period</th>"
            f"<th colspan='{len(FOLD_FIGURES)}'>Train</th><th colspan='{len(FOLD_FIGURES)}'>Test</th></tr><tr>"
            + "".join(f"<th>{label}</th>" for _ in range(2) for _, label in FOLD_FIGURES) + "</tr>")
    rows = [[str(fold["fold"]), str(fold["train_start"])[:10],
             f"{str(fold['test_start'])[:10]} – {str(fold['test_end'])[:10]}",
             *(_fold_figure(key, fold[f"{part}_{key}"]) for part in ("train", "test") for key, _ in FOLD_FIGURES)]
            for fold in result["folds"]]
    agg = result["aggregate"]
    summary = (f"{agg['profitable_folds']} of {agg['folds']} test folds profitable; mean test return "
               f"{agg['mean_test_return']:+.1%}, compounded {agg['compounded_test_return']:+.1%}; mean test Sharpe "
               f"{agg['mean_test_sharpe']:.2f}; worst test drawdown {agg['worst_test_drawdown']:.1%}; purge gap "
               f"{agg['purge_bars']} bars: {'PASSED' if agg['passed'] else 'not passed'}.")
    return _folds_html(str(result.get("kind", "walk-forward folds")), head, rows, summary)


def walk_forward_table_html(result: dict[str, Any]) -> str:
    """The re-optimizing walk-forward as a compact HTML table: each fold's train and test window, its
    search's winner (score, whether it passed the filters) and the winner's figures on the test window
    it never saw, then the stitched out-of-sample aggregate."""
    head = ("<tr><th rowspan='2'>Fold</th><th rowspan='2'>Train window</th><th rowspan='2'>Test period</th>"
            "<th colspan='2'>Winner of the fold's search</th>"
            f"<th colspan='{len(FOLD_FIGURES)}'>Test (unseen by that search)</th></tr><tr><th>Score</th>"
            "<th>Passed</th>" + "".join(f"<th>{label}</th>" for _, label in FOLD_FIGURES) + "</tr>")
    rows = [[str(fold["fold"]), f"{str(fold['train_start'])[:10]} – {str(fold['train_end'])[:10]}",
             f"{str(fold['test_start'])[:10]} – {str(fold['test_end'])[:10]}", f"{fold['winner_score']:.2f}",
             "yes" if fold["winner_passed"] else "no: trades nothing",
             *(_fold_figure(key, fold[f"test_{key}"]) for key, _ in FOLD_FIGURES)] for fold in result["folds"]]
    agg = result["aggregate"]
    summary = (f"{result['fold_trials']} trials a fold, each search on its train window only. Stitched out-of-sample "
               f"({agg['days']} days): return {agg['total_return']:+.1%}, Sharpe {agg['sharpe']:.2f}, probabilistic "
               f"Sharpe {agg['dsr']:.2f}, max drawdown {agg['max_drawdown']:.1%}; {agg['profitable_folds']} of "
               f"{agg['folds']} folds profitable: {'PASSED' if agg['passed'] else 'not passed'}.")
    return _folds_html(str(result.get("kind", "re-optimizing walk-forward")), head, rows, summary)


def _folds_html(heading: str, head: str, rows: list[list[str]], summary: str) -> str:
    """A fold table: its heading, header rows, one row of (escaped) cells per fold, and the summary line."""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows)
    return (f"<h2>{html.escape(heading.capitalize())}</h2><table class='folds'>{head}{body}</table>"
            f"<p>{html.escape(summary)}</p>")


def stitched_figure(result: dict[str, Any]) -> go.Figure:
    """The stitched out-of-sample equity of the re-optimizing walk-forward."""
    fig = go.Figure(go.Scatter(x=result["stitched"]["time"], y=result["stitched"]["equity"], mode="lines",
                               name="stitched out-of-sample equity"))
    fig.update_layout(title="Re-optimizing walk-forward: stitched out-of-sample equity", height=360)
    return fig


def _filter_group(trial: FrozenTrial) -> str:
    """The filter tier a trial failed ('' when it passed every filter)."""
    reason = trial.user_attrs.get("fail_reason")
    if reason is None:
        return "no filter record"
    return reason.split(":")[0]


def history_figure(trials: list[FrozenTrial]) -> go.Figure:
    """Scores of the trials that passed every filter (and the best so far) on their own scale; below,
    in a band of its own, each failed trial at the filter that stopped it (trials in study order)."""
    trials = sorted(trials, key=lambda t: t.number)  # several workers may store them out of order
    groups = [_filter_group(t) for t in trials]
    passed = [k for k, g in enumerate(groups) if g == ""]
    failed = [k for k, g in enumerate(groups) if g != ""]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.1,
                        subplot_titles=(f"{len(passed):,} trials passed every filter: their score",
                                        f"{len(failed):,} failed: the filter that stopped each"))
    if passed:
        scores = [trials[k].value for k in passed]
        fig.add_trace(go.Scattergl(x=passed, y=scores, mode="markers", name="passing trial", marker={"size": 4},
                                   hovertemplate="trial %{x}<br>score %{y:.3f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=passed, y=np.maximum.accumulate(scores), mode="lines", name="best so far",
                                 line={"shape": "hv", "color": "firebrick"}), 1, 1)
    else:
        fig.add_annotation(text="no trial passed every filter", showarrow=False, xref="x domain", yref="y domain",
                           x=0.5, y=0.5)
    if failed:
        tier = {groups[k]: trials[k].user_attrs.get("tier", math.inf) for k in failed}
        order = sorted(tier, key=lambda g: (tier[g], g))  # the first filter at the bottom
        fig.add_trace(go.Scattergl(x=failed, y=[groups[k] for k in failed], mode="markers", name="failed trial",
                                   marker={"size": 4, "color": "grey"},
                                   text=[html.escape(str(trials[k].user_attrs.get("fail_reason", ""))) for k in failed],
                                   hovertemplate="trial %{x}: %{text}<extra></extra>"), 2, 1)
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=order, row=2, col=1)
    fig.update_layout(title="Optimization history", height=420 + 14 * len({groups[k] for k in failed}), showlegend=True)
    fig.update_yaxes(title_text="score", row=1, col=1)
    fig.update_xaxes(title_text="trial", row=2, col=1)
    return fig


def importance_figure(trials: list[FrozenTrial], space: dict[str, Any]) -> go.Figure | str:
    """Parameter importances (PED-ANOVA over the finished trials), every bar named and labelled."""
    import optuna  # here: the trader imports this module and needs no optuna

    usable = [t for t in trials if set(t.distributions) == set(space)]
    if len(usable) < 20 or not space:
        return "<p>Parameter importances need at least 20 trials.</p>"
    study = optuna.create_study(direction="maximize")
    study.add_trials(usable)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names, shares = list(importances)[::-1], list(importances.values())[::-1]
    fig = go.Figure(go.Bar(x=shares, y=names, orientation="h", text=[f"{v:.1%}" for v in shares],
                           textposition="outside", cliponaxis=False))
    fig.update_layout(title="Parameter importances (PED-ANOVA, share of the total)", height=120 + 24 * len(names),
                      margin={"r": 60})
    fig.update_yaxes(tickmode="array", tickvals=names, ticktext=names, automargin=True)
    fig.update_xaxes(tickformat=".0%", range=[0, max(shares, default=0) * 1.15 or 1])
    return fig


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
def write_report_html(path: str | Path, equity: pd.DataFrame, trades: pd.DataFrame, metrics: dict[str, Any],
                      candles: pd.DataFrame, title: str, extra_sections: list[Any] | None = None) -> Path:
    """The HTML report; ``extra_sections`` adds plotly figures or HTML strings at the end."""
    sections: list[Any] = [metrics_table_html(metrics), equity_figure(equity)]
    candle_fig, note = candles_figure(candles, trades)
    sections += [candle_fig, f"<p class='note'>{html.escape(note)}</p>" if note else "", exit_reasons_figure(metrics)]
    sections += list(extra_sections or [])
    return write_html_page(path, title, sections)


STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1200px} table.metrics td,table.metrics th"
         "{padding:2px 12px;text-align:right} th{text-align:left} .note{color:#666}"
         " table.folds{border-collapse:collapse;font-size:13px;width:100%}"
         " table.folds th,table.folds td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
         " table.folds th{background:#f0f0f0;text-align:center}")


def write_html_page(path: str | Path, title: str, sections: list[Any]) -> Path:
    """Render plotly figures and HTML strings into one page; plotly.js once, beside the page or inlined
    (config.REPORT_PLOTLYJS)."""
    path = Path(path)
    inline = config.REPORT_PLOTLYJS == "inline"
    parts = []
    first_figure = True
    for section in sections:
        if isinstance(section, go.Figure):
            mode: Any = (True if inline else "directory") if first_figure else False
            parts.append(section.to_html(full_html=False, include_plotlyjs=mode))
            first_figure = False
        else:
            parts.append(str(section))
    if not inline and not first_figure:
        write_plotlyjs(path.parent)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


def write_plotlyjs(directory: Path) -> Path:
    """plotly.min.js of the installed plotly in ``directory`` (rewritten only when it differs)."""
    target = directory / PLOTLYJS_FILE
    script = plotly.offline.get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(script.encode("utf-8")) \
            or target.read_text(encoding="utf-8") != script:
        target.write_text(script, encoding="utf-8")
    return target


# ----------------------------------------------------------------------------------------------
# The console's PNG
# ----------------------------------------------------------------------------------------------
def equity_png_figure(equity: pd.DataFrame, title: str) -> Any:
    """A matplotlib figure: the title (strategy, symbol), the equity curve with its return, the drawdown below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = equity["equity"].to_numpy(np.float64)
    drawdown = equity["drawdown"].to_numpy(np.float64) * 100
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, height_ratios=[2.3, 1])
    times = pd.DatetimeIndex(equity["time"]).tz_localize(None) if len(equity) else []
    top.plot(times, values, linewidth=1, color="royalblue")
    change = values[-1] / values[0] - 1 if len(values) and values[0] else math.nan
    top.set_title(f"{title}\nreturn {change:+.1%}, max drawdown {drawdown.min(initial=0):.1f}%", fontsize=11)
    top.set_ylabel("equity (USDT)")
    top.grid(alpha=0.3)
    bottom.fill_between(times, drawdown, 0, color="firebrick", alpha=0.5, linewidth=0)
    bottom.set_ylabel("drawdown %")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_equity_png(path: Path, equity: pd.DataFrame, title: str) -> Path:
    """equity.png: :func:`equity_png_figure` saved without a display."""
    import matplotlib.pyplot as plt

    fig = equity_png_figure(equity, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
