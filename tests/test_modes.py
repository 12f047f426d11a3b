"""Fine-tuning modes (train.mode): each mode trains exactly the parameters it declares, zero steps give the
pre-trained features, LoRA merges into the same forward pass, VQT leaves the backbone's features alone; the mode is
part of a run's identity, and a method that makes no sense in a mode is refused before any work."""
import copy

import pytest
import torch

from forgetbench.dryrun import dry_run
from forgetbench.errors import SpecError
from forgetbench.methods import get_method
from forgetbench.models import get_model
from forgetbench.models.taps import LayerTaps, transformer_blocks
from forgetbench.modes import MODES, MODULE_NAME, PeftDefaults, apply_mode, check_pair, identity, merge_lora
from forgetbench.records import run_id
from forgetbench.run import run_one
from forgetbench.tasks import load_task
from forgetbench.tasks.variants import parse_sets, with_settings

from pipeline_helpers import tiny_task
from test_pipeline import _no_change

MODELS = {"mini-clip": "mini-clip", "openclip": "openclip:forgetbench-mini-clip@random",
          "timm": "timm:vit_tiny_patch16_224@random?img_size=32"}


class Train:
    """A ``train`` section as the modes read it."""

    def __init__(self, mode, **peft):
        self.mode = mode
        self.peft = PeftDefaults(**peft) if peft else None


@pytest.fixture(scope="module", params=sorted(MODELS))
def reference(request):
    torch.manual_seed(0)
    model = get_model(MODELS[request.param])
    model.visual.eval()
    return model.visual


