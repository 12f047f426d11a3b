"""The Markdown leaderboard: aggregation over seeds, ranking, versions, determinism."""
from __future__ import annotations

import random
import statistics

import pytest

from forgetbench.errors import SpecError
from forgetbench.records import parse_record, run_id
from forgetbench.report.leaderboard import render_leaderboard, write_leaderboard

from pipeline_helpers import RESULT_SCHEMA, summary_of


def rec(method, seed, acc, dlps, params=None, task="mini-shapes", version=1, dzs=None, drift=None, spec=None):
    """A record whose held-out datasets have the delta LPs ``dlps`` (and delta ZS ``dzs``, drifts ``drift``)."""
    params = {} if params is None else params
    heldout = {}
    for i, d in enumerate(dlps):
        m = {"lp": 50.0 + d, "lp_reference": 50.0, "delta_lp": d}
        if dzs is not None:
            m.update(zs=40.0 + dzs[i], zs_reference=40.0, delta_zs=dzs[i])
        if drift is not None:
            m["drift"] = {"l2": drift[i]}
        heldout[f"mini/h{i}"] = m
    return {
        "schema": RESULT_SCHEMA, "run_id": run_id(task, version, method, params, seed), "status": "complete",
        "task": {"name": task, "version": version, "spec": spec or {}},
        "method": {"name": method, "params": params, "reference": f"ref-{method}"},
        "seed": seed, "model": {"name": "mini-clip", "weights_sha256": None},
        "metrics": {"target": {"dataset": "mini/shapes", "acc": acc, "acc_reference": 60.0, "gain": acc - 60.0},
                    "heldout": heldout, "summary": summary_of(heldout)},
        "timings": {"finetune_s": 1.0, "evaluate_s": 1.0, "total_s": 2.0}, "provenance": {},
    }


def render(records) -> str:
    """The leaderboard of records given as JSON."""
    return render_leaderboard([parse_record(r) for r in records])


def table_rows(md: str, task_heading: str) -> list[dict[str, str]]:
    """Parse the pipe table under ``task_heading`` into dicts keyed by column title."""
    lines = md.splitlines()
    start = lines.index(task_heading)
    table = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
    header, body = table[0], table[2:]  # table[1] is the alignment row
    return [dict(zip(header, r)) for r in body]


# ft: 3 seeds, l2sp: 2 seeds with different params, wise: 1 seed
RUNS = [
    rec("ft", 0, 95.0, [-10.0, -4.0]), rec("ft", 1, 93.0, [-8.0, -6.0]), rec("ft", 2, 94.5, [-9.0, -2.5]),
    rec("l2sp", 0, 90.0, [-1.0, -0.5], params={"alpha": 0.5}), rec("l2sp", 1, 91.0, [-2.0, 0.25], params={"alpha": 0.5}),
    rec("l2sp", 0, 85.0, [-0.25, -0.75], params={"alpha": 5}),
    rec("wise", 0, 88.0, [-3.0, -1.0], params={"mix": 0.5}),
]


def test_mean_std_worst_and_ranking():
    rows = table_rows(render(RUNS), "## mini-shapes (version 1)")
    by = {(r["Method"], r["Params"]): r for r in rows}
    ft = [r for r in RUNS if r["method"]["name"] == "ft"]
    accs = [r["metrics"]["target"]["acc"] for r in ft]
    lp_means = [statistics.mean(h["delta_lp"] for h in r["metrics"]["heldout"].values()) for r in ft]
    lp_worst = [min(h["delta_lp"] for h in r["metrics"]["heldout"].values()) for r in ft]
    row = by[("ft", "")]
    assert row["Seeds"] == "3"
    assert row["Target acc"] == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    assert row["ΔLP"] == f"{statistics.mean(lp_means):+.2f} ± {statistics.stdev(lp_means):.2f}"
    assert row["Worst ΔLP"] == f"{statistics.mean(lp_worst):+.2f}"
    # params are part of the row identity; a registered method's default values (l2sp's alpha 0.5) are not shown
    assert by[("l2sp", "")]["Seeds"] == "2" and by[("l2sp", "alpha=5")]["Seeds"] == "1"
    # sorted by mean ΔLP, descending: l2sp a=5 (-0.5), l2sp a=0.5 (-0.8125), wise (-2), ft (-6.58)
    assert [(r["Rank"], r["Method"], r["Params"]) for r in rows] == [
        ("1", "l2sp", "alpha=5"), ("2", "l2sp", ""), ("3", "wise", "mix=0.5"), ("4", "ft", "")]
    assert rows[0]["ΔZS"] == "" and rows[0]["Worst ΔZS"] == ""  # no text tower: blank
    assert "L2 drift" not in rows[0] and "OTDD" not in rows[0]  # drift columns only when some record has them


