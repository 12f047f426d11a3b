"""forgetbench audit: any (reference, tuned) pair scored like a benchmark run; weights read safely; CI guards."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from forgetbench.audit import (FailCondition, audit, concept_changes, load_suite, read_state_dict, select_visual,
                               summary_line)
from forgetbench.cli import main
from forgetbench.errors import SpecError, UnknownNameError, WeightsError
from forgetbench.models.mini_clip import build_untrained, load_pretrained
from forgetbench.run import run_one, weights_path

from pipeline_helpers import SUITE_TINY, tiny_task

TOL = 1e-6


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny forgetbench run (3 steps of ft) that saved its fine-tuned encoder: (task, record, weights file)."""
    out = tmp_path_factory.mktemp("weights")
    task = tiny_task(steps=3)
    record = run_one(task, "ft", 0, progress=False, weights_dir=out).to_json()
    return task, record, weights_path(out, task.name, "ft", 0, record["run_id"])


def assert_agrees(result, record):
    """Every held-out number and summary statistic of the audit equals the run's own, within TOL."""
    expected = record["metrics"]["heldout"]
    assert set(result["heldout"]) == set(expected)
    for name, m in expected.items():
        got = result["heldout"][name]
        m = {k: v for k, v in m.items() if k != "correct"}  # a run's per-image bits; an audit reports the numbers
        assert set(got) == set(m)
        for k in set(m) - {"drift"}:  # lp, lp_reference, delta_lp and, with a text tower, the same for zs
            assert abs(got[k] - m[k]) <= TOL, (name, k, got[k], m[k])
        for k, v in m["drift"].items():
            assert abs(got["drift"][k] - v) <= TOL, (name, k, got["drift"][k], v)
    summary = record["metrics"]["summary"]
    assert set(result["summary"]) == set(summary)
    for k, v in summary.items():
        assert abs(result["summary"][k] - v) <= TOL, (k, result["summary"][k], v)


def test_audit_of_a_forgetbench_checkpoint_agrees_with_the_run(finetuned):
    task, record, path = finetuned
    assert record["metrics"]["summary"]["weight_drift"] > 0  # the encoder did change: the check has teeth
    result = audit("mini-clip", path, task)
    assert_agrees(result, record)
    assert result["tuned"]["metadata"]["run_id"] == record["run_id"] and result["seed"] == 0
    assert result["tuned"]["prefix"] == "" and result["tuned"]["ignored_tensors"] == 0
    assert not result["tuned"]["identical_to_reference"]
    concepts = result["concepts"]
    assert [c["delta"] for c in concepts] == sorted(c["delta"] for c in concepts)  # worst first
    assert sum(c["samples"] for c in concepts) == 64  # every test image of test/colours, once


def test_audit_of_a_plain_pytorch_checkpoint_works_the_same(finetuned, tmp_path):
    """Weights saved by code that knows nothing of forgetbench: torch.save of a whole open_clip model."""
    task, record, path = finetuned
    clip = load_pretrained()
    clip.visual.load_state_dict(read_state_dict(path)[0])
    torch.save(clip.state_dict(), tmp_path / "clip-finetuned.pt")
    result = audit("mini-clip", tmp_path / "clip-finetuned.pt", task)
    assert_agrees(result, record)
    assert result["tuned"]["format"] == "torch" and result["tuned"]["prefix"] == "visual."
    assert result["tuned"]["ignored_tensors"] > 0  # the text tower is read past, never used
    assert result["tuned"]["metadata"] == {}


