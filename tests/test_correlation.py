"""Forgetting-vs-drift correlation: points frame, coefficients against scipy, bootstrap CIs, plots."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forgetbench.errors import SpecError
from forgetbench.records import parse_record, run_id
from forgetbench.report.correlation import correlation_markdown, correlations, points
from forgetbench.report.plots import plot_correlation, plot_trajectories

from pipeline_helpers import RESULT_SCHEMA, summary_of

DATASETS = ["mini/colour", "mini/texture", "mini/position"]
METHODS = [("ft", {}), ("l2sp", {"alpha": 0.5}), ("ldifs", {"alpha": 10}), ("wise", {"mix": 0.5})]
FINAL_STEP = 100


def heldout_block(rng, noise=0.05, kernel=True):
    """Held-out metrics where delta_lp = -3 * otdd + small noise and l2 is unrelated noise."""
    out = {}
    for d in DATASETS:
        otdd = float(rng.uniform(0.0, 2.0))
        dlp = -3.0 * otdd + float(rng.normal(0.0, noise))
        drift = {"l2": float(rng.uniform(0.0, 1.0)), "otdd": otdd}
        if kernel:
            drift["kernel"] = float(rng.uniform(0.0, 1.0))
        out[d] = {"lp": 80.0 + dlp, "lp_reference": 80.0, "delta_lp": dlp,
                  "zs": 60.0, "zs_reference": 61.0, "delta_zs": -1.0, "drift": drift}
    return out


def make_raw(seed=0, checkpoints=(), kernel=True):
    """8 runs (4 methods x 2 seeds) over 3 held-out datasets as JSON; optional trajectory at ``checkpoints`` steps."""
    rng = np.random.default_rng(seed)
    records = []
    for method, params in METHODS:
        for s in (0, 1):
            heldout = heldout_block(rng, kernel=kernel)
            rec = {
                "schema": RESULT_SCHEMA, "run_id": run_id("mini-shape", 1, method, params, s), "status": "complete",
                "task": {"name": "mini-shape", "version": 1, "spec": {}},
                "method": {"name": method, "params": params, "reference": None},
                "seed": s, "model": {"name": "mini-clip", "weights_sha256": None},
                "metrics": {"target": {"dataset": "mini/shapes", "acc": 90.0, "acc_reference": 60.0, "gain": 30.0},
                            "heldout": heldout, "summary": summary_of(heldout, weight_drift=0.5)},
                "training": {"steps": FINAL_STEP},
                "timings": {"finetune_s": 1.0, "evaluate_s": 1.0, "total_s": 2.0}, "provenance": {},
            }
            if checkpoints:
                traj = []
                for step in checkpoints:
                    h = {d: {"delta_lp": m["delta_lp"], "drift": m["drift"]} for d, m in heldout_block(rng).items()}
                    traj.append({"step": step, "heldout": h, "summary": summary_of(h)})
                rec["trajectory"] = traj
            records.append(rec)
    return records


def make_records(seed=0, checkpoints=(), kernel=True):
    """The same runs as typed records (the synthetic records are real records)."""
    return [parse_record(r) for r in make_raw(seed, checkpoints, kernel)]


def pairs(records, drift):
    """(drift, delta_lp) of every (run, dataset) straight from the records, independent of ``points``."""
    xs, ys = [], []
    for r in records:
        for m in r.metrics.heldout.values():
            if (m.drift or {}).get(drift) is not None:
                xs.append(m.drift[drift])
                ys.append(m.delta_lp)
    return np.array(xs), np.array(ys)


# ------------------------------------------------------------------------------------------------------ points

def test_points_one_row_per_run_and_dataset():
    recs = make_records()
    df = points(recs)
    assert len(df) == 8 * 3
    assert {"task", "method", "params", "seed", "run_id", "dataset", "step", "delta_lp", "delta_zs",
            "l2", "otdd", "kernel"} <= set(df.columns)
    assert df.groupby("run_id").size().eq(3).all()
    r = recs[5]  # ldifs seed 1
    row = df[(df.run_id == r.run_id) & (df.dataset == "mini/texture")].iloc[0]
    m = r.metrics.heldout["mini/texture"]
    assert (row.method, row.params, row.seed, row.step) == ("ldifs", "alpha=10", 1, FINAL_STEP)
    assert (row.delta_lp, row.otdd, row.l2, row.kernel) == (m.delta_lp, m.drift["otdd"], m.drift["l2"],
                                                           m.drift["kernel"])
    assert row.final and row.delta_zs == -1.0 and row.weight_drift == 0.5


def test_points_do_not_depend_on_record_order():
    recs = make_records()
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    pd.testing.assert_frame_equal(points(recs), points(shuffled))


def test_per_checkpoint_adds_rows_but_not_step0_or_final_duplicates():
    recs = make_records(checkpoints=(0, 25, 50, FINAL_STEP))
    final_only = points(recs)
    df = points(recs, per_checkpoint=True)
    assert len(final_only) == 24
    assert len(df) == 24 + 2 * 24  # steps 25 and 50; step 0 is the pre-trained model, 100 is the final row
    assert sorted(df["step"].unique()) == [25, 50, FINAL_STEP]
    assert df[df.step == FINAL_STEP]["final"].all() and not df[df.step != FINAL_STEP]["final"].any()
    cp = recs[0].trajectory[1]
    row = df[(df.run_id == recs[0].run_id) & (df.step == 25) & (df.dataset == "mini/colour")].iloc[0]
    assert row.delta_lp == cp.heldout["mini/colour"].delta_lp
    assert math.isnan(row.delta_zs)  # checkpoints carry no zero-shot numbers here
    unit = correlations(df, n_boot=0)["unit"].iloc[0]
    assert "checkpoint" in unit and "72 points" in unit


def test_bad_records_give_clear_errors():
    raw = make_raw()
    del raw[2]["metrics"]["heldout"]
    with pytest.raises(SpecError, match=r"metrics\.heldout: missing required field"):
        parse_record(raw[2])
    raw[1]["metrics"]["heldout"]["mini/colour"]["drift"]["otdd"] = "big"
    with pytest.raises(SpecError, match=r"mini/colour\.drift\.otdd: expected a number, got 'big'"):
        parse_record(raw[1])
    recs = make_records()
    with pytest.raises(SpecError, match="same run_id"):
        points(recs + recs[:1])
    with pytest.raises(SpecError, match="not in the points frame"):
        correlations(points(make_records()), drifts=("otd",))


# ------------------------------------------------------------------------------------------------ coefficients

def test_coefficients_equal_scipy_and_otdd_dominates():
    recs = make_records()
    table = correlations(points(recs), n_boot=0).set_index("drift")
    for drift in ("otdd", "l2", "kernel"):
        x, y = pairs(recs, drift)
        assert table.loc[drift, "n"] == len(x) == 24
        assert table.loc[drift, "pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
        assert table.loc[drift, "spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert table.loc["otdd", "pearson_r"] < -0.99 and table.loc["otdd", "spearman_rho"] < -0.97
    assert abs(table.loc["l2", "pearson_r"]) < 0.6  # l2 is independent noise
    assert "24 points = 8 runs × 3 datasets" in table.loc["otdd", "unit"]


def test_spearman_handles_ties_like_scipy():
    df = pd.DataFrame({"otdd": [1.0, 1.0, 2.0, 3.0, 3.0, 4.0], "delta_lp": [0.0, -1.0, -1.0, -2.0, -5.0, -5.0],
                       "run_id": list("abcdef"), "dataset": ["d"] * 6, "task": ["t"] * 6, "final": [True] * 6})
    row = correlations(df, drifts=("otdd",), n_boot=0).iloc[0]
    assert row.spearman_rho == pytest.approx(stats.spearmanr(df.otdd, df.delta_lp).statistic, abs=1e-12)


def test_bootstrap_ci_deterministic_and_contains_estimate():
    df = points(make_records())
    a = correlations(df, n_boot=500, seed=3)
    b = correlations(df, n_boot=500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = correlations(df, n_boot=500, seed=4)
    assert not np.allclose(a["spearman_lo"], c["spearman_lo"])
    for r in a.itertuples():
        assert -1 <= r.pearson_lo <= r.pearson_r <= r.pearson_hi <= 1
        assert -1 <= r.spearman_lo <= r.spearman_rho <= r.spearman_hi <= 1
    # a drift's CI depends only on its own points and the seed, not on the other drifts asked for
    only = correlations(df, drifts=("l2",), n_boot=500, seed=3).iloc[0]
    assert only.pearson_lo == a.set_index("drift").loc["l2", "pearson_lo"]


def test_bootstrap_ci_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(7)
    x = rng.normal(size=40)
    y = 0.6 * x + 0.8 * rng.normal(size=40)
    df = pd.DataFrame({"otdd": x, "delta_lp": y, "run_id": [f"r{i}" for i in range(40)], "dataset": "d",
                       "task": "t", "final": True})
    row = correlations(df, drifts=("otdd",), n_boot=2000, seed=0).iloc[0]
    ref = stats.bootstrap((x, y), lambda a, b: stats.pearsonr(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=2000, method="percentile", rng=np.random.default_rng(1))
    # different random streams: the percentile intervals agree to Monte-Carlo error
    assert row.pearson_lo == pytest.approx(ref.confidence_interval.low, abs=0.05)
    assert row.pearson_hi == pytest.approx(ref.confidence_interval.high, abs=0.05)


def test_missing_drift_is_nan_and_skipped():
    raw = make_raw(kernel=False)
    for r in raw[:3]:
        del r["metrics"]["heldout"]["mini/colour"]["drift"]["otdd"]
        r["metrics"]["summary"] = summary_of(r["metrics"]["heldout"], weight_drift=0.5)
    del raw[5]["metrics"]["heldout"]["mini/position"]["drift"]
    raw[5]["metrics"]["summary"] = summary_of(raw[5]["metrics"]["heldout"], weight_drift=0.5)
    recs = [parse_record(r) for r in raw]
    df = points(recs)
    assert df["kernel"].isna().all()
    assert df["otdd"].isna().sum() == 4 and df["l2"].isna().sum() == 1
    table = correlations(df, n_boot=100).set_index("drift")
    x, y = pairs(recs, "otdd")
    assert table.loc["otdd", "n"] == len(x) == 20
    assert table.loc["otdd", "pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert "20 points" in table.loc["otdd", "unit"] and "not every pair" in table.loc["otdd", "unit"]
    assert table.loc["kernel", "n"] == 0 and np.isnan(table.loc["kernel", ["pearson_r", "spearman_rho",
                                                                           "pearson_lo", "spearman_hi"]]).all()


def test_degenerate_inputs_give_nan_without_warnings():
    base = {"run_id": ["a", "b", "c", "d"], "dataset": "d", "task": "t", "final": True}
    cases = [
        pd.DataFrame({**base, "otdd": [1.0, 1.0, 1.0, 1.0], "delta_lp": [1.0, 2.0, 3.0, 4.0]}),  # constant x
        pd.DataFrame({**base, "otdd": [1.0, 2.0, 3.0, 4.0], "delta_lp": [0.5] * 4}),  # constant y
        pd.DataFrame({**base, "otdd": [1.0, 2.0, np.nan, np.nan], "delta_lp": [1.0, 2.0, 3.0, 4.0]}),  # 2 points
        pd.DataFrame({**base, "otdd": [np.nan] * 4, "delta_lp": [1.0, 2.0, 3.0, 4.0]}),  # none
        points([]),  # empty frame
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for df in cases:
            row = correlations(df, drifts=("otdd",), n_boot=200).iloc[0]
            assert np.isnan([row.pearson_r, row.spearman_rho, row.pearson_lo, row.spearman_hi]).all()


def test_markdown_table():
    md = correlation_markdown(correlations(points(make_records(kernel=False)), n_boot=100))
    lines = md.splitlines()
    assert lines[0].startswith("| drift") and "Spearman ρ" in lines[0] and set(lines[1]) <= set("|-: ")
    assert len(lines) == 2 + 3
    kernel = next(line for line in lines if line.startswith("| kernel"))
    assert "n/a" in kernel


# ------------------------------------------------------------------------------------------------------- plots

def test_plot_correlation_files_and_determinism(tmp_path):
    recs = make_records(checkpoints=(25, FINAL_STEP))
    paths = plot_correlation(recs, tmp_path / "a" / "corr.v1", per_checkpoint=True, n_boot=100)
    assert [p.name for p in paths] == ["corr.v1.png", "corr.v1.svg", "corr.v1.md"]
    png, svg, md = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert svg.read_bytes().lstrip().startswith(b"<?xml") and b"<svg" in svg.read_bytes()
    assert "| otdd" in md.read_text() and "mini-shape" in md.read_text()
    again = plot_correlation(list(reversed(recs)), tmp_path / "b" / "corr.v1", per_checkpoint=True, n_boot=100)
    assert again[1].read_bytes() == svg.read_bytes()
    assert again[0].read_bytes() == png.read_bytes()
    assert again[2].read_text() == md.read_text()


def test_plot_correlation_without_drift_is_an_error(tmp_path):
    raw = make_raw()
    for r in raw:
        for m in r["metrics"]["heldout"].values():
            del m["drift"]
        r["metrics"]["summary"] = summary_of(r["metrics"]["heldout"], weight_drift=0.5)
    with pytest.raises(SpecError, match="no record has a drift metric"):
        plot_correlation([parse_record(r) for r in raw], tmp_path / "x")


def test_plot_trajectories(tmp_path):
    with pytest.raises(ValueError, match="no record has a trajectory; run a task with evaluate.checkpoints > 0"):
        plot_trajectories(make_records(), tmp_path / "t")
    recs = make_records(checkpoints=(0, 25, 50)) + make_records(seed=1)[:1]  # one run without trajectory is ignored
    png, svg = plot_trajectories(recs, tmp_path / "traj" / "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.stat().st_size > 1000
    png2, svg2 = plot_trajectories(recs, tmp_path / "again" / "t")
    assert svg2.read_bytes() == svg.read_bytes()


def _runs_frame(copies: int, n_runs: int = 20) -> pd.DataFrame:
    """``n_runs`` runs, each one (drift, ΔLP) point repeated on ``copies`` held-out datasets."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=n_runs)
    y = 0.5 * x + rng.normal(size=n_runs)
    return pd.DataFrame({"otdd": np.repeat(x, copies), "delta_lp": np.repeat(y, copies),
                         "run_id": np.repeat([f"r{i:02d}" for i in range(n_runs)], copies),
                         "dataset": np.tile([f"d{j}" for j in range(copies)], n_runs), "task": "t", "final": True})


