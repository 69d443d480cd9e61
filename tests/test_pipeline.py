"""The optimize pipeline end to end: the hold-out nobody else reads, the export gates (refusing, passing,
and never after an interrupt), the exported metadata, and the SHORT grid on an hourly CSV."""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import numpy as np
import pandas as pd
import pytest

import config
import gates
import main
import pipeline
from data_fetcher import load_candles

pytestmark = pytest.mark.slow
SMALL = ["--trials", "30", "--fold-trials", "10", "--folds", "3", "--jobs", "1", "--baseline-draws", "120"]


def run(tmp_path, *extra):
    out = tmp_path / "run"
    argv = ["optimize", *SMALL, "--out", str(out), "--storage", f"journal:{tmp_path / 's.journal'}",
            "--prod-dir", str(tmp_path / "prod"), *extra]
    return main.main(argv), out


def all_pass(**_kwargs):
    return [gates.Gate(name, True, "forced by the test") for name in ("run complete", "filters", "walk-forward",
                                                                       "stability across periods", "PBO", "DSR",
                                                                       "hold-out")]


def test_the_gates_refuse_and_name_the_one_that_decided(tmp_path, capsys):
    code, out = run(tmp_path, "--start", "2018-10-01")
    assert code == 0
    text = capsys.readouterr().out
    validation = json.loads((out / "validation.json").read_text())
    failed = [g for g in validation["gates"] if not g["passed"]]
    assert failed and f"not exported: gate '{failed[0]['name']}' decided" in text
    assert not (tmp_path / "prod").exists()
    assert [g["name"] for g in validation["gates"]] == [g.name for g in all_pass()]
    held = validation["holdout"]
    assert held["available"] and held["start"] >= validation["data"]["in_sample_end"]
    assert "holdout_sharpe_percentile" in held and validation["random_baseline"]["draws"] == 120
    assert validation["overfitting"]["deflated_sharpe"]["n_trials"] <= 30
    assert validation["walk_forward"]["kind"] == "re-optimizing walk-forward"
    assert len(validation["tier_pass_rates"]["study"]) == 8
    for name in ("best_params.json", "trials.csv", "trades_train.csv", "trades_test.csv", "trades_holdout.csv",
                 "report.html"):
        assert (out / name).exists(), name
    assert "in-sample vs hold-out" in text and "filter tiers, trials of the study" in text
    report = (out / "report.html").read_text()
    assert "Export gates" in report and "Hold-out" in report and "stitched out-of-sample equity" in report


def test_export_carries_the_statistics_and_the_holdout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gates, "export_gates", all_pass)
    code, out = run(tmp_path, "--start", "2018-10-01")
    assert code == 0 and "exported to" in capsys.readouterr().out
    path = tmp_path / "prod" / "prod_config_long.py"
    spec = importlib.util.spec_from_file_location("prod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    meta = module.METADATA
    assert module.SYMBOL == "BTCUSDT" and meta["symbol"] == "BTCUSDT"
    assert {"dsr", "pbo", "holdout", "in_sample", "holdout_sharpe_percentile", "data", "walk_forward"} <= set(meta)
    assert meta["dsr"]["n_trials"] >= 1 and "pbo" in meta["pbo"]
    assert meta["data"]["holdout_start"] > meta["data"]["in_sample_end"] >= "2018-10-01"
    best = json.loads((out / "best_params.json").read_text())
    assert module.PARAMS == {k: (list(v) if isinstance(v, tuple) else v) for k, v in best["params"].items()}


def test_an_interrupted_run_never_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gates, "export_gates", all_pass)  # every gate would pass: only the interrupt can refuse
    seen = []
    real = pipeline.Progress.__call__

    def interrupt_at_five(self, trial):
        real(self, trial)
        seen.append(trial)
        if len(seen) == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pipeline.Progress, "__call__", interrupt_at_five)
    code, out = run(tmp_path, "--start", "2019-01-01", "--study-name", "cut")
    text = capsys.readouterr().out
    assert code == main.EXIT_INTERRUPTED and "interrupted" in text and "Nothing was validated or exported" in text
    assert not (tmp_path / "prod").exists()
    stored = pd.read_csv(out / "trials.csv")
    assert len(stored) >= 5 and sorted(stored["trial"]) == list(range(len(stored)))
    # Resuming the study finishes it: the numbers go on.
    monkeypatch.setattr(pipeline.Progress, "__call__", real)
    code, _ = run(tmp_path, "--start", "2019-01-01", "--study-name", "cut", "--no-export")
    assert code == 0
    resumed = pd.read_csv(out / "trials.csv")
    assert sorted(resumed["trial"]) == list(range(len(stored) + 30))