def test_single_seed_has_no_std():
    rows = table_rows(render(RUNS), "## mini-shapes (version 1)")
    wise = next(r for r in rows if r["Method"] == "wise")
    assert wise["Target acc"] == "88.00" and wise["ΔLP"] == "-2.00" and "±" not in wise["ΔLP"]


def test_zero_shot_and_drift_columns():
    runs = [rec("ft", 0, 90.0, [-2.0, -4.0], dzs=[-5.0, -7.0], drift=[0.1, 0.3]),
            rec("ft", 1, 92.0, [-1.0, -3.0], dzs=[-6.0, -2.0], drift=[0.2, 0.2]),
            rec("lp", 0, 80.0, [0.0, 0.0])]  # no text tower, no drift: blank cells
    rows = table_rows(render(runs), "## mini-shapes (version 1)")
    ft, lp = rows[1], rows[0]
    zs_means = [statistics.mean([-5.0, -7.0]), statistics.mean([-6.0, -2.0])]
    assert ft["ΔZS"] == f"{statistics.mean(zs_means):+.2f} ± {statistics.stdev(zs_means):.2f}"
    assert ft["Worst ΔZS"] == f"{statistics.mean([-7.0, -6.0]):+.2f}"
    assert ft["L2 drift"] == f"{statistics.mean([0.2, 0.2]):.2f}"
    assert lp["Method"] == "lp" and lp["ΔZS"] == "" and lp["L2 drift"] == "" and lp["ΔLP"] == "+0.00"


def test_only_latest_version_ranked_and_task_note():
    spec = {"finetune": {"dataset": "mini/shapes"}, "heldout": ["mini/colours", "mini/bg"]}
    runs = RUNS + [rec("ft", 0, 99.0, [5.0], version=2, spec=spec), rec("b", 0, 50.0, [1.0], task="a-task")]
    md = render(runs)
    assert md.index("## a-task (version 1)") < md.index("## mini-shapes (version 2)")  # tasks sorted by name
    assert "## mini-shapes (version 1)" not in md
    rows = table_rows(md, "## mini-shapes (version 2)")
    assert [(r["Method"], r["Seeds"]) for r in rows] == [("ft", "1")]
    assert f"Older task versions, not ranked: version 1 ({len(RUNS)} records)." in md
    assert "Fine-tune: `mini/shapes`. Held-out: `mini/colours`, `mini/bg`." in md
    assert "generated by `forgetbench leaderboard`" in md and "do not edit" in md


def test_deterministic_and_order_independent(tmp_path):
    shuffled = RUNS[:]
    random.Random(0).shuffle(shuffled)
    assert render(shuffled) == render(RUNS)
    write_leaderboard([parse_record(r) for r in RUNS], tmp_path / "a.md")
    write_leaderboard([parse_record(r) for r in shuffled], tmp_path / "b.md")
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == render(RUNS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.md"]  # no temp files left


def test_bad_or_conflicting_records_refused():
    bad = rec("ft", 0, 90.0, [-1.0])
    del bad["metrics"]["summary"]
    with pytest.raises(SpecError, match="metrics.summary: missing required field"):
        render([bad])
    a = rec("ft", 0, 90.0, [-1.0])
    b = rec("ft", 0, 91.0, [-1.0])
    assert render([a, a]) == render([a])  # exact duplicates collapse
    with pytest.raises(SpecError, match="two different records"):
        render([a, b])


def test_empty():
    assert "No results yet" in render([])
