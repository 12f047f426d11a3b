"""The attribute datasets (fine-tune targets with headroom): each label is its attribute, and nothing else changed."""
import dataclasses
import hashlib

import numpy as np
import pytest

from forgetbench.data import DATASETS, get_dataset, mini
from forgetbench.data.mini_attributes import ATTRIBUTE_VERSION, ATTRIBUTES, Attribute, generate_attribute_split
from forgetbench.data.mini_datasets import ATTRIBUTE_SPLIT_SIZES

NAMES = [f"mini/{key}" for key in ATTRIBUTES]


def test_at_least_three_attribute_targets_are_registered():
    assert len(NAMES) >= 3 and set(NAMES) <= set(DATASETS.names())


@pytest.mark.parametrize("name", NAMES)
def test_split_sizes_are_exact_and_classes_balanced(name):
    ds = get_dataset(name)
    k = len(ds.classnames)
    for split, n in ATTRIBUTE_SPLIT_SIZES.items():
        labels = ds.labels(split)
        assert len(ds.split(split)) == n == len(labels)
        counts = np.bincount(labels, minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1  # balanced: chance is exactly 1/k
    assert ATTRIBUTE_SPLIT_SIZES["train"] >= 3000  # thousands of images: a fine-tune's gain is real
    assert len(set(ds.classnames)) == k >= 3
    assert ds.templates and all("{}" in t for t in ds.templates)
    image, _ = ds.split("test")[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert ds.split("train").images[:20].tobytes() != ds.split("test").images[:20].tobytes()


@pytest.mark.parametrize("key", list(ATTRIBUTES))
def test_generation_is_deterministic_and_keyed_by_seed_and_split(key):
    a = generate_attribute_split(ATTRIBUTES[key], key, "val", 30)
    b = generate_attribute_split(ATTRIBUTES[key], key, "val", 30)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert generate_attribute_split(ATTRIBUTES[key], key, "val", 30, seed=1)[0].tobytes() != a[0].tobytes()
    assert generate_attribute_split(ATTRIBUTES[key], key, "test", 30)[0].tobytes() != a[0].tobytes()


#: sha256 of a fixed sample of every attribute dataset, per (mini.GENERATOR_VERSION, ATTRIBUTE_VERSION): a change of
#: the drawing or of the labelling that forgets to bump a version would silently mix old and new images in the cache.
ATTRIBUTE_DIGESTS = {(5, 1): "4098b8328827c864af69b88319c1f4f5814df20a794ff3372e96e145bad28e6d"}


def test_generated_bytes_are_the_ones_of_this_version():
    h = hashlib.sha256()
    for key, attribute in ATTRIBUTES.items():
        for part in generate_attribute_split(attribute, key, "val", 12):
            h.update(part.tobytes())
    assert h.hexdigest() == ATTRIBUTE_DIGESTS.get((mini.GENERATOR_VERSION, ATTRIBUTE_VERSION)), (
        "the attribute datasets' bytes changed: bump mini_attributes.ATTRIBUTE_VERSION and record the new digest")


# ------------------------------------------------------------------------------------------ the defining properties


@pytest.mark.parametrize("key", [k for k, a in ATTRIBUTES.items() if a.levels is not None])
def test_each_class_draws_its_value_from_its_own_level_and_levels_are_ordered_and_disjoint(key):
    attribute = ATTRIBUTES[key]
    levels = attribute.levels
    assert all(lo < hi < nxt_lo for (lo, hi), (nxt_lo, _) in zip(levels, levels[1:]))  # class order = value order
    _, labels, values = generate_attribute_split(attribute, key, "val", 300)
    for k, (lo, hi) in enumerate(levels):
        v = values[labels == k]
        assert len(v) == 100 and v.min() >= lo and v.max() <= hi
        assert v.max() - v.min() > 0.5 * (hi - lo)  # spread over the level, not one value


def test_overlapping_levels_are_refused():
    with pytest.raises(AssertionError, match="overlap"):
        dataclasses.replace(ATTRIBUTES["noise"], levels=((0.0, 0.05), (0.04, 0.08), (0.09, 0.1)))


def _scene(shape="square", texture="plain"):
    return mini.Scene(shape=shape, colour="white", texture=texture, position=4, count=1)


def test_look_noise_sets_the_pixel_noise_std():
    # the noise is drawn last, so two renders of the same stream differ by the noise alone
    clean = mini.render(_scene(), mini.stable_rng("look"), look=mini.Look(noise=0.0)).astype(float)
    for sigma in (0.02, 0.08):
        noisy = mini.render(_scene(), mini.stable_rng("look"), look=mini.Look(noise=sigma)).astype(float)
        inside = (clean > 70) & (clean < 185)  # away from clipping at 0 and 255
        assert np.std((noisy - clean)[inside]) / 255 == pytest.approx(sigma, rel=0.1, abs=0.003)


def test_look_brightness_shifts_the_background_by_the_difference():
    a = mini.render(_scene(), mini.stable_rng("look"), look=mini.Look(noise=0.0, brightness=0.2)).astype(float)
    b = mini.render(_scene(), mini.stable_rng("look"), look=mini.Look(noise=0.0, brightness=0.35)).astype(float)
    background = (a > 5) & (b < 250) & (a != b)  # the object (painted over the background) is the same in both
    assert background.mean() > 0.5
    assert np.median((b - a)[background]) == pytest.approx(0.15 * 255, abs=1.0)


@pytest.mark.parametrize("shape", ATTRIBUTES["orientation"].shapes)
def test_orientation_classes_are_the_same_shape_turned_clockwise(shape):
    upright = mini.shape_mask(shape, 16, 16, 9, 0.0)
    for turns in range(4):
        turned = mini.shape_mask(shape, 16, 16, 9, turns * np.pi / 2)
        # np.rot90 with -k turns clockwise. cos(pi/2) is 6e-17, not 0, so a sub-pixel sample lying exactly on an
        # edge may flip: a few edge pixels of an object of ~100 may differ by a sample or two, nothing more
        diff = np.abs(turned - np.rot90(upright, -turns))
        assert diff.max() <= 0.5 and (diff > 0).sum() <= 10 < upright.sum() / 5
        if turns:
            assert np.abs(turned - upright).sum() > 10  # and each turn looks different


def test_orientation_scenes_show_only_turnable_shapes_and_their_label_is_the_turn():
    attribute = ATTRIBUTES["orientation"]
    assert set(attribute.shapes) <= set(mini.SHAPES) and "circle" not in attribute.shapes
    _, labels, values = generate_attribute_split(attribute, "orientation", "val", 40)
    assert (values == labels).all()
