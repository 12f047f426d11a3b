"""Strength knobs and the trade-off sweep: declared grids, WiSE-FT's alpha curve from one fine-tune, selection of
each method's setting, resuming, the matched-gain board and the trade-off figure, end to end on a tiny task."""
from __future__ import annotations

import math

import pytest
import yaml

from forgetbench.cli import main
from forgetbench.errors import SpecError
from forgetbench.methods import BASELINES, METHODS, Method, Param, Strength, get_method, learning_rate
from forgetbench.records import ResultStore
from forgetbench.report.leaderboard import render_leaderboard
from forgetbench.report.matched import INTERVAL
from forgetbench.sweep import PlannedRun, shared_finetunes, tradeoff_grid

from pipeline_helpers import tiny_task

REGULARISERS = ("l2sp", "ldifs", "feature-l2", "ewc", "lwf", "zscl", "fda", "proxy-fda", "fd-align", "aft")


def test_every_method_but_lp_declares_a_knob_of_at_least_five_values_in_its_own_file():
    shipped = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith(f"{BASELINES}.")]  # not the tests'
    assert len(shipped) >= 16
    for name in shipped:
        cls = METHODS.get(name)
        if name in ("lp", "calibrate"):  # a linear probe, and the absent-class calibration: no knob
            continue
        s = cls.strength
        assert s is not None and s.param in cls.hyperparameters, name
        assert len(s.grid) >= 5 and len(set(s.grid)) == len(s.grid), name
    for name in REGULARISERS:
        if name in METHODS:
            grid = METHODS.get(name).strength.weakest_first()
            assert grid[-1] / grid[0] >= 1e4, name  # log-spaced over decades, "as ft" to "barely moves"
    assert METHODS.get("lp").strength is None
    assert get_method("ft").strength.param == "lr_scale" and get_method("lp-ft").strength.param == "lr_scale"
    assert get_method("wise-ft").strength.post_hoc and get_method("wise-ft").strength.weakest_first()[0] == 1.0


def test_a_bad_strength_declaration_fails_when_the_method_is_defined():
    with pytest.raises(SpecError, match="'lam' is not a declared hyper-parameter"):
        type("Bad", (Method,), {"name": "bad-knob", "hyperparameters": {"beta": Param(1.0, ge=0)},
                                "strength": Strength("lam", grid=(1.0, 10.0))})
    with pytest.raises(SpecError, match="beta"):  # a grid value the parameter refuses
        type("Bad2", (Method,), {"name": "bad-knob2", "hyperparameters": {"beta": Param(1.0, ge=0)},
                                 "strength": Strength("beta", grid=(-1.0, 10.0))})


def test_the_ft_knob_scales_the_task_learning_rate():
    assert learning_rate(get_method("ft")(lr_scale=0.1), 3e-4) == pytest.approx(3e-5)
    assert learning_rate(get_method("l2sp")(), 3e-4) == 3e-4


def test_post_hoc_values_of_one_seed_share_a_fine_tune():
    runs = [PlannedRun("wise-ft", "wise-ft", {"alpha": a}, s, f"w{a}{s}") for a in (1.0, 0.5) for s in (0, 1)]
    runs += [PlannedRun("l2sp", "l2sp", {"alpha": a}, 0, f"l{a}") for a in (1.0, 0.5)]
    groups = sorted(sorted(r.run_id for r in g) for g in shared_finetunes(runs))
    assert groups == [["l0.5"], ["l1.0"], ["w0.50", "w1.00"], ["w0.51", "w1.01"]]
    assert tradeoff_grid(["ft", "lp", "l2sp"]) == {"ft.lr_scale": get_method("ft").strength.weakest_first(),
                                                   "l2sp.alpha": get_method("l2sp").strength.weakest_first()}


