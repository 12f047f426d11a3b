"""OTDD and label costs against independent computations (closed forms, brute-force assignment, POT's Sinkhorn)."""
import json

import numpy as np
import ot
import pytest
import scipy.linalg
from scipy.special import xlogy
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import ortho_group

from forgetbench.errors import DataError, SpecError
from forgetbench.evaluate.label_costs import class_stats, label_cost_exact, label_cost_gaussian, label_cost_gaussian_loop
from forgetbench.evaluate.otdd import OTDDResult, otdd

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # includes "Sinkhorn did not converge"

EMD = {"exact_max_n": 10_000}  # exact outer OT
SINKHORN = {"exact_max_n": 0}  # debiased Sinkhorn outer
OUTERS = pytest.mark.parametrize("outer", [EMD, SINKHORN], ids=["emd", "sinkhorn"])
MODES = pytest.mark.parametrize("mode", ["gaussian", "exact"])


def blobs(seed, n_per=(10, 10, 10), d=4, spread=1.0, noise=0.3):
    """Labelled Gaussian blobs with class-dependent scale, rows grouped by class. Costs stay O(10), so the default
    entropic_reg = 0.1 converges in a few hundred Sinkhorn iterations."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((n, d)) * noise * rng.uniform(0.5, 1.5) + spread * rng.standard_normal(d)
          for n in n_per]
    return np.vstack(xs), np.repeat(np.arange(len(n_per)), n_per)


def sqdist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def assignment_cost(cost):
    """Exact OT between two uniform clouds of equal size = best permutation (Birkhoff)."""
    r, c = linear_sum_assignment(cost)
    return cost[r, c].mean()


def bures_sqrtm(m1, s1, m2, s2):
    r1 = np.real(scipy.linalg.sqrtm(s1))
    return np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(r1 @ s2 @ r1)))


# ------------------------------------------------------------------------------------------------ label costs

@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("rank", [2, 6], ids=["singular-lowrank", "full-rank"])
def test_gaussian_label_cost_matches_closed_form_for_commuting_covariances(rank, ridge):
    rng = np.random.default_rng(0)
    d, q = 6, ortho_group.rvs(6, random_state=1)  # common eigenbasis: W2^2 = |dmu|^2 + sum (sqrt a - sqrt b)^2
    eig_a, eig_b = rng.uniform(0.1, 3, (3, d)), rng.uniform(0.1, 3, (4, d))
    eig_a[:, rank:], eig_b[:, rank:] = 0.0, 0.0  # rank 2: zero variances, so S_a, S_b are singular
    mu_a, mu_b = rng.standard_normal((3, d)), rng.standard_normal((4, d))
    covs_a = np.stack([q @ np.diag(e) @ q.T for e in eig_a])
    covs_b = np.stack([q @ np.diag(e) @ q.T for e in eig_b])
    root_a, root_b = np.sqrt(eig_a + ridge), np.sqrt(eig_b + ridge)  # the ridge adds to every eigenvalue
    expected = sqdist(mu_a, mu_b) + ((root_a[:, None, :] - root_b[None, :, :]) ** 2).sum(-1)
    got = label_cost_gaussian(mu_a, covs_a, mu_b, covs_b, ridge=ridge)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    diag_a, diag_b = np.stack([np.diag(e) for e in eig_a]), np.stack([np.diag(e) for e in eig_b])
    np.testing.assert_allclose(label_cost_gaussian(mu_a, diag_a, mu_b, diag_b, ridge=ridge), expected,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ridge", [1e-6, 0.05])
@pytest.mark.parametrize("n_per", [(1, 2, 4, 7, 3), (30, 25, 40)], ids=["small-classes", "large-classes"])
def test_batched_label_cost_equals_per_pair_sqrtm_loop(n_per, ridge):
    scales = np.geomspace(1, 1e-3, 10)  # anisotropic: spectra over 6 orders of magnitude
    xa, ya = blobs(2, n_per, d=10)
    xb, yb = blobs(3, n_per[::-1], d=10)
    (ma, ca), (mb, cb) = class_stats(xa * scales, ya, ridge), class_stats(xb * scales, yb, ridge)
    np.testing.assert_allclose(label_cost_gaussian(ma, ca, mb, cb), label_cost_gaussian_loop(ma, ca, mb, cb),
                               rtol=1e-6, atol=1e-6)
    brute = np.array([[bures_sqrtm(ma[i], ca[i], mb[j], cb[j]) for j in range(len(mb))] for i in range(len(ma))])
    np.testing.assert_allclose(label_cost_gaussian(ma, ca, mb, cb), np.maximum(brute, 0), rtol=1e-6, atol=1e-6)
    self_cost = label_cost_gaussian(ma, ca, ma, ca)
    np.testing.assert_allclose(np.diag(self_cost), 0, atol=1e-8)
    np.testing.assert_allclose(self_cost, self_cost.T, atol=1e-8)


def test_float32_label_costs_of_full_rank_covariances_agree_with_float64_to_the_stated_error():
    rng = np.random.default_rng(3)
    d = 24
    a, b = (rng.standard_normal((n, d, d)) for n in (3, 4))
    covs_a, covs_b = a @ a.transpose(0, 2, 1) / d, b @ b.transpose(0, 2, 1) / d  # full rank: the dense path
    mu_a, mu_b = rng.standard_normal((3, d)), rng.standard_normal((4, d))
    exact = label_cost_gaussian(mu_a, covs_a, mu_b, covs_b)
    fast = label_cost_gaussian(mu_a, covs_a, mu_b, covs_b, precision="float32")
    assert fast.dtype == np.float64
    scale = np.trace(covs_a, axis1=1, axis2=2).max()
    assert 0 < np.abs(fast - exact).max() <= 3e-5 * scale  # float32 did run, within the docstring's error
    np.testing.assert_allclose(exact, label_cost_gaussian_loop(mu_a, covs_a, mu_b, covs_b), rtol=1e-8)
    with pytest.raises(SpecError, match="precision must be one of"):
        label_cost_gaussian(mu_a, covs_a, mu_b, covs_b, precision="half")


def test_class_stats_unbiased_covariance_single_sample_and_singular():
    x, y = blobs(4, (5, 1, 3), d=8)  # fewer samples than dimensions everywhere
    y = np.array(["cat", "dog", "eel"])[y]
    means, covs = class_stats(x, y, ridge=1e-3)
    assert means.shape == (3, 8) and covs.shape == (3, 8, 8)
    assert np.isfinite(covs).all()
    for k, name in enumerate(np.unique(y)):
        rows = x[y == name]
        np.testing.assert_allclose(means[k], rows.mean(0), atol=1e-12)
        expected = np.cov(rows.T) if len(rows) > 1 else np.zeros((8, 8))
        np.testing.assert_allclose(covs[k], expected + 1e-3 * np.eye(8), atol=1e-12)


def test_exact_label_cost_matches_assignment_between_class_clouds():
    xa, ya = blobs(5, (6, 6, 6), d=3)
    xb, yb = blobs(6, (6, 6), d=3)
    expected = np.array([[assignment_cost(sqdist(xa[ya == i], xb[yb == j])) for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(label_cost_exact(xa, ya, xb, yb), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.diag(label_cost_exact(xa, ya, xa, ya)), 0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------- OTDD

@MODES
@OUTERS
def test_otdd_of_a_dataset_with_itself_is_zero(mode, outer):
    x, y = blobs(7, (20, 25, 15), d=5)
    res = otdd(x, y, x.copy(), y.copy(), label_cost=mode, **outer)
    assert abs(res.distance) < 1e-6
    assert res.params["outer"] == ("emd" if outer is EMD else "sinkhorn_debiased")


@MODES
@OUTERS
def test_otdd_is_symmetric_and_positive(mode, outer):
    xa, ya = blobs(8, (12, 8, 10), d=4)
    xb, yb = blobs(9, (10, 14), d=4)
    ab = otdd(xa, ya, xb, yb, label_cost=mode, entropic_reg=0.5, **outer).distance
    ba = otdd(xb, yb, xa, ya, label_cost=mode, entropic_reg=0.5, **outer).distance
    assert ab > 0.1
    assert ab == pytest.approx(ba, rel=1e-7)


@pytest.mark.parametrize("d", [3, 7], ids=["full-rank", "singular"])
@MODES
def test_exact_otdd_equals_brute_force_assignment(mode, d):
    """Equal sizes + uniform weights: outer OT is a permutation; inner costs computed independently."""
    xa, ya = blobs(10, (5, 5, 5), d=d)
    xb, yb = blobs(11, (5, 5, 5), d=d, spread=2.0, noise=0.5)
    xb *= np.geomspace(1, 1e-3, d)  # anisotropic: class covariance spectra span many orders of magnitude
    lx, ly = 1.0, 0.5
    if mode == "exact":
        w = np.array([[assignment_cost(sqdist(xa[ya == i], xb[yb == j])) for j in range(3)] for i in range(3)])
    else:
        st = [[(x[y == c].mean(0), np.cov(x[y == c].T) + 1e-6 * np.eye(d)) for c in range(3)]
              for x, y in ((xa, ya), (xb, yb))]
        w = np.array([[bures_sqrtm(*st[0][i], *st[1][j]) for j in range(3)] for i in range(3)])
    expected = assignment_cost(lx * sqdist(xa, xb) + ly * w[ya][:, yb])
    got = otdd(xa, ya, xb, yb, label_cost=mode, lambda_x=lx, lambda_y=ly, **EMD).distance
    assert got == pytest.approx(expected, rel=1e-8)


@MODES
@OUTERS
def test_translation_shifts_otdd_by_the_constant_the_definition_implies(mode, outer):
    """Moving every x of side b by t changes ||x - x'||^2 by ||t||^2 - 2 t.(x - x'), and every class mean (hence W,
    in both label modes) likewise; averaged over any coupling with the fixed uniform marginals this is the
    constant ||t||^2 - 2 t.(mean_a - mean_b) per term, so OTDD shifts by (lx + ly) * that (self terms unchanged)."""
    xa, ya = blobs(12, (12, 9, 9), d=4)
    xb, yb = blobs(13, (10, 10, 10), d=4)
    t = np.array([0.2, -0.4, 0.1, 0.6])
    lx, ly = 1.0, 2.0
    kw = dict(label_cost=mode, lambda_x=lx, lambda_y=ly, entropic_reg=0.5, **outer)
    shift = (lx + ly) * (t @ t - 2 * t @ (xa.mean(0) - xb.mean(0)))
    before = otdd(xa, ya, xb, yb, **kw).distance
    after = otdd(xa, ya, xb + t, yb, **kw).distance
    assert after - before == pytest.approx(shift, rel=1e-6, abs=1e-6)
    assert otdd(xa, ya, xa + t, ya, **kw).distance == pytest.approx((lx + ly) * (t @ t), rel=1e-6, abs=1e-6)


def test_sinkhorn_path_equals_debiased_divergence_from_pot_plans():
    """Independent reference: POT's log-domain Sinkhorn plans, primal value <P,C> + eps KL(P | a x b)."""
    xa, ya = blobs(14, (8, 12, 10), d=3)
    xb, yb = blobs(15, (15, 10), d=3)
    reg = 1.0
    stats = {k: class_stats(x, y, ridge=1e-6) for k, (x, y) in {"a": (xa, ya), "b": (xb, yb)}.items()}

    def entropic(x1, y1, s1, x2, y2, s2):
        w = label_cost_gaussian(*s1, *s2)
        cost = sqdist(x1, x2) + w[y1][:, y2]
        a, b = np.full(len(x1), 1 / len(x1)), np.full(len(x2), 1 / len(x2))
        plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=20_000)
        return np.sum(plan * cost) + reg * np.sum(xlogy(plan, plan / np.outer(a, b)))

    expected = (entropic(xa, ya, stats["a"], xb, yb, stats["b"])
                - 0.5 * entropic(xa, ya, stats["a"], xa, ya, stats["a"])
                - 0.5 * entropic(xb, yb, stats["b"], xb, yb, stats["b"]))
    res = otdd(xa, ya, xb, yb, entropic_reg=reg, sinkhorn_tol=1e-10, sinkhorn_max_iter=20_000, **SINKHORN)
    assert res.distance == pytest.approx(expected, rel=1e-8)
    assert res.params["sinkhorn_marginal_err"] < 1e-10


