"""The reproduction ledger: published numbers paired with the right measurements, intervals over seeds, verdicts,
the entries' task files, and a reproduction that refuses to start while anything it needs is missing."""
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from fake_real_data import FAKES
from forgetbench.cli import main
from forgetbench.errors import SpecError, UnknownNameError
from forgetbench.records import ResultStore
from forgetbench.reproduce.costs import entry_hours, task_hours
from forgetbench.reproduce.entries import ENTRIES, entry
from forgetbench.reproduce.ledger import ledger_rows, render_html, render_markdown, seed_interval
from forgetbench.reproduce.measures import per_seed
from forgetbench.tasks import TaskSpec, load_task

ROOT = Path(__file__).resolve().parent.parent
T975 = {1: 12.706204736, 2: 4.302652730}  # Student-t 97.5% quantiles, 1 and 2 degrees of freedom (tables)


class Rec:
    """A synthetic record: what the ledger reads of a stored one (task, method, seed, metrics)."""

    def __init__(self, task, method, seed, metrics, version=None):
        self.task = SimpleNamespace(name=task, version=version if version is not None else load_task(task).version)
        self.method = SimpleNamespace(name=method, params={})
        self.seed, self.run_id, self._metrics = seed, f"{task}/{method}/{seed}/{version}", metrics

    def to_json(self):
        return {"metrics": copy.deepcopy(self._metrics)}


def _table1_records(deltas, accs, seeds=(0, 1), tasks=None, version=None):
    """Every Table 1 task, for each method, with delta LP ``deltas[method](task index, seed)`` and A_LP likewise."""
    tasks = tasks if tasks is not None else entry("proxy-fda-table1").tasks
    return [Rec(t, m, s, {"target": {"acc": accs[m](i, s)}, "summary": {"delta_lp_mean": deltas[m](i, s)}}, version)
            for i, t in enumerate(tasks) for m in deltas for s in seeds]


def _row(rows, method, metric):
    (row,) = [r for r in rows if r.target.method == method and r.target.metric == metric]
    return row


def test_seed_interval_is_the_student_t_interval():
    iv = seed_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.lo == pytest.approx(2 - T975[2] / math.sqrt(3)) and iv.hi == pytest.approx(2 + T975[2] / math.sqrt(3))
    one = seed_interval([5.0])
    assert (one.mean, one.lo, one.hi, one.half_width) == (5.0, None, None, 0.0)


def test_a_ledger_cell_compares_the_published_number_with_the_same_methods_measurement():
    # ft's delta LP over the ten tasks averages to the published -4.37 and proxy-fda's to +1.54 (tasks differ, the
    # mean does not); their A_LP is published 91.90 / 91.82 and measured 80 / 95 (outside the tolerance of 1 point)
    spread = [-0.9, 0.9] * 5
    deltas = {"ft": lambda i, s: -4.37 + spread[i] + (0.1 if s else -0.1),
              "proxy-fda": lambda i, s: 1.54 + spread[i]}
    accs = {"ft": lambda i, s: 80.0, "proxy-fda": lambda i, s: 95.0}
    rows = ledger_rows(entry("proxy-fda-table1"), _table1_records(deltas, accs))
    ft = _row(rows, "ft", "summary.delta_lp_mean")
    assert ft.target.value == -4.37 and ft.target.row == "Naive FT" and len(ft.tasks) == 10
    assert ft.measured.mean == pytest.approx(-4.37) and ft.measured.n == 2
    assert ft.measured.half_width == pytest.approx(T975[1] * 0.1)  # seeds -4.47, -4.27: sd 0.1414, / sqrt(2)
    assert ft.difference == pytest.approx(0.0, abs=1e-9) and ft.verdict == "within tolerance"
    pfda = _row(rows, "proxy-fda", "summary.delta_lp_mean")
    assert pfda.target.value == 1.54 and pfda.measured.mean == pytest.approx(1.54) and pfda.verdict == "within tolerance"
    acc = _row(rows, "proxy-fda", "target.acc")
    assert acc.target.value == 91.82 and acc.measured.mean == pytest.approx(95.0)
    assert acc.difference == pytest.approx(3.18) and acc.verdict == "outside tolerance"
    assert _row(rows, "ldifs", "target.acc").verdict == "not run yet"
    # a wrong pairing fails: with the methods' records swapped, ft's published -4.37 meets +1.54 and is refused
    swapped = ledger_rows(entry("proxy-fda-table1"),
                          _table1_records({"ft": deltas["proxy-fda"], "proxy-fda": deltas["ft"]}, accs))
    assert _row(swapped, "ft", "summary.delta_lp_mean").measured.mean == pytest.approx(1.54)
    assert _row(swapped, "ft", "summary.delta_lp_mean").verdict == "outside tolerance"
    md = render_markdown(entry("proxy-fda-table1"), rows)
    assert "| Table 1 | Naive FT | ft | summary.delta_lp_mean | -4.37 | -4.37 [" in md and "| +0.00 | within" in md


