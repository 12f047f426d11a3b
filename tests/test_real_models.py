"""open_clip and timm models by spec string: built from architecture names without weights, loaded from local
checkpoints and from a (fake) Hugging Face cache, offline; pickled payloads are refused."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

from forgetbench.errors import SpecError, UnknownNameError, WeightsError
from forgetbench.models import MODELS, get_model, parse_spec, save_finetuned, state_dict_hash
from forgetbench.models.openclip import _tag_files

TINY_CLIP = "forgetbench-mini-clip"  # an open_clip config of the project: fast to build
TINY_TIMM = "vit_tiny_patch16_224"
TIMM_OPTS = "?img_size=32"


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """An empty Hugging Face cache of our own, downloads off (as by default)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("FORGETBENCH_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "hf"


def _perturbed(module: torch.nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_spec_strings_parse_and_bad_ones_are_one_line_errors():
    s = parse_spec("timm:vit_base_patch14_dinov2.lvd142m?img_size=224")
    assert (s.family, s.arch, s.weights, s.options, s.weights_kind) == \
        ("timm", "vit_base_patch14_dinov2.lvd142m", None, {"img_size": 224}, "pretrained")
    assert parse_spec("openclip:ViT-B-32@openai").weights_kind == "pretrained"
    assert parse_spec("openclip:ViT-B-32@/w/ft.safetensors").weights_kind == "file"
    for bad, match in [("openclip:ViT-B-32", "need their weights after '@'"), ("openclip:", "not of the form"),
                       ("timm:vit_small_patch16_224@augreg", "goes in the name"),
                       ("timm:vit_small_patch16_224?size=3", "unknown option"),
                       ("timm:vit_small_patch16_224?img_size=x", "must be an integer")]:
        with pytest.raises(SpecError, match=match) as e:
            MODELS.get(bad)
        assert "\n" not in str(e.value)


def test_unknown_architectures_and_tags_suggest_names():
    with pytest.raises(UnknownNameError, match="did you mean 'ViT-B-32'"):
        MODELS.get("openclip:ViT-B-31@openai")
    with pytest.raises(UnknownNameError, match="did you mean 'openai'"):
        MODELS.get("openclip:ViT-B-32@opneai")
    with pytest.raises(UnknownNameError, match="tags of vit_base_patch14_dinov2: lvd142m"):
        MODELS.get("timm:vit_base_patch14_dinov2.lvd143m")
    with pytest.raises(UnknownNameError, match="or a model spec: openclip:ARCH@TAG"):
        MODELS.get("mini-clp")
    with pytest.raises(UnknownNameError, match="unknown model 'clip:ViT-B-32@openai'.*or a model spec"):
        MODELS.get("clip:ViT-B-32@openai")
    assert callable(MODELS.get("openclip:ViT-B-32@openai"))  # resolving reads no weights


def test_openclip_vit_b32_builds_from_its_name_without_weights():
    model = get_model("openclip:ViT-B-32@random")
    assert model.feature_dim == 512 and model.has_text
    x = model.preprocess(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (40, 30)))
    assert tuple(x.shape) == (3, 224, 224)
    with torch.no_grad():
        assert model.visual(x[None]).shape == (1, 512)
        assert model.encode_text(["a photo of a cat."]).shape == (1, 512)
    # seeded: the same random weights every time, so their features cache like any other weights
    assert state_dict_hash(get_model("openclip:ViT-B-32@random").visual) == state_dict_hash(model.visual)


def test_timm_builds_without_weights_and_has_no_text_tower():
    model = get_model(f"timm:{TINY_TIMM}@random{TIMM_OPTS}")
    assert model.feature_dim == 192 and not model.has_text and model.encode_text is None
    x = model.preprocess(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (50, 50)))
    assert tuple(x.shape) == (3, 32, 32) and "timm:" in model.preprocess_id
    with torch.no_grad():
        assert model.visual(x[None]).shape == (1, 192)
    dino = get_model("timm:vit_small_patch14_dinov2.lvd142m@random?img_size=28")
    assert dino.feature_dim == 384 and tuple(dino.preprocess(
        __import__("PIL.Image", fromlist=["Image"]).new("RGB", (50, 50))).shape) == (3, 28, 28)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openclip_loads_a_locally_saved_checkpoint(tmp_path, suffix):
    source = get_model(f"openclip:{TINY_CLIP}@random")
    import open_clip

    clip = open_clip.create_model(TINY_CLIP)
    state = _perturbed(clip)
    path = tmp_path / f"clip{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    model = get_model(f"openclip:{TINY_CLIP}@{path}")
    expected = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    assert _same(model.visual.state_dict(), expected)
    assert not _same(model.visual.state_dict(), source.visual.state_dict())