def paired_clusters(n=48, d=8, classes=6, seed=0):
    """Unit-norm class clusters and a slightly drifted copy of the same samples (a model before/after fine-tuning):
    the kernel barely connects the clusters, so plain Sinkhorn stalls at some regularisations."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    ref = 0.15 * rng.standard_normal((classes, d))[y] + 0.05 * rng.standard_normal((n, d))
    ft = ref + 0.03 * rng.standard_normal((n, d))
    return ref / np.linalg.norm(ref, axis=1, keepdims=True), ft / np.linalg.norm(ft, axis=1, keepdims=True), y


REG_GRID = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]


def test_sinkhorn_converges_over_the_regularisation_grid_and_brackets_the_exact_value():
    """Every reg in 0.01..1 converges within the default iteration cap (a RuntimeWarning is an error here) and the
    debiased divergence lies within reg*log(n) of the exact OTDD: each entropic term is between the exact cost and
    the exact cost plus reg*KL(exact plan | a x b) <= reg*log(n), and the exact self costs are 0."""
    xa, xb, y = paired_clusters()
    exact = otdd(xa, y, xb, y, **EMD).distance
    gaps = []
    for reg in REG_GRID:
        res = otdd(xa, y, xb, y, entropic_reg=reg, **SINKHORN)
        assert res.params["sinkhorn_marginal_err"] < res.params["sinkhorn_tol"]
        assert max(res.params["sinkhorn_iters"].values()) < res.params["sinkhorn_max_iter"]
        gaps.append(abs(res.distance - exact))
        assert gaps[-1] <= reg * np.log(len(y)), reg
    assert gaps[0] < 0.01 * exact  # small reg: close to the exact value, not merely inside the bracket


def test_newton_from_the_warm_start_reaches_the_value_of_the_cold_path(monkeypatch):
    """The cross problem's two routes when the warm start stalls (clustered data, reg 0.2): Sinkhorn-Newton from
    the warm potentials, and eps-scaling from scratch; both must land on the same entropic OT value."""
    from forgetbench.evaluate import otdd as module

    xa, xb, y = paired_clusters()
    res = {}
    for route, threshold in (("newton", 1.0), ("cold", 0.0)):
        monkeypatch.setitem(module._entropic_ot.__kwdefaults__, "newton_from_warm", threshold)
        res[route] = otdd(xa, y, xb, y, entropic_reg=0.2, sinkhorn_tol=1e-9, sinkhorn_max_iter=20_000, **SINKHORN)
    assert res["newton"].params["sinkhorn_iters"]["ab"] != res["cold"].params["sinkhorn_iters"]["ab"]  # two routes
    assert res["newton"].distance == pytest.approx(res["cold"].distance, rel=1e-7)


def test_no_nan_with_singular_covariances_and_single_sample_classes():
    x, y = blobs(16, (1, 2, 5, 1), d=20)  # n_c < d everywhere, two singletons
    xb = x + 0.1 * np.random.default_rng(0).standard_normal(x.shape)
    means, covs = class_stats(x, y)
    w = label_cost_gaussian(means, covs, means, covs)
    assert np.isfinite(w).all() and (w >= 0).all()
    for outer in (EMD, SINKHORN):
        for mode in ("gaussian", "exact"):
            v = otdd(x, y, xb, y, label_cost=mode, **outer).distance
            assert np.isfinite(v) and v > 0


@OUTERS
def test_subsampling_uses_identical_indices_on_both_sides(outer):
    x, y = blobs(17, (40, 30, 30), d=4)
    res = otdd(x, y, x.copy(), y, max_samples=25, seed=3, **outer)
    assert abs(res.distance) < 1e-6  # independent subsamples of identical data would give > 0
    assert res.params["n_a"] == res.params["n_b"] == 25 and res.params["n_a_total"] == 100
    assert res.params["subsampled"] and res.params["seed"] == 3
    xb = x + 0.3
    full = otdd(x, y, xb, y, **EMD).distance
    assert otdd(x, y, xb, y, max_samples=1000, **EMD).distance == full  # nothing to subsample
    with pytest.raises(DataError, match="same number of rows"):
        otdd(x, y, x[:90], y[:90], max_samples=50)


def test_params_hold_every_setting_and_serialise():
    x, y = blobs(18, (10, 10), d=3)
    res = otdd(x, y, 2 * x, y, entropic_reg=0.2, lambda_y=0.5, **SINKHORN)
    assert isinstance(res, OTDDResult) and isinstance(res.distance, float)
    for key in ("label_cost", "outer", "entropic_reg", "exact_max_n", "max_samples", "seed", "lambda_x",
                "lambda_y", "ridge", "n_a", "n_b", "cost_scale", "sinkhorn_iters", "sinkhorn_marginal_err"):
        assert key in res.params, key
    assert res.params["entropic_reg"] == 0.2 and res.params["lambda_y"] == 0.5
    json.dumps(res.params)


def test_accepts_torch_tensors_like_numpy():
    x, y = blobs(19, (8, 8), d=3)
    ref = otdd(x, y, x * 1.5, y, **EMD).distance
    got = otdd(torch.tensor(x), torch.tensor(y), torch.tensor(x * 1.5).float(), torch.tensor(y),
               **EMD).distance
    assert got == pytest.approx(ref, rel=1e-6)  # x_b went through float32


@pytest.mark.parametrize("kwargs, error, match", [
    ({"label_cost": "gauss"}, SpecError, "label_cost must be one of"),
    ({"entropic_reg": 0}, SpecError, "entropic_reg"),
    ({"lambda_x": -1}, SpecError, "lambda_x"),
    ({"exact_max_n": 1.5}, SpecError, "exact_max_n"),
    ({"max_samples": 1}, SpecError, "max_samples"),
    ({"seed": -1}, SpecError, "seed"),
])
def test_bad_parameters_are_spec_errors(kwargs, error, match):
    x, y = blobs(20, (5, 5), d=2)
    with pytest.raises(error, match=match):
        otdd(x, y, x, y, **kwargs)


def test_bad_data_are_data_errors():
    x, y = blobs(21, (5, 5), d=2)
    with pytest.raises(DataError, match="y_a: expected a 1-D array of 10 labels"):
        otdd(x, y[:9], x, y)
    with pytest.raises(DataError, match="different feature dimensions"):
        otdd(x, y, x[:, :1], y)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="x_b: contains NaN"):
        otdd(x, y, bad, y)
    with pytest.raises(DataError, match="covs_a: expected shape"):
        label_cost_gaussian(np.zeros((2, 3)), np.zeros((2, 3, 2)), np.zeros((2, 3)), np.zeros((2, 3, 3)))