def test_a_mean_over_part_of_the_tasks_or_an_old_task_version_is_not_measured():
    const = {"ft": lambda i, s: -4.37}
    nine = _table1_records(const, const, tasks=entry("proxy-fda-table1").tasks[:9])
    row = _row(ledger_rows(entry("proxy-fda-table1"), nine), "ft", "summary.delta_lp_mean")
    assert row.measured is None and row.verdict == "incomplete: 9 of 10 tasks recorded"
    old = _table1_records(const, const, version=7)
    assert _row(ledger_rows(entry("proxy-fda-table1"), old), "ft", "summary.delta_lp_mean").verdict == "not run yet"


def test_mtil_rows_read_the_sequence_metrics_and_the_zero_shot_row_the_pre_trained_matrix():
    ref = [10.0 * (j + 1) for j in range(11)]  # the pre-trained model's accuracy on each of the eleven datasets
    R = [[50.0] * 11 for _ in range(11)]
    summary = {"transfer": 44.6, "avg": 55.9, "last": 77.3}
    recs = [Rec("mtil-order1", "ft", 0, {"zs": {"R": R, "reference": ref, "summary": summary}}),
            Rec("mtil-order1", "lwf", 0, {"zs": {"R": R, "reference": ref, "summary": {"transfer": 10.0}}})]
    rows = ledger_rows(entry("mtil-order1"), recs)
    zs = {r.target.metric: r for r in rows if r.target.method is None}
    assert zs["zs.reference_summary.transfer"].measured.mean == pytest.approx(sum(ref[1:]) / 10)  # 65.0
    assert zs["zs.reference_summary.avg"].measured.mean == pytest.approx(60.0)
    assert zs["zs.reference_summary.last"].measured.mean == pytest.approx(60.0)
    assert zs["zs.reference_summary.transfer"].target.value == 69.4
    assert _row(rows, "ft", "zs.summary.last").measured.mean == 77.3
    assert _row(rows, "ft", "zs.summary.last").verdict == "within tolerance"
    assert _row(rows, "lwf", "zs.summary.transfer").verdict == "outside tolerance"  # 10 against 56.9
    assert _row(rows, "lwf", "zs.summary.avg").verdict == "not measured: the records lack this metric"
    assert _row(rows, "zscl", "zs.summary.avg").verdict == "not run: zscl is not among the task's methods"


def test_a_stated_direction_is_checked_and_a_mini_analogue_is_never_judged_against_the_papers_number():
    gains = {0: 3.0, 1: 4.0, 2: 5.0}
    recs = [Rec("mini-absent", "ft", s, {"absent": {"calibrated": {"absent_all": 40.0 + g},
                                                     "acc": {"absent_all": 40.0}, "ausuc": 0.5 - g / 100,
                                                     "reference": {"ausuc": 0.5}}}) for s, g in gains.items()]
    rows = ledger_rows(entry("mini-calibrated"), recs)
    gap = _row(rows, "ft", "absent.calibrated.absent_all - absent.acc.absent_all")
    assert gap.measured.mean == pytest.approx(4.0) and gap.verdict == "direction holds (> 0)"
    assert _row(rows, "ft", "absent.ausuc - absent.reference.ausuc").verdict == "direction does not hold (> 0)"
    one_seed = ledger_rows(entry("mini-calibrated"), recs[:1])
    assert _row(one_seed, "ft", "absent.calibrated.absent_all - absent.acc.absent_all").verdict == \
        "direction holds (> 0), interval includes 0"
    mini = ledger_rows(entry("mini-table1"), _table1_records({"ft": lambda i, s: -4.37}, {"ft": lambda i, s: 91.9},
                                                             tasks=entry("mini-table1").tasks))
    row = _row(mini, "ft", "summary.delta_lp_mean")
    assert row.target.value == -4.37 and row.measured.mean == pytest.approx(-4.37)
    assert row.verdict == "analogue: not compared" and row.tasks == ("mini-shapes", "mini-counts", "mini-digits")
    assert "ANALOGUE" in render_markdown(entry("mini-table1"), mini)
    assert "| -4.37 | -4.37 [-4.37, -4.37] (n=2) | n/a (analogue) | analogue: not compared |" in \
        render_markdown(entry("mini-table1"), mini)  # no difference from a number it does not reproduce