def test_the_bootstrap_resamples_runs_so_repeated_points_add_no_certainty():
    one, five = _runs_frame(1), _runs_frame(5)
    single = correlations(one, drifts=("otdd",), n_boot=400).iloc[0]
    clustered = correlations(five, drifts=("otdd",), n_boot=400).iloc[0]
    # the same runs drawn: five copies of each point change neither r nor rho of any resample
    for col in ("pearson_r", "pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi"):
        assert clustered[col] == pytest.approx(single[col], abs=1e-9), col
    pooled_points = correlations(five, drifts=("otdd",), n_boot=400, cluster=None).iloc[0]
    assert pooled_points.pearson_hi - pooled_points.pearson_lo < 0.6 * (clustered.pearson_hi - clustered.pearson_lo)
    assert clustered.resampled == "runs" and pooled_points.resampled == "points"


def test_coefficients_within_each_held_out_dataset():
    table = correlations(_runs_frame(3), drifts=("otdd",), n_boot=50, per_dataset=True)
    assert list(table["scope"]) == ["pooled", "d0", "d1", "d2"] and list(table["n"]) == [60, 20, 20, 20]
    assert table["pearson_r"].nunique() == 1  # the datasets hold the same points here
    assert "| pooled" in correlation_markdown(table) and "| runs" in correlation_markdown(table)
