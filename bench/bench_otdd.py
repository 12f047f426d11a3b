"""Timing of OTDD and of the Gaussian (Bures) label-cost matrix, batched vs microsoft/otdd's per-pair sqrtm loop.

    python bench/bench_otdd.py [--n 5000] [--dim 512] [--classes 100] [--loop-rows 2] [--loop-cols 10]
                               [--versus 2000,256,50] [--parts otdd,labels,versus]

1. OTDD (gaussian label cost, debiased Sinkhorn since n > exact_max_n) between "reference" features and "fine-tuned"
   features of the same n samples (L2-normalised clustered features and a drifted copy). Target: <= 20 s on 2 cores.
2. The [C, C] label-cost matrix from class covariances, ``label_cost_gaussian`` vs ``label_cost_gaussian_loop``:
   (a) covariances of the benchmark's own classes (n/C samples each, so rank-deficient + ridge), (b) full-rank
   covariances (as with more samples per class than dimensions). The loop takes minutes at this size, so it is timed
   on a block of loop-rows x loop-cols pairs and extrapolated (the table says so); for (b) the batched path is also
   timed on 10 x 10 and 20 x 20 class blocks and extrapolated (per-class and per-pair work apart), in float64 and
   with ``precision="float32"``
   (each against the loop in the same precision when the loop is microsoft's). Values are checked equal to 1e-6 on
   every pair computed both ways in float64, and float32's largest difference is printed.
3. With ``--reg-grid``: Sinkhorn iterations (cross / two self problems), final marginal error and time of OTDD at
   every entropic_reg in 0.01..1 (n, dim, classes as given), with the RuntimeWarnings raised.
The loop anchor is microsoft/otdd's own ``efficient_pwdist_gauss`` (eigen-based sqrtm, one Bures per pair) when the
``otdd`` package is importable (obtain it yourself: it is not a dependency, nor shipped); otherwise the table says
plainly that it compares against the project's own scipy per-pair loop, about 20x slower than microsoft's.
When it is importable, the whole distance is also compared side by side with microsoft/otdd's ``DatasetDistance``
(Gaussian label costs, debiased Sinkhorn, entreg 0.1, p=2, its default single precision) on the same features at
``--versus`` n,dim,classes (default 2,000 per side, d=256, 50 classes: it finishes in under a minute): its value
against half of ours at twice the regularisation (its cost is half ours, see ``otdd.py``) and without a covariance
ridge (it adds none; ours, 1e-6 by default, moves the value by ~1e-3 relative at that size, also printed), and the
time ratio. What remains of the difference is geomloss's: its default eps-scaling (0.5) stops short of convergence
(measured at 2,000/256/50: 3.3e-5 relative; 4e-8 with scaling 0.97).
The OTDD row is followed by where its time goes (cProfile of one more call: class spectra, label costs, cost
matrices, Sinkhorn). Run by hand; it is not part of the test suite. Timings depend on what else runs on the machine (load is printed).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
import warnings

import numpy as np
import torch
from tabulate import tabulate
from threadpoolctl import threadpool_limits

from forgetbench.evaluate.label_costs import class_stats, label_cost_gaussian, label_cost_gaussian_loop
from forgetbench.evaluate.otdd import otdd


def features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit-norm 'reference' features, a drifted 'fine-tuned' copy of the same samples, labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.standard_normal((classes, dim))
    ref = 0.15 * centres[y] + 0.05 * rng.standard_normal((n, dim)) + 0.1 * rng.standard_normal(dim)
    ft = ref + 0.03 * rng.standard_normal((n, dim))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return unit(ref), unit(ft), y


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def anchor_loop(dtype=torch.float64):
    """(name, per-pair label-cost loop): microsoft/otdd's own when importable (computing in ``dtype``), else the
    project's scipy loop (float64)."""
    try:
        from otdd.pytorch.sqrtm import sqrtm
        from otdd.pytorch.wasserstein import efficient_pwdist_gauss
    except ImportError:
        return "project's per-pair sqrtm loop (microsoft/otdd not importable)", label_cost_gaussian_loop

    def microsoft(ma, ca, mb, cb):  # tensors of the precision the batched side computes in
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
        roots = [sqrtm(s) for s in t(ca)]  # what it precomputes once per row class (the smaller side)
        if len(mb) == 0:
            return np.zeros((len(ma), 0))
        return efficient_pwdist_gauss(t(ma), t(ca), t(mb), t(cb), sqrtS1=roots).numpy()
    return f"microsoft/otdd efficient_pwdist_gauss ({str(dtype).split('.')[-1]})", microsoft


def microsoft_available() -> bool:
    try:
        import otdd.pytorch.distance  # noqa: F401
    except ImportError:
        return False
    return True