def test_the_mini_correlation_measure_is_the_correlation_of_the_seeds_pooled_points():
    from forgetbench.report.correlation import correlations, points
    records = [r for t in entry("mini-fig3").tasks for r in ResultStore(ROOT / "results").load(t)]
    by_seed = per_seed(records, entry("mini-fig3").tasks, None, "corr.l2.spearman - corr.otdd.spearman")
    seed0 = points([r for r in records if r.seed == 0])
    table = correlations(seed0, drifts=["l2", "otdd"], n_boot=0).set_index("drift")["spearman_rho"]
    assert set(by_seed) == {0, 1, 2} and by_seed[0] == pytest.approx(table["l2"] - table["otdd"])
    with pytest.raises(SpecError, match="corr.<drift>"):
        per_seed(records, entry("mini-fig3").tasks, None, "corr.l2")


def test_the_ledger_renders_from_the_committed_mini_records(tmp_path, capsys):
    out = tmp_path / "ledger" / "mini-mtil.md"
    assert main(["reproduce", "mini-mtil", "--results", str(ROOT / "results"), "--no-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    assert "| Table 3 (MTIL Order I) | Continual FT: Last | ft | zs.summary.last | 77.30 |" in text
    assert "(n=3) |" in text and "analogue: not compared" in text
    assert list((tmp_path / "ledger").glob("mini-mtil-sequence*.png"))  # its figure, beside it
    html = render_html([(entry("mini-mtil"), ledger_rows(entry("mini-mtil"),
                                                          ResultStore(ROOT / "results").load("mini-sequence")))])
    assert 'id="reproduction-ledger"' in html and "Continual FT: Last" in html


def test_a_reproduction_reports_every_missing_dataset_and_weight_before_anything_runs(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    FAKES["cifar100"](data)
    FAKES["mnist"](data)
    monkeypatch.setenv("FORGETBENCH_DATA", str(data))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))  # no cached weights
    monkeypatch.delenv("FORGETBENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr("forgetbench.cli.reproducing.run_one", lambda *a, **k: pytest.fail("a run started"))
    results = tmp_path / "runs"
    for flags in ([], ["--dry-run"]):
        assert main(["reproduce", "mtil-order1", "--results", str(results), *flags]) == 2
        err = capsys.readouterr().err
        listed = [line.split(":")[0].strip() for line in err.splitlines() if line.startswith("  missing ")]
        expected = {"fgvc-aircraft", "caltech101", "dtd", "eurosat", "flowers102", "food101", "oxford-pets",
                    "stanford-cars", "sun397"}
        assert sorted(listed) == sorted(["missing weights openclip"] + [f"missing dataset {d}" for d in expected])
        assert "cifar100" not in err and "dataset mnist" not in err  # present: not listed
        assert "9 + 1" not in err and "10 item(s) missing" in err and "nothing was run" in err
    assert not results.exists()


def test_every_entry_names_valid_tasks_with_targets_and_a_cost():
    names = [e.name for e in ENTRIES]
    assert len(set(names)) == len(names)
    for e in ENTRIES:
        tasks = [load_task(t) for t in e.tasks]
        source = entry(e.analogue_of) if e.is_mini else e
        assert all(load_task(t).targets for t in source.tasks), e.name
        assert e.is_mini or (entry_hours(tasks) or 0) > 0, e.name
    with pytest.raises(UnknownNameError, match="did you mean 'mtil-order1'"):
        entry("mtil-ordr1")


def test_mtil_tasks_follow_zscl_with_their_own_rate_for_aircraft_and_mnist():
    for order, first in ((1, "fgvc-aircraft"), (2, "stanford-cars")):
        task = load_task(f"mtil-order{order}")
        seq = task.sequence
        assert len(seq.datasets) == 11 and seq.datasets[0] == first and task.model == "openclip:ViT-B-16@openai"
        assert (task.train.steps, task.train.batch_size, task.train.label_smoothing) == (1000, 64, 0.2)
        rates = {d: seq.step_train(i, task.train).lr for i, d in enumerate(seq.datasets)}
        assert rates["fgvc-aircraft"] == rates["mnist"] == 5e-5
        assert {r for d, r in rates.items() if d not in ("fgvc-aircraft", "mnist")} == {1e-5}
        values = {(t.method, t.metric): t.value for t in task.targets}
        assert values[(None, "zs.reference_summary.avg")] == 65.3
    assert load_task("mtil-order1").targets[3].value == 44.6  # Continual FT, Transfer (Table 3)
    assert {(t.method, t.metric): t.value for t in load_task("mtil-order2").targets}[("zscl", "zs.summary.last")] == 83.4
    # an hour per step's estimate: 11 x 1000 steps
    assert task_hours(load_task("mtil-order1")) > 11000 * 0.09 * 64 / 128 / 3600


def test_a_per_step_rate_must_name_a_step_of_the_sequence():
    task = load_task("mini-sequence").to_dict()
    task["sequence"]["lr"] = {"mini/colours": 1e-3}
    with pytest.raises(SpecError, match=r"sequence\.lr\.mini/colours.*not a dataset of sequence.datasets"):
        TaskSpec.from_dict(task)


def test_calibrated_tasks_hold_30_seen_classes_and_only_directions():
    for d in ("art", "clipart", "product", "real-world"):
        task = load_task(f"calibrated-office-home-{d}")
        assert len(task.finetune.seen_classes) == 30 and task.train.optimizer == "sgd" and task.train.steps == 10000
        assert all(t.value is None and t.claim == "> 0" for t in task.targets)
    fig3 = load_task("fig3-clip-vitb32-dtd")
    assert "otdd" in fig3.evaluate.drift and all(t.value is None for t in fig3.targets)


def test_each_sequence_step_trains_at_its_own_rate(monkeypatch):
    from forgetbench.protocols import sequence as sequence_protocol
    from forgetbench.run import run_one
    from pipeline_helpers import tiny_task
    d = tiny_task(steps=1, drift=()).to_dict()
    del d["finetune"]["dataset"]
    d["evaluate"]["datasets"] = []
    d["sequence"] = {"datasets": ["test/shapes", "test/colours"], "accuracy": ["zs"], "lr": {"test/colours": 0.5}}
    task = TaskSpec.from_dict(d)
    rates, real_finetune = [], sequence_protocol.finetune

    def spy(ctx, method, train_spec, *args, **kwargs):
        rates.append(train_spec.lr)
        return real_finetune(ctx, method, train_spec, *args, **kwargs)

    monkeypatch.setattr(sequence_protocol, "finetune", spy)
    record = run_one(task, "ft", 0, progress=False)
    assert rates == [task.train.lr, 0.5] and task.train.lr != 0.5
    assert record.to_json()["task"]["spec"]["sequence"]["lr"] == {"test/colours": 0.5}  # part of the protocol


@pytest.mark.parametrize("name", [e.name for e in ENTRIES if not e.is_mini])
def test_the_check_of_every_real_entry_names_each_missing_weight_and_dataset_once(name, tmp_path, monkeypatch):
    from forgetbench.reproduce.check import missing, task_datasets
    monkeypatch.setenv("FORGETBENCH_DATA", str(tmp_path))  # an empty data root
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("FORGETBENCH_ALLOW_DOWNLOAD", raising=False)
    tasks = [load_task(t) for t in entry(name).tasks]
    lines = missing(tasks)
    expected = {f"dataset {d}" for t in tasks for d in task_datasets(t)} | {f"weights {t.model}" for t in tasks}
    assert sorted(line.split(": ")[0] for line in lines) == sorted(expected)


@pytest.mark.parametrize("name", ["mtil-order1", "calibrated-office-home-clipart", "fig3-clip-vitb32-dtd"])
def test_dry_run_of_each_new_paper_task_family(name, tmp_path, monkeypatch):
    """Class names, templates and head set-up of the real datasets, one `ft` step on fake data (a tiny CLIP)."""
    import dataclasses
    from forgetbench.dryrun import dry_run
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "cache"))
    lines = []
    task = dataclasses.replace(load_task(name), model="openclip:forgetbench-mini-clip@random")
    dry_run(task, ["ft"], batch=4, out=lines.append, allow_missing=True)
    assert any("method ft: " in line and "loss" in line for line in lines)
    assert lines[-1].startswith("dry run INCOMPLETE")  # no data root here: says the datasets were not checked