def test_a_poisoned_holdout_changes_nothing_before_the_final_check(tmp_path):
    candles = load_candles("sample", "BTCUSDT", "1h", start="2018-10-01")
    cut = pd.Timestamp(candles.index[len(candles) - round(len(candles) * config.HOLDOUT_FRACTION)]).floor("D")
    poisoned = candles.copy()
    held = poisoned.index >= cut
    path = np.linspace(1.0, 3.0, held.sum()) * candles["close"].iloc[0]  # a steady rally nobody saw
    poisoned.loc[held, ["open", "close"]] = np.column_stack([path, path])
    poisoned.loc[held, "high"], poisoned.loc[held, "low"] = path * 1.01, path * 0.99
    results = []
    for name, frame in (("clean", candles), ("poisoned", poisoned)):
        csv = tmp_path / f"{name}.csv"
        frame.rename_axis("timestamp").to_csv(csv)
        out = tmp_path / name
        code = main.main(["optimize", *SMALL, "--source", f"csv:{csv}", "--out", str(out), "--no-export",
                          "--study-name", name, "--storage", f"journal:{tmp_path / 'p.journal'}"])
        assert code == 0
        results.append((pd.read_csv(out / "trials.csv").drop(columns=["trial"]),
                        json.loads((out / "validation.json").read_text())))
    (clean_trials, clean), (poisoned_trials, dirty) = results
    pd.testing.assert_frame_equal(clean_trials, poisoned_trials)  # same params, same scores, same metrics
    for key in ("stability_across_periods", "walk_forward", "overfitting", "chosen_trial", "train_metrics",
                "test_metrics"):
        assert clean[key] == dirty[key], key
    assert clean["holdout"]["holdout"] != dirty["holdout"]["holdout"]  # only the final check read the hold-out


def test_short_runs_on_an_hourly_csv_with_timeframe(tmp_path, capsys):
    csv = tmp_path / "btc1h.csv"
    load_candles("sample", "BTCUSDT", "1h", start="2018-10-01").rename_axis("timestamp").to_csv(csv)
    argv = ["optimize", "--strategy", "SHORT", "--source", f"csv:{csv}", "--trials", "12", "--jobs", "1",
            "--no-reoptimize", "--folds", "3", "--no-export", "--storage", f"journal:{tmp_path / 'h.journal'}",
            "--baseline-draws", "60"]
    assert main.main([*argv, "--out", str(tmp_path / "a")]) == 2  # the grid asks for 30m bars
    assert "cannot make finer 30m bars" in capsys.readouterr().err
    assert main.main([*argv, "--timeframe", "1h", "--out", str(tmp_path / "b")]) == 0
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    assert len(trials) == 12 and "walk-forward" in capsys.readouterr().out


def test_default_pipeline_finishes_on_the_sample(tmp_path, capsys):
    code = main.main(["--trials", "20", "--fold-trials", "8", "--folds", "3", "--jobs", "1", "--baseline-draws", "60",
                      "--out",
                      str(tmp_path / "run"), "--storage", f"journal:{tmp_path / 'p.journal'}", "--no-export",
                      "--start", "2018-10-01"])
    assert code == 0
    assert (tmp_path / "run" / "fixed" / "validation.json").exists()
    out = tmp_path / "run" / "optuna"
    best = config.load_params_file(out / "best_params.json")
    assert best["mode"] == "long_only"
    text = capsys.readouterr().out
    assert "Deflated Sharpe Ratio" in text and "export gates" in text and "stability across periods" in text


def test_validate_reoptimize_writes_both_checks(tmp_path, capsys):
    out = tmp_path / "v"
    code = main.main(["validate", "--reoptimize", "--fold-trials", "6", "--folds", "3", "--jobs", "1",
                      "--start", "2018-10-01", "--out", str(out)])
    assert code == 0
    validation = json.loads((out / "validation.json").read_text())
    assert validation["walk_forward"]["kind"] == "re-optimizing walk-forward"
    assert len(validation["folds"]) == 3 and validation["data"]["holdout_bars"] > 0
    assert validation["data"]["in_sample_end"] < validation["data"]["holdout_start"]
    text = capsys.readouterr().out
    assert "stitched out-of-sample" in text and "stability across periods" in text