def breakdown(fn) -> list[list[str]]:
    """Rows: where one call of ``fn`` (an OTDD) spends its time, by the functions of otdd.py / label_costs.py."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, own time, cumulative, callers)
    total = max(v[3] for v in stats.values())
    parts = {"class spectra (one SVD per class)": "spectra_from_samples", "label costs (Bures, 3 blocks)": "gauss_block",
             "cost matrices (n x n)": "_fill_cost", "Sinkhorn / Sinkhorn-Newton": "_entropic_ot"}
    rows = []
    for what, fn_name in parts.items():
        t = sum(v[3] for k, v in stats.items() if k[2] == fn_name)
        rows.append([f"  of which {what}", f"{t:.2f}", f"{100 * t / total:.0f}% (under cProfile: {total:.2f} s)", ""])
    return rows


def versus_microsoft(n: int, dim: int, classes: int) -> list[list[str]]:
    """The whole distance, microsoft/otdd's DatasetDistance vs ours, on the same features: values and time."""
    from otdd.pytorch.distance import DatasetDistance

    ref, ft, y = features(n, dim, classes, seed=2)
    data = [torch.utils.data.TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)) for x in (ref, ft)]
    dist = DatasetDistance(data[0], data[1], inner_ot_method="gaussian_approx", debiased_loss=True, p=2, entreg=0.1,
                           device="cpu", verbose=0)
    theirs, t_theirs = timed(lambda: float(dist.distance(maxsamples=n)))
    # their cost is half ours: their value at entreg e is half of ours at 2e (same features, labels, Sinkhorn kind);
    # they add no ridge to the class covariances, we add 1e-6 by default (it moves the value by ~1e-3 relative here)
    ours, t_ours = timed(lambda: otdd(ref, y, ft, y, label_cost="gaussian", entropic_reg=0.2, exact_max_n=0,
                                      ridge=0.0).distance)
    ridged = otdd(ref, y, ft, y, label_cost="gaussian", entropic_reg=0.2, exact_max_n=0).distance
    size = f"{n} vs {n}, d={dim}, {classes} classes"
    rel = lambda v: f"rel. diff {abs(v / 2 - theirs) / abs(theirs):.1e}"  # noqa: E731
    return [[f"microsoft/otdd DatasetDistance, {size}", f"{t_theirs:.2f}", f"OTDD={theirs:.6f} (its 1/2 cost)", ""],
            ["forgetbench otdd, same features, debiased Sinkhorn, ridge 0", f"{t_ours:.2f}", f"OTDD/2={ours / 2:.6f}",
             rel(ours)],
            ["  the same with the default ridge 1e-6", "", f"OTDD/2={ridged / 2:.6f}", rel(ridged)],
            ["  speed-up over microsoft/otdd", f"{t_theirs / t_ours:.1f}x", "", ""]]


def reg_grid_rows(ref, ft, y):
    rows = []
    for reg in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, t = timed(lambda: otdd(ref, y, ft, y, entropic_reg=reg, exact_max_n=0))
        it = res.params["sinkhorn_iters"]
        rows.append([reg, f"{it['ab']}/{it['aa']}/{it['bb']}", f"{res.params['sinkhorn_marginal_err']:.1e}",
                     sum(issubclass(w.category, RuntimeWarning) for w in caught), f"{t:.2f}", f"{res.distance:.6f}"])
    return rows


