"""The mini world: deterministic concept datasets, the mini CLIP config, and the shipped weights."""
import hashlib
import json
import shutil

import numpy as np
import open_clip
import pytest
import torch

from forgetbench.data import DATASETS, get_dataset, mini
from forgetbench.data.mini_datasets import SPLIT_SIZES
from forgetbench.errors import WeightsError
from forgetbench.models import mini_clip
from forgetbench.models.weights_io import file_sha256

MINI = ["mini/shapes", "mini/colours", "mini/textures", "mini/positions", "mini/counts", "mini/digits"]


def test_at_least_five_concepts_and_the_digits_are_registered():
    assert set(MINI) <= set(DATASETS.names())


@pytest.mark.parametrize("concept", ["shape", "colour", "texture", "position", "count"])
def test_generation_is_deterministic_and_seed_dependent(concept):
    a_img, a_lab = mini.generate_concept_split(concept, "val", 40, seed=0)
    b_img, b_lab = mini.generate_concept_split(concept, "val", 40, seed=0)
    c_img, _ = mini.generate_concept_split(concept, "val", 40, seed=1)
    assert a_img.tobytes() == b_img.tobytes() and (a_lab == b_lab).all()
    assert a_img.tobytes() != c_img.tobytes()
    assert a_img.dtype == np.uint8 and a_img.shape == (40, 32, 32, 3)


def test_splits_differ_from_each_other():
    a, _ = mini.generate_concept_split("shape", "train", 20)
    b, _ = mini.generate_concept_split("shape", "test", 20)
    assert a.tobytes() != b.tobytes()


@pytest.mark.parametrize("name", MINI)
def test_split_sizes_labels_classnames_templates(name):
    ds = get_dataset(name)
    sizes = {"train": 1000, "val": 297, "test": 500} if name == "mini/digits" else SPLIT_SIZES
    for split, n in sizes.items():
        labels = ds.labels(split)
        assert len(ds.split(split)) == n == len(labels)
        assert labels.min() >= 0 and labels.max() < len(ds.classnames)
    assert len(set(ds.labels("train"))) == len(ds.classnames)  # every class occurs
    assert len(ds.classnames) >= 6 and len(set(ds.classnames)) == len(ds.classnames)
    assert ds.templates and all("{}" in t for t in ds.templates)
    image, label = ds.split("test")[0]
    assert image.size == (32, 32) and image.mode == "RGB"


def test_cached_split_equals_fresh_generation(cache):
    ds = get_dataset("mini/colours")
    fresh, labels = mini.generate_concept_split("colour", "val", SPLIT_SIZES["val"])
    assert ds.split("val").images.tobytes() == fresh.tobytes()
    again = get_dataset("mini/colours").split("val")  # now read from the disk cache
    assert again.images.tobytes() == fresh.tobytes() and (again.labels == labels).all()


def test_captions_name_the_scene():
    rng = mini.stable_rng("test")
    scene = mini.Scene("triangle", "red", "checkered", 0, 1)
    caps = [mini.caption(scene, rng) for _ in range(200)]
    words = {"triangle", "red", "checkered", "top left"}
    assert all(any(w in c for w in words) for c in caps)
    assert any(c in {"a triangle.", "a photo of a triangle.", "a drawing of a triangle."} for c in caps)


def test_caption_codes_say_what_the_caption_names():
    rng = mini.stable_rng("test-codes")
    for count in (None, 3):
        scene = mini.random_scene(rng, count=count)
        shown = np.array([mini.scene_codes(scene)])
        for _ in range(100):
            text, codes = mini.described(scene, rng)
            for key, code in zip(mini.CONCEPT_KEYS, codes):
                if code != mini.UNNAMED:
                    assert mini.CONCEPT_CLASSES[key][code] in text  # a named concept is in the words
            assert mini.caption_matches(shown, np.array([codes]))[0, 0]  # a caption is true of its own scene


def test_caption_matches_known_answers():
    u, a = mini.UNNAMED, mini.ABSENT
    images = np.array([[0, 1, 2, 3, 0, a],   # a red-coded shape 0 in position 3 on texture 2
                       [a, 1, 2, a, a, 7]])  # a digit 7 in colour 1 on texture 2
    captions = np.array([[u, 1, u, u, u, u],   # "something <colour 1>": true of both
                         [0, u, u, 3, u, u],   # shape 0 in position 3: the first only
                         [u, u, u, u, u, 7],   # digit 7: the second only
                         [1, u, u, u, u, u]])  # shape 1: neither
    assert mini.caption_matches(images, captions).tolist() == [[True, True, False, False], [True, False, True, False]]


def test_caption_aware_loss_is_clip_loss_when_captions_are_unique():
    from forgetbench.pretrain import caption_aware_clip_loss

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    eye = torch.eye(6, dtype=torch.bool)
    assert torch.allclose(caption_aware_clip_loss(img, txt, scale, eye), open_clip.ClipLoss()(img, txt, scale))
    # a second true caption for image 0 pulls it towards caption 1 too: the loss now rewards that similarity
    both = eye.clone()
    both[0, 1] = both[1, 0] = True
    closer = txt.clone()
    closer[1] = img[0]
    assert caption_aware_clip_loss(img, closer, scale, both) < caption_aware_clip_loss(img, closer, scale, eye)


def test_mini_clip_config_builds_with_open_clip():
    model = open_clip.create_model(mini_clip.CONFIG_NAME, pretrained=None)
    assert model.visual.output_dim == 128
    with torch.no_grad():
        img, txt = model.encode_image(torch.zeros(2, 3, 32, 32)), model.encode_text(
            open_clip.get_tokenizer(mini_clip.CONFIG_NAME)(["a red circle.", "two objects."]))
    assert img.shape == txt.shape == (2, 128)


def test_shipped_weights_match_their_hash_and_load():
    manifest = json.loads(mini_clip.MANIFEST.read_text())
    path = mini_clip.WEIGHTS_DIR / manifest["file"]
    assert file_sha256(path) == manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size <= 20 * 2**20
    assert "pretrain-mini" in manifest["command"]
    clip = mini_clip.load_pretrained()
    fresh = mini_clip.build_untrained()
    assert not torch.equal(clip.visual.proj, fresh.visual.proj)  # really the trained weights


def test_corrupted_weights_are_refused(tmp_path):
    manifest = json.loads(mini_clip.MANIFEST.read_text())
    bad = tmp_path / "mini-clip.safetensors"
    shutil.copy(mini_clip.WEIGHTS_DIR / manifest["file"], bad)
    with open(bad, "r+b") as f:  # flip one byte in the middle of the tensor data
        f.seek(bad.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="sha256"):
        mini_clip.load_pretrained(bad, manifest["sha256"])


def test_a_pickle_is_never_unpickled(tmp_path):
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle file under a safetensors name
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        mini_clip.load_pretrained(evil, None)