def test_the_tradeoff_sweep_selects_runs_seeds_and_then_launches_nothing(tmp_path, capsys):
    spec = {**tiny_task(steps=2, drift=("l2",)).to_dict(), "selection": {"reference": "ft", "within": 100.0,
                                                                        "seeds": 2}}
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    argv = ["sweep", str(task_file), "--tradeoff", "--methods", "ft,wise-ft,lp", "--grid", "ft.lr_scale=1,0.1",
            "--grid", "wise-ft.alpha=1,0", "--results", str(results)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "5 runs (3 methods over their strength grids, seeds 0); 0 already recorded" in out
    assert "launching 5 (local)" in out and out.count("wise-ft alpha=1 seed 0 + wise-ft alpha=0 seed 0") == 1
    records = ResultStore(results).load()
    by = {(r.method.name, r.method.params.get("lr_scale", r.method.params.get("alpha")), r.seed): r for r in records}

    # WiSE-FT: one fine-tune, one record per alpha; alpha 1 is ft itself, alpha 0 the pre-trained encoder
    w1, w0, ft = by["wise-ft", 1.0, 0], by["wise-ft", 0.0, 0], by["ft", 1.0, 0]
    assert w1.training["post_hoc"] == w0.training["post_hoc"] == {"param": "alpha", "values": [1.0, 0.0]}
    assert w1.metrics.target.acc == ft.metrics.target.acc
    assert w1.metrics.summary["delta_lp_mean"] == pytest.approx(ft.metrics.summary["delta_lp_mean"])
    assert w0.metrics.summary["weight_drift"] == 0.0 and w0.metrics.summary["delta_lp_mean"] == 0.0

    # within 100 points every setting is in: the strongest is selected (ft lr 0.1x, wise-ft alpha 0), then seed 1
    assert "selected ft: lr_scale=0.1" in out and "selected wise-ft: alpha=0" in out
    assert "selected settings x 2 seeds (3 methods): 6 runs, 3 already recorded, launching 3" in out
    seeds1 = sorted((r.method.name, r.method.params.get("lr_scale", r.method.params.get("alpha")))
                    for r in ResultStore(results).load() if r.seed == 1)
    assert seeds1 == [("ft", 0.1), ("lp", None), ("wise-ft", 0.0)]
    for r in ResultStore(results).load():  # what the bootstrap and the selection read
        assert r.metrics.target.acc_val is not None and set(r.metrics.target.correct) >= {"acc", "zs_reference"}
        assert all(set(m.correct) == {"lp", "lp_reference", "zs", "zs_reference"} for m in r.metrics.heldout.values())

    before = (results / "tiny.jsonl").read_bytes()
    assert main(argv) == 0  # resumed: everything is recorded
    out = capsys.readouterr().out
    assert "5 already recorded" in out and "launching 0" in out and "6 already recorded, launching 0" in out
    assert (results / "tiny.jsonl").read_bytes() == before

    # the matched-gain board: one row per method at its selected setting, with the interval and tie ranks
    board = render_leaderboard(ResultStore(results).load())
    assert INTERVAL in board and "Val acc" in board and "Gain" in board
    rows = [line for line in board.splitlines() if line.startswith("|")
            and line.split("|")[2].strip().split(" ")[0] in ("ft", "wise-ft", "lp")]
    assert len(rows) == 3 and any("lr_scale=0.1" in r for r in rows)
    ft_rows = [r for r in ResultStore(results).load() if r.method.name == "ft" and r.method.params["lr_scale"] == 0.1]
    point = math.fsum(r.metrics.summary["delta_lp_mean"] for r in ft_rows) / 2
    ft_line = next(r for r in rows if "lr_scale=0.1" in r)
    assert f"{round(point, 2) + 0.0:+.2f} [" in ft_line  # the interval's centre is the mean of the seeds' ΔLP

    # the trade-off figure
    assert main(["plot", "tradeoff", "--results", str(results), "--out", str(tmp_path / "fig" / "tradeoff")]) == 0
    png, svg = tmp_path / "fig" / "tradeoff.png", tmp_path / "fig" / "tradeoff.svg"
    assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()


def test_saving_weights_of_several_post_hoc_values_at_once_is_refused(tmp_path):
    from forgetbench.run import run_one

    with pytest.raises(SpecError, match="one setting per run"):
        run_one(tiny_task(), "wise-ft", 0, params={"alpha": 1.0}, variants=[{"alpha": 0.5}], weights_dir=tmp_path)
    assert not any(tmp_path.iterdir())