def label_cost_rows(name, means_a, covs_a, means_b, covs_b, rows, cols, batched_block=None, precision="float64"):
    """Batched (full, or a block extrapolated) vs loop (a block, extrapolated); returns table rows."""
    n_a, n_b = len(means_a), len(means_b)
    cost = lambda k: label_cost_gaussian(means_a[:k], covs_a[:k], means_b[:k], covs_b[:k],  # noqa: E731
                                         precision=precision)
    if batched_block is None:
        batched, t_batched = timed(lambda: cost(None))
        batched_note = "measured"
    else:  # per-class work (one eigendecomposition each) and per-pair work, apart: blocks of k and 2k classes
        k = batched_block
        _, t_small = timed(lambda: cost(k))
        batched, t_large = timed(lambda: cost(2 * k))
        t_pair = max(t_large - 2 * t_small, 0.0) / (2 * k * k)  # t(k) = 2k c + k^2 p, t(2k) = 4k c + 4k^2 p
        t_class = max(t_small - k * k * t_pair, 0.0) / (2 * k)
        t_batched = (n_a + n_b) * t_class + n_a * n_b * t_pair
        batched_note = (f"extrapolated from {k}x{k} and {2 * k}x{2 * k} classes ({t_class * 1e3:.0f} ms/class, "
                        f"{t_pair * 1e3:.1f} ms/pair)")
    # loop: S_a^1/2 once per row class plus one sqrtm per pair; extrapolate both parts to the full matrix
    loop_name, loop_fn = anchor_loop(torch.float32 if precision == "float32" else torch.float64)
    with threadpool_limits(1):
        loop_rows = [timed(lambda r=r: loop_fn(means_a[r:r + 1], covs_a[r:r + 1], means_b[:cols], covs_b[:cols]))
                     for r in range(rows)]
        _, t_root = timed(lambda: loop_fn(means_a[:1], covs_a[:1], means_b[:0], covs_b[:0]))
    loop = np.vstack([v for v, _ in loop_rows])
    t_pair = (sum(t for _, t in loop_rows) - rows * t_root) / (rows * cols)
    t_loop = n_a * t_root + n_a * n_b * t_pair
    diff = float(np.abs(batched[:rows, :cols] - loop).max())
    note = ""
    if precision == "float64":
        assert diff <= 1e-6, f"batched and loop label costs differ by {diff:.2e}"
    else:  # both sides float32: the difference is each one's float32 error; against float64 it is printed too
        exact = label_cost_gaussian(means_a[:rows], covs_a[:rows], means_b[:cols], covs_b[:cols])
        diff64 = float(np.abs(batched[:rows, :cols] - exact).max())
        scale = float(np.trace(np.asarray(covs_a[:rows]), axis1=1, axis2=2).max())
        name, note = f"{name}, float32", f"to float64: max |diff| {diff64:.1e} = {diff64 / scale:.1e} tr S"
    return [
        [f"{name}: batched label_cost_gaussian", f"{t_batched:.2f}", batched_note, note],
        [f"{name}: {loop_name}", f"{t_loop:.1f}",
         f"extrapolated from {rows}x{cols} pairs ({t_pair * 1e3:.0f} ms/pair)", f"max |diff| {diff:.1e}"],
        [f"{name}: speed-up", f"{t_loop / t_batched:.0f}x", "", ""],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--loop-rows", type=int, default=2)
    ap.add_argument("--loop-cols", type=int, default=10)
    ap.add_argument("--reg-grid", action="store_true", help="only the Sinkhorn table over entropic_reg 0.01..1")
    ap.add_argument("--parts", default="otdd,labels,versus", help="which of the tables' parts to run (comma-separated)")
    ap.add_argument("--versus", default="2000,256,50", metavar="N,DIM,CLASSES",
                    help="size of the side-by-side with microsoft/otdd's DatasetDistance (when importable)")
    args = ap.parse_args()
    try:
        versus = [int(v) for v in args.versus.split(",")]
        assert len(versus) == 3 and min(versus) > 0
    except (ValueError, AssertionError):
        ap.error(f"--versus: expected three positive integers N,DIM,CLASSES (e.g. 2000,256,50), got {args.versus!r}")
    parts = set(args.parts.split(","))
    if not parts or parts - {"otdd", "labels", "versus"}:
        ap.error(f"--parts: expected a comma-separated subset of otdd,labels,versus, got {args.parts!r}")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"n={args.n}, dim={args.dim}, classes={args.classes}")
    ref, ft, y = features(args.n, args.dim, args.classes)
    if args.reg_grid:
        print(tabulate(reg_grid_rows(ref, ft, y), headers=["entropic_reg", "iterations ab/aa/bb", "marginal err",
                                                           "RuntimeWarnings", "seconds", "OTDD"]))
        return

    show = lambda rows: print(tabulate(rows, headers=["what", "seconds", "how", "check"]) + "\n", flush=True)  # noqa: E731
    # each part's table as soon as it is done: a run cut short still reports what it measured
    if "otdd" in parts:
        show(otdd_rows(ref, ft, y, args.n))
    if "labels" in parts:
        show(all_label_cost_rows(ref, ft, y, args))
    if "versus" in parts:
        show(versus_microsoft(*versus) if microsoft_available() else
             [["microsoft/otdd DatasetDistance", "", "not importable: no side-by-side of the distance", ""]])


def otdd_rows(ref, ft, y, n) -> list[list[str]]:
    res, t_otdd = timed(lambda: otdd(ref, y, ft, y, label_cost="gaussian"))
    p = res.params
    how = (f"Sinkhorn iterations {p['sinkhorn_iters']}", f"marginal err {p['sinkhorn_marginal_err']:.1e}") \
        if p["outer"] != "emd" else ("exact outer OT", "")
    table = [[f"OTDD gaussian, {n} vs {n}, outer {p['outer']}", f"{t_otdd:.2f}",
              f"OTDD={res.distance:.6f}, {how[0]}", how[1]]]
    table += breakdown(lambda: otdd(ref, y, ft, y, label_cost="gaussian"))
    selfcheck, t_self = timed(lambda: otdd(ref, y, ref, y, label_cost="gaussian").distance)
    table.append(["OTDD(ref, ref), same settings", f"{t_self:.2f}", f"OTDD={selfcheck:.2e}", ""])
    return table


def all_label_cost_rows(ref, ft, y, args) -> list[list[str]]:
    stats = [class_stats(x, y) for x in (ref, ft)]
    table = label_cost_rows(f"{args.n // args.classes}/class (rank-deficient)", *stats[0], *stats[1],
                             args.loop_rows, args.loop_cols)
    rng = np.random.default_rng(1)
    full = [rng.standard_normal((args.classes, args.dim, args.dim)) for _ in range(2)]
    covs = [a @ a.transpose(0, 2, 1) / args.dim + 1e-6 * np.eye(args.dim) for a in full]
    for precision in ("float64", "float32"):
        table += label_cost_rows("full-rank covariances", stats[0][0], covs[0], stats[1][0], covs[1],
                                 args.loop_rows, args.loop_cols, batched_block=10, precision=precision)
    return table


if __name__ == "__main__":
    main()
