"""Every registered real dataset, built from a tiny fake copy in its real on-disk format: splits, labels, class names."""
import numpy as np
import pytest
import torch

from fake_real_data import FAKES, decode
from forgetbench.data import DATASETS, get_dataset
from forgetbench.data.real import CATALOG, set_data_root, set_download
from forgetbench.data.real.prompts import prompts
from forgetbench.data.real.splits import holdout
from forgetbench.errors import DataError


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A private data root given as the command line would (--data-root); no config file, no env var."""
    import torchvision.datasets.cifar
    import torchvision.datasets.flowers102
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn

    # these readers check their files' md5 against the real downloads; the fakes are the same format, other bytes
    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.flowers102,
                   torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda *a, **k: True)
    monkeypatch.delenv("FORGETBENCH_DATA", raising=False)
    monkeypatch.delenv("FORGETBENCH_DOWNLOAD", raising=False)
    monkeypatch.setenv("FORGETBENCH_CONFIG", str(tmp_path / "no-config.yaml"))
    root = tmp_path / "data"
    root.mkdir()
    set_data_root(root)
    yield root
    set_data_root(None)
    set_download(None)


def expected_sizes(counts: dict) -> dict:
    """The documented split rule, computed independently of the code under test."""
    if "all" in counts:
        test = int(0.2 * counts["all"])
        pool = counts["all"] - test
    elif "val" in counts:
        return dict(counts)
    else:
        test, pool = counts["test"], counts["train"]
    val = min(int(0.1 * pool), 20000)
    return {"train": pool - val, "val": val, "test": test}


def test_every_real_dataset_has_a_fake_copy():
    assert set(FAKES) == {d.name for d in CATALOG}
    assert len(CATALOG) == 26


@pytest.mark.parametrize("name", sorted(FAKES))
def test_builds_from_its_on_disk_format(name, data_root):
    counts = FAKES[name](data_root)
    ds = get_dataset(name)
    table = prompts(next(d for d in CATALOG if d.name == name).prompt_key or name)
    assert ds.classnames == table["classes"]
    if not name.startswith("imagenet"):  # CLIP's ImageNet names repeat two ("missile", "sunglasses"), as published
        assert len(set(ds.classnames)) == len(ds.classnames)
    assert ds.templates and all("{}" in t for t in ds.templates)
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == expected_sizes(counts)
    assert sizes["val"] > 0
    seen = set()
    for s in ("train", "val", "test"):
        split = ds.split(s)
        items = [split[i] for i in range(len(split))]
        assert all(im.mode == "RGB" for im, _ in items)
        # the label handed out is the one the format assigns to that image (its colour encodes it)
        assert [y for _, y in items] == [decode(im) for im, _ in items]
        assert np.array_equal(ds.labels(s), [y for _, y in items])  # read without decoding images
        assert all(0 <= y < len(ds.classnames) for _, y in items)
        keys = {(id(split.source), int(i)) for i in split.indices}
        assert len(keys) == len(split) and not keys & seen  # train, val and test never share an image
        seen |= keys
    assert len(seen) == sum(counts.values())


CLASS_DIRS = {"eurosat": "eurosat/2750", "caltech101": "caltech101/101_ObjectCategories",
              "resisc45": "NWPU-RESISC45", "office-home/art": "OfficeHomeDataset_10072016/Art",
              "imagenet-r": "imagenet-r"}


@pytest.mark.parametrize("name,raw,display", [
    ("eurosat", "AnnualCrop", "annual crop land"),
    ("eurosat", "HerbaceousVegetation", "brushland or shrubland"),
    ("eurosat", "SeaLake", "lake or sea"),
    ("caltech101", "Faces_easy", "centered face"),
    ("caltech101", "car_side", "side of a car"),
    ("resisc45", "dense_residential", "dense residential"),
    ("office-home/art", "Postit_Notes", "post-it notes"),
    ("office-home/art", "TV", "TV"),
    ("imagenet-r", "n01443537", "goldfish"),
])
def test_a_class_folder_gets_its_class_name(name, raw, display, data_root):
    """Known answers, written here by hand: one image in the real folder of a class comes out with its name."""
    from PIL import Image

    (data_root / CLASS_DIRS[name] / raw).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data_root / CLASS_DIRS[name] / raw / "image_0001.jpg")
    if name == "caltech101":
        (data_root / CLASS_DIRS[name] / "BACKGROUND_Google").mkdir()
    ds = get_dataset(name)
    [(_, label)] = [ds.split("train")[0]]
    assert ds.classnames[label] == display


def test_pets_labels_follow_the_annotation_ids_not_clips_order(data_root):
    """CLIP lists the pets cats first; the annotation ids are alphabetical regardless of case."""
    FAKES["oxford-pets"](data_root)
    ds = get_dataset("oxford-pets")
    assert ds.classnames[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    assert ds.classnames[36] == "yorkshire terrier"
    (data_root / "oxford-iiit-pet" / "annotations" / "test.txt").write_text("Bengal_x 1 1 1\n")
    with pytest.raises(DataError, match="do not match the breed"):
        get_dataset("oxford-pets").split("test")


def test_imagenet_subsets_use_the_1000_class_names(data_root):
    FAKES["imagenet-r"](data_root)
    ds = get_dataset("imagenet-r")
    assert len(ds.classnames) == 200 and ds.classnames[0] == "goldfish"  # n01443537, class 1 of the 1000
    FAKES["imagenet"](data_root)
    assert get_dataset("imagenet").classnames[:2] == ["tench", "goldfish"]


def test_holdout_is_torch_random_split_with_seed_0():
    n = 1000
    train, val = torch.utils.data.random_split(range(n), [900, 100], generator=torch.Generator().manual_seed(0))
    keep, held = holdout(n, 0.1, 20000)
    assert list(keep) == list(train.indices) and list(held) == list(val.indices)
    assert len(holdout(300_000, 0.1, 20000)[1]) == 20000  # the cap


def test_absent_dataset_names_the_expected_path_and_layout(data_root):
    with pytest.raises(DataError) as e:
        get_dataset("resisc45")
    msg = str(e.value)
    assert str(data_root / "NWPU-RESISC45") in msg and "<class>/*.jpg" in msg and "\n" not in msg
    with pytest.raises(DataError, match="forgetbench download cifar10"):
        get_dataset("cifar10")


def test_no_data_root_says_how_to_set_one(monkeypatch, tmp_path):
    set_data_root(None)
    monkeypatch.delenv("FORGETBENCH_DATA", raising=False)
    monkeypatch.setenv("FORGETBENCH_CONFIG", str(tmp_path / "absent.yaml"))
    assert "cifar10" in DATASETS.names() and callable(DATASETS.get("cifar10"))  # registration reads nothing
    with pytest.raises(DataError, match="--data-root.*FORGETBENCH_DATA.*data_root"):
        get_dataset("cifar10")


def test_data_root_precedence(monkeypatch, tmp_path):
    from forgetbench.data.real.root import data_root

    config = tmp_path / "config.yaml"
    config.write_text(f"data_root: {tmp_path / 'from-config'}\n")
    monkeypatch.setenv("FORGETBENCH_CONFIG", str(config))
    monkeypatch.delenv("FORGETBENCH_DATA", raising=False)
    set_data_root(None)
    assert data_root() == tmp_path / "from-config"
    monkeypatch.setenv("FORGETBENCH_DATA", str(tmp_path / "from-env"))
    assert data_root() == tmp_path / "from-env"
    set_data_root(tmp_path / "from-flag")
    try:
        assert data_root() == tmp_path / "from-flag"
    finally:
        set_data_root(None)
    config.write_text("- not a mapping\n")
    monkeypatch.delenv("FORGETBENCH_DATA")
    with pytest.raises(DataError, match="must be a mapping"):
        data_root()


def test_unknown_class_folder_and_unreadable_format_are_one_line_errors(data_root):
    FAKES["resisc45"](data_root)
    (data_root / "NWPU-RESISC45" / "not_a_class").mkdir()
    with pytest.raises(DataError, match="'not_a_class' is not one of the 45 class folders"):
        get_dataset("resisc45").split("train")
    (data_root / "dtd" / "dtd").mkdir(parents=True)  # the folder is there, its label files are not
    with pytest.raises(DataError, match="cannot read the train part") as e:
        get_dataset("dtd").split("train")
    assert "\n" not in str(e.value)


def test_fingerprint_follows_the_files(data_root):
    FAKES["eurosat"](data_root)
    before = get_dataset("eurosat").fingerprint
    assert get_dataset("eurosat").fingerprint == before
    from PIL import Image

    Image.new("RGB", (8, 8)).save(data_root / "eurosat" / "2750" / "Forest" / "extra.jpg")
    assert get_dataset("eurosat").fingerprint != before
