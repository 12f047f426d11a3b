"""Feature extraction: the mini datasets' images preprocessed once (``ready_images``) give the very features the
per-image loader gives, and come back from the cache."""
import numpy as np
import torch

from forgetbench import features
from forgetbench.data import get_dataset
from forgetbench.models import get_model


def test_ready_images_give_bit_identical_features_and_are_cached(cache, monkeypatch):
    model = get_model("mini-clip")
    dataset = get_dataset("mini/digits")
    features._ready.clear()
    fast = features.extract(model.visual, model, dataset, "val")
    ready = features.ready_images(model, dataset, "val")
    assert ready is not None and ready.shape[0] == len(dataset.split("val"))
    assert len(list((cache / "inputs").glob("*.safetensors"))) == 1
    monkeypatch.setattr(features, "READY_MAX_BYTES", 0)  # too big: the per-image loader, as before
    features._ready.clear()
    assert features.ready_images(model, dataset, "val") is None
    slow = features.extract(model.visual, model, dataset, "val")
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    monkeypatch.undo()
    features._ready.clear()  # from the cache file: the same tensor
    assert torch.equal(features.ready_images(model, dataset, "val"), ready)


def test_a_damaged_ready_images_file_is_rebuilt(cache):
    model = get_model("mini-clip")
    dataset = get_dataset("mini/digits")
    features._ready.clear()
    ready = features.ready_images(model, dataset, "test")
    path, = (cache / "inputs").glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    features._ready.clear()
    assert torch.equal(features.ready_images(model, dataset, "test"), ready)


def test_ready_images_in_memory_stay_within_their_byte_budget_oldest_first(cache, monkeypatch):
    model = get_model("mini-clip")
    dataset = get_dataset("mini/digits")
    features._ready.clear()
    val = features.ready_images(model, dataset, "val")
    one = val.numel() * val.element_size()
    monkeypatch.setattr(features, "READY_KEEP_BYTES", one)  # room for the val split only
    test = features.ready_images(model, dataset, "test")
    assert [t.shape[0] for t in features._ready.values()] == [test.shape[0]]  # val went, the newest stays
    assert torch.equal(features.ready_images(model, dataset, "val"), val)  # back from the disk cache, the same
    monkeypatch.setattr(features, "READY_KEEP_BYTES", 10 * one)
    features.ready_images(model, dataset, "test")
    assert len(features._ready) == 2  # under the budget, both stay
