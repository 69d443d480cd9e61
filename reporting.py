"""Console tables, the files a run leaves (trades.csv, equity.csv, metrics.json) and report.html.

report.html is self-contained (plotly.js inlined) so it opens offline and can be mailed as is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich.console import Console
from rich.table import Table

from metrics import json_safe

MAX_CANDLES_DRAWN = 5_000

PERCENT = {"total_return", "cagr", "max_drawdown", "win_rate", "exposure"}
SUMMARY_ROWS = (("total_return", "Return"), ("cagr", "CAGR"), ("sharpe", "Sharpe"), ("sortino", "Sortino"),
                ("calmar", "Calmar"), ("max_drawdown", "Max drawdown"), ("profit_factor", "Profit factor"),
                ("win_rate", "Win rate"), ("expectancy", "Expectancy (USDT)"), ("num_trades", "Trades"),
                ("exposure", "Exposure"), ("avg_hold_hours", "Average hold (h)"),
                ("initial_capital", "Initial capital"), ("final_equity", "Final equity"),
                ("total_fees", "Fees"), ("total_funding", "Funding"))


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


def equity_figure(equity: pd.DataFrame, title: str = "Equity and drawdown") -> go.Figure:
    """Equity curve above its drawdown."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04)
    fig.add_trace(go.Scattergl(x=equity["time"], y=equity["equity"], name="equity", line={"width": 1.2}), 1, 1)
    fig.add_trace(go.Scattergl(x=equity["time"], y=equity["drawdown"] * 100, name="drawdown %", fill="tozeroy",
                               line={"width": 0.8, "color": "firebrick"}), 2, 1)
    fig.update_layout(title=title, height=520, margin={"t": 50, "b": 30})
    fig.update_yaxes(title_text="USDT", row=1, col=1)
    fig.update_yaxes(title_text="drawdown %", row=2, col=1)
    return fig


def candles_figure(candles: pd.DataFrame, trades: pd.DataFrame) -> tuple[go.Figure, str]:
    """Candles with entry and exit markers; long histories are drawn at a coarser bar size."""
    note = ""
    drawn = candles
    if len(candles) > MAX_CANDLES_DRAWN:
        factor = -(-len(candles) // MAX_CANDLES_DRAWN)
        step = (candles.index[1] - candles.index[0]) * factor
        drawn = candles.resample(step, label="left", closed="left").agg(
            {"open": "first", "high": "max", "low": "min", "close": "last"}).dropna()
        note = (f"Candles drawn at {factor}x the bar size ({len(drawn):,} of {len(candles):,} bars) "
                "to keep the page light.")
    fig = go.Figure(go.Candlestick(x=drawn.index, open=drawn["open"], high=drawn["high"], low=drawn["low"],
                                   close=drawn["close"], name="price"))
    if len(trades):
        entries = trades.drop_duplicates("entry_time")
        fig.add_trace(go.Scatter(x=entries["entry_time"], y=entries["entry_price"], mode="markers", name="entry",
                                 marker={"symbol": "triangle-up", "size": 8, "color": "royalblue"}))
        fig.add_trace(go.Scatter(x=trades["exit_time"], y=trades["exit_price"], mode="markers", name="exit",
                                 text=trades["exit_reason"],
                                 marker={"symbol": "x", "size": 7, "color": "darkorange"}))
    fig.update_layout(title="Price with entries and exits", height=520, xaxis_rangeslider_visible=False)
    return fig, note


def exit_reasons_figure(metrics: dict[str, Any]) -> go.Figure:
    """Bar chart of exit reasons."""
    reasons = {k: v for k, v in metrics.get("exit_reasons", {}).items() if v}
    fig = go.Figure(go.Bar(x=list(reasons), y=list(reasons.values())))
    fig.update_layout(title="Exit reasons", height=320)
    return fig


def metrics_table_html(metrics: dict[str, Any]) -> str:
    """The summary figures as an HTML table."""
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(format_metric(key, metrics[key]))}</td></tr>"
                   for key, label in SUMMARY_ROWS if key in metrics)
    return f"<table class='metrics'>{rows}</table>"


def write_report_html(path: str | Path, equity: pd.DataFrame, trades: pd.DataFrame, metrics: dict[str, Any],
                      candles: pd.DataFrame, title: str, extra_sections: list[Any] | None = None) -> Path:
    """A self-contained HTML report; ``extra_sections`` adds plotly figures or HTML strings at the end."""
    sections: list[Any] = [metrics_table_html(metrics), equity_figure(equity)]
    candle_fig, note = candles_figure(candles, trades)
    sections += [candle_fig, f"<p class='note'>{html.escape(note)}</p>" if note else "", exit_reasons_figure(metrics)]
    sections += list(extra_sections or [])
    return write_html_page(path, title, sections)


def write_html_page(path: str | Path, title: str, sections: list[Any]) -> Path:
    """Render plotly figures and HTML strings into one page with plotly.js inlined once."""
    parts = []
    first_figure = True
    for section in sections:
        if isinstance(section, go.Figure):
            parts.append(section.to_html(full_html=False, include_plotlyjs=True if first_figure else False))
            first_figure = False
        else:
            parts.append(str(section))
    style = ("body{font-family:sans-serif;margin:24px;max-width:1200px} table.metrics td,table.metrics th"
             "{padding:2px 12px;text-align:right} th{text-align:left} .note{color:#666}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