def test_cli_audit_writes_the_report_and_fails_when_told(finetuned, tmp_path, capsys):
    task, record, path = finetuned
    clip = load_pretrained()
    clip.visual.load_state_dict(read_state_dict(path)[0])
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, tmp_path / "visual.safetensors")
    (tmp_path / "tiny.yaml").write_text(SUITE_TINY)
    out = tmp_path / "report"
    argv = ["audit", "--reference", "mini-clip", "--tuned", str(tmp_path / "visual.safetensors"),
            "--suite", str(tmp_path / "tiny.yaml"), "--out", str(out), "--seed", "0", "--device", "cpu"]
    code = main(argv + ["--fail-if", "worst_delta_lp<-1000", "--fail-if", "mean_delta_zs<1000"])
    stdout = capsys.readouterr().out
    assert code == 1  # the second condition holds
    assert "--fail-if worst_delta_lp<-1000: delta_lp_worst = " in stdout and "does not hold" in stdout
    assert "--fail-if mean_delta_zs<1000: delta_zs_mean = " in stdout and "holds, failing" in stdout
    saved = json.loads((out / "audit.json").read_text())
    assert_agrees(saved, record)
    md = (out / "report.md").read_text()
    assert saved["summary_line"] in md and "## Worst-hit concepts" in md and "| test/colours" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "http" not in html.replace("http-equiv", "")
    assert sorted(p.name for p in out.iterdir()) == ["audit-deltas.png", "audit-deltas.svg", "audit-drift.png",
                                                     "audit-drift.svg", "audit.json", "report.html", "report.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".audit-")]  # temporary folder removed


def test_fail_if_parsing_and_evaluation():
    result = {"summary": {"delta_lp_mean": -2.5, "delta_lp_worst": -6.0}}
    assert FailCondition.parse("mean_delta_lp<-2").holds(result)
    assert not FailCondition.parse(" mean_delta_lp <= -3 ").holds(result)
    assert FailCondition.parse("delta_lp_worst>=-6").holds(result)  # the summary's own name works too
    assert not FailCondition.parse("worst_delta_lp>-6.0").holds(result)
    assert FailCondition.parse("mean_delta_lp<-1e0").threshold == -1.0
    for bad, needle in [("mean_dlp<-2", "unknown metric 'mean_dlp'"), ("mean_delta_lp=-2", "expected METRIC OP"),
                        ("mean_delta_lp<", "expected METRIC OP"), ("mean_delta_lp<abc", "expected METRIC OP")]:
        with pytest.raises(SpecError, match=needle):
            FailCondition.parse(bad)
    with pytest.raises(SpecError, match="has no delta_zs_mean"):
        FailCondition.parse("mean_delta_zs<0").holds(result)


def test_cli_refuses_a_bad_condition_before_any_work(tmp_path, capsys):
    code = main(["audit", "--reference", "mini-clip", "--tuned", str(tmp_path / "absent.pt"), "--fail-if", "x<1"])
    assert code == 2 and "unknown metric 'x'" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_in_a_checkpoint_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"refused .*needs the Python object \S*open, .*could run code") as e:
        read_state_dict(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(e.value) and "set to `False`" not in str(e.value)  # never advised
    (tmp_path / "legacy.pkl").write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(tmp_path / "legacy.pkl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="neither a safetensors file nor a PyTorch state dict"):
        read_state_dict(tmp_path / "notes.txt")
    assert not marker.exists()


def test_state_dict_prefixes_wrappers_and_wrong_architectures(tmp_path):
    visual = build_untrained().visual
    state = {k: v.clone() for k, v in visual.state_dict().items()}
    for prefix in ("", "visual.", "module.visual.", "_orig_mod.model.visual."):
        got, found, ignored = select_visual({prefix + k: v for k, v in state.items()} | {"text.w": torch.ones(2)},
                                            visual, "f")
        assert found == prefix and ignored == 1 and all(torch.equal(got[k], state[k]) for k in state)
    half, _, _ = select_visual({k: v.half() for k, v in state.items()}, visual, "f")  # fp16 files are cast back
    assert all(half[k].dtype == state[k].dtype for k in state)
    torch.save({"state_dict": {f"visual.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    tensors, _, kind = read_state_dict(tmp_path / "ckpt.pt")  # a training checkpoint with the weights inside
    assert kind == "torch" and set(tensors) == {f"visual.{k}" for k in state}
    missing = dict(state)
    del missing["conv1.weight"]
    with pytest.raises(WeightsError, match="conv1.weight"):
        select_visual(missing, visual, "f")
    wrong = dict(state, **{"conv1.weight": torch.zeros(3, 3)})
    with pytest.raises(WeightsError, match="has shape"):
        select_visual(wrong, visual, "f")
    with pytest.raises(WeightsError, match="unexpected tensors under 'visual.'"):
        select_visual({f"visual.{k}": v for k, v in state.items()} | {"visual.lora_A": torch.ones(1)}, visual, "f")


def test_suites(tmp_path):
    mini = load_suite("mini")
    assert mini.evaluate.datasets == ("mini/shapes", "mini/colours", "mini/textures", "mini/positions",
                                      "mini/counts", "mini/digits")
    assert mini.evaluate.drift == ("l2", "kernel", "otdd") and mini.evaluate.linear_probe.C_grid == (0.1, 1, 10, 100)
    assert load_suite("mini", exclude=["mini/shapes"]).evaluate.datasets[0] == "mini/colours"
    assert load_suite("tasks/mini-shapes.yaml").evaluate.datasets[0] == "mini/colours"  # a task file is a suite
    from forgetbench.data import DATASETS

    for name in ("mini", "standard"):  # every shipped suite names registered datasets only
        for dataset in load_suite(name).evaluate.datasets:
            DATASETS.get(dataset)
    assert load_suite("standard").evaluate.datasets[0] == "stanford-cars"
    with pytest.raises(UnknownNameError, match="did you mean 'mini'"):
        load_suite("minni")
    with pytest.raises(SpecError, match="not in suite 'mini'"):
        load_suite("mini", exclude=["mini/cars"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nevaluate: {datasets: [mini/colours]}\nseeds: [0]\n")
    with pytest.raises(SpecError, match="seeds: unknown key"):
        load_suite(str(bad))
    bad.write_text("name: x\nevaluate: {datasets: [mini/colours], drift: [l3]}\n")
    with pytest.raises(SpecError, match="l3"):
        load_suite(str(bad))


def test_concepts_known_answer():
    class Ds:
        name, classnames = "d", ["a", "b", "c"]

    text = np.eye(3)  # class k is the k-th axis
    labels = np.array([0, 0, 1, 1, 2, 2])
    f_ref = np.eye(3)[labels] + 0.01  # everything right before
    f_tuned = f_ref.copy()
    f_tuned[2] = [0.0, 0.0, 1.0]  # one of the two 'b' now looks like 'c'
    f_tuned[3] = [1.0, 0.0, 0.0]  # the other like 'a'
    f_tuned[4] = [1.0, 0.0, 0.0]  # one 'c' like 'a'
    out = {c["concept"]: c for c in concept_changes(Ds, f_ref, f_tuned, labels, text)}
    assert (out["a"]["delta"], out["b"]["delta"], out["c"]["delta"]) == (0.0, -100.0, -50.0)
    assert out["b"]["reference"] == 100.0 and out["b"]["tuned"] == 0.0 and out["b"]["samples"] == 2
    drift = {c["concept"]: c for c in concept_changes(Ds, f_ref, f_tuned, labels, None)}
    assert drift["a"]["tuned"] == pytest.approx(0.0) and drift["b"]["tuned"] > drift["c"]["tuned"] > 0


def test_summary_line_says_what_was_lost():
    result = {"summary": {"delta_lp_mean": -3.0, "delta_zs_mean": -10.0},
              "heldout": {"x": {"delta_lp": -1.0}, "y": {"delta_lp": -5.0}},
              "concepts": [{"dataset": "y", "concept": "red", "measure": "zero-shot accuracy %", "reference": 90.0,
                            "tuned": 40.0, "delta": -50.0}], "tuned": {}}
    assert summary_line(result) == ("The fine-tuned model lost 3.00 points of linear-probe accuracy on average over 2 "
                                    "held-out datasets (most on y: -5.00); zero-shot accuracy fell by 10.00 points; "
                                    "hardest hit: 'red' in y (90% -> 40% zero-shot).")


def test_run_saves_weights_only_when_asked():
    from forgetbench.cli import build_parser

    parse = build_parser().parse_args
    assert not parse(["run", "mini-shapes"]).save_weights
    args = parse(["run", "--save-weights", "mini-shapes"])
    assert args.save_weights and args.weights_dir == "weights" and args.task == "mini-shapes"
    assert parse(["run", "--save-weights", "--weights-dir", "w"]).weights_dir == "w"
