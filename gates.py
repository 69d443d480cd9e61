"""Export gates and the export itself: a strategy reaches prod_config_*.py only when every gate passes.

Gates, in order (the first that fails decides, the console names it):
1. the run is complete (no interrupt, no worker lost);
2. the chosen trial passes every filter tier in-sample;
3. the re-optimizing walk-forward ran and passes;
4. the chosen params are stable across periods;
5. PBO <= MAX_PBO;
6. DSR >= MIN_DSR;
7. the hold-out passes the same filters.
"""

from __future__ import annotations

import json
import math
import os
import pprint
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import config
import strategy_loader
from metrics import json_safe


@dataclass
class Gate:
    """One export condition, whether it passed, and the figures it decided on."""

    name: str
    passed: bool
    detail: str


def export_gates(*, complete: bool, fail_reason: str, stability: dict[str, Any], walk_forward: dict[str, Any] | None,
                 stats: dict[str, Any], holdout: dict[str, Any]) -> list[Gate]:
    """Every gate of the chosen trial, in order."""
    gates = [Gate("run complete", complete, "" if complete else "the run was interrupted or lost a worker"),
             Gate("filters", fail_reason == "", fail_reason or "every tier passed in-sample")]
    if walk_forward is None:
        gates.append(Gate("walk-forward", False, "the re-optimizing walk-forward did not run (--no-reoptimize)"))
    else:
        agg = walk_forward["aggregate"]
        gates.append(Gate("walk-forward", agg["passed"],
                          f"re-optimizing: stitched out-of-sample Sharpe {agg['sharpe']:.2f}, {agg['profitable_folds']}"
                          f"/{agg['folds']} profitable folds (need Sharpe > 0 and "
                          f"{config.WF_MIN_PROFITABLE_FOLDS:.0%})"))
    agg = stability["aggregate"]
    gates.append(Gate("stability across periods", agg["passed"],
                      f"{agg['profitable_folds']}/{agg['folds']} profitable test windows, mean Sharpe "
                      f"{agg['mean_test_sharpe']:.2f}"))
    pbo = stats.get("pbo", {}).get("pbo", float("nan"))
    dsr = stats.get("deflated_sharpe", {}).get("dsr", float("nan"))
    gates.append(Gate("PBO", math.isfinite(pbo) and pbo <= config.MAX_PBO,
                      f"{pbo:.3f} (MAX_PBO {config.MAX_PBO:g})" if math.isfinite(pbo) else "could not be computed"))
    gates.append(Gate("DSR", math.isfinite(dsr) and dsr >= config.MIN_DSR,
                      f"{dsr:.3f} (MIN_DSR {config.MIN_DSR:g})" if math.isfinite(dsr) else "could not be computed"))
    gates.append(Gate("hold-out", bool(holdout.get("passed")), holdout.get("fail_reason") or "passes every filter"))
    return gates


def deciding_gate(gates: list[Gate]) -> Gate | None:
    """The first gate that failed (the one that decided against exporting), or None when all passed."""
    return next((g for g in gates if not g.passed), None)


def side_of(params: dict[str, Any]) -> str:
    """The live side a params set trades: its strategy's SIDE, long or short."""
    strategy = strategy_loader.get(params["mode"])
    if strategy.side not in ("long", "short"):
        raise config.ConfigError(f"strategy '{strategy.name}' trades both ways and has no prod config; export "
                                 "a long or a short strategy")
    return strategy.side


def export_prod_config(params: dict[str, Any], metadata: dict[str, Any], directory: Path | None = None) -> Path:
    """Write prod_config_long.py or prod_config_short.py (atomically), keeping the previous file as a backup.

    The file names the strategy file the params need (run_live.py loads it) and its content's hash
    at export, so the trader can tell when the strategy changed since.
    """
    side = side_of(params)
    directory = Path(directory or config.BASE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"prod_config_{side}.py"
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        shutil.copy2(path, directory / f"{path.stem}.{stamp}.bak.py")
    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    safe_metadata = json_safe(json.loads(json.dumps(metadata, default=str, allow_nan=True)))
    strategy = strategy_loader.get(params["mode"])
    text = (f'"""Live params of the {side} side, written by GrTr\'s optimizer (main.py)."""\n\n'
            f"SYMBOL = {params['symbol']!r}\nTIMEFRAME = {params['timeframe']!r}\n"
            f"# the strategy file these params need (run_live.py loads it), and its content's hash when exported\n"
            f"STRATEGY_FILE = {str(strategy.path)!r}\nSTRATEGY_SHA256 = {strategy.sha256!r}\n"
            f"METADATA = {pprint.pformat(safe_metadata, sort_dicts=False)}\n"
            f"PARAMS = {pprint.pformat(clean, sort_dicts=False)}\n")
    temporary = path.with_suffix(".py.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path