def test_timm_loads_a_checkpoint_with_a_classifier_and_drops_it(tmp_path):
    import timm

    trained = timm.create_model(TINY_TIMM, num_classes=10, img_size=32)
    state = _perturbed(trained)
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    model = get_model(f"timm:{TINY_TIMM}@{path}{TIMM_OPTS}")
    assert _same(model.visual.state_dict(), {k: v for k, v in state.items() if not k.startswith("head.")})


def test_weights_that_do_not_fit_are_a_weights_error(tmp_path):
    import timm

    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("vit_small_patch16_224", num_classes=0, img_size=32).state_dict(), str(path))
    with pytest.raises(WeightsError, match="do not fit"):
        get_model(f"timm:{TINY_TIMM}@{path}{TIMM_OPTS}")


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("spec", [f"openclip:{TINY_CLIP}@{{}}", f"timm:{TINY_TIMM}@{{}}{TIMM_OPTS}"])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_with_a_payload_is_refused_and_never_runs(tmp_path, spec, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    else:
        path = tmp_path / "evil.bin"
        path.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    with pytest.raises(WeightsError, match="refused .*could run code") as e:
        get_model(spec.format(path))
    assert "\n" not in str(e.value) and "False" not in str(e.value)  # torch's advice to drop weights_only is not relayed
    assert not marker.exists()


def test_missing_pretrained_weights_name_what_was_looked_for(offline_hf):
    with pytest.raises(WeightsError) as e:
        get_model("openclip:ViT-B-32@openai")
    msg = str(e.value)
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "open_clip_model.safetensors" in msg
    assert str(offline_hf) in msg and "huggingface-cli download" in msg and "\n" not in msg
    with pytest.raises(WeightsError, match="timm/vit_base_patch14_dinov2.lvd142m"):
        get_model("timm:vit_base_patch14_dinov2.lvd142m")
    with pytest.raises(WeightsError, match="not found"):
        get_model(f"openclip:{TINY_CLIP}@/nonexistent/w.safetensors")


def test_open_clip_tags_map_to_hub_files():
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert _tag_files("ViT-B-32", "openai", cfg) == ("timm/vit_base_patch32_clip_224.openai",
                                                      ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])


def test_pretrained_timm_weights_come_from_the_local_hf_cache(offline_hf):
    """A cache laid out as huggingface_hub lays it out; the default tag's repo is found without any network."""
    import timm
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(TINY_TIMM).hf_hub_id
    commit = "a" * 40
    snapshot = offline_hf / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (offline_hf / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (offline_hf / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text(commit)
    state = _perturbed(timm.create_model(TINY_TIMM, num_classes=1000))
    save_file(state, str(snapshot / "model.safetensors"))
    model = get_model(f"timm:{TINY_TIMM}")
    assert model.preprocess_id.startswith("timm:")
    assert torch.equal(model.visual.state_dict()["cls_token"], state["cls_token"])


def test_a_finetuned_checkpoint_rebuilds_its_base_model(tmp_path):
    base = get_model(f"openclip:{TINY_CLIP}@random")
    state = _perturbed(base.visual)
    base.visual.load_state_dict(state)
    path = tmp_path / "ft.safetensors"
    save_finetuned(base.visual, f"openclip:{TINY_CLIP}@random", path)
    model = get_model(f"finetuned:{path}")
    assert _same(model.visual.state_dict(), state) and model.has_text and model.name == f"finetuned:{path}"
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))
    with pytest.raises(WeightsError, match="does not name its base model"):
        MODELS.get(f"finetuned:{bare}")
    with pytest.raises(WeightsError, match="not found"):
        MODELS.get(f"finetuned:{tmp_path / 'absent.safetensors'}")
