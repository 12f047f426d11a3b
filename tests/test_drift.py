"""Feature and weight drift metrics against independent numpy computations."""
import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from forgetbench.errors import DataError, SpecError
from forgetbench.evaluate.drift import encoder_weight_drift, kernel_drift, l2_drift, weight_drift


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 6)) + 2.0  # offset: centring matters for the kernel
    return ref, ref + 0.5 * rng.standard_normal((40, 6))


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def aft_kernel_distance(a, b):
    """metrics.md section 5, unit weights, materialised n x n kernels, without AFT's + 1e-8."""
    ka, kb = (unit(x - x.mean(0)) @ unit(x - x.mean(0)).T for x in (a, b))
    return np.sqrt(np.mean((kb - ka) ** 2))


def test_l2_drift_known_answers(feats):
    ref, ft = feats
    assert l2_drift(ref, ref.copy()) == 0.0
    assert l2_drift(ref, -3 * ref) == pytest.approx(4.0)  # opposite unit vectors: |2u|^2
    expected = np.mean(np.sum((unit(ft) - unit(ref)) ** 2, axis=1))
    assert l2_drift(ref, ft) == pytest.approx(expected, rel=1e-12)
    assert l2_drift(torch.tensor(ref, dtype=torch.float32), torch.tensor(ft)) == pytest.approx(expected, rel=1e-6)


def test_kernel_drift_matches_formula_and_is_zero_only_for_same_geometry(feats):
    ref, ft = feats
    assert kernel_drift(ref, ref.copy()) == 0.0
    assert kernel_drift(ref, ft) == pytest.approx(aft_kernel_distance(ref, ft), rel=1e-12)
    assert kernel_drift(ref, ft) > 0.05
    assert kernel_drift(ref, ft, chunk=7) == pytest.approx(kernel_drift(ref, ft), rel=1e-12)  # row blocks
    assert kernel_drift(ref, ft[:, :4]) == pytest.approx(aft_kernel_distance(ref, ft[:, :4]), rel=1e-12)


def test_rotation_changes_l2_but_not_kernel_drift(feats):
    ref, _ = feats
    rotated = ref @ ortho_group.rvs(6, random_state=3)
    assert kernel_drift(ref, rotated) < 1e-7
    assert kernel_drift(ref, 5.0 * ref + 1.0) < 1e-7  # shifts (centring) and scalings too
    assert l2_drift(ref, rotated) == pytest.approx(np.mean(np.sum((unit(rotated) - unit(ref)) ** 2, 1)))
    assert l2_drift(ref, rotated) > 0.1


def test_kernel_drift_subsample_uses_the_same_rows_on_both_sides(feats):
    ref, ft = feats
    assert kernel_drift(ref, ref.copy(), max_samples=10, seed=1) == 0.0
    sub = kernel_drift(ref, ft, max_samples=10, seed=1)
    rows = np.sort(np.random.default_rng(1).choice(40, 10, replace=False))  # the documented subsample
    assert sub == pytest.approx(aft_kernel_distance(ref[rows], ft[rows]), rel=1e-12)
    assert kernel_drift(ref, ft, max_samples=1000) == kernel_drift(ref, ft)
    with pytest.raises(SpecError, match="max_samples"):
        kernel_drift(ref, ft, max_samples=1)


def test_weight_drift_relative_norm_over_shared_float_tensors():
    rng = np.random.default_rng(1)
    ref = {"w": torch.tensor(rng.standard_normal((3, 4))), "b": torch.tensor(rng.standard_normal(3)),
           "steps": torch.tensor(7), "only_ref": torch.ones(2)}
    ft = {"w": ref["w"] + 0.1, "b": ref["b"] * 2, "steps": torch.tensor(9), "only_ft": torch.ones(2)}
    assert weight_drift(ref, {k: v.clone() for k, v in ref.items()}) == 0.0
    diff = np.sqrt(0.1 ** 2 * 12 + np.sum(ref["b"].numpy() ** 2))
    norm = np.sqrt(np.sum(ref["w"].numpy() ** 2) + np.sum(ref["b"].numpy() ** 2))
    assert weight_drift(ref, ft) == pytest.approx(diff / norm, rel=1e-12)  # int "steps" and unshared keys skipped
    only_w = 0.1 * np.sqrt(12) / np.linalg.norm(ref["w"].numpy())
    assert weight_drift(ref, ft, keys=["w"]) == pytest.approx(only_w, rel=1e-12)
    as_numpy = {k: v.numpy() for k, v in ft.items()}
    assert weight_drift({k: v.numpy() for k, v in ref.items()}, as_numpy) == pytest.approx(diff / norm, rel=1e-12)


def test_weight_drift_errors():
    ref = {"w": torch.ones(2, 2)}
    with pytest.raises(DataError, match="'w' has shape"):
        weight_drift(ref, {"w": torch.ones(4)})
    with pytest.raises(DataError, match="share no floating-point tensor"):
        weight_drift(ref, {"v": torch.ones(2, 2)})
    with pytest.raises(DataError, match="keys missing"):
        weight_drift(ref, ref, keys=["w", "nope"])
    with pytest.raises(DataError, match="all zero"):
        weight_drift({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    with pytest.raises(DataError, match="NaN"):
        weight_drift(ref, {"w": torch.full((2, 2), float("nan"))})


def test_feature_input_errors(feats):
    ref, ft = feats
    with pytest.raises(DataError, match="same shape"):
        l2_drift(ref, ft[:, :5])
    with pytest.raises(DataError, match="same number of rows"):
        kernel_drift(ref, ft[:30])
    with pytest.raises(DataError, match="f_ref: expected a 2-D array"):
        l2_drift(ref[0], ft[0])
    bad = ft.copy()
    bad[3, 2] = np.inf
    with pytest.raises(DataError, match="f_ft: contains NaN or infinite"):
        kernel_drift(ref, bad)


def test_encoder_weight_drift_counts_weights_not_batchnorm_statistics():
    """A running variance of 400 would dominate the norm; only the parameters (conv, BatchNorm scale and shift)
    count. Known answer: the conv weight moved by 0.1 everywhere, nothing else."""
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        ref[0].weight.copy_(torch.tensor([[[[3.0]]], [[[4.0]]]]))
        ref[1].running_var.fill_(400.0)
    tuned = __import__("copy").deepcopy(ref)
    with torch.no_grad():
        tuned[0].weight.add_(0.1)
    params = np.sqrt(3.0 ** 2 + 4.0 ** 2 + 2 * 1.0 ** 2)  # conv weight, BatchNorm scale (1) and shift (0)
    assert encoder_weight_drift(ref, tuned) == pytest.approx(0.1 * np.sqrt(2) / params, rel=1e-6)  # float32
    assert weight_drift(ref.state_dict(), tuned.state_dict()) < encoder_weight_drift(ref, tuned) / 10