def _images(n=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _student(visual, mode, **peft):
    torch.manual_seed(0)
    student = copy.deepcopy(visual)
    apply_mode(student, Train(mode, **peft))
    return student.eval()


def _one_step(student, lr=1e-2):
    """One AdamW step (no weight decay) on a loss of the features, as a fine-tune takes it."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if params else None
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.train()
    loss = student(_images()).pow(2).mean()
    if opt is not None:
        loss.backward()
        opt.step()
    student.eval()
    return before


def _changed(student, before):
    return {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("mode", [m for m in MODES if m != "vpt"])
def test_zero_steps_in_a_mode_give_the_pre_trained_features(reference, mode):
    with torch.no_grad():
        expected = reference(_images())
        assert torch.equal(_student(reference, mode)(_images()), expected)


def test_vpt_tokens_change_the_features_from_the_start_and_leave_with_the_pooled_output(reference):
    """VPT's tokens are attended from step 0 (no known answer equals the pre-trained features); the output keeps the
    pre-trained shape, the tokens being dropped before pooling."""
    with torch.no_grad():
        out = _student(reference, "vpt")(_images())
        assert out.shape == reference(_images()).shape
        assert not torch.allclose(out, reference(_images()))


def test_bitfit_trains_biases_only(reference):
    student = _student(reference, "bitfit")
    changed = _changed(student, _one_step(student))
    assert changed and all(k.endswith("bias") for k in changed)
    assert all(p.requires_grad == n.endswith("bias") for n, p in student.named_parameters())


def test_lora_trains_its_adapters_only_and_merging_reproduces_the_forward_pass(reference):
    student = _student(reference, "lora", lora_rank=2, lora_alpha=4.0)
    before = _one_step(student)
    changed = _changed(student, before)
    assert changed and all(k.endswith((".A", ".B")) for k in changed)
    assert any(k.endswith(".B") for k in changed)  # B starts at zero: the update is no longer zero
    with torch.no_grad():
        unmerged = student(_images())
        merge_lora(student)
        merged = student(_images())
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert set(student.state_dict()) == set(reference.state_dict())  # the plain architecture again
    assert not torch.allclose(merged, reference(_images()).detach())


@pytest.mark.parametrize("mode, peft", [("vpt", {}), ("vpt", {"vpt_deep": False}), ("adapter", {}), ("vqt", {})])
def test_added_module_modes_leave_the_backbones_own_weights_unchanged(reference, mode, peft):
    student = _student(reference, mode, **peft)
    changed = _changed(student, _one_step(student))
    own = set(reference.state_dict())
    assert changed and not changed & own
    assert all(k.startswith(f"{MODULE_NAME}.") for k in changed)


def test_shallow_vpt_is_the_backbone_run_on_the_tokens_with_the_prompts_inserted():
    """Known answer for shallow VPT on the mini CLIP: open_clip's own forward, by hand, with the prompts after the
    class token and dropped before pooling."""
    visual = get_model("mini-clip").visual.eval()
    student = _student(visual, "vpt", vpt_deep=False, vpt_tokens=3)
    prompts = getattr(student, MODULE_NAME).prompts[0]
    with torch.no_grad():
        x = visual._embeds(_images())
        x = torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        x = visual.transformer(x)
        x = torch.cat([x[:, :1], x[:, 4:]], dim=1)
        pooled, _ = visual._pool(x)
        assert torch.allclose(student(_images()), pooled @ visual.proj, atol=1e-6)


def test_linear_mode_trains_no_encoder_parameter(reference):
    student = _student(reference, "linear")
    assert not any(p.requires_grad for p in student.parameters())


def test_vqt_leaves_the_backbones_intermediate_features_unchanged(reference):
    student = _student(reference, "vqt")
    _one_step(student, lr=0.1)
    taps = [LayerTaps(transformer_blocks(v)[1]) for v in (student, reference)]
    with torch.no_grad():
        tuned, pre = student(_images()), reference(_images())
    for a, b in zip(*(t.outputs for t in taps)):
        assert torch.equal(a, b)
    assert not torch.allclose(tuned, pre)  # the queries' read-out did move the features
    for t in taps:
        t.remove()


def test_the_mode_is_part_of_the_run_id_and_full_keeps_the_old_one():
    assert identity(Train(None)) is None and identity(Train("full")) is None
    plain = run_id("t", 1, "ft", {"lr_scale": 1.0}, 0)
    assert run_id("t", 1, "ft", {"lr_scale": 1.0}, 0, identity(Train("full"))) == plain
    lora = run_id("t", 1, "ft", {"lr_scale": 1.0}, 0, identity(Train("lora")))
    assert lora != plain
    assert run_id("t", 1, "ft", {"lr_scale": 1.0}, 0, identity(Train("lora", lora_rank=8))) != lora
    # a setting of another mode is not part of this one's identity
    assert run_id("t", 1, "ft", {"lr_scale": 1.0}, 0, identity(Train("lora", adapter_dim=3))) == lora


def test_a_mode_leaves_the_task_measurement_and_its_records_check_out():
    task = load_task("mini-noise")
    lora = with_settings(task, parse_sets(["train.mode=lora", "train.peft.lora_rank=2"]))
    assert lora.train.mode == "lora" and lora.train.peft.lora_rank == 2
    assert lora.measurement() == task.measurement()
    with pytest.raises(SpecError, match="cannot be set on the command line"):
        parse_sets(["train.lr=1"])
    with pytest.raises(SpecError, match="did you mean 'lora'"):
        with_settings(task, parse_sets(["train.mode=lorra"]))


@pytest.mark.parametrize("method, mode, match", [
    ("lp", "lora", "trains no encoder"), ("l2sp", "vpt", "pre-trained weight of the same name"),
    ("wise-ft", "adapter", "interpolates the encoder's weights"), ("ldifs", "vpt", "change their number"),
    ("ldifs", "linear", "linear freezes")])
def test_a_method_that_makes_no_sense_in_a_mode_is_refused_in_one_line(method, mode, match):
    with pytest.raises(SpecError, match=match):
        check_pair(mode, get_method(method))
    with pytest.raises(SpecError, match=match):  # before any work: nothing is built or written
        run_one(tiny_task(steps=1, mode=mode), method, 0, progress=False)
    with pytest.raises(SpecError, match=match):  # the dry run refuses it as the run does
        dry_run(tiny_task(steps=1, mode=mode), [method], out=lambda *a: None, allow_missing=True)


def test_sensible_pairs_pass():
    for method, mode in [("ft", m) for m in MODES] + [("l2sp", "bitfit"), ("wise-ft", "lora"), ("ldifs", "vqt")]:
        check_pair(mode, get_method(method))


def test_a_sequence_task_refuses_a_mode():
    task = load_task("mini-sequence")
    with pytest.raises(SpecError, match="not supported in a sequence task"):
        with_settings(task, {"train.mode": "lora"})


def test_a_mode_run_records_its_trainable_parameters_and_peak_memory():
    record = run_one(tiny_task(steps=2, mode="lora", peft={"lora_rank": 2}), "ft", 0, progress=False)
    width, blocks = 128, 4  # the mini CLIP: q/k/v (3 x width out) and output projections, rank 2
    assert record.training["trainable_params"] == blocks * 2 * ((width + 3 * width) + (width + width))
    assert record.training["trainable_params_total"] > record.training["trainable_params"]  # the head too
    assert record.training["peak_memory_mb"] > 0
    assert record.training["memory_measure"] in ("cpu_malloc_in_use_growth", "cpu_rss_growth")
    assert record.task.spec["train"]["mode"] == "lora"
    assert record.mode == "lora" and "(lora)" in record.label


@pytest.mark.parametrize("mode", ["adapter", "vqt"])
def test_zero_steps_of_a_mode_run_forget_nothing(mode):
    _no_change(run_one(tiny_task(steps=0, mode=mode), "ft", 0, progress=False))


def test_peak_memory_counts_what_is_allocated_inside_and_not_what_was_freed_before():
    from forgetbench.peak_memory import PeakMemory

    big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB held, then freed: a reused process holds such memory
    del big
    with PeakMemory("cpu") as small:
        torch.ones(1024 * 1024 // 4).sum()  # 1 MB
    with PeakMemory("cpu") as large:
        x = torch.ones(32 * 1024 * 1024 // 4)  # 32 MB alive for a while
        import time

        time.sleep(0.1)
        del x
    assert 30 <= large.record()["peak_memory_mb"] <= 40 and small.record()["peak_memory_mb"] < 8


def test_a_mode_sweep_selects_per_mode_and_the_board_shows_a_mode_column(tmp_path, capsys):
    import yaml

    from forgetbench.cli import main
    from forgetbench.records import ResultStore
    from forgetbench.report.leaderboard import render_leaderboard

    spec = {**tiny_task(steps=2, drift=("l2",)).to_dict(), "selection": {"reference": "ft", "within": 100.0,
                                                                        "seeds": 1}}
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    results = str(tmp_path / "results")
    assert main(["sweep", str(task_file), "--methods", "ft", "--grid", "ft.lr_scale=1", "--results", results]) == 0
    assert "| Mode " not in render_leaderboard(ResultStore(results).load())  # one mode: no Mode column
    argv = ["sweep", str(task_file), "--tradeoff", "--methods", "ft", "--grid", "train.mode=bitfit,lora",
            "--grid", "ft.lr_scale=3,0.5", "--results", results]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(train.mode bitfit): 2 runs" in out and "(train.mode lora): 2 runs" in out
    # within 100 points every setting is in: each mode's smallest learning rate is its selected one
    assert "selected ft (bitfit): lr_scale=0.5" in out and "selected ft (lora): lr_scale=0.5" in out
    records = ResultStore(results).load()
    assert sorted((r.mode, r.method.params["lr_scale"]) for r in records) == [
        ("bitfit", 0.5), ("bitfit", 3.0), ("full", 1.0), ("lora", 0.5), ("lora", 3.0)]
    assert len({r.run_id for r in records}) == 5
    board = render_leaderboard(records)
    rows = [line for line in board.splitlines() if line.startswith("| ") and " ft" in line]
    assert "| Mode " in board and len(rows) == 3  # each mode's selected setting is its own row
    assert sorted(line.split("|")[3].strip() for line in rows) == ["bitfit", "full", "lora"]
    assert main(argv) == 0 and "launching 0" in capsys.readouterr().out  # resumed: nothing left to run


def test_a_mode_record_is_verified_in_its_mode(tmp_path):
    import json

    from forgetbench.tasks import TaskSpec
    from forgetbench.tasks.variants import settings_of_record

    record = run_one(tiny_task(steps=1, mode="adapter", peft={"adapter_dim": 3}), "ft", 0, progress=False)
    settings = settings_of_record(json.loads(json.dumps(record.to_json()))["task"]["spec"])
    assert settings == {"train.mode": "adapter", "train.peft.adapter_dim": 3}
    again = run_one(with_settings(tiny_task(steps=1), settings), "ft", 0, progress=False)
    assert again.run_id == record.run_id
    assert again.metrics.summary["delta_lp_mean"] == record.metrics.summary["delta_lp_mean"]  # deterministic
    assert settings_of_record(TaskSpec.to_dict(tiny_task())) == {}
